"""The report's plots: paired base and personalized F1 per configuration, each participant's F1
where there is nothing to pair, F1 against a numeric setting, the per-participant differences of
--compare and the data-efficiency curves. The y axis is fixed (0-1, or --ylim) so noise never
looks like an effect; participant labels never overlap."""
import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import plotting
from report.runs import as_number
from report.tables import MODE_ORDER, final_f1
from report.text import label

MODE_COLORS = dict(zip(MODE_ORDER, ["tab:blue", "tab:orange", "tab:green", "tab:purple"]))
PLOT_SETTINGS = ["target_data_pct", "target_batch_pct", "n_base_participants"]
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
    scores = [(final_f1(r), r["participant"]) for r in rows]
    scores = [(f1, name) for f1, name in scores if f1 is not None]
    ax.plot([0] * len(scores), [f1 for f1, _ in scores], "o", color=MODE_COLORS.get(row["mode"]), alpha=0.7,
            clip_on=False)
    ax.set_ylim(*ylim)
    label_participants(ax, [0] * len(scores), [f1 for f1, _ in scores], [name for _, name in scores], ylim)
    mean = final_f1(row, "_mean")
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
        f1 = final_f1(row)
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


def compare_figure(comparisons, setting, path, ylim=(0.0, 1.0), f1_name="macro F1"):
    """Each participant's difference (second - first) per comparison, with the mean and its 95 % CI.
    The y axis spans every possible difference of the plotted F1 range, so noise never looks like an effect."""
    figure, ax = new_axes(max(4.0, 1.2 * len(comparisons) + 2), 4.5)
    reach = ylim[1] - ylim[0]
    ax.axhline(0, color="0.6", lw=1)
    for x, row in enumerate(comparisons):
        differences = list(row["differences"].values())
        ax.plot([x] * len(differences), differences, "o", color="tab:blue", alpha=0.6, clip_on=False)
        if row["mean_difference"] is not None:
            low, high = row["ci_low"], row["ci_high"]
            error = None if low is None else [[row["mean_difference"] - low], [high - row["mean_difference"]]]
            ax.errorbar([x + 0.15], [row["mean_difference"]], yerr=error, fmt="s", color="black", capsize=4,
                        label="mean, 95% CI" if x == 0 else None)
    ax.set_xticks(range(len(comparisons)), [f"{row['comparison']}: {row['config_second']} − {row['config_first']}"
                                            for row in comparisons], fontsize=8)
    ax.set_xlim(-0.5, len(comparisons) - 0.5)
    ax.set_ylim(-reach, reach)
    ax.set_xlabel("comparison: config second − config first")
    ax.set_title(f"{setting}: per-participant difference of {f1_name}", fontsize=10)
    ax.set_ylabel(f"difference of {f1_name}")
    ax.legend(fontsize=8)
    plotting.save_atomic(figure, path, dpi=100, bbox_inches="tight")
    return path


def efficiency_figure(rows, path, ylim=(0.0, 1.0), f1_name="macro F1"):
    """Median F1 against the share of target data, one line per series, band = interquartile range."""
    figure, ax = new_axes()
    for number in dict.fromkeys(row["series"] for row in rows):
        mine = [row for row in rows if row["series"] == number]
        xs = [row["target_data_pct"] for row in mine]
        drawn = ax.plot(xs, [row["median"] for row in mine], "o-", color=MODE_COLORS.get(mine[0]["mode"]),
                        label=mine[0]["label"])
        ax.fill_between(xs, [row["q1"] for row in mine], [row["q3"] for row in mine], color=drawn[0].get_color(),
                        alpha=0.15)
    shares = [row["target_data_pct"] for row in rows]
    if min(shares) > 0 and max(shares) / min(shares) >= 20:  # 1 % to 100 %: a log axis keeps the small shares apart
        ax.set_xscale("log")
    ax.set_xlabel("target_data_pct")
    ax.set_ylim(*ylim)
    ax.set_title(f"{f1_name} against the share of target data (median, band = IQR across participants)",
                 fontsize=9)
    return finish(ax, f1_name, path)


def class_figure(rows, varying, path, ylim=(0.0, 1.0)):
    """A recognizer configuration's per-class rows: each class's mean F1, base and final side by side."""
    figure, ax = new_axes(max(4.0, 0.8 * len(rows) + 2), 4.2)
    xs = np.arange(len(rows))
    final = "target-only" if rows[0]["mode"] == "target_only" else "personalized"
    for offset, key, name, color in ((-0.2, "base_f1", "base", "tab:gray"), (0.2, "f1", final, "tab:green")):
        values = [row[key] for row in rows]
        if any(value is not None for value in values):
            ax.bar(xs + offset, [np.nan if value is None else value for value in values], width=0.4, color=color,
                   label=name)
    ax.set_xticks(xs, [str(row["class"]) for row in rows], rotation=30 if len(rows) > 6 else 0)
    ax.set_ylim(*ylim)
    ax.set_ylabel("the class's F1 on the target's test split")
    ax.set_title(f"config {rows[0]['config']}: {label(rows[0], varying)}\n"
                 "per-class F1, mean across participants", fontsize=9)
    ax.legend(fontsize=8)
    plotting.save_atomic(figure, path, dpi=100, bbox_inches="tight")
    return path


def write_plots(summary, out_dir, ylim=(0.0, 1.0), f1_name="macro F1"):
    """Draws the plots the data supports; returns their paths. Participants count once per
    configuration: their rows are the means over their seeds."""
    for old in [p for pattern in ("paired_config*.png", "scores_config*.png", "per_class_config*.png", "f1_vs_*.png",
                                  "compare_*.png", "data_efficiency.png") for p in out_dir.glob(pattern)]:
        old.unlink()
    paths = []
    rows_of = summary.participant_rows
    for row in summary.config_rows:
        rows = [r for r in rows_of if r["config"] == row["config"]]
        if row["n_paired"]:
            ax = paired_figure(row, rows, summary.varying, ylim)
            paths.append(finish(ax, f1_name, out_dir / f"paired_config{row['config']}.png"))
        else:
            ax = scores_figure(row, rows, summary.varying, ylim)
            paths.append(finish(ax, f1_name, out_dir / f"scores_config{row['config']}.png"))
    for number in dict.fromkeys(row["config"] for row in summary.class_rows):  # recognizers only
        rows = [row for row in summary.class_rows if row["config"] == number]
        paths.append(class_figure(rows, summary.varying, out_dir / f"per_class_config{number}.png", ylim))
    for setting in PLOT_SETTINGS:
        xs = {as_number(row.get(setting)) for row in rows_of} - {None}
        if setting in summary.varying and len(xs) > 1:
            paths.append(plot_against(setting, rows_of, out_dir / f"f1_vs_{setting}.png", ylim, f1_name))
    if summary.comparisons:
        paths.append(compare_figure(summary.comparisons, summary.compared,
                                    out_dir / f"compare_{summary.compared}.png", ylim, f1_name))
    if summary.efficiency:
        paths.append(efficiency_figure(summary.efficiency, out_dir / "data_efficiency.png", ylim, f1_name))
    return paths
