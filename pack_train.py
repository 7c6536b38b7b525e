"""Train several folds in one process at once ("a pack"), each exactly as it would run alone.

    python pack_train.py jobs.json      # a jobs JSON (or a slice of one) from generate_jobs.py
    python pack_train.py --json TEXT    # the same list as JSON text (how the runner starts a pack)

Every job is parsed by oct1_train.py's parser. Members share the model, the data
folder (so the channels and window length), the batch size and every other flag,
except those in MAY_DIFFER. Their parameters are stacked and trained together
with torch.func (functional_call + vmap); each member draws its own batches (its
solo run's loaders, over indices into one copy of the data on the device), has
its own AdamW state and learning rate, early stopping, best checkpoint and curves.
A member that stops no longer changes; the pack ends when all have stopped.
With --cuda_graphs (auto: on CUDA devices) every packed step, partial batches
included, replays one captured CUDA graph.

Base models missing from the cache are trained as a pack first, each stored in
the cache as soon as it stops, then the target phases. Each member's result
folder is published (atomically) as soon as it finishes, with pack_size and
pack_id added to hyperparameters.json; a member whose folder exists is skipped
unless it passes --overwrite (then it is trained again and replaces it), so
rerunning a pack after a crash trains only the unfinished ones.

Output lines (stdout, flushed at once; the runner reads them as they come): when a
member finishes, its solo run's lines (`RESULT_DIR <folder>`, or `BASE_KEY <key>`
and `BASE_MODEL <path>` for base_only), then `MEMBER_DONE <i>`, i its 0-based
position in the jobs list (a base_only member finishes once its base model is in
the cache). A skipped member prints no MEMBER_DONE; no other line starts with
MEMBER_DONE. A folder that cannot be published ends the whole pack (exit 2 for a one-line error, 1 for
an OS error): the
members finished before keep their folders and MEMBER_DONE lines, the others print
none (the SSH runner then runs those alone).
"""
import argparse
import dataclasses
import functools
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

import base_cache
import experiment
import fileio
import provenance
from commands import job_argv
from composed_loader import TensorBatchLoader
from data import check_participants, load_participants, resolve_fold
from packing import MAY_DIFFER

log = logging.getLogger("experiment")
# torch.optim.AdamW's defaults, which the solo runs use.
BETAS, EPS, WEIGHT_DECAY = (0.9, 0.999), 1e-8, 1e-2


# ---------------------------------------------------------------- members

def parse_json_text(text):
    """The jobs given with --json, or ConfigError in one line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise experiment.ConfigError(f"--json: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None


def read_jobs(path, text):
    """The members' parsed flags, one argparse.Namespace per job of the JSON list: of the file
    at path, or of the JSON text (--json) when path is None. Errors name where the jobs came from."""
    jobs = fileio.read_json(path, "jobs file") if path is not None else parse_json_text(text)
    where = path if path is not None else "--json"
    if not isinstance(jobs, list) or not jobs or not all(isinstance(job, dict) for job in jobs):
        raise experiment.ConfigError(f"{where}: expected a non-empty JSON list of jobs (objects of flags)")
    parser = experiment.build_parser(enhanced=True)
    members = []
    for i, job in enumerate(jobs):
        try:
            args, rest = parser.parse_known_args(job_argv(job))
        except SystemExit:
            raise experiment.ConfigError(f"{where}: job {i} has invalid flags ({' '.join(job_argv(job))})") from None
        if rest:
            raise experiment.ConfigError(f"{where}: job {i} has unknown flags {' '.join(rest)}")
        experiment.check_args(args)
        members.append(args)
    return members


def check_compatible(members):
    """One line naming the first setting a member does not share with member 0."""
    first = vars(members[0])
    for i, args in enumerate(members[1:], start=1):
        for flag, value in vars(args).items():
            if flag not in MAY_DIFFER and value != first[flag]:
                raise experiment.ConfigError(
                    f"pack member {i} has --{flag} {value}, member 0 has {first[flag]}; "
                    f"a pack shares every setting but {', '.join(sorted(MAY_DIFFER))}")
    if any(m.print_base_key for m in members):
        raise experiment.ConfigError("--print_base_key is not a training run; it cannot be packed")


def pack_id(members):
    text = json.dumps([vars(m) for m in members], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class Store:
    """All participants' splits concatenated once (on the device when it fits);
    a member's windows are index tensors into it."""

    def __init__(self, data, device):
        parts, self.ranges, start = [], {}, 0
        for name, splits in data.items():
            for split, (X, y) in splits.items():
                self.ranges[name, split] = torch.arange(start, start + len(X))
                parts.append((X, y))
                start += len(X)
        self.X, self.y = experiment.place(list(experiment.concat(parts)), device)
        self.ranges = {key: index.to(self.X.device) for key, index in self.ranges.items()}
        self.device = device

    def indices(self, names, splits):
        """(index, index): the pair a loader takes in place of (X, y), so it yields indices."""
        index = torch.cat([self.ranges[p, s] for p in names for s in splits])
        return index, index

    def gather(self, index):
        return (self.X[index].to(self.device, non_blocking=True),
                self.y[index].to(self.device, non_blocking=True))


