"""Fail fast, in one line, with nothing half-written (issue 35): NaN and inf in flags and in
training, the CPU kernels in the base-model key, and the inputs that used to end in a traceback
(one participant with a base phase, windows too short for the model, a pack's batch far above
its data). Tiny data on the CPU; every run in-process."""
import json
import math
import threading
import time

import pytest
import torch

import pack_train
from engine import base_cache, flags, packed_step
from engine import cli as engine_cli
from engine import phase as engine_phase
from engine.models import MODELS, build_model
from test_base_cache import flock_is_free
from tiny_data import write_tiny_dataset

DIVERGES = "1e30"  # an lr whose first AdamW step sends the weights past float32: the loss is NaN


@pytest.fixture
def data(tmp_path):
    write_tiny_dataset(tmp_path / "data", participants=("a", "b", "c"), window=32, sizes=(16, 8, 8))
    return tmp_path / "data"


def common(tmp_path, data):
    return {"data_path": str(data), "experiments_dir": str(tmp_path / "exp"),
            "base_cache_dir": str(tmp_path / "cache"), "device": "cpu", "batch_size": 8, "max_epochs": 2}


def argv_of(settings, **more):
    return flags.job_argv(dict(settings, **more))


def run(argv, capsys):
    rc = engine_cli.main([str(a) for a in argv], enhanced=True)
    out, err = capsys.readouterr()
    return rc, out, err


def one_line_error(rc, err, *fragments):
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def results(tmp_path):
    root = tmp_path / "exp"
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.name.startswith(("fold", ".fold"))) \
        if root.exists() else []


def cache_files(tmp_path):
    """Everything in the base-model cache: entries, lock files, hidden leftovers."""
    folder = tmp_path / "cache"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ---------------------------------------------------------------- A: NaN and inf

FLOAT_FLAGS = [f for f in flags.FLAGS if f.options.get("type") in (float, flags.fraction)]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN"])
@pytest.mark.parametrize("flag", FLOAT_FLAGS, ids=[f.name for f in FLOAT_FLAGS])
def test_every_float_flag_refuses_nan_and_inf_in_one_line(flag, value, capsys):
    pair = flag.options.get("nargs") == 2
    argv = [f"--{flag.name}", value, "1"] if pair else [f"--{flag.name}={value}"]
    with pytest.raises(SystemExit) as stop:
        engine_cli.build_parser(enhanced=True).parse_args(argv)
    assert stop.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert f": error: argument --{flag.name}: " in last
    # argparse reads "-inf" after a flag of two values as an option: refused before the type sees it.
    assert repr(value) in last or (pair and value.startswith("-")), last


def test_a_base_phase_that_diverges_ends_in_one_line_and_stores_nothing(tmp_path, data, capsys):
    settings = common(tmp_path, data)
    rc, out, err = run(argv_of(settings, fold=1, lr=DIVERGES, prefix="p"), capsys)
    one_line_error(rc, err, "fold 1 (b), base phase: validation loss is nan at epoch 1", "no base model stored")
    assert "RESULT_DIR" not in out and "BASE_TRAINED" not in out
    assert results(tmp_path) == [] and cache_files(tmp_path) == []  # no entry, no lock file, no leftover


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_loss_that_turns_non_finite_at_any_epoch_publishes_nothing(tmp_path, data, capsys, monkeypatch, bad):
    calls = []
    evaluate = engine_phase.evaluate

    def turns_bad_at_epoch_3(*args, **kwargs):
        loss, f1 = evaluate(*args, **kwargs)
        calls.append(loss)
        return (bad if len(calls) == 3 else loss), f1
    monkeypatch.setattr(engine_phase, "evaluate", turns_bad_at_epoch_3)
    settings = dict(common(tmp_path, data), max_epochs=5, mode="target_only", prefix="p")
    rc, out, err = run(argv_of(settings), capsys)
    one_line_error(rc, err, f"fold 0 (a), target phase: validation loss is {bad} at epoch 3; nothing published")
    assert len(calls) == 3 and "RESULT_DIR" not in out and results(tmp_path) == []


