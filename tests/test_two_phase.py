"""Two-phase runs: every base model trained once for the whole cluster, before the jobs that need it.

Real training (oct1_train.py on tiny data, 2 epochs a phase) over real sshd servers on
127.0.0.1 and 127.0.0.2, fresh ones per test so each host's base-model store starts
empty. A training is counted three ways: the engine's "base model KEY: training" line
in the job logs, the `KEY.lock` file the store creates only when a job trains there
(a reused or copied entry makes none), and the runner's own report.
"""
import hashlib
import json
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import generate_jobs
import run_distributed_training as rdt
from conftest import write_json, write_known_hosts
from engine import base_cache
from runner.jobs import BASE_CACHE_DIR
from test_remote import ledger, wait_for, write_cluster
from tiny_data import write_tiny_dataset

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "oct1_train.py"
TRAINED = re.compile(r"base model (\w+): training")
FIXED = {"max_epochs": 2, "early_stopping_patience": 2, "early_stopping_patience_target": 2,
         "device": "cpu", "batch_size": 8, "model": "test"}
ONE_THREAD = {"env": {"OMP_NUM_THREADS": 1}}  # several jobs share the 2 cores


@pytest.fixture
def hosts(start_sshd, tmp_path):
    """Two fresh hosts and a known_hosts file naming them."""
    pair = start_sshd("127.0.0.1"), start_sshd("127.0.0.2")
    return pair, write_known_hosts(tmp_path / "known_hosts", *pair)


@pytest.fixture
def data(tmp_path):
    return write_tiny_dataset(tmp_path / "data")


def generate(folder, grid, folds, **fixed):
    """A jobs file made by generate_jobs.py, as users make them: (path, jobs)."""
    spec = {"prefix": "tp", "folds": folds, "fixed": dict(FIXED, **fixed), "grid": grid}
    path = folder / "jobs.json"
    argv = [write_json(folder / "grid.json", spec), "-o", str(path), "--script", str(SCRIPT)]
    assert generate_jobs.main(argv) == 0
    return str(path), json.loads(path.read_text())


def trainings(run_dir):
    """Base key: "training" lines over every job log of the run folder (all runs, all attempts)."""
    return Counter(m.group(1) for log in Path(run_dir, "logs").glob("*.log")
                   for m in TRAINED.finditer(log.read_text()))


def stores_that_trained(servers, key):
    return [s.address for s in servers if (s.workdir / BASE_CACHE_DIR / f"{key}.lock").exists()]


def report(folder):
    return json.loads((folder / "runs" / "jobs" / "run_log.json").read_text())


def assert_carries_the_stored_base(folder, job):
    """The job's result came home, reused its base model, and shows that model's own curves."""
    result = next((folder / "experiments" / job["prefix"]).glob(f"fold{job['fold']}_*"))
    metrics = json.loads((result / "metrics.json").read_text())
    losses = json.loads((result / "losses.json").read_text())
    entry = folder / BASE_CACHE_DIR / job["base_key"]
    stored = json.loads((entry / "losses.json").read_text())
    stored_metrics = json.loads((entry / "metrics.json").read_text())
    assert metrics["base_model_reused"] is True and metrics["base_key"] == job["base_key"]
    epochs = len(stored["train_loss"])
    assert metrics["transition_epoch"] == losses["transition_epoch"] == epochs
    assert metrics["best_base_val_loss"] == stored_metrics["best_val_loss"]
    for curve, values in stored.items():
        assert losses[f"base_{curve}"][:epochs] == values, f"{result}: base_{curve}"