class PhaseJob:
    """What one member trains in one phase: its start, batches, validation set and patience."""

    def __init__(self, label, state, loader, val, patience, augment, first_epoch, lr):
        self.label, self.state, self.loader, self.val = label, state, loader, val
        self.patience, self.augment, self.first_epoch, self.lr = patience, augment, first_epoch, lr


# ---------------------------------------------------------------- the packed step

class StackedAdamW:
    """torch.optim.AdamW over stacked parameters, one learning rate and one step count per
    member; a member outside `active` keeps its parameters and optimizer state. Everything
    lives on the parameters' device and is updated in place, so a CUDA graph can replay it."""

    def __init__(self, params, lrs, device):
        self.params = params
        self.lr = torch.tensor(lrs, dtype=torch.float64, device=device)
        self.steps = torch.zeros(len(lrs), dtype=torch.float64, device=device)
        self.exp_avg = {name: torch.zeros_like(p) for name, p in params.items()}
        self.exp_avg_sq = {name: torch.zeros_like(p) for name, p in params.items()}

    @torch.no_grad()
    def step(self, active):
        beta1, beta2 = BETAS
        self.steps += active.double()
        steps = self.steps.clamp(min=1)
        # Bias corrections in double precision, as the solo optimizer computes them in Python floats.
        decay = 1 - self.lr * WEIGHT_DECAY
        step_size = self.lr / (1 - beta1 ** steps)
        correction2_sqrt = (1 - beta2 ** steps).sqrt()
        for name, p in self.params.items():
            shape = (-1,) + (1,) * (p.dim() - 1)

            def per_member(values):
                return values.to(p.dtype).view(shape)

            keep = active.view(shape)
            m = self.exp_avg[name].lerp(p.grad, 1 - beta1)
            v = self.exp_avg_sq[name] * beta2 + (1 - beta2) * p.grad * p.grad
            denom = v.sqrt() / per_member(correction2_sqrt) + EPS
            new = p * per_member(decay) - per_member(step_size) * m / denom
            p.copy_(torch.where(keep, new, p))
            self.exp_avg[name].copy_(torch.where(keep, m, self.exp_avg[name]))
            self.exp_avg_sq[name].copy_(torch.where(keep, v, self.exp_avg_sq[name]))
            p.grad = None


def member_counts(logits, y, losses, real):
    """experiment.batch_counts of every member (one row each) over its real windows only."""
    pred, truth = logits > 0, y > 0.5
    return torch.stack([losses * real.sum(dim=1), (pred & truth & real).sum(dim=1),
                        (pred & ~truth & real).sum(dim=1), (~pred & truth & real).sum(dim=1),
                        (~pred & ~truth & real).sum(dim=1)], dim=1).float()


