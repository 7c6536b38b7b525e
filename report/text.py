"""The report as text: the tables as (headers, lines) of cells, which Markdown, LaTeX and HTML
render alike; CSV; and the one-line headline per configuration that the runner prints at the end
of a run. Columns that would be blank everywhere (precision and recall of runs made before they
were recorded) or 1 everywhere (seeds) are left out of the rendered tables, never out of the CSVs."""
import csv
import json

from report.runs import METRICS, expand_inputs, find_prefixes, load_runs
from report.tables import ALL_FIGURES, FIGURES, STATS, TEST_COLUMNS, final_f1, summarize

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


def fold_columns(varying, seed_keys=()):
    return (FOLD_KEYS + varying + list(seed_keys) + [figure for figure, _ in ALL_FIGURES]
            + ["under_trained", "code_version", "pack_size", "slurm_job"])


def participant_columns(varying):
    return (["config", "participant", "mode"] + varying + ["n_seeds"]
            + [name for figure, _ in ALL_FIGURES for name in (figure, f"{figure}_seed_sd")])


def config_columns(varying):
    return (["config", "mode"] + varying + TEST_COLUMNS + ["n_seeds"]
            + [f"{figure}_{stat}" for figure, _ in ALL_FIGURES for stat in STATS])


def write_csv(stream, rows, columns):
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([cell(row[column]) for column in columns])


def markdown(headers, lines):
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(text.replace("|", "\\|") for text in line) + " |" for line in lines]
    return "\n".join(out)


def has_scores(rows, suffix=""):
    """Whether any row has a precision or recall (runs made before they were recorded have none)."""
    return any(row[f"{score}{suffix}"] is not None for row in rows for score in ("precision", "base_precision"))


def change_text(base, final, change, digits=3):
    """'base -> final (change)' of precision or recall; the final value alone without a base."""
    if final is None:
        return cell(base, digits)
    if base is None:
        return cell(final, digits)
    if change is None:
        return f"{base:.{digits}f} → {final:.{digits}f}"
    return f"{base:.{digits}f} → {final:.{digits}f} ({change:+.{digits}f})"


def score_cells(row, suffix=""):
    """Precision and recall cells of a fold row (suffix "") or a configuration row ("_mean")."""
    return [change_text(row[f"base_{score}{suffix}"], row[f"{score}{suffix}"], row[f"{score}_change{suffix}"])
            for score in ("precision", "recall")]


def fold_table(rows, varying, seed_keys=()):
    keys = FOLD_KEYS + varying + list(seed_keys)
    scores = has_scores(rows)
    headers = keys + [name for _, name in FIGURES] + (["precision", "recall"] if scores else []) + ["under-trained"]
    lines = [[cell(row[key]) for key in keys] + [cell(row[figure], 3) for figure, _ in FIGURES]
             + (score_cells(row) if scores else []) + [cell(row["under_trained"])] for row in rows]
    return headers, lines


def seeds_replicate(rows):
    """Whether any participant of any configuration has several seeds."""
    return any(row["n_seeds"] != 1 for row in rows)


def participant_table(rows, varying):
    """Each participant's figures as 'mean ± sd' over its seeds."""
    keys = ["config", "participant", "mode"] + varying + ["n_seeds"]
    figures = [(figure, name) for figure, name in FIGURES if figure in ("base_f1", "personalized_f1",
                                                                       "target_only_f1", "gain")]
    lines = []
    for row in rows:
        spreads = [cell(row[figure], 3) + ("" if row[f"{figure}_seed_sd"] is None else
                                            f" ± {row[f'{figure}_seed_sd']:.3f}") for figure, _ in figures]
        lines.append([cell(row[key]) for key in keys] + spreads)
    return keys[:-1] + ["seeds"] + [name for _, name in figures], lines


def spread(row, figure):
    """'mean ± sd (median)' of one figure, blank when it has no values."""
    mean, sd, median = (row[f"{figure}_{stat}"] for stat in STATS)
    if mean is None:
        return ""
    return f"{mean:.3f}" + ("" if sd is None else f" ± {sd:.3f}") + f" ({median:.3f})"


def config_table(rows, varying):
    seeds = seeds_replicate(rows)
    scores = has_scores(rows, "_mean")
    headers = (["config", "mode"] + varying + ["n"] + (["seeds"] if seeds else []) + [name for _, name in FIGURES]
               + (["precision", "recall"] if scores else []) + ["responders", "Wilcoxon"])
    lines = []
    for row in rows:
        paired = row["n_paired"] > 0
        lines.append([cell(row[key]) for key in ["config", "mode"] + varying + ["n"]]
                     + ([cell(row["n_seeds"])] if seeds else []) + [spread(row, figure) for figure, _ in FIGURES]
                     + (score_cells(row, "_mean") if scores else [])
                     + [f"{row['responders']}/{row['n_paired']}" if paired else "",
                        f"W={row['wilcoxon_w']:g}, p={row['wilcoxon_p']:.3g}" if paired else ""])
    return headers, lines


def config_note(metric="f1", recognizers=False):
    """The per-configuration table's note; with recognizers, what their macro F1 is."""
    classes = (" A recognizer's macro F1 is the mean F1 over its classes (those in the test labels or the "
               "predictions)." if recognizers else "")
    return (f"F1 = {METRICS[metric][2]} on the target's test split.{classes} Figures per configuration: mean ± sd "
            "(median) across participants, each participant once (the mean over its seeds).")


def headline_line(row, varying, metric="f1"):
    name, f1_name = label(row, varying), METRICS[metric][2]
    seeds = "" if row["n_seeds"] == 1 else f", seeds {row['n_seeds']} per participant"
    if row["n_paired"] == 0:
        return f"{name}: {f1_name} {final_f1(row, '_mean'):.3f} (n={row['n']}){seeds}"
    return (f"{name}: {f1_name} {row['base_f1_mean']:.3f} -> {row['personalized_f1_mean']:.3f} "
            f"(gain {row['gain_mean']:+.3f}), responders {row['responders']}/{row['n_paired']}, "
            f"Wilcoxon p={row['wilcoxon_p']:.3g}{seeds}")


def headline(prefix_dirs):
    """One line per configuration of the runs under `prefix_dirs` (folders or
    globs): mean base F1 -> personalized F1, gain, responders n/N, Wilcoxon p."""
    runs = load_runs(find_prefixes(expand_inputs(prefix_dirs))[0])
    if not runs:
        return "summary: no complete results in " + ", ".join(map(str, prefix_dirs))
    _, config_rows, varying = summarize(runs)
    return "\n".join(headline_line(row, varying) for row in config_rows)
