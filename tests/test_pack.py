"""pack_train.py: several folds trained together give, member by member, the solo runs' results.

Tiny data on the CPU, one torch thread (conftest). Solo runs call engine_cli.main()
(what oct1_train.py does); packs call pack_train.main() in-process, except the crash
test, which kills a pack subprocess.
"""
import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pack_train
from engine import base_cache, cuda_step
from engine import cli as engine_cli
from engine import fold as engine_fold
from engine.adamw import StackedAdamW
from engine.flags import job_argv
from engine.models import build_model
from engine.pack import Store, read_jobs
from engine.packed_step import PackedStep
from tiny_data import write_tiny_dataset

ROOT = Path(__file__).resolve().parent.parent
TIMING = {"total_time_s", "train_windows_per_s"}
# Hyperparameters that differ between a solo run and a pack member by construction.
NOT_COMPARED = {"prefix", "base_cache_dir", "script", "pack_size", "pack_id"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pack_data")
    write_tiny_dataset(folder, participants=("a", "b", "c", "d"), window=32, sizes=(20, 8, 8))
    return folder


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    """Labels shuffled: the validation loss soon stops improving, so early stopping fires."""
    folder = tmp_path_factory.mktemp("pack_noisy")
    write_tiny_dataset(folder, participants=("a", "b", "c", "d"), window=32, sizes=(20, 8, 8), seed=1)
    g = torch.Generator().manual_seed(5)
    for path in sorted(folder.glob("*.pt")):
        X, y = torch.load(path, weights_only=True)
        torch.save((X, y[torch.randperm(len(y), generator=g)]), path)
    return folder


def shared(data, exp, cache, epochs=3):
    return {"data_path": str(data), "experiments_dir": str(exp), "base_cache_dir": str(cache), "device": "cpu",
            "batch_size": 8, "max_epochs": epochs}


# Different folds, seeds and learning rates; one target_only, one with --target_batch_pct.
MEMBERS = [
    {"fold": 0, "seed": 1, "lr": 1e-3, "mode": "full_fine_tuning"},
    {"fold": 1, "seed": 2, "lr": 3e-3, "mode": "target_only", "target_data_pct": 0.5},
    {"fold": 2, "seed": 3, "lr": 2e-3, "mode": "full_fine_tuning", "target_batch_pct": 0.25,
     "n_base_participants": 2},
]


def solo(job, prefix):
    assert engine_cli.main(job_argv(dict(job, prefix=prefix)), enhanced=True) == 0


def pack(jobs, path, prefix="pack"):
    path.write_text(json.dumps([dict(job, prefix=prefix) for job in jobs]))
    return pack_train.main([str(path)])


def read(folder):
    return {name: json.loads((folder / name).read_text())
            for name in ("hyperparameters.json", "metrics.json", "losses.json")}


def largest_difference(a, b, where):
    """Compare two results: same keys, numbers within 1e-5 relative, the rest equal; the largest relative gap."""
    if isinstance(a, float) or isinstance(b, float):
        gap = abs(a - b) / max(abs(a), abs(b), 1e-12)
        assert gap <= 1e-5, f"{where}: {a} vs {b}"
        return gap
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        return max([largest_difference(a[k], b[k], f"{where}.{k}") for k in a], default=0.0)
    if isinstance(a, list):
        assert len(a) == len(b), where
        return max([largest_difference(x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b))], default=0.0)
    assert a == b, f"{where}: {a} vs {b}"
    return 0.0


def compare(solo_folder, pack_folder):
    ours, theirs = read(solo_folder), read(pack_folder)
    assert sorted(p.name for p in solo_folder.iterdir()) == sorted(p.name for p in pack_folder.iterdir())
    hyper_solo = {k: v for k, v in ours["hyperparameters.json"].items() if k not in NOT_COMPARED}
    hyper_pack = {k: v for k, v in theirs["hyperparameters.json"].items() if k not in NOT_COMPARED}
    assert hyper_solo == hyper_pack
    metrics = [{k: v for k, v in r["metrics.json"].items() if k not in TIMING} for r in (ours, theirs)]
    for key in ("best_base_epoch", "best_target_epoch", "transition_epoch", "best_target_model_target_test_f1",
                "best_base_model_target_test_f1"):
        assert metrics[0][key] == metrics[1][key], key
    return max(largest_difference(*metrics, "metrics"),
               largest_difference(ours["losses.json"], theirs["losses.json"], "losses"))


