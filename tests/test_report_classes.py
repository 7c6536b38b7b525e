"""The report of recognizers (K >= 3 classes, issue 39): macro F1 over the classes where the report
shows F1, the positive-class scores null, and per-class tables (per_class.csv, Markdown, HTML,
LaTeX, macros, a plot) of recognizer configurations only; a detector's report has none of them.
Hand-made result folders in the engine's shapes (no training)."""
import contextlib
import csv
import io
import json

import numpy as np
import pytest

import summarize_results as sr
from report import classes as report_classes
from report import tables as report_tables
from report.runs import load_runs

CLASSES = ["walk", "sit", "stand"]
PARTICIPANTS = ["p1", "p2", "p3"]
# (participant, seed) -> each class's (f1, precision, recall) of the base and the personalized model.
RNG = np.random.default_rng(39)
SCORES = {(name, seed): RNG.uniform(0.2, 0.9, size=(2, 3, 3)).round(4).tolist()
          for name in PARTICIPANTS for seed in (1, 2)}
NO_STAND = "p3"  # its test split has no window of "stand": that class does not count for it


def write_folder(prefix_dir, fold, mode, hyper_extra, metrics_extra, seed=1):
    target = PARTICIPANTS[fold]
    hyper = {"data_path": "data/har", "participants": PARTICIPANTS, "fold": fold, "mode": mode,
             "n_base_participants": "all", "model": "test", "lr": 0.001, "seed": 42, "seed_finetune": seed,
             "target_participant": target, "prefix": prefix_dir.name,
             "base_participants": [] if mode == "target_only" else [p for p in PARTICIPANTS if p != target]}
    hyper.update(hyper_extra)
    metrics = {"mode": mode, "fold": fold, "target_participant": target}
    metrics.update(metrics_extra)
    folder = prefix_dir / f"fold{fold}_{target}"
    folder.mkdir(parents=True)
    (folder / "hyperparameters.json").write_text(json.dumps(hyper))
    (folder / "metrics.json").write_text(json.dumps(metrics))


def recognizer_metrics(name, seed, mode):
    """metrics.json of a recognizer: macro F1s, null positive-class keys, per-class scores and the
    confusion matrices (a target_only run's base ones false, as the engine writes them)."""
    metrics = {}
    for which, scores in zip(("base", "target"), SCORES[(name, seed)]):
        key = f"best_{which}_model_target_test"
        per_class = {c: dict(zip(("f1", "precision", "recall"), values)) for c, values in zip(CLASSES, scores)}
        confusion = [[3, 1, 0], [1, 3, 0], [0, 0, 0] if name == NO_STAND else [1, 0, 3]]
        if name == NO_STAND:
            per_class["stand"] = {"f1": 0.0, "precision": 0.0, "recall": 0.0}  # the engine's 0 of 0
        present = [values[0] for c, values in zip(CLASSES, scores) if name != NO_STAND or c != "stand"]
        metrics.update({f"{key}_f1": float(np.mean(present)), f"{key}_per_class": per_class,
                        f"{key}_confusion": confusion, f"{key}_f1_pos": None, f"{key}_precision": None,
                        f"{key}_recall": None})
        if which == "base" and mode == "target_only":
            metrics.update({f"{key}_f1": None, f"{key}_per_class": False, f"{key}_confusion": False})
    return metrics


def write_recognizers(root):
    """full_fine_tuning with two seeds and target_only with one, three participants."""
    for mode, seeds in (("full_fine_tuning", (1, 2)), ("target_only", (1,))):
        for seed in seeds:
            for fold, name in enumerate(PARTICIPANTS):
                write_folder(root / f"{mode}_s{seed}", fold, mode, {"classes": CLASSES},
                             recognizer_metrics(name, seed, mode), seed)


def write_detectors(root):
    """A detector's full_fine_tuning runs on other data (classes null)."""
    for fold in range(3):
        metrics = {"best_base_model_target_test_f1": 0.6, "best_target_model_target_test_f1": 0.7 + 0.05 * fold}
        for which in ("base", "target"):
            metrics.update({f"best_{which}_model_target_test_{score}": 0.5 for score in
                            ("f1_pos", "precision", "recall")})
        write_folder(root / "detector", fold, "full_fine_tuning", {"data_path": "data/demo", "classes": None},
                     metrics)


