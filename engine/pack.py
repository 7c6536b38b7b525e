"""Several folds trained in one process at once ("a pack"), each exactly as it would run alone
(pack_train.py is its CLI; the step itself is engine.packed_step).

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
(it prints RESULT_EXISTS) unless engine.results lets it replace that folder (--overwrite, or
its own --run_token: the runner's rerun of a pack trains its finished members again and replaces
their folders, which its own run wrote); run by hand, rerunning a pack after a crash trains only
the unfinished ones.

Output lines (stdout, flushed at once; the runner reads them as they come): when a
member finishes, its solo run's lines (`RESULT_DIR <folder>`, or `BASE_KEY <key>`
and `BASE_MODEL <path>` for base_only), then `MEMBER_DONE <i>`, i its 0-based
position in the jobs list (a base_only member finishes once its base model is in
the cache). A skipped member prints no MEMBER_DONE; no other line starts with
MEMBER_DONE. When the device runs out of memory, the pack prints `PACK_OUT_OF_MEMORY <size>` and exits 3
(the runner runs its unfinished members again in packs half as big). A folder that cannot be published
ends the whole pack (exit 2 for a one-line error, 1 for an OS error): the
members finished before keep their folders and MEMBER_DONE lines, the others print
none (the SSH runner then runs those alone).
"""
import dataclasses
import functools
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import torch

from composed_loader import TensorBatchLoader
from dataset.synthetic import ensure_demo_data
from engine import base_cache, markers, provenance, user_model
from engine.augment import make_augmenter
from engine.cli import build_parser, run_cli
from engine.data import check_participants, load_participants, shape_of
from engine.device import apply_threads, fast_kernels, graphs_wanted, place, resolve_device
from engine.fileio import ConfigError, read_json
from engine.flags import MAY_DIFFER, check_args, job_argv
from engine.fold import check_composition, check_window, concat, finish_fold, subsample, target_loader
from engine.fold_plan import plan_fold
from engine.models import build, head_names, stacking_problem
from engine.packed_step import PhaseJob, train_pack
from engine.phase import NotFiniteError, phase_generators, target_weights
from engine.results import replace_refusal
from engine.runlog import setup_logging

log = logging.getLogger("experiment")


# ---------------------------------------------------------------- members

