"""A recognizer of K >= 3 classes: K logits, cross-entropy, macro F1 over the classes, per-class
scores and a confusion matrix; packs equal their solo runs; the detector's path is left as it was."""
import json

import pytest
import torch

import pack_train
from engine import base_cache, cli, metrics, models
from engine.data import DataError, class_names, load_participants
from engine.packed_step import MemberLosses, member_counts
from test_pack import compare
from tiny_data import write_tiny_dataset, write_tiny_recognizer

NAMES = ("walk", "sit", "stand", "stairs")


@pytest.fixture(scope="module")
def recognizer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rec") / "data"
    write_tiny_recognizer(folder, NAMES)
    return folder


def flags(data, exp, cache, **more):
    common = {"data_path": str(data), "experiments_dir": str(exp), "base_cache_dir": str(cache), "device": "cpu",
              "batch_size": 8, "max_epochs": 3, "base_channels": 4, "threads": 1}
    return dict(common, **more)


def argv(job):
    return [token for key, value in job.items() for token in
            ([f"--{key}"] + ([str(v) for v in value] if isinstance(value, list) else [str(value)]))]


def test_a_fold_scores_macro_f1_over_the_classes_with_per_class_scores_and_a_confusion_plot(recognizer, tmp_path):
    job = flags(recognizer, tmp_path / "exp", tmp_path / "cache", fold=1, prefix="solo", mode="full_fine_tuning")
    assert cli.main(argv(job), enhanced=True) == 0
    folder = tmp_path / "exp" / "solo" / "fold1_b"
    m = json.loads((folder / "metrics.json").read_text())
    hyper = json.loads((folder / "hyperparameters.json").read_text())
    assert hyper["classes"] == list(NAMES) and (folder / "confusion_matrix.png").stat().st_size > 0
    for model in ("base", "target"):
        confusion = m[f"best_{model}_model_target_test_confusion"]
        assert len(confusion) == 4 and sum(map(sum, confusion)) == 12  # the test split's windows
        per_class = m[f"best_{model}_model_target_test_per_class"]
        assert list(per_class) == list(NAMES)
        for k, name in enumerate(NAMES):  # each class's scores from its row and column
            tp, predicted, true = confusion[k][k], sum(row[k] for row in confusion), sum(confusion[k])
            assert per_class[name]["precision"] == pytest.approx(tp / predicted if predicted else 0.0)
            assert per_class[name]["recall"] == pytest.approx(tp / true if true else 0.0)
        present = [per_class[n]["f1"] for k, n in enumerate(NAMES)
                   if sum(confusion[k]) + sum(row[k] for row in confusion) > 0]
        assert m[f"best_{model}_model_target_test_f1"] == pytest.approx(sum(present) / len(present))
        assert m[f"best_{model}_model_target_test_f1_pos"] is None  # no positive class
    state = torch.load(folder / "best_target_model.pt", weights_only=True)
    assert state["head.weight"].shape[0] == 4  # K logits


def test_a_pack_of_recognizers_with_dropout_and_class_weights_equals_their_solo_runs(recognizer, tmp_path):
    members = [flags(recognizer, tmp_path / "exp", tmp_path / "cache", fold=0, mode="full_fine_tuning",
                     dropout=0.3, class_weights=[1, 2, 1, 3], prefix="pack"),
               flags(recognizer, tmp_path / "exp", tmp_path / "cache", fold=2, mode="target_only", dropout=0.3,
                     seed_finetune=5, prefix="pack")]
    (tmp_path / "jobs.json").write_text(json.dumps(members))
    assert pack_train.main([str(tmp_path / "jobs.json")]) == 0
    for job in members:
        solo = dict(job, prefix="solo", base_cache_dir=str(tmp_path / "solo_cache"))
        assert cli.main(argv(solo), enhanced=True) == 0
        name = f"fold{job['fold']}_{'abcd'[job['fold']]}"
        assert compare(tmp_path / "exp" / "solo" / name, tmp_path / "exp" / "pack" / name) == 0.0


