"""The report as text: Markdown tables, CSV, and the one-line headline per configuration
that the runner prints at the end of a run."""
import csv
import json

from report.runs import METRICS, expand_inputs, find_prefixes, load_runs
from report.tables import FIGURES, STATS, TEST_COLUMNS, final_f1, summarize

FOLD_KEYS = ["config", "prefix", "fold", "participant", "mode"]


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
    return (FOLD_KEYS + varying + [figure for figure, _ in FIGURES]
            + ["under_trained", "code_version", "pack_size", "slurm_job"])


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
        return f"{name}: {f1_name} {final_f1(row, '_mean'):.3f} (n={row['n']})"
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