def parse_json_text(text):
    """The jobs given with --json, or ConfigError in one line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--json: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None


def read_jobs(path, text):
    """The members' parsed flags, one argparse.Namespace per job of the JSON list: of the file
    at path, or of the JSON text (--json) when path is None. Errors name where the jobs came from."""
    jobs = read_json(path, "jobs file") if path is not None else parse_json_text(text)
    where = path if path is not None else "--json"
    if not isinstance(jobs, list) or not jobs or not all(isinstance(job, dict) for job in jobs):
        raise ConfigError(f"{where}: expected a non-empty JSON list of jobs (objects of flags)")
    parser = build_parser(enhanced=True)
    members = []
    for i, job in enumerate(jobs):
        try:
            args, rest = parser.parse_known_args(job_argv(job))
        except SystemExit:
            raise ConfigError(f"{where}: job {i} has invalid flags ({' '.join(job_argv(job))})") from None
        if rest:
            raise ConfigError(f"{where}: job {i} has unknown flags {' '.join(rest)}")
        check_args(args)
        members.append(args)
    return members


def check_compatible(members):
    """One line naming the first setting a member does not share with member 0."""
    first = vars(members[0])
    for i, args in enumerate(members[1:], start=1):
        for flag, value in vars(args).items():
            if flag not in MAY_DIFFER and value != first[flag]:
                raise ConfigError(
                    f"pack member {i} has --{flag} {value}, member 0 has {first[flag]}; "
                    f"a pack shares every setting but {', '.join(sorted(MAY_DIFFER))}")
    if any(m.print_base_key for m in members):
        raise ConfigError("--print_base_key is not a training run; it cannot be packed")


def pack_id(members):
    text = json.dumps([vars(m) for m in members], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


class Store:
    """The splits of the participants a pack needs, concatenated once (on the device when they
    fit): one copy of the data for every member, base and target packs alike; a member's windows
    are index tensors into it."""

    def __init__(self, data, device):
        parts, self.ranges, start = [], {}, 0
        for name, splits in data.items():
            for split, (X, y) in splits.items():
                self.ranges[name, split] = torch.arange(start, start + len(X))
                parts.append((X, y))
                start += len(X)
        self.X, self.y = place(list(concat(parts)), device)
        self.ranges = {key: index.to(self.X.device) for key, index in self.ranges.items()}
        self.device = device

    def indices(self, names, splits):
        """(index, index): the pair a loader takes in place of (X, y), so it yields indices."""
        index = torch.cat([self.ranges[p, s] for p in names for s in splits])
        return index, index

    def gather(self, index):
        return (self.X[index].to(self.device, non_blocking=True),
                self.y[index].to(self.device, non_blocking=True))

    def gather_into(self, index, x, y):
        """The windows at index (of any shape) into x and y, shaped index.shape + a window's: one
        indexed read of the store (and one copy, when the store stays in host memory)."""
        flat = index.reshape(-1)
        if self.X.device == x.device:
            torch.index_select(self.X, 0, flat, out=x.view(-1, *self.X.shape[1:]))
            torch.index_select(self.y, 0, flat, out=y.view(-1))
        else:
            x.copy_(self.X[flat].view(x.shape), non_blocking=True)
            y.copy_(self.y[flat].view(y.shape), non_blocking=True)


# ---------------------------------------------------------------- the pack

def seeded_start(args, seed, shape, device):
    """A phase's generators and initial weights, drawn in the solo run's order: (batch order
    generator, augmenter, initial state, dropout generator)."""
    loader_gen, augment_gen, dropout_gen = phase_generators(seed, device)
    model = build(args, shape.channels, n_classes=shape.n_classes)
    return loader_gen, make_augmenter(args, augment_gen), model.state_dict(), dropout_gen


def run_pack(members, size, identity):
    """Train the members whose result folders are missing (or that may replace them);
    returns the folders published."""
    first = members[0]
    device = resolve_device(first.device)
    graphs_wanted(first.cuda_graphs, device)  # --cuda_graphs on without CUDA: refused now
    participants = check_participants(first.data_path, first.participants)
    todo = members_to_train(members, participants)
    if not todo:
        return []
    needed = [p for p in participants if any(p == plan.target or p in plan.base_names for _, _, plan in todo)]
    data = load_participants(first.data_path, needed, first.window_size)
    store = Store(data, device)
    shape = shape_of(first.data_path, data)
    checked = check_window(first, shape)
    problem = user_model.is_spec(first.model) and stacking_problem(checked)
    if problem:
        return run_alone(todo, f"--model {first.model} trains alone: {problem}")
    model = build(first, shape.channels, fast_kernels(first, device), shape.n_classes).to(device)
    started, started_at = time.perf_counter(), provenance.now()
    # Hashed once per participant set: many members share their base participants.
    fingerprint = functools.cache(lambda names: base_cache.data_fingerprint(first.data_path, names))
    folds = plan_folds(todo, store, fingerprint)

    bases = obtain_bases(folds, model, store, shape, fingerprint)
    published = []
    jobs, fold_of_job = target_jobs(folds, bases, shape, device)

    def finish(i, target):
        fold = fold_of_job[i]
        finish_fold(fold["args"], model, device, fold["plan"], participants, shape, store.gather(fold["target_val"]),
                    data[fold["target"]]["test"], fold["base"], fold["entry"], target, started, fold["fingerprint"],
                    started_at, {"pack_size": size, "pack_id": identity})
        announce(fold["member"], markers.line(markers.RESULT_DIR, fold["final"]))
        published.append(fold["final"])

    if jobs:
        log.info(f"target phase: a pack of {len(jobs)}")
        train_pack("target", jobs, model, store, first, finish, lambda i, error: fail(fold_of_job[i], error),
                   head_names(model) if first.finetune_layers == "head" else None)
    failed = [str(fold["member"]) for fold in folds if fold["failed"]]
    if failed:
        raise NotFiniteError(f"member(s) {', '.join(failed)} ended on a validation loss that is not finite (each "
                             f"said so above): nothing of theirs is published or cached; the others went on")
    return published


def target_jobs(folds, bases, shape, device):
    """The target phase of each fold that has one and has not failed, as engine.fold.train_target
    starts it: (its PhaseJobs, the fold of each). bases: obtain_bases's."""
    jobs, fold_of_job = [], []
    for fold in folds:
        args, plan = fold["args"], fold["plan"]
        fold["base"], fold["entry"] = base, _ = bases.get(id(fold), (None, None))
        # base_only: finished, obtain_bases announced it once its base model was cached
        if not plan.mode.target_phase or fold["failed"]:
            continue
        loader_gen, augment, state, dropout_gen = seeded_start(args, plan.seeds.target, shape, device)
        if plan.mode.from_base:
            state = base["state"]
        loader = target_loader(args, fold["base_train"], fold["target_train"], loader_gen)
        jobs.append(PhaseJob(fold["who"], state, loader, fold["target_val"],
                             args.early_stopping_patience_target, augment,
                             (base["epochs_run"] if base else 0) + 1, args.lr, args.early_stopping_metric,
                             target_weights(args), dropout_gen))
        fold_of_job.append(fold)
    return jobs, fold_of_job