def test_a_pack_member_that_diverges_ends_alone_and_the_others_publish(tmp_path, data, capsys):
    settings = common(tmp_path, data)
    jobs = [dict(settings, fold=0, lr=float(DIVERGES), prefix="p"),  # its base phase diverges
            dict(settings, fold=1, prefix="p"),
            dict(settings, fold=2, lr=float(DIVERGES), mode="target_only", prefix="p")]  # its target phase
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps(jobs))
    assert pack_train.main([str(path)]) == 2
    out, err = capsys.readouterr()
    assert [line for line in out.splitlines() if line.startswith(("MEMBER_DONE", "RESULT_DIR"))] == [
        f"RESULT_DIR {tmp_path / 'exp' / 'p' / 'fold1_b'}", "MEMBER_DONE 1"]
    lines = err.strip().splitlines()
    assert lines[0].startswith("member 0: error: fold 0 (a), base phase: validation loss is nan at epoch 1")
    assert lines[1].startswith("member 2: error: fold 2 (c), target phase: validation loss is nan")
    assert ": error: member(s) 0, 2 ended on a validation loss that is not finite" in lines[2] and len(lines) == 3
    assert results(tmp_path) == ["p/fold1_b"]
    key = base_cache.key_for_args(engine_cli.build_parser(True).parse_args(argv_of(jobs[1])))
    assert cache_files(tmp_path) == [key, f"{key}.lock"]  # fold 1's base only (fold 0's lr is in its key)
    # The NaN members shared its steps: member 1 still trained exactly as alone.
    solo = dict(jobs[1], experiments_dir=str(tmp_path / "solo"), base_cache_dir=str(tmp_path / "solo_cache"))
    assert run(argv_of(solo), capsys)[0] == 0
    curves = [json.loads((root / "p" / "fold1_b" / "losses.json").read_text())
              for root in (tmp_path / "exp", tmp_path / "solo")]
    for name in ("base_val_loss", "target_val_loss"):
        packed, alone = ([v for v in c[name] if v is not None] for c in curves)
        assert packed == pytest.approx(alone, rel=1e-4), name


# ---------------------------------------------------------------- B: the CPU kernels in the base key

def test_reference_kernels_never_reuse_a_base_trained_with_the_fast_ones(tmp_path, data, capsys):
    settings = dict(common(tmp_path, data), fold=1, max_epochs=1)
    origin = {}
    for prefix, kernels, trained in (("fast", "fast", True), ("reference", "reference", True),
                                     ("again", "fast", False)):
        rc, out, err = run(argv_of(settings, prefix=prefix, cpu_kernels=kernels), capsys)
        assert rc == 0, err
        assert ("BASE_TRAINED" in out) is trained, (prefix, out)
        record = json.loads((tmp_path / "exp" / prefix / "fold1_b" / "provenance.json").read_text())
        origin[prefix] = record["base_model"]
        assert record["kernels"] == ("historic" if kernels == "reference" else "fast")
    # What produced the base each fold started from, whether trained there or reused.
    assert origin["fast"]["kernels"] == "fast" and origin["reference"]["kernels"] == "historic"
    assert origin["again"] == origin["fast"]
    assert len([name for name in cache_files(tmp_path) if not name.endswith(".lock")]) == 2


def test_the_kernels_enter_the_key_only_as_reference_and_stay_in_a_base_job(tmp_path):
    key = base_cache.key_for_args  # the runner's and the grid's function: no data needed
    parse = engine_cli.build_parser(True).parse_args
    plain = ["--data_path", str(tmp_path / "absent"), "--participants", "a", "b", "c"]
    assert key(parse(plain + ["--cpu_kernels", "fast"])) == key(parse(plain))  # keys made before stay
    assert key(parse(plain + ["--cpu_kernels", "reference"])) != key(parse(plain))
    assert "cpu_kernels" not in flags.not_in_base_job()
    settings = flags.settings_with_defaults({"cpu_kernels": "reference"})
    assert flags.base_key_values(settings)["cpu_kernels"] == "reference"


