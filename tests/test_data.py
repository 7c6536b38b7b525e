"""The data contract: every bad input is a one-line error naming the file,
exit status 2, and no result is written."""
import datetime
import json
import os
from pathlib import Path

import pytest
import torch

from engine import cli as engine_cli
from engine import data
from tiny_data import write_tiny_dataset

WINDOW = 64


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "data"
    write_tiny_dataset(path, participants=("a", "b", "c"), window=WINDOW, sizes=(8, 4, 4))
    return path


def load(path):
    return torch.load(path, weights_only=True)


def run(argv, capsys, enhanced=False):
    rc = engine_cli.main([str(a) for a in argv], enhanced=enhanced)
    out, err = capsys.readouterr()
    return rc, out, err


def cli(folder, tmp_path, *extra):
    argv = ["--data_path", folder, "--experiments_dir", tmp_path / "exp", "--device", "cpu",
            "--max_epochs", "1", "--batch_size", "8", *extra]
    return [str(a) for a in argv]


def published(tmp_path):
    """Every fold folder (or hidden temporary sibling) anywhere under the experiments dir."""
    root = tmp_path / "exp"
    if not root.exists():
        return []
    return [p for p in root.rglob("*") if p.name.startswith(("fold", ".fold"))]


def assert_one_line_error(rc, err, *fragments):
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert "error" in lines[0]
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), (fragment, lines[0])
    return lines[0]


# ---------------------------------------------------------------- bad files


def replace(name, make):
    """A case: rewrite `name` with make(X, y) -> object given to torch.save."""
    def apply(folder):
        X, y = load(folder / name)
        torch.save(make(X, y), folder / name)
        return name
    return apply


def raw(name, content):
    def apply(folder):
        (folder / name).write_bytes(content)
        return name
    return apply


def delete(name):
    def apply(folder):
        (folder / name).unlink()
        return name
    return apply


def with_value(value, at_y=False):
    def make(X, y):
        X, y = X.clone(), y.clone()
        if at_y:
            y[1] = value
        else:
            X[1, 0, 5] = value
        return X, y
    return make