def test_pack_of_three_equals_the_solo_runs(data, tmp_path):
    exp = tmp_path / "exp"
    jobs = [dict(shared(data, exp, tmp_path / "pack_cache"), **m) for m in MEMBERS]
    for job in jobs:
        solo(dict(job, base_cache_dir=str(tmp_path / "solo_cache")), "solo")
    assert pack(jobs, tmp_path / "jobs.json") == 0
    gaps = []
    for job, target in zip(jobs, "abc"):
        name = f"fold{job['fold']}_{target}"
        gaps.append(compare(exp / "solo" / name, exp / "pack" / name))
        hyper = read(exp / "pack" / name)["hyperparameters.json"]
        assert hyper["pack_size"] == 3 and len(hyper["pack_id"]) == 12
    print(f"largest relative difference pack vs solo: {max(gaps):.2e}")
    # The base models the pack trained are in its cache, as the solo runs' are in theirs.
    assert sorted(p.name for p in (tmp_path / "pack_cache").iterdir() if p.is_dir()) == \
        sorted(p.name for p in (tmp_path / "solo_cache").iterdir() if p.is_dir())


def test_pack_with_the_original_preset_and_augmentation_shares_one_base_model(data, tmp_path):
    # --preset original: batch augmentation, validation subsets, floor counts, the "shortest" epoch rule.
    exp = tmp_path / "exp"
    common = dict(shared(data, exp, tmp_path / "pack_cache"), preset="original", use_augmentation=True, seed=7)
    jobs = [dict(common, fold=1, mode="full_fine_tuning", target_batch_pct=0.5),
            dict(common, fold=1, mode="target_only_fine_tuning")]
    for job in jobs:
        solo(dict(job, base_cache_dir=str(tmp_path / "solo_cache")), "solo_" + job["mode"])
    for job in jobs:
        job["prefix"] = "pack_" + job["mode"]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    assert pack_train.main([str(tmp_path / "jobs.json")]) == 0
    for job in jobs:
        compare(exp / ("solo_" + job["mode"]) / "fold1_b", exp / ("pack_" + job["mode"]) / "fold1_b")
    assert len([p for p in (tmp_path / "pack_cache").iterdir() if p.is_dir()]) == 1  # one base model for both


