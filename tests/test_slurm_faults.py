"""Slurm on a real cluster's terms: a setup line ending in `;`, a time limit above the partition's
MaxTime, a throttled array cancelled, sbatch refusing a resubmission, a resume after Slurm forgot
a finished job, accounting lag, a failed scancel, preemption. Against a real single-node Slurm
(see test_slurm.py) with a second partition `short` (MaxTime 1 minute); the lag, scancel and
preemption cases isolate Slurm's answers with stand-ins, as the test cluster cannot be made to
give them."""
import json
import subprocess
import time
from pathlib import Path

import pytest

import run_distributed_training as rdt
from conftest import write_json
from runner.ledger import Ledger
from runner.plan import Plan, Task
from runner.report import Say
from runner.slurm import backend as slurm_backend
from runner.slurm.backend import GONE_AFTER_S, SlurmBackend
from runner.slurm.config import load_slurm_config
from runner.slurm.ends import tell_plan
from runner.slurm.scripts import array_script
from test_remote import ledger, wait_for
from test_slurm import fake_jobs, runner, slurm_config, throwaway_cluster  # noqa: F401 (runner: a fixture)

SHORT = "PartitionName=short Nodes=localhost MaxTime=1 State=UP"


@pytest.fixture(scope="module")
def cluster():
    with throwaway_cluster(extra=SHORT) as cluster:
        yield cluster


@pytest.mark.slurm
def test_a_setup_ending_in_a_semicolon_runs_and_threads_follow_the_cpus_granted(cluster, tmp_path, fake_script,
                                                                                 monkeypatch):
    monkeypatch.chdir(tmp_path)
    jobs = fake_jobs(tmp_path, {"fold": 0, "env_names": ["MARK", "OMP_NUM_THREADS"]})
    config = slurm_config(tmp_path, fake_script, setup="export MARK=set;  # the lab's usual line",
                          cpus_per_task=2, gpus_per_task=0)
    assert rdt.main(["--cluster-config", config, "--jobs-config", jobs, "--quiet"]) == 0
    record = json.loads((tmp_path / "experiments" / "fake" / "fold0_p0" / "record.json").read_text())
    assert record["env"] == {"MARK": "set", "OMP_NUM_THREADS": "2"}


