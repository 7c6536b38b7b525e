"""The Slurm backend against a real single-node Slurm (munge, slurmctld, slurmd on loopback).

Skipped when Slurm is not installed, unless REQUIRE_SLURM_TESTS=1 (set by .ci/run), which
turns the skip into a failure. The test cluster has 2 CPUs and 2 fake GPUs, no accounting
database: finished jobs are read from `scontrol show job`.
"""
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import run_distributed_training as rdt
from conftest import write_json
from runner import ledger as run_ledger
from runner.config import PROG
from runner.slurm import queue as slurm_queue
from runner.slurm.config import load_slurm_config
from runner.slurm.scripts import sbatch_options
from slurm_cluster import SlurmCluster, slurm_installed
from test_remote import ledger, wait_for
from test_two_phase import SCRIPT, assert_carries_the_stored_base, generate, trainings
from tiny_data import write_tiny_dataset

ROOT = Path(__file__).resolve().parent.parent
HEADER = re.compile(r"^=== (\S+) attempt (\d+): slurm job (\S+) on \S+, CUDA_VISIBLE_DEVICES=(\S*) ===$",
                    re.MULTILINE)


@contextlib.contextmanager
def throwaway_cluster(accounting=False, extra=""):
    """A started SlurmCluster that the runner's sbatch, squeue, ... talk to (SLURM_CONF)."""
    if not slurm_installed(accounting):
        message = "Slurm not installed: apt-get install slurm-wlm munge" + (
            " slurmdbd mariadb-server" if accounting else "")
        if os.environ.get("REQUIRE_SLURM_TESTS") == "1":
            pytest.fail(message + " (REQUIRE_SLURM_TESTS=1)", pytrace=False)
        pytest.skip(message)
    # munged wants every folder above its socket open to all, which pytest's tmp folders are not.
    cluster = SlurmCluster(tempfile.mkdtemp(prefix="slurm-test-"), accounting, extra)
    os.chmod(cluster.root, 0o755)
    before = os.environ.get("SLURM_CONF")
    try:
        cluster.start()
        os.environ["SLURM_CONF"] = str(cluster.conf)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)
        if before is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = before


@pytest.fixture(scope="module")
def cluster():
    with throwaway_cluster() as cluster:
        yield cluster


def slurm_config(folder, script, **settings):
    return write_json(folder / "slurm.json", {
        "slurm": {"workdir": str(folder), "python": sys.executable, "setup": "export OMP_NUM_THREADS=1",
                  "poll_s": 0.5, **settings},
        "script_path": str(script)})


def fake_jobs(folder, *jobs):
    return write_json(folder / "jobs.json", [dict(job, job_id=f"job{job['fold']}") for job in jobs])


@pytest.fixture
def runner(cluster):
    """runner(folder, *argv, stderr=PIPE): the runner as its own process, as a user starts it.
    A test that fails midway leaves no runner and no job behind for the next one."""
    procs = []

    def start(folder, *argv, stderr=subprocess.PIPE):
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "run_distributed_training.py"), *argv],
                                      cwd=folder, stdout=subprocess.PIPE, stderr=stderr, text=True))
        return procs[-1]

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    cluster.run("scancel", "--me")


def headers(log):
    return HEADER.findall(Path(log).read_text())


def test_a_second_runner_and_ssh_only_flags_are_refused_before_slurm_is_asked(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["--cluster-config", slurm_config(tmp_path, SCRIPT), "--jobs-config",
            fake_jobs(tmp_path, {"fold": 0}), "--quiet"]
    assert rdt.main(argv + ["--sync-code", "--accept-new-hosts"]) == 2
    assert capsys.readouterr().err == (f"{PROG}: error: --sync-code, --accept-new-hosts: for SSH servers only "
                                       f"(a Slurm cluster config names one shared workdir)\n")
    with run_ledger.run_dir_lock(tmp_path / "runs" / "jobs"):  # as if another runner were watching this run
        assert rdt.main(argv) == 2
    assert f"is in use by another runner (pid {os.getpid()})" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "jobs" / "ledger.jsonl").exists()  # nothing submitted


