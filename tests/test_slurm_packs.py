"""Slurm at full speed: packs of jobs per array task, the preflight on a compute node, arrays
split to the cluster's MaxArraySize and fed in waves under a submit limit; against a real
single-node Slurm (see test_slurm.py) whose MaxArraySize is 8. The members' ends are also read
from hand-written logs, without Slurm, where a pack's failures cannot be forced."""
import csv
import json
import shutil
import sys
import time
from pathlib import Path

import pytest

import run_distributed_training as rdt
import summarize_results
from conftest import write_json
from engine import provenance
from runner.ledger import Ledger
from engine.markers import OUT_OF_MEMORY
from runner.plan import Plan, Task
from runner.report import Say
from runner.slurm.ends import tell_plan
from test_remote import ledger
from test_slurm import fake_jobs, slurm_config, throwaway_cluster
from test_two_phase import SCRIPT, assert_carries_the_stored_base, generate
from tiny_data import write_tiny_dataset

MAX_ARRAY = 8


@pytest.fixture(scope="module")
def cluster():
    with throwaway_cluster(extra=f"MaxArraySize={MAX_ARRAY}") as cluster:
        yield cluster


def arrays_of(records, job_ids=None):
    """{array task: [job ids]} of the submissions in ledger records."""
    found = {}
    for r in records:
        if r["status"] == "submitted" and (job_ids is None or r["job_id"] in job_ids):
            found.setdefault(r["slurm_job"], []).append(r["job_id"])
    return found


@pytest.mark.slurm
def test_a_grid_in_packs_of_three_runs_fewer_tasks_and_reports_each_member(cluster, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_tiny_dataset(tmp_path / "data")
    jobs_path, jobs = generate(tmp_path, {"target_data_pct": [0.34, 0.67, 1.0]}, [0, 1],
                               mode="target_only_fine_tuning", data_path=str(tmp_path / "data"))
    keys = {job["base_key"] for job in jobs}
    argv = ["--cluster-config", slurm_config(tmp_path, SCRIPT, pack=3), "--jobs-config", jobs_path, "--quiet"]
    assert rdt.main(argv) == 0
    out = capsys.readouterr().out
    assert "6 done, 0 failed" in out and "base models: 2 trained for 2 distinct keys" in out
    run_dir = tmp_path / "runs" / "jobs"
    records = ledger(run_dir)
    ids = {job["job_id"] for job in jobs}
    # Both base models in one array task; each base key's three jobs in one more (a pack holds one base key).
    bases = arrays_of(records, {f"base-{key}" for key in keys})
    packs = arrays_of(records, ids)
    assert len(bases) == 1 and len(packs) == 2 and all(len(members) == 3 for members in packs.values())
    assert all(len({next(j["base_key"] for j in jobs if j["job_id"] == m) for m in members}) == 1
               for members in packs.values())
    # The dependents wait for a pack of base models: afterany, and each checks its own base first.
    script = Path(run_dir / "slurm" / f"{next(iter(packs)).split('_')[0]}.sh").read_text()
    assert "is not complete in the cache" in script and "pack_train.py" in script

    report = json.loads((run_dir / "run_log.json").read_text())
    assert report["pack"] == 3 and report["max_array"] == MAX_ARRAY
    ended = {job["job_id"]: job for job in report["jobs"]}
    for job_id in ids:
        assert ended[job_id]["status"] == "ok" and ended[job_id]["pack_size"] == 3
        assert ended[job_id]["run_s"] >= 0 and ended[job_id]["queued_s"] >= 0
        log = (run_dir / "logs" / f"{job_id}.log").read_text()
        assert f"=== {job_id} attempt 1: slurm job {ended[job_id]['slurm_job']} on " in log
    for job in jobs:
        assert_carries_the_stored_base(tmp_path, job)
        result = next((tmp_path / "experiments" / job["prefix"]).glob(f"fold{job['fold']}_*"))
        assert json.loads((result / "hyperparameters.json").read_text())["pack_size"] == 3
        assert json.loads((result / "provenance.json").read_text())["slurm_job"] == ended[job["job_id"]]["slurm_job"]

    # The report: one configuration per target_data_pct (not one per pack), with each fold's pack and task.
    assert summarize_results.main(["experiments/tp/*", "-o", "report"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "report" / "per_fold.csv")))
    assert len(rows) == 6 and {row["pack_size"] for row in rows} == {"3"}
    assert {row["slurm_job"] for row in rows} == set(packs)
    assert len(list(csv.DictReader(open(tmp_path / "report" / "per_config.csv")))) == 3

    # Resume: every member finished, nothing is submitted again.
    assert rdt.main(argv) == 0
    assert len(ledger(run_dir)) == len(records)


