"""The report's input: every finished fold folder under the given prefixes, one run each.

A run is complete when both JSON files parse and metrics.json holds the F1 its mode needs;
an incomplete fold folder is skipped with a warning that names it. A configuration is the
mode plus every hyperparameter except NOT_SETTINGS and the SEED_KEYS (see summarize_results.py).
"""
import glob
import math
import os
import re
import sys
from pathlib import Path

from engine import flags, modes
from engine.fileio import ConfigError, read_json

# Not settings: the registry's output and runtime flags and fold, and the fields the engine adds per run.
# A recognizer's class names follow its data (data_path, classes.json), as the channels do: not a setting.
NOT_SETTINGS = flags.not_settings() | {"target_participant", "base_participants", "script", "job_id", "base_key",
                                       "pack_size", "pack_id", "classes"}
BASE_PHASE_SETTINGS = flags.base_phase_only()
# --metric: (base model's key, personalized model's key, the name the report gives it).
METRICS = {
    "f1": ("best_base_model_target_test_f1", "best_target_model_target_test_f1", "macro F1"),
    "f1_pos": ("best_base_model_target_test_f1_pos", "best_target_model_target_test_f1_pos",
               "positive-class F1"),
}
# Seeds are replicates: runs that differ only in these form one configuration (seed_finetune
# seeds the target phase; runs made before it existed lack it, and a setting a run lacks is null).
SEED_KEYS = ("seed", "seed_finetune")
# The positive class's precision and recall: (base model's key, the target phase's model's key).
POSITIVE_SCORES = {name: (f"best_base_model_target_test_{name}", f"best_target_model_target_test_{name}")
                   for name in ("precision", "recall")}
FOLD_DIR = re.compile(r"fold(\d+)_(.+)")


def ignores_base_settings(mode):
    """A mode without a base phase: the base-phase settings of its runs mean nothing."""
    known = modes.BY_NAME.get(mode)
    return known is not None and not known.base_phase

def warn(message):
    print(f"warning: {message}", file=sys.stderr)