class PackedStep:
    """One training step of every member at once, over fixed buffers, so that it can be
    captured as one CUDA graph and replayed for every step, partial batches included.

    load() copies each stepping member's batch into x and y, zero-padded to batch_size;
    sizes holds its window count (0 for a member not stepping now). The loss weighs the
    padding out and the optimizer leaves members outside `active` as they are. Each
    member's [loss * n, tp, fp, fn, tn] adds up in counts (a row per member).
    """

    def __init__(self, model, stacked, optimizer, batch_size, window_shape, device):
        k = len(optimizer.lr)
        self.model, self.stacked, self.optimizer = model, stacked, optimizer
        self.x = torch.zeros((k, batch_size, *window_shape), device=device)
        self.y = torch.zeros((k, batch_size), device=device)
        self.sizes = torch.zeros(k, dtype=torch.long, device=device)
        self.active = torch.zeros(k, dtype=torch.bool, device=device)
        self.positions = torch.arange(batch_size, device=device)
        self.counts = torch.zeros((k, 5), device=device)
        self.graph = None

    def _forward(self, member_tensors, x):
        return functional_call(self.model, member_tensors, (x,))

    def _compute(self):
        logits = vmap(self._forward)(self.stacked, self.x)
        real = self.positions < self.sizes.view(-1, 1)
        per_window = F.binary_cross_entropy_with_logits(logits, self.y, reduction="none") * real.to(logits.dtype)
        losses = per_window.sum(dim=1) / self.sizes.clamp(min=1).to(logits.dtype)
        losses.sum().backward()
        self.optimizer.step(self.active)
        self.counts += member_counts(logits.detach(), self.y, losses.detach(), real)

    def capture(self, setting):
        """Replay the step from a CUDA graph from now on; when capture fails, run eagerly
        (--cuda_graphs auto, saying so in the log) or raise (on). No member is active
        before the first load(), so the warm-up steps change no parameter or optimizer state."""
        import cuda_step  # CUDA only
        try:
            self.graph = cuda_step.capture(self._compute, "packed training step")
        except cuda_step.CaptureError as error:
            if setting == "on":
                raise experiment.ConfigError(f"--cuda_graphs on: capture failed: {error}") from None
            log.warning(f"CUDA graph capture failed ({error}); this phase runs eagerly")
            for p in self.optimizer.params.values():  # a capture cut short may leave gradients behind
                p.grad = None
        self.counts.zero_()

    def load(self, batches):
        """batches: {member: (x, y)} of the members that step now. Only device-side writes
        (no copy from host memory), so nothing waits for the previous step to finish."""
        for i in range(len(self.x)):
            n = len(batches[i][1]) if i in batches else 0
            if n:
                self.x[i, :n], self.y[i, :n] = batches[i]
            self.x[i, n:], self.y[i, n:] = 0, 0
            self.sizes[i] = n
        self.active.copy_(self.sizes > 0)

    def run(self):
        if self.graph is not None:
            self.graph.replay()
        else:
            self._compute()


def member_state(stacked, i):
    return {name: tensor[i].detach().clone() for name, tensor in stacked.items()}


