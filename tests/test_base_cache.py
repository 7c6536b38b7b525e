"""Tests for the base-model cache: the key, the locked store, and how the engine uses it.

Trainings are counted from the engine's log lines ("base model KEY: training (WHY)"
and "base model KEY: reused ...") and from metrics.json's `base_model_reused`.
Most runs call engine_cli.main in this process (no torch import per run); the
concurrency and SIGKILL tests start real `oct1_train.py` processes.
"""
import fcntl
import json
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from engine import base_cache
from engine import cli as engine_cli
from engine.models import build_model
from tiny_data import write_tiny_dataset  # noqa: E402

WINDOW = 64  # the `test` model pools by 4*4*4, so it needs windows of at least 64
TRAINED = re.compile(r"base model (\w+): training \((.*)\)\s*$")
REUSED = re.compile(r"base model (\w+): reused")
EPOCH_DONE = re.compile(r"\bbase epoch \d+")  # the engine's progress line, first one after epoch 1
BASE_CURVES = ("train_loss", "val_loss", "train_f1", "val_f1")
SUBPROCESS_TIMEOUT = 240


# ---------------------------------------------------------------- helpers

def trainings(out):
    """[(key, reason)] of every 'training' line in a run's output."""
    return [(m.group(1), m.group(2)) for m in map(TRAINED.search, out.splitlines()) if m]


def reuses(out):
    return [m.group(1) for m in map(REUSED.search, out.splitlines()) if m]


def printed(out, tag):
    """The value of a `TAG value` line the engine prints."""
    values = [line.split(" ", 1)[1].strip() for line in out.splitlines() if line.startswith(tag + " ")]
    assert len(values) == 1, f"expected one {tag} line in:\n{out}"
    return values[0]


def entries(cache):
    """Published (non-hidden) entry folders in the cache."""
    return sorted(p.name for p in Path(cache).iterdir() if p.is_dir() and not p.name.startswith("."))


def read_json(path):
    return json.loads(Path(path).read_text())


def parse(argv):
    return engine_cli.build_parser(enhanced=True).parse_args([str(a) for a in argv])


def key_of(argv):
    return base_cache.key_for_args(parse(argv))


class Setup:
    """A tiny dataset and the three folders every run gets, all inside tmp_path."""

    def __init__(self, tmp_path, **data_kw):
        self.data = tmp_path / "data"
        self.exp = tmp_path / "experiments"
        self.cache = tmp_path / "base_models"
        write_tiny_dataset(self.data, window=WINDOW, **data_kw)

    def flags(self, *extra):
        return ["--data_path", self.data, "--experiments_dir", self.exp, "--base_cache_dir", self.cache,
                "--device", "cpu", "--max_epochs", "3", "--early_stopping_patience", "3",
                "--early_stopping_patience_target", "2", *extra]


@pytest.fixture
def setup(tmp_path):
    return Setup(tmp_path)


@pytest.fixture
def engine(capsys):
    """engine(argv) runs oct1_train's main here; returns (exit status, stdout, stderr)."""
    logger = logging.getLogger("experiment")

    def run(argv):
        capsys.readouterr()
        old_sigterm = signal.getsignal(signal.SIGTERM)
        try:
            rc = engine_cli.main([str(a) for a in argv], enhanced=True)
        finally:
            signal.signal(signal.SIGTERM, old_sigterm)
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
        captured = capsys.readouterr()
        return rc, captured.out, captured.err

    return run


def cli(argv):
    return [sys.executable, str(ROOT / "oct1_train.py"), *[str(a) for a in argv]]


def child_env():
    return dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