def test_dry_run_prints_the_arrays_and_their_dependencies(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_tiny_dataset(tmp_path / "data", participants=("a", "b", "c", "d; rm -rf ~"))
    jobs_path, jobs = generate(tmp_path, {"mode": ["target_only_fine_tuning", "target_only"],
                                          "target_data_pct": [0.5, 1.0]}, [0, 1],
                               data_path=str(tmp_path / "data"), participants=["a", "b", "c", "d; rm -rf ~"])
    config = slurm_config(tmp_path, SCRIPT, partition="gpu", max_running=3, pack=1)
    assert rdt.main(["--cluster-config", config, "--jobs-config", jobs_path, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert ("# phase 1: 2 base tasks in 1 array; phase 2: 4 dependent tasks in 2 arrays, each after its own "
            "base task (+ 4 independent); 4 arrays, 10 tasks, 4 dependencies") in out
    sbatch = [line for line in out.splitlines() if line.startswith("sbatch ")]
    assert len(sbatch) == 4 and all("--partition=gpu" in s and "--gres=gpu:1" in s for s in sbatch)
    assert "--array=0-1%3" in sbatch[0] and "--dependency" not in sbatch[0]
    assert "'--dependency=afterok:<base array>_0'" in sbatch[1] and "--kill-on-invalid-dep=yes" in sbatch[1]
    assert "'--dependency=afterok:<base array>_1'" in sbatch[2] and "--dependency" not in sbatch[3]
    assert "'d; rm -rf ~'" in out  # a job value reaches the shell as one quoted word
    assert not (tmp_path / "runs").exists()

    # The other way to ask for Slurm is a one-line error; so is --detach with SSH servers.
    assert rdt.main(["--backend", "slurm", "--jobs-config", jobs_path]) == 2
    assert rdt.main(["--cluster-config", write_json(tmp_path / "ssh.json", {"servers": [{"host": "x"}]}),
                     "--jobs-config", jobs_path, "--detach"]) == 2
    bad = write_json(tmp_path / "bad.json", {"slurm": {"gpus_per_task": -1}})
    assert rdt.main(["--cluster-config", bad, "--jobs-config", jobs_path, "--dry-run"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 3 and "--backend" in errors[0] and "--detach" in errors[1]
    assert "slurm.gpus_per_task: expected a whole number >= 0" in errors[2]


def test_the_shipped_example_config_is_valid():
    settings, script = load_slurm_config(ROOT / "examples" / "slurm_cluster.json")
    assert script == "oct1_train.py" and settings["workdir"] == "/shared/me/personalization"
    assert sbatch_options(settings, timeout=90) == [
        "--partition=gpu", "--account=mylab", "--cpus-per-task=4", "--mem=16G", "--time=2", "--gres=gpu:1",
        "--constraint=a100|v100"]


@pytest.mark.slurm
def test_six_fine_tuning_jobs_share_two_base_models(cluster, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_tiny_dataset(tmp_path / "data")
    jobs_path, jobs = generate(tmp_path, {"target_data_pct": [0.34, 0.67, 1.0]}, [0, 1],
                               mode="target_only_fine_tuning", data_path=str(tmp_path / "data"))
    keys = {job["base_key"] for job in jobs}
    assert len(jobs) == 6 and len(keys) == 2
    argv = ["--cluster-config", slurm_config(tmp_path, SCRIPT), "--jobs-config", jobs_path, "--quiet"]
    assert rdt.main(argv) == 0
    out = capsys.readouterr().out
    assert "6 done, 0 failed, 0 cancelled, 0 blocked, 0 skipped (finished earlier), 0 not run" in out
    assert "base models: 2 trained for 2 distinct keys (0 already in the cache), against 6 without sharing" in out
    assert "report: python summarize_results.py" in out
    assert re.search(r"target_data_pct=0\.34: .*F1 [0-9.]+ -> [0-9.]+", out)  # the report's headline
    report = json.loads((tmp_path / "runs" / "jobs" / "run_log.json").read_text())
    assert report["totals"]["done"] == 6 and report["base_models"]["trained"] == 2 and len(report["arrays"]) == 3

    records = ledger(tmp_path / "runs" / "jobs")
    submitted = {r["job_id"]: r["slurm_job"] for r in records if r["status"] == "submitted"}
    assert sorted(submitted) == sorted([job["job_id"] for job in jobs] + [f"base-{key}" for key in keys])
    # One array for phase 1, one per base key for phase 2: a job's array is its own base's.
    arrays = {key: {submitted[j["job_id"]].split("_")[0] for j in jobs if j["base_key"] == key} for key in keys}
    assert all(len(a) == 1 for a in arrays.values()) and len(set.union(*arrays.values())) == 2
    assert len({submitted[f"base-{key}"].split("_")[0] for key in keys}) == 1
    assert {r["job_id"] for r in records if r["status"] == "ok"} == set(submitted)
    assert trainings(tmp_path / "runs" / "jobs") == {key: 1 for key in keys}
    for job_id, slurm_job in submitted.items():
        [(name, attempt, seen_job, gpus)] = headers(tmp_path / "runs" / "jobs" / "logs" / f"{job_id}.log")
        assert (name, attempt, seen_job) == (job_id, "1", slurm_job)
        assert gpus in ("0", "1")  # exactly one GPU index, granted by Slurm
    for job in jobs:
        assert_carries_the_stored_base(tmp_path, job)


@pytest.mark.slurm
def test_a_failing_base_blocks_only_its_dependents(cluster, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good, broken = tmp_path / "data", tmp_path / "broken"
    participants = write_tiny_dataset(good)
    shutil.copytree(good, broken)
    (broken / "b_train.pt").write_bytes(b"not a tensor file")  # a base participant of fold 0
    jobs_path, jobs = generate(tmp_path, {"data_path": [str(good), str(broken)],
                                          "target_data_pct": [0.5, 1.0]}, [0],
                               mode="target_only_fine_tuning", participants=participants)
    # Two jobs wait for the broken base model, one for the good one.
    jobs = [job for job in jobs if job["data_path"] == str(broken) or job["target_data_pct"] == 1.0]
    write_json(jobs_path, jobs)
    bad_key = next(job["base_key"] for job in jobs if job["data_path"] == str(broken))
    good_key = next(job["base_key"] for job in jobs if job["data_path"] == str(good))
    argv = ["--cluster-config", slurm_config(tmp_path, SCRIPT), "--jobs-config", jobs_path, "--quiet"]
    assert rdt.main(argv) == 1
    out = capsys.readouterr().out
    assert "1 done, 1 failed, 0 cancelled, 2 blocked" in out and f"2 blocked by base {bad_key}" in out
    run_dir = tmp_path / "runs" / "jobs"
    records = ledger(run_dir)
    last = {r["job_id"]: r["status"] for r in records}
    assert last == {f"base-{good_key}": "ok", f"base-{bad_key}": "failed",
                    **{job["job_id"]: "blocked" if job["base_key"] == bad_key else "ok" for job in jobs}}
    for job in jobs:  # a blocked job never started: it has no log
        assert (run_dir / "logs" / f"{job['job_id']}.log").exists() == (job["base_key"] == good_key)

    # Repaired data: the rerun trains only the failed base, then its dependents.
    shutil.copy(good / "b_train.pt", broken / "b_train.pt")
    assert rdt.main(argv) == 0
    again = ledger(run_dir)[len(records):]
    assert {(r["job_id"], r["status"]) for r in again if r["status"] != "submitted"} == (
        {(f"base-{bad_key}", "ok")} | {(job["job_id"], "ok") for job in jobs if job["base_key"] == bad_key})
    assert trainings(run_dir) == {good_key: 1, bad_key: 1}
    for job in jobs:
        assert_carries_the_stored_base(tmp_path, job)


@pytest.mark.slurm
def test_a_cancelled_job_is_reported_and_a_failed_one_retried(cluster, runner, tmp_path, fake_script):
    block = tmp_path / "block"
    block.touch()
    started = tmp_path / "started"
    started.mkdir()
    jobs = fake_jobs(tmp_path, {"fold": 0, "block_file": str(block), "started_dir": str(started)},
                     {"fold": 1, "fail_once_dir": str(tmp_path / "failed")})
    proc = runner(tmp_path, "--cluster-config", slurm_config(tmp_path, fake_script, gpus_per_task=0),
                  "--jobs-config", jobs, "--retries", "1", "--quiet")
    wait_for(lambda: list(started.glob("*-fold0")), 60, "job0 to start")
    wait_for(lambda: ledger(tmp_path / "runs" / "jobs"), 60, "the ledger")  # sbatch may return after the start
    job0 = next(r["slurm_job"] for r in ledger(tmp_path / "runs" / "jobs") if r["job_id"] == "job0")
    assert cluster.run("scancel", job0).returncode == 0
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert "1 done, 0 failed, 1 cancelled" in out and "job0  CANCELLED" in out

    records = ledger(tmp_path / "runs" / "jobs")
    assert [(r["status"], r.get("state")) for r in records if r["job_id"] == "job0"] == [
        ("submitted", None), ("cancelled", "CANCELLED")]
    job1 = [r for r in records if r["job_id"] == "job1"]
    assert [(r["status"], r.get("exit_status")) for r in job1] == [
        ("submitted", None), ("failed", 1), ("submitted", None), ("ok", 0)]
    assert job1[0]["slurm_job"] != job1[2]["slurm_job"]
    log1 = tmp_path / "runs" / "jobs" / "logs" / "job1.log"
    assert [h[1] for h in headers(log1)] == ["1", "2"] and "failing on purpose" in log1.read_text()
    assert (tmp_path / "experiments" / "fake" / "fold1_p1" / "record.json").exists()
    assert not (tmp_path / "experiments" / "fake" / "fold0_p0").exists()


@pytest.mark.slurm
def test_ctrl_c_cancels_what_the_runner_submitted(cluster, runner, tmp_path, fake_script):
    block = tmp_path / "block"
    block.touch()
    started = tmp_path / "started"
    started.mkdir()
    jobs = fake_jobs(tmp_path, *[{"fold": k, "block_file": str(block), "started_dir": str(started)}
                                 for k in range(4)])
    proc = runner(tmp_path, "--cluster-config", slurm_config(tmp_path, fake_script),
                  "--jobs-config", jobs, "--quiet")
    wait_for(lambda: len(list(started.iterdir())) == 2, 60, "two jobs running")  # 2 GPUs: 2 wait
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    submitted = {r["slurm_job"].split("_")[0] for r in ledger(tmp_path / "runs" / "jobs")
                 if r["status"] == "submitted"}
    assert not [job for job in cluster.queue() if job.split("_")[0] in submitted]
    assert sorted(r["job_id"] for r in ledger(tmp_path / "runs" / "jobs") if r["status"] == "cancelled") == [
        "job0", "job1", "job2", "job3"]
    assert "rerun the same command" in err


@pytest.mark.slurm
def test_detach_leaves_jobs_queued_and_a_rerun_watches_them(cluster, runner, tmp_path, fake_script):
    jobs = fake_jobs(tmp_path, {"fold": 0, "sleep": 1}, {"fold": 1, "sleep": 1})
    argv = ["--cluster-config", slurm_config(tmp_path, fake_script), "--jobs-config", jobs, "--quiet"]
    first = runner(tmp_path, *argv, "--detach")
    _, err = first.communicate(timeout=60)
    assert first.returncode == 0 and "detached: 2 jobs queued" in err
    submitted = [r["slurm_job"] for r in ledger(tmp_path / "runs" / "jobs")]
    assert set(submitted) <= set(cluster.queue()) | set(slurm_queue.final_states(submitted))

    second = runner(tmp_path, *argv)
    _, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    assert "resume: watching 2 jobs already in Slurm" in err
    records = ledger(tmp_path / "runs" / "jobs")
    assert sum(r["status"] == "submitted" for r in records) == 2  # nothing submitted twice
    assert sorted((r["job_id"], r["slurm_job"]) for r in records if r["status"] == "ok") == sorted(
        zip(["job0", "job1"], submitted))


@pytest.mark.slurm
def test_the_watch_rides_out_a_controller_restart(cluster, runner, tmp_path, fake_script):
    block = tmp_path / "block"
    block.touch()
    started = tmp_path / "started"
    started.mkdir()
    jobs = fake_jobs(tmp_path, {"fold": 0, "block_file": str(block), "started_dir": str(started)})
    stderr = tmp_path / "runner.err"
    with open(stderr, "w") as err:
        proc = runner(tmp_path, "--cluster-config", slurm_config(tmp_path, fake_script), "--jobs-config", jobs,
                      "--quiet", stderr=err)
    try:
        wait_for(lambda: list(started.iterdir()), 60, "the job to start")
        cluster.stop_controller()
        wait_for(lambda: "warning: squeue" in stderr.read_text(), 60, "the runner to notice")
    finally:
        cluster.start_controller()
    block.unlink()
    assert proc.wait(60) == 0, stderr.read_text()
    assert [r["status"] for r in ledger(tmp_path / "runs" / "jobs")] == ["submitted", "ok"]


@pytest.mark.slurm
@pytest.mark.parametrize("setting, reason", [
    ({"partition": "nope"}, "Invalid partition name specified"),
    ({"gpus_per_task": 3}, "Requested node configuration is not available"),
])
def test_bad_settings_fail_at_submit_with_one_line(cluster, tmp_path, fake_script, capsys, monkeypatch,
                                                   setting, reason):
    monkeypatch.chdir(tmp_path)
    jobs = fake_jobs(tmp_path, {"fold": 0}, {"fold": 1})
    before = cluster.queue()
    assert rdt.main(["--cluster-config", slurm_config(tmp_path, fake_script, **setting),
                     "--jobs-config", jobs, "--quiet"]) == 2
    [error] = capsys.readouterr().err.strip().splitlines()
    assert error.startswith(f"{PROG}: error: sbatch refused array jobs (2 tasks)") and reason in error
    assert cluster.queue() == before


def test_sacct_lines_are_read_like_scontrol_ones():
    # The test cluster has no accounting database; this is sacct's format where one runs.
    text = "41_0|COMPLETED|0:0\n41_1|FAILED|1:0\n41_2|CANCELLED by 0|0:15\n41_[3-4,6%1]|CANCELLED by 0|0:0\n"
    # A throttled array cancelled before its last tasks started: one line for their range, each task read.
    assert {job: ended[:2] for job, ended in slurm_queue.parse_sacct(text).items()} == {
        "41_0": ("COMPLETED", 0), "41_1": ("FAILED", 1), "41_2": ("CANCELLED", 0), "41_3": ("CANCELLED", 0),
        "41_4": ("CANCELLED", 0), "41_6": ("CANCELLED", 0)}
    scontrol = "JobId=50 ArrayJobId=50 ArrayTaskId=1-2%1 JobState=CANCELLED ExitCode=0:0\n"
    assert slurm_queue.parse_scontrol(scontrol) == {"50_1": ("CANCELLED", 0, {}), "50_2": ("CANCELLED", 0, {})}
    # With the times (SACCT_FIELDS): queue wait and run time in seconds; "Unknown" ones are left out.
    timed = "41_0|COMPLETED|0:0|2026-12-03T10:00:00|2026-12-03T10:00:30|2026-12-03T10:02:00\n" \
            "41_1|PENDING|0:0|2026-12-03T10:00:00|Unknown|Unknown\n"
    assert slurm_queue.parse_sacct(timed) == {"41_0": ("COMPLETED", 0, {"queued_s": 30.0, "run_s": 90.0}),
                                              "41_1": ("PENDING", 0, {})}


@pytest.mark.slurm
def test_with_accounting_ended_jobs_are_read_from_sacct(tmp_path, fake_script, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    jobs = fake_jobs(tmp_path, {"fold": 0}, {"fold": 1, "fail_once_dir": str(tmp_path / "failed")})
    with throwaway_cluster(accounting=True) as cluster:
        assert rdt.main(["--cluster-config", slurm_config(tmp_path, fake_script), "--jobs-config", jobs,
                         "--retries", "1", "--quiet"]) == 0
        records = ledger(tmp_path / "runs" / "jobs")
        ended = {r["slurm_job"]: (r["state"], r["exit_status"]) for r in records if r["status"] != "submitted"}
        def accounted():  # slurmdbd may lag behind the controller (final_states then asks scontrol)
            sacct = cluster.run("sacct", "-n", "-P", "-X", "-o", slurm_queue.SACCT_FIELDS)
            assert sacct.returncode == 0
            return {job: found[:2] for job, found in slurm_queue.parse_sacct(sacct.stdout).items()}
        wait_for(lambda: len(accounted()) == len(ended), 60, "the accounting to catch up")
        assert accounted() == ended
        # Queue wait and run time as far as the accounting knows them when the end is read (it may lag).
        assert all(r["queued_s"] >= 0 and r.get("run_s", 0) >= 0 for r in records if r["status"] == "ok")
    assert sorted(ended.values()) == [("COMPLETED", 0), ("COMPLETED", 0), ("FAILED", 1)]
