"""summarize_results.py against hand-made experiment folders with known numbers.

Every expected value below is worked out by hand in the comments next to it.
"""
import csv
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
from matplotlib.text import Text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import summarize_results as sr
from report import plots as report_plots
from report import runs as report_runs
from report import stats as report_stats
from report import tables as report_tables
from report import text as report_text

SCRIPT = ROOT / "summarize_results.py"
PARTICIPANTS = ["p1", "p2", "p3", "p4"]


def write_run(prefix_dir, fold, mode, base_f1, personalized_f1, base_epoch=None, target_epoch=None,
              participants=PARTICIPANTS, n_base="all", drop_metric=None, extra_metrics=None, **settings):
    """One fold folder as engine.fold writes it (only the keys that matter here)."""
    target = participants[fold]
    others = [p for p in participants if p != target]
    base_names = [] if mode == "target_only" else (others if n_base == "all" else others[:n_base])
    hyper = {"data_path": "data/demo", "participants": participants, "fold": fold, "n_base_participants": n_base,
             "mode": mode, "model": "test", "window_size": 100, "batch_size": 64, "lr": 0.001,
             "max_epochs": 500, "early_stopping_patience": 10, "early_stopping_patience_target": 10,
             "target_data_pct": 1.0, "use_augmentation": False, "magnitude_range": [0.9, 1.1], "seed": 42,
             "device": f"cuda:{fold}", "prefix": prefix_dir.name, "experiments_dir": "experiments",
             "overwrite": False, "target_participant": target, "base_participants": base_names,
             "n_channels": 3, "script": "train.py"}
    hyper.update(settings)
    metrics = {"mode": mode, "fold": fold, "target_participant": target,
               "best_base_epoch": base_epoch, "best_target_epoch": target_epoch,
               "best_base_model_target_test_f1": base_f1, "best_target_model_target_test_f1": personalized_f1}
    metrics.update(extra_metrics or {})
    metrics.pop(drop_metric, None)
    fold_dir = prefix_dir / f"fold{fold}_{target}"
    fold_dir.mkdir(parents=True)
    (fold_dir / "hyperparameters.json").write_text(json.dumps(hyper))
    (fold_dir / "metrics.json").write_text(json.dumps(metrics))
    return fold_dir


@pytest.fixture
def experiments(tmp_path):
    """Four prefixes, target_data_pct 1.0 and 0.5, plus broken folders.

    ft (full_fine_tuning, pct 1.0)      base  pers  gain  gain %  room   epochs
        p1                              0.5   0.7   0.2   40      0.4    10 15
        p2                              0.6   0.9   0.3   50      0.75   12 20
        p3                              0.8   0.7  -0.1  -12.5   -0.5     8 11
        p4                              0.4   0.5   0.1   25      1/6    10 13
    ft_half (full_fine_tuning, pct 0.5) 0.5/0.6, 0.6/0.6 (zero gain), 0.8/0.85, 0.4/0.45
    tft (target_only_fine_tuning, 1.0)  p1 0.0 -> 0.5 (gain % blank), p2 1.0 -> 0.9 (room blank)
    to (target_only, 1.0)               p1 0.6, p2 0.65, p3 0.75, p4 incomplete
    """
    exp = tmp_path / "experiments"
    ft = exp / "ft"
    for fold, (base, pers, be, te) in enumerate([(0.5, 0.7, 10, 15), (0.6, 0.9, 12, 20),
                                                 (0.8, 0.7, 8, 11), (0.4, 0.5, 10, 13)]):
        write_run(ft, fold, "full_fine_tuning", base, pers, be, te)
    for fold, (base, pers) in enumerate([(0.5, 0.6), (0.6, 0.6), (0.8, 0.85), (0.4, 0.45)]):
        write_run(exp / "ft_half", fold, "full_fine_tuning", base, pers, 9, 14, target_data_pct=0.5)
    write_run(exp / "tft", 0, "target_only_fine_tuning", 0.0, 0.5, 5, 9)
    write_run(exp / "tft", 1, "target_only_fine_tuning", 1.0, 0.9, 6, 8)
    for fold, pers in enumerate([0.6, 0.65, 0.75]):
        write_run(exp / "to", fold, "target_only", None, pers, None, 7, early_stopping_patience=99)
    write_run(exp / "to", 3, "target_only", None, 0.8, drop_metric="best_target_model_target_test_f1")
    # Broken runs are skipped with a warning; non-run folders are passed over.
    (ft / "fold8_p8").mkdir()
    (ft / "fold8_p8" / "hyperparameters.json").write_text("{}")
    (ft / "fold9_p9").mkdir()
    (ft / "fold9_p9" / "hyperparameters.json").write_text("{}")
    (ft / "fold9_p9" / "metrics.json").write_text("{not json")
    (ft / ".fold0_p1.tmp123").mkdir()
    (ft / "report").mkdir()
    return exp