# ---------------------------------------------------------------- C: one line instead of a traceback

def test_one_participant_with_a_base_phase_is_one_line(tmp_path, data, capsys):
    settings = dict(common(tmp_path, data), participants=["a"], prefix="p")
    for extra in ({}, {"mode": "base_only"}, {"print_base_key": True}):
        rc, out, err = run(argv_of(settings, **extra), capsys)
        one_line_error(rc, err, "trains a base model on the participants other than the target a",
                       "--mode target_only")
    assert results(tmp_path) == [] and cache_files(tmp_path) == []
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps([settings]))
    assert pack_train.main([str(path)]) == 2
    assert "other than the target a" in capsys.readouterr().err
    rc, out, err = run(argv_of(settings, mode="target_only", max_epochs=1), capsys)
    assert rc == 0, err  # a fold without a base phase needs no other participant


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_model_takes_windows_from_its_minimum(name):
    model = build_model(name, 3).eval()
    need = model.min_window()
    model(torch.zeros(2, 3, need))
    if need > 1:
        with pytest.raises(RuntimeError):
            model(torch.zeros(2, 3, need - 1))


def test_windows_too_short_for_the_model_are_one_line_before_any_training(tmp_path, capsys):
    data = tmp_path / "short"
    write_tiny_dataset(data, participants=("a", "b", "c"), window=3, sizes=(16, 8, 8))
    settings = dict(common(tmp_path, data), prefix="p")
    rc, out, err = run(argv_of(settings), capsys)
    one_line_error(rc, err, f"{data}: windows of 3 samples are too short for --model test", "at least 4")
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps([dict(settings, fold=0), dict(settings, fold=1)]))
    assert pack_train.main([str(path)]) == 2
    assert "at least 4" in capsys.readouterr().err
    assert results(tmp_path) == [] and cache_files(tmp_path) == []
    rc, out, err = run(argv_of(settings, model="test_pool4", max_epochs=1), capsys)
    assert rc == 0, err  # ceil-mode pooling takes any window


def test_a_failed_training_leaves_no_lock_file(tmp_path):
    def fails():
        raise RuntimeError("the training broke")
    with pytest.raises(RuntimeError):
        base_cache.get_or_train(tmp_path / "cache", "k", {}, {}, fails)
    assert cache_files(tmp_path) == []


def test_a_waiter_on_a_removed_lock_file_locks_the_file_now_there(tmp_path):
    path = tmp_path / "k.lock"
    held, seen = threading.Event(), []

    def failing_holder():
        with pytest.raises(RuntimeError), base_cache.key_lock(path):
            held.set()
            time.sleep(0.3)  # the waiter opens this file and waits on it meanwhile
            raise RuntimeError("the training broke")

    def waiter():
        assert held.wait(timeout=30)
        with base_cache.key_lock(path):
            seen.append(path.exists() and not flock_is_free(path))
    threads = [threading.Thread(target=failing_holder, daemon=True), threading.Thread(target=waiter, daemon=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert seen == [True]  # it holds the lock of the file at the path, not of the removed one


def test_a_pack_batch_far_above_the_data_holds_only_the_data(tmp_path, data, capsys, monkeypatch):
    rows = []
    init = packed_step.PackedStep.__init__

    def records_its_buffers(self, *args, **kwargs):
        init(self, *args, **kwargs)
        rows.append(self.x.shape[1])
    monkeypatch.setattr(packed_step.PackedStep, "__init__", records_its_buffers)
    settings = dict(common(tmp_path, data), batch_size=10 ** 8, no_base_cache=True, prefix="p")
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps([dict(settings, fold=0), dict(settings, fold=1, mode="target_only")]))
    assert pack_train.main([str(path)]) == 0, capsys.readouterr().err
    # base: b and c's 2 x (16 + 8) train+val windows; target: fold 0's base + target windows, 48 + 16
    assert rows == [48, 64]
    assert results(tmp_path) == ["p/fold0_a", "p/fold1_b"]