def train_pack(phase, jobs, model, store, batch_size, max_epochs, cuda_graphs, on_done):
    """Train every job's model together until each has stopped; on_done(i, result) is
    called as job i stops, with what experiment.train_phase returns for a solo run.
    cuda_graphs: --cuda_graphs auto|on|off."""
    k, device = len(jobs), store.device
    names = [name for name, _ in model.named_parameters()]
    stacked = {name: torch.stack([job.state[name] for job in jobs]).to(device) for name in model.state_dict()}
    params = {name: stacked[name].requires_grad_() for name in names}
    optimizer = StackedAdamW(params, [job.lr for job in jobs], device)
    model.eval()  # the same as train mode for models without dropout (checked before)
    step = PackedStep(model, stacked, optimizer, batch_size, store.X.shape[1:], device)
    if experiment.graphs_wanted(cuda_graphs, device):
        step.capture(cuda_graphs)

    tracks = [{"curves": {name: [] for name in experiment.CURVES}, "best": None, "best_f1": None,
               "best_f1_epoch": None, "stale": 0, "windows": 0, "seconds": 0.0} for _ in jobs]
    running = list(range(k))
    for epoch in range(max_epochs):
        start = time.perf_counter()
        batches = {i: iter(jobs[i].loader) for i in running}
        n_steps = max(len(jobs[i].loader) for i in running)
        step.counts.zero_()
        seen = {i: 0 for i in running}
        for number in range(n_steps):
            inputs = {}
            for i in running:
                if number < len(jobs[i].loader):
                    index, _ = next(batches[i])
                    x, y = store.gather(index)
                    if jobs[i].augment is not None:
                        x = jobs[i].augment(x)
                    inputs[i] = (x, y)
                    seen[i] += len(y)
            step.load(inputs)
            step.run()
        counts = step.counts.cpu()  # waits for the epoch's steps (queued, on a GPU), so elapsed includes them
        elapsed = time.perf_counter() - start
        for i in list(running):
            if end_epoch(phase, jobs[i], tracks[i], model, stacked, i, epoch, counts[i], seen[i], elapsed,
                         max_epochs):
                running.remove(i)
                on_done(i, phase_result(tracks[i], step.graph is not None))
        if not running:
            break


def end_epoch(phase, job, track, model, stacked, i, epoch, counts, n, elapsed, max_epochs):
    """Record member i's epoch as train_phase does; True when it stops here."""
    train_loss, train_f1 = experiment.loss_and_f1(counts, n)
    state = member_state(stacked, i)
    model.load_state_dict(state)
    val_loss, val_f1 = experiment.evaluate(model, *job.val, job.val[0].device)
    track["windows"] += n
    track["seconds"] += elapsed
    for name, value in zip(experiment.CURVES, (train_loss, val_loss, train_f1, val_f1)):
        track["curves"][name].append(value)
    number = job.first_epoch + epoch
    if track["best"] is None or val_loss < track["best"]["val_loss"]:
        track["best"] = {"epoch": number, "val_loss": val_loss, "val_f1": val_f1, "state": state}
        track["stale"] = 0
    else:
        track["stale"] += 1
    if track["best_f1"] is None or val_f1 > track["best_f1"]:
        track["best_f1"], track["best_f1_epoch"] = val_f1, number
    log.debug(f"{job.label} {phase} epoch {number}: train loss {train_loss:.4f} f1 {train_f1:.3f} | "
              f"val loss {val_loss:.4f} f1 {val_f1:.3f}")
    return track["stale"] >= job.patience or epoch + 1 == max_epochs


def phase_result(track, cuda_graphs_used):
    best = track["best"]
    return {"best_epoch": best["epoch"], "best_val_loss": best["val_loss"], "val_f1_at_best_loss": best["val_f1"],
            "best_val_f1": track["best_f1"], "best_val_f1_epoch": track["best_f1_epoch"], "state": best["state"],
            "curves": track["curves"], "epochs_run": len(track["curves"]["train_loss"]),
            "windows_per_s": track["windows"] / track["seconds"] if track["seconds"] else None,
            "cuda_graphs": cuda_graphs_used}


# ---------------------------------------------------------------- the pack

def seeded_start(args, seed, n_channels, device):
    """A phase's generators and initial weights, drawn in the solo run's order."""
    loader_gen, augment_gen = experiment.phase_generators(seed, device)
    model = experiment.build_model(args.model, n_channels)
    return loader_gen, experiment.make_augmenter(args, augment_gen), model.state_dict()