def test_dry_run_prints_the_phases(data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    jobs_path, jobs = generate(tmp_path, {"mode": ["target_only_fine_tuning", "target_only"],
                                          "target_data_pct": [0.5, 1.0]}, [0, 1],
                               data_path=str(tmp_path / "data"))
    keys = sorted({job["base_key"] for job in jobs if "base_key" in job})
    assert len(jobs) == 8 and len(keys) == 2
    cluster = write_json(tmp_path / "cluster.json", {
        "servers": [{"host": "here", "local": True, "gpus": [0], "pack": 1}], "script_path": str(SCRIPT)})
    argv = ["--cluster-config", cluster, "--jobs-config", jobs_path, "--dry-run"]
    assert rdt.main(argv) == 0
    out = capsys.readouterr().out
    assert "# phase 1: 2 base jobs; phase 2: 4 dependent jobs (+ 4 independent)" in out
    base_lines = [line for line in out.splitlines() if "--mode base_only" in line]
    assert len(base_lines) == 2 and not any("--target_data_pct" in line for line in base_lines)
    assert out.index("base-") < out.index("--mode target_only")  # phase 1 comes first

    # A base model already complete in the local cache is not planned again.
    entry = tmp_path / BASE_CACHE_DIR / keys[0]
    entry.mkdir(parents=True)
    for name in base_cache.ENTRY_FILES:
        (entry / name).write_text("{}")
    checksum = hashlib.sha256(b"{}").hexdigest()
    (entry / "checksums.json").write_text(json.dumps({name: checksum for name in base_cache.ENTRY_FILES}))
    assert rdt.main(argv) == 0
    out = capsys.readouterr().out
    assert ("# phase 1: 1 base jobs; phase 2: 4 dependent jobs (+ 4 independent); "
            "1 base models already in the local cache") in out
    assert f"base-{keys[0]}" not in out and f"base-{keys[1]}" in out
    assert not (tmp_path / "runs").exists()


@pytest.mark.ssh
def test_three_folds_four_variants_over_two_hosts_train_three_base_models(hosts, user_key, data, tmp_path,
                                                                        monkeypatch):
    servers, known = hosts
    jobs_path, jobs = generate(tmp_path, {"mode": ["full_fine_tuning", "target_only_fine_tuning"],
                                          "target_data_pct": [0.5, 1.0]}, [0, 1, 2],
                               data_path=str(tmp_path / "data"))
    keys = {job["base_key"] for job in jobs}
    assert len(jobs) == 12 and len(keys) == 3
    cluster = write_cluster(tmp_path, user_key, known, SCRIPT,
                            [(s, dict(ONE_THREAD, gpus=[0, 1])) for s in servers])
    monkeypatch.chdir(tmp_path)
    assert rdt.main(["--cluster-config", cluster, "--jobs-config", jobs_path, "--quiet"]) == 0

    records = ledger(tmp_path / "runs" / "jobs")
    assert sorted(r["job_id"] for r in records if r["status"] == "ok") == sorted(
        [job["job_id"] for job in jobs] + [f"base-{key}" for key in keys])
    assert trainings(tmp_path / "runs" / "jobs") == {key: 1 for key in keys}
    for key in keys:
        assert len(stores_that_trained(servers, key)) == 1
        assert base_cache.entry_intact(tmp_path / BASE_CACHE_DIR / key)  # the local cache keeps a copy
    figures = report(tmp_path)["base_models"]
    assert (figures["trained"], figures["distinct_keys"], figures["without_sharing"]) == (3, 3, 12)
    assert figures["fetched"] == 3  # neither host shares our files: every base model came home
    # 3 keys over 2 hosts: some host ran a job whose base model was trained on the other one.
    assert sum(figures["sent"].values()) >= 1
    for job in jobs:
        assert_carries_the_stored_base(tmp_path, job)


@pytest.mark.slow
def test_a_failing_base_blocks_only_its_dependents(data, tmp_path, capsys, monkeypatch):
    good, broken = tmp_path / "data", tmp_path / "broken"
    shutil.copytree(good, broken)
    (broken / "b_train.pt").write_bytes(b"not a tensor file")  # a base participant of fold 0
    jobs_path, jobs = generate(tmp_path, {"data_path": [str(good), str(broken)],
                                          "target_data_pct": [0.5, 1.0]}, [0],
                               mode="target_only_fine_tuning", participants=data)
    bad_key = next(job["base_key"] for job in jobs if job["data_path"] == str(broken))
    good_key = next(job["base_key"] for job in jobs if job["data_path"] == str(good))
    cluster = write_json(tmp_path / "cluster.json", {
        "servers": [dict(ONE_THREAD, host="localhost", local=True, gpus=[0, 1])], "script_path": str(SCRIPT)})
    argv = ["--cluster-config", cluster, "--jobs-config", jobs_path, "--quiet"]
    monkeypatch.chdir(tmp_path)
    assert rdt.main(argv + ["--retries", "1"]) == 1
    out = capsys.readouterr().out
    assert f"2 blocked by base {bad_key}" in out
    records = ledger(tmp_path / "runs" / "jobs")
    statuses = {r["job_id"]: r["status"] for r in records}
    for job in jobs:
        expected = "blocked" if job["base_key"] == bad_key else "ok"
        assert statuses[job["job_id"]] == expected
    assert [r["status"] for r in records if r["job_id"] == f"base-{bad_key}"] == ["failed", "failed"]
    blocked = [r for r in records if r["status"] == "blocked"]
    assert {r["error"] for r in blocked} == {f"blocked by base {bad_key}"} and len(blocked) == 2
    assert not any(job["data_path"] == str(broken) and (tmp_path / "experiments" / job["prefix"]).exists()
                   for job in jobs)

    # Repaired data: a rerun retries the base model and its dependents, and nothing else.
    shutil.copy(good / "b_train.pt", broken / "b_train.pt")
    assert rdt.main(argv) == 0
    again = ledger(tmp_path / "runs" / "jobs")[len(records):]
    assert sorted((r["job_id"], r["status"]) for r in again) == sorted(
        [(f"base-{bad_key}", "ok")] + [(job["job_id"], "ok") for job in jobs if job["base_key"] == bad_key])
    assert trainings(tmp_path / "runs" / "jobs") == {good_key: 1, bad_key: 1}
    for job in jobs:
        assert_carries_the_stored_base(tmp_path, job)


@pytest.mark.ssh
def test_a_rerun_after_a_kill_trains_no_base_model_twice(hosts, user_key, data, tmp_path, monkeypatch):
    servers, known = hosts
    # overwrite: the kill may land after a job published its folder on its host but before
    # that folder came home; its rerun must replace it.
    jobs_path, jobs = generate(tmp_path, {"target_data_pct": [0.5, 1.0]}, [0, 1],
                               mode="target_only_fine_tuning", data_path=str(tmp_path / "data"),
                               overwrite=True)
    keys = {job["base_key"] for job in jobs}
    cluster = write_cluster(tmp_path, user_key, known, SCRIPT,
                            [(s, dict(ONE_THREAD, gpus=[0])) for s in servers])
    argv = ["--cluster-config", cluster, "--jobs-config", jobs_path, "--quiet"]
    runner = subprocess.Popen([sys.executable, str(ROOT / "run_distributed_training.py"), *argv],
                              cwd=tmp_path, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "runs" / "jobs"

    def bases_and_a_dependent_done():
        done = {r["job_id"] for r in ledger(run_dir) if r["status"] == "ok"} \
            if (run_dir / "ledger.jsonl").exists() else set()
        return {f"base-{key}" for key in keys} <= done and any(job["job_id"] in done for job in jobs)

    wait_for(bases_and_a_dependent_done, 120, "the base models and a dependent job")
    runner.send_signal(signal.SIGKILL)  # no chance to clean up or write anything more
    runner.wait(30)
    first = ledger(run_dir)
    assert sum(r["status"] == "ok" for r in first) < len(jobs) + len(keys)  # work was left over

    monkeypatch.chdir(tmp_path)
    assert rdt.main(argv) == 0
    again = ledger(run_dir)[len(first):]
    assert sorted(r["job_id"] for r in again if r["status"] == "cached") == sorted(f"base-{k}" for k in keys)
    assert not [r for r in again if r["job_id"].startswith("base-") and r["status"] != "cached"]
    assert trainings(run_dir) == {key: 1 for key in keys}
    assert all(len(stores_that_trained(servers, key)) == 1 for key in keys)
    assert report(tmp_path)["base_models"]["trained"] == 0
    for job in jobs:
        assert_carries_the_stored_base(tmp_path, job)


@pytest.mark.ssh
def test_shared_fs_hosts_receive_no_copies(hosts, user_key, data, tmp_path, monkeypatch):
    (shared, other), known = hosts
    jobs_path, jobs = generate(tmp_path, {"target_data_pct": [1.0]}, [0, 1, 2],
                               mode="target_only_fine_tuning", data_path=str(tmp_path / "data"))
    keys = {job["base_key"] for job in jobs}
    # The shared host works in this very folder, as an NFS home would make it. 3 slots for
    # 3 base jobs: each slot takes one, so both hosts train some.
    cluster = write_cluster(tmp_path, user_key, known, SCRIPT,
                            [(shared, dict(ONE_THREAD, gpus=[0, 1], shared_fs=True, workdir=str(tmp_path))),
                             (other, dict(ONE_THREAD, gpus=[0]))])
    monkeypatch.chdir(tmp_path)
    assert rdt.main(["--cluster-config", cluster, "--jobs-config", jobs_path, "--quiet"]) == 0

    trained_on = Counter(r["host"] for r in ledger(tmp_path / "runs" / "jobs")
                         if r["job_id"].startswith("base-") and r["status"] == "ok")
    assert trained_on == {shared.address: 2, other.address: 1}
    figures = report(tmp_path)["base_models"]
    assert figures["fetched"] == 1  # only the other host's base model was copied home
    assert shared.address not in figures["sent"]  # and none was sent to the shared host
    assert trainings(tmp_path / "runs" / "jobs") == {key: 1 for key in keys}
    assert not list((tmp_path / BASE_CACHE_DIR).glob(".*"))  # no temporary copy left behind
    for job in jobs:
        assert_carries_the_stored_base(tmp_path, job)


@pytest.mark.slow
def test_a_key_computed_differently_at_run_time_is_caught(data, tmp_path, capsys, monkeypatch):
    jobs_path, jobs = generate(tmp_path, {"target_data_pct": [1.0]}, [0], mode="target_only_fine_tuning",
                               data_path=str(tmp_path / "data"))
    jobs[0]["base_key"] = "0123456789abcdef0123"  # as if generated by other code
    write_json(jobs_path, jobs)
    cluster = write_json(tmp_path / "cluster.json", {
        "servers": [dict(ONE_THREAD, host="localhost", local=True, gpus=[0])], "script_path": str(SCRIPT)})
    monkeypatch.chdir(tmp_path)
    assert rdt.main(["--cluster-config", cluster, "--jobs-config", jobs_path, "--quiet"]) == 1
    records = ledger(tmp_path / "runs" / "jobs")
    base = next(r for r in records if r["job_id"] == "base-0123456789abcdef0123")
    assert base["status"] == "failed" and "computed base key" in base["error"]
    assert [r["status"] for r in records if r["job_id"] == jobs[0]["job_id"]] == ["blocked"]
