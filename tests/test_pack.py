"""pack_train.py: several folds trained together give, member by member, the solo runs' results.

Tiny data on the CPU, one torch thread (conftest). Solo runs call experiment.main()
(what oct1_train.py does); packs call pack_train.main() in-process, except the crash
test, which kills a pack subprocess.
"""
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import experiment
import pack_train
from commands import job_argv
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
    assert experiment.main(job_argv(dict(job, prefix=prefix)), enhanced=True) == 0


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


def test_pack_refuses_dropout_one_folder_twice_and_a_bad_jobs_file(data, tmp_path, capsys):
    job = dict(shared(data, tmp_path / "exp", tmp_path / "cache"), model="medium")
    assert pack([job], tmp_path / "jobs.json") == 2
    assert "dropout" in capsys.readouterr().err
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


def test_killed_pack_keeps_finished_members_and_a_rerun_trains_the_rest(noisy, tmp_path):
    exp = tmp_path / "exp"
    base = shared(noisy, exp, tmp_path / "cache", epochs=400)
    quick = dict(base, fold=0, seed=4, mode="target_only", early_stopping_patience_target=1, lr=0.05)
    slow = [dict(base, fold=f, seed=f, mode="target_only", early_stopping_patience_target=400) for f in (1, 2)]
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps([dict(job, prefix="p") for job in [quick] + slow]))
    proc = subprocess.Popen([sys.executable, str(ROOT / "pack_train.py"), str(jobs)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:  # the first member's folder is announced once it is published
            if line.startswith("RESULT_DIR"):
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait()
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


@pytest.mark.parametrize("flag, value", [("batch_size", 16), ("model", "test_pool4"), ("max_epochs", 5)])
def test_incompatible_members_are_refused(data, tmp_path, capsys, flag, value):
    job = dict(shared(data, tmp_path / "exp", tmp_path / "cache"), fold=0)
    other = dict(job, fold=1, **{flag: value})
    assert pack([job, other], tmp_path / "jobs.json") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--{flag} {value}" in err, err
    assert not (tmp_path / "exp").exists()


def test_gpu_grid_bench_quick_runs_and_prints_its_ratios():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gpu_grid.py"), "--quick"],
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr
    rows = re.findall(r"^\((\w)\) .*?([\d.]+) s\s+(\d+) windows/s\s+x([\d.]+)$", result.stdout, re.MULTILINE)
    assert [row[0] for row in rows] == ["a", "b", "c"], result.stdout
    walls = [float(row[1]) for row in rows]
    for wall, (_, _, _, ratio) in zip(walls, rows):
        assert float(ratio) == pytest.approx(walls[0] / wall, rel=0.02, abs=0.01)


def test_gpu_grid_bench_refuses_without_cuda():
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gpu_grid.py")], capture_output=True,
                            text=True, timeout=120, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "CUDA" in result.stderr
    assert result.stdout == ""
