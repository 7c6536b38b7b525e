"""The SSH runner packs compatible jobs (the cluster config's "pack"): one pack_train.py process
per slot trains several jobs of one phase together; the ledger stays per job, each member is
recorded as it finishes, and a rerun trains only the members that did not finish.

Real training (oct1_train.py's jobs on tiny data, CPU, one thread) on this machine and over a
real sshd on loopback.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_gpu_watch import FakeSmi
from test_pack import noisy  # noqa: F401 (a fixture: labels shuffled, so early stopping fires)

import run_distributed_training as rdt
from conftest import write_json, write_known_hosts
from test_remote import ledger, wait_for, write_cluster
from test_two_phase import ONE_THREAD, SCRIPT, assert_carries_the_stored_base, generate, report
from tiny_data import write_tiny_dataset

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def data(tmp_path):
    return write_tiny_dataset(tmp_path / "data")


def local_cluster(folder, script=SCRIPT, **fields):
    return write_json(folder / "cluster.json", {
        "servers": [{**ONE_THREAD, "host": "here", "local": True, "gpus": 0, **fields}], "script_path": str(script)})


def planned_processes(out):
    """The dry run's processes: [job ids], in the order printed."""
    processes = []
    for line in out.splitlines():
        if line.startswith("["):
            ids = line.split("] ", 1)[1]
            processes.append(ids.split(": ", 1)[1].split() if ids.startswith("pack of ") else [ids])
    return processes


