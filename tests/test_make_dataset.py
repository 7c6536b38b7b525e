"""Tests for make_dataset.py: the synthetic generator and the CSV importer."""
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import make_dataset
from dataset import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SPLITS = ("train", "val", "test")
SMALL = dict(n_participants=4, window_size=200, n_train=20, n_val=10, n_test=10)


def load(folder, participant, split):
    return torch.load(os.path.join(folder, f"{participant}_{split}.pt"), weights_only=True)


def run_cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "make_dataset.py"), *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def run_main(capsys, *args):
    """Run main() in this process; return (exit status, stdout, stderr)."""
    try:
        make_dataset.main([str(a) for a in args])
        status = 0
    except SystemExit as e:
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


# ---------------------------------------------------------------- synthetic


def test_synthetic_files_shapes_dtypes_and_labels(tmp_path):
    out = tmp_path / "data"
    names = synthetic.write_synthetic_dataset(out, seed=0, **SMALL)
    assert names == ["p01", "p02", "p03", "p04"]
    assert sorted(os.listdir(out)) == sorted(f"{p}_{s}.pt" for p in names for s in SPLITS)
    sizes = {"train": 20, "val": 10, "test": 10}
    for p in names:
        for split in SPLITS:
            X, y = load(out, p, split)
            assert X.dtype == torch.float32 and y.dtype == torch.float32
            assert X.shape == (sizes[split], 6, 200)
            assert y.shape == (sizes[split],)
            assert set(y.tolist()) == {0.0, 1.0}
            assert torch.isfinite(X).all()
    # Nothing is left behind next to the output folder.
    assert os.listdir(tmp_path) == ["data"]


def test_synthetic_same_seed_same_bytes_other_seed_differs(tmp_path):
    for folder, seed in (("a", 3), ("b", 3), ("c", 4)):
        synthetic.write_synthetic_dataset(tmp_path / folder, seed=seed, **SMALL)
    for p in ("p01", "p04"):
        for split in SPLITS:
            a = (tmp_path / "a" / f"{p}_{split}.pt").read_bytes()
            b = (tmp_path / "b" / f"{p}_{split}.pt").read_bytes()
            assert a == b
            Xa, _ = load(tmp_path / "a", p, split)
            Xc, _ = load(tmp_path / "c", p, split)
            assert not torch.equal(Xa, Xc)


def test_synthetic_positive_rate_is_a_minority_in_every_split():
    splits = synthetic.synthetic_splits(n_participants=6, window_size=50, seed=0)
    rates = {key: float(y.mean()) for key, (_, y) in splits.items()}
    assert len(rates) == 18
    assert all(0.10 <= r <= 0.25 for r in rates.values()), rates
    # Participants differ in their rate.
    assert len({round(r, 3) for r in rates.values()}) > 3


def test_synthetic_accelerometer_holds_gravity_and_gyro_is_rad_per_s():
    splits = synthetic.synthetic_splits(seed=1, **SMALL)
    X = torch.cat([X for X, _ in splits.values()])
    acc_norm = X[:, :3].norm(dim=1)
    assert float(acc_norm.mean()) == pytest.approx(1.0, abs=0.05)
    gyr = X[:, 3:]
    assert float(gyr.abs().max()) < 20.0  # rad/s: deg/s would reach hundreds
    assert float(gyr.abs().max()) > 0.5  # gestures do rotate the wrist


