"""The training engine through its two CLIs (train.py, oct1_train.py) on tiny data.

Most runs call engine_cli.main() in-process (what both scripts do); a few run
the scripts as subprocesses for exit statuses, stderr and signals.
"""
import functools
import json
import logging
import math
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dataset import synthetic
from engine import cli as engine_cli
from engine import metrics as engine_metrics
from engine import models
from engine.flags import DEMO_DATA_PATH
from tiny_data import write_tiny_dataset

ROOT = Path(__file__).resolve().parent.parent
WINDOW = 64
SIZES = (16, 8, 8)  # train, val, test windows per participant
POSITIVE_CLASS = {f"best_{model}_model_target_test_{score}" for model in ("base", "target")
                  for score in ("f1_pos", "precision", "recall")}
PHASE_BEST = ("epoch", "val_loss", "val_loss_epoch", "val_f1", "val_f1_epoch")
BASE_METRICS = {f"best_base_{name}" for name in PHASE_BEST} | {
    "base_val_f1_at_best_loss", "transition_epoch", "best_base_model_target_val_loss",
    "best_base_model_target_val_f1", "best_base_model_target_test_loss", "best_base_model_target_test_f1",
    "base_epochs_run"} | {name for name in POSITIVE_CLASS if name.startswith("best_base")}
TARGET_METRICS = {f"best_target_{name}" for name in PHASE_BEST} | {
    "target_val_f1_at_best_loss", "best_target_model_target_test_loss", "best_target_model_target_test_f1",
    "target_epochs_run"}
METRIC_KEYS = BASE_METRICS | TARGET_METRICS | POSITIVE_CLASS | {
    "mode", "fold", "target_participant", "base_model_reused", "base_key", "train_windows_per_s", "total_time_s",
    "peak_device_memory_mb"}
TEST_SCORES = {"best_base_model_target_test_loss", "best_base_model_target_test_f1",
               "best_target_model_target_test_loss", "best_target_model_target_test_f1"} | POSITIVE_CLASS
TIMING = {"total_time_s", "train_windows_per_s"}
CURVES = [f"{phase}_{name}" for phase in ("base", "target")
          for name in ("train_loss", "val_loss", "train_f1", "val_f1")]
OUTPUT_FILES = {"hyperparameters.json", "metrics.json", "losses.json", "loss_curves.png",
                "f1_curves.png", "best_target_model.pt", "train.log"}


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    """Three participants whose label shifts the signal (learnable)."""
    folder = tmp_path_factory.mktemp("clean")
    write_tiny_dataset(folder, participants=("a", "b", "c"), window=WINDOW, sizes=SIZES)
    return folder


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    """The same shapes with labels shuffled: validation loss soon stops improving."""
    folder = tmp_path_factory.mktemp("noisy")
    write_tiny_dataset(folder, participants=("a", "b", "c"), window=WINDOW, sizes=SIZES, seed=1)
    g = torch.Generator().manual_seed(5)
    for path in sorted(folder.glob("*.pt")):
        X, y = torch.load(path, weights_only=True)
        torch.save((X, y[torch.randperm(len(y), generator=g)]), path)
    return folder


def flags(data_path, exp, *extra, epochs=2):
    argv = ["--data_path", data_path, "--experiments_dir", exp, "--device", "cpu",
            "--batch_size", "8", "--max_epochs", str(epochs), *extra]
    return [str(a) for a in argv]


def run(argv, capsys=None, enhanced=False):
    rc = engine_cli.main(argv, enhanced=enhanced)
    if capsys is None:
        return rc, "", ""
    out, err = capsys.readouterr()
    return rc, out, err


