#!/usr/bin/env python3
"""Per-participant tables, statistics and plots from finished LOPO experiments.

    python summarize_results.py experiments/demo ['experiments/grid_*' ...]
                                [-o DIR] [--format md|csv|json] [--metric f1|f1_pos] [--ylim LOW HIGH]

Each input is an `experiments/{prefix}` folder or a glob of them; a folder
without fold*_* folders is searched below for the prefixes that have them (a
grid's prefix finds its configuration folders). Every `fold{k}_{target}/` is
one run; its hyperparameters.json and metrics.json give one row of the
per-fold table. Runs that share a configuration (below) are aggregated across
participants into the per-configuration table.

F1 is macro F1 (the mean of the positive- and negative-class F1, as the
original), `--metric f1_pos` reports the positive class's F1 instead; the
report names the one it shows.

Writes per_fold.csv, per_config.csv and the PNGs into a new folder
reports/NAME (NAME from the inputs; NAME-2, NAME-3, ... when taken, so no
report is overwritten), or into -o, and prints the tables to stdout as
Markdown (or CSV or JSON with --format). Warnings go to stderr; no matching
input, no fold folder or no complete result is a one-line error with exit
status 2.

Decisions:
- A run is complete when both JSON files parse and metrics.json holds the F1
  its mode needs: base F1 (best_base_model_target_test_f1) unless target_only,
  personalized F1 (best_target_model_target_test_f1) unless base_only. An
  incomplete fold folder is skipped with a warning that names it. Other
  folders (a running job's hidden temporary sibling, a report folder) are not
  runs and are passed over silently.
- A configuration is the mode plus every hyperparameter except the per-fold
  and bookkeeping ones in NOT_SETTINGS. data_path and seed are kept: other data
  or another seed is another experiment (a seed sweep gives one configuration
  per seed). n_base_participants becomes the resolved number of base
  participants, so 'all' and its number are one configuration. A target_only
  run has no base phase, so its BASE_PHASE_SETTINGS are blank and do not make
  a setting "vary". A setting a run lacks counts as blank (null).
- The same configuration twice for one participant (a rerun under another
  prefix): the first input wins and the other is skipped with a warning, so
  the paired test sees one pair per participant.
- Target-only F1 of a run: the personalized F1 of the target_only run of the
  same participant whose settings equal the run's on everything but mode and
  the BASE_PHASE_SETTINGS (so same target_data_pct, batch_size, lr, seed, ...).
  No exact match leaves the cell blank; a near match would mislead.
- Gain = personalized - base, rounded to 1e-12 so float noise cannot turn a
  tie into a change. Gain % = gain / base * 100 (blank when base = 0). Room
  captured = gain / (1 - base) (blank when base = 1).
- Aggregates use the values that exist. sd is the sample sd (n - 1), blank for
  a single value. A responder is a participant with gain > 0; the rate is over
  the participants that have both F1s.
- Wilcoxon signed-rank test on the gains, two-sided: zero differences are
  dropped (Wilcoxon's rule), ties get average ranks, W = min(W+, W-). For up to
  EXACT_MAX_N differences p is exact, from the distribution of W+ over all 2^n
  sign assignments (counted, not listed); above that, the normal approximation
  with tie correction and no continuity correction.
- Epochs: best epochs are counted within their phase (metrics.json counts the
  target phase after the base phase's epochs). A run whose best epoch is its
  phase's last one never early-stopped: the under_trained column names the
  phase, and a warning says how many runs (raise --max_epochs).
- Plots: paired_config{N}.png per configuration with paired F1s,
  scores_config{N}.png per configuration without (target_only, base_only), and
  f1_vs_{setting}.png for target_data_pct, target_batch_pct and
  n_base_participants when that setting takes two or more numeric values. Their
  y is the run's final F1 (personalized; base for base_only), one line per mode,
  band = mean +- sd across folds. Where other settings vary too, a
  participant's F1 at a point is first averaged over them, so every fold counts
  once (the per-configuration table keeps them apart). The y axis is fixed
  (0-1, or --ylim) so noise never looks like an effect; participant labels are
  spread so they never overlap. PNGs of these names left in -o by an earlier
  report are removed first.

Over 500 lines: loading, statistics, tables and plots of one report, each short;
the statistics are the part to move out first if it grows.
"""
import argparse
import csv
import glob
import io
import itertools
import json
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import flags
import plotting
from fileio import ConfigError, read_json, staged_folder, write_atomic