def test_synthetic_sensor_rotation_turns_both_sensors_alike():
    profile = synthetic._participant_profile(seed=0, index=2)
    profile.update(acc_noise=0.0, gyr_noise=0.0, gyr_bias=np.zeros(3))
    kinds = np.array([synthetic.PUFF, synthetic.CONFOUNDER, synthetic.NONE])
    rotated = synthetic.synthetic_windows(profile, kinds, 500, np.random.default_rng(5))
    upright = synthetic.synthetic_windows({**profile, "rotation": np.eye(3)}, kinds, 500,
                                             np.random.default_rng(5))
    R = profile["rotation"]
    assert np.allclose(R @ R.T, np.eye(3)) and np.isclose(np.linalg.det(R), 1.0)
    assert not np.allclose(R, np.eye(3), atol=0.1)
    for sensor in (slice(0, 3), slice(3, 6)):
        expected = np.einsum("ij,njt->nit", R, upright[:, sensor])
        assert np.allclose(rotated[:, sensor], expected, atol=1e-5)
    # Other participants wear it differently.
    other = synthetic._participant_profile(seed=0, index=3)["rotation"]
    assert not np.allclose(R, other, atol=0.1)


@pytest.mark.slow
def test_synthetic_cli_writes_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "demo"
    args = ["synthetic", "--output_dir", out, "--n_participants", 4, "--window_size", 100,
            "--n_train", 10, "--n_val", 5, "--n_test", 5, "--seed", 2]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    assert len(os.listdir(out)) == 12
    assert "p04" in result.stdout and "pos" in result.stdout
    X, y = load(out, "p02", "val")
    assert X.shape == (5, 6, 100)

    before = (out / "p01_train.pt").read_bytes()
    refused = run_cli(*args[:-1], 5)
    assert refused.returncode == 2
    assert refused.stderr.strip().count("\n") == 0
    assert refused.stderr.startswith("make_dataset.py: error: ") and str(out) in refused.stderr
    assert (out / "p01_train.pt").read_bytes() == before

    replaced = run_cli(*args[:-1], 5, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert (out / "p01_train.pt").read_bytes() != before
    assert sorted(os.listdir(tmp_path)) == ["demo"]


# ---------------------------------------------------------------- csv import


def write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def time_index_recording(path, n, recording, labels=None):
    """A recording whose channels are the sample index and the recording number."""
    labels = labels if labels is not None else [0] * n
    rows = [(i, recording, 0.5 * i, labels[i]) for i in range(n)]
    return write_csv(path, ["t", "rec", "acc_x", "label"], rows)


CSV_ARGS = ["--channels", "t,rec,acc_x", "--label_column", "label"]


def test_csv_block_split_exact_windows_and_no_shared_samples(tmp_path, capsys):
    raw = tmp_path / "raw"
    time_index_recording(raw / "alice" / "r1.csv", 100, recording=1)
    time_index_recording(raw / "alice" / "r2.csv", 50, recording=2)
    time_index_recording(raw / "bob" / "only.csv", 100, recording=3)
    status, out, err = run_main(capsys, "csv", "--input_dir", raw, "--output_dir",
                                tmp_path / "out", *CSV_ARGS, "--window_size", 10,
                                "--stride", 5, "--split_by", "block")
    assert status == 0, err
    assert "alice" in out and "bob" in out
    # r1 (100): blocks [0,60) [60,80) [80,100); r2 (50): [0,30) [30,40) [40,50).
    expected_starts = {
        "train": [(1, s) for s in range(0, 51, 5)] + [(2, s) for s in range(0, 21, 5)],
        "val": [(1, 60), (1, 65), (1, 70), (2, 30)],
        "test": [(1, 80), (1, 85), (1, 90), (2, 40)],
    }
    ranges = {}
    for split in SPLITS:
        X, y = load(tmp_path / "out", "alice", split)
        assert X.dtype == torch.float32 and X.shape[1:] == (3, 10)
        starts = [(int(w[1, 0]), int(w[0, 0])) for w in X]
        assert starts == expected_starts[split]
        # Each window is a contiguous run of samples of one recording.
        assert torch.equal(X[:, 0, :] - X[:, 0, :1], torch.arange(10.0).expand(len(X), 10))
        assert (X[:, 1, :] == X[:, 1, :1]).all()
        ranges[split] = [(rec, s, s + 9) for rec, s in starts]
    for a, b in itertools.combinations(SPLITS, 2):
        for rec, s, e in ranges[a]:
            for rec2, s2, e2 in ranges[b]:
                assert rec != rec2 or e < s2 or e2 < s, (a, b, rec, s, s2)
    assert [len(load(tmp_path / "out", "bob", s)[1]) for s in SPLITS] == [11, 3, 3]


# Sample labels of one 20-sample recording, five windows of 4 (stride 4):
# [0,0,0,1] [1,1,1,0] [0,0,1,0] [1,1,0,0] [0,0,0,0].
RULE_LABELS = [0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 1, 0, 1, 1, 0, 0, 0, 0, 0, 0]
RULE_EXPECTED = {
    "any": [1, 1, 1, 1, 0],
    "majority": [0, 1, 0, 0, 0],  # 2 of 4 is not more than half
    "center": [0, 1, 1, 0, 0],  # sample 2 (= 4 // 2) of each window
}


@pytest.mark.parametrize("rule", sorted(RULE_EXPECTED))
def test_csv_window_label_rules(tmp_path, capsys, rule):
    raw = tmp_path / "raw"
    for i in range(3):
        time_index_recording(raw / "p1" / f"rec{i}.csv", 20, recording=i, labels=RULE_LABELS)
    status, _, err = run_main(capsys, "csv", "--input_dir", raw, "--output_dir",
                              tmp_path / "out", *CSV_ARGS, "--window_size", 4,
                              "--label_rule", rule, "--split_by", "recording")
    assert status == 0, err
    for i, split in enumerate(SPLITS):
        X, y = load(tmp_path / "out", "p1", split)
        assert (X[:, 1, :] == i).all()  # whole recordings, in file name order
        assert y.tolist() == RULE_EXPECTED[rule]


def test_csv_positive_label_maps_classes_to_one_and_zero(tmp_path, capsys):
    raw = tmp_path / "raw"
    classes = ["smoking", "eating", "none", "smoking"] * 15
    rows = [(i, 0.1 * i, classes[i]) for i in range(60)]
    write_csv(raw / "p1" / "day1.csv", ["t", "acc_x", "activity"], rows)
    status, _, err = run_main(capsys, "csv", "--input_dir", raw, "--output_dir",
                              tmp_path / "out", "--channels", "t,acc_x", "--label_column",
                              "activity", "--positive_label", "smoking", "--window_size", 1,
                              "--label_rule", "center", "--split", "0.5,0.25,0.25")
    assert status == 0, err
    for split in SPLITS:
        X, y = load(tmp_path / "out", "p1", split)
        expected = [1.0 if classes[int(t)] == "smoking" else 0.0 for t in X[:, 0, 0]]
        assert y.tolist() == expected
    assert len(load(tmp_path / "out", "p1", "train")[1]) == 30


@pytest.mark.slow
def test_csv_cli_writes_and_documents_rules(tmp_path):
    raw = tmp_path / "raw"
    for p in ("a", "b"):
        time_index_recording(raw / p / "r.csv", 40, recording=0, labels=[0, 1] * 20)
    result = run_cli("csv", "--input_dir", raw, "--output_dir", tmp_path / "out", *CSV_ARGS,
                     "--window_size", 4, "--stride", 2, "--label_rule", "any")
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path / "out")) == sorted(
        f"{p}_{s}.pt" for p in ("a", "b") for s in SPLITS)
    # Blocks of 24/8/8 samples, windows of 4 every 2: 11, 3 and 3 windows.
    assert "11 (100.0% pos)" in result.stdout and "3 (100.0% pos)" in result.stdout
    help_text = run_cli("csv", "--help").stdout
    for words in ("any", "majority", "center", "block", "recording"):
        assert words in help_text