def stop(proc):
    """Kill a child we started (if still running) and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=30)


def flock_is_free(path):
    """Whether nobody holds an flock on `path` (takes and drops it when free)."""
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


# ---------------------------------------------------------------- the key

def key_flags(tmp_path, *extra):
    """Flags for key computations: the data folder does not exist (the key needs no data)."""
    return ["--data_path", tmp_path / "absent", "--experiments_dir", tmp_path / "exp",
            "--base_cache_dir", tmp_path / "cache", "--participants", "a", "b", "c", "d", *extra]


def test_key_needs_no_data_and_is_stable(tmp_path):
    key = key_of(key_flags(tmp_path))
    assert isinstance(key, str) and re.fullmatch(r"[0-9A-Za-z]+", key)
    assert key == key_of(key_flags(tmp_path))
    args = parse(key_flags(tmp_path))
    assert base_cache.base_key(args, ["d", "c", "b"]) == key
    assert not (tmp_path / "absent").exists()


BASE_SETTING_CHANGES = {
    "other fold (other base participants)": ["--fold", "1"],
    "fewer base participants": ["--n_base_participants", "2"],
    "one more base participant": ["--participants", "a", "b", "c", "d", "e"],
    "model": ["--model", "medium"],
    "window size": ["--window_size", "128"],
    "batch size": ["--batch_size", "32"],
    "lr": ["--lr", "0.01"],
    "patience": ["--early_stopping_patience", "5"],
    "max epochs": ["--max_epochs", "7"],
    "augmentation": ["--use_augmentation"],
    "seed": ["--seed", "1"],
    "base validation share": ["--base_val_pct", "0.5"],
    "preset original (lr, patience, base validation share)": ["--preset", "original"],
    "historic CPU kernels (never a base trained with the fast ones)": ["--cpu_kernels", "reference"],
}


@pytest.mark.parametrize("change", list(BASE_SETTING_CHANGES.values()), ids=list(BASE_SETTING_CHANGES))
def test_a_base_setting_changes_the_key(tmp_path, change):
    base = key_flags(tmp_path, "--window_size", "64")
    assert key_of(base + change) != key_of(base)


def test_the_data_path_changes_the_key(tmp_path):
    base = key_flags(tmp_path)
    assert key_of(base + ["--data_path", tmp_path / "other_data"]) != key_of(base)


FINE_TUNING_CHANGES = {
    "target_data_pct": ([], ["--target_data_pct", "0.5"]),
    "early_stopping_patience_target": ([], ["--early_stopping_patience_target", "3"]),
    "target_batch_pct": ([], ["--target_batch_pct", "0.25"]),
    "mode target_only_fine_tuning": ([], ["--mode", "target_only_fine_tuning"]),
    "mode base_only": ([], ["--mode", "base_only"]),
    "prefix": ([], ["--prefix", "other"]),
    "fold with the same base set": (["--n_base_participants", "2", "--fold", "2"], ["--fold", "3"]),
    "participant order, same base set": ([], ["--participants", "a", "d", "c", "b"]),
    "device": ([], ["--device", "cuda:0"]),
    "overwrite": ([], ["--overwrite"]),
    "experiments_dir": ([], ["--experiments_dir", "{tmp}/elsewhere"]),
    "target_val_pct": ([], ["--target_val_pct", "0.1"]),
    "target_count": (["--target_batch_pct", "0.9"], ["--target_count", "floor"]),
    "epoch_rule": (["--target_batch_pct", "0.9"], ["--epoch_rule", "shortest"]),
    "preset's fine-tuning flags given explicitly": (["--preset", "original"], [
        "--target_val_pct", "1", "--target_count", "round", "--epoch_rule", "target_pass",
        "--early_stopping_patience_target", "3"]),
}


@pytest.mark.parametrize("base_extra, change", list(FINE_TUNING_CHANGES.values()), ids=list(FINE_TUNING_CHANGES))
def test_a_fine_tuning_setting_keeps_the_key(tmp_path, base_extra, change):
    base = key_flags(tmp_path, "--mode", "full_fine_tuning", *base_extra)
    change = [c.format(tmp=tmp_path) for c in change]
    assert key_of(base + change) == key_of(base)


AUGMENTATION_PARAMETERS = {
    "jitter_std": ["--jitter_std", "0.1"],
    "magnitude_range": ["--magnitude_range", "0.5", "1.5"],
    "aug_prob": ["--aug_prob", "0.9"],
    "augmentation mode": ["--augmentation", "batch"],
}


@pytest.mark.parametrize("change", list(AUGMENTATION_PARAMETERS.values()), ids=list(AUGMENTATION_PARAMETERS))
def test_augmentation_parameters_matter_only_when_augmentation_is_on(tmp_path, change):
    off = key_flags(tmp_path)
    assert key_of(off + change) == key_of(off)
    on = key_flags(tmp_path, "--use_augmentation")
    assert key_of(on + change) != key_of(on)


def test_the_preset_enters_the_key_only_through_its_resolved_values(tmp_path):
    spelled_out = ["--lr", "0.0003", "--early_stopping_patience", "40", "--base_val_pct", "0.5",
                   "--augmentation", "batch", "--jitter_std", "0.005", "--magnitude_range", "0.98", "1.02",
                   "--aug_prob", "0.3", "--use_augmentation"]
    preset = key_flags(tmp_path, "--preset", "original", "--use_augmentation")
    assert key_of(preset) == key_of(key_flags(tmp_path, *spelled_out))
    # An explicit flag beats the preset, in the key too.
    assert key_of(preset + ["--lr", "0.001"]) == key_of(key_flags(tmp_path, *spelled_out, "--lr", "0.001"))


def test_target_only_has_no_base_key(tmp_path, engine):
    with pytest.raises(base_cache.CacheError):
        key_of(key_flags(tmp_path, "--mode", "target_only"))
    rc, out, err = engine(key_flags(tmp_path, "--mode", "target_only", "--print_base_key"))
    assert rc == 2 and out == ""
    assert "target_only" in err and len(err.strip().splitlines()) == 1


def test_print_base_key_flag_matches_the_key_a_run_uses(tmp_path, engine):
    data = tmp_path / "data"
    common = ["--data_path", data, "--experiments_dir", tmp_path / "exp", "--base_cache_dir", tmp_path / "cache",
              "--fold", "1", "--device", "cpu", "--max_epochs", "2", "--early_stopping_patience", "2"]
    argv = common + ["--participants", "a", "b", "c", "d"]
    # Before the data exists: the flag prints the function's key, and nothing else.
    rc, out, err = engine(argv + ["--print_base_key"])
    assert rc == 0, err
    printed_key = out.strip()
    assert out.strip().splitlines() == [key_of(argv)]
    assert not data.exists() and not (tmp_path / "cache").exists() and not (tmp_path / "exp").exists()

    write_tiny_dataset(data, window=WINDOW)
    # With the data and without --participants: the same key (all participants found, sorted).
    rc, out, err = engine(common + ["--print_base_key"])
    assert rc == 0, err
    assert out.strip() == printed_key
    # The run itself uses that key, for its store entry too.
    rc, out, err = engine(argv + ["--mode", "base_only"])
    assert rc == 0, err
    assert printed(out, "BASE_KEY") == printed_key
    assert [k for k, _ in trainings(out)] == [printed_key]
    assert entries(tmp_path / "cache") == [printed_key]


# ---------------------------------------------------------------- the store

def test_entry_holds_model_metrics_losses_config_and_fingerprint(setup, engine):
    rc, out, err = engine(setup.flags("--mode", "base_only"))
    assert rc == 0, err
    key = printed(out, "BASE_KEY")
    folder = setup.cache / key
    assert Path(printed(out, "BASE_MODEL")).resolve() == folder.resolve()
    names = {p.name for p in folder.iterdir()}
    assert {"model.pt", "metrics.json", "losses.json", "config.json", "fingerprint.json"} <= names
    assert any("checksum" in n for n in names)
    model = build_model("test", 3)
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))
    config = read_json(folder / "config.json")
    assert config["base_participants"] == ["b", "c", "d"]
    assert config["max_epochs"] == 3 and config["seed"] == 42
    fingerprint = json.dumps(read_json(folder / "fingerprint.json"))
    for split in ("train", "val", "test"):
        for name in "bcd":
            assert f"{name}_{split}.pt" in fingerprint
        assert f"a_{split}.pt" not in fingerprint  # the target's files are not part of the base
    # Nothing half-written is left next to the entry.
    assert [p.name for p in setup.cache.iterdir() if p.is_dir()] == [key]


def entry_curve(losses, name):
    """A base curve from the entry's losses.json (phase curves, or contract-shaped)."""
    curve = losses.get(name, losses.get(f"base_{name}"))
    assert curve is not None, f"{name} missing from the entry's losses.json: {sorted(losses)}"
    return [v for v in curve if v is not None]