def run_alone(todo, why):
    """A model a pack cannot stack: each member runs as its solo run would, one after another,
    with the pack's output lines; returns the folders published."""
    from engine.fold import run_fold
    log.info(f"pack_train.py: {why}; its {len(todo)} member(s) run one after another")  # console and log file
    published = []
    for member, args, _ in todo:
        final = run_fold(args)
        announce(member, *([markers.line(markers.RESULT_DIR, final)] if final else []))
        published += [final] if final else []
    return published


def members_to_train(members, participants):
    """[(member, its flags, its FoldPlan)] of the members to train: not those whose result folder
    exists and may not be replaced (each says so: RESULT_EXISTS); two on one folder is an error."""
    todo, finals = [], set()
    for member, args in enumerate(members):
        plan = plan_fold(args, participants)
        args.fold = plan.fold  # a fold named by its participant is recorded as its index, as its folder says
        if plan.mode.target_phase:  # base_only publishes no result folder
            if plan.final in finals:
                raise ConfigError(f"{plan.final}: two members of the pack would write this result folder")
            finals.add(plan.final)
        refusal = plan.mode.target_phase and replace_refusal(plan.final, args.overwrite, args.run_token)
        if refusal:
            markers.say(markers.RESULT_EXISTS, plan.final)
            print(f"{refusal}: member skipped", flush=True)
            continue
        todo.append((member, args, plan))
    return todo


def plan_folds(todo, store, fingerprint):
    """Each member's fold: its participants, its windows (indices into the store), checked before
    any training."""
    folds = []
    for member, args, plan in todo:
        target_train = subsample(*store.indices([plan.target], ["train"]), args.target_data_pct,
                                 plan.seeds.target_data, args.target_count)
        target_val = subsample(*store.indices([plan.target], ["val"]), args.target_val_pct, plan.seeds.target_val)
        base_train = store.indices(plan.base_names, ["train", "val"]) if plan.base_names else None
        check_composition(args, len(target_train[0]), len(base_train[0]) if base_train else 0)
        folds.append({"member": member, "args": args, "plan": plan, "target": plan.target,
                      "base_names": plan.base_names, "final": plan.final,
                      "fingerprint": fingerprint(frozenset([plan.target, *plan.base_names])),
                      "target_train": target_train, "target_val": target_val[0],
                      "base_train": base_train, "who": plan.who, "failed": False})
    return folds