def make_broken_input(raw, case):
    """Make one broken input; return (extra CLI args, text in the error, path it names)."""
    p1 = raw / "p1"
    header = ["t", "rec", "acc_x", "label"]
    if case == "missing column":
        return [], "missing column 'acc_x'", write_csv(
            p1 / "a.csv", ["t", "rec", "label"], [(i, 0, 0) for i in range(40)])
    if case == "non-numeric value":
        rows = [(i, 0, "x" if i == 7 else 1, 0) for i in range(40)]
        return [], "line 9, column 'acc_x'", write_csv(p1 / "a.csv", header, rows)
    if case == "label not 0/1":
        rows = [(i, 0, 1, "smoking") for i in range(40)]
        return [], "line 2, column 'label'", write_csv(p1 / "a.csv", header, rows)
    if case == "no windows in a split":
        time_index_recording(p1 / "a.csv", 50, recording=0)  # val block: 10 samples
        return ["--window_size", 20], "no windows in the val split", p1
    if case == "empty input folder":
        raw.mkdir()
        return [], "no participant subfolders", raw
    if case == "too few recordings":
        time_index_recording(p1 / "a.csv", 50, recording=0)
        return ["--split_by", "recording"], "needs >= 3 recordings", p1
    if case == "positive label never seen":
        time_index_recording(p1 / "a.csv", 50, recording=0)
        return ["--positive_label", "smoking"], "no row has label 'smoking'", raw
    raise ValueError(case)


