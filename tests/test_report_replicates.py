"""The report's answers to the paper's questions (issue 38): seeds as replicates, --compare between
configurations, data efficiency, precision and recall. Hand-made result folders (no training); every
statistic is checked against numpy and scipy computed here on the same paired numbers."""
import json

import numpy as np
import pytest
from scipy import stats

from report import compare as report_compare
from report import efficiency as report_efficiency
from report import stats as report_stats
from report import tables as report_tables
from report import text as report_text
from report.runs import load_runs

PARTICIPANTS = ["p1", "p2", "p3", "p4", "p5"]
SHARES = [0.5, 1.0]
SEEDS = [1, 2, 3]


def write_fold(prefix_dir, fold, mode, base, final, share, seed_finetune, scores=None):
    """One fold folder in the shape engine.fold writes (only the keys the report reads).
    scores: (base precision, base recall, precision, recall)."""
    target = PARTICIPANTS[fold]
    hyper = {"data_path": "data/demo", "participants": PARTICIPANTS, "fold": fold, "mode": mode,
             "n_base_participants": "all", "model": "test", "batch_size": 64, "lr": 0.001,
             "target_data_pct": share, "seed": 42, "seed_finetune": seed_finetune, "device": "cpu",
             "prefix": prefix_dir.name, "target_participant": target,
             "base_participants": [] if mode == "target_only" else [p for p in PARTICIPANTS if p != target]}
    metrics = {"mode": mode, "fold": fold, "target_participant": target,
               "best_base_model_target_test_f1": base, "best_target_model_target_test_f1": final}
    if scores:
        for which, (precision, recall) in (("base", scores[:2]), ("target", scores[2:])):
            metrics[f"best_{which}_model_target_test_precision"] = precision
            metrics[f"best_{which}_model_target_test_recall"] = recall
    folder = prefix_dir / f"fold{fold}_{target}"
    folder.mkdir(parents=True)
    (folder / "hyperparameters.json").write_text(json.dumps(hyper))
    (folder / "metrics.json").write_text(json.dumps(metrics))


def write_grid(root, skip=(), shares=SHARES):
    """Two modes x two shares x three fine-tuning seeds x five participants, each seed a prefix of its
    own. Returns {(mode, share, participant): [(base, final, precision, recall) per seed]}."""
    rng = np.random.default_rng(38)
    values = {}
    for mode in ("target_only", "full_fine_tuning"):
        for share in shares:
            for seed in SEEDS:
                for fold, name in enumerate(PARTICIPANTS):
                    if (mode, share, seed, name) in skip:
                        continue
                    base = None if mode == "target_only" else 0.55 + 0.05 * fold
                    final = round(float(rng.uniform(0.5, 0.9)), 4)
                    scores = (None, None) if base is None else (base - 0.1, base - 0.2)
                    scores += (round(final - 0.05, 4), round(final - 0.1, 4))
                    write_fold(root / f"{mode}_{share}_s{seed}", fold, mode, base, final, share, seed, scores)
                    values.setdefault((mode, share, name), []).append((base, final) + scores[2:])
    return values


def summary_of(root, setting=None):
    summary = report_tables.summarize_all(load_runs(sorted(root.iterdir())))
    if setting:
        report_compare.compare(setting, summary)
    report_efficiency.efficiency(summary)
    return summary


def seed_mean(values, mode, share, name, index=1):
    return float(np.mean([run[index] for run in values[(mode, share, name)]]))


@pytest.fixture
def grid(tmp_path):
    root = tmp_path / "experiments" / "grid"
    return root, write_grid(root)


