"""The engine both training CLIs call: one leave-one-participant-out fold.

Base phase (train on the other participants' train+val, early-stop on their
test split), then target phase (fine-tune, early-stop on the target's val
split), both on one epoch axis. The target's test split is read once, for the
final scores. Outputs go to a hidden sibling folder that is renamed into place
at the end, so a result folder is whole or absent.

Over 500 lines because augmentation, one phase and one fold are read together;
the flags themselves live in flags.py.
"""
import argparse
import contextlib
import json
import logging
import math
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch
from filelock import FileLock
from torch import nn
from tqdm import tqdm

import base_cache
import flags
import provenance
from composed_loader import ComposedBatchDataLoader, TensorBatchLoader
from data import DataError, check_participants, load_participants, resolve_fold
from fileio import ConfigError, publish_folder, staged_folder
from flags import DEMO_DATA_PATH, resolve_preset, share_count, target_windows_per_batch
from models import MODELS, build_model
CURVES = ("train_loss", "val_loss", "train_f1", "val_f1")
EVAL_BATCH_SIZE = 512

log = logging.getLogger("experiment")


class TrainingParser(argparse.ArgumentParser):
    """Resolves --preset right after parsing, so every reader of the flags
    (the engine, generate_jobs.py, the base-cache key) sees plain values."""

    def parse_known_args(self, args=None, namespace=None):
        parsed, rest = super().parse_known_args(args, namespace)
        return resolve_preset(parsed), rest

    def error(self, message):
        # train.py lacks oct1_train.py's flags; say where they are.
        known = {action.dest for action in self._actions}
        elsewhere = [f"--{f.name}" for f in flags.FLAGS if f.enhanced and f.name not in known
                     and f"--{f.name}" in message.split()]
        if elsewhere:
            message += f" ({', '.join(elsewhere)}: use oct1_train.py)"
        super().error(message)


def build_parser(enhanced=False):
    """The flags of train.py (every flag is defined in flags.py); `enhanced` adds oct1_train.py's."""
    description = "Train one leave-one-participant-out fold: base model, then personalization."
    if enhanced:
        description += (" Adds to train.py: --target_batch_pct (exact share of target windows per batch) "
                        "with --epoch_rule, --mode base_only, and the shared base-model cache "
                        "(--base_cache_dir, --no_base_cache, --print_base_key).")
    else:
        description += " For an exact share of target windows per batch (--target_batch_pct), use oct1_train.py."
    parser = TrainingParser(description=description, allow_abbrev=False)
    flags.add_arguments(parser, enhanced, choices={"model": sorted(MODELS)})
    return parser


def check_args(args):
    if args.magnitude_range[0] > args.magnitude_range[1] or args.magnitude_range[0] <= 0:
        raise ConfigError(f"--magnitude_range {args.magnitude_range}: need 0 < LOW <= HIGH")
    if not 0 <= args.aug_prob <= 1:
        raise ConfigError(f"--aug_prob {args.aug_prob}: must be within [0, 1]")
    pct = getattr(args, "target_batch_pct", None)
    if pct is not None and args.mode != "full_fine_tuning":
        raise ConfigError(f"--target_batch_pct works only with --mode full_fine_tuning, not {args.mode}")
    if pct is not None:
        k = target_windows_per_batch(args)
        if not 0 < k < args.batch_size:
            raise ConfigError(f"--target_batch_pct {pct} of --batch_size {args.batch_size} gives {k} target "
                              f"windows per batch (--target_count {args.target_count}); both sides need at least one")
    if args.mode == "base_only" and args.no_base_cache:
        raise ConfigError("--mode base_only stores the base model in the cache; it cannot run with --no_base_cache")


def apply_threads(args):
    if args.threads is not None:
        torch.set_num_threads(args.threads)