BAD_FILES = {
    "missing split file": (delete("b_val.pt"), "missing"),
    "garbage bytes": (raw("b_test.pt", b"\x00\x01this is not a torch file\xff" * 20), "unreadable"),
    "empty file": (raw("a_val.pt", b""), "unreadable"),
    "pickle of a dict": (replace("c_train.pt", lambda X, y: {"X": X, "y": y}), "pair"),
    "pickle of a string": (replace("a_train.pt", lambda X, y: "hello"), "pair"),
    "pickle of a non-tensor object": (
        replace("a_test.pt", lambda X, y: (X, datetime.date(2020, 1, 1))), "unreadable"),
    "y as a list": (replace("b_train.pt", lambda X, y: (X, y.tolist())), "pair"),
    "three tensors": (replace("c_val.pt", lambda X, y: (X, y, y)), "pair"),
    "X 2-D": (replace("b_train.pt", lambda X, y: (X[:, 0, :].contiguous(), y)), "3-D"),
    "X 4-D": (replace("b_train.pt", lambda X, y: (X.unsqueeze(1), y)), "3-D"),
    "X int dtype": (replace("c_test.pt", lambda X, y: ((X * 10).long(), y)), "float"),
    "y shorter than X": (replace("a_train.pt", lambda X, y: (X, y[:-1])), "labels"),
    "y longer than X": (replace("a_val.pt", lambda X, y: (X[:-1], y)), "labels"),
    "y of shape (N, 2)": (replace("b_val.pt", lambda X, y: (X, torch.stack([y, y], 1))), "shape"),
    "label 3 (no 2)": (replace("c_train.pt", with_value(3.0, at_y=True)), "no window of the data has id 2"),
    "label 0.5": (replace("a_test.pt", with_value(0.5, at_y=True)), "class ids"),
    "label -1": (replace("b_test.pt", with_value(-1.0, at_y=True)), "class ids"),
    "label NaN": (replace("a_val.pt", with_value(float("nan"), at_y=True)), "class ids"),
    "NaN in X": (replace("b_val.pt", with_value(float("nan"))), "nan"),
    "inf in X": (replace("c_test.pt", with_value(float("inf"))), "inf"),
    "-inf in X": (replace("a_train.pt", with_value(float("-inf"))), "inf"),
    # Finite in float64, inf once cast to the float32 the engine trains in.
    "float64 beyond float32": (replace("b_test.pt", lambda X, y: with_value(1e300)(X.double(), y)), "inf"),
    "empty split": (replace("c_val.pt", lambda X, y: (X[:0], y[:0])), "empty"),
    "channel count differs": (replace("c_train.pt", lambda X, y: (X[:, :2].contiguous(), y)), "differs"),
    "window length differs": (replace("a_test.pt", lambda X, y: (X[:, :, :32].contiguous(), y)), "differs"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_is_a_one_line_error_naming_it(case, folder, tmp_path, capsys):
    apply, fragment = BAD_FILES[case]
    name = apply(folder)
    rc, out, err = run(cli(folder, tmp_path), capsys)
    line = assert_one_line_error(rc, err, fragment)
    assert str(folder / name) in line
    assert "RESULT_DIR" not in out
    assert published(tmp_path) == []


@pytest.mark.parametrize("case", ["missing split file", "garbage bytes", "label 0.5", "empty split"])
def test_bad_data_fails_in_load_split_too(case, folder):
    apply, fragment = BAD_FILES[case]
    name = apply(folder)
    participant, split = name[:-3].rsplit("_", 1)
    with pytest.raises(data.DataError) as info:
        data.load_split(folder, participant, split)
    assert str(folder / name) in str(info.value)
    assert fragment.lower() in str(info.value).lower()


@pytest.mark.parametrize("case", ["missing split file", "pickle of a dict", "X int dtype",
                                  "window length differs"])
def test_bad_data_creates_no_experiments_folder(case, folder, tmp_path, capsys):
    # "Nothing is written": not even an empty experiments folder.
    BAD_FILES[case][0](folder)
    rc, _, err = run(cli(folder, tmp_path), capsys)
    assert rc == 2, err
    assert not (tmp_path / "exp").exists(), sorted(os.listdir(tmp_path / "exp"))


# ---------------------------------------------------------------- bad flags


def test_window_size_must_equal_the_data(folder, tmp_path, capsys):
    rc, _, err = run(cli(folder, tmp_path, "--window_size", "32"), capsys)
    line = assert_one_line_error(rc, err, "32", str(WINDOW))
    assert str(folder) in line and ".pt" in line
    assert published(tmp_path) == []


def test_window_size_equal_to_the_data_is_accepted(folder, tmp_path, capsys):
    rc, out, err = run(cli(folder, tmp_path, "--mode", "target_only", "--window_size", WINDOW), capsys)
    assert rc == 0, err
    assert out.strip().splitlines()[-1].startswith("RESULT_DIR ")


@pytest.mark.parametrize("argv,fragments", [
    (["--participants", "a", "zz"], ["zz"]),
    (["--participants", "a", "b", "a"], ["twice"]),
    (["--fold", "3"], ["--fold", "3"]),
    (["--fold", "-1"], ["--fold", "-1"]),
    (["--n_base_participants", "3"], ["--n_base_participants", "3"]),
    (["--participants", "a", "b", "--fold", "1", "--n_base_participants", "2"], ["--n_base_participants"]),
])
def test_bad_participant_flags(argv, fragments, folder, tmp_path, capsys):
    rc, _, err = run(cli(folder, tmp_path, *argv), capsys)
    assert_one_line_error(rc, err, *fragments)
    assert published(tmp_path) == []


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_n_base_participants_must_be_positive_or_all(value, folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        engine_cli.main(cli(folder, tmp_path, "--n_base_participants", value))
    assert info.value.code == 2
    assert "--n_base_participants" in capsys.readouterr().err


def test_missing_data_folder(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    rc, _, err = run(cli(missing, tmp_path), capsys)
    assert_one_line_error(rc, err, str(missing))
    assert not missing.exists()


def test_folder_without_participant_files(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("nothing here")
    rc, _, err = run(cli(empty, tmp_path), capsys)
    assert_one_line_error(rc, err, str(empty))


# ---------------------------------------------------------------- accepted data


def test_labels_of_shape_n_by_1_are_accepted(folder, tmp_path, capsys):
    for path in folder.glob("*.pt"):
        X, y = load(path)
        torch.save((X, y.view(-1, 1)), path)
    X, y = data.load_split(folder, "a", "train")
    assert X.shape == (8, 3, WINDOW) and X.dtype == torch.float32
    assert y.shape == (8,) and y.dtype == torch.float32
    assert set(y.tolist()) <= {0.0, 1.0}
    rc, out, err = run(cli(folder, tmp_path), capsys)
    assert rc == 0, err
    metrics = json.loads((tmp_path / "exp/experiment/fold0_a/metrics.json").read_text())
    assert 0 <= metrics["best_target_model_target_test_f1"] <= 1


def test_integer_and_bool_labels_become_float(folder):
    X, y = load(folder / "a_train.pt")
    torch.save((X, y.long()), folder / "a_train.pt")
    torch.save((X, y.bool()), folder / "a_val.pt")
    for split in ("train", "val"):
        _, loaded = data.load_split(folder, "a", split)
        assert loaded.dtype == torch.float32
        assert torch.equal(loaded, y.float())


def test_load_split_returns_the_file_contents(folder):
    X, y = load(folder / "b_test.pt")
    X2, y2 = data.load_split(folder, "b", "test")
    assert torch.equal(X, X2) and torch.equal(y.float(), y2)


def test_participants_are_discovered_sorted_with_underscores(tmp_path):
    names = ["p_10", "p_02", "zed", "b_x_1", "p_01"]
    write_tiny_dataset(tmp_path, participants=names, window=8, sizes=(2, 2, 2))
    (tmp_path / "notes.txt").write_text("not data")
    (tmp_path / "q_extra.pt").write_bytes(b"not a split name")
    (tmp_path / "_train.pt").write_bytes(b"no participant name")
    found = data.discover_participants(tmp_path)
    assert found == sorted(names) == ["b_x_1", "p_01", "p_02", "p_10", "zed"]
    # The given order wins over sorting.
    assert data.check_participants(tmp_path, ["p_10", "p_01"]) == ["p_10", "p_01"]
    assert data.check_participants(tmp_path, None) == found


def test_fold_target_and_base_participants():
    names = ["a", "b", "c", "d"]
    assert data.resolve_fold(names, 0) == ("a", ["b", "c", "d"])
    assert data.resolve_fold(names, 2) == ("c", ["a", "b", "d"])
    assert data.resolve_fold(names, 2, 2) == ("c", ["a", "b"])
    assert data.resolve_fold(names, 3, 3) == ("d", ["a", "b", "c"])
    with pytest.raises(data.DataError):
        data.resolve_fold(names, 4)
    with pytest.raises(data.DataError):
        data.resolve_fold(names, 0, 4)


def test_cli_run_with_underscore_names(tmp_path, capsys):
    folder = tmp_path / "data"
    write_tiny_dataset(folder, participants=("p_03", "p_01", "p_02"), window=WINDOW, sizes=(8, 4, 4))
    rc, out, err = run(cli(folder, tmp_path, "--fold", "1", "--mode", "target_only"), capsys)
    assert rc == 0, err
    result = tmp_path / "exp" / "experiment" / "fold1_p_02"
    assert out.strip().splitlines()[-1] == f"RESULT_DIR {result}"
    hyper = json.loads((result / "hyperparameters.json").read_text())
    assert hyper["participants"] == ["p_01", "p_02", "p_03"]
    assert hyper["target_participant"] == "p_02"
    assert json.loads((result / "metrics.json").read_text())["target_participant"] == "p_02"


def test_target_only_does_not_read_base_files(folder, tmp_path, capsys):
    # Only the target's files are loaded when there is no base phase.
    (folder / "c_val.pt").write_bytes(b"broken")
    rc, _, err = run(cli(folder, tmp_path, "--mode", "target_only"), capsys)
    assert rc == 0, err
    rc, _, err = run(cli(folder, tmp_path, "--prefix", "other"), capsys)
    assert_one_line_error(rc, err, str(folder / "c_val.pt"))
    assert not Path(tmp_path / "exp" / "other").exists()


def test_given_participants_keep_their_order_and_n_base_takes_the_first(folder, tmp_path, capsys):
    rc, out, err = run(cli(folder, tmp_path, "--participants", "c", "a", "b", "--fold", "1",
                           "--n_base_participants", "1"), capsys)
    assert rc == 0, err
    result = tmp_path / "exp" / "experiment" / "fold1_a"
    assert out.strip().splitlines()[-1] == f"RESULT_DIR {result}"
    hyper = json.loads((result / "hyperparameters.json").read_text())
    assert hyper["participants"] == ["c", "a", "b"]
    assert hyper["target_participant"] == "a" and hyper["base_participants"] == ["c"]
    # The base phase trains on c's train + val (8 + 4 windows) and stops on c's test (4).
    assert "base phase: 12 windows from c, early stopping on their test split (4 windows)" \
        in (result / "train.log").read_text()