def test_seeds_are_replicates_of_one_configuration(grid):
    root, values = grid
    summary = summary_of(root)
    assert summary.varying == ["target_data_pct"] and summary.seed_keys == ["seed_finetune"]
    assert [(row["mode"], row["target_data_pct"], row["n"], row["n_seeds"]) for row in summary.config_rows] == [
        ("target_only", 0.5, 5, 3), ("target_only", 1.0, 5, 3),
        ("full_fine_tuning", 0.5, 5, 3), ("full_fine_tuning", 1.0, 5, 3)]
    assert len(summary.fold_rows) == 60 and len(summary.participant_rows) == 20
    for row in summary.participant_rows:
        finals = [run[1] for run in values[(row["mode"], row["target_data_pct"], row["participant"])]]
        figure = "target_only_f1" if row["mode"] == "target_only" else "personalized_f1"
        assert row[figure] == pytest.approx(np.mean(finals))
        assert row[f"{figure}_seed_sd"] == pytest.approx(np.std(finals, ddof=1))
    # The test across participants pairs them on their seed means.
    ft = [row for row in summary.config_rows if row["mode"] == "full_fine_tuning"][1]
    gains = [seed_mean(values, "full_fine_tuning", 1.0, name) - (0.55 + 0.05 * i)
             for i, name in enumerate(PARTICIPANTS)]
    expected = stats.wilcoxon(gains, method="exact")
    assert (ft["wilcoxon_w"], ft["wilcoxon_p"]) == (pytest.approx(expected.statistic), pytest.approx(expected.pvalue))
    assert ft["responders"] == sum(gain > 0 for gain in gains)
    assert report_text.headline([root]).splitlines()[3].endswith(", seeds 3 per participant")
    # A fine-tuned fold's target-only F1 is the matching target_only runs' mean over seeds.
    fold = [row for row in summary.fold_rows if row["mode"] == "full_fine_tuning" and row["participant"] == "p2"][0]
    assert fold["target_only_f1"] == pytest.approx(seed_mean(values, "target_only", fold["target_data_pct"], "p2"))


def test_unequal_seed_counts_are_said(tmp_path, capsys):
    root = tmp_path / "grid"
    write_grid(root, skip={("full_fine_tuning", 0.5, 3, "p2")})
    summary = summary_of(root)
    assert [row["n_seeds"] for row in summary.config_rows] == [3, 3, "2-3", 3]
    err = capsys.readouterr().err
    assert "configuration 3: unequal seed counts across participants (p1: 3, p2: 2, p3: 3" in err


def test_compare_mode_agrees_with_scipy_on_the_seed_means(grid):
    root, values = grid
    rows = summary_of(root, "mode").comparisons
    assert [(row["first"], row["second"]) for row in rows] == [
        ("target_only, target_data_pct=0.5", "full_fine_tuning, target_data_pct=0.5"),
        ("target_only, target_data_pct=1.0", "full_fine_tuning, target_data_pct=1.0")]
    for row, share in zip(rows, SHARES):
        a = np.array([seed_mean(values, "target_only", share, name) for name in PARTICIPANTS])
        b = np.array([seed_mean(values, "full_fine_tuning", share, name) for name in PARTICIPANTS])
        d = b - a
        assert row["n"] == 5 and row["mean_difference"] == pytest.approx(d.mean())
        t_test = stats.ttest_rel(b, a)
        assert (row["ttest_t"], row["ttest_p"]) == (pytest.approx(t_test.statistic), pytest.approx(t_test.pvalue))
        signed_rank = stats.wilcoxon(b, a, method="exact")
        assert (row["wilcoxon_w"], row["wilcoxon_p"]) == (pytest.approx(signed_rank.statistic),
                                                          pytest.approx(signed_rank.pvalue))
        assert row["shapiro_p"] == pytest.approx(stats.shapiro(d).pvalue)
        ci = stats.bootstrap((d,), np.mean, confidence_level=0.95, method="BCa",
                             rng=np.random.default_rng(report_stats.BOOTSTRAP_SEED)).confidence_interval
        assert (row["ci_low"], row["ci_high"]) == (pytest.approx(ci.low), pytest.approx(ci.high))
        assert row["cohen_dz"] == pytest.approx(d.mean() / d.std(ddof=1))
        ranks = stats.rankdata(np.abs(d))
        assert row["rank_biserial"] == pytest.approx((ranks[d > 0].sum() - ranks[d < 0].sum()) / ranks.sum())
        assert row["differences"] == pytest.approx(dict(zip(PARTICIPANTS, d)))
    # Holm over a family of two: the smaller p times 2, the larger p times 1 but never below the first.
    for test in ("ttest_p", "wilcoxon_p"):
        low, high = sorted(row[test] for row in rows)
        adjusted = sorted(row[f"{test}_holm"] for row in rows)
        assert adjusted == pytest.approx([min(1, 2 * low), max(min(1, 2 * low), high)])