def graphs_wanted(setting, device):
    """--cuda_graphs auto|on|off on this device: True or False."""
    if setting == "on" and device.type != "cuda":
        raise ConfigError(f"--cuda_graphs on needs a CUDA device, not {device}")
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def resolve_device(spec):
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.isdigit():
        spec = f"cuda:{spec}"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"--device {spec!r}: expected auto, cpu, cuda, cuda:N or N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif device.type != "cpu":
        raise ConfigError(f"--device {spec!r}: expected auto, cpu, cuda, cuda:N or N")
    return device


# ---------------------------------------------------------------- metrics

def batch_counts(logits, y, loss):
    """[loss * n, tp, fp, fn, tn] of one batch, kept on the device (no sync)."""
    pred = logits > 0  # sigmoid(logit) > 0.5
    truth = y > 0.5
    return torch.stack([loss * len(y), (pred & truth).sum(), (pred & ~truth).sum(),
                        (~pred & truth).sum(), (~pred & ~truth).sum()]).float()


def macro_f1(tp, fp, fn, tn):
    """Mean F1 over the classes present in the labels or the predictions."""
    scores = [2 * a / (2 * a + b + c) for a, b, c in ((tp, fp, fn), (tn, fn, fp)) if a + b + c > 0]
    return sum(scores) / len(scores)


def loss_and_f1(counts, n):
    loss_sum, tp, fp, fn, tn = counts.tolist()  # the one sync per pass
    return loss_sum / n, macro_f1(tp, fp, fn, tn)


@torch.no_grad()
def evaluate(model, X, y, device, graphed=None):
    return loss_and_f1(evaluation_counts(model, X, y, device, graphed), len(y))


@torch.no_grad()
def evaluation_counts(model, X, y, device, graphed=None):
    """graphed: a cuda_step.GraphedEvaluation of this model, or None for eager."""
    batches = ((xb.to(device, non_blocking=True), yb.to(device, non_blocking=True))
               for xb, yb in TensorBatchLoader(X, y, EVAL_BATCH_SIZE, shuffle=False))
    if graphed is not None:
        return graphed.counts(batches)
    model.eval()
    loss_fn = nn.BCEWithLogitsLoss()
    counts = torch.zeros(5, device=device)
    for xb, yb in batches:
        logits = model(xb)
        counts += batch_counts(logits, yb, loss_fn(logits, yb))
    return counts


def positive_class_scores(model, states, X, y, device):
    """{key_f1_pos, key_precision, key_recall} of each {key: state dict or None}
    on (X, y); a score whose denominator is zero is 0. Null for a None state."""
    scores = {}
    for key, state in states.items():
        values = (None, None, None)
        if state is not None:
            model.load_state_dict(state)
            _, tp, fp, fn, _ = evaluation_counts(model, X, y, device).tolist()
            values = (2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
                      tp / (tp + fp) if tp + fp else 0.0,
                      tp / (tp + fn) if tp + fn else 0.0)
        scores.update({f"{key}_{name}": value for name, value in zip(("f1_pos", "precision", "recall"), values)})
    return scores


# ---------------------------------------------------------------- augmentation

class Augmenter:
    """Jitter, magnitude scaling and a smooth time warp, each applied to a
    window with probability `prob`; random numbers drawn on the device."""

    def __init__(self, jitter_std, magnitude_range, prob, generator):
        self.jitter_std = jitter_std
        self.low, self.high = magnitude_range
        self.prob = prob
        self.generator = generator

    def _chosen(self, x):
        mask = torch.rand(len(x), device=x.device, generator=self.generator) < self.prob
        return mask.view(-1, 1, 1)

    def __call__(self, x):
        n, _, t = x.shape
        g = self.generator
        noise = torch.randn(x.shape, device=x.device, generator=g) * self.jitter_std
        x = x + noise * self._chosen(x)
        scale = self.low + (self.high - self.low) * torch.rand(n, 1, 1, device=x.device, generator=g)
        x = torch.where(self._chosen(x), x * scale, x)
        # Time warp: sample positions t + a*sin(2*pi*t/T + phase), linear interpolation.
        steps = torch.arange(t, device=x.device, dtype=x.dtype)
        amplitude = 0.05 * t * torch.rand(n, 1, device=x.device, generator=g)
        phase = 2 * math.pi * torch.rand(n, 1, device=x.device, generator=g)
        pos = (steps + amplitude * torch.sin(2 * math.pi * steps / t + phase)).clamp(0, t - 1)
        left = pos.floor().long().clamp(max=t - 2) if t > 1 else pos.floor().long()
        right = (left + 1).clamp(max=t - 1)
        frac = (pos - left).unsqueeze(1)
        index_shape = (n, x.shape[1], t)
        warped = (x.gather(2, left.unsqueeze(1).expand(index_shape)) * (1 - frac)
                  + x.gather(2, right.unsqueeze(1).expand(index_shape)) * frac)
        return torch.where(self._chosen(x), warped, x)


