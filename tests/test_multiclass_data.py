"""Multi-class datasets from make_dataset.py: `csv --classes` and `synthetic --n_classes`.

A multi-class folder holds the usual NAME_{split}.pt files, y int64 class ids 0..K-1, and
classes.json, the K names in id order; binary datasets stay as they were (no classes.json)."""
import json
import os

import numpy as np
import pytest
import torch

from dataset import activities, csv_import
from test_make_dataset import run_main

SPLITS = ("train", "val", "test")
# One recording of 5 activities with a stretch of an unlisted one ("jump") in the middle.
ACTIVITY_ROWS = (["walking"] * 12 + ["sitting"] * 8 + ["jump"] * 4 + ["standing"] * 16 + ["walking"] * 8
                 + ["upstairs"] * 8 + ["sitting"] * 4 + ["standing"] * 12)
CSV = ["--channels", "t,acc_x", "--label_column", "activity", "--window_size", 4, "--batch_size", 1]
SMALL_SYNTHETIC = ["--n_participants", 3, "--window_size", 60, "--n_train", 12, "--n_val", 6, "--n_test", 6]


def load(folder, participant, split):
    return torch.load(os.path.join(folder, f"{participant}_{split}.pt"), weights_only=True)


def classes_of(folder):
    return json.loads((folder / "classes.json").read_text())


def write_recordings(raw, labels, participants=("p1", "p2")):
    """Each participant one recording: t is the row's index, acc_x a number, then the label."""
    for p in participants:
        (raw / p).mkdir(parents=True)
        rows = ["t,acc_x,activity"] + [f"{i},{0.5 * i},{text}" for i, text in enumerate(labels)]
        (raw / p / "r.csv").write_text("\n".join(rows) + "\n")


def test_classes_are_ids_in_the_order_given_and_other_rows_are_left_out(tmp_path, capsys):
    write_recordings(tmp_path / "raw", ACTIVITY_ROWS)
    out = tmp_path / "out"
    status, stdout, err = run_main(capsys, "csv", "--input_dir", tmp_path / "raw", "--output_dir", out, *CSV,
                                   "--classes", "standing,walking,sitting", "--label_rule", "center")
    assert status == 0, err
    assert classes_of(out) == ["standing", "walking", "sitting"]
    assert sorted(os.listdir(out)) == sorted(["classes.json"] + [f"{p}_{s}.pt" for p in ("p1", "p2") for s in SPLITS])
    ids = {"standing": 0, "walking": 1, "sitting": 2}
    for split in SPLITS:
        X, y = load(out, "p1", split)
        assert y.dtype == torch.int64 and X.dtype == torch.float32
        starts = [int(t) for t in X[:, 0, 0]]
        # A window holds consecutive rows of the classes only, and is labelled by its center row.
        assert all(X[k, 0].tolist() == list(range(s, s + 4)) for k, s in enumerate(starts))
        assert not [s for s in starts if {"jump", "upstairs"} & set(ACTIVITY_ROWS[s:s + 4])]
        assert y.tolist() == [ids[ACTIVITY_ROWS[s + 2]] for s in starts]
    assert "p1: 12 of 72 samples dropped by their label" in err
    assert "class 0 'standing':" in stdout and "and classes.json" in stdout


def test_classes_all_takes_every_label_found_sorted(tmp_path, capsys):
    write_recordings(tmp_path / "raw", ACTIVITY_ROWS[:-4] + [""] * 4)  # an empty label is never a class
    out = tmp_path / "out"
    status, _, err = run_main(capsys, "csv", "--input_dir", tmp_path / "raw", "--output_dir", out, *CSV,
                              "--classes", "all", "--drop_labels", "jump")
    assert status == 0, err
    assert classes_of(out) == ["sitting", "standing", "upstairs", "walking"]
    y = torch.cat([load(out, p, s)[1] for p in ("p1", "p2") for s in SPLITS])
    assert y.dtype == torch.int64 and set(y.tolist()) <= {0, 1, 2, 3}


def test_majority_is_the_most_common_class_a_tie_going_to_the_lower_id():
    labels = np.array([[2, 2, 1, 0], [1, 1, 2, 2], [0, 3, 3, 3], [2, 1, 0, 3]])
    assert csv_import.window_labels(labels, "majority", 4).tolist() == [2, 1, 3, 0]
    assert csv_import.window_labels(labels, "center", 4).tolist() == [1, 2, 3, 0]
    # For two classes the same rule is the binary majority: 1 only with more than half.
    binary = np.array([[0, 0, 1, 1], [0, 1, 1, 1], [1, 0, 0, 0]])
    assert (csv_import.window_labels(binary, "majority", 2).tolist()
            == csv_import.window_labels(binary, "majority").tolist() == [0, 1, 0])