def summary(exp, pattern="*"):
    return report_tables.summarize(report_runs.load_runs(report_runs.expand_inputs([str(exp / pattern)])))


def rows_of(rows, **match):
    return [row for row in rows if all(row[k] == v for k, v in match.items())]


def only(rows, **match):
    found = rows_of(rows, **match)
    assert len(found) == 1, (match, found)
    return found[0]


# ---------------------------------------------------------------- loading

def test_incomplete_folders_are_skipped_with_a_warning_that_names_them(experiments, capsys):
    runs = report_runs.load_runs(report_runs.expand_inputs([str(experiments / "*")]))
    err = capsys.readouterr().err
    assert len(runs) == 4 + 4 + 2 + 3
    for name in ["fold8_p8", "fold9_p9", "fold3_p4"]:
        line = [line for line in err.splitlines() if name in line]
        assert len(line) == 1 and "skipped" in line[0]
    assert "fold8_p8: skipped, no metrics.json" in err
    assert "fold9_p9: skipped, metrics.json is unreadable" in err
    assert "best_target_model_target_test_f1" in [line for line in err.splitlines() if "fold3_p4" in line][0]
    assert "tmp123" not in err and "report" not in err


def test_settings_exclude_per_fold_and_bookkeeping_keys(experiments):
    fold_rows, config_rows, varying = summary(experiments)
    # device, prefix, fold, target_participant differ between runs but are not settings;
    # early_stopping_patience differs only on target_only runs, which ignore it.
    assert varying == ["target_data_pct"]
    assert [(row["mode"], row["target_data_pct"]) for row in config_rows] == [
        ("target_only", 1.0), ("target_only_fine_tuning", 1.0),
        ("full_fine_tuning", 0.5), ("full_fine_tuning", 1.0)]
    assert [row["config"] for row in config_rows] == [1, 2, 3, 4]


def test_n_base_all_and_its_number_are_one_configuration(tmp_path, capsys):
    exp = tmp_path / "experiments"
    # 4 participants: 'all' means 3 base participants.
    write_run(exp / "a", 0, "full_fine_tuning", 0.5, 0.6, n_base=3)
    write_run(exp / "a", 1, "full_fine_tuning", 0.5, 0.7, n_base=3)
    write_run(exp / "b", 2, "full_fine_tuning", 0.5, 0.8, n_base="all")
    write_run(exp / "b", 1, "full_fine_tuning", 0.5, 0.9, n_base="all")
    fold_rows, config_rows, varying = summary(exp)
    assert varying == [] and len(config_rows) == 1
    assert config_rows[0]["n"] == 3
    assert [row["personalized_f1"] for row in fold_rows] == [0.6, 0.7, 0.8]
    err = capsys.readouterr().err
    assert f"{exp / 'b' / 'fold1_p2'}: skipped, same settings and participant as {exp / 'a' / 'fold1_p2'}" in err


# ---------------------------------------------------------------- per-fold table