def test_fine_tuning_runs_of_one_fold_share_one_base(setup, engine):
    runs = {
        "trained": ["--mode", "full_fine_tuning"],
        "other_ft": ["--mode", "target_only_fine_tuning", "--target_data_pct", "0.5",
                     "--early_stopping_patience_target", "3"],
        "same_ft": ["--mode", "full_fine_tuning"],  # only the prefix differs from "trained"
    }
    outs, metrics, losses, states = {}, {}, {}, {}
    for prefix, extra in runs.items():
        rc, out, err = engine(setup.flags("--prefix", prefix, *extra))
        assert rc == 0, err
        outs[prefix] = out
        folder = Path(printed(out, "RESULT_DIR"))
        metrics[prefix], losses[prefix] = read_json(folder / "metrics.json"), read_json(folder / "losses.json")
        states[prefix] = torch.load(folder / "best_target_model.pt", weights_only=True)

    key = key_of(setup.flags())
    assert [k for k, _ in trainings(outs["trained"])] == [key] and reuses(outs["trained"]) == []
    for prefix in ("other_ft", "same_ft"):
        assert trainings(outs[prefix]) == [] and reuses(outs[prefix]) == [key], prefix
    assert [metrics[p]["base_model_reused"] for p in runs] == [False, True, True]
    assert {metrics[p]["base_key"] for p in runs} == {key}
    assert entries(setup.cache) == [key]

    # base_only reuses it as well.
    rc, out, err = engine(setup.flags("--mode", "base_only", "--prefix", "base"))
    assert rc == 0, err
    assert trainings(out) == [] and reuses(out) == [key] and printed(out, "BASE_KEY") == key

    transition = losses["trained"]["transition_epoch"]
    assert transition == metrics["trained"]["base_epochs_run"] and transition >= 1
    stored = read_json(setup.cache / key / "losses.json")
    for prefix in runs:
        assert losses[prefix]["transition_epoch"] == transition
        assert metrics[prefix]["transition_epoch"] == transition
        for field in ("best_base_epoch", "best_base_val_loss", "best_base_val_f1", "base_epochs_run",
                      "best_base_model_target_test_loss", "best_base_model_target_test_f1"):
            assert metrics[prefix][field] == metrics["trained"][field], (prefix, field)
        for name in BASE_CURVES:
            curve = losses[prefix][f"base_{name}"]
            assert curve[:transition] == losses["trained"][f"base_{name}"][:transition], (prefix, name)
            assert curve[:transition] == entry_curve(stored, name), (prefix, name)
            assert all(v is not None for v in curve[:transition])
            assert all(v is None for v in curve[transition:])

    # With the same fine-tuning settings, reusing the base changes nothing at all.
    volatile = {"base_model_reused", "total_time_s", "train_windows_per_s"}
    assert losses["same_ft"] == losses["trained"]
    assert {k: v for k, v in metrics["same_ft"].items() if k not in volatile} == \
           {k: v for k, v in metrics["trained"].items() if k not in volatile}
    assert states["same_ft"].keys() == states["trained"].keys()
    assert all(torch.equal(states["same_ft"][k], states["trained"][k]) for k in states["trained"])


