"""One training phase: epochs of the training step until the validation score stops improving.

Both phases of a fold run it (the base phase in engine.fold.train_base_model, the target
phase in engine.fold.run_fold); it keeps the best state by validation loss or F1
(--early_stopping_metric), the curves and the speed, and replays CUDA graphs where they were asked
for and captured. A validation loss that is not finite ends the phase at once with NotFiniteError
(check_finite, packs use it too).
"""
import itertools
import logging
import math
import sys
import time

import torch
from tqdm import tqdm

from engine import markers
from engine.adamw import SoloAdamW
from engine.device import graphs_wanted
from engine.fileio import ConfigError
from engine.metrics import PhaseLoss, batch_counts, evaluate, evaluation_counts, loss_and_f1
from engine.models import dropout_layers

CURVES = ("train_loss", "val_loss", "train_f1", "val_f1")

log = logging.getLogger("experiment")


class NotFiniteError(ConfigError):
    """A phase's validation loss is NaN or inf; the message is one line naming the fold and the phase.
    The CLIs end as on a bad setting (exit 2): the settings or the data made it diverge."""


def check_finite(who, phase, epoch, val_loss):
    """Stop at the first epoch whose validation loss is not finite: no checkpoint after it can be
    trusted, so the fold publishes nothing and its base model is not stored. who: the fold."""
    if not math.isfinite(val_loss):
        markers.say(markers.NOT_FINITE, f"{who}, {phase} phase")
        stored = ", no base model stored" if phase == "base" else ""
        raise NotFiniteError(f"{who}, {phase} phase: validation loss is {val_loss} at epoch {epoch}; nothing "
                             f"published{stored} (training diverged: a lower --lr may help)")


def phase_generators(seed, device):
    """Seed everything a phase draws from, so a phase depends on the seed alone
    (a reused base model leaves the target phase unchanged): (batch order, augmentation, dropout masks)."""
    torch.manual_seed(seed)
    loader_generator = torch.Generator().manual_seed(seed)
    augment_generator = torch.Generator(device=device).manual_seed(seed + 1)
    dropout_generator = torch.Generator(device=device).manual_seed(seed + 2)
    return loader_generator, augment_generator, dropout_generator


def epochs(max_epochs):
    """The epoch numbers 0, 1, ... of a phase: --max_epochs of them, or no end with 'none'."""
    return itertools.count() if max_epochs == "none" else range(max_epochs)


def phase_loss(args, phase, device):
    """The phase's loss: --pos_weight (a detector's positive class) or --class_weights (a
    recognizer's classes) weigh the target phase only."""
    return PhaseLoss(target_weights(args) if phase == "target" else None, device)


def target_weights(args):
    """The target phase's loss weights: --pos_weight, --class_weights or None (run_fold checks that
    they fit the data's classes)."""
    return getattr(args, "pos_weight", None) or getattr(args, "class_weights", None)


def train_epoch(model, loader, optimizer, augment, device, loss_fn=None):
    model.train()
    loss_fn = loss_fn or PhaseLoss()
    counts = None
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
        found = batch_counts(logits.detach(), yb, loss.detach())
        counts = found if counts is None else counts + found
        n += len(yb)
    train_loss, train_f1 = loss_and_f1(counts, n)
    return train_loss, train_f1, n


def make_optimizer(model, lr, device, graphs):
    """AdamW: fused on CUDA, capturable when its step is replayed from a graph. On the CPU
    torch.optim.AdamW's own update written out (SoloAdamW), so CPU runs repeat to the bit."""
    trained = [p for p in model.parameters() if p.requires_grad]  # --finetune_layers head: the head's only
    if device.type != "cuda":
        return SoloAdamW(trained, lr)
    return torch.optim.AdamW(trained, lr=lr, fused=True, capturable=graphs)