@pytest.mark.slurm
def test_a_failing_setup_points_to_slurms_own_output(cluster, tmp_path, fake_script, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    jobs = fake_jobs(tmp_path, {"fold": 0})
    config = slurm_config(tmp_path, fake_script, setup="source /no/such/venv/bin/activate", gpus_per_task=0)
    assert rdt.main(["--cluster-config", config, "--jobs-config", jobs]) == 1
    [failed] = [r for r in ledger(tmp_path / "runs" / "jobs") if r["status"] == "failed"]
    out_file = tmp_path / "runs" / "jobs" / "slurm" / f"{failed['slurm_job']}.out"
    assert f"job0: FAILED (exit 2); log: {out_file}" in capsys.readouterr().err
    assert "the slurm setup failed" in out_file.read_text()


@pytest.mark.slurm
def test_a_time_limit_above_the_partitions_is_reported_not_waited_for(cluster, tmp_path, fake_script, capsys,
                                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    jobs = fake_jobs(tmp_path, {"fold": 0})
    config = slurm_config(tmp_path, fake_script, partition="short", time="00:10:00", gpus_per_task=0)
    assert rdt.main(["--cluster-config", config, "--jobs-config", jobs, "--quiet"]) == 1
    [failed] = [r for r in ledger(tmp_path / "runs" / "jobs") if r["status"] == "failed"]
    assert failed["error"] == "Slurm will never start it: PartitionTimeLimit"
    assert "job0: pending for PartitionTimeLimit, which never clears: cancelled" in capsys.readouterr().err
    assert failed["slurm_job"] not in cluster.queue()


@pytest.mark.slurm
def test_a_throttled_array_cancelled_is_read_task_by_task(cluster, runner, tmp_path, fake_script):
    block, started = tmp_path / "block", tmp_path / "started"
    block.touch()
    started.mkdir()
    jobs = fake_jobs(tmp_path, *[{"fold": k, "block_file": str(block), "started_dir": str(started)}
                                 for k in range(3)])
    proc = runner(tmp_path, "--cluster-config", slurm_config(tmp_path, fake_script, max_running=1),
                  "--jobs-config", jobs, "--quiet")
    wait_for(lambda: list(started.iterdir()), 60, "the first task to start")
    wait_for(lambda: ledger(tmp_path / "runs" / "jobs"), 60, "the ledger")
    array = ledger(tmp_path / "runs" / "jobs")[0]["slurm_job"].split("_")[0]
    assert cluster.run("scancel", array).returncode == 0  # two tasks still pending as one range (1-2%1)
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 1, err
    assert "0 done, 0 failed, 3 cancelled" in out
    ended = [r for r in ledger(tmp_path / "runs" / "jobs") if r["status"] != "submitted"]
    assert sorted((r["job_id"], r["status"], r["state"]) for r in ended) == [
        (f"job{k}", "cancelled", "CANCELLED") for k in range(3)]


@pytest.mark.slurm
def test_a_resubmission_sbatch_refuses_is_tried_again(cluster, tmp_path, fake_script, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    jobs = fake_jobs(tmp_path, {"fold": 0, "fail_once_dir": str(tmp_path / "failed")})
    real, calls = slurm_backend.slurm, []

    def busy_controller_once(*argv, **kwargs):
        if argv[0] == "sbatch":
            calls.append(argv)
            if len(calls) == 2:  # the retry's submission
                return subprocess.CompletedProcess(argv, 1, "", "sbatch: error: Socket timed out on send/recv")
        return real(*argv, **kwargs)
    monkeypatch.setattr(slurm_backend, "slurm", busy_controller_once)
    config = slurm_config(tmp_path, fake_script, gpus_per_task=0)
    assert rdt.main(["--cluster-config", config, "--jobs-config", jobs, "--retries", "1", "--quiet"]) == 0
    assert len(calls) == 3
    assert "Socket timed out on send/recv; submitting again later" in capsys.readouterr().err
    assert [r["status"] for r in ledger(tmp_path / "runs" / "jobs")] == ["submitted", "failed", "submitted", "ok"]


@pytest.mark.slurm
def test_a_resume_after_slurm_forgot_a_finished_job_does_not_run_it_again(cluster, tmp_path, fake_script,
                                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    jobs = fake_jobs(tmp_path, {"fold": 0}, {"fold": 1})
    run_dir = tmp_path / "runs" / "jobs"
    (run_dir / "logs").mkdir(parents=True)
    # An earlier runner submitted both and was stopped; job0 finished, job1 never started; Slurm
    # (no accounting, MinJobAge past) knows neither array task any more.
    for k, output in ((0, "RESULT_DIR experiments/fake/fold0_p0\n"), (1, None)):
        log = run_dir / "logs" / f"job{k}.log"
        if output:
            log.write_text(f"=== job{k} attempt 1: slurm job 987654_{k} on node1, CUDA_VISIBLE_DEVICES= ===\n{output}")
        Ledger(run_dir / "ledger.jsonl").write({"job_id": f"job{k}", "attempt": 1, "status": "submitted",
                                                "slurm_job": f"987654_{k}", "log": str(log)})
    (tmp_path / "experiments" / "fake" / "fold0_p0").mkdir(parents=True)
    assert rdt.main(["--cluster-config", slurm_config(tmp_path, fake_script, gpus_per_task=0), "--jobs-config",
                     jobs, "--quiet"]) == 0
    again = ledger(run_dir)[2:]
    assert [(r["job_id"], r["status"]) for r in again] == [
        ("job0", "ok"), ("job1", "lost"), ("job1", "submitted"), ("job1", "ok")]
    assert again[0]["result_dir"] == "experiments/fake/fold0_p0" and again[0]["slurm_job"] == "987654_0"


def started(tmp_path, *tasks):
    """A plan and its Slurm backend, each task out as its own array task (<n>_0)."""
    plan = Plan(list(tasks), Ledger(tmp_path / "ledger.jsonl"), tmp_path / "logs", retries=1, run_id="r1")
    settings, _ = load_slurm_config(write_json(tmp_path / "slurm.json", {"slurm": {"workdir": str(tmp_path)}}))
    backend = SlurmBackend(plan, settings, "oct1_train.py", tmp_path, Say(quiet=True))
    plan.cancel = backend.cancel  # as the driver does
    for n, task in enumerate(tasks):
        plan.start([plan.take(early=True)[0]], "submitted", slurm_job=f"{n + 5}_0")
    return plan, backend


def test_accounting_lag_is_waited_out_and_a_running_dependent_is_never_withdrawn(tmp_path, monkeypatch):
    base = Task({"job_id": "base-k", "fold": 0, "mode": "base_only"}, builds="k")
    dependent = Task({"job_id": "job0", "fold": 0}, needs="k")
    plan, backend = started(tmp_path, base, dependent)
    monkeypatch.setattr(slurm_backend, "queue_states", lambda: {"6_0": ("RUNNING", "None")})
    monkeypatch.setattr(slurm_backend, "final_states", lambda ids: {})  # the accounting has not caught up
    cancelled = []
    monkeypatch.setattr(slurm_backend, "slurm", lambda *argv, **kw: cancelled.append(argv))
    backend.poll()
    assert plan.out == [base, dependent] and backend.states["6_0"] == "RUNNING"
    backend.missing["5_0"] = time.time() - GONE_AFTER_S - 1  # unknown for longer than the budget
    backend.poll()
    # The base is taken for lost (retried); its dependent already runs: not cancelled, not withdrawn.
    assert [r["status"] for r in ledger(tmp_path)] == ["submitted", "submitted", "failed"]
    assert plan.out == [dependent] and cancelled == [] and plan.waiting == [base]


def test_a_failed_scancel_leaves_the_submissions_open_for_a_rerun(tmp_path, monkeypatch):
    plan, backend = started(tmp_path, Task({"job_id": "job0", "fold": 0}))
    monkeypatch.setattr(slurm_backend, "slurm", lambda *argv, **kw: subprocess.CompletedProcess(
        argv, 1, "", "scancel: error: Unable to contact slurm controller"))
    backend.cancel_all()
    assert [r["status"] for r in ledger(tmp_path)] == ["submitted"]  # no "cancelled": a rerun watches it


def test_a_preempted_task_runs_again_without_spending_a_retry(tmp_path):
    plan, _ = started(tmp_path, Task({"job_id": "job0", "fold": 0}))
    [task] = plan.out
    tell_plan(plan, Say(quiet=True), str(tmp_path), tmp_path / "x.out", [task], "PREEMPTED", 0, {})
    [requeued] = [r for r in ledger(tmp_path) if r["status"] == "requeued"]
    assert requeued["error"] == "lost to the cluster (PREEMPTED); it runs again" and task.failures == 0
    # Its next attempt may replace what this one left, and only that: its run token, no --overwrite.
    assert plan.waiting == [task] and plan.job_to_run(task) == {"job_id": "job0", "fold": 0, "run_token": "r1.job0"}


def test_a_job_slurm_requeues_itself_replaces_its_folder_and_the_runners_options_are_its_own(tmp_path):
    job, base = Task({"job_id": "job0", "fold": 0}), Task({"job_id": "base-k", "fold": 0}, builds="k")
    plan = Plan([job, base], None, tmp_path / "logs", run_id="r1")
    settings, _ = load_slurm_config(write_json(tmp_path / "slurm.json", {"slurm": {"workdir": str(tmp_path)}}))
    solo, built = (array_script([[task]], plan, settings, "oct1_train.py") for task in (job, base))
    # Requeued by Slurm, the same line runs again: its token lets it replace its own folder, only that.
    assert "--run_token r1.job0" in solo and "--overwrite" not in solo
    assert "--run_token" not in built  # a base model's entry is reused, never replaced
    for arg in ("--array=0-3", "--output=x.out", "-Jname", "--dependency=afterok:1"):
        bad = write_json(tmp_path / "bad.json", {"slurm": {"sbatch_args": [arg]}})
        with pytest.raises(Exception, match="is an option the runner sets itself on every array"):
            load_slurm_config(bad)


def answers(returncode=0, stderr=""):
    """A stand-in for the Slurm commands: each answers returncode; the argvs it was asked, kept."""
    asked = []

    def slurm(*argv, **kwargs):
        asked.append(argv)
        return subprocess.CompletedProcess(argv, returncode, "", stderr)
    return slurm, asked


def test_a_base_lost_to_the_cluster_takes_back_its_waiting_dependents(tmp_path, monkeypatch):
    base = Task({"job_id": "base-k", "fold": 0, "mode": "base_only"}, builds="k")
    dependent = Task({"job_id": "job0", "fold": 0}, needs="k")
    plan, backend = started(tmp_path, base, dependent)
    slurm, asked = answers()
    monkeypatch.setattr(slurm_backend, "slurm", slurm)
    tell_plan(plan, Say(quiet=True), str(tmp_path), tmp_path / "x.out", [base], "NODE_FAIL", 0, {})
    # Its dependent waited on that base task (afterok): cancelled and waiting for the base's next one.
    assert asked == [("scancel", "6_0")] and plan.out == [] and plan.waiting == [base, dependent]
    assert [r["status"] for r in ledger(tmp_path)][2:] == ["requeued", "withdrawn"]


def test_a_withdrawal_scancel_refuses_leaves_the_task_out_so_it_never_runs_twice(tmp_path, monkeypatch):
    plan, backend = started(tmp_path, Task({"job_id": "job0", "fold": 0}))
    monkeypatch.setattr(slurm_backend, "slurm", answers(1, "scancel: error: Socket timed out")[0])
    [task] = plan.out
    plan.withdraw([task], "base runs again")
    assert plan.out == [task] and [r["status"] for r in ledger(tmp_path)] == ["submitted"]


def test_on_ctrl_c_a_task_that_ended_since_the_last_poll_is_done_not_cancelled(tmp_path, monkeypatch):
    plan, backend = started(tmp_path, Task({"job_id": "job0", "fold": 0}), Task({"job_id": "job1", "fold": 1}))
    job0 = plan.out[0]
    Path(job0.record["log"]).parent.mkdir(parents=True, exist_ok=True)
    Path(job0.record["log"]).write_text("=== job0 attempt 1: slurm job 5_0 on n, CUDA_VISIBLE_DEVICES= ===\n"
                                        "RESULT_DIR experiments/x/fold0_a\n")
    monkeypatch.setattr(slurm_backend, "slurm", answers()[0])
    monkeypatch.setattr(slurm_backend, "queue_states", lambda: {})
    monkeypatch.setattr(slurm_backend, "final_states", lambda ids: {"5_0": ("COMPLETED", 0, {}),
                                                                    "6_0": ("CANCELLED", 0, {})})
    backend.cancel_all()
    ended = {r["job_id"]: r["status"] for r in ledger(tmp_path) if r["status"] != "submitted"}
    assert ended == {"job0": "ok", "job1": "cancelled"}


def test_a_task_slurm_forgot_whose_log_and_folder_show_it_finished_is_done(tmp_path, monkeypatch):
    plan, backend = started(tmp_path, Task({"job_id": "job0", "fold": 0}))
    [task] = plan.out
    Path(task.record["log"]).parent.mkdir(parents=True, exist_ok=True)
    Path(task.record["log"]).write_text("=== job0 attempt 1: slurm job 5_0 on n, CUDA_VISIBLE_DEVICES= ===\n"
                                        "RESULT_DIR experiments/x/fold0_a\n")
    (tmp_path / "experiments" / "x" / "fold0_a").mkdir(parents=True)
    monkeypatch.setattr(slurm_backend, "queue_states", lambda: {})
    monkeypatch.setattr(slurm_backend, "final_states", lambda ids: {})
    backend.missing["5_0"] = time.time() - GONE_AFTER_S - 1
    backend.poll()
    [ended] = [r for r in ledger(tmp_path) if r["status"] != "submitted"]
    assert ended["status"] == "ok" and ended["result_dir"] == "experiments/x/fold0_a"