def test_the_vmapped_loss_and_counts_are_the_solo_ones_per_member():
    torch.manual_seed(0)
    logits, y = torch.randn(2, 6, 3), torch.tensor([[0., 1, 2, 2, 1, 0], [2, 2, 0, 1, 0, 1]])
    real = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    losses = MemberLosses([[1.0, 3.0, 0.5], None], 3, torch.device("cpu"))
    padded = losses.padded(logits, y, real)
    counts = member_counts(logits, y, padded, real)
    for i, n in enumerate((6, 4)):
        solo_loss = losses.one(i, logits[i, :n], y[i, :n])
        assert padded[i].item() == pytest.approx(solo_loss.item(), rel=1e-6)
        solo = metrics.batch_counts(logits[i, :n], y[i, :n], solo_loss)
        assert torch.allclose(counts[i], solo) and len(solo) == 1 + 9


def test_the_detectors_path_is_unchanged_and_two_named_classes_are_a_detector(tmp_path):
    write_tiny_dataset(tmp_path / "bin")
    data = load_participants(tmp_path / "bin", ["a", "b"])
    assert class_names(tmp_path / "bin", data) is None
    (tmp_path / "bin" / "classes.json").write_text('["rest", "smoking"]')
    assert class_names(tmp_path / "bin", data) is None
    args = cli.build_parser(True).parse_args(["--data_path", str(tmp_path / "bin"), "--participants", "a", "b"])
    assert "classes" not in base_cache.key_settings(args, ["b"])
    assert models.build(args, 3)(torch.zeros(2, 3, 64)).shape == (2,)  # one logit


def test_the_class_list_is_in_the_data_fingerprint_and_the_key_needs_no_data(recognizer, tmp_path):
    import shutil
    fingerprint = base_cache.data_fingerprint(recognizer, ["a", "b"])
    assert fingerprint["classes.json"] == base_cache._sha256(recognizer / "classes.json")
    copy = tmp_path / "data"
    shutil.copytree(recognizer, copy)
    args = cli.build_parser(True).parse_args(["--data_path", str(copy), "--participants", "a", "b"])
    key = base_cache.key_for_args(args)
    shutil.rmtree(copy)  # a planning machine without the data computes the hosts' key
    assert base_cache.key_for_args(args) == key


@pytest.mark.parametrize("extra, fragment", [
    (["--pos_weight", "2"], "--pos_weight weighs a detector's positive class"),
    (["--class_weights", "1", "2"], "--class_weights gives 2 weights"),
])
def test_weights_that_do_not_fit_the_classes_are_one_line(recognizer, tmp_path, capsys, extra, fragment):
    job = flags(recognizer, tmp_path / "exp", tmp_path / "cache", fold=0, prefix="w")
    assert cli.main(argv(job) + extra, enhanced=True) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and fragment in err[0] and not (tmp_path / "exp").exists()


def test_class_weights_on_a_detector_and_label_gaps_are_one_line(tmp_path, capsys):
    write_tiny_dataset(tmp_path / "bin")
    assert cli.main(["--data_path", str(tmp_path / "bin"), "--class_weights", "1", "2", "--max_epochs", "1",
                     "--experiments_dir", str(tmp_path / "exp")]) == 2
    assert "give --pos_weight" in capsys.readouterr().err
    write_tiny_recognizer(tmp_path / "gap", classes_file=False)
    for name in ("a", "b", "c", "d"):  # ids 0, 1 and 3 in c_test.pt, no 2 anywhere
        for split in ("train", "val", "test"):
            path = tmp_path / "gap" / f"{name}_{split}.pt"
            X, y = torch.load(path, weights_only=True)
            torch.save((X, torch.where(y == 2, 3 if path.name == "c_test.pt" else 1, y)), path)
    with pytest.raises(DataError, match=r"c_test.pt: class id 3, but no window of the data has id 2"):
        class_names(tmp_path / "gap", load_participants(tmp_path / "gap", ["a", "b", "c", "d"]))
    (tmp_path / "gap" / "classes.json").write_text('["x", "y", "z"]')
    with pytest.raises(DataError, match=r"c_test.pt: class id 3, but .*classes.json names 3 classes"):
        class_names(tmp_path / "gap", load_participants(tmp_path / "gap", ["a", "b", "c", "d"]))