def capture_steps(model, optimizer, loader, val, device, setting, loss_fn):
    """(training, evaluation) steps replayed from CUDA graphs, or (None, None) to run eagerly:
    when no batch is full, or when capture fails (an error with --cuda_graphs on)."""
    from engine import cuda_step  # CUDA only
    if len(loader.X) < loader.batch_size:
        log.info("CUDA graphs: no full batch to replay; running eagerly")
        return None, None
    try:
        # A built-in model takes each step's mask from outside the graph; a model of your own draws its own.
        dropout = dropout_layers(model) if hasattr(model, "feature_width") else []
        training = cuda_step.GraphedTraining(model, optimizer, (loader.X, loader.y), loader.batch_size,
                                             device, loss_fn, dropout[0] if dropout else None)
        evaluation = cuda_step.GraphedEvaluation(model, loss_fn)
        evaluation_counts(model, *val, device, evaluation)  # captures the validation batch sizes
        return training, evaluation
    except cuda_step.CaptureError as error:
        if setting == "on":
            raise ConfigError(f"--cuda_graphs on: capture failed: {error}") from None
        log.warning(f"CUDA graph capture failed ({error}); this phase runs eagerly")
        return None, None


class PhaseTracker:
    """One phase's epochs as both loops keep them (train_phase for a solo run, engine.packed_step for
    each member of a pack): the curves, the kept checkpoint, the patience count and the speed, so a
    pack and a solo run stop and keep alike by construction.

    metric "loss" keeps the first epoch with the lowest validation loss, "f1" the first with the
    highest validation F1; patience counts the epochs since the kept one. Both the lowest loss and
    the highest F1 (with their epochs) are recorded whichever decides."""

    def __init__(self, who, phase, first_epoch, patience, metric="loss"):
        self.who, self.phase, self.first_epoch, self.patience = who, phase, first_epoch, patience
        self.metric = metric
        self.curves = {name: [] for name in CURVES}
        self.best = {"epoch": None, "val_loss": math.inf, "val_f1": None, "state": None}  # the kept checkpoint
        self.lowest = {"epoch": None, "val_loss": math.inf, "val_f1": None}
        self.best_f1, self.best_f1_epoch = None, None
        self.stale, self.windows, self.seconds = 0, 0, 0.0

    @property
    def epochs_run(self):
        return len(self.curves["train_loss"])

    def end_epoch(self, scores, n, elapsed, state):
        """Record an epoch: scores (train loss, val loss, train F1, val F1, as CURVES), n training
        windows, elapsed seconds, state() the model's weights (called only for a new best). True
        when the patience has run out. A validation loss that is not finite: NotFiniteError."""
        epoch = self.first_epoch + self.epochs_run
        val_loss, val_f1 = scores[1], scores[3]
        check_finite(self.who, self.phase, epoch, val_loss)
        self.windows, self.seconds = self.windows + n, self.seconds + elapsed
        for name, value in zip(CURVES, scores):
            self.curves[name].append(value)
        higher_f1 = self.best_f1 is None or val_f1 > self.best_f1
        if val_loss < self.lowest["val_loss"]:
            self.lowest = {"epoch": epoch, "val_loss": val_loss, "val_f1": val_f1}
        if higher_f1:
            self.best_f1, self.best_f1_epoch = val_f1, epoch
        if (higher_f1 if self.metric == "f1" else self.lowest["epoch"] == epoch):
            self.best = {"epoch": epoch, "val_loss": val_loss, "val_f1": val_f1, "state": state()}
            self.stale = 0
        else:
            self.stale += 1
        return self.stale >= self.patience

    def result(self, cuda_graphs, fast_kernels):
        """The phase result every reader takes (engine.fold, engine.pack, the base cache)."""
        lowest = self.lowest
        return {"best_epoch": self.best["epoch"], "best_val_loss": lowest["val_loss"],
                "best_val_loss_epoch": lowest["epoch"], "val_f1_at_best_loss": lowest["val_f1"],
                "best_val_f1": self.best_f1, "best_val_f1_epoch": self.best_f1_epoch, "state": self.best["state"],
                "curves": self.curves, "epochs_run": self.epochs_run,
                "windows_per_s": self.windows / self.seconds if self.seconds else None,
                "cuda_graphs": cuda_graphs, "fast_kernels": fast_kernels}


