"""--format latex: the report's tables as LaTeX tabulars (plain LaTeX, no package needed) and
macros.tex, one \\newcommand per headline figure.

A macro's name is \\rep, then its configuration's label spelled in letters (LaTeX command names hold
letters only: words capitalized, digits spelled, '.' Point, '-' Minus, the rest dropped), then the
figure: \\repFullFineTuningTargetDataPctZeroPointFiveGain is the mean gain of the configuration
"full_fine_tuning, target_data_pct=0.5". The label holds the mode and the settings that tell the
configurations apart, so the names stay the same for as long as the same settings vary. The list
of figures is in docs/report.md.
"""
import re

from report.runs import METRICS
from report.tables import final_f1
from report.text import cell, label

DIGITS = ["Zero", "One", "Two", "Three", "Four", "Five", "Six", "Seven", "Eight", "Nine"]
SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
           "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "→": r"$\to$",
           "−": "-", "<": r"\textless{}", ">": r"\textgreater{}"}


def escape(text):
    """Text as LaTeX typesets it literally."""
    return "".join(SPECIAL.get(char, char) for char in str(text))


def numeric(text):
    try:
        float(text)
        return True
    except ValueError:
        return False


def tabular(headers, lines):
    """A tabular with a rule under the headers; columns whose cells are all numbers align right."""
    align = "".join("r" if all(numeric(line[i]) for line in lines if line[i]) and any(line[i] for line in lines)
                    else "l" for i in range(len(headers)))
    out = [f"\\begin{{tabular}}{{{align}}}", r"\hline", " & ".join(map(escape, headers)) + r" \\", r"\hline"]
    out += [" & ".join(map(escape, line)) + r" \\" for line in lines]
    out += [r"\hline", r"\end{tabular}"]
    return "\n".join(out) + "\n"


def macro_word(text):
    """Letters only, for a LaTeX command name: 'target_data_pct=0.25' -> 'TargetDataPctZeroPointTwoFive'."""
    words = []
    for part in re.findall(r"[A-Za-z]+|\d|\.|-", str(text)):
        if part.isdigit():
            words.append(DIGITS[int(part)])
        else:
            words.append({".": "Point", "-": "Minus"}.get(part, part[0].upper() + part[1:]))
    return "".join(words)


def number(value, digits=3, signed=False):
    if value is None:
        return None
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def p_value(p):
    return None if p is None else f"{p:.3g}"


def config_figures(row):
    """(figure name, text) of one configuration's headline figures; a blank one is left out."""
    return [("Participants", str(row["n"])), ("Seeds", str(row["n_seeds"])),
            ("Base", number(row["base_f1_mean"])), ("Final", number(final_f1(row, "_mean"))),
            ("FinalMedian", number(final_f1(row, "_median"))), ("Gain", number(row["gain_mean"], signed=True)),
            ("Responders", None if row["responders"] is None else str(row["responders"])),
            ("WilcoxonP", p_value(row["wilcoxon_p"])), ("Precision", number(row["precision_mean"])),
            ("Recall", number(row["recall_mean"])),
            ("PrecisionChange", number(row["precision_change_mean"], signed=True)),
            ("RecallChange", number(row["recall_change_mean"], signed=True))]


def comparison_figures(row):
    return [("N", str(row["n"])), ("Diff", number(row["mean_difference"], signed=True)),
            ("CILow", number(row["ci_low"], signed=True)), ("CIHigh", number(row["ci_high"], signed=True)),
            ("TTestP", p_value(row["ttest_p"])), ("TTestPHolm", p_value(row["ttest_p_holm"])),
            ("WilcoxonP", p_value(row["wilcoxon_p"])), ("WilcoxonPHolm", p_value(row["wilcoxon_p_holm"])),
            ("ShapiroP", p_value(row["shapiro_p"])), ("Dz", number(row["cohen_dz"], 2)),
            ("RankBiserial", number(row["rank_biserial"], 2))]


def macros(summary, metric="f1"):
    """{macro name: text} of the headline figures: each configuration's, each comparison's (named
    after its second configuration, Vs, and the first's value of the compared setting), each
    recognizer class's F1 (base, final, gain), and each data-efficiency row's retention and series'
    share that reaches target_only."""
    found = {"repMetric": METRICS[metric][2]}
    for row in summary.config_rows:
        name = "rep" + macro_word(label(row, summary.varying))
        found.update({name + figure: text for figure, text in config_figures(row) if text is not None})
    for row in summary.class_rows:  # a recognizer's classes; names that spell alike: the first wins
        name = "rep" + macro_word(label(row, summary.varying)) + "Class" + macro_word(row["class"])
        for figure, key, signed in (("Base", "base_f1", False), ("Final", "f1", False), ("Gain", "f1_change", True)):
            if row[key] is not None:
                found.setdefault(name + figure, number(row[key], signed=signed))
    for row in summary.comparisons:  # the first differs from the second in the compared setting alone
        first = row["first_value"] if row["setting"] == "mode" else f"{row['setting']}={cell(row['first_value'])}"
        name = "rep" + macro_word(row["second"]) + "Vs" + macro_word(first)
        found.update({name + figure: text for figure, text in comparison_figures(row) if text is not None})
    for row in summary.efficiency:
        name = "rep" + macro_word(label(row, summary.varying))  # its configuration's name
        if row["retention"] is not None:
            found[name + "Retention"] = number(row["retention"])
        if row["reaches_target_only_at"] is not None:
            found["rep" + macro_word(row["label"]) + "ReachesTargetOnlyAt"] = str(row["reaches_target_only_at"])
    return found


def macros_tex(found):
    lines = ["% summarize_results.py --format latex: the report's headline figures; names in docs/report.md."]
    lines += [f"\\newcommand{{\\{name}}}{{{escape(text)}}}" for name, text in found.items()]
    return "\n".join(lines) + "\n"
