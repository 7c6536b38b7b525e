"""Loss and F1 curves of one experiment, drawn from its losses.json dict, and a recognizer's
confusion matrix.

Uses matplotlib's Figure directly (its savefig draws with Agg) instead of pyplot:
no global state, so it is safe in threads and never changes the backend a caller has chosen.
"""
import pathlib

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from engine.fileio import atomic_file

PHASE_COLORS = {"base": "tab:blue", "target": "tab:orange"}
SPLIT_STYLES = {"train": "--", "val": "-"}
BEST_EPOCH_KEYS = {"base": "best_base_epoch", "target": "best_target_epoch"}
# The base phase early-stops on the base participants' test split, stored as its "val" curve.
CURVE_LABELS = {("base", "train"): "base train", ("base", "val"): "base participants' test",
                ("target", "train"): "target train", ("target", "val"): "target val"}


def finite_float(value):
    """float(value) when that is finite (numeric text and booleans convert), else None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def to_nan_array(values, length):
    """A float array of `length`, NaN where a value is None, missing or not a
    finite number, so matplotlib breaks the line there instead of joining."""
    out = np.full(length, np.nan)
    for i, value in enumerate(list(values or [])[:length]):
        number = finite_float(value)
        if number is not None:
            out[i] = number
    return out


def epoch_axis(losses):
    """The x values. Without an "epoch" list, the longest curve sets the length;
    an unusable entry falls back to its 1-based position."""
    epochs = losses.get("epoch")
    if isinstance(epochs, (list, tuple)):
        length = len(epochs)
    else:
        length = max((len(v) for v in losses.values() if isinstance(v, (list, tuple))), default=0)
    x = to_nan_array(epochs if isinstance(epochs, (list, tuple)) else None, length)
    missing = np.isnan(x)
    x[missing] = np.arange(1, length + 1)[missing]
    return x


def curve(losses, phase, split, metric, length):
    """One curve as a float array; on the log-scale loss plot, values <= 0
    cannot be drawn, so they become gaps too."""
    y = to_nan_array(losses.get(f"{phase}_{split}_{metric}"), length)
    if metric == "loss":
        y[y <= 0] = np.nan
    return y


def transition_x(losses, x):
    """Where the phase line goes: halfway between the last base epoch and the
    next one. None when there is no transition or no epoch after it."""
    epoch = finite_float(losses.get("transition_epoch"))
    if epoch is None or len(x) == 0 or not x.min() <= epoch < x.max():
        return None
    return epoch + 0.5


def best_points(losses, metric):
    """(phase, x, y) of each best epoch on that phase's validation curve,
    skipping best epochs that are unset, off the axis, or have no value."""
    losses = losses or {}
    x = epoch_axis(losses)
    points = []
    for phase, key in BEST_EPOCH_KEYS.items():
        epoch = finite_float(losses.get(key))
        matches = np.flatnonzero(x == epoch) if epoch is not None else []
        if len(matches) == 0:
            continue
        y = curve(losses, phase, "val", metric, len(x))[matches[0]]
        if not np.isnan(y):
            points.append((phase, float(epoch), float(y)))
    return points


def draw(ax, losses, metric):
    """Draw the four curves of one metric; returns False when none has data."""
    x = epoch_axis(losses)
    drawn = False
    for phase, color in PHASE_COLORS.items():
        for split, style in SPLIT_STYLES.items():
            y = curve(losses, phase, split, metric, len(x))
            if np.isnan(y).all():
                continue
            # Small markers keep single epochs and values isolated by gaps visible.
            ax.plot(x, y, style, color=color, marker="o", markersize=3, label=CURVE_LABELS[phase, split])
            drawn = True
    if not drawn:
        return False
    line_x = transition_x(losses, x)
    if line_x is not None:
        ax.axvline(line_x, color="gray", linestyle=":", label="phase transition")
    for phase, best_x, best_y in best_points(losses, metric):
        ax.plot([best_x], [best_y], "*", color=PHASE_COLORS[phase], markersize=12,
                markeredgecolor="black", label=f"best {phase}")
    if metric == "loss":
        ax.set_yscale("log")
    else:
        ax.set_ylim(0, 1.02)  # fixed, so noise never looks like an effect
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.legend(fontsize="small")
    return True


def save_atomic(fig, path, **savefig_options):
    """Save a PNG whole or not at all (a killed process never leaves half a PNG under its name)."""
    with atomic_file(path) as f:
        fig.savefig(f, format="png", **savefig_options)


def plot_training_curves(losses, out_dir):
    """Write loss_curves.png (log y) and f1_curves.png into out_dir; return their paths."""
    losses = losses or {}
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for metric, title in (("loss", "Loss"), ("f1", "Macro F1")):
        fig = Figure(figsize=(6, 4), dpi=100)
        ax = fig.add_subplot()
        ax.set_title(title)
        if not draw(ax, losses, metric):
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        fig.tight_layout()
        path = out_dir / f"{metric}_curves.png"
        save_atomic(fig, path)
        paths.append(path)
    return paths


def plot_confusion(confusion, names, out_dir):
    """Write confusion_matrix.png into out_dir: the personalized model's confusion matrix on the
    target's test split (rows: true class), in counts and normalized per row; returns its path."""
    counts = np.asarray(confusion, dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    size = 2.5 + 0.45 * len(names)
    fig = Figure(figsize=(2 * size, size), dpi=100)
    for ax, values, title, text in ((fig.add_subplot(1, 2, 1), counts, "Counts", "{:.0f}"),
                                    (fig.add_subplot(1, 2, 2), shares, "Share of each true class", "{:.2f}")):
        ax.imshow(values, cmap="Blues", vmin=0, vmax=max(values.max(), 1e-12))
        ax.set_title(title)
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        for (row, column), value in np.ndenumerate(values):
            ax.text(column, row, text.format(value), ha="center", va="center", fontsize=8,
                    color="white" if value > values.max() / 2 else "black")
    fig.tight_layout()
    path = pathlib.Path(out_dir) / "confusion_matrix.png"
    save_atomic(fig, path)
    return path