class BatchAugmenter(Augmenter):
    """The original's augmentation, with the same parameters as Augmenter: with
    probability `prob` one of jitter, magnitude scaling (one factor per window)
    and time warp, picked at random, is applied to the whole batch.

    The original's time warp was written for (N, T, C) data and indexes dim 1,
    which holds the channels of (N, C, T) windows; its slice there is empty, so
    that branch leaves the batch as it is. This reproduces it as such.
    Decisions are drawn on the device, so there is no host sync per batch.
    """

    def __call__(self, x):
        g = self.generator
        apply, pick = torch.rand(2, device=x.device, generator=g)
        # -1: untouched; 0 jitter, 1 magnitude, 2 time warp (changes nothing, as in the original).
        transform = torch.where(apply < self.prob, (pick * 3).floor().clamp(max=2), -1)
        noise = torch.randn(x.shape, device=x.device, generator=g) * self.jitter_std
        scale = self.low + (self.high - self.low) * torch.rand(len(x), 1, 1, device=x.device, generator=g)
        x = torch.where(transform == 0, x + noise, x)
        return torch.where(transform == 1, x * scale, x)


# ---------------------------------------------------------------- one phase

def phase_generators(seed, device):
    """Seed everything a phase draws from, so a phase depends on the seed alone
    (a reused base model leaves the target phase unchanged)."""
    torch.manual_seed(seed)
    loader_generator = torch.Generator().manual_seed(seed)
    augment_generator = torch.Generator(device=device).manual_seed(seed + 1)
    return loader_generator, augment_generator