@pytest.mark.parametrize("args, message", [
    (["--classes", "walking,sitting,standing", "--positive_label", "walking"],
     "--classes and --positive_label exclude each other"),
    (["--classes", "walking,sitting,standing", "--label_rule", "any"], "--label_rule any is binary only"),
    (["--classes", "sitting,walking"],
     "two classes make a binary dataset: use --positive_label walking --keep_labels sitting,walking instead"),
    (["--classes", "all", "--keep_labels", "walking,sitting"], "--classes all found 'sitting', 'walking' in column"),
    (["--classes", "walking,sitting,walking"], "names 'walking' twice"),
    (["--classes", "walking,Sitting,standing"], "--classes 'Sitting': no row has this label in column 'activity'"),
    (["--classes", "walking,sitting,standing", "--drop_labels", "sitting"],
     "--drop_labels sitting leaves out --classes 'sitting'"),
])
def test_a_bad_class_choice_is_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    write_recordings(tmp_path / "raw", ACTIVITY_ROWS)
    status, out, err = run_main(capsys, "csv", "--input_dir", tmp_path / "raw", "--output_dir", tmp_path / "out",
                                *CSV, *args)
    assert status == 2 and out == ""
    assert err.startswith("make_dataset.py: error: ") and err.count("\n") == 1, err
    assert message in err, err
    assert sorted(os.listdir(tmp_path)) == ["raw"]


def test_a_class_missing_from_a_split_is_warned_about_and_strict_refuses(tmp_path, capsys):
    # Blocks of 60%, 20%, 20% of 60 rows: "lying" is only in the train block.
    write_recordings(tmp_path / "raw", ["lying"] * 12 + (["walking"] * 4 + ["sitting"] * 4 + ["standing"] * 4) * 4,
                     ["p1"])
    args = ["csv", "--input_dir", tmp_path / "raw", *CSV, "--window_size", 2, "--classes", "lying,walking,sitting,standing"]
    status, _, err = run_main(capsys, *args, "--output_dir", tmp_path / "out")
    assert status == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert warnings == [f"warning: p1 {split}: no window of class 'lying' (of 6)" for split in ("test", "val")]
    status, _, err = run_main(capsys, *args, "--output_dir", tmp_path / "strict", "--strict")
    assert status == 2 and not (tmp_path / "strict").exists()


def test_synthetic_n_classes_writes_activities_learnable_from_their_shape(tmp_path, capsys):
    out = tmp_path / "data"
    status, stdout, err = run_main(capsys, "synthetic", "--output_dir", out, *SMALL_SYNTHETIC, "--n_classes", 3)
    assert status == 0, err
    assert classes_of(out) == ["walking", "sitting", "standing"]
    assert len(os.listdir(out)) == 10 and "class 2 'standing'" in stdout
    for p in ("p01", "p02", "p03"):
        for split in SPLITS:
            X, y = load(out, p, split)
            assert X.dtype == torch.float32 and X.shape[1:] == (6, 60)
            assert y.dtype == torch.int64 and set(y.tolist()) == {0, 1, 2}  # every class in every split
    # Same seed, same bytes.
    again = activities.activity_splits(3, 3, 60, 12, 6, 6, seed=0)[0]
    assert torch.equal(again[("p02", "val")][0], load(out, "p02", "val")[0])
    # Each class has its own shape: a nearest-centroid rule on window means and spreads, fit on two
    # participants, labels most windows of the third (a tenth are annotated coarsely).
    splits, _ = activities.activity_splits(3, 3, 100, 40, 4, 30, seed=1)
    features = {key: torch.cat([X.mean(2), X.std(2)], 1) for key, (X, _) in splits.items()}
    train = torch.cat([features[(p, "train")] for p in ("p01", "p02")])
    y = torch.cat([splits[(p, "train")][1] for p in ("p01", "p02")])
    centroids = torch.stack([train[y == k].mean(0) for k in range(3)])
    scale = train.std(0)
    guess = torch.cdist(features[("p03", "test")] / scale, centroids / scale).argmin(1)
    assert (guess == splits[("p03", "test")][1]).float().mean() > 0.75


@pytest.mark.parametrize("n_classes", [1, 9])
def test_synthetic_n_classes_out_of_range_is_one_line(tmp_path, capsys, n_classes):
    status, _, err = run_main(capsys, "synthetic", "--output_dir", tmp_path / "d", *SMALL_SYNTHETIC,
                              "--n_classes", n_classes)
    assert status == 2 and err.count("\n") == 1 and "--n_classes must be 2 (the binary demo) or 3 to 8" in err
    assert os.listdir(tmp_path) == []


def test_overwrite_allows_classes_json_and_nothing_else_beside_the_splits(tmp_path, capsys):
    out = tmp_path / "data"
    assert run_main(capsys, "synthetic", "--output_dir", out, *SMALL_SYNTHETIC, "--n_classes", 4)[0] == 0
    assert len(classes_of(out)) == 4
    # A binary dataset replaces it whole: no classes.json is left behind.
    status, _, err = run_main(capsys, "synthetic", "--output_dir", out, *SMALL_SYNTHETIC, "--overwrite")
    assert status == 0, err
    assert "classes.json" not in os.listdir(out)
    # Any other name, even a folder called classes.json, is refused and kept.
    (out / "classes.json").mkdir()
    status, _, err = run_main(capsys, "synthetic", "--output_dir", out, *SMALL_SYNTHETIC, "--overwrite")
    assert status == 2 and "holds classes.json/, not a dataset file" in err, err
    (out / "classes.json").rmdir()
    (out / "labels.json").write_text("[]\n")
    status, _, err = run_main(capsys, "synthetic", "--output_dir", out, *SMALL_SYNTHETIC, "--overwrite")
    assert status == 2, err
    assert "holds labels.json, not a dataset file (NAME_train.pt, NAME_val.pt, NAME_test.pt, classes.json)" in err
    assert (out / "labels.json").read_text() == "[]\n"