def read(folder):
    """(hyperparameters, metrics, losses, state dict) of a result folder."""
    hyper = json.loads((folder / "hyperparameters.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    losses = json.loads((folder / "losses.json").read_text())
    state = torch.load(folder / "best_target_model.pt", weights_only=True)
    return hyper, metrics, losses, state


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def without(d, keys):
    return {k: v for k, v in d.items() if k not in keys}


def files_under(folder):
    if not folder.exists():
        return []
    return [p.relative_to(folder) for p in folder.rglob("*") if p.is_file()]


def logged_epochs(folder, phase):
    return {int(n) for n in re.findall(rf"{phase} epoch (\d+):", (folder / "train.log").read_text())}


def log_count(folder, pattern):
    return len(re.findall(pattern, (folder / "train.log").read_text()))


def check_curves(metrics, losses):
    """The eight curves on one epoch axis, each phase's part filled, the rest None."""
    n_base = metrics["base_epochs_run"] or 0
    n_target = metrics["target_epochs_run"] or 0
    total = n_base + n_target
    assert losses["epoch"] == list(range(1, total + 1))
    assert losses["transition_epoch"] == metrics["transition_epoch"]
    assert losses["best_base_epoch"] == metrics["best_base_epoch"]
    assert losses["best_target_epoch"] == metrics["best_target_epoch"]
    for name in CURVES:
        values = losses[name]
        assert len(values) == total, name
        inside = values[:n_base] if name.startswith("base") else values[n_base:]
        outside = values[n_base:] if name.startswith("base") else values[:n_base]
        assert all(v is None for v in outside), name
        assert all(isinstance(v, float) and math.isfinite(v) for v in inside), name
        if name.endswith("f1"):
            assert all(0 <= v <= 1 for v in inside), name
        else:
            assert all(v >= 0 for v in inside), name
    # The kept checkpoint is the first minimum of the validation loss; best_*_val_f1
    # is the best F1 over the phase's epochs (first epoch reaching it), as in the original.
    for phase, start, n in (("base", 0, n_base), ("target", n_base, n_target)):
        if n == 0:
            continue
        val = losses[f"{phase}_val_loss"][start:start + n]
        f1 = losses[f"{phase}_val_f1"][start:start + n]
        best = metrics[f"best_{phase}_epoch"]
        assert best == metrics[f"best_{phase}_val_loss_epoch"] == start + val.index(min(val)) + 1
        assert metrics[f"best_{phase}_val_loss"] == min(val)
        assert metrics[f"{phase}_val_f1_at_best_loss"] == losses[f"{phase}_val_f1"][best - 1]
        assert metrics[f"best_{phase}_val_f1"] == max(f1)
        assert metrics[f"best_{phase}_val_f1_epoch"] == start + f1.index(max(f1)) + 1


def check_outputs(folder, data_path, mode, enhanced=False, target="a", fold=0):
    """Everything a finished run publishes, consistent with itself."""
    assert OUTPUT_FILES <= {p.name for p in folder.iterdir()}
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]
    hyper, metrics, losses, state = read(folder)

    defaults = vars(engine_cli.build_parser(enhanced).parse_args([]))
    assert set(defaults) <= set(hyper)
    assert hyper["mode"] == mode and hyper["data_path"] == str(data_path)
    assert hyper["participants"] == ["a", "b", "c"]
    assert hyper["target_participant"] == target and hyper["fold"] == fold
    others = [p for p in ["a", "b", "c"] if p != target]
    assert hyper["base_participants"] == ([] if mode == "target_only" else others)
    assert hyper["n_channels"] == 3 and hyper["window_size"] == WINDOW
    assert hyper["device"] == "cpu" and isinstance(hyper["script"], str)

    assert set(metrics) == METRIC_KEYS
    assert metrics["mode"] == mode and metrics["fold"] == fold and metrics["target_participant"] == target
    if mode == "target_only":
        assert all(metrics[k] is None for k in BASE_METRICS)
        assert metrics["base_model_reused"] is False and metrics["base_key"] is None
        assert all(v is None for name in CURVES if name.startswith("base") for v in losses[name])
    else:
        assert metrics["transition_epoch"] == metrics["base_epochs_run"] >= 1
        assert 1 <= metrics["best_base_epoch"] <= metrics["transition_epoch"]
        assert 0 <= metrics["best_base_model_target_test_f1"] <= 1
    assert metrics["target_epochs_run"] >= 1
    first = (metrics["transition_epoch"] or 0) + 1
    assert first <= metrics["best_target_epoch"] <= first - 1 + metrics["target_epochs_run"]
    assert 0 <= metrics["best_target_model_target_test_f1"] <= 1
    check_curves(metrics, losses)

    # The saved weights are the best target model: scoring them on the target's
    # test split gives the published numbers.
    model = models.build_model(hyper["model"], 3)
    model.load_state_dict(state)
    X, y = torch.load(Path(data_path) / f"{target}_test.pt", weights_only=True)
    loss, f1 = engine_metrics.evaluate(model, X, y.float().view(-1), torch.device("cpu"))
    assert loss == pytest.approx(metrics["best_target_model_target_test_loss"], rel=1e-5, abs=1e-7)
    assert f1 == pytest.approx(metrics["best_target_model_target_test_f1"], abs=1e-9)

    # Every epoch of each phase is in the log file.
    # (A base model reused from the cache was trained, and logged, by another run.)
    trained_base = 0 if metrics["base_model_reused"] else (metrics["base_epochs_run"] or 0)
    assert logged_epochs(folder, "base") == set(range(1, trained_base + 1))
    assert logged_epochs(folder, "target") == set(range(first, first + metrics["target_epochs_run"]))
    for png in ("loss_curves.png", "f1_curves.png"):
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return hyper, metrics, losses, state


# ---------------------------------------------------------------- modes


@pytest.mark.parametrize("mode,batches", [("target_only", 2), ("target_only_fine_tuning", 2),
                                          ("full_fine_tuning", 8)])
def test_train_py_mode_writes_every_output(mode, batches, clean, tmp_path, capsys):
    exp = tmp_path / "exp"
    rc, out, err = run(flags(clean, exp, "--mode", mode, "--prefix", "m"), capsys)
    assert rc == 0, err
    folder = exp / "m" / "fold0_a"
    assert out.strip().splitlines()[-1] == f"RESULT_DIR {folder}"
    assert os.listdir(exp) == ["m"]  # no scratch or temporary folder left
    _, metrics, _, _ = check_outputs(folder, clean, mode)
    assert metrics["target_epochs_run"] == 2
    assert metrics["base_epochs_run"] == (None if mode == "target_only" else 2)
    # target modes fine-tune on the target's 16 windows; full fine-tuning adds the base's 48.
    assert log_count(folder, rf"target phase \({mode}\): 16 target train windows, {batches} batches") == 1


def test_base_only_trains_and_stores_the_base_then_composed_fine_tuning_reuses_it(clean, tmp_path, capsys):
    exp, cache = tmp_path / "exp", tmp_path / "cache"
    common = flags(clean, exp, "--base_cache_dir", cache)
    rc, out, err = run(common + ["--mode", "base_only", "--prefix", "b"], capsys, enhanced=True)
    assert rc == 0, err
    lines = dict(line.split(" ", 1) for line in out.splitlines() if line.startswith("BASE_"))
    key = lines["BASE_KEY"]
    assert re.fullmatch(r"[0-9a-f]{20}", key)
    assert Path(lines["BASE_MODEL"]) == cache / key
    assert {"model.pt", "metrics.json", "losses.json", "config.json", "fingerprint.json",
            "checksums.json"} <= set(os.listdir(cache / key))
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]
    stored = torch.load(cache / key / "model.pt", weights_only=True)
    models.build_model("test", 3).load_state_dict(stored)

    rc, out, err = run(common + ["--mode", "full_fine_tuning", "--target_batch_pct", "0.5", "--prefix", "c"],
                       capsys, enhanced=True)
    assert rc == 0, err
    folder = exp / "c" / "fold0_a"
    assert out.strip().splitlines()[-1] == f"RESULT_DIR {folder}"
    hyper, metrics, _, _ = check_outputs(folder, clean, "full_fine_tuning", enhanced=True)
    assert hyper["target_batch_pct"] == 0.5
    assert metrics["base_model_reused"] is True and metrics["base_key"] == key
    # round(0.5 * 8) = 4 target windows per batch: one pass over 16 target windows is 4 batches
    # (plain mixing of 48 base + 16 target windows would be 8).
    assert log_count(folder, r"16 target train windows, 4 batches per epoch") == 1

    # base_only again: the stored model is reused, not retrained.
    rc, out, err = run(common + ["--mode", "base_only", "--prefix", "b2"], capsys, enhanced=True)
    assert rc == 0, err
    assert f"BASE_KEY {key}" in out and "reused" in out