def run_main(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = sr.main([str(arg) for arg in args])
    return status, out.getvalue(), err.getvalue()


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def summary_of(root):
    summary = report_tables.summarize_all(load_runs(sorted(root.iterdir())))
    report_classes.per_class(summary)
    return summary


def expected(name, score, model):
    """A class's score of one model (0 base, 1 personalized) across participants' seed means."""
    index, c = ("f1", "precision", "recall").index(score), CLASSES.index(name)
    means = [np.mean([SCORES[(p, seed)][model][c][index] for seed in (1, 2)]) for p in PARTICIPANTS
             if p != NO_STAND or name != "stand"]
    return float(np.mean(means))


def test_per_class_means_take_each_participant_once_over_the_classes_it_has(tmp_path):
    write_recognizers(tmp_path / "har")
    summary = summary_of(tmp_path / "har")
    assert [(row["config"], row["mode"], row["class"], row["n"]) for row in summary.class_rows] == [
        (1, "target_only", "walk", 3), (1, "target_only", "sit", 3), (1, "target_only", "stand", 2),
        (2, "full_fine_tuning", "walk", 3), (2, "full_fine_tuning", "sit", 3), (2, "full_fine_tuning", "stand", 2)]
    for row in summary.class_rows[3:]:
        for score in ("f1", "precision", "recall"):
            assert row[f"base_{score}"] == pytest.approx(expected(row["class"], score, 0))
            assert row[score] == pytest.approx(expected(row["class"], score, 1))
            assert row[f"{score}_change"] == pytest.approx(row[score] - row[f"base_{score}"])
    target_only = summary.class_rows[0]
    assert target_only["base_f1"] is None and target_only["f1_change"] is None
    assert target_only["f1"] == pytest.approx(np.mean([SCORES[(p, 1)][1][0][0] for p in PARTICIPANTS]))
    # Macro F1 stays the report's F1; the positive-class scores are blank, not an error.
    fold = summary.fold_rows[-1]
    assert fold["personalized_f1"] is not None and fold["precision"] is None and fold["recall_change"] is None


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """(report folder, stdout, stderr) of `--format latex` on detector and recognizer runs together."""
    root = tmp_path_factory.mktemp("classes") / "experiments"
    write_recognizers(root / "har")
    write_detectors(root / "demo")
    out = root.parent / "report"
    status, stdout, err = run_main(root, "--format", "latex", "-o", out)
    assert status == 0, err
    return out, stdout, err


def test_a_mixed_report_has_per_class_rows_of_its_recognizers_only(mixed):
    out, stdout, _ = mixed
    configs = read_csv(out / "per_config.csv")
    assert [(row["config"], row["mode"], row["data_path"]) for row in configs] == [
        ("1", "target_only", "data/har"), ("2", "full_fine_tuning", "data/demo"),
        ("3", "full_fine_tuning", "data/har")]
    assert "classes" not in configs[0]  # the class names follow the data, not a setting
    assert configs[1]["precision_mean"] == "0.5" and configs[2]["precision_mean"] == ""
    rows = read_csv(out / "per_class.csv")
    assert {row["config"] for row in rows} == {"1", "3"} and [row["class"] for row in rows[:3]] == CLASSES
    assert {"per_class_config1.png", "per_class_config3.png"} <= {path.name for path in out.iterdir()}
    assert "per_class_config2.png" not in {path.name for path in out.iterdir()}
    page = (out / "report.html").read_text()
    assert "<h2>Per class</h2>" in page and "Recognizer configurations only" in page


def test_latex_includes_the_per_class_table_and_macros(mixed):
    out, stdout, _ = mixed
    tex = (out / "per_class.tex").read_text()
    assert tex.startswith("% summarize_results.py: per_class.tex\n") and tex in stdout
    assert r"3 & full\_fine\_tuning & data/har & stand & 2 & " in tex
    stand = [row for row in read_csv(out / "per_class.csv") if row["config"] == "3"][2]
    macros = (out / "macros.tex").read_text()
    name = r"\repFullFineTuningDataPathDataHarClassStand"
    assert f"\\newcommand{{{name}Gain}}{{{float(stand['f1_change']):+.3f}}}" in macros
    assert r"\repTargetOnlyDataPathDataHarClassWalkFinal" in macros
    assert r"\repTargetOnlyDataPathDataHarClassWalkBase" not in macros  # no base model: no macro


def test_a_detector_report_stays_without_per_class_files(tmp_path):
    write_detectors(tmp_path / "demo")
    out = tmp_path / "report"
    out.mkdir()
    (out / "per_class.csv").write_text("an earlier recognizer report's\n")
    (out / "per_class_config1.png").write_bytes(b"")
    status, stdout, err = run_main(tmp_path / "demo", "--format", "json", "-o", out)
    assert status == 0, err
    assert not list(out.glob("per_class*")) and "per_class" not in json.loads(stdout)
    assert "Per class" not in (out / "report.html").read_text()
    assert "over its classes" not in (out / "report.html").read_text()


def test_f1_pos_skips_recognizers_in_one_warning(tmp_path):
    write_recognizers(tmp_path / "exp" / "har")
    write_detectors(tmp_path / "exp" / "demo")
    status, stdout, err = run_main(tmp_path / "exp", "--metric", "f1_pos", "--format", "csv", "-o",
                                   tmp_path / "report")
    assert status == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "9 recognizer run(s) skipped" in warnings[0]
    assert [row["config"] for row in read_csv(tmp_path / "report" / "per_config.csv")] == ["1"]
    assert not (tmp_path / "report" / "per_class.csv").exists()