def test_changed_base_data_file_is_detected_and_retrained(setup, engine):
    base_only = setup.flags("--mode", "base_only")
    rc, out, err = engine(base_only)
    assert rc == 0, err
    key = printed(out, "BASE_KEY")
    assert [k for k, _ in trainings(out)] == [key]

    # Same content, new mtime: still the same data.
    later = time.time() + 1000
    os.utime(setup.data / "b_train.pt", (later, later))
    rc, out, err = engine(base_only)
    assert rc == 0, err
    assert trainings(out) == [] and reuses(out) == [key]

    # The target's files are not base data.
    X, y = torch.load(setup.data / "a_train.pt", weights_only=True)
    torch.save((X + 1.0, y), setup.data / "a_train.pt")
    rc, out, err = engine(base_only)
    assert rc == 0, err
    assert trainings(out) == [] and reuses(out) == [key]

    # A base participant's file changes: retrained, and the log line says why, naming the file.
    X, y = torch.load(setup.data / "c_val.pt", weights_only=True)
    torch.save((X * 2.0, y), setup.data / "c_val.pt")
    rc, out, err = engine(base_only)
    assert rc == 0, err
    assert reuses(out) == []
    [(trained_key, reason)] = trainings(out)
    assert trained_key == key
    assert "c_val.pt" in reason, reason
    assert "b_train.pt" not in reason and "a_train.pt" not in reason, reason
    assert entries(setup.cache) == [key]

    # The new entry records the new data: the next run reuses it.
    rc, out, err = engine(base_only)
    assert rc == 0, err
    assert trainings(out) == [] and reuses(out) == [key]


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def alter_curve(path):
    losses = read_json(path)
    name = "train_loss" if "train_loss" in losses else "base_train_loss"
    losses[name][0] += 0.5
    path.write_text(json.dumps(losses, indent=2, sort_keys=True) + "\n")


@pytest.mark.parametrize("name, damage", [("model.pt", truncate), ("losses.json", alter_curve)],
                         ids=["truncated model.pt", "edited losses.json"])