def test_base_only_stores_only_the_cache_entry(clean, tmp_path, capsys):
    # docs/contracts.md: base_only prints the key and the entry path and publishes no result folder.
    exp = tmp_path / "exp"
    cache = tmp_path / "cache"
    rc, out, err = run(flags(clean, exp, "--mode", "base_only", "--prefix", "b",
                             "--base_cache_dir", cache), capsys, enhanced=True)
    assert rc == 0, err
    key_line, path_line = out.strip().splitlines()[-2:]
    key = key_line.removeprefix("BASE_KEY ")
    assert path_line == f"BASE_MODEL {cache / key}"
    assert (cache / key / "model.pt").is_file()
    assert not (exp / "b").exists()


def test_train_log_has_every_epoch_once(clean, tmp_path, capsys):
    exp = tmp_path / "exp"
    rc, _, err = run(flags(clean, exp, "--prefix", "l", epochs=12), capsys)
    assert rc == 0, err
    text = (exp / "l" / "fold0_a" / "train.log").read_text()
    base = re.findall(r"base epoch (\d+):", text)
    target = re.findall(r"target epoch (\d+):", text)
    assert base == [str(n) for n in range(1, 13)]
    assert target == [str(n) for n in range(13, 25)]


# ---------------------------------------------------------------- selection