def test_per_fold_values(experiments):
    fold_rows, _, _ = summary(experiments)
    assert len(fold_rows) == 13
    ft = rows_of(fold_rows, mode="full_fine_tuning", target_data_pct=1.0)
    assert [(r["prefix"], r["fold"], r["participant"], r["config"]) for r in ft] == [
        ("ft", 0, "p1", 4), ("ft", 1, "p2", 4), ("ft", 2, "p3", 4), ("ft", 3, "p4", 4)]
    expected = [  # base, pers, target-only, gain, gain %, room, epochs
        (0.5, 0.7, 0.6, 0.2, 40.0, 0.4, 10, 15),
        (0.6, 0.9, 0.65, 0.3, 50.0, 0.75, 12, 20),
        (0.8, 0.7, 0.75, -0.1, -12.5, -0.5, 8, 11),
        (0.4, 0.5, None, 0.1, 25.0, 1 / 6, 10, 13),  # p4's target_only run is incomplete
    ]
    for row, values in zip(ft, expected):
        got = tuple(row[f] for f, _ in report_tables.FIGURES)
        assert got == pytest.approx(values), row["participant"]


def test_per_fold_edge_cases(experiments):
    fold_rows, _, _ = summary(experiments)
    p1, p2 = rows_of(fold_rows, mode="target_only_fine_tuning")
    # base 0: gain % undefined; room = 0.5 / (1 - 0) = 0.5.
    assert (p1["gain"], p1["gain_pct"], p1["room_captured"]) == (0.5, None, 0.5)
    # base 1: room undefined; gain % = -0.1 / 1 * 100.
    assert p2["gain"] == pytest.approx(-0.1) and p2["gain_pct"] == pytest.approx(-10.0)
    assert p2["room_captured"] is None
    # target-only F1 comes from the target_only run with the same data share.
    assert (p1["target_only_f1"], p2["target_only_f1"]) == (0.6, 0.65)
    # No target_only run at 50% target data: blank, not the 100% one.
    assert [r["target_only_f1"] for r in rows_of(fold_rows, target_data_pct=0.5)] == [None] * 4
    # Zero gain is 0, not blank, and the gain is free of float noise (0.85 - 0.8 is not 0.05 in floats).
    half = rows_of(fold_rows, target_data_pct=0.5)
    assert [r["gain"] for r in half] == [0.1, 0.0, 0.05, 0.05]
    # target_only rows: no base, no gain, and their own F1 under target-only, not under personalized.
    to = rows_of(fold_rows, mode="target_only")
    assert [(r["base_f1"], r["personalized_f1"], r["gain"], r["target_only_f1"]) for r in to] == [
        (None, None, None, 0.6), (None, None, None, 0.65), (None, None, None, 0.75)]


def test_target_only_match_needs_equal_settings_except_base_phase_ones(tmp_path):
    exp = tmp_path / "experiments"
    write_run(exp / "ft", 0, "full_fine_tuning", 0.5, 0.6, n_base=2, early_stopping_patience=5,
              lr=0.01)
    write_run(exp / "to_same_lr", 0, "target_only", None, 0.55, n_base=3, lr=0.01)
    write_run(exp / "to_other_lr", 0, "target_only", None, 0.44, lr=0.002)
    fold_rows, _, _ = summary(exp)
    assert only(fold_rows, mode="full_fine_tuning")["target_only_f1"] == 0.55


# ---------------------------------------------------------------- per-configuration table