LAB = '''from torch import nn


def make(channels, n_classes=None, width=4):
    layers = nn.Sequential(nn.Conv1d(channels, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
                           nn.Flatten(), nn.Linear(width, n_classes or 1))
    return layers if n_classes else nn.Sequential(layers, nn.Flatten(0))
'''


def test_a_user_factory_gets_the_number_of_classes(recognizer, tmp_path, capsys):
    (tmp_path / "lab.py").write_text(LAB)
    job = flags(recognizer, tmp_path / "exp", tmp_path / "cache", fold=0, prefix="u", mode="target_only")
    job.pop("base_channels")
    assert cli.main(argv(dict(job, model=f"{tmp_path / 'lab.py'}:make")), enhanced=True) == 0
    state = torch.load(tmp_path / "exp" / "u" / "fold0_a" / "best_target_model.pt", weights_only=True)
    assert state["4.weight"].shape[0] == 4
    m = json.loads((tmp_path / "exp" / "u" / "fold0_a" / "metrics.json").read_text())
    assert m["best_base_model_target_test_per_class"] is None and m["best_base_model_target_test_confusion"] is None
    (tmp_path / "lab.py").write_text(LAB.replace("n_classes or 1", "1"))  # one logit for four classes
    assert cli.main(argv(dict(job, model=f"{tmp_path / 'lab.py'}:make", prefix="v")), enhanced=True) == 2
    assert "4 logits per window" in capsys.readouterr().err


def test_a_grid_of_recognizers_trains_and_the_report_has_macro_f1_per_class_scores_and_confusions(tmp_path, capsys,
                                                                                                 monkeypatch):
    """make_dataset's multi-class synthetic data, a LOPO grid (full fine-tuning and target only) from
    generate_jobs.py, trained as one pack (its base models first), and the report."""
    import generate_jobs
    import make_dataset
    import summarize_results
    from test_results_kept import SCRIPT
    monkeypatch.chdir(tmp_path)
    assert make_dataset.main(["synthetic", "--output_dir", "data", "--n_participants", "3", "--n_classes", "3",
                              "--window_size", "64", "--n_train", "24", "--n_val", "12", "--n_test", "12",
                              "--batch_size", "8"]) is None  # it exits only on an error
    (tmp_path / "grid.json").write_text(json.dumps({
        "prefix": "rec", "folds": [0, 1], "grid": {"mode": ["full_fine_tuning", "target_only"]},
        "fixed": {"data_path": "data", "batch_size": 8, "max_epochs": 2, "base_channels": 4, "device": "cpu",
                  "early_stopping_patience": 1, "early_stopping_patience_target": 1}}))
    assert generate_jobs.main(["grid.json", "-o", "jobs.json", "--script", str(SCRIPT)]) == 0
    jobs = [job for job in json.loads((tmp_path / "jobs.json").read_text()) if job["mode"] != "base_only"]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    assert pack_train.main(["jobs.json"]) == 0
    names = json.loads((tmp_path / "data" / "classes.json").read_text())
    folders = sorted((tmp_path / "experiments" / "rec").glob("*/fold*"))
    assert len(folders) == 4 and all((f / "confusion_matrix.png").exists() for f in folders)
    for folder in folders:  # every test window scored once, by its true class
        confusion = json.loads((folder / "metrics.json").read_text())["best_target_model_target_test_confusion"]
        assert len(confusion) == 3 and sum(map(sum, confusion)) == 12
    assert summarize_results.main([str(tmp_path / "experiments" / "rec"), "-o", "report"]) == 0
    per_class = (tmp_path / "report" / "per_class.csv").read_text().splitlines()
    assert len(per_class) == 1 + 2 * 3 and all(any(name in line for line in per_class) for name in names)
    assert "macro F1" in capsys.readouterr().out