@pytest.fixture(scope="module")
def stopping_runs(noisy, tmp_path_factory):
    """Two full fine-tuning runs with early stopping: on the data, and on a copy
    whose target test split has flipped labels and noise for windows."""
    tmp = tmp_path_factory.mktemp("stopping")
    changed = tmp / "changed"
    shutil.copytree(noisy, changed)
    X, y = torch.load(changed / "a_test.pt", weights_only=True)
    noise = torch.randn(X.shape, generator=torch.Generator().manual_seed(9)) * 5 + 2
    torch.save((noise, 1 - y), changed / "a_test.pt")
    folders = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module fixtures run before the autouse one_thread
    try:
        for name, data_path in (("original", noisy), ("changed", changed)):
            exp = tmp / f"exp_{name}"
            rc, _, _ = run(flags(data_path, exp, "--lr", "0.01", "--early_stopping_patience", "1",
                                 "--early_stopping_patience_target", "2", "--prefix", "s", epochs=200))
            assert rc == 0
            folders.append(exp / "s" / "fold0_a")
    finally:
        torch.set_num_threads(threads)
        logger = logging.getLogger("experiment")
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
    return folders


def test_early_stopping_fires_in_both_phases(stopping_runs, noisy):
    folder = stopping_runs[0]
    _, metrics, losses, _ = check_outputs(folder, noisy, "full_fine_tuning")
    n_base, n_target = metrics["base_epochs_run"], metrics["target_epochs_run"]
    assert n_base < 200 and n_target < 200
    # Stopped after `patience` epochs without a better validation loss.
    assert metrics["best_base_epoch"] == n_base - 1
    assert metrics["best_target_epoch"] == n_base + n_target - 2
    # (check_outputs verified that the best epochs are the first minima of the val curves.)
    assert losses["base_val_loss"][n_base - 1] >= losses["base_val_loss"][n_base - 2]