def test_holm_and_edge_cases_of_the_paired_tests():
    # p 0.01, 0.03, 0.04 (the None is not counted): 3 * 0.01, 2 * 0.03, max(0.06, 1 * 0.04)
    assert report_stats.holm([0.01, None, 0.04, 0.03]) == pytest.approx([0.03, None, 0.06, 0.06])
    assert report_stats.holm([0.5, 0.6]) == [1.0, 1.0]
    same = report_stats.paired_tests([0.5, 0.6, 0.7], [0.6, 0.7, 0.8])  # every difference 0.1
    assert (same["ttest_p"], same["shapiro_p"], same["cohen_dz"]) == (None, None, None)
    assert (same["ci_low"], same["ci_high"], same["rank_biserial"]) == (pytest.approx(0.1), pytest.approx(0.1), 1.0)
    alone = report_stats.paired_tests([0.5], [0.7])
    assert (alone["ci_low"], alone["ttest_p"], alone["mean_difference"]) == (None, None, pytest.approx(0.2))


def test_data_efficiency_medians_retention_and_the_share_that_reaches_target_only(grid):
    root, values = grid
    rows = summary_of(root).efficiency
    assert [(row["mode"], row["target_data_pct"]) for row in rows] == [
        ("target_only", 0.5), ("target_only", 1.0), ("full_fine_tuning", 0.5), ("full_fine_tuning", 1.0)]
    medians = {}
    for row in rows:
        finals = [seed_mean(values, row["mode"], row["target_data_pct"], name) for name in PARTICIPANTS]
        q1, q3 = np.percentile(finals, [25, 75])
        medians[(row["mode"], row["target_data_pct"])] = np.median(finals)
        assert (row["n"], row["median"], row["q1"], row["q3"]) == (5, pytest.approx(np.median(finals)),
                                                                   pytest.approx(q1), pytest.approx(q3))
    for row in rows:
        assert row["retention"] == pytest.approx(medians[(row["mode"], row["target_data_pct"])]
                                                 / medians[(row["mode"], 1.0)])
    reference = medians[("target_only", 1.0)]
    reached = [share for share in SHARES if medians[("full_fine_tuning", share)] >= reference]
    ft = [row for row in rows if row["mode"] == "full_fine_tuning"]
    assert [row["target_only_full_median"] for row in ft] == pytest.approx([reference] * len(SHARES))
    assert {row["reaches_target_only_at"] for row in ft} == {reached[0] if reached else None}
    assert {row["reaches_target_only_at"] for row in rows if row["mode"] == "target_only"} == {None}


def test_precision_and_recall_and_their_changes(grid):
    root, values = grid
    summary = summary_of(root)
    fold = [row for row in summary.fold_rows if row["mode"] == "full_fine_tuning" and row["participant"] == "p3"][0]
    base, final, precision, recall = values[("full_fine_tuning", fold["target_data_pct"], "p3")][0]
    assert (fold["base_precision"], fold["precision"]) == (pytest.approx(base - 0.1), precision)
    assert fold["recall_change"] == pytest.approx(recall - (base - 0.2))
    target_only = [row for row in summary.fold_rows if row["mode"] == "target_only"][0]
    assert target_only["base_recall"] is None and target_only["recall_change"] is None
    config = summary.config_rows[3]
    changes = [np.mean([run[2] for run in values[("full_fine_tuning", 1.0, name)]]) - (0.45 + 0.05 * i)
               for i, name in enumerate(PARTICIPANTS)]
    assert config["precision_change_mean"] == pytest.approx(np.mean(changes))