class Progress:
    """A phase's epochs on the console: a bar on a terminal, else an epoch line at most every
    progress_every seconds (always the first); every epoch's line goes to the log file."""

    def __init__(self, phase, max_epochs, every):
        self.show_bar, self.every, self.shown_at = sys.stderr.isatty(), every, None
        self.bar = tqdm(total=max_epochs, desc=phase, unit="epoch", leave=False, disable=not self.show_bar)

    def epoch(self, line, val_loss, val_f1):
        if self.show_bar:
            self.bar.set_postfix(val_loss=f"{val_loss:.4f}", val_f1=f"{val_f1:.3f}")
            self.bar.update()
        due = not self.show_bar and (self.shown_at is None or time.monotonic() - self.shown_at >= self.every)
        self.shown_at = time.monotonic() if due else self.shown_at
        log.log(logging.INFO if due else logging.DEBUG, line)

    def close(self):
        self.bar.close()


def train_phase(phase, model, loader, val, args, patience, device, augment, first_epoch, who):
    """Train until the validation score has not improved for `patience` epochs (PhaseTracker).
    who: the fold, for the one-line error of a validation loss that is not finite."""
    graphs = graphs_wanted(getattr(args, "cuda_graphs", "auto"), device)
    optimizer = make_optimizer(model, args.lr, device, graphs)
    loss_fn = phase_loss(args, phase, device)
    steps = capture_steps(model, optimizer, loader, val, device, args.cuda_graphs, loss_fn) if graphs else (None, None)
    tracker = PhaseTracker(who, phase, first_epoch, patience, getattr(args, "early_stopping_metric", "loss"))
    progress = Progress(phase, None if args.max_epochs == "none" else args.max_epochs,
                        getattr(args, "progress_every", 30))
    try:
        for _ in epochs(args.max_epochs):
            if one_epoch(model, (loader, val, loss_fn), optimizer, augment, device, steps, tracker, progress):
                break
    finally:
        progress.close()
    best = tracker.best
    log.info(f"{phase}: {tracker.epochs_run} epochs, best epoch {best['epoch']} "
             f"(val loss {best['val_loss']:.4f}, f1 {best['val_f1']:.3f})")
    if best["epoch"] == first_epoch + tracker.epochs_run - 1:
        log.warning(f"{phase}: the best epoch is the last one, so early stopping never fired: "
                    f"may be under-trained: raise --max_epochs (now {args.max_epochs})")
    return tracker.result(steps[0] is not None, getattr(model, "fast_kernels", False))


def one_epoch(model, data, optimizer, augment, device, steps, tracker, progress):
    """Train one epoch (replayed from CUDA graphs where steps holds them), validate, record it;
    True when the phase stops here. data: (the loader, the validation windows, the phase's loss)."""
    loader, val, loss_fn = data
    training, evaluation = steps
    start = time.perf_counter()
    if training is not None:
        counts, n = training.epoch(loader, augment)
        train_loss, train_f1 = loss_and_f1(counts, n)
    else:
        train_loss, train_f1, n = train_epoch(model, loader, optimizer, augment, device, loss_fn)
    val_loss, val_f1 = evaluate(model, *val, device, evaluation, loss_fn)
    elapsed = time.perf_counter() - start
    stops = tracker.end_epoch((train_loss, val_loss, train_f1, val_f1), n, elapsed,
                              lambda: {k: v.detach().clone() for k, v in model.state_dict().items()})
    progress.epoch(f"{tracker.phase} epoch {tracker.first_epoch + tracker.epochs_run - 1}: train loss "
                   f"{train_loss:.4f} f1 {train_f1:.3f} | val loss {val_loss:.4f} f1 {val_f1:.3f} | "
                   f"{elapsed:.2f}s, {n / elapsed:.0f} windows/s", val_loss, val_f1)
    return stops