def test_target_test_split_never_selects_anything(stopping_runs):
    (_, m1, l1, w1), (_, m2, l2, w2) = (read(f) for f in stopping_runs)
    # Best epochs, transition, every curve and the saved weights are the same...
    assert l1 == l2
    assert without(m1, TEST_SCORES | TIMING) == without(m2, TEST_SCORES | TIMING)
    assert same_weights(w1, w2)
    # ...while the target test split really was different, and read for the scores.
    assert m1["best_target_model_target_test_loss"] != m2["best_target_model_target_test_loss"]
    assert m1["best_base_model_target_test_loss"] != m2["best_base_model_target_test_loss"]


# ---------------------------------------------------------------- repeatability


def test_seed_repeats_to_the_bit(clean, tmp_path):
    results = {}
    for name, seed in (("one", 7), ("two", 7), ("other", 8)):
        exp = tmp_path / name
        rc, _, _ = run(flags(clean, exp, "--seed", seed, "--use_augmentation", "--prefix", "r", epochs=3))
        assert rc == 0
        results[name] = read(exp / "r" / "fold0_a")
    h1, m1, l1, w1 = results["one"]
    h2, m2, l2, w2 = results["two"]
    assert without(m1, TIMING) == without(m2, TIMING)
    assert l1 == l2
    assert same_weights(w1, w2)
    assert without(h1, {"experiments_dir"}) == without(h2, {"experiments_dir"})
    # The seed matters.
    assert not same_weights(w1, results["other"][3])
    assert results["other"][2]["target_val_loss"] != l1["target_val_loss"]


# ---------------------------------------------------------------- folders and flags


def test_existing_folder_is_refused_then_replaced_with_overwrite(clean, tmp_path, capsys):
    exp = tmp_path / "exp"
    argv = flags(clean, exp, "--mode", "target_only", "--prefix", "o", epochs=1)
    assert run(argv, capsys)[0] == 0
    folder = exp / "o" / "fold0_a"
    before = (folder / "metrics.json").read_bytes()

    rc, out, err = run(argv, capsys)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "exists" in err and str(folder) in err
    assert "RESULT_DIR" not in out
    assert (folder / "metrics.json").read_bytes() == before

    rc, out, err = run(flags(clean, exp, "--mode", "target_only", "--prefix", "o", "--overwrite",
                             epochs=3), capsys)
    assert rc == 0, err
    assert out.strip().splitlines()[-1] == f"RESULT_DIR {folder}"
    assert json.loads((folder / "metrics.json").read_text())["target_epochs_run"] == 3
    assert json.loads((folder / "hyperparameters.json").read_text())["max_epochs"] == 3
    assert os.listdir(exp / "o") == ["fold0_a"]  # no old or temporary sibling left


@pytest.mark.parametrize("enhanced,argv,fragment", [
    (False, ["--device", "gpu"], "--device"),
    (False, ["--device", "cuda:99"], "--device"),
    (True, ["--device", "banana"], "--device"),
    (True, ["--mode", "target_only_fine_tuning", "--target_batch_pct", "0.5"], "--target_batch_pct"),
    (True, ["--mode", "target_only", "--target_batch_pct", "0.5"], "--target_batch_pct"),
    (True, ["--mode", "base_only", "--no_base_cache"], "--no_base_cache"),
    (False, ["--magnitude_range", "1.2", "0.8"], "--magnitude_range"),
    (False, ["--aug_prob", "1.5"], "--aug_prob"),
])
def test_bad_flag_combination_is_a_one_line_error(enhanced, argv, fragment, clean, tmp_path, capsys):
    exp = tmp_path / "exp"
    extra = ["--base_cache_dir", str(tmp_path / "cache")] if enhanced else []
    rc, out, err = run(flags(clean, exp, *argv, *extra), capsys, enhanced=enhanced)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in err
    assert "RESULT_DIR" not in out
    assert files_under(exp) == []
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("enhanced,argv", [
    (False, ["--target_batch_pct", "0.5"]),  # train.py has no such flag
    (False, ["--mode", "base_only"]),
    (True, ["--target_batch_pct", "0"]),
    (True, ["--target_batch_pct", "1.5"]),
    (False, ["--target_data_pct", "0"]),
    (False, ["--target_data_pct", "2"]),
    (False, ["--max_epochs", "0"]),
    (False, ["--batch_size", "0"]),
    (False, ["--mode", "everything"]),
])
def test_bad_flag_value_exits_2(enhanced, argv, clean, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        engine_cli.main(flags(clean, tmp_path / "exp", *argv), enhanced=enhanced)
    assert info.value.code == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "exp").exists()