@pytest.mark.parametrize("case", [
    "missing column", "non-numeric value", "label not 0/1",
    "no windows in a split", "empty input folder", "too few recordings",
    "positive label never seen"])
def test_csv_errors_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, case):
    raw = tmp_path / "raw"
    extra, message, named = make_broken_input(raw, case)
    status, out, err = run_main(capsys, "csv", "--input_dir", raw, "--output_dir",
                                tmp_path / "out", *CSV_ARGS, "--window_size", 10, *extra)
    assert status == 2
    assert err.startswith("make_dataset.py: error: ") and err.count("\n") == 1, err
    assert message in err and f"{named}:" in err
    assert sorted(os.listdir(tmp_path)) == ["raw"]


def test_csv_warns_about_bad_splits_and_strict_refuses(tmp_path, capsys):
    raw = tmp_path / "raw"
    # alice: positives only in the first 60% (train); her val and test have none.
    time_index_recording(raw / "alice" / "r1.csv", 100, recording=1, labels=[1] * 60 + [0] * 40)
    time_index_recording(raw / "alice" / "short.csv", 7, recording=2)
    # bob: train all positive; val and test one positive and one negative window each.
    mixed = [1] + [0] * 19
    time_index_recording(raw / "bob" / "r1.csv", 100, recording=3, labels=[1] * 60 + mixed + mixed)
    args = ["csv", "--input_dir", raw, *CSV_ARGS, "--window_size", 10, "--label_rule", "any",
            "--batch_size", 8]
    status, out, err = run_main(capsys, *args, "--output_dir", tmp_path / "out")
    assert status == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert "warning: alice val: no positive window (of 2)" in warnings
    assert "warning: alice test: no positive window (of 2)" in warnings
    assert "warning: bob train: no negative window (of 6)" in warnings
    assert "warning: alice train: 6 windows, fewer than one batch (--batch_size 8)" in warnings
    assert any("short.csv: 7 samples, shorter than one window" in line for line in warnings)
    assert not any(line.startswith("warning: bob val") for line in warnings)
    # alice's 7-sample recording is dropped whole; the windows cover the rest exactly.
    assert "note: alice: 7 of 107 samples fall in no window" in err
    assert "wrote 6 files" in out

    status, out, err = run_main(capsys, *args, "--output_dir", tmp_path / "strict", "--strict")
    assert status == 2
    assert err.splitlines()[-1].startswith("make_dataset.py: error: --strict: ")
    assert not (tmp_path / "strict").exists()
    assert sorted(os.listdir(tmp_path)) == ["out", "raw"]