def test_per_config_aggregates(experiments):
    _, config_rows, _ = summary(experiments)
    ft = only(config_rows, mode="full_fine_tuning", target_data_pct=1.0)
    assert (ft["n"], ft["n_paired"], ft["responders"], ft["responder_rate"]) == (4, 4, 3, 0.75)
    expected = {
        # mean, sd (n - 1), median
        "base_f1": (0.575, math.sqrt((0.075**2 + 0.025**2 + 0.225**2 + 0.175**2) / 3), 0.55),
        "personalized_f1": (0.7, math.sqrt((0 + 0.2**2 + 0 + 0.2**2) / 3), 0.7),
        # target-only: p1..p3 only: 0.6, 0.65, 0.75 -> mean 2/3, deviations -1/15, -1/60, 1/12
        "target_only_f1": (2 / 3, math.sqrt(((1 / 15)**2 + (1 / 60)**2 + (1 / 12)**2) / 2), 0.65),
        # gains 0.2, 0.3, -0.1, 0.1: deviations 0.075, 0.175, -0.225, -0.025
        "gain": (0.125, math.sqrt(0.0875 / 3), 0.15),
        # 40, 50, -12.5, 25: mean 25.625, deviations 14.375, 24.375, -38.125, -0.625
        "gain_pct": (25.625, math.sqrt((14.375**2 + 24.375**2 + 38.125**2 + 0.625**2) / 3), 32.5),
        "room_captured": ((0.4 + 0.75 - 0.5 + 1 / 6) / 4, None, (0.4 + 1 / 6) / 2),
        "best_base_epoch": (10.0, math.sqrt(8 / 3), 10.0),
        # 15, 20, 11, 13: mean 14.75, deviations 0.25, 5.25, -3.75, -1.75
        "best_target_epoch": (14.75, math.sqrt((0.0625 + 27.5625 + 14.0625 + 3.0625) / 3), 14.0),
    }
    for figure, (mean, sd, median) in expected.items():
        assert ft[f"{figure}_mean"] == pytest.approx(mean), figure
        assert ft[f"{figure}_median"] == pytest.approx(median), figure
        if sd is not None:
            assert ft[f"{figure}_sd"] == pytest.approx(sd), figure
    room = np.array([0.4, 0.75, -0.5, 1 / 6])
    assert ft["room_captured_sd"] == pytest.approx(math.sqrt(((room - room.mean())**2).sum() / 3))
    # |gains| 0.2, 0.3, 0.1, 0.1 rank 3, 4, 1.5, 1.5; W- = 1.5 (p3), W+ = 8.5.
    # Sign assignments with W+ <= 1.5 among 16: {}, {1.5a}, {1.5b} -> p = 2 * 3/16.
    assert (ft["wilcoxon_n"], ft["wilcoxon_w"], ft["wilcoxon_p"]) == (4, 1.5, 0.375)


def test_per_config_zero_gain_single_values_and_unpaired_modes(experiments):
    _, config_rows, _ = summary(experiments)
    half = only(config_rows, target_data_pct=0.5)
    # gains 0.1, 0, 0.05, 0.05: the zero is no responder and is dropped from the test;
    # ranks 3, 1.5, 1.5, all positive: W = 0, p = 2 * 1/8.
    assert (half["responders"], half["n_paired"], half["responder_rate"]) == (3, 4, 0.75)
    assert (half["wilcoxon_n"], half["wilcoxon_w"], half["wilcoxon_p"]) == (3, 0.0, 0.25)
    assert half["target_only_f1_mean"] is None and half["target_only_f1_sd"] is None
    tft = only(config_rows, mode="target_only_fine_tuning")
    # gain % exists for p2 only (-10): a single value has no sd.
    assert (tft["gain_pct_mean"], tft["gain_pct_sd"], tft["gain_pct_median"]) == (pytest.approx(-10.0), None,
                                                                                pytest.approx(-10.0))
    # gains 0.5, -0.1: ranks 2, 1; W = 1; P(W+ <= 1) = 2/4 -> p = 1.
    assert (tft["wilcoxon_w"], tft["wilcoxon_p"], tft["responders"]) == (1.0, 1.0, 1)
    to = only(config_rows, mode="target_only")
    assert (to["n"], to["n_paired"], to["responders"], to["wilcoxon_p"]) == (3, 0, None, None)
    assert to["target_only_f1_mean"] == pytest.approx(2 / 3) and to["personalized_f1_mean"] is None
    assert to["best_target_epoch_sd"] == 0.0


# ---------------------------------------------------------------- Wilcoxon

@pytest.mark.parametrize("differences, w, p, n", [
    # |d| ranks: 0.05->1, 0.1->2, 0.15->3, 0.2->4, 0.3->5; W- = 1; sums <= 1: {}, {1} -> 2 * 2/32
    ([0.1, 0.2, 0.3, -0.05, 0.15], 1.0, 4 / 32, 5),
    # ranks 1.5, 1.5, 3, 4; W- = 3; sums <= 3: 0, 1.5, 1.5, 3, 1.5+1.5 -> 2 * 5/16
    ([0.1, 0.1, -0.2, 0.3], 3.0, 10 / 16, 4),
    # the zero is dropped: ranks 1, 2 all positive, W = 0 -> 2 * 1/4
    ([0.0, 0.1, 0.2], 0.0, 0.5, 2),
    ([1, 2, 3, 4, 5, 6], 0.0, 2 / 64, 6),
    (list(range(1, 21)), 0.0, 2 / 2**20, 20),
    # W+ = 10, W- = 11: the middle of a distribution symmetric about 10.5, P(W+ <= 10) = 1/2 -> p = 1
    ([-1, 2, 3, -4, 5, -6], 10.0, 1.0, 6),
    ([0.0, 0.0], 0.0, 1.0, 0),
])
def test_wilcoxon_exact(differences, w, p, n):
    assert report_stats.wilcoxon(differences) == (w, pytest.approx(p), n)


