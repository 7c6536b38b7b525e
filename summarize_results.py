#!/usr/bin/env python3
"""Per-participant tables, statistics and plots from finished LOPO experiments.

    python summarize_results.py experiments/demo ['experiments/grid_*' ...]
                                [-o reports] [--format md|csv|json]

Each input is an `experiments/{prefix}` folder or a glob of them. Every
`fold{k}_{target}/` inside is one run; its hyperparameters.json and metrics.json
give one row of the per-fold table. Runs that share a configuration (below)
are aggregated across participants into the per-configuration table.

Writes per_fold.csv, per_config.csv and the PNGs into -o (default `reports/`)
and prints the tables to stdout as Markdown (or CSV or JSON with --format).
Warnings go to stderr; no matching input or no complete result is a one-line
error with exit status 2.

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
- Plots: paired_config{N}.png per configuration with paired F1s, and
  f1_vs_{setting}.png for target_data_pct, target_batch_pct and
  n_base_participants when that setting takes two or more numeric values. Their
  y is the run's final F1 (personalized; base for base_only), one line per mode,
  band = mean +- sd across folds. Where other settings vary too, a
  participant's F1 at a point is first averaged over them, so every fold counts
  once (the per-configuration table keeps them apart). PNGs of these names left
  in -o by an earlier report are removed first.
"""
import argparse
import csv
import glob
import json
import math
import re
import sys
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

MODE_ORDER = ["target_only", "target_only_fine_tuning", "full_fine_tuning", "base_only"]
MODE_COLORS = dict(zip(MODE_ORDER, ["tab:blue", "tab:orange", "tab:green", "tab:purple"]))
NOT_SETTINGS = {"fold", "target_participant", "base_participants", "prefix", "experiments_dir", "overwrite",
                "device", "script", "base_cache_dir", "no_base_cache", "print_base_key", "job_id", "base_key"}
BASE_PHASE_SETTINGS = {"n_base_participants", "early_stopping_patience", "target_batch_pct"}
PLOT_SETTINGS = ["target_data_pct", "target_batch_pct", "n_base_participants"]
BASE_F1 = "best_base_model_target_test_f1"
PERSONALIZED_F1 = "best_target_model_target_test_f1"
FOLD_DIR = re.compile(r"fold(\d+)_(.+)")
EXACT_MAX_N = 20
FIGURES = [("base_f1", "base F1"), ("personalized_f1", "personalized F1"), ("target_only_f1", "target-only F1"),
           ("gain", "gain"), ("gain_pct", "gain %"), ("room_captured", "room captured"),
           ("best_base_epoch", "best base epoch"), ("best_target_epoch", "best target epoch")]
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


def read_json(path):
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return None, f"no {path.name}"
    except (OSError, ValueError) as error:
        return None, f"{path.name} is unreadable ({error})"
    if not isinstance(data, dict):
        return None, f"{path.name} is not a JSON object"
    return data, None


def load_run(fold_dir):
    """One run as a dict, or None after a warning that names the folder."""
    hyper, problem = read_json(fold_dir / "hyperparameters.json")
    metrics, problem = (None, problem) if problem else read_json(fold_dir / "metrics.json")
    if problem:
        warn(f"{fold_dir}: skipped, {problem}")
        return None
    mode = metrics.get("mode") or hyper.get("mode")
    if not isinstance(mode, str):
        warn(f"{fold_dir}: skipped, no mode in metrics.json or hyperparameters.json")
        return None
    needed = {"target_only": [PERSONALIZED_F1], "base_only": [BASE_F1]}.get(mode, [BASE_F1, PERSONALIZED_F1])
    missing = [key for key in needed if as_number(metrics.get(key)) is None]
    if missing:
        warn(f"{fold_dir}: skipped, metrics.json has no {' or '.join(missing)} (mode {mode})")
        return None
    number, name = FOLD_DIR.fullmatch(fold_dir.name).groups()
    settings = {k: hashable(v) for k, v in hyper.items() if k not in NOT_SETTINGS}
    settings["mode"] = mode
    if "n_base_participants" in settings and isinstance(hyper.get("base_participants"), list):
        settings["n_base_participants"] = len(hyper["base_participants"])
    return {"dir": fold_dir, "prefix": fold_dir.parent.name, "fold": int(number),
            "participant": metrics.get("target_participant") or hyper.get("target_participant") or name,
            "mode": mode, "settings": settings, "metrics": metrics}