def test_csv_missing_positive_label_lists_the_labels_found(tmp_path, capsys):
    raw = tmp_path / "raw"
    rows = [(i, 0.1 * i, "Smoking" if i % 4 == 0 else "none") for i in range(40)]
    write_csv(raw / "p1" / "day1.csv", ["t", "acc_x", "activity"], rows)
    status, _, err = run_main(capsys, "csv", "--input_dir", raw, "--output_dir", tmp_path / "out",
                              "--channels", "t,acc_x", "--label_column", "activity",
                              "--positive_label", "smoking", "--window_size", 4)
    assert status == 2 and err.count("\n") == 1, err
    assert "no row has label 'smoking'" in err
    assert "found: 'none' (30), 'Smoking' (10)" in err


# ---------------------------------------------------------------- keeping and dropping labels


def labelled_recording(path, labels):
    """A recording whose channels are the sample index; labels are class names."""
    return write_csv(path, ["t", "rec", "acc_x", "activity"], [(i, 0, 0.5 * i, text) for i, text in enumerate(labels)])


LABELS = ["walk"] * 10 + ["transition"] * 5 + ["smoking"] * 10 + ["unlabelled"] * 5 + ["walk"] * 10
NAMED = ["--channels", "t,rec,acc_x", "--label_column", "activity", "--positive_label", "smoking",
         "--window_size", "4", "--stride", "2", "--split", "0.5,0.25,0.25", "--batch_size", "1"]


def windows_of(folder):
    """Every window of every split, as the sample indices (channel t) it holds."""
    return [X[k, 0].tolist() for split in SPLITS for X in [load(folder, "p1", split)[0]] for k in range(len(X))]


@pytest.mark.parametrize("flag, value", [("--drop_labels", "transition,unlabelled"),
                                         ("--keep_labels", "walk,smoking")])
def test_dropped_labels_leave_no_window_and_none_spans_them(tmp_path, capsys, flag, value):
    labelled_recording(tmp_path / "raw" / "p1" / "r.csv", LABELS)
    status, out, err = run_main(capsys, "csv", "--input_dir", tmp_path / "raw", "--output_dir", tmp_path / "out",
                                *NAMED, flag, value)
    assert status == 0, err
    dropped = {i for i, text in enumerate(LABELS) if text in ("transition", "unlabelled")}
    windows = windows_of(tmp_path / "out")
    assert windows and not [w for w in windows if dropped & set(w)]
    # A window holds consecutive samples only: none bridges the rows left out.
    assert all(w == list(range(int(w[0]), int(w[0]) + 4)) for w in windows)
    assert "p1: 10 of 40 samples dropped by their label" in err

    # Without the flag the same recording has windows over those rows.
    status, _, err = run_main(capsys, "csv", "--input_dir", tmp_path / "raw", "--output_dir", tmp_path / "all",
                              *NAMED)
    assert status == 0 and [w for w in windows_of(tmp_path / "all") if dropped & set(w)]


@pytest.mark.parametrize("args, message", [
    (["--drop_labels", "Transition"], "--drop_labels 'Transition': no row has this label in column 'activity'"),
    (["--keep_labels", "walk"], "--keep_labels walk leaves out --positive_label 'smoking'"),
    (["--keep_labels", "walk", "--drop_labels", "smoking"], "not allowed with argument"),
])
def test_a_label_value_not_present_or_leaving_out_the_positive_one_is_one_line(tmp_path, capsys, args, message):
    labelled_recording(tmp_path / "raw" / "p1" / "r.csv", LABELS)
    status, _, err = run_main(capsys, "csv", "--input_dir", tmp_path / "raw", "--output_dir", tmp_path / "out",
                              *NAMED, *args)
    errors = [line for line in err.splitlines() if "error:" in line]  # argparse prints its usage first
    assert status == 2 and len(errors) == 1 and message in errors[0]
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- what --overwrite may replace


def snapshot(folder):
    """Everything under folder: {relative path: bytes, or None for a folder}."""
    return {str(p.relative_to(folder)): None if p.is_dir() else p.read_bytes() for p in folder.rglob("*")}


def assert_refused(status, err, folder, *words):
    assert status == 2
    assert err.startswith("make_dataset.py: error: ") and err.count("\n") == 1, err
    assert str(folder) in err and all(word in err for word in words), err