def test_wilcoxon_exact_middle_of_distribution():
    # ranks 1..6, W- = 2 + 3 = 5. Subsets of {1..6} by sum 0..5: {}, {1}, {2}, {3} {1,2},
    # {4} {1,3}, {5} {1,4} {2,3} -> 1+1+1+2+2+3 = 10 of 64 -> p = 2 * 10/64
    assert report_stats.wilcoxon([1, -2, -3, 4, 5, 6]) == (5.0, pytest.approx(20 / 64), 6)


def test_wilcoxon_normal_approximation_with_tie_correction():
    # n = 25 without ties: W- = 1 + 2 + 3 = 6, mean 25*26/4 = 162.5, var 25*26*51/24 = 1381.25
    d = [-1, -2, -3] + list(range(4, 26))
    w, p, n = report_stats.wilcoxon(d)
    assert (w, n) == (6.0, 25)
    assert p == pytest.approx(math.erfc(156.5 / math.sqrt(1381.25) / math.sqrt(2)))
    # n = 22 with |d| = 1, 1, 2..21: ranks 1.5, 1.5, 3..22; W- = 1.5 + 3 (the second 1 and the 2)
    # var = 22*23*45/24 - (2**3 - 2)/48 = 948.75 - 0.125
    d = [1, -1, -2] + list(range(3, 22))
    w, p, n = report_stats.wilcoxon(d)
    assert (w, n) == (4.5, 22)
    assert p == pytest.approx(math.erfc((126.5 - 4.5) / math.sqrt(948.625) / math.sqrt(2)))


def test_wilcoxon_agrees_with_scipy():
    import scipy.stats as stats
    rng = np.random.default_rng(0)
    exact = rng.normal(0.05, 0.1, 12)  # continuous: no ties, no zeros
    ref = stats.wilcoxon(exact, method="exact")
    assert report_stats.wilcoxon(exact)[:2] == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue))
    tied = np.round(rng.normal(0.02, 0.1, 40), 2)
    ref = stats.wilcoxon(tied, method="approx", zero_method="wilcox", correction=False)
    assert report_stats.wilcoxon(tied)[:2] == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue))


# ---------------------------------------------------------------- headline

def test_headline(experiments, capsys):
    text = report_text.headline([experiments / "ft", experiments / "ft_half", str(experiments / "t*")])
    assert text.splitlines() == [
        "target_only, target_data_pct=1.0: macro F1 0.667 (n=3)",
        "target_only_fine_tuning, target_data_pct=1.0: macro F1 0.500 -> 0.700 (gain +0.200), responders 1/2, "
        "Wilcoxon p=1",
        "full_fine_tuning, target_data_pct=0.5: macro F1 0.575 -> 0.625 (gain +0.050), responders 3/4, "
        "Wilcoxon p=0.25",
        "full_fine_tuning, target_data_pct=1.0: macro F1 0.575 -> 0.700 (gain +0.125), responders 3/4, "
        "Wilcoxon p=0.375",
    ]
    # One prefix alone: nothing varies, so the label is the mode.
    assert report_text.headline([experiments / "ft"]) == ("full_fine_tuning: macro F1 0.575 -> 0.700 (gain +0.125), "
                                                "responders 3/4, Wilcoxon p=0.375")
    assert report_text.headline([experiments / "nothing_here"]).startswith("summary: no complete results in ")


# ---------------------------------------------------------------- CLI