def train_epoch(model, loader, optimizer, augment, device):
    model.train()
    loss_fn = nn.BCEWithLogitsLoss()
    counts = torch.zeros(5, device=device)
    n = 0
    for xb, yb in loader:
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        if augment is not None:
            xb = augment(xb)
        logits = model(xb)
        loss = loss_fn(logits, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        counts += batch_counts(logits.detach(), yb, loss.detach())
        n += len(yb)
    train_loss, train_f1 = loss_and_f1(counts, n)
    return train_loss, train_f1, n


def make_optimizer(model, lr, device, graphs):
    """AdamW: fused on CUDA, capturable when its step is replayed from a graph.
    On the CPU exactly the engine's historic optimizer, so CPU runs repeat to the bit."""
    if device.type != "cuda":
        return torch.optim.AdamW(model.parameters(), lr=lr)
    return torch.optim.AdamW(model.parameters(), lr=lr, fused=True, capturable=graphs)


def capture_steps(model, optimizer, loader, val, device, setting):
    """(training, evaluation) steps replayed from CUDA graphs, or (None, None) to run eagerly:
    when no batch is full, or when capture fails (an error with --cuda_graphs on)."""
    import cuda_step  # CUDA only
    if len(loader.X) < loader.batch_size:
        log.info("CUDA graphs: no full batch to replay; running eagerly")
        return None, None
    try:
        training = cuda_step.GraphedTraining(model, optimizer, (loader.X, loader.y), loader.batch_size,
                                             device)
        evaluation = cuda_step.GraphedEvaluation(model)
        evaluation_counts(model, *val, device, evaluation)  # captures the validation batch sizes
        return training, evaluation
    except cuda_step.CaptureError as error:
        if setting == "on":
            raise ConfigError(f"--cuda_graphs on: capture failed: {error}") from None
        log.warning(f"CUDA graph capture failed ({error}); this phase runs eagerly")
        return None, None


def train_phase(phase, model, loader, val, args, patience, device, augment, first_epoch):
    """Train until the validation loss has not improved for `patience` epochs.

    Returns the best state (by validation loss), its epoch and scores, the
    best validation F1 over the epochs and its epoch (the first that reached
    it), the per-epoch curves, and the windows seen per second.
    """
    graphs = graphs_wanted(getattr(args, "cuda_graphs", "auto"), device)
    optimizer = make_optimizer(model, args.lr, device, graphs)
    training, evaluation = None, None
    if graphs:
        training, evaluation = capture_steps(model, optimizer, loader, val, device, args.cuda_graphs)
    curves = {name: [] for name in CURVES}
    best = {"epoch": None, "val_loss": math.inf, "val_f1": None, "state": None}
    best_f1, best_f1_epoch = None, None
    windows, seconds = 0, 0.0
    stale = 0
    show_bar = sys.stderr.isatty()
    shown_at = None  # when the console last got an epoch line (no terminal)
    bar = tqdm(total=args.max_epochs, desc=phase, unit="epoch", leave=False, disable=not show_bar)
    for epoch in range(args.max_epochs):
        start = time.perf_counter()
        if training is not None:
            counts, n = training.epoch(loader, augment)
            train_loss, train_f1 = loss_and_f1(counts, n)
        else:
            train_loss, train_f1, n = train_epoch(model, loader, optimizer, augment, device)
        val_loss, val_f1 = evaluate(model, *val, device, evaluation)
        elapsed = time.perf_counter() - start
        windows, seconds = windows + n, seconds + elapsed
        for name, value in zip(CURVES, (train_loss, val_loss, train_f1, val_f1)):
            curves[name].append(value)
        if val_loss < best["val_loss"]:
            best = {"epoch": first_epoch + epoch, "val_loss": val_loss, "val_f1": val_f1,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
            stale = 0
        else:
            stale += 1
        if best_f1 is None or val_f1 > best_f1:
            best_f1, best_f1_epoch = val_f1, first_epoch + epoch
        line = (f"{phase} epoch {first_epoch + epoch}: train loss {train_loss:.4f} f1 {train_f1:.3f} | "
                f"val loss {val_loss:.4f} f1 {val_f1:.3f} | {elapsed:.2f}s, {n / elapsed:.0f} windows/s")
        # Every epoch goes to the log file; the console gets a bar or a line every 10 epochs.
        if show_bar:
            bar.set_postfix(val_loss=f"{val_loss:.4f}", val_f1=f"{val_f1:.3f}")
            bar.update()
        every = getattr(args, "progress_every", 30)
        due = not show_bar and (shown_at is None or time.monotonic() - shown_at >= every)
        shown_at = time.monotonic() if due else shown_at
        log.log(logging.INFO if due else logging.DEBUG, line)
        if stale >= patience:
            break
    bar.close()
    epochs_run = len(curves["train_loss"])
    log.info(f"{phase}: {epochs_run} epochs, best epoch {best['epoch']} "
             f"(val loss {best['val_loss']:.4f}, f1 {best['val_f1']:.3f})")
    if best["epoch"] == first_epoch + epochs_run - 1:
        log.warning(f"{phase}: the best epoch is the last one, so early stopping never fired: "
                    f"may be under-trained: raise --max_epochs (now {args.max_epochs})")
    return {"best_epoch": best["epoch"], "best_val_loss": best["val_loss"],
            "val_f1_at_best_loss": best["val_f1"], "best_val_f1": best_f1, "best_val_f1_epoch": best_f1_epoch,
            "state": best["state"], "curves": curves, "epochs_run": epochs_run,
            "windows_per_s": windows / seconds if seconds else None, "cuda_graphs": training is not None}


# ---------------------------------------------------------------- the fold

def concat(pairs):
    return torch.cat([X for X, _ in pairs]), torch.cat([y for _, y in pairs])


def subsample(X, y, pct, seed, count_rule="round"):
    """A seeded random share of the windows (at least one), kept in their original order."""
    if pct >= 1:
        return X, y
    keep = max(1, share_count(pct, len(X), count_rule))
    index = torch.randperm(len(X), generator=torch.Generator().manual_seed(seed))[:keep].sort().values
    return X[index], y[index]


def place(tensors, device):
    """Move the data to the device when it fits comfortably, so batches are cut there."""
    if device.type == "cuda":
        needed = sum(t.numel() * t.element_size() for t in tensors)
        free, _ = torch.cuda.mem_get_info(device)
        if needed > free // 2:
            log.info(f"data ({needed / 2**30:.1f} GiB) stays in host memory; batches are copied")
            return [t.pin_memory() for t in tensors]
    return [t.to(device) for t in tensors]


def train_base_model(args, base_data, n_channels, device):
    """Base phase: train on the base participants' train+val, early-stop on their test."""
    X_train, y_train = concat([base_data[p][s] for p in base_data for s in ("train", "val")])
    # Seeded apart from the other draws; --base_val_pct is part of the base key.
    X_stop, y_stop = subsample(*concat([base_data[p]["test"] for p in base_data]), args.base_val_pct,
                               args.seed + 2)
    X_train, y_train, X_stop, y_stop = place([X_train, y_train, X_stop, y_stop], device)
    loader_gen, augment_gen = phase_generators(args.seed, device)
    model = build_model(args.model, n_channels).to(device)
    loader = TensorBatchLoader(X_train, y_train, args.batch_size, shuffle=True, generator=loader_gen)
    log.info(f"base phase: {len(X_train)} windows from {', '.join(base_data)}, "
             f"early stopping on their test split ({len(X_stop)} windows)")
    return train_phase("base", model, loader, (X_stop, y_stop), args, args.early_stopping_patience,
                       device, make_augmenter(args, augment_gen), first_epoch=1)


def make_augmenter(args, generator):
    if not args.use_augmentation:
        return None
    kind = BatchAugmenter if args.augmentation == "batch" else Augmenter
    return kind(args.jitter_std, args.magnitude_range, args.aug_prob, generator)


def target_loader(args, base_train, target_train, generator):
    """Fine-tuning batches: target only, plain mixing, or exact composition."""
    if args.mode in ("target_only", "target_only_fine_tuning"):
        return TensorBatchLoader(*target_train, args.batch_size, shuffle=True, generator=generator)
    if getattr(args, "target_batch_pct", None) is not None:
        return ComposedBatchDataLoader(base_train, target_train, args.batch_size, args.target_batch_pct,
                                       shuffle=True, generator=generator, epoch_rule=args.epoch_rule,
                                       target_count=args.target_count)
    X = torch.cat([base_train[0], target_train[0]])
    y = torch.cat([base_train[1], target_train[1]])
    return TensorBatchLoader(X, y, args.batch_size, shuffle=True, generator=generator)


def curve_axis(base, target):
    """The eight curves on one epoch axis, None where a curve does not apply."""
    n_base = base["epochs_run"] if base else 0
    n_target = target["epochs_run"] if target else 0
    losses = {"epoch": list(range(1, n_base + n_target + 1)),
              "transition_epoch": n_base if base else None,
              "best_base_epoch": base["best_epoch"] if base else None,
              "best_target_epoch": target["best_epoch"] if target else None}
    for name in CURVES:
        losses[f"base_{name}"] = (base["curves"][name] if base else []) + [None] * n_target
        losses[f"target_{name}"] = [None] * n_base + (target["curves"][name] if target else [])
    return losses


def fold_metrics(args, fold, target_name, base, target, scores, base_entry):
    """metrics.json, with the original pipeline's key meanings.

    best_{phase}_val_loss / _f1: the best validation loss and the best validation
    F1 over the phase's epochs, each with its _epoch; best_{phase}_epoch is the
    kept checkpoint's epoch (the best loss); {phase}_val_f1_at_best_loss is the F1
    of that checkpoint. scores: (loss, F1) pairs, None where a model is absent;
    best_base_model_* and best_target_model_* are the kept checkpoints.
    """
    metrics = {"mode": args.mode, "fold": fold, "target_participant": target_name}
    for name, phase in (("base", base), ("target", target)):
        metrics.update({
            f"best_{name}_epoch": phase and phase["best_epoch"],
            f"best_{name}_val_loss": phase and phase["best_val_loss"],
            f"best_{name}_val_loss_epoch": phase and phase["best_epoch"],
            f"best_{name}_val_f1": phase and phase["best_val_f1"],
            f"best_{name}_val_f1_epoch": phase and phase["best_val_f1_epoch"],
            f"{name}_val_f1_at_best_loss": phase and phase["val_f1_at_best_loss"],
        })
    metrics["transition_epoch"] = base and base["epochs_run"]
    for model_and_split, score in scores.items():
        metrics[f"best_{model_and_split}_loss"] = score and score[0]
        metrics[f"best_{model_and_split}_f1"] = score and score[1]
    metrics.update({
        "base_epochs_run": base and base["epochs_run"],
        "target_epochs_run": target and target["epochs_run"],
        "base_model_reused": bool(base_entry and base_entry.reused),
        "base_key": base_entry.key if base_entry else None,
        "train_windows_per_s": (target or base)["windows_per_s"],
    })
    return metrics


def obtain_base(args, base_names, base_data, n_channels, device, fingerprint):
    """The fold's base model: from the cache when the CLI has one, else trained here.
    fingerprint: the base participants' data files (base_cache.data_fingerprint)."""
    def train():
        started = provenance.now()
        result = train_base_model(args, base_data, n_channels, device)
        return dict(result, provenance=provenance.record(device, fingerprint, started))
    if not getattr(args, "base_cache_dir", None) or args.no_base_cache:
        return train(), None
    key = base_cache.base_key(args, base_names)
    entry = base_cache.get_or_train(args.base_cache_dir, key, fingerprint,
                                    base_cache.key_settings(args, base_names), train)
    return entry.result, entry


def check_composition(args, n_target, n_base):
    """Before any training: can every fine-tuning batch hold its exact target share?"""
    pct = getattr(args, "target_batch_pct", None)
    if pct is None:
        return
    k = target_windows_per_batch(args)
    if n_target < k:
        raise ConfigError(f"--target_batch_pct {pct} puts {k} target windows in every batch, but "
                          f"--target_data_pct {args.target_data_pct} leaves {n_target} target train windows")
    if n_base < args.batch_size - k:
        raise ConfigError(f"--target_batch_pct {pct} puts {args.batch_size - k} base windows in every batch, "
                          f"but the base participants have {n_base} train+val windows")


def result_dir(args, fold, target_name):
    return Path(args.experiments_dir) / args.prefix / f"fold{fold}_{target_name}"


def run_fold(args):
    """Run one fold end to end; returns the published result folder (None for base_only)."""
    started, started_at = time.perf_counter(), provenance.now()
    check_args(args)
    device = resolve_device(args.device)
    graphs_wanted(getattr(args, "cuda_graphs", "auto"), device)  # --cuda_graphs on without CUDA: refused now
    participants = check_participants(args.data_path, args.participants)
    target_name, base_names = resolve_fold(participants, args.fold, args.n_base_participants)
    if args.mode == "target_only":
        base_names = []
    final = result_dir(args, args.fold, target_name)
    if args.mode != "base_only" and final.exists() and not args.overwrite:
        raise ConfigError(f"{final}: result folder exists; pass --overwrite to replace it")
    data = load_participants(args.data_path, [target_name] + base_names, args.window_size)
    fingerprint = base_cache.data_fingerprint(args.data_path, [target_name] + base_names)
    n_channels, window_size = data[target_name]["train"][0].shape[1:]
    base_data = {p: data[p] for p in base_names}
    target_train = subsample(*data[target_name]["train"], args.target_data_pct, args.seed, args.target_count)
    target_val = subsample(*data[target_name]["val"], args.target_val_pct, args.seed + 3)
    check_composition(args, len(target_train[0]), sum(len(base_data[p][s][0]) for p in base_names
                                                       for s in ("train", "val")))

    base, base_entry = None, None
    if base_names:
        base_files = {name: digest for name, digest in fingerprint.items()
                      if name.rsplit("_", 1)[0] in base_names}
        base, base_entry = obtain_base(args, base_names, base_data, n_channels, device, base_files)
    if args.mode == "base_only":
        print(f"BASE_KEY {base_entry.key}")
        print(f"BASE_MODEL {base_entry.path}")
        return None

    tensors = place([*target_train, *target_val], device)
    target_train, target_val = tuple(tensors[:2]), tuple(tensors[2:])
    base_train = None
    if args.mode == "full_fine_tuning":
        base_train = tuple(place(list(concat([base_data[p][s] for p in base_names for s in ("train", "val")])),
                                 device))
    # The target phase has its own seed so it is the same whether the base was trained or reused.
    loader_gen, augment_gen = phase_generators(args.seed + 1000, device)
    model = build_model(args.model, n_channels).to(device)
    if base is not None:
        model.load_state_dict(base["state"])
    loader = target_loader(args, base_train, target_train, loader_gen)
    log.info(f"target phase ({args.mode}): {len(target_train[0])} target train windows, "
             f"{len(loader)} batches per epoch, early stopping on {target_name}'s val split "
             f"({len(target_val[0])} windows)")
    first_epoch = (base["epochs_run"] if base else 0) + 1
    target = train_phase("target", model, loader, target_val, args, args.early_stopping_patience_target,
                         device, make_augmenter(args, augment_gen), first_epoch)

    # The target's test split is read here, once, for the final scores only.
    finish_fold(args, model, device, final, participants, target_name, base_names, target_val,
                data[target_name]["test"], base, base_entry, target, started, fingerprint, started_at)
    return final


def finish_fold(args, model, device, final, participants, target_name, base_names, target_val, target_test,
                base, base_entry, target, started, fingerprint, started_at, extra_hyper=None):
    """Score the kept models on the target's test split and publish the result folder
    (pack_train.py calls it too, with the pack's size and id in extra_hyper).
    started: perf_counter at the start; fingerprint, started_at: for provenance.json."""
    n_channels, window_size = target_test[0].shape[1:]
    base_val, base_test = None, None
    if base is not None:
        model.load_state_dict(base["state"])
        base_val = evaluate(model, *target_val, device)
        base_test = evaluate(model, *target_test, device)
    model.load_state_dict(target["state"])
    personal_test = evaluate(model, *target_test, device)

    metrics = fold_metrics(args, args.fold, target_name, base, target,
                           {"base_model_target_val": base_val, "base_model_target_test": base_test,
                            "target_model_target_test": personal_test}, base_entry)
    metrics.update(positive_class_scores(model, {"best_base_model_target_test": base and base["state"],
                                                 "best_target_model_target_test": target["state"]},
                                         *target_test, device))
    metrics["total_time_s"] = time.perf_counter() - started
    hyper = dict(vars(args), participants=participants, target_participant=target_name,
                 base_participants=base_names, n_channels=int(n_channels), window_size=int(window_size),
                 device=str(device), script=Path(sys.argv[0]).name, cuda_graphs_used=target["cuda_graphs"],
                 **(extra_hyper or {}))
    log.info(f"base model on {target_name}'s test: "
             + (f"f1 {base_test[1]:.3f}" if base_test else "none") + f"; personalized: f1 {personal_test[1]:.3f}")
    files = {"hyperparameters.json": hyper, "metrics.json": metrics, "losses.json": curve_axis(base, target),
             "provenance.json": provenance.record(device, fingerprint, started_at)}
    publish(final, files, target["state"], args.overwrite)


def publish(final, json_files, state, overwrite):
    """Write everything into a hidden sibling, then rename it into place."""
    import plotting  # matplotlib is only needed at the very end
    with staged_folder(final) as tmp:
        for name, content in json_files.items():
            (tmp / name).write_text(json.dumps(content, indent=2) + "\n")
        torch.save({k: v.cpu() for k, v in state.items()}, tmp / "best_target_model.pt")
        plotting.plot_training_curves(json_files["losses.json"], tmp)
        log_handler = _file_handler()
        if log_handler is not None:
            log_handler.flush()
            shutil.copyfile(log_handler.baseFilename, tmp / "train.log")
        if final.exists() and not overwrite:
            raise ConfigError(f"{final}: result folder appeared during the run; kept the existing one")
        publish_folder(tmp, final, replace=True)


# ---------------------------------------------------------------- CLI

def _file_handler():
    return next((h for h in log.handlers if isinstance(h, logging.FileHandler)), None)


def setup_logging(log_path):
    """Console gets INFO; the run's log file gets every epoch."""
    log.setLevel(logging.DEBUG)
    log.propagate = False
    for handler in list(log.handlers):  # process_state puts them back and closes ours
        log.removeHandler(handler)
    console = logging.StreamHandler(sys.stdout)
    console.setLevel(logging.INFO)
    console.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(console)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    file_handler = logging.FileHandler(log_path, mode="w")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(file_handler)


def ensure_demo_data(data_path):
    """The default data folder is the demo dataset; make it on first use."""
    demo = Path(DEMO_DATA_PATH)
    if data_path != DEMO_DATA_PATH or demo.exists():
        return
    import make_dataset
    demo.parent.mkdir(parents=True, exist_ok=True)
    # Jobs started together on one machine must not write it twice.
    with FileLock(str(demo.parent / f".{demo.name}.lock")):
        if not demo.exists():
            print(f"{DEMO_DATA_PATH} not found: creating the synthetic demo dataset first")
            make_dataset.write_synthetic_dataset(DEMO_DATA_PATH)


@contextlib.contextmanager
def process_state():
    """Inside: SIGTERM unwinds like Ctrl-C, so temporary folders and locks are cleaned up, and the
    "experiment" logger is ours to configure. Afterwards both are as they were, so a caller that
    runs main in its own process (tests, a packed runner) keeps its own handler and logging."""
    sigterm = signal.getsignal(signal.SIGTERM)
    handlers, level, propagate = list(log.handlers), log.level, log.propagate
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, sigterm)
        for handler in list(log.handlers):
            log.removeHandler(handler)
            if handler not in handlers:
                handler.close()
        for handler in handlers:
            log.addHandler(handler)
        log.setLevel(level)
        log.propagate = propagate


def main(argv=None, enhanced=False):
    parser = build_parser(enhanced)
    args = parser.parse_args(argv)
    apply_threads(args)

    def work(log_path):
        if enhanced and args.print_base_key:
            print(base_cache.key_for_args(args))
            return 0
        ensure_demo_data(args.data_path)
        setup_logging(log_path)
        print(f"log: {log_path} (every epoch; copied into the result folder at the end)", flush=True)
        final = run_fold(args)
        if final is not None:
            print(f"RESULT_DIR {final}")
        return 0
    return run_cli(parser.prog, work, "nothing was published")


def run_cli(prog, work, interrupted):
    """work(log_path) -> exit status, with the CLIs' error handling: one-line errors
    exit 2, Ctrl-C and SIGTERM 130/143 (saying `interrupted`), the log removed at the end;
    the SIGTERM handler and the logger are restored afterwards (process_state)."""
    # The log is written aside and copied into the result folder, so a failed run writes nothing.
    scratch = Path(tempfile.mkdtemp(prefix="train-log-"))
    try:
        with process_state():
            return work(scratch / "train.log")
    except (DataError, ConfigError, base_cache.CacheError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {interrupted}", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