def load_runs(prefix_dirs):
    """Complete runs of every fold folder under the given prefix folders."""
    runs = []
    for prefix_dir in prefix_dirs:
        fold_dirs = [d for d in Path(prefix_dir).iterdir() if d.is_dir() and FOLD_DIR.fullmatch(d.name)]
        if not fold_dirs:
            warn(f"{prefix_dir}: no fold*_* folders, skipped")
        for fold_dir in sorted(fold_dirs, key=lambda d: int(FOLD_DIR.fullmatch(d.name).group(1))):
            run = load_run(fold_dir)
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


def fold_row(config, run, varying, target_only_f1s):
    metrics = run["metrics"]
    base, personalized = as_number(metrics.get(BASE_F1)), as_number(metrics.get(PERSONALIZED_F1))
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
        "best_target_epoch": metrics.get("best_target_epoch"),
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


def summarize(runs):
    """(per-fold rows, per-configuration rows, varying settings) of loaded runs."""
    varying = varying_settings(runs)
    configs = group_configs(runs, varying)
    target_only_f1s = {}
    for run in runs:
        if run["mode"] == "target_only":
            key = target_only_key(run["participant"], run["settings"])
            target_only_f1s.setdefault(key, as_number(run["metrics"][PERSONALIZED_F1]))
    fold_rows, config_rows = [], []
    for number, (settings, config_runs) in enumerate(configs, 1):
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
    return FOLD_KEYS + varying + [figure for figure, _ in FIGURES]


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
    headers = keys + [name for _, name in FIGURES]
    lines = [[cell(row[key]) for key in keys] + [cell(row[figure], 3) for figure, _ in FIGURES] for row in rows]
    return markdown(headers, lines)


def spread(row, figure):
    """'mean ± sd (median)' of one figure, blank when it has no values."""
    mean, sd, median = (row[f"{figure}_{stat}"] for stat in STATS)
    if mean is None:
        return ""
    return f"{mean:.3f}" + ("" if sd is None else f" ± {sd:.3f}") + f" ({median:.3f})"


def config_markdown(rows, varying):
    headers = ["config", "mode"] + varying + ["n"] + [name for _, name in FIGURES] + ["responders", "Wilcoxon"]
    lines = []
    for row in rows:
        paired = row["n_paired"] > 0
        lines.append([cell(row[key]) for key in ["config", "mode"] + varying + ["n"]]
                     + [spread(row, figure) for figure, _ in FIGURES]
                     + [f"{row['responders']}/{row['n_paired']}" if paired else "",
                        f"W={row['wilcoxon_w']:g}, p={row['wilcoxon_p']:.3g}" if paired else ""])
    return "Figures per configuration: mean ± sd (median) across participants.\n\n" + markdown(headers, lines)


def headline_line(row, varying):
    name = label(row, varying)
    if row["n_paired"] == 0:
        f1 = row["personalized_f1_mean"] if row["personalized_f1_mean"] is not None else row["base_f1_mean"]
        return f"{name}: F1 {f1:.3f} (n={row['n']})"
    return (f"{name}: F1 {row['base_f1_mean']:.3f} -> {row['personalized_f1_mean']:.3f} "
            f"(gain {row['gain_mean']:+.3f}), responders {row['responders']}/{row['n_paired']}, "
            f"Wilcoxon p={row['wilcoxon_p']:.3g}")


def headline(prefix_dirs):
    """One line per configuration of the runs under `prefix_dirs` (folders or
    globs): mean base F1 -> personalized F1, gain, responders n/N, Wilcoxon p."""
    runs = load_runs(expand_inputs(prefix_dirs))
    if not runs:
        return "summary: no complete results in " + ", ".join(map(str, prefix_dirs))
    _, config_rows, varying = summarize(runs)
    return "\n".join(headline_line(row, varying) for row in config_rows)


# ---------------------------------------------------------------- plots

def new_axes(width=6.4, height=4.2):
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def save(figure, path):
    figure.savefig(path, dpi=100, bbox_inches="tight")
    return path