def run_pack(members, size, identity):
    """Train the members whose result folders are missing (or that pass --overwrite);
    returns the folders published."""
    first = members[0]
    device = experiment.resolve_device(first.device)
    experiment.graphs_wanted(first.cuda_graphs, device)  # --cuda_graphs on without CUDA: refused now
    participants = check_participants(first.data_path, first.participants)
    model = experiment.build_model(first.model, 1)
    if any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()):
        raise experiment.ConfigError(f"--model {first.model} uses dropout, whose random masks a pack cannot "
                                     "draw as the solo runs do; run its jobs with oct1_train.py")
    todo, finals = [], set()
    for member, args in enumerate(members):
        target_name, base_names = resolve_fold(participants, args.fold, args.n_base_participants)
        base_names = [] if args.mode == "target_only" else base_names
        final = experiment.result_dir(args, args.fold, target_name)
        if args.mode != "base_only":  # base_only publishes no result folder
            if final in finals:
                raise experiment.ConfigError(f"{final}: two members of the pack would write this result folder")
            finals.add(final)
        if args.mode != "base_only" and final.exists() and not args.overwrite:
            print(f"{final}: exists; member skipped (delete it or pass --overwrite to train it again)", flush=True)
            continue
        todo.append((member, args, target_name, base_names, final))
    if not todo:
        return []
    data = load_participants(first.data_path, participants, first.window_size)
    store = Store(data, device)
    n_channels = store.X.shape[1]
    model = experiment.build_model(first.model, n_channels).to(device)
    started, started_at = time.perf_counter(), provenance.now()
    # Hashed once per participant set: many members share their base participants.
    fingerprint = functools.cache(lambda names: base_cache.data_fingerprint(first.data_path, names))

    folds = []
    for member, args, target_name, base_names, final in todo:
        target_train = experiment.subsample(*store.indices([target_name], ["train"]), args.target_data_pct,
                                            args.seed, args.target_count)
        target_val = experiment.subsample(*store.indices([target_name], ["val"]), args.target_val_pct,
                                          args.seed + 3)
        base_train = store.indices(base_names, ["train", "val"]) if base_names else None
        experiment.check_composition(args, len(target_train[0]), len(base_train[0]) if base_train else 0)
        folds.append({"member": member, "args": args, "target": target_name, "base_names": base_names,
                      "final": final, "fingerprint": fingerprint(frozenset([target_name, *base_names])),
                      "target_train": target_train, "target_val": store.gather(target_val[0]),
                      "base_train": base_train})

    bases = obtain_bases(folds, model, store, n_channels, fingerprint)
    published = []
    jobs, fold_of_job = [], []
    for fold in folds:
        args = fold["args"]
        base, entry = bases.get(id(fold), (None, None))
        fold["base"], fold["entry"] = base, entry
        if args.mode == "base_only":  # finished: obtain_bases announced it once its base model was cached
            continue
        loader_gen, augment, state = seeded_start(args, args.seed + 1000, n_channels, device)
        if base is not None:
            state = base["state"]
        loader = experiment.target_loader(args, fold["base_train"], fold["target_train"], loader_gen)
        jobs.append(PhaseJob(f"fold{args.fold}_{fold['target']}", state, loader, fold["target_val"],
                             args.early_stopping_patience_target, augment,
                             (base["epochs_run"] if base else 0) + 1, args.lr))
        fold_of_job.append(fold)

    def finish(i, target):
        fold = fold_of_job[i]
        experiment.finish_fold(fold["args"], model, device, fold["final"], participants, fold["target"],
                               fold["base_names"], fold["target_val"], data[fold["target"]]["test"], fold["base"],
                               fold["entry"], target, started, fold["fingerprint"], started_at,
                               {"pack_size": size, "pack_id": identity})
        announce(fold["member"], f"RESULT_DIR {fold['final']}")
        published.append(fold["final"])

    if jobs:
        log.info(f"target phase: a pack of {len(jobs)}")
        train_pack("target", jobs, model, store, first.batch_size, first.max_epochs, first.cuda_graphs, finish)
    return published


def announce(member, *lines):
    """Member `member` has finished: its solo run's lines, then MEMBER_DONE, flushed (the runner reads them live)."""
    for line in (*lines, f"MEMBER_DONE {member}"):
        print(line, flush=True)


