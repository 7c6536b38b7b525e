"""Data efficiency, when target_data_pct varies: for each series (a mode with the other varying
settings held), the median and interquartile range of the final F1 across participants (their seed
means) at each share of target data; retention, that median over the series' median at share 1
(all of the data); and, for a fine-tuned mode, the smallest share at which its median reaches the
median of the matching target_only series at share 1.
"""
import numpy as np

from engine import modes
from report.runs import BASE_PHASE_SETTINGS, as_number, order_key
from report.tables import final_f1
from report.text import cell, label

SETTING = "target_data_pct"
FIGURE_COLUMNS = [SETTING, "n", "median", "q1", "q3", "iqr", "retention", "target_only_full_median",
                  "reaches_target_only_at"]


def columns(summary):
    """The CSV columns: the series, its mode and other varying settings, then the figures."""
    return ["series", "mode"] + [key for key in summary.varying if key != SETTING] + FIGURE_COLUMNS


def fine_tuned(mode):
    """A mode that personalizes a base model (a base phase, then a target phase)."""
    known = modes.BY_NAME.get(mode)
    return known is not None and known.base_phase and known.target_phase


def series_of(row, others):
    return tuple((key, row[key]) for key in ["mode"] + others)


def target_only_key(series):
    """What a series shares with its target_only counterpart: the settings a target phase sees."""
    return tuple((key, value) for key, value in series if key != "mode" and key not in BASE_PHASE_SETTINGS)


def full_share(values_by_share):
    """The share that is all of the data (1, as the setting holds it), or None."""
    return next((share for share in values_by_share if as_number(share) == 1.0), None)


def share_rows(values_by_share):
    """One row per share of one series: median and quartiles, retention against share 1."""
    rows = []
    medians = {share: float(np.median(values)) for share, values in values_by_share.items()}
    full = medians.get(full_share(values_by_share))
    for share in sorted(values_by_share, key=order_key):
        q1, q3 = np.percentile(values_by_share[share], [25, 75])
        rows.append({SETTING: share, "n": len(values_by_share[share]), "median": medians[share],
                     "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1),
                     "retention": medians[share] / full if full else None})
    return rows


def efficiency(summary):
    """The data-efficiency rows (empty unless target_data_pct varies); also stored in summary."""
    if SETTING not in summary.varying:
        return []
    others = [key for key in summary.varying if key != SETTING]
    series = {}  # series -> share -> final F1s of the participants (participant rows are in config order)
    for row in summary.participant_rows:
        share, f1 = row[SETTING], final_f1(row)  # the share as the setting holds it, so labels match
        if as_number(share) is not None and f1 is not None:
            series.setdefault(series_of(row, others), {}).setdefault(share, []).append(f1)
    rows, references = [], {}
    for number, (key, values_by_share) in enumerate(series.items(), 1):
        settings = dict(key)
        for row in share_rows(values_by_share):
            rows.append(dict(settings, series=number, label=label(settings, others), **row))
        if settings["mode"] == "target_only" and full_share(values_by_share) is not None:
            references[target_only_key(key)] = float(np.median(values_by_share[full_share(values_by_share)]))
    for number, key in enumerate(series, 1):
        mine = [row for row in rows if row["series"] == number]
        reference = references.get(target_only_key(key)) if fine_tuned(dict(key)["mode"]) else None
        # The rows are in ascending share, so the first that reaches the reference is the smallest.
        reached = [row[SETTING] for row in mine if reference is not None and row["median"] >= reference]
        for row in mine:
            row["target_only_full_median"] = reference
            row["reaches_target_only_at"] = reached[0] if reached else None
    summary.efficiency = rows
    return rows


def table(rows, f1_name):
    """(headers, lines) of the data-efficiency rows, for Markdown, LaTeX and HTML."""
    headers = ["series", SETTING, "n", f"median {f1_name} [IQR]", "retention", "target-only median (all data)",
               "reaches it at"]
    lines = [[row["label"], cell(row[SETTING]), str(row["n"]),
              f"{row['median']:.3f} [{row['q1']:.3f}, {row['q3']:.3f}]", cell(row["retention"], 3),
              cell(row["target_only_full_median"], 3),
              cell(row["reaches_target_only_at"]) if row["target_only_full_median"] is not None else ""]
             for row in rows]
    return headers, lines