MODE_ORDER = ["target_only", "target_only_fine_tuning", "full_fine_tuning", "base_only"]
MODE_COLORS = dict(zip(MODE_ORDER, ["tab:blue", "tab:orange", "tab:green", "tab:purple"]))
# Not settings: the registry's output and runtime flags and fold, and the fields the engine adds per run.
NOT_SETTINGS = flags.not_settings() | {"target_participant", "base_participants", "script", "job_id", "base_key"}
BASE_PHASE_SETTINGS = flags.base_phase_only()
PLOT_SETTINGS = ["target_data_pct", "target_batch_pct", "n_base_participants"]
# --metric: (base model's key, personalized model's key, the name the report gives it).
METRICS = {
    "f1": ("best_base_model_target_test_f1", "best_target_model_target_test_f1", "macro F1"),
    "f1_pos": ("best_base_model_target_test_f1_pos", "best_target_model_target_test_f1_pos",
               "positive-class F1"),
}
FOLD_DIR = re.compile(r"fold(\d+)_(.+)")
EXACT_MAX_N = 20
FIGURES = [("base_f1", "base F1"), ("personalized_f1", "personalized F1"), ("target_only_f1", "target-only F1"),
           ("gain", "gain"), ("gain_pct", "gain %"), ("room_captured", "room captured"),
           ("best_base_epoch", "best base epoch"), ("best_target_epoch", "best target epoch (of its phase)")]
STATS = ["mean", "sd", "median"]
FOLD_KEYS = ["config", "prefix", "fold", "participant", "mode"]
TEST_COLUMNS = ["n", "n_paired", "responders", "responder_rate", "wilcoxon_n", "wilcoxon_w", "wilcoxon_p"]


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


# ---------------------------------------------------------------- loading

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