def obtain_bases(folds, model, store, n_channels, fingerprint):
    """{id(fold): (base result, cache entry or None)}: reused from the cache, or trained as one pack
    whose members are each stored in the cache as soon as they stop, so a crash loses only the
    unfinished ones. A base_only fold is announced as soon as its base model is in the cache.
    fingerprint(frozenset of participants): their data fingerprint."""
    first = folds[0]["args"]
    cached = first.base_cache_dir and not first.no_base_cache  # settings every member shares
    found, missing = {}, {}

    def settle(fold, result, entry):
        found[id(fold)] = (result, entry)
        if fold["args"].mode == "base_only":
            announce(fold["member"], f"BASE_KEY {entry.key}", f"BASE_MODEL {entry.path}")

    for fold in folds:
        args, names = fold["args"], fold["base_names"]
        if not names:
            continue
        key = base_cache.base_key(args, names)
        fold["key"] = key
        if cached:
            folder = Path(first.base_cache_dir) / key
            result, _ = base_cache.read_entry(folder, fingerprint(frozenset(names)))
            if result is not None:
                log.info(f"base model {key}: reused from {folder}")
                settle(fold, result, base_cache.Entry(key, folder, result, True))
                continue
        missing.setdefault(key, []).append(fold)
    if not missing:
        return found
    started, keys = provenance.now(), list(missing)

    def store_base(i, trained):
        group = missing[keys[i]]
        args, names = group[0]["args"], group[0]["base_names"]
        base_files = fingerprint(frozenset(names))
        trained["provenance"] = provenance.record(store.device, base_files, started)
        entry = None
        if cached:
            entry = base_cache.get_or_train(first.base_cache_dir, keys[i], base_files,
                                            base_cache.key_settings(args, names), lambda: trained)
        for n, fold in enumerate(group):
            # As in solo runs one after another: the first trained it, the others reuse it.
            shared = entry and dataclasses.replace(entry, reused=entry.reused or n > 0)
            settle(fold, entry.result if entry else trained, shared)

    jobs = [base_job(missing[key][0], store, n_channels) for key in keys]
    log.info(f"base phase: a pack of {len(jobs)} base model(s)")
    train_pack("base", jobs, model, store, first.batch_size, first.max_epochs, first.cuda_graphs, store_base)
    return found


def base_job(fold, store, n_channels):
    """The base phase of experiment.train_base_model, over indices."""
    args, names = fold["args"], fold["base_names"]
    stop = experiment.subsample(*store.indices(names, ["test"]), args.base_val_pct, args.seed + 2)
    loader_gen, augment, state = seeded_start(args, args.seed, n_channels, store.device)
    loader = TensorBatchLoader(*store.indices(names, ["train", "val"]), args.batch_size, shuffle=True,
                               generator=loader_gen)
    return PhaseJob(f"base {fold['key']}", state, loader, store.gather(stop[0]), args.early_stopping_patience,
                    augment, 1, args.lr)


# ---------------------------------------------------------------- CLI

def main(argv=None):
    parser = argparse.ArgumentParser(description="Train the jobs of a jobs JSON together, as one pack.",
                                     allow_abbrev=False)
    parser.add_argument("jobs", nargs="?", help="jobs JSON: a list of jobs, each an object of oct1_train.py flags")
    parser.add_argument("--json", metavar="TEXT", help="the jobs as JSON text instead of a file (how the runner "
                        "starts a pack on a host)")
    given = parser.parse_args(argv)

    def work(log_path):
        if (given.jobs is None) == (given.json is None):
            raise experiment.ConfigError("give the jobs as a file or as --json TEXT (exactly one of them)")
        members = read_jobs(given.jobs, given.json)
        check_compatible(members)
        experiment.apply_threads(members[0])
        experiment.ensure_demo_data(members[0].data_path)
        experiment.setup_logging(log_path)
        run_pack(members, len(members), pack_id(members))
        return 0
    return experiment.run_cli(parser.prog, work, "finished members stay published, the others are not")

if __name__ == "__main__":
    sys.exit(main())