def test_pack_refuses_one_folder_twice_and_a_bad_jobs_file(data, tmp_path, capsys):
    twice = dict(shared(data, tmp_path / "exp", tmp_path / "cache"), fold=0)
    assert pack([twice, dict(twice, seed=9)], tmp_path / "jobs.json") == 2
    assert "two members" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{not json")
    assert pack_train.main([str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.json" in err
    assert not (tmp_path / "exp").exists()


def test_member_that_stops_first_leaves_the_others_unchanged(noisy, tmp_path):
    exp = tmp_path / "exp"
    base = shared(noisy, exp, tmp_path / "cache", epochs=6)
    # Patience 1 with a high learning rate stops early; the other runs its 6 epochs.
    quick = dict(base, fold=0, seed=4, lr=0.05, mode="target_only", early_stopping_patience_target=1)
    slow = dict(base, fold=3, seed=5, lr=1e-3, mode="target_only", early_stopping_patience_target=50)
    assert pack([quick, slow], tmp_path / "pair.json", "pair") == 0
    assert pack([slow], tmp_path / "alone.json", "alone") == 0
    quick_epochs = read(exp / "pair" / "fold0_a")["metrics.json"]["target_epochs_run"]
    assert quick_epochs < 6
    assert read(exp / "pair" / "fold3_d")["metrics.json"]["target_epochs_run"] == 6
    compare(exp / "alone" / "fold3_d", exp / "pair" / "fold3_d")
    solo(quick, "solo")
    compare(exp / "solo" / "fold0_a", exp / "pair" / "fold0_a")


def killed_at_first(jobs, start):
    """Run pack_train.py on the jobs file in a subprocess and SIGKILL it as soon as it prints a
    line beginning with `start`; the lines it printed (stdout and stderr), that one last."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "pack_train.py"), str(jobs)], cwd=jobs.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith(start):
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait()
    return lines


def test_killed_pack_keeps_finished_members_and_a_rerun_trains_the_rest(noisy, tmp_path):
    exp = tmp_path / "exp"
    base = shared(noisy, exp, tmp_path / "cache", epochs=400)
    quick = dict(base, fold=0, seed=4, mode="target_only", early_stopping_patience_target=1, lr=0.05)
    slow = [dict(base, fold=f, seed=f, mode="target_only", early_stopping_patience_target=400) for f in (1, 2)]
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps([dict(job, prefix="p") for job in [quick] + slow]))
    killed_at_first(jobs, "RESULT_DIR")  # the first member's folder is announced once it is published
    finished = exp / "p" / "fold0_a"
    assert sorted(p.name for p in (exp / "p").iterdir()) == ["fold0_a"]  # no half-written sibling either
    assert {"hyperparameters.json", "metrics.json", "losses.json", "best_target_model.pt"} <= \
        {p.name for p in finished.iterdir()}
    before = finished.stat().st_mtime_ns
    for job in slow:  # make the rerun short: the same members with fewer epochs
        job["max_epochs"] = 2
    quick["max_epochs"] = 2
    assert pack([quick] + slow, jobs, "p") == 0
    assert sorted(p.name for p in (exp / "p").iterdir()) == ["fold0_a", "fold1_b", "fold2_c"]
    assert finished.stat().st_mtime_ns == before  # the finished member was skipped, not retrained


def test_a_base_model_is_stored_and_announced_as_it_stops_not_when_the_base_pack_ends(noisy, tmp_path):
    cache = tmp_path / "cache"
    base = dict(shared(noisy, tmp_path / "exp", cache, epochs=400), fold=0, mode="base_only", prefix="p")
    # Different seeds, learning rates and patiences: two base keys, one soon stopped, one training on.
    quick = dict(base, seed=4, lr=0.05, early_stopping_patience=1)
    slow = dict(base, seed=5, early_stopping_patience=400)
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps([slow, quick]))
    quick_key, slow_key = [base_cache.key_for_args(args) for args in read_jobs(jobs, None)[::-1]]
    lines = killed_at_first(jobs, "MEMBER_DONE")
    assert lines[-3:] == [f"BASE_KEY {quick_key}", f"BASE_MODEL {cache / quick_key}", "MEMBER_DONE 1"], lines
    assert f"BASE_TRAINED {quick_key}" in lines  # the runner counts the training
    assert base_cache.entry_intact(cache / quick_key)
    assert not (cache / slow_key).exists()


@pytest.mark.parametrize("flag, value", [("batch_size", 16), ("model", "test_pool4"), ("max_epochs", 5)])
def test_incompatible_members_are_refused(data, tmp_path, capsys, flag, value):
    job = dict(shared(data, tmp_path / "exp", tmp_path / "cache"), fold=0)
    other = dict(job, fold=1, **{flag: value})
    assert pack([job, other], tmp_path / "jobs.json") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--{flag} {value}" in err, err
    assert not (tmp_path / "exp").exists()


# ---------------------------------------------------------------- the runner's interface

def protocol_lines(out):
    """The lines of the output protocol the runner parses, in order."""
    return [line for line in out.splitlines() if line.split(" ")[0] in ("RESULT_DIR", "BASE_KEY", "BASE_MODEL",
                                                                         "MEMBER_DONE")]


def test_json_members_print_member_done_after_their_lines_and_none_when_skipped(data, tmp_path, capsys):
    exp, cache = tmp_path / "exp", tmp_path / "cache"
    common = dict(shared(data, exp, cache, epochs=2), prefix="p")
    jobs = [dict(common, fold=2, mode="base_only"),
            dict(common, fold=1, mode="target_only"),  # its folder exists: skipped, keeps position 1
            dict(common, fold=2, mode="full_fine_tuning")]
    (exp / "p" / "fold1_b").mkdir(parents=True)
    assert pack_train.main(["--json", json.dumps(jobs)]) == 0
    out = capsys.readouterr().out
    (key,) = [p.name for p in cache.iterdir() if p.is_dir()]
    assert protocol_lines(out) == [f"BASE_KEY {key}", f"BASE_MODEL {cache / key}", "MEMBER_DONE 0",
                                   f"RESULT_DIR {exp / 'p' / 'fold2_c'}", "MEMBER_DONE 2"]
    assert f"RESULT_EXISTS {exp / 'p' / 'fold1_b'}\n{exp / 'p' / 'fold1_b'}: result folder exists" in out
    assert list((exp / "p" / "fold1_b").iterdir()) == []


def test_overwrite_and_the_run_token_are_per_member(data, tmp_path, capsys):
    exp = tmp_path / "exp"
    common = dict(shared(data, exp, tmp_path / "cache", epochs=1), prefix="p", mode="target_only")
    tokens = {"fold0_a": None, "fold1_b": "run1.b", "fold2_c": "run1.c", "fold3_d": None}
    for name, token in tokens.items():
        (exp / "p" / name).mkdir(parents=True)
        (exp / "p" / name / "hyperparameters.json").write_text(json.dumps({"run_token": token}))
    jobs = [dict(common, fold=0, overwrite=True),  # the user says so
            dict(common, fold=1, run_token="run1.b"),  # its own earlier attempt's folder
            dict(common, fold=2, run_token="run2.c"),  # another run's: kept
            dict(common, fold=3)]  # nobody's: kept
    assert pack_train.main(["--json", json.dumps(jobs)]) == 0
    out = capsys.readouterr().out
    assert protocol_lines(out) == [f"RESULT_DIR {exp / 'p' / 'fold0_a'}", "MEMBER_DONE 0",
                                   f"RESULT_DIR {exp / 'p' / 'fold1_b'}", "MEMBER_DONE 1"]
    for name in ("fold0_a", "fold1_b"):
        assert {"hyperparameters.json", "metrics.json"} <= {p.name for p in (exp / "p" / name).iterdir()}
    assert read(exp / "p" / "fold0_a")["hyperparameters.json"]["overwrite"] is True
    assert read(exp / "p" / "fold1_b")["hyperparameters.json"]["run_token"] == "run1.b"
    for name in ("fold2_c", "fold3_d"):
        assert f"RESULT_EXISTS {exp / 'p' / name}" in out
        assert [p.name for p in (exp / "p" / name).iterdir()] == ["hyperparameters.json"]  # kept


def test_a_folder_that_cannot_be_published_ends_the_pack_and_the_finished_members_stay(data, tmp_path, capsys, monkeypatch):
    exp = tmp_path / "exp"
    common = dict(shared(data, exp, tmp_path / "cache", epochs=1), prefix="p", mode="target_only")
    finish_fold = engine_fold.finish_fold

    def appears_first(args, model, device, plan, *rest):
        if args.fold == 1:  # someone else's run writes member 1's folder while the pack trains
            plan.final.mkdir(parents=True)
        return finish_fold(args, model, device, plan, *rest)
    monkeypatch.setattr("engine.pack.finish_fold", appears_first)
    assert pack_train.main(["--json", json.dumps([dict(common, fold=0), dict(common, fold=1)])]) == 2
    captured = capsys.readouterr()
    assert protocol_lines(captured.out) == [f"RESULT_DIR {exp / 'p' / 'fold0_a'}", "MEMBER_DONE 0"]
    assert "appeared during the run" in captured.err and len(captured.err.strip().splitlines()) == 1
    assert (exp / "p" / "fold0_a" / "metrics.json").exists()  # published before: kept
    assert list((exp / "p" / "fold1_b").iterdir()) == []


def test_json_errors_are_one_line_naming_json_and_file_or_json_is_required(data, tmp_path, capsys):
    job = shared(data, tmp_path / "exp", tmp_path / "cache")
    (tmp_path / "jobs.json").write_text(json.dumps([job]))
    cases = [(["--json", "[{"], "--json: not valid JSON"),
             (["--json", "{}"], "--json: expected a non-empty JSON list"),
             (["--json", json.dumps([dict(job, no_such_flag=1)])], "--json: job 0 has unknown flags"),
             ([str(tmp_path / "jobs.json"), "--json", json.dumps([job])], "exactly one of them"),
             ([], "exactly one of them")]
    for argv, message in cases:
        assert pack_train.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "exp").exists()


# ---------------------------------------------------------------- CUDA graphs

def test_cuda_graphs_on_without_cuda_is_a_one_line_error(data, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    job = dict(shared(data, tmp_path / "exp", tmp_path / "cache"), cuda_graphs="on")
    assert pack([job], tmp_path / "jobs.json") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--cuda_graphs on needs a CUDA device" in err, err
    assert not (tmp_path / "exp").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("by_member", [False, True], ids=["vmapped", "by member"])
def test_the_packed_step_keeps_its_state_in_place_and_an_idle_step_changes_nothing(by_member):
    """What capturing the step as a CUDA graph relies on, checked on the CPU (on the vmapped path
    a GPU runs, and on the CPU's own): the warm-up runs before a capture (no member active) change
    nothing, and a step updates every tensor in place, so a replay reads and writes the same memory."""
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    model = build_model("test", 3)
    states = [build_model("test", 3).state_dict() for _ in range(2)]
    stacked = {name: torch.stack([state[name] for state in states]) for name in model.state_dict()}
    params = {name: stacked[name].requires_grad_() for name, _ in model.named_parameters()}
    optimizer = StackedAdamW(params, [1e-2, 1e-2], cpu)
    store = Store({"a": {"train": (torch.randn(3, 3, 32), torch.tensor([1.0, 0.0, 1.0]))}}, cpu)
    step = PackedStep(model, stacked, optimizer, 4, store, [None, None])
    step.by_member = by_member

    def state():
        return [*params.values(), *optimizer.exp_avg.values(), *optimizer.exp_avg_sq.values(), optimizer.steps,
                step.counts]
    before = [t.detach().clone() for t in state()]
    addresses = [t.data_ptr() for t in state()]
    for _ in range(cuda_step.WARMUP_STEPS):
        step.run()
    assert all(torch.equal(a, b) for a, b in zip(before, state()))
    step.load({0: torch.arange(3)}, {}, {})  # member 1 has no batch
    step.run()
    assert [t.data_ptr() for t in state()] == addresses
    assert optimizer.steps.tolist() == [1.0, 0.0] and step.counts[0, 1:].sum() == 3 and not step.counts[1].any()
    for name, p in params.items():
        assert torch.equal(p[1], before[list(params).index(name)][1])  # member 1 unchanged
    assert not all(torch.equal(p[0], states[0][name]) for name, p in params.items())  # member 0 stepped


def needs_cuda(test):
    """A CUDA-only test (marker cuda: bench/gpu_check.py runs them on a lent GPU); skipped without CUDA."""
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")(test))


def agrees_with_eager(eager_folder, folder, graphs_used):
    """Same best epochs, curves within 1e-4 relative (GPU sums are not bit-reproducible)."""
    eager, graphed = read(eager_folder), read(folder)
    assert eager["hyperparameters.json"]["cuda_graphs_used"] is False
    assert graphed["hyperparameters.json"]["cuda_graphs_used"] is graphs_used
    for key in ("transition_epoch", "best_base_epoch", "best_target_epoch", "epoch"):
        assert graphed["losses.json"][key] == eager["losses.json"][key], key
    for key, curve in eager["losses.json"].items():
        if isinstance(curve, list) and key != "epoch":
            for a, b in zip(curve, graphed["losses.json"][key]):
                assert (a is None) == (b is None) and (a is None or math.isclose(a, b, rel_tol=1e-4)), key


@needs_cuda
def test_a_packed_run_with_graphs_gives_the_eager_results(data, tmp_path):
    # The three members of the CPU test: partial batches, fewer batches per epoch, a base phase each.
    exp = tmp_path / "exp"
    for graphs in ("off", "on"):
        jobs = [dict(shared(data, exp, tmp_path / f"cache_{graphs}"), device="cuda", cuda_graphs=graphs, **m)
                for m in MEMBERS]
        assert pack(jobs, tmp_path / "jobs.json", graphs) == 0
    for member, target in zip(MEMBERS, "abc"):
        name = f"fold{member['fold']}_{target}"
        agrees_with_eager(exp / "off" / name, exp / "on" / name, graphs_used=True)


@needs_cuda
def test_a_failed_packed_capture_runs_eagerly_with_auto_and_is_an_error_with_on(data, tmp_path, capsys,
                                                                                  monkeypatch):
    exp = tmp_path / "exp"
    job = dict(shared(data, exp, tmp_path / "cache", epochs=2), device="cuda", fold=1, mode="target_only")
    assert pack([dict(job, cuda_graphs="off")], tmp_path / "jobs.json", "off") == 0
    compute = PackedStep._compute

    def syncs(step):
        compute(step)
        step.counts.sum().item()  # a host sync: a graph cannot capture it
    monkeypatch.setattr(PackedStep, "_compute", syncs)
    capsys.readouterr()
    assert pack([dict(job, cuda_graphs="auto")], tmp_path / "jobs.json", "auto") == 0
    out = capsys.readouterr().out
    assert "CUDA graph capture failed" in out and "runs eagerly" in out
    agrees_with_eager(exp / "off" / "fold1_b", exp / "auto" / "fold1_b", graphs_used=False)  # nothing left behind
    assert pack([dict(job, cuda_graphs="on")], tmp_path / "jobs.json", "on") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--cuda_graphs on: capture failed" in err, err
    assert not (exp / "on").exists()