def load_run(fold_dir, metric="f1"):
    """One run as a dict, or None after a warning that names the folder.

    base_f1 and personalized_f1 hold the chosen --metric (macro F1 by default).
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
    needed = {"target_only": [personalized_key], "base_only": [base_key]}.get(mode, [base_key, personalized_key])
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
    return {"dir": fold_dir, "prefix": fold_dir.parent.name, "fold": int(number),
            "participant": metrics.get("target_participant") or hyper.get("target_participant") or name,
            "mode": mode, "settings": settings, "metrics": metrics,
            "code_version": (origin or {}).get("code_hash"), "data_fingerprint": (origin or {}).get("data_fingerprint"),
            "base_f1": as_number(metrics.get(base_key)), "personalized_f1": as_number(metrics.get(personalized_key))}


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
    runs = []
    for prefix_dir in prefix_dirs:
        for fold_dir in sorted(fold_dirs_in(prefix_dir), key=lambda d: int(FOLD_DIR.fullmatch(d.name).group(1))):
            run = load_run(fold_dir, metric)
            if run:
                runs.append(run)
    # A setting some runs lack is null there, so train.py and oct1_train.py runs compare.
    keys = set().union(*(run["settings"] for run in runs))
    for run in runs:
        for key in keys:
            run["settings"].setdefault(key, None)
            if run["mode"] == "target_only" and key in BASE_PHASE_SETTINGS:
                run["settings"][key] = None
    return runs


# ---------------------------------------------------------------- tables

def varying_settings(runs):
    """Settings (mode aside) that take more than one value across the runs;
    a target_only run does not count for the base-phase settings it ignores."""
    values = {}
    for run in runs:
        for key, value in run["settings"].items():
            if key != "mode" and not (run["mode"] == "target_only" and key in BASE_PHASE_SETTINGS):
                values.setdefault(key, set()).add(value)
    return sorted(key for key, seen in values.items() if len(seen) > 1)


def config_sort_key(settings, varying):
    mode = settings["mode"]
    rank = MODE_ORDER.index(mode) if mode in MODE_ORDER else len(MODE_ORDER)
    return (rank, mode, [order_key(settings[key]) for key in varying])


def group_configs(runs, varying):
    """[(settings, runs)] sorted by mode then varying settings; one run per participant."""
    groups = {}
    for run in runs:
        key = tuple(sorted(run["settings"].items()))
        group = groups.setdefault(key, {})
        first = group.setdefault(run["participant"], run)
        if first is not run:
            warn(f"{run['dir']}: skipped, same settings and participant as {first['dir']}")
    configs = [(dict(key), list(group.values())) for key, group in groups.items()]
    return sorted(configs, key=lambda config: config_sort_key(config[0], varying))


def target_only_key(participant, settings):
    """What a run and its target_only counterpart must share."""
    return (participant,) + tuple(sorted((k, v) for k, v in settings.items()
                                         if k != "mode" and k not in BASE_PHASE_SETTINGS))


def phase_epoch(metrics):
    """The best target epoch counted within the target phase (metrics.json counts
    it on the global axis, after the base phase's epochs)."""
    epoch = as_number(metrics.get("best_target_epoch"))
    if epoch is None:
        return None
    return int(epoch - (as_number(metrics.get("transition_epoch")) or 0))


def under_trained(metrics):
    """The phases whose best epoch was their last one: early stopping never fired."""
    phases = []
    base_epoch, base_run = as_number(metrics.get("best_base_epoch")), as_number(metrics.get("base_epochs_run"))
    if base_epoch is not None and base_epoch == base_run:
        phases.append("base")
    target_epoch, target_run = phase_epoch(metrics), as_number(metrics.get("target_epochs_run"))
    if target_epoch is not None and target_epoch == target_run:
        phases.append("target")
    return ", ".join(phases) or None


def fold_row(config, run, varying, target_only_f1s):
    metrics = run["metrics"]
    base, personalized = run["base_f1"], run["personalized_f1"]
    gain = None if base is None or personalized is None else round(personalized - base, 12)
    row = {"config": config, "prefix": run["prefix"], "fold": run["fold"], "participant": run["participant"],
           "mode": run["mode"]}
    row.update({key: run["settings"][key] for key in varying})
    row.update({
        "base_f1": base,
        "personalized_f1": personalized,
        "target_only_f1": None if run["mode"] == "target_only" else
        target_only_f1s.get(target_only_key(run["participant"], run["settings"])),
        "gain": gain,
        "gain_pct": None if gain is None or base == 0 else gain / base * 100,
        "room_captured": None if gain is None or base == 1 else gain / (1 - base),
        "best_base_epoch": metrics.get("best_base_epoch"),
        "best_target_epoch": phase_epoch(metrics),
        "under_trained": under_trained(metrics),
        "code_version": run["code_version"],
    })
    return row


def describe(values):
    """(mean, sample sd, median) of the values that are numbers; None where undefined."""
    xs = np.array([v for v in map(as_number, values) if v is not None])
    if len(xs) == 0:
        return None, None, None
    sd = float(xs.std(ddof=1)) if len(xs) > 1 else None
    return float(xs.mean()), sd, float(np.median(xs))


def config_row(config, settings, rows, varying):
    gains = [row["gain"] for row in rows if row["gain"] is not None]
    row = {"config": config, "mode": settings["mode"]}
    row.update({key: settings[key] for key in varying})
    responders = sum(gain > 0 for gain in gains)
    w, p, n_test = wilcoxon(gains) if gains else (None, None, None)
    row.update({"n": len(rows), "n_paired": len(gains),
                "responders": responders if gains else None,
                "responder_rate": responders / len(gains) if gains else None,
                "wilcoxon_n": n_test, "wilcoxon_w": w, "wilcoxon_p": p})
    for figure, _ in FIGURES:
        values = describe(fold[figure] for fold in rows)
        row.update({f"{figure}_{stat}": value for stat, value in zip(STATS, values)})
    return row


def provenance_conflicts(config, runs):
    """Lines naming the folds of one configuration that ran other code, or read other bytes
    of the same data file, than the rest (from each fold's provenance.json)."""
    def folds(group):
        return ", ".join(str(run["dir"]) for run in group)
    lines = []
    versions = {}
    for run in runs:
        versions.setdefault(run["code_version"] or "unknown", []).append(run)
    if len(versions) > 1:
        lines.append(f"configuration {config}: its folds come from {len(versions)} code versions: "
                     + "; ".join(f"{code}: {folds(group)}" for code, group in sorted(versions.items())))
    files = {}
    for run in runs:
        for name, digest in (run["data_fingerprint"] or {}).items():
            files.setdefault(name, {}).setdefault(digest, []).append(run)
    for name, digests in sorted(files.items()):
        if len(digests) > 1:
            lines.append(f"configuration {config}: data file {name} differs between its folds: "
                         + "; ".join(f"{digest[:12]}: {folds(group)}" for digest, group in sorted(digests.items())))
    return lines


def summarize(runs):
    """(per-fold rows, per-configuration rows, varying settings) of loaded runs."""
    varying = varying_settings(runs)
    configs = group_configs(runs, varying)
    target_only_f1s = {}
    for run in runs:
        if run["mode"] == "target_only":
            key = target_only_key(run["participant"], run["settings"])
            target_only_f1s.setdefault(key, run["personalized_f1"])
    fold_rows, config_rows = [], []
    for number, (settings, config_runs) in enumerate(configs, 1):
        for line in provenance_conflicts(number, config_runs):
            warn(line)
        rows = [fold_row(number, run, varying, target_only_f1s) for run in config_runs]
        fold_rows += rows
        config_rows.append(config_row(number, settings, rows, varying))
    return fold_rows, config_rows, varying


# ---------------------------------------------------------------- statistics

def average_ranks(values):
    """1-based ranks; tied values share the mean of their ranks."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or values[order[end]] != values[order[start]]:
            ranks[order[start:end]] = (start + 1 + end) / 2
            start = end
    return ranks


def wilcoxon(differences):
    """Two-sided Wilcoxon signed-rank test: (W, p, n nonzero differences)."""
    d = np.round(np.asarray(differences, dtype=float), 12)
    d = d[d != 0]  # a zero difference has no sign: dropped (Wilcoxon's rule)
    n = len(d)
    if n == 0:
        return 0.0, 1.0, 0
    ranks = average_ranks(np.abs(d))
    w = min(ranks[d > 0].sum(), ranks[d < 0].sum())
    if n <= EXACT_MAX_N:
        # Average ranks are multiples of 1/2: count sign assignments by doubled W+.
        doubled = np.rint(2 * ranks).astype(int)
        counts = np.zeros(doubled.sum() + 1, dtype=np.int64)
        counts[0] = 1
        for r in doubled:
            counts[r:] = counts[r:] + counts[:-r]
        p = 2 * counts[:int(round(2 * w)) + 1].sum() / 2.0 ** n
    else:
        _, ties = np.unique(np.abs(d), return_counts=True)
        variance = n * (n + 1) * (2 * n + 1) / 24 - (ties ** 3 - ties).sum() / 48
        z = (w - n * (n + 1) / 4) / math.sqrt(variance)
        p = math.erfc(abs(z) / math.sqrt(2))
    return float(w), float(min(p, 1.0)), n


# ---------------------------------------------------------------- text output

def label(values, keys):
    """'mode, key=value, ...' of the given settings; blank ones (not set, or not
    applicable to the mode) are left out."""
    parts = [str(values["mode"])] + [f"{key}={cell(values[key])}" for key in keys if values[key] is not None]
    return ", ".join(parts)


def cell(value, digits=None):
    """A value as text: blank for null, lists as JSON, floats to `digits` places when given."""
    if value is None:
        return ""
    if isinstance(value, tuple):
        return json.dumps(value)
    if digits is not None and isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def fold_columns(varying):
    return FOLD_KEYS + varying + [figure for figure, _ in FIGURES] + ["under_trained", "code_version"]


def config_columns(varying):
    return (["config", "mode"] + varying + TEST_COLUMNS
            + [f"{figure}_{stat}" for figure, _ in FIGURES for stat in STATS])


def write_csv(stream, rows, columns):
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([cell(row[column]) for column in columns])


def markdown(headers, lines):
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(text.replace("|", "\\|") for text in line) + " |" for line in lines]
    return "\n".join(out)


def fold_markdown(rows, varying):
    keys = FOLD_KEYS + varying
    headers = keys + [name for _, name in FIGURES] + ["under-trained"]
    lines = [[cell(row[key]) for key in keys] + [cell(row[figure], 3) for figure, _ in FIGURES]
             + [cell(row["under_trained"])] for row in rows]
    return markdown(headers, lines)


def spread(row, figure):
    """'mean ± sd (median)' of one figure, blank when it has no values."""
    mean, sd, median = (row[f"{figure}_{stat}"] for stat in STATS)
    if mean is None:
        return ""
    return f"{mean:.3f}" + ("" if sd is None else f" ± {sd:.3f}") + f" ({median:.3f})"


def config_markdown(rows, varying, metric="f1"):
    headers = ["config", "mode"] + varying + ["n"] + [name for _, name in FIGURES] + ["responders", "Wilcoxon"]
    lines = []
    for row in rows:
        paired = row["n_paired"] > 0
        lines.append([cell(row[key]) for key in ["config", "mode"] + varying + ["n"]]
                     + [spread(row, figure) for figure, _ in FIGURES]
                     + [f"{row['responders']}/{row['n_paired']}" if paired else "",
                        f"W={row['wilcoxon_w']:g}, p={row['wilcoxon_p']:.3g}" if paired else ""])
    return (f"F1 = {METRICS[metric][2]} on the target's test split. "
            "Figures per configuration: mean ± sd (median) across participants.\n\n" + markdown(headers, lines))


def headline_line(row, varying, metric="f1"):
    name, f1_name = label(row, varying), METRICS[metric][2]
    if row["n_paired"] == 0:
        f1 = row["personalized_f1_mean"] if row["personalized_f1_mean"] is not None else row["base_f1_mean"]
        return f"{name}: {f1_name} {f1:.3f} (n={row['n']})"
    return (f"{name}: {f1_name} {row['base_f1_mean']:.3f} -> {row['personalized_f1_mean']:.3f} "
            f"(gain {row['gain_mean']:+.3f}), responders {row['responders']}/{row['n_paired']}, "
            f"Wilcoxon p={row['wilcoxon_p']:.3g}")


def headline(prefix_dirs):
    """One line per configuration of the runs under `prefix_dirs` (folders or
    globs): mean base F1 -> personalized F1, gain, responders n/N, Wilcoxon p."""
    runs = load_runs(find_prefixes(expand_inputs(prefix_dirs))[0])
    if not runs:
        return "summary: no complete results in " + ", ".join(map(str, prefix_dirs))
    _, config_rows, varying = summarize(runs)
    return "\n".join(headline_line(row, varying) for row in config_rows)


# ---------------------------------------------------------------- plots

LABEL_GAP = 0.035  # share of the y range between two participant labels, so they never overlap


def new_axes(width=6.4, height=4.2):
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def spread_labels(values, low, high):
    """Label heights near `values` (in their order) at least LABEL_GAP of the range apart."""
    gap = LABEL_GAP * (high - low)
    order = sorted(range(len(values)), key=lambda i: values[i])
    heights = list(values)
    previous = -math.inf
    for i in order:
        heights[i] = max(values[i], previous + gap)
        previous = heights[i]
    # Labels pushed above the top come back down as a block, keeping their gaps.
    overflow = max(heights, default=high) - high
    if overflow > 0:
        for rank, i in enumerate(reversed(order)):
            heights[i] = min(heights[i], high - rank * gap)
    return heights


def label_participants(ax, xs, ys, names, ylim):
    """Participant names right of their points, spread so none overlaps another."""
    for x, y, height, name in zip(xs, ys, spread_labels(ys, *ylim), names):
        ax.annotate(str(name), (x, y), xytext=(x + 0.08, height), va="center", fontsize=8,
                    annotation_clip=False, arrowprops={"arrowstyle": "-", "color": "0.7", "lw": 0.5})


def finish(ax, f1_name, path):
    ax.set_ylabel(f"{f1_name} on the target's test split")
    ax.legend(fontsize=8)
    plotting.save_atomic(ax.figure, path, dpi=100, bbox_inches="tight")
    return path


def paired_figure(row, rows, varying, ylim=(0.0, 1.0)):
    """Base and personalized F1 of each participant joined by a line."""
    figure, ax = new_axes(5.0, 4.5)
    pairs = [r for r in rows if r["gain"] is not None]
    for r in pairs:
        color = "tab:green" if r["gain"] > 0 else "tab:red" if r["gain"] < 0 else "tab:gray"
        ax.plot([0, 1], [r["base_f1"], r["personalized_f1"]], "o-", color=color, alpha=0.7, clip_on=False)
    ax.set_ylim(*ylim)
    label_participants(ax, [1] * len(pairs), [r["personalized_f1"] for r in pairs],
                       [r["participant"] for r in pairs], ylim)
    ax.plot([0, 1], [row["base_f1_mean"], row["personalized_f1_mean"]], "s-", color="black", lw=2.5,
            label="mean", clip_on=False)
    ax.set_xticks([0, 1], ["base", "personalized"])
    ax.set_xlim(-0.3, 1.4)
    ax.set_title(f"config {row['config']}: {label(row, varying)}\n"
                 f"responders {row['responders']}/{row['n_paired']}, Wilcoxon p={row['wilcoxon_p']:.3g}", fontsize=9)
    return ax


def scores_figure(row, rows, varying, ylim=(0.0, 1.0)):
    """The final F1 of each participant, for a configuration with nothing to pair (target_only, base_only)."""
    figure, ax = new_axes(4.0, 4.5)
    scores = [(r["personalized_f1"] if r["personalized_f1"] is not None else r["base_f1"], r["participant"])
              for r in rows]
    scores = [(f1, name) for f1, name in scores if f1 is not None]
    ax.plot([0] * len(scores), [f1 for f1, _ in scores], "o", color=MODE_COLORS.get(row["mode"]), alpha=0.7,
            clip_on=False)
    ax.set_ylim(*ylim)
    label_participants(ax, [0] * len(scores), [f1 for f1, _ in scores], [name for _, name in scores], ylim)
    mean = row["personalized_f1_mean"] if row["personalized_f1_mean"] is not None else row["base_f1_mean"]
    ax.plot([-0.15, 0.15], [mean, mean], "-", color="black", lw=2.5, label="mean")
    ax.set_xticks([0], [row["mode"]])
    ax.set_xlim(-0.4, 0.8)
    ax.set_title(f"config {row['config']}: {label(row, varying)}\nn={row['n']}", fontsize=9)
    return ax


def plot_against(setting, rows, path, ylim=(0.0, 1.0), f1_name="macro F1"):
    """Final F1 against one setting, a line per mode, band = mean ± sd across folds."""
    # mode -> x -> participant -> F1s (several when other settings vary as well)
    points = {}
    for row in rows:
        x = as_number(row[setting])
        f1 = row["base_f1"] if row["personalized_f1"] is None else row["personalized_f1"]
        if x is not None:
            points.setdefault(row["mode"], {}).setdefault(x, {}).setdefault(row["participant"], []).append(f1)
    figure, ax = new_axes()
    for mode, by_x in points.items():
        xs = sorted(by_x)
        # Each participant counts once per point, so the band is the spread across folds.
        folds = [[np.mean(f1s) for f1s in by_x[x].values()] for x in xs]
        means = np.array([np.mean(f) for f in folds])
        sds = np.array([np.std(f, ddof=1) if len(f) > 1 else 0.0 for f in folds])
        drawn = ax.plot(xs, means, "o-", color=MODE_COLORS.get(mode), label=mode)
        ax.fill_between(xs, means - sds, means + sds, color=drawn[0].get_color(), alpha=0.2)
    ax.set_xlabel(setting)
    ax.set_title(f"{f1_name} against {setting} (mean ± sd across folds)", fontsize=10)
    ax.set_ylim(*ylim)
    return finish(ax, f1_name, path)


def write_plots(fold_rows, config_rows, varying, out_dir, ylim=(0.0, 1.0), f1_name="macro F1"):
    """Draws the plots the data supports; returns their paths."""
    for old in [p for pattern in ("paired_config*.png", "scores_config*.png", "f1_vs_*.png")
                for p in out_dir.glob(pattern)]:
        old.unlink()
    paths = []
    for row in config_rows:
        rows = [r for r in fold_rows if r["config"] == row["config"]]
        if row["n_paired"]:
            ax = paired_figure(row, rows, varying, ylim)
            paths.append(finish(ax, f1_name, out_dir / f"paired_config{row['config']}.png"))
        else:
            ax = scores_figure(row, rows, varying, ylim)
            paths.append(finish(ax, f1_name, out_dir / f"scores_config{row['config']}.png"))
    for setting in PLOT_SETTINGS:
        xs = {as_number(row.get(setting)) for row in fold_rows} - {None}
        if setting in varying and len(xs) > 1:
            paths.append(plot_against(setting, fold_rows, out_dir / f"f1_vs_{setting}.png", ylim, f1_name))
    return paths


# ---------------------------------------------------------------- CLI

def report_name(patterns):
    """A report folder name from the inputs: the last folder before any glob part of each."""
    names = []
    for pattern in map(str, patterns):
        parts = Path(pattern).parts
        plain = [part for part in itertools.takewhile(lambda part: not glob.has_magic(part), parts)]
        name = (plain[-1] if plain else "report").strip("/") or "report"
        if name not in names:
            names.append(name)
    return "+".join(names)


def publish_report(tmp, root, name):
    """Rename the finished report folder to root/name, or name-2, name-3, ... when taken."""
    for n in itertools.count(1):
        final = root / (name if n == 1 else f"{name}-{n}")
        if not final.exists():
            try:
                os.rename(tmp, final)
                return final
            except OSError:  # taken meanwhile by another report
                continue


def write_outputs(out_dir, fold_rows, config_rows, varying, ylim, f1_name):
    """per_fold.csv, per_config.csv and the plots; returns the number of plots."""
    for name, rows, columns in (("per_fold.csv", fold_rows, fold_columns(varying)),
                                ("per_config.csv", config_rows, config_columns(varying))):
        text = io.StringIO(newline="")
        write_csv(text, rows, columns)
        write_atomic(out_dir / name, text.getvalue())
    return len(write_plots(fold_rows, config_rows, varying, out_dir, ylim, f1_name))


def build_parser():
    parser = argparse.ArgumentParser(prog="summarize_results.py", allow_abbrev=False,
                                     description="Per-participant tables, statistics and plots of finished "
                                                 "experiments (experiments/PREFIX/fold*_*/).")
    parser.add_argument("inputs", nargs="+", help="experiments/PREFIX folders or globs of them; a folder "
                                                  "without fold*_* folders is searched below for prefixes")
    parser.add_argument("-o", "--output", help="folder for the CSVs and PNGs, replacing its earlier report "
                                               "(default: a new reports/NAME, NAME-2, ... from the inputs)")
    parser.add_argument("--format", choices=["md", "csv", "json"], default="md", help="what stdout gets (default md)")
    parser.add_argument("--metric", choices=sorted(METRICS), default="f1",
                        help="f1: macro F1, the mean of the positive- and negative-class F1 (default, as the "
                             "original); f1_pos: the positive class's F1")
    parser.add_argument("--ylim", type=float, nargs=2, default=(0.0, 1.0), metavar=("LOW", "HIGH"),
                        help="y range of the plots (default 0 1)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.ylim[0] < args.ylim[1]:
        parser.error(f"--ylim {args.ylim[0]:g} {args.ylim[1]:g}: LOW must be below HIGH")

    folders = expand_inputs(args.inputs)
    if not folders:
        print(f"{parser.prog}: error: no folder matches {' '.join(args.inputs)}", file=sys.stderr)
        return 2
    prefix_dirs, empty = find_prefixes(folders)
    if not prefix_dirs:
        print(f"{parser.prog}: error: no fold*_* folders in or under {' '.join(map(str, empty))}", file=sys.stderr)
        return 2
    for folder in empty:
        warn(f"{folder}: no fold*_* folders in or under it, skipped")
    runs = load_runs(prefix_dirs, args.metric)
    if not runs:
        print(f"{parser.prog}: error: no complete results in {' '.join(map(str, prefix_dirs))}", file=sys.stderr)
        return 2
    fold_rows, config_rows, varying = summarize(runs)
    flagged = [row for row in fold_rows if row["under_trained"]]
    if flagged:
        warn(f"{len(flagged)} run(s) had their best epoch at their last one, so early stopping never fired "
             f"(may be under-trained: raise --max_epochs): see the under-trained column")

    f1_name = METRICS[args.metric][2]
    if args.output:
        out_dir = Path(args.output)
        out_dir.mkdir(parents=True, exist_ok=True)
        n_plots = write_outputs(out_dir, fold_rows, config_rows, varying, args.ylim, f1_name)
    else:
        # A new folder, written aside and renamed, so no earlier report is touched.
        root = Path("reports")
        root.mkdir(exist_ok=True)
        with staged_folder(root / "report") as tmp:
            n_plots = write_outputs(tmp, fold_rows, config_rows, varying, args.ylim, f1_name)
            out_dir = publish_report(tmp, root, report_name(args.inputs))

    if args.format == "json":
        print(json.dumps({"metric": args.metric, "per_fold": fold_rows, "per_config": config_rows}, indent=2))
    elif args.format == "csv":
        write_csv(sys.stdout, fold_rows, fold_columns(varying))
        print()
        write_csv(sys.stdout, config_rows, config_columns(varying))
    else:
        print(fold_markdown(fold_rows, varying), "", config_markdown(config_rows, varying, args.metric), sep="\n")
    print(f"wrote per_fold.csv, per_config.csv and {n_plots} plot(s) to {out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