@pytest.mark.parametrize("pct", ["1.0", "0.05"])
def test_target_batch_pct_giving_an_empty_side_is_a_flag_error(pct, clean, tmp_path, capsys):
    # With --batch_size 8, 1.0 leaves no base window in a batch and 0.05 gives
    # round(0.4) = 0 target windows: a one-line error with exit status 2, not a traceback.
    argv = flags(clean, tmp_path / "exp", "--mode", "full_fine_tuning", "--target_batch_pct", pct,
                 "--no_base_cache")
    try:
        rc = engine_cli.main(argv, enhanced=True)
    except ValueError as err:
        pytest.fail(f"uncaught {err!r} instead of exit status 2")
    err = capsys.readouterr().err
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and "--target_batch_pct" in err


def test_target_data_pct_subsamples_the_target_train_split(clean, tmp_path, capsys):
    exp = tmp_path / "exp"
    for pct, windows, batches in (("0.5", 8, 1), ("0.25", 4, 1), ("1.0", 16, 2)):
        rc, _, err = run(flags(clean, exp, "--mode", "target_only", "--target_data_pct", pct,
                               "--prefix", f"p{pct}", epochs=1), capsys)
        assert rc == 0, err
        folder = exp / f"p{pct}" / "fold0_a"
        assert log_count(folder, rf"target phase \(target_only\): {windows} target train windows, "
                                 rf"{batches} batches per epoch") == 1
        assert json.loads((folder / "hyperparameters.json").read_text())["target_data_pct"] == float(pct)


def test_demo_data_is_created_on_first_use(tmp_path, monkeypatch, capsys):
    assert callable(synthetic.write_synthetic_dataset)
    small = functools.partial(synthetic.write_synthetic_dataset, n_participants=3,
                              window_size=WINDOW, n_train=8, n_val=4, n_test=4)
    monkeypatch.setattr(synthetic, "write_synthetic_dataset", small)
    monkeypatch.chdir(tmp_path)
    argv = ["--mode", "target_only", "--max_epochs", "1", "--device", "cpu",
            "--experiments_dir", str(tmp_path / "exp")]
    rc, out, err = run(argv, capsys)
    assert rc == 0, err
    assert f"{DEMO_DATA_PATH} not found" in out
    demo = tmp_path / DEMO_DATA_PATH
    assert len(list(demo.glob("*_train.pt"))) == 3 and len(list(demo.glob("*.pt"))) == 9
    result = Path(out.strip().splitlines()[-1].split(" ", 1)[1])
    hyper = json.loads((result / "hyperparameters.json").read_text())
    assert hyper["data_path"] == DEMO_DATA_PATH and hyper["window_size"] == WINDOW
    # Second run: the demo data is there, nothing is regenerated.
    stamp = (demo / "p01_train.pt").stat().st_mtime_ns
    rc, out, err = run(argv + ["--prefix", "again"], capsys)
    assert rc == 0, err
    assert "not found" not in out
    assert (demo / "p01_train.pt").stat().st_mtime_ns == stamp


# ---------------------------------------------------------------- base cache


