"""A grid of training settings turned into validated jobs.

A grid file is {"grid": {flag: [values]}, "fixed": {flag: value},
"folds": "all" or [indices], "prefix": "..."}. Every job is checked by the
training CLI's own parser. Settings that do not matter for a job collapse:
a flag outside its modes or without its condition, both from the flag registry
(engine.flags: target_only ignores n_base_participants, target_batch_pct, the base
patience and base_val_pct; epoch_rule needs target_batch_pct, target_count a
target share, the augmentation parameters use_augmentation), and an
n_base_participants of at least the number of other participants is "all";
and jobs with the same id are dropped. Each configuration gets its own prefix,
`{prefix}/{flag}-{value}_...` over the grid's varying flags, so its folds land
in their own folder. generate_jobs.py is its CLI.
"""
import contextlib
import hashlib
import importlib.util
import itertools
import json
import shlex
import sys
from collections import Counter
from pathlib import Path

from dataset.synthetic import ensure_demo_data
from engine import base_cache
from engine.data import DataError, check_participants
from engine.fileio import ConfigError, read_json, write_atomic
from engine.flags import (BASE_MODES, BY_NAME, check_args, job_argv, matters, prefix_problem,
                          settings_with_defaults)
from runner.commands import job_counts

GRID_KEYS = {"grid", "fixed", "folds", "prefix"}
# Flags a grid may not set: fold comes from "folds", the rest are not training runs.
RESERVED_FLAGS = {"fold", "prefix", "print_base_key"}
DEFAULT_GRID = {
    "grid": {"mode": ["full_fine_tuning", "target_only"]},
    "fixed": {},
    "folds": "all",
    "prefix": "demo_grid",
}


class GridError(Exception):
    """A bad grid file, flag or value; the message is one line naming the entry."""


