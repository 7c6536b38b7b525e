"""--compare SETTING: every pair of configurations that differ only in that setting, paired by
participant on the final F1 of each participant's seed mean (report.stats.paired_tests), with Holm's
adjustment of each test's p across the comparisons of one call.

The difference is second - first, where first is the configuration whose value of the setting comes
first (modes in MODE_ORDER, numbers ascending). A target_only configuration has no base phase, so
against it the base-phase settings do not count as differences (a target_only run pairs with the
fine-tuned runs of every base size); a base-phase setting is not compared for a mode without one.
"""
from report.runs import BASE_PHASE_SETTINGS, SEED_KEYS, ignores_base_settings
from report.stats import holm, paired_tests
from report.tables import final_f1
from report.text import cell, label

COLUMNS = ["comparison", "setting", "first_value", "second_value", "config_first", "config_second", "first",
           "second", "n", "mean_first",
           "mean_second", "mean_difference", "ci_low", "ci_high", "ttest_t", "ttest_p", "ttest_p_holm",
           "wilcoxon_n", "wilcoxon_w", "wilcoxon_p", "wilcoxon_p_holm", "shapiro_p", "cohen_dz", "rank_biserial"]


def choices(summary):
    """The settings --compare takes here: mode when modes differ, and the settings that vary."""
    modes = {row["mode"] for row in summary.config_rows}
    return (["mode"] if len(modes) > 1 else []) + summary.varying


def problem(setting, summary):
    """Why --compare SETTING cannot be done here (one line), or None."""
    if setting in SEED_KEYS:
        return f"--compare {setting}: seeds are replicates within a configuration, not a setting to compare"
    known = choices(summary)
    if setting not in known:
        return (f"--compare {setting}: not a setting that differs between the configurations here "
                f"(those that do: {', '.join(known) or 'none'})")
    if not pairs(setting, summary):
        return f"--compare {setting}: no two configurations differ only in {setting}"
    return None


def compared(row, setting):
    """Whether a configuration takes part: a base-phase setting means nothing to a mode without one."""
    return not (setting in BASE_PHASE_SETTINGS and ignores_base_settings(row["mode"]))


def differ_only_in(first, second, setting, varying):
    if first[setting] == second[setting]:
        return False
    others = [key for key in ["mode"] + varying if key != setting]
    if ignores_base_settings(first["mode"]) or ignores_base_settings(second["mode"]):
        others = [key for key in others if key not in BASE_PHASE_SETTINGS]
    return all(first[key] == second[key] for key in others)


def pairs(setting, summary):
    """[(first, second)] configuration rows; config rows are sorted so first's value comes first."""
    rows = [row for row in summary.config_rows if compared(row, setting)]
    return [(first, second) for i, first in enumerate(rows) for second in rows[i + 1:]
            if differ_only_in(first, second, setting, summary.varying)]


def final_scores(summary, config):
    """{participant: final F1 (the mean over its seeds)} of one configuration."""
    scores = {row["participant"]: final_f1(row) for row in summary.participant_rows if row["config"] == config}
    return {name: score for name, score in scores.items() if score is not None}


def compare(setting, summary):
    """The comparison rows of --compare SETTING, Holm-adjusted across them; also stored in summary."""
    rows = []
    for number, (first, second) in enumerate(pairs(setting, summary), 1):
        a, b = final_scores(summary, first["config"]), final_scores(summary, second["config"])
        names = [name for name in a if name in b]
        row = {"comparison": number, "setting": setting, "first_value": first[setting],
               "second_value": second[setting], "config_first": first["config"],
               "config_second": second["config"], "first": label(first, summary.varying),
               "second": label(second, summary.varying)}
        row.update(paired_tests([a[name] for name in names], [b[name] for name in names]))
        row["differences"] = {name: round(b[name] - a[name], 12) for name in names}
        rows.append(row)
    for test in ("ttest_p", "wilcoxon_p"):
        for row, adjusted in zip(rows, holm([row[test] for row in rows])):
            row[f"{test}_holm"] = adjusted
    summary.comparisons, summary.compared = rows, setting
    return rows


def p_text(p, adjusted=None):
    """A p-value to three digits, and its Holm adjustment in brackets when given; blank for none."""
    if p is None:
        return ""
    return f"{p:.3g}" + ("" if adjusted is None else f" ({adjusted:.3g})")


def difference_text(row):
    """'+0.095 [+0.026, +0.175]': the mean difference and its CI (when there is one)."""
    if row["mean_difference"] is None:
        return ""
    if row["ci_low"] is None or row["ci_high"] is None:
        return f"{row['mean_difference']:+.3f}"
    return f"{row['mean_difference']:+.3f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]"


def table(rows, f1_name):
    """(headers, lines) of the comparisons, for Markdown, LaTeX and HTML."""
    headers = ["#", "first", "second", "n", f"mean {f1_name}: first, second", "difference [95% CI]",
               "t-test p (Holm)", "Wilcoxon p (Holm)", "Shapiro p", "d_z", "rank-biserial"]
    lines = []
    for row in rows:
        means = "" if row["n"] == 0 else f"{row['mean_first']:.3f}, {row['mean_second']:.3f}"
        lines.append([str(row["comparison"]), f"{row['config_first']}: {row['first']}",
                      f"{row['config_second']}: {row['second']}", str(row["n"]), means, difference_text(row),
                      p_text(row["ttest_p"], row["ttest_p_holm"]), p_text(row["wilcoxon_p"], row["wilcoxon_p_holm"]),
                      p_text(row["shapiro_p"]), cell(row["cohen_dz"], 2), cell(row["rank_biserial"], 2)])
    return headers, lines