def test_base_model_is_reused_across_fine_tuning_settings(clean, tmp_path, capsys):
    exp, cache = tmp_path / "exp", tmp_path / "cache"
    common = flags(clean, exp, "--base_cache_dir", cache, epochs=3)
    runs = {}
    for prefix, extra in (("r1", []),
                          ("r2", ["--mode", "target_only_fine_tuning", "--target_data_pct", "0.5",
                                  "--early_stopping_patience_target", "2"]),
                          ("r3", [])):
        rc, _, err = run(common + ["--prefix", prefix] + extra, capsys, enhanced=True)
        assert rc == 0, err
        runs[prefix] = read(exp / prefix / "fold0_a")
    _, m1, l1, w1 = runs["r1"]
    _, m2, l2, _ = runs["r2"]
    _, m3, l3, w3 = runs["r3"]
    assert m1["base_model_reused"] is False
    assert m2["base_model_reused"] is True and m3["base_model_reused"] is True
    assert m1["base_key"] == m2["base_key"] == m3["base_key"]
    assert [p.name for p in cache.iterdir() if p.is_dir()] == [m1["base_key"]]
    n = m1["transition_epoch"]
    assert m2["transition_epoch"] == n
    for key in ("best_base_epoch", "best_base_val_loss", "best_base_val_f1", "base_epochs_run",
                "best_base_model_target_test_loss", "best_base_model_target_test_f1"):
        assert m2[key] == m1[key], key
    for name in CURVES[:4]:
        assert l2[name][:n] == l1[name][:n], name
    # A reused base gives the same personalized model as the freshly trained one.
    assert without(m3, TIMING | {"base_model_reused"}) == without(m1, TIMING | {"base_model_reused"})
    assert l3 == l1
    assert same_weights(w1, w3)
    # --print_base_key with the same flags prints the key metrics.json records.
    rc, out, _ = run(common + ["--print_base_key"], capsys, enhanced=True)
    assert rc == 0 and out.strip() == m1["base_key"]


def test_print_base_key(clean, tmp_path, capsys):
    exp = tmp_path / "exp"

    def key(data_path, *extra):
        rc, out, err = run(flags(data_path, exp, "--print_base_key", *extra), capsys, enhanced=True)
        assert rc == 0, err
        assert re.fullmatch(r"[0-9a-f]{20}", out.strip()), out
        return out.strip()

    found = key(clean)
    assert key(clean, "--participants", "a", "b", "c") == found
    # Settings of the fine-tuning only, or an equivalent base, keep the key.
    assert key(clean, "--target_data_pct", "0.5", "--mode", "target_only_fine_tuning",
               "--early_stopping_patience_target", "3", "--prefix", "x", "--overwrite") == found
    assert key(clean, "--n_base_participants", "2") == found
    assert key(clean, "--participants", "a", "c", "b") == found
    # Settings of the base model change it.
    for extra in (["--batch_size", "16"], ["--fold", "1"], ["--lr", "0.01"], ["--seed", "1"],
                  ["--n_base_participants", "1"], ["--early_stopping_patience", "3"]):
        assert key(clean, *extra) != found, extra
    # No data needed when the participants are given.
    missing = tmp_path / "not_here"
    remote = key(missing, "--participants", "a", "b", "c")
    assert remote != found  # the data path as given is part of the key
    assert key(missing, "--participants", "a", "b", "c") == remote
    assert not missing.exists() and not exp.exists()
    # Without participants the folder must be listed; target_only has no base model.
    rc, _, err = run(flags(missing, exp, "--print_base_key"), capsys, enhanced=True)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and str(missing) in err
    rc, _, err = run(flags(clean, exp, "--print_base_key", "--mode", "target_only"), capsys, enhanced=True)
    assert rc == 2 and "target_only" in err


# ---------------------------------------------------------------- subprocesses