def test_dry_run_packs_only_compatible_jobs_of_one_phase(data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    jobs_path, jobs = generate(tmp_path, {"mode": ["full_fine_tuning", "target_only"]}, [0, 1, 2],
                               data_path=str(tmp_path / "data"))
    odd = [dict(jobs[1], job_id="batch16-a", fold=0, batch_size=16),
           dict(jobs[1], job_id="batch16-b", fold=1, batch_size=16),
           dict(jobs[1], job_id="pool4", model="test_pool4"),
           dict(jobs[1], job_id="medium", model="medium")]  # dropout: never packed
    for job in odd:
        job.pop("base_key", None)
        job["prefix"] = f"odd/{job['job_id']}"  # a result folder of its own
    write_json(jobs_path, jobs + odd)
    argv = ["--cluster-config", local_cluster(tmp_path, pack=8), "--jobs-config", jobs_path, "--dry-run"]
    assert rdt.main(argv) == 0
    out = capsys.readouterr().out
    keys = list(dict.fromkeys(job["base_key"] for job in jobs if "base_key" in job))  # in job order
    assert planned_processes(out) == [[f"base-{key}" for key in keys], [job["job_id"] for job in jobs],
                                      ["batch16-a", "batch16-b"], ["pool4"], ["medium"]]
    assert out.count("pack_train.py --json") == 3 and out.count("oct1_train.py") == 2
    assert "# phase 1: 3 base jobs; phase 2: 3 dependent jobs (+ 7 independent)" in out

    # With pack 1 every job runs alone, as before packs existed.
    argv[1] = local_cluster(tmp_path, pack=1)
    assert rdt.main(argv) == 0
    assert all(len(p) == 1 for p in planned_processes(capsys.readouterr().out))


def test_packs_are_split_fairly_over_the_slots_and_only_oct1_jobs_pack(data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    jobs_path, jobs = generate(tmp_path, {"seed": [1, 2, 3]}, [0, 1], mode="target_only",
                               data_path=str(tmp_path / "data"))
    argv = ["--cluster-config", local_cluster(tmp_path, pack=8, gpus=[0, 1]), "--jobs-config", jobs_path,
            "--dry-run"]
    assert rdt.main(argv) == 0
    out = capsys.readouterr().out
    assert [len(p) for p in planned_processes(out)] == [3, 3]  # two slots: 6 jobs in two packs, not 6 + 0
    assert "[here:0] pack of 3" in out and "[here:1] pack of 3" in out
    argv[1] = local_cluster(tmp_path, pack=8, gpus=[0], slots_per_gpu=2)  # each slot runs its own packs
    assert rdt.main(argv) == 0
    out = capsys.readouterr().out
    assert "[here:0#1] pack of 3" in out and "[here:0#2] pack of 3" in out

    other = ROOT / "train.py"  # the original's CLI: pack_train.py does not stand in for it
    argv[1] = local_cluster(tmp_path, script=other, pack=4)
    assert rdt.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "set \"pack\", but only oct1_train.py jobs can be packed" in err and str(other) in err


@pytest.mark.ssh
def test_packs_over_ssh_train_each_base_once_and_bring_every_member_home(start_sshd, user_key, data,
                                                                        tmp_path, monkeypatch):
    server = start_sshd("127.0.0.1")
    known = write_known_hosts(tmp_path / "known_hosts", server)
    jobs_path, jobs = generate(tmp_path, {"mode": ["full_fine_tuning", "target_only"]}, [0, 1],
                               data_path=str(tmp_path / "data"))
    keys = list(dict.fromkeys(job["base_key"] for job in jobs if "base_key" in job))  # in job order
    assert len(jobs) == 4 and len(keys) == 2
    cluster = write_cluster(tmp_path, user_key, known, SCRIPT, [(server, dict(ONE_THREAD, gpus=0, pack=4))])
    monkeypatch.chdir(tmp_path)
    assert rdt.main(["--cluster-config", cluster, "--jobs-config", jobs_path, "--quiet"]) == 0

    run_dir = tmp_path / "runs" / "jobs"
    starts = [r for r in ledger(run_dir, starts=True) if r["status"] == "started"]
    packs = [r["pack"] for r in starts]
    assert packs[:2] == [[f"base-{key}" for key in keys]] * 2  # phase 1: one process for both bases
    assert packs[2:] == [[job["job_id"] for job in jobs]] * 4  # phase 2: one process for all four
    ok = [r for r in ledger(run_dir) if r["status"] == "ok"]
    assert sorted(r["job_id"] for r in ok) == sorted([job["job_id"] for job in jobs] +
                                                     [f"base-{key}" for key in keys])
    figures = report(tmp_path)["base_models"]
    assert (figures["trained"], figures["distinct_keys"], figures["fetched"]) == (2, 2, 2)
    for job in jobs:  # every member's folder came home whole, from its own pack of four
        result = next((tmp_path / "experiments" / job["prefix"]).glob(f"fold{job['fold']}_*"))
        hyper = json.loads((result / "hyperparameters.json").read_text())
        assert hyper["pack_size"] == 4 and hyper["mode"] == job["mode"]
        if job["mode"] == "full_fine_tuning":
            assert_carries_the_stored_base(tmp_path, job)


def pack_processes(marker):
    """pids of pack_train.py processes whose command line mentions marker."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and "pack_train.py" in cmdline and marker in cmdline:
            found.append(int(proc.name))
    return found


@pytest.mark.slow
def test_a_runner_killed_after_one_member_finished_reruns_only_the_others(noisy, tmp_path):  # noqa: F811
    exp = tmp_path / "experiments"
    base = {"data_path": str(noisy), "device": "cpu", "batch_size": 8, "mode": "target_only", "prefix": "p",
            "max_epochs": 400}
    # Patience 1 at a high learning rate stops within a few epochs; the other two run on.
    jobs = [dict(base, job_id="quick", fold=0, seed=4, lr=0.05, early_stopping_patience_target=1)]
    jobs += [dict(base, job_id=f"slow{f}", fold=f, seed=f, early_stopping_patience_target=400) for f in (1, 2)]
    jobs_path = write_json(tmp_path / "jobs.json", jobs)
    command = [sys.executable, str(ROOT / "run_distributed_training.py"), "--cluster-config",
               local_cluster(tmp_path, pack=3), "--jobs-config", jobs_path, "--quiet"]
    run_dir = tmp_path / "runs" / "jobs"
    runner = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (run_dir / "ledger.jsonl").exists() and any(r["status"] == "ok" for r in ledger(run_dir)),
                 120, "the first member's ok line")
        runner.send_signal(signal.SIGKILL)  # no chance to clean up: the pack dies with its session
    finally:
        runner.kill()
        runner.wait()
    wait_for(lambda: not pack_processes(str(noisy)), 30, "the pack process to end")
    assert [(r["job_id"], r["status"]) for r in ledger(run_dir)] == [("quick", "ok")]
    finished = exp / "p" / "fold0_a"
    assert sorted(p.name for p in (exp / "p").iterdir()) == ["fold0_a"]
    before = finished.stat().st_mtime_ns

    for job in jobs[1:]:  # the same jobs, shorter, so that the rerun is quick
        job["max_epochs"] = 2
    write_json(jobs_path, jobs)
    started = time.time()
    assert subprocess.run(command, cwd=tmp_path, capture_output=True).returncode == 0
    rerun = [r for r in ledger(run_dir, starts=True) if r["start"] >= started]
    assert {(r["job_id"], r["attempt"], r["status"]) for r in rerun} == {
        ("slow1", 2, "started"), ("slow2", 2, "started"), ("slow1", 2, "ok"), ("slow2", 2, "ok")}
    assert all(r["pack"] == ["slow1", "slow2"] for r in rerun)
    assert sorted(p.name for p in (exp / "p").iterdir()) == ["fold0_a", "fold1_b", "fold2_c"]
    assert finished.stat().st_mtime_ns == before  # the finished member was not trained again
    assert os.path.exists(run_dir / "logs" / "slow1.log")


@pytest.mark.slow
def test_a_busy_gpu_is_skipped_until_a_slot_frees_and_it_is_free_again(fake_script, tmp_path):
    smi = FakeSmi(tmp_path)
    smi.show(used=(5000, 0))  # someone else's 5000 MiB on GPU 0 (a process nvidia-smi cannot see)
    cluster = write_json(tmp_path / "cluster.json", {
        "servers": [{"host": "gpuhost", "local": True, "gpus": "auto", "setup": smi.server()["setup"]}],
        "script_path": str(fake_script)})
    block, started = tmp_path / "block", tmp_path / "started"
    block.touch()
    started.mkdir()
    jobs = [{"job_id": "first", "prefix": "g", "fold": 0, "block_file": str(block), "started_dir": str(started)}]
    jobs += [{"job_id": f"next{f}", "prefix": "g", "fold": f, "sleep": 1, "started_dir": str(started)}
             for f in (1, 2)]
    command = [sys.executable, str(ROOT / "run_distributed_training.py"), "--cluster-config", cluster,
               "--jobs-config", write_json(tmp_path / "jobs.json", jobs)]
    runner = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(started.iterdir()) or runner.poll() is not None, 60, "the first job to start")
        assert runner.poll() is None, runner.stderr.read()
        time.sleep(1.5)  # GPU 0's slot would have taken a waiting job by now, were it not busy
        assert len(list(started.iterdir())) == 1
        smi.show(used=(0, 0))  # the other process ended; the runner looks again once a slot frees
        block.unlink()
        _, err = runner.communicate(timeout=120)
    finally:
        runner.kill()
    assert runner.returncode == 0, err
    ran_on = {json.loads(p.read_text())["fold"]: json.loads(p.read_text())["cuda"]
              for p in (tmp_path / "experiments" / "g").glob("*/record.json")}
    assert ran_on[0] == "1" and "0" in (ran_on[1], ran_on[2])
    assert err.count("gpuhost:gpu 0: 5000 MiB in use by other processes") == 1
    assert err.count("gpuhost:gpu 0: free again") == 1 and "gpu 1:" not in err


@pytest.mark.slow
def test_a_failed_pack_runs_its_members_alone_and_charges_only_the_one_that_fails(data, tmp_path, monkeypatch):
    common = {"data_path": str(tmp_path / "data"), "device": "cpu", "batch_size": 8, "max_epochs": 2,
              "early_stopping_patience": 2, "early_stopping_patience_target": 2, "prefix": "alone"}
    jobs = [dict(common, job_id=f"good{f}", fold=f, mode="target_only") for f in (1, 2)]
    # 7 target windows in every batch, but 10% of 24 train windows leaves 2: refused before training.
    jobs.append(dict(common, job_id="bad", fold=0, mode="full_fine_tuning",
                     target_batch_pct=0.9, target_data_pct=0.1))
    monkeypatch.chdir(tmp_path)
    argv = ["--cluster-config", local_cluster(tmp_path, pack=3), "--jobs-config",
            write_json(tmp_path / "jobs.json", jobs), "--quiet"]
    assert rdt.main(argv) == 1
    records = ledger(tmp_path / "runs" / "jobs")
    ends = {(r["job_id"], r["attempt"]): r for r in records}
    for job_id in ("good1", "good2", "bad"):
        first = ends[job_id, 1]  # in the pack of three, which the bad member ended at once
        assert first["status"] == "requeued" and "it runs alone next" in first["error"]
        assert sorted(first["pack"]) == ["bad", "good1", "good2"]
    assert ends["good1", 2]["status"] == ends["good2", 2]["status"] == "ok"
    assert ends["bad", 2]["status"] == "failed" and "pack" not in ends["bad", 2]
    assert ("bad", 3) not in ends  # --retries 0: the failure alone is the one charged
    assert sorted(p.name for p in (tmp_path / "experiments" / "alone").iterdir()) == ["fold1_b", "fold2_c"]


@pytest.mark.ssh
def test_a_pack_holding_the_last_ssh_session_still_brings_its_members_home(start_sshd, user_key, data, tmp_path,
                                                                          monkeypatch):
    # max_sessions 2 leaves one session for jobs: the pack holds it while a member's copy needs one.
    server = start_sshd("127.0.0.1")
    known = write_known_hosts(tmp_path / "known_hosts", server)
    jobs_path, jobs = generate(tmp_path, {"seed": [1]}, [0, 1], mode="target_only", data_path=str(tmp_path / "data"))
    cluster = write_cluster(tmp_path, user_key, known, SCRIPT,
                            [(server, dict(ONE_THREAD, gpus=0, pack=2, max_sessions=2))])
    monkeypatch.chdir(tmp_path)
    assert rdt.main(["--cluster-config", cluster, "--jobs-config", jobs_path, "--quiet", "--timeout", "300"]) == 0
    assert sorted(r["job_id"] for r in ledger(tmp_path / "runs" / "jobs") if r["status"] == "ok") == \
        sorted(job["job_id"] for job in jobs)
    assert len(list((tmp_path / "experiments").glob(f"{jobs[0]['prefix']}/fold*"))) == 2