def as_number(value):
    """A finite float, or None for null, booleans, text, NaN and infinities."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def hashable(value):
    """JSON lists become tuples so settings can key a dict."""
    if isinstance(value, list):
        return tuple(hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, hashable(v)) for k, v in value.items()))
    return value


def order_key(value):
    """Sorts null first, then numbers (numeric text included) by value, then text."""
    if value is None:
        return (0, 0.0, "")
    try:
        return (1, float(value), "")
    except (TypeError, ValueError):
        return (2, 0.0, str(value))


def expand_inputs(patterns):
    """Folders named by the arguments, globs expanded, in order, each once."""
    folders = []
    for pattern in map(str, patterns):
        matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        matches = [Path(m) for m in matches if Path(m).is_dir()]
        if not matches:
            warn(f"{pattern}: no experiment folder matches")
        folders += [m for m in matches if m not in folders]
    return folders


def read_object(path):
    """(a JSON object, None), or (None, why not) for a warning."""
    if not path.exists():
        return None, f"no {path.name}"
    try:
        data = read_json(path, path.name)
    except ConfigError as error:
        return None, f"{path.name} is unreadable ({error})"
    if not isinstance(data, dict):
        return None, f"{path.name} is not a JSON object"
    return data, None


def recognizer_classes(hyper):
    """A recognizer's class names (hyperparameters.json's classes), or None for a detector."""
    names = hyper.get("classes")
    return [str(name) for name in names] if isinstance(names, list) and len(names) > 2 else None


def load_run(fold_dir, metric="f1", recognizers=None):
    """One run as a dict, or None after a warning that names the folder.

    base_f1 and personalized_f1 hold the chosen --metric (macro F1 by default). A recognizer has no
    positive class: with --metric f1_pos it is skipped, its folder added to `recognizers` (load_runs
    says so once) or, without that list, warned about here.
    """
    base_key, personalized_key, _ = METRICS[metric]
    hyper, problem = read_object(fold_dir / "hyperparameters.json")
    metrics, problem = (None, problem) if problem else read_object(fold_dir / "metrics.json")
    if problem:
        warn(f"{fold_dir}: skipped, {problem}")
        return None
    mode = metrics.get("mode") or hyper.get("mode")
    if not isinstance(mode, str):
        warn(f"{fold_dir}: skipped, no mode in metrics.json or hyperparameters.json")
        return None
    classes = recognizer_classes(hyper)
    if classes and metric == "f1_pos":
        if recognizers is None:
            warn(f"{fold_dir}: skipped, a recognizer has no positive class (--metric f1_pos)")
        else:
            recognizers.append(fold_dir)
        return None
    known = modes.BY_NAME.get(mode)  # a mode this version does not know needs both scores
    needed = ([base_key] if not known or known.base_phase else []) + \
        ([personalized_key] if not known or known.target_phase else [])
    missing = [key for key in needed if as_number(metrics.get(key)) is None]
    if missing:
        warn(f"{fold_dir}: skipped, metrics.json has no {' or '.join(missing)} (mode {mode})")
        return None
    number, name = FOLD_DIR.fullmatch(fold_dir.name).groups()
    origin, _ = read_object(fold_dir / "provenance.json")  # absent in runs made before it existed
    settings = {k: hashable(v) for k, v in hyper.items() if k not in NOT_SETTINGS}
    settings["mode"] = mode
    if "n_base_participants" in settings and isinstance(hyper.get("base_participants"), list):
        settings["n_base_participants"] = len(hyper["base_participants"])
    run = {"dir": fold_dir, "prefix": fold_dir.parent.name, "fold": int(number),
           "participant": metrics.get("target_participant") or hyper.get("target_participant") or name,
           "mode": mode, "settings": settings, "metrics": metrics, "classes": classes,
           "code_version": (origin or {}).get("code_hash"), "data_fingerprint": (origin or {}).get("data_fingerprint"),
           "pack_size": hyper.get("pack_size", 1), "slurm_job": (origin or {}).get("slurm_job"),
           "base_f1": as_number(metrics.get(base_key)), "personalized_f1": as_number(metrics.get(personalized_key))}
    for score, (base_score, target_score) in POSITIVE_SCORES.items():  # null in runs made before they existed
        run[f"base_{score}"] = as_number(metrics.get(base_score))
        run[score] = as_number(metrics.get(target_score))
    return run


def fold_dirs_in(folder):
    return [d for d in Path(folder).iterdir() if d.is_dir() and FOLD_DIR.fullmatch(d.name)]


def find_prefixes(folders):
    """(prefix folders, folders with none): a folder holding fold*_* folders is a
    prefix; any other folder is searched below for them (hidden ones aside), so
    a grid's prefix finds the configuration folders under it."""
    prefixes, empty = [], []
    for folder in folders:
        found = []
        for parent, children, _ in os.walk(folder):
            children[:] = sorted(c for c in children if not c.startswith("."))
            if fold_dirs_in(parent):
                found.append(Path(parent))
                children.clear()  # fold folders and what is under them are runs, not prefixes
        prefixes += [f for f in found if f not in prefixes]
        if not found:
            empty.append(folder)
    return prefixes, empty


def load_runs(prefix_dirs, metric="f1"):
    """Complete runs of every fold folder under the given prefix folders."""
    runs, recognizers = [], []
    for prefix_dir in prefix_dirs:
        for fold_dir in sorted(fold_dirs_in(prefix_dir), key=lambda d: int(FOLD_DIR.fullmatch(d.name).group(1))):
            run = load_run(fold_dir, metric, recognizers)
            if run:
                runs.append(run)
    if recognizers:
        warn(f"{len(recognizers)} recognizer run(s) skipped, first {recognizers[0]}: --metric f1_pos is a "
             "detector's positive class; a recognizer's F1 is the macro F1 over its classes (--metric f1)")
    # A setting some runs lack is null there, so train.py and oct1_train.py runs compare.
    keys = set().union(*(run["settings"] for run in runs))
    for run in runs:
        for key in keys:
            run["settings"].setdefault(key, None)
            if ignores_base_settings(run["mode"]) and key in BASE_PHASE_SETTINGS:
                run["settings"][key] = None
    return runs