@pytest.mark.slurm
def test_the_preflight_refuses_a_workdir_with_other_code(cluster, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_tiny_dataset(tmp_path / "data")
    other = tmp_path / "other"  # the checkout the compute nodes would run: one file edited
    for name in provenance.code_files():
        (other / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(provenance.PROJECT_DIR / name, other / name)
    with open(other / "engine" / "fold.py", "a") as f:
        f.write("# edited on the cluster\n")
    config = write_json(tmp_path / "slurm.json", {"slurm": {"workdir": str(other), "python": sys.executable, "gpus_per_task": 0},
                                                  "script_path": "oct1_train.py"})
    jobs = write_json(tmp_path / "jobs.json", [{"job_id": "a", "fold": 0, "data_path": str(tmp_path / "data"),
                                                "model": "test", "max_epochs": 1, "device": "cpu"}])
    before = cluster.queue()
    assert rdt.main(["--cluster-config", config, "--jobs-config", jobs, "--quiet"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2, errors
    here = provenance.code_hash()
    assert errors[0].startswith("run_distributed_training.py: error: slurm partition (default): code differs "
                                f"(code hash here {here}, there ") and f"update the checkout in the workdir {other}" \
        in errors[0]
    assert errors[1].endswith("nothing submitted. --allow-mismatch runs anyway")
    assert cluster.queue() == before and Ledger.read(tmp_path / "runs" / "jobs" / "ledger.jsonl") == []


@pytest.mark.slurm
def test_a_grid_over_the_array_limit_is_split_and_fed_in_waves(cluster, tmp_path, fake_script, monkeypatch):
    monkeypatch.chdir(tmp_path)
    jobs = fake_jobs(tmp_path, *[{"fold": k} for k in range(10)])
    assert rdt.main(["--cluster-config", slurm_config(tmp_path, fake_script), "--jobs-config", jobs,
                     "--quiet"]) == 0
    records = ledger(tmp_path / "runs" / "jobs")
    sizes = sorted(sum(1 for job in arrays_of(records) if job.split("_")[0] == array)
                   for array in {job.split("_")[0] for job in arrays_of(records)})
    assert sizes == [2, MAX_ARRAY]

    # At most 3 tasks queued at once: the other 7 wait in the runner and go as tasks end.
    run_dir = tmp_path / "runs" / "waves"
    waves = write_json(tmp_path / "waves.json", [{"fold": k, "job_id": f"job{k}", "prefix": "waves"} for k in range(10)])
    assert rdt.main(["--cluster-config", slurm_config(tmp_path, fake_script, max_submit=3), "--jobs-config",
                     waves, "--quiet"]) == 0
    queued, most = 0, 0
    for r in ledger(run_dir):
        queued += 1 if r["status"] == "submitted" else -1
        most = max(most, queued)
    assert most == 3 and sum(r["status"] == "ok" for r in ledger(run_dir)) == 10


def started_pack(tmp_path, n):
    """A plan whose first n jobs went out as one array task."""
    tasks = [Task({"job_id": f"j{k}", "fold": k}, pack_key="same") for k in range(n)]
    plan = Plan(tasks, Ledger(tmp_path / "ledger.jsonl"), tmp_path / "logs", retries=1)
    pack = plan.take(n)
    plan.log_dir.mkdir()
    plan.start(pack, "submitted", slurm_job="7_0", submitted=time.time(), pack_size=n)
    return plan, pack


def write_pack_log(pack, lines):
    """The array task's output in every member's log, under each member's own header."""
    for task in pack:
        opening = f"=== {task.job_id} attempt {task.attempt}: slurm job 7_0 on node1, CUDA_VISIBLE_DEVICES=0 ==="
        Path(task.record["log"]).write_text(opening + "\n" + "\n".join(lines) + "\n")


@pytest.mark.parametrize("how", ["failed", "out of memory", "cancelled"])
def test_a_pack_member_that_did_not_finish_runs_again_alone_or_in_a_smaller_pack(tmp_path, how):
    plan, pack = started_pack(tmp_path, 4)
    lines = ["RESULT_DIR experiments/x/fold0_a", "MEMBER_DONE 0"]
    lines += [f"{OUT_OF_MEMORY} 4"] if how == "out of memory" else ["Traceback: member 1 broke"]
    write_pack_log(pack, lines)
    tell_plan(plan, Say(quiet=True), str(tmp_path), tmp_path / "slurm" / "7_0.out", pack,
              "CANCELLED" if how == "cancelled" else "FAILED", 1, {"run_s": 5.0})
    ended = {r["job_id"]: r for r in ledger(tmp_path) if r["status"] != "submitted"}
    assert ended["j0"]["status"] == "ok" and ended["j0"]["result_dir"] == "experiments/x/fold0_a"
    assert ended["j0"]["run_s"] == 5.0
    others = [ended[f"j{k}"] for k in (1, 2, 3)]
    if how == "cancelled":  # someone cancelled it on purpose: reported, not retried
        assert all(r["status"] == "cancelled" for r in others) and not plan.waiting
        return
    assert all(r["status"] == "requeued" for r in others)  # not charged: no retry spent
    assert [t.failures for t in pack] == [0, 0, 0, 0] and len(plan.waiting) == 3
    if how == "out of memory":
        assert all(r["pack_cap"] == 2 for r in others)
        assert [len(p) for p in iter(lambda: plan.take(4), [])] == [2, 1]  # halved; what is left runs alone
    else:
        assert all("it runs alone next" in r["error"] for r in others)
        assert [len(p) for p in iter(lambda: plan.take(4), [])] == [1, 1, 1]


@pytest.mark.slurm
def test_the_dry_run_shows_the_packs_and_the_arrays_split_to_the_limit(cluster, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_tiny_dataset(tmp_path / "data")
    jobs_path, jobs = generate(tmp_path, {"target_data_pct": [0.2, 0.4, 0.6, 0.8, 0.9, 1.0]}, [0, 1],
                               mode="target_only_fine_tuning", data_path=str(tmp_path / "data"))

    def dry_run(**settings):
        assert rdt.main(["--cluster-config", slurm_config(tmp_path, SCRIPT, **settings), "--jobs-config", jobs_path,
                         "--dry-run"]) == 0
        return [line for line in capsys.readouterr().out.splitlines() if line.startswith(("# ", "sbatch "))]

    lines = dry_run(pack=3)  # both base models in one task; each key's six jobs in two tasks after it
    assert lines[-1] == ("# phase 1: 1 base tasks in 1 array; phase 2: 4 dependent tasks in 2 arrays, each after "
                         "its own base task (+ 0 independent); 3 arrays, 5 tasks, 4 dependencies; 14 jobs in packs "
                         f"of up to 3; arrays of at most {MAX_ARRAY} tasks (MaxArraySize)")
    assert sum("--dependency=afterany:<base array>_0" in line for line in lines) == 2
    assert dry_run()[-1].startswith("# phase 1: 1 base tasks in 1 array; phase 2: 2 dependent tasks")  # auto: up to 32

    target_only = write_json(tmp_path / "jobs.json", [dict(job, mode="target_only", base_key=None) for job in jobs]
                             + [dict(job, mode="target_only", base_key=None, job_id=job["job_id"] + "-again",
                                     seed=2, prefix=job["prefix"] + "-seed2") for job in jobs[:4]])
    assert len(json.loads(Path(target_only).read_text())) == 16
    lines = dry_run(pack=1)  # 16 tasks: two arrays of MaxArraySize
    assert [line for line in lines if line.startswith("# array")] == ["# array jobs: 8 tasks"] * 2


def test_pack_auto_is_sized_by_the_gpu_the_preflight_saw():
    from runner.slurm.scripts import pack_limit
    gpu, cpu = {"pack": "auto", "gpus_per_task": 1}, {"pack": "auto", "gpus_per_task": 0}
    assert pack_limit(gpu, 143_771) == 32 and pack_limit(gpu, 4096) == 8  # 512 MiB a member, at most 32
    assert pack_limit(gpu, 0) == 1 and pack_limit(cpu, 143_771) == 1  # torch saw no GPU there; a CPU task
    assert pack_limit(gpu) == 32  # the dry run: not known yet, shown at its largest
    assert pack_limit({"pack": 3, "gpus_per_task": 0}) == 3