def run_cli(*args, cwd):
    """The script as a user runs it."""
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def run_main(capsys, *args):
    """main() in this process (no interpreter start-up): (status, stdout, stderr)."""
    status = sr.main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_drawn(path):
    assert path.stat().st_size > 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = matplotlib.image.imread(path)
    assert pixels.std() > 0.01, f"{path.name} is blank"


def test_cli_markdown_csv_files_and_plots(experiments, tmp_path):
    out = tmp_path / "report"
    result = run_cli(experiments / "*", "-o", out, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "fold9_p9: skipped" in result.stderr and "fold9_p9" not in result.stdout
    lines = result.stdout.splitlines()
    assert lines[0].startswith("| config | prefix | fold | participant | mode | target_data_pct | base F1 |")
    assert "| 4 | ft | 2 | p3 | full_fine_tuning | 1.0 | 0.800 | 0.700 | 0.750 | -0.100 | -12.500 | -0.500 | 8 | 11 |  |" \
        in lines
    assert any(line.startswith("| 4 | full_fine_tuning | 1.0 | 4 | 0.575 ± 0.171 (0.550) |")
               and line.endswith("| 3/4 | W=1.5, p=0.375 |") for line in lines)

    with open(out / "per_fold.csv") as f:
        per_fold = list(csv.DictReader(f))
    assert len(per_fold) == 13
    p3 = [row for row in per_fold if row["prefix"] == "ft" and row["participant"] == "p3"][0]
    assert float(p3["gain_pct"]) == -12.5 and float(p3["room_captured"]) == pytest.approx(-0.5)
    assert p3["best_base_epoch"] == "8"
    assert [row["target_only_f1"] for row in per_fold if row["prefix"] == "ft_half"] == [""] * 4
    with open(out / "per_config.csv") as f:
        per_config = list(csv.DictReader(f))
    assert list(per_config[0])[:10] == ["config", "mode", "target_data_pct"] + report_tables.TEST_COLUMNS
    ft = per_config[3]
    assert (ft["mode"], ft["responders"], ft["wilcoxon_w"], ft["wilcoxon_p"]) == ("full_fine_tuning", "3", "1.5",
                                                                                  "0.375")
    assert float(ft["gain_median"]) == pytest.approx(0.15)

    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["data_efficiency.png", "f1_vs_target_data_pct.png", "paired_config2.png", "paired_config3.png",
                    "paired_config4.png", "scores_config1.png"]
    for name in pngs:
        assert_drawn(out / name)


def test_cli_json_and_csv_formats(experiments, tmp_path, capsys):
    status, out, err = run_main(capsys, experiments / "ft", experiments / "to", "--format", "json",
                                "-o", tmp_path / "r")
    assert status == 0, err
    data = json.loads(out)
    assert [row["mode"] for row in data["per_config"]] == ["target_only", "full_fine_tuning"]
    assert data["per_config"][1]["wilcoxon_p"] == 0.375
    assert [row["target_only_f1"] for row in data["per_fold"][3:]] == [0.6, 0.65, 0.75, None]

    status, out, err = run_main(capsys, experiments / "ft", "--format", "csv", "-o", tmp_path / "r")
    assert status == 0, err
    fold_part, config_part = out.split("\n\n")
    assert fold_part == (tmp_path / "r" / "per_fold.csv").read_text().rstrip("\n")
    assert list(csv.DictReader(config_part.splitlines()))[0]["responders"] == "3"
    # A second report into the same folder leaves no stale plot: the first one's paired_config2.png is gone.
    assert sorted(p.name for p in (tmp_path / "r").glob("*.png")) == ["paired_config1.png"]


def test_cli_plots_for_target_batch_pct_and_n_base(tmp_path, capsys):
    exp = tmp_path / "experiments"
    three = ["a", "b", "c"]
    for fold in range(3):
        for n_base in (1, 2):
            for pct in (0.25, 0.5):
                write_run(exp / f"n{n_base}_tb{pct}", fold, "full_fine_tuning", 0.5, 0.5 + pct / n_base / (fold + 1),
                          participants=three, n_base=n_base, target_batch_pct=pct, script="oct1_train.py")
    status, out, err = run_main(capsys, exp / "*", "-o", tmp_path / "out")
    assert status == 0, err
    pngs = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert pngs == ["f1_vs_n_base_participants.png", "f1_vs_target_batch_pct.png"] + [
        f"paired_config{i}.png" for i in range(1, 5)]
    for name in pngs:
        assert_drawn(tmp_path / "out" / name)


def test_cli_errors_exit_2_with_one_line(tmp_path, capsys, monkeypatch):
    result = run_cli(tmp_path / "missing*", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == f"summarize_results.py: error: no folder matches {tmp_path / 'missing*'}"
    broken = tmp_path / "experiments" / "broken"
    (broken / "fold0_p1").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    status, out, err = run_main(capsys, broken)
    assert status == 2 and out == ""
    assert err.splitlines() == [f"warning: {broken / 'fold0_p1'}: skipped, no hyperparameters.json",
                                f"summarize_results.py: error: no complete results in {broken}"]
    assert not (tmp_path / "reports").exists()


# ---------------------------------------------------------------- what a researcher trips over (issue 13)

def test_metric_f1_pos_reports_the_positive_class_and_the_default_names_macro_f1(tmp_path, capsys):
    exp = tmp_path / "experiments"
    for fold, (base, pers, base_pos, pers_pos) in enumerate([(0.7, 0.8, 0.4, 0.6), (0.6, 0.7, 0.3, 0.2)]):
        write_run(exp / "ft", fold, "full_fine_tuning", base, pers, extra_metrics={
            "best_base_model_target_test_f1_pos": base_pos, "best_target_model_target_test_f1_pos": pers_pos})
    status, out, err = run_main(capsys, exp / "ft", "-o", tmp_path / "macro")
    assert status == 0, err
    assert "F1 = macro F1 on the target's test split." in out
    assert "| 1 | ft | 0 | p1 | full_fine_tuning | 0.700 | 0.800 |" in out
    status, out, err = run_main(capsys, exp / "ft", "-o", tmp_path / "pos", "--metric", "f1_pos")
    assert status == 0, err
    assert "F1 = positive-class F1 on the target's test split." in out
    assert "| 1 | ft | 0 | p1 | full_fine_tuning | 0.400 | 0.600 |" in out
    assert "| 1 | ft | 1 | p2 | full_fine_tuning | 0.300 | 0.200 |" in out
    assert report_text.headline([exp / "ft"]).startswith("full_fine_tuning: macro F1 0.650 -> 0.750")


def test_best_epochs_are_counted_within_their_phase(tmp_path):
    exp = tmp_path / "experiments"
    # Fine-tuning: 30 base epochs, so global target epoch 45 is epoch 15 of the target phase.
    write_run(exp / "ft", 0, "full_fine_tuning", 0.5, 0.6, 25, 45, extra_metrics={"transition_epoch": 30})
    write_run(exp / "to", 0, "target_only", None, 0.6, None, 20, extra_metrics={"transition_epoch": None})
    fold_rows, _, _ = report_tables.summarize(report_runs.load_runs([exp / "ft", exp / "to"]))
    assert only(fold_rows, mode="full_fine_tuning")["best_target_epoch"] == 15
    assert only(fold_rows, mode="full_fine_tuning")["best_base_epoch"] == 25
    assert only(fold_rows, mode="target_only")["best_target_epoch"] == 20
    assert [name for key, name in report_tables.FIGURES if key == "best_target_epoch"] == ["best target epoch (of its phase)"]


def test_a_grid_prefix_finds_its_configurations_and_reports_never_clobber(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    watch = tmp_path / "experiments" / "watch"
    for pct in (0.5, 1.0):
        for fold in range(2):
            write_run(watch / f"target_data_pct-{pct}", fold, "full_fine_tuning", 0.5, 0.6 + fold / 10,
                      target_data_pct=pct)
    status, out, err = run_main(capsys, "experiments/watch")
    assert status == 0, err
    assert "no fold" not in err
    assert (tmp_path / "reports" / "watch" / "per_fold.csv").read_text().count("\n") == 5
    first = (tmp_path / "reports" / "watch" / "per_fold.csv").read_bytes()
    status, out, err = run_main(capsys, "experiments/watch/*")
    assert status == 0, err
    assert (tmp_path / "reports" / "watch-2" / "per_fold.csv").is_file()
    assert (tmp_path / "reports" / "watch" / "per_fold.csv").read_bytes() == first
    assert err.splitlines()[-1].endswith("to reports/watch-2")
    assert [p.name for p in (tmp_path / "reports").iterdir()] != [] and not any(
        p.name.startswith(".") for p in (tmp_path / "reports").iterdir())
    # An empty folder: one line, the error.
    (tmp_path / "experiments" / "empty").mkdir()
    status, out, err = run_main(capsys, "experiments/empty")
    assert status == 2
    assert err.splitlines() == ["summarize_results.py: error: no fold*_* folders in or under experiments/empty"]


def test_report_plots_have_fixed_axes_separate_labels_and_target_only_too(tmp_path, capsys):
    exp = tmp_path / "experiments"
    # Personalized F1 1.00 for three participants, and every value within 0.459-0.467.
    for fold, (base, pers) in enumerate([(0.459, 1.0), (0.467, 1.0), (0.46, 1.0), (0.462, 0.463)]):
        write_run(exp / "ft", fold, "full_fine_tuning", base, pers)
    for fold in range(3):
        write_run(exp / "to", fold, "target_only", None, 0.46 + fold / 1000)
    fold_rows, config_rows, varying = report_tables.summarize(report_runs.load_runs([exp / "ft", exp / "to"]))
    paired = report_plots.paired_figure(config_rows[1], rows_of(fold_rows, config=2), varying)
    assert paired.get_ylim() == (0.0, 1.0)
    heights = sorted(text.xyann[1] for text in paired.texts)
    assert len(heights) == 4
    assert min(b - a for a, b in zip(heights, heights[1:])) >= report_plots.LABEL_GAP - 1e-9
    assert max(heights) <= 1.0
    # The labels' drawn boxes do not overlap either.
    paired.figure.canvas.draw()  # places the texts
    renderer = paired.figure.canvas.get_renderer()
    boxes = [Text.get_window_extent(text, renderer) for text in paired.texts]  # the text, not its arrow
    assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))

    status, out, err = run_main(capsys, exp / "*", "-o", tmp_path / "out", "--ylim", "0.4", "0.6")
    assert status == 0, err
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["paired_config2.png", "scores_config1.png"]
    assert_drawn(tmp_path / "out" / "scores_config1.png")
    scores = report_plots.scores_figure(config_rows[0], rows_of(fold_rows, config=1), varying, (0.4, 0.6))
    assert scores.get_ylim() == (0.4, 0.6) and len(scores.texts) == 3


def test_runs_whose_best_epoch_is_the_last_are_flagged_under_trained(tmp_path, capsys):
    exp = tmp_path / "experiments"
    # p1: target phase ran 20 epochs after 30 base ones and was best at its last (global 50).
    write_run(exp / "ft", 0, "full_fine_tuning", 0.5, 0.6, 20, 50, extra_metrics={
        "transition_epoch": 30, "base_epochs_run": 30, "target_epochs_run": 20})
    # p2: both phases stopped early.
    write_run(exp / "ft", 1, "full_fine_tuning", 0.5, 0.6, 20, 40, extra_metrics={
        "transition_epoch": 30, "base_epochs_run": 30, "target_epochs_run": 20})
    # p3: target_only, best at its last epoch; base fields are null.
    write_run(exp / "to", 2, "target_only", None, 0.6, None, 60, extra_metrics={
        "transition_epoch": None, "base_epochs_run": None, "target_epochs_run": 60})
    status, out, err = run_main(capsys, exp / "*", "-o", tmp_path / "out")
    assert status == 0, err
    assert "2 run(s) had their best epoch at their last one" in err and "raise --max_epochs" in err
    with open(tmp_path / "out" / "per_fold.csv") as f:
        flags = {row["participant"]: row["under_trained"] for row in csv.DictReader(f)}
    assert flags == {"p1": "target", "p2": "", "p3": "target"}
    assert "under-trained" in out.splitlines()[0]