def fail(fold, error):
    """A member whose phase ended on a validation loss that is not finite: its one line (stderr), no
    MEMBER_DONE, nothing published; the pack goes on without it and ends with exit status 2."""
    fold["failed"] = True
    print(f"member {fold['member']}: error: {error}", file=sys.stderr, flush=True)


def announce(member, *lines):
    """Member `member` has finished: its solo run's lines, then MEMBER_DONE, flushed (the runner reads them live)."""
    for line in (*lines, markers.line(markers.MEMBER_DONE, member)):
        print(line, flush=True)


def obtain_bases(folds, model, store, shape, fingerprint):
    """{id(fold): (base result, cache entry or None)}: reused from the cache, or trained as one pack
    whose members are each stored in the cache as soon as they stop, so a crash loses only the
    unfinished ones. A base_only fold is announced as soon as its base model is in the cache.
    fingerprint(frozenset of participants): their data fingerprint."""
    first = folds[0]["args"]
    cached = first.base_cache_dir and not first.no_base_cache  # settings every member shares
    found, missing = {}, {}

    def settle(fold, result, entry):
        found[id(fold)] = (result, entry)
        if not fold["plan"].mode.target_phase:
            announce(fold["member"], markers.line(markers.BASE_KEY, entry.key),
                     markers.line(markers.BASE_MODEL, entry.path))

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
        trained["provenance"] = dict(provenance.record(store.device, base_files, started, trained),
                                     **user_model.provenance_of(args))
        entry = None
        if cached:
            entry = base_cache.get_or_train(first.base_cache_dir, keys[i], base_files,
                                            base_cache.key_settings(args, names), lambda: trained)
        for n, fold in enumerate(group):
            # As in solo runs one after another: the first trained it, the others reuse it.
            shared = entry and dataclasses.replace(entry, reused=entry.reused or n > 0)
            settle(fold, entry.result if entry else trained, shared)

    def fail_group(i, error):  # every fold of the base model fails with it; none is stored
        for fold in missing[keys[i]]:
            fail(fold, error)

    jobs = [base_job(missing[key], store, shape) for key in keys]
    log.info(f"base phase: a pack of {len(jobs)} base model(s)")
    train_pack("base", jobs, model, store, first, store_base, fail_group)
    return found


def base_job(group, store, shape):
    """The base phase of engine.fold.train_base_model, over indices, for the folds that share it."""
    args, names, seeds = group[0]["args"], group[0]["base_names"], group[0]["plan"].seeds
    stop = subsample(*store.indices(names, ["test"]), args.base_val_pct, seeds.base_stop)
    loader_gen, augment, state, dropout_gen = seeded_start(args, seeds.base, shape, store.device)
    loader = TensorBatchLoader(*store.indices(names, ["train", "val"]), args.batch_size, shuffle=True,
                               generator=loader_gen)
    return PhaseJob(", ".join(fold["who"] for fold in group), state, loader, stop[0],
                    args.early_stopping_patience, augment, 1, args.lr, args.early_stopping_metric, None, dropout_gen)


def main(jobs_path, json_text, prog="pack_train.py"):
    """pack_train.py: the jobs of a jobs file (or of JSON text) as one pack; returns the exit status."""
    def work(log_path):
        if (jobs_path is None) == (json_text is None):
            raise ConfigError("give the jobs as a file or as --json TEXT (exactly one of them)")
        members = read_jobs(jobs_path, json_text)
        check_compatible(members)
        apply_threads(members[0])
        ensure_demo_data(members[0].data_path)
        setup_logging(log_path)
        try:
            run_pack(members, len(members), pack_id(members))
        except torch.OutOfMemoryError:
            # The runner runs the unfinished members again in smaller packs (docs/contracts.md).
            markers.say(markers.OUT_OF_MEMORY, len(members))
            print(f"{prog}: error: the device ran out of memory with {len(members)} members in one process; the "
                  f"finished ones are published, run the others in smaller packs", file=sys.stderr)
            return 3
        return 0
    return run_cli(prog, work, "finished members stay published, the others are not")
