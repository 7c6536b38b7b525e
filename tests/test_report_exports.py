"""summarize_results.py's files for a manuscript and a lab meeting (issue 38): --compare's table, CSV
and plot, --format latex's tables and macros.tex, and report.html, one self-contained page. One report
of a hand-made grid is written once for the module; the checks read it."""
import base64
import contextlib
import csv
import io
import re
import os
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

import summarize_results as sr
from report import latex as report_latex
from test_report_replicates import summary_of, write_grid

VOID = {"meta", "img", "br", "hr", "link", "input"}


def run_main(*args):
    """main() in this process: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = sr.main([str(arg) for arg in args])
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """(grid folder, report folder, stdout) of `--compare mode --format latex` on the grid."""
    root = tmp_path_factory.mktemp("exports") / "experiments" / "grid"
    write_grid(root)
    out = root.parent.parent / "report"
    status, stdout, err = run_main(root, "--compare", "mode", "--format", "latex", "-o", out)
    assert status == 0, err
    return root, out, stdout


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_compare_writes_its_csv_and_plot(report):
    _, out, _ = report
    rows = read_csv(out / "comparisons.csv")
    assert [(row["first_value"], row["second_value"], row["config_first"], row["config_second"]) for row in rows] == [
        ("target_only", "full_fine_tuning", "1", "3"), ("target_only", "full_fine_tuning", "2", "4")]
    assert all(row[key] != "" for row in rows for key in ("ci_low", "ttest_p_holm", "wilcoxon_p_holm", "cohen_dz"))
    names = {path.name for path in out.iterdir()}
    assert {"compare_mode.png", "data_efficiency.png", "data_efficiency.csv", "per_participant.csv"} <= names
    assert [row["n_seeds"] for row in read_csv(out / "per_config.csv")] == ["3"] * 4


def tabulars(text):
    return re.findall(r"\\begin\{tabular\}\{([lr]+)\}\n(.*?)\\end\{tabular\}", text, re.S)


def test_latex_tables_have_one_cell_per_column(report):
    _, out, stdout = report
    for name in ("per_fold", "per_participant", "per_config", "comparisons", "data_efficiency"):
        text = (out / f"{name}.tex").read_text()
        assert text.startswith(f"% summarize_results.py: {name}.tex\n") and text in stdout
        [(columns, body)] = tabulars(text)
        rows = [line for line in body.splitlines() if line.endswith(r"\\")]
        assert len(rows) > 1 and all(len(re.split(r"(?<!\\)&", row)) == len(columns) for row in rows), name
        assert text.count("{") - text.count(r"\{") == text.count("}") - text.count(r"\}")


def test_macros_are_newcommands_with_stable_names(report):
    root, out, _ = report
    lines = (out / "macros.tex").read_text().splitlines()[1:]
    found = dict(re.fullmatch(r"\\newcommand\{\\(rep[A-Za-z]+)\}\{([^{}]*)\}", line).groups() for line in lines)
    assert len(found) == len(lines)  # each name once
    ft = read_csv(out / "per_config.csv")[3]
    assert found["repFullFineTuningTargetDataPctOnePointZeroGain"] == f"{float(ft['gain_mean']):+.3f}"
    assert found["repFullFineTuningTargetDataPctOnePointZeroSeeds"] == "3"
    comparison = read_csv(out / "comparisons.csv")[1]
    assert found["repFullFineTuningTargetDataPctOnePointZeroVsTargetOnlyWilcoxonPHolm"] == \
        f"{float(comparison['wilcoxon_p_holm']):.3g}"
    assert found["repMetric"] == "macro F1"
    # The same results summarized again give the same names and figures.
    assert report_latex.macros(summary_of(root, "mode")) == found


def test_latex_compiles(report, tmp_path):
    if shutil.which("pdflatex") is None:  # .ci/run installs it and sets REQUIRE_LATEX_TESTS=1
        if os.environ.get("REQUIRE_LATEX_TESTS") == "1":
            pytest.fail("pdflatex is missing (REQUIRE_LATEX_TESTS=1): apt-get install texlive-latex-base",
                        pytrace=False)
        pytest.skip("no pdflatex here (apt-get install texlive-latex-base)")
    _, out, _ = report
    inputs = "\n\n".join(f"\\input{{{out / name}.tex}}" for name in
                         ("per_config", "per_participant", "comparisons", "data_efficiency", "per_fold"))
    (tmp_path / "doc.tex").write_text(
        "\\documentclass{article}\n\\input{" + str(out / "macros.tex") + "}\n\\begin{document}\n"
        "Gain \\repFullFineTuningTargetDataPctOnePointZeroGain.\n\n" + inputs + "\n\\end{document}\n")
    result = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:]


class PageCheck(HTMLParser):
    """Every element closed in order, and what a page needs from elsewhere (nothing, here)."""

    def __init__(self):
        super().__init__()
        self.open, self.problems, self.images, self.tags, self.doctype = [], [], [], [], None

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        if "href" in attrs or tag in ("script", "link", "iframe", "object"):
            self.problems.append(f"<{tag}> reaches elsewhere")
        if tag not in VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        if not self.open or self.open[-1] != tag:
            self.problems.append(f"</{tag}> closes <{self.open[-1] if self.open else None}>")
        else:
            self.open.pop()


def test_report_html_is_one_self_contained_page(report):
    _, out, _ = report
    text = (out / "report.html").read_text(encoding="utf-8")
    check = PageCheck()
    check.feed(text)
    check.close()
    assert check.doctype == "DOCTYPE html" and check.problems == [] and check.open == []
    assert check.tags[:2] == ["html", "head"] and check.tags.count("table") == 5
    pngs = sorted(out.glob("*.png"))
    assert len(check.images) == len(pngs) == 7  # 4 configurations, f1_vs_target_data_pct, compare, efficiency
    for image, path in zip(sorted(check.images, key=lambda image: image["alt"]), pngs):
        prefix = "data:image/png;base64,"
        assert image["alt"] == path.name and image["src"].startswith(prefix)
        assert base64.b64decode(image["src"][len(prefix):]) == path.read_bytes()
    assert "http" not in text.replace("http-equiv", "")


def test_a_rerun_without_compare_leaves_no_stale_files_and_bad_settings_are_refused(tmp_path):
    root = tmp_path / "grid"
    write_grid(root, shares=[1.0])
    out = tmp_path / "report"
    status, stdout, err = run_main(root, "--compare", "mode", "--format", "latex", "-o", out)
    assert status == 0 and (out / "comparisons.csv").exists() and (out / "macros.tex").exists(), err
    # A .tex file it did not write is never removed: -o may be a manuscript's folder.
    (out / "comparisons.tex").write_text("\\newcommand{\\mine}{1}\n")
    status, stdout, err = run_main(root, "-o", out, "--format", "csv")
    assert status == 0, err
    left = {path.name for path in out.iterdir()}
    assert not left & {"comparisons.csv", "compare_mode.png", "macros.tex", "per_fold.tex"}
    assert (out / "comparisons.tex").read_text() == "\\newcommand{\\mine}{1}\n"
    assert "data_efficiency.csv" not in left  # one share: nothing to say about data efficiency
    for setting, why in [("lr", "--compare lr: not a setting that differs between the configurations here "
                                "(those that do: mode)"),
                         ("seed_finetune", "--compare seed_finetune: seeds are replicates within a configuration, "
                                           "not a setting to compare")]:
        status, stdout, err = run_main(root, "--compare", setting, "-o", tmp_path / setting)
        assert (status, stdout, err.splitlines()) == (2, "", [f"summarize_results.py: error: {why}"])
        assert not (tmp_path / setting).exists()