def plot_paired(row, rows, varying, path):
    """Base and personalized F1 of each participant joined by a line."""
    figure, ax = new_axes(5.0, 4.5)
    pairs = [r for r in rows if r["gain"] is not None]
    for r in pairs:
        color = "tab:green" if r["gain"] > 0 else "tab:red" if r["gain"] < 0 else "tab:gray"
        ax.plot([0, 1], [r["base_f1"], r["personalized_f1"]], "o-", color=color, alpha=0.7)
        ax.annotate(str(r["participant"]), (1, r["personalized_f1"]), xytext=(5, 0),
                    textcoords="offset points", va="center", fontsize=8)
    ax.plot([0, 1], [row["base_f1_mean"], row["personalized_f1_mean"]], "s-", color="black", lw=2.5, label="mean")
    ax.set_xticks([0, 1], ["base", "personalized"])
    ax.set_xlim(-0.3, 1.4)
    ax.set_ylabel("F1 on the target's test split")
    ax.set_title(f"config {row['config']}: {label(row, varying)}\n"
                 f"responders {row['responders']}/{row['n_paired']}, Wilcoxon p={row['wilcoxon_p']:.3g}", fontsize=9)
    ax.legend(fontsize=8)
    return save(figure, path)


def plot_against(setting, rows, path):
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
    ax.set_ylabel("F1 on the target's test split")
    ax.set_title(f"F1 against {setting} (mean ± sd across folds)", fontsize=10)
    ax.legend(fontsize=8)
    return save(figure, path)


def write_plots(fold_rows, config_rows, varying, out_dir):
    """Draws the plots the data supports; returns their paths."""
    for old in list(out_dir.glob("paired_config*.png")) + list(out_dir.glob("f1_vs_*.png")):
        old.unlink()
    paths = []
    for row in config_rows:
        if row["n_paired"]:
            rows = [r for r in fold_rows if r["config"] == row["config"]]
            paths.append(plot_paired(row, rows, varying, out_dir / f"paired_config{row['config']}.png"))
    for setting in PLOT_SETTINGS:
        xs = {as_number(row.get(setting)) for row in fold_rows} - {None}
        if setting in varying and len(xs) > 1:
            paths.append(plot_against(setting, fold_rows, out_dir / f"f1_vs_{setting}.png"))
    return paths


# ---------------------------------------------------------------- CLI

def main(argv=None):
    parser = argparse.ArgumentParser(prog="summarize_results.py",
                                     description="Per-participant tables, statistics and plots of finished "
                                                 "experiments (experiments/PREFIX/fold*_*/).")
    parser.add_argument("inputs", nargs="+", help="experiments/PREFIX folders or globs of them")
    parser.add_argument("-o", "--output", default="reports", help="folder for the CSVs and PNGs (default reports)")
    parser.add_argument("--format", choices=["md", "csv", "json"], default="md", help="what stdout gets (default md)")
    args = parser.parse_args(argv)

    prefix_dirs = expand_inputs(args.inputs)
    if not prefix_dirs:
        print(f"{parser.prog}: error: no folder matches {' '.join(args.inputs)}", file=sys.stderr)
        return 2
    runs = load_runs(prefix_dirs)
    if not runs:
        print(f"{parser.prog}: error: no complete results in {' '.join(map(str, prefix_dirs))}", file=sys.stderr)
        return 2
    fold_rows, config_rows, varying = summarize(runs)

    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "per_fold.csv", "w", newline="") as f:
        write_csv(f, fold_rows, fold_columns(varying))
    with open(out_dir / "per_config.csv", "w", newline="") as f:
        write_csv(f, config_rows, config_columns(varying))
    plots = write_plots(fold_rows, config_rows, varying, out_dir)

    if args.format == "json":
        print(json.dumps({"per_fold": fold_rows, "per_config": config_rows}, indent=2))
    elif args.format == "csv":
        write_csv(sys.stdout, fold_rows, fold_columns(varying))
        print()
        write_csv(sys.stdout, config_rows, config_columns(varying))
    else:
        print(fold_markdown(fold_rows, varying), "", config_markdown(config_rows, varying), sep="\n")
    print(f"wrote per_fold.csv, per_config.csv and {len(plots)} plot(s) to {out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