SMALL_SYNTHETIC = ["--n_participants", 2, "--window_size", 50, "--n_train", 4, "--n_val", 2, "--n_test", 2]


@pytest.mark.parametrize("output, where", [(".", "holds"), ("raw", "is"), ("raw/out", "lies inside")])
def test_csv_overwrite_never_touches_its_input(tmp_path, capsys, output, where):
    # Issue 35: work/ holds raw/*/ and notes.txt; --output_dir work --overwrite replaced all of it.
    work = tmp_path / "work"
    for p in ("alice", "bob"):
        time_index_recording(work / "raw" / p / "r.csv", 40, recording=0, labels=[0, 1] * 20)
    (work / "notes.txt").write_text("which wrist, which day\n")
    before = snapshot(tmp_path)
    status, out, err = run_main(capsys, "csv", "--input_dir", work / "raw", "--output_dir", work / output,
                                *CSV_ARGS, "--window_size", 4, "--overwrite")
    assert_refused(status, err, os.path.abspath(work / output), where, "input folder")
    assert out == ""
    assert snapshot(tmp_path) == before  # every input byte, notes.txt, and nothing new


@pytest.mark.parametrize("foreign", ["notes.txt", "runs/"])
def test_synthetic_overwrite_refuses_a_folder_holding_other_files(tmp_path, capsys, foreign):
    out = tmp_path / "data"
    status, _, err = run_main(capsys, "synthetic", "--output_dir", out, *SMALL_SYNTHETIC)
    assert status == 0, err
    if foreign.endswith("/"):
        (out / foreign / "fold0").mkdir(parents=True)
        (out / foreign / "fold0" / "metrics.json").write_text("{}")
    else:
        (out / foreign).write_text("keep me\n")
    before = snapshot(tmp_path)
    for overwrite in (["--overwrite"], []):  # without it, the error must not advise --overwrite
        status, _, err = run_main(capsys, "synthetic", "--output_dir", out, *SMALL_SYNTHETIC, "--seed", 1,
                                  *overwrite)
        assert_refused(status, err, out, f"holds {foreign},", "not a dataset file")
        assert "use --overwrite" not in err
        assert snapshot(tmp_path) == before


def test_overwrite_replaces_a_dataset_folder_the_tool_made(tmp_path, capsys):
    out = tmp_path / "data"
    status, _, err = run_main(capsys, "synthetic", "--output_dir", out, *SMALL_SYNTHETIC, "--n_participants", 3)
    assert status == 0, err
    before = snapshot(out)
    status, _, err = run_main(capsys, "synthetic", "--output_dir", out, *SMALL_SYNTHETIC, "--seed", 1)
    assert_refused(status, err, out, "use --overwrite")
    assert snapshot(out) == before
    status, _, err = run_main(capsys, "synthetic", "--output_dir", out, *SMALL_SYNTHETIC, "--seed", 1,
                              "--overwrite")
    assert status == 0, err
    # Replaced whole: p03 of the old dataset is gone, p01 holds the new draw.
    assert sorted(os.listdir(out)) == sorted(f"{p}_{s}.pt" for p in ("p01", "p02") for s in SPLITS)
    assert (out / "p01_train.pt").read_bytes() != before["p01_train.pt"]
    assert os.listdir(tmp_path) == ["data"]

    # csv over that folder, its input beside it.
    raw = tmp_path / "raw"
    time_index_recording(raw / "alice" / "r.csv", 40, recording=0, labels=[0, 1] * 20)
    status, _, err = run_main(capsys, "csv", "--input_dir", raw, "--output_dir", out, *CSV_ARGS,
                              "--window_size", 4, "--overwrite")
    assert status == 0, err
    assert sorted(os.listdir(out)) == [f"alice_{s}.pt" for s in sorted(SPLITS)]
    assert sorted(os.listdir(tmp_path)) == ["data", "raw"]