def load_script_parser(script):
    """The argument parser of a training CLI such as oct1_train.py."""
    path = Path(script)
    if not path.is_file():
        raise GridError(f"--script {script}: file not found")
    spec = importlib.util.spec_from_file_location(f"_training_cli_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "build_parser"):
        raise GridError(f"--script {script}: has no build_parser() to validate jobs with")
    return module.build_parser()


def parse_job(parser, flags, where):
    """Parse flags with the CLI's parser; any complaint becomes a GridError naming `where`."""
    def fail(message):
        raise GridError(f"{where}: {message}")
    parser.error = fail
    args = parser.parse_args(job_argv(flags))
    try:
        check_args(args)
    except ConfigError as err:
        fail(str(err))
    return args


def load_grid(path):
    try:
        spec = read_json(path, "grid file")
    except ConfigError as err:
        raise GridError(str(err)) from None
    if not isinstance(spec, dict):
        raise GridError(f"{path}: expected an object with keys {sorted(GRID_KEYS)}")
    unknown = set(spec) - GRID_KEYS
    if unknown:
        raise GridError(f"{path}: unknown key(s) {sorted(unknown)}; expected {sorted(GRID_KEYS)}")
    return spec


def parse_set(text):
    """`flag=v1,v2` -> (flag, [values]); values read as JSON where they parse."""
    flag, sep, values = text.partition("=")
    if not sep or not flag or not values:
        raise GridError(f"--set {text!r}: expected flag=value[,value...]")

    def value(item):
        try:
            return json.loads(item)
        except json.JSONDecodeError:
            return item
    return flag.strip(), [value(v.strip()) for v in values.split(",")]


def apply_sets(spec, sets):
    for section in ("grid", "fixed"):  # checked before they are copied: dict() of a list fails obscurely
        if not isinstance(spec.get(section, {}), dict):
            raise GridError(f'"{section}" must be an object of flag: values, got {json.dumps(spec[section])}')
    spec = {"grid": dict(spec.get("grid", {})), "fixed": dict(spec.get("fixed", {})),
            "folds": spec.get("folds", "all"), "prefix": spec.get("prefix", "grid")}
    for flag, values in map(parse_set, sets):
        if flag == "folds":
            spec["folds"] = "all" if values == ["all"] else values
        elif flag == "prefix":
            spec["prefix"] = str(values[0])
        elif len(values) == 1:  # one value is not a dimension: no folder level of its own
            spec["grid"].pop(flag, None)
            spec["fixed"][flag] = values[0]
        else:
            spec["fixed"].pop(flag, None)
            spec["grid"][flag] = values
    return spec


def check_entries(spec, parser):
    """Each fixed value and each grid value alone, so an error names its entry."""
    known = {a.dest for a in parser._actions if a.option_strings} - {"help"}
    if not isinstance(spec["grid"], dict) or not isinstance(spec["fixed"], dict):
        raise GridError('"grid" and "fixed" must be objects of flag: values')
    if not isinstance(spec["prefix"], str) or not spec["prefix"].strip("/"):
        raise GridError(f'"prefix" must be a non-empty string, got {spec["prefix"]!r}')
    if prefix_problem(spec["prefix"]):
        raise GridError(f'"prefix": {prefix_problem(spec["prefix"])}')
    for section, entries in (("fixed", spec["fixed"]), ("grid", spec["grid"])):
        for flag, values in entries.items():
            if flag not in known:
                raise GridError(f'{section}["{flag}"]: unknown flag --{flag} for this training CLI')
            if flag in RESERVED_FLAGS:
                raise GridError(f'{section}["{flag}"]: --{flag} cannot be set in a grid (folds: use "folds")')
            if section == "grid":
                if not isinstance(values, list) or not values:
                    raise GridError(f'grid["{flag}"]: expected a non-empty list of values')
                for i, value in enumerate(values):
                    parse_job(parser, {flag: value}, f'grid["{flag}"][{i}] = {json.dumps(value)}')
            else:
                parse_job(parser, {flag: values}, f'fixed["{flag}"] = {json.dumps(values)}')
    if "participants" in spec["grid"]:
        raise GridError('grid["participants"]: the participant list must be fixed (put it in "fixed")')


def participants_of(spec, parser):
    """The participant list folds expand over: given in the grid, else read from the data folder."""
    if "participants" in spec["fixed"]:
        return list(spec["fixed"]["participants"])
    data_path = spec["fixed"].get("data_path", parser.get_default("data_path"))
    if "data_path" in spec["grid"]:  # --set data_path=FOLDER puts it there
        if len(spec["grid"]["data_path"]) != 1:
            raise GridError('grid["data_path"] holds several folders: give "participants" in "fixed" to expand '
                            'the folds')
        data_path = spec["grid"]["data_path"][0]
    # Its "creating the demo dataset" line must not land among --print's command lines.
    with contextlib.redirect_stdout(sys.stderr):
        ensure_demo_data(data_path)
    if not Path(data_path).is_dir():
        raise GridError(f'data_path {data_path} is not on this machine: give "participants" in "fixed" '
                        f'to expand the folds')
    try:
        return check_participants(data_path, None)
    except DataError as err:
        raise GridError(str(err)) from None


def fold_list(spec, participants):
    """The grid's folds as indices: "all", or a list of indices and participant names."""
    folds = spec["folds"]
    if folds == "all":
        return list(range(len(participants)))
    if not isinstance(folds, list) or not folds:
        raise GridError(f'"folds" must be "all" or a list of indices or participant names, got {folds!r}')
    indices = []
    for i, fold in enumerate(folds):
        if isinstance(fold, str) and fold in participants:
            fold = participants.index(fold)
        if not isinstance(fold, int) or isinstance(fold, bool) or not 0 <= fold < len(participants):
            raise GridError(f'folds[{i}] = {json.dumps(fold)}: neither a participant nor an index in range '
                            f'for {len(participants)} participants (0..{len(participants) - 1})')
        indices.append(fold)
    return indices


def collapse(flags, mode, n_others):
    """Drop settings that cannot change this job's work (flags.matters: the registry's
    modes and conditions of each flag)."""
    for name in [n for n in flags if n in BY_NAME and mode not in BY_NAME[n].modes]:
        flags.pop(name)
    # Conditions read the job's settings after the mode's drops (target_batch_pct may be gone).
    settings = settings_with_defaults(flags)
    for name in [n for n in flags if n in BY_NAME and not matters(n, mode, settings)]:
        flags.pop(name)
    n_base = flags.get("n_base_participants")
    if isinstance(n_base, int) and not isinstance(n_base, bool) and n_base >= n_others:
        flags["n_base_participants"] = "all"
    return flags


def slug(flags, varying):
    """A readable folder name for one configuration."""
    def text(value):
        if isinstance(value, list):
            return "-".join(map(str, value))
        return str(value)
    parts = [f"{flag}-{text(flags[flag])}" for flag in sorted(varying) if flag in flags]
    return "_".join(parts).replace("/", "-").replace(" ", "-")


def expand(spec, parser):
    """Every job of the grid: (jobs, number of duplicates dropped)."""
    check_entries(spec, parser)
    participants = participants_of(spec, parser)
    folds = fold_list(spec, participants)
    uses_cache = parser.get_default("base_cache_dir") is not None
    names = list(spec["grid"])
    jobs, seen, duplicates = [], set(), 0
    for combo in itertools.product(*(spec["grid"][n] for n in names)):
        for fold in folds:
            flags = dict(spec["fixed"], **dict(zip(names, combo)))
            mode = flags.get("mode", parser.get_default("mode"))
            flags = collapse(flags, mode, len(participants) - 1)
            config = slug(flags, names)
            flags["prefix"] = f"{spec['prefix'].strip('/')}/{config}" if config else spec["prefix"].strip("/")
            flags["fold"] = fold
            where = "job " + json.dumps(dict(zip(names, combo)), sort_keys=True) + f" fold {fold}"
            args = parse_job(parser, flags, where)
            identity = json.dumps(vars(args), sort_keys=True, default=str)
            job_id = hashlib.sha256(identity.encode()).hexdigest()[:16]
            if job_id in seen:
                duplicates += 1
                continue
            seen.add(job_id)
            job = dict(flags, job_id=job_id)
            if uses_cache and mode in BASE_MODES:
                if not args.participants:
                    args.participants = participants
                try:
                    job["base_key"] = base_cache.key_for_args(args)
                except DataError as err:
                    raise GridError(f"{where}: {err}") from None
            jobs.append(job)
    return jobs, duplicates


def summary(jobs, duplicates):
    per_mode = Counter(job.get("mode", BY_NAME["mode"].default) for job in jobs)
    need_base = [job for job in jobs if "base_key" in job]
    keys = {job["base_key"] for job in need_base}
    per_fold = {(job["base_key"], job["fold"]) for job in need_base}
    # The runner trains each distinct base model once, as a job of its own, before the jobs that need it.
    lines = [f"jobs: {job_counts(len(jobs), len(keys))} (duplicates dropped: {duplicates})",
             "per mode: " + ", ".join(f"{mode} {n}" for mode, n in sorted(per_mode.items()))]
    if need_base:
        lines.append(f"unique base models: {len(keys)} for {len(need_base)} jobs that need one "
                     f"({len(per_fold)} fold-specific; folds with the same base participants share one)")
        lines.append(f"base trainings saved: {len(need_base) - len(keys)} against one per job")
    return "\n".join(lines)


def main(args, prog="generate_jobs.py"):
    """generate_jobs.py with its parsed arguments: the jobs written (or printed); the exit status."""
    try:
        spec = load_grid(args.grid_file) if args.grid_file else DEFAULT_GRID
        spec = apply_sets(spec, args.set)
        jobs, duplicates = expand(spec, load_script_parser(args.script))
    except GridError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    if args.print:
        for job in jobs:
            print(shlex.join(["python", args.script, *job_argv(job)]))
    else:
        write_atomic(args.output, json.dumps(jobs, indent=1) + "\n")
        print(f"wrote {args.output}")
    print(summary(jobs, duplicates), file=sys.stderr if args.print else sys.stdout)
    return 0