def start(script, argv, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, str(ROOT / script), *argv], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_output(proc, text, timeout=120):
    """Read stdout until `text` appears; returns what was read."""
    seen = b""
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    while text.encode() not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {text!r} in time: {seen.decode()}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            assert chunk, f"process ended before {text!r}: {seen.decode()} {proc.stderr.read().decode()}"
            seen += chunk
    return seen.decode()


@pytest.mark.slow
def test_scripts_exit_statuses_and_result_dir_line(clean, tmp_path):
    exp = tmp_path / "exp"
    broken = tmp_path / "broken"
    shutil.copytree(clean, broken)
    (broken / "b_val.pt").write_bytes(b"\x00garbage")
    ok = start("train.py", flags(clean, exp, "--mode", "target_only", "--prefix", "sub", epochs=1), tmp_path)
    bad = start("oct1_train.py", flags(broken, exp, "--prefix", "bad", "--base_cache_dir",
                                       tmp_path / "cache"), tmp_path)
    out, err = (s.decode() for s in ok.communicate(timeout=180))
    assert ok.returncode == 0, err
    folder = exp / "sub" / "fold0_a"
    assert out.strip().splitlines()[-1] == f"RESULT_DIR {folder}"
    assert "Traceback" not in err
    assert json.loads((folder / "hyperparameters.json").read_text())["script"] == "train.py"

    out, err = (s.decode() for s in bad.communicate(timeout=180))
    assert bad.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("oct1_train.py: error: ") and str(broken / "b_val.pt") in lines[0]
    assert "RESULT_DIR" not in out
    assert not (exp / "bad").exists() and not (tmp_path / "cache").exists()
    # Nothing landed in the working directory (the scripts ran with cwd=tmp_path).
    assert sorted(p.name for p in tmp_path.iterdir()) in (["broken", "exp"],)


@pytest.mark.slow
def test_interrupted_runs_publish_nothing(noisy, tmp_path):
    argv = ["--lr", "0.01", "--early_stopping_patience", "1", "--early_stopping_patience_target", "100000",
            "--prefix", "i"]
    procs = {}
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):
        exp = tmp_path / sig.name
        procs[sig] = (exp, start("train.py", flags(noisy, exp, *argv, epochs=100000), tmp_path))
    try:
        for sig, (exp, proc) in procs.items():
            wait_for_output(proc, "target phase")
            time.sleep(0.3)
            proc.send_signal(sig)
        results = {sig: proc.communicate(timeout=60) for sig, (_, proc) in procs.items()}
    finally:
        for _, proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert procs[signal.SIGTERM][1].returncode == 143
    assert procs[signal.SIGINT][1].returncode == 130
    assert "interrupted" in results[signal.SIGINT][1].decode()
    assert procs[signal.SIGKILL][1].returncode == -signal.SIGKILL
    for sig, (exp, _) in procs.items():
        paths = [p.relative_to(exp) for p in exp.rglob("*")] if exp.exists() else []
        assert not [p for p in paths if p.name.startswith("fold")], (sig.name, paths)
        assert "RESULT_DIR" not in results[sig][0].decode()
        if sig != signal.SIGKILL:
            # Unwound cleanly: no temporary folder, no scratch log, no file at all.
            assert files_under(exp) == [], sig.name
            assert not [p for p in paths if p.name.startswith(".")], (sig.name, paths)
        else:
            # A killed run may leave hidden leftovers only, never a complete-looking folder.
            assert all(any(part.startswith(".") for part in p.parts) for p in files_under(exp)), paths


def test_target_share_larger_than_the_target_data_fails_before_training(clean, tmp_path, capsys):
    exp = tmp_path / "exp"
    cache = tmp_path / "cache"
    rc, out, err = run(flags(clean, exp, "--target_batch_pct", "0.5", "--target_data_pct", "0.1",
                             "--base_cache_dir", cache), capsys, enhanced=True)
    assert rc == 2
    assert "--target_batch_pct 0.5 puts" in err and "leaves" in err and err.count("\n") == 1
    assert not cache.exists() and not exp.exists()  # nothing trained, nothing written