def test_damaged_entry_is_detected_by_checksum_and_retrained(setup, engine, name, damage):
    base_only = setup.flags("--mode", "base_only")
    rc, out, err = engine(base_only)
    assert rc == 0, err
    key = printed(out, "BASE_KEY")
    folder = setup.cache / key
    good_losses = read_json(folder / "losses.json")
    good_state = torch.load(folder / "model.pt", weights_only=True)

    damage(folder / name)
    rc, out, err = engine(base_only)
    assert rc == 0, err
    assert reuses(out) == []
    [(trained_key, reason)] = trainings(out)
    assert trained_key == key
    assert "checksum" in reason.lower() and name in reason, reason

    # The retrained entry is whole again (training is deterministic) and is reused next time.
    assert entries(setup.cache) == [key]
    assert read_json(folder / "losses.json") == good_losses
    state = torch.load(folder / "model.pt", weights_only=True)
    assert all(torch.equal(state[k], good_state[k]) for k in good_state)
    rc, out, err = engine(base_only)
    assert rc == 0, err
    assert trainings(out) == [] and reuses(out) == [key]


# ---------------------------------------------------------------- processes

@pytest.mark.slow
def test_four_concurrent_processes_train_once(setup, engine):
    flags = setup.flags("--mode", "base_only", "--max_epochs", "10", "--early_stopping_patience", "10")
    key = key_of(flags)
    procs = [subprocess.Popen(cli(flags + ["--prefix", f"job{i}"]), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=child_env())
             for i in range(4)]
    outs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
            outs.append(out)
    finally:
        for proc in procs:
            stop(proc)
    for proc, out in zip(procs, outs):
        assert proc.returncode == 0, out
        assert printed(out, "BASE_KEY") == key
        assert len(trainings(out)) + len(reuses(out)) == 1, out
    assert sum(len(trainings(out)) for out in outs) == 1, "\n".join(outs)
    assert sum(len(reuses(out)) for out in outs) == 3, "\n".join(outs)
    assert entries(setup.cache) == [key]
    assert [p.name for p in setup.cache.iterdir() if p.is_dir()] == [key]  # no leftover temporary folders
    # What was published is a valid entry for a later reader.
    rc, out, err = engine(flags)
    assert rc == 0, err
    assert trainings(out) == [] and reuses(out) == [key]


def read_lines(proc):
    """A queue of the child's stdout lines (None at the end), read by a thread."""
    lines = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def wait_for_line(lines, pattern, timeout):
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"no line matching {pattern.pattern!r} within {timeout}s; got:\n{''.join(seen)}")
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is None:
            pytest.fail(f"process ended before a line matching {pattern.pattern!r}; got:\n{''.join(seen)}")
        seen.append(line)
        match = pattern.search(line)
        if match:
            return match


@pytest.mark.slow
def test_killed_writer_publishes_nothing_and_does_not_block_the_next(tmp_path):
    # The killed writer trains on a big version of the data (the data's content is not part
    # of the key), so it is surely still training when it is stopped; the next run, with the
    # same settings and so the same key, trains on the tiny version.
    setup = Setup(tmp_path, sizes=(3000, 300, 300))
    flags = setup.flags("--mode", "base_only", "--max_epochs", "20", "--early_stopping_patience", "20")
    key = key_of(flags)
    lock = setup.cache / f"{key}.lock"

    writer = subprocess.Popen(cli(flags), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=child_env())
    try:
        lines = read_lines(writer)
        assert wait_for_line(lines, TRAINED, SUBPROCESS_TIMEOUT).group(1) == key
        wait_for_line(lines, EPOCH_DONE, SUBPROCESS_TIMEOUT)  # surely mid-training now
        os.kill(writer.pid, signal.SIGSTOP)  # frozen mid-training, holding the lock
        assert lock.exists(), sorted(p.name for p in setup.cache.iterdir())
        assert not flock_is_free(lock), "the writer trains without holding the lock"
        assert not (setup.cache / key).exists()
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait(timeout=30)
    finally:
        stop(writer)
    assert writer.returncode == -signal.SIGKILL

    # Nothing that looks like an entry; only hidden leftovers or the lock file may remain.
    assert entries(setup.cache) == []
    assert all(p.name.startswith(".") or p.name.endswith(".lock") for p in setup.cache.iterdir())
    assert flock_is_free(lock), "the dead writer's lock is still held"

    write_tiny_dataset(setup.data, window=WINDOW)
    proc = subprocess.run(cli(flags), cwd=ROOT, capture_output=True, text=True,
                          timeout=SUBPROCESS_TIMEOUT, env=child_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [k for k, _ in trainings(proc.stdout)] == [key] and reuses(proc.stdout) == []
    assert printed(proc.stdout, "BASE_KEY") == key
    assert entries(setup.cache) == [key]
    assert read_json(setup.cache / key / "metrics.json")
