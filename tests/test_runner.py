"""run_distributed_training.py without SSH: command lines, input checks, local runs.

The same runner over real sshd servers is in test_remote.py.
"""
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import run_distributed_training as rdt
from conftest import free_port, processes_with, write_json
from runner import commands
from runner import ledger as run_ledger
from runner.config import PROG, check_server, load_cluster_config
from runner.driver import drive
from runner.ending import Ending, settle
from runner.jobs import load_jobs
from runner.plan import Plan, Task
from runner.report import Figures, Say, print_report_headline, summary_lines
from runner.ssh import hosts, shell
from runner.ssh.transfer import HostTransfer

ROOT = Path(__file__).resolve().parent.parent


def local_cluster(folder, script, **fields):
    return write_json(folder / "cluster.json", {
        "servers": [{"host": "localhost", "local": True, "gpus": [0, 1], **fields}],
        "script_path": str(script)})


def ledger(folder, starts=False):
    """The ledger's lines; without start lines unless asked for."""
    path = Path(folder) / "runs" / "jobs" / "ledger.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [r for r in records if starts or r["status"] != "started"]


def test_job_command_args_rendering():
    job = {"job_id": "x", "base_key": "k", "fold": 0, "mode": "full_fine_tuning", "lr": 0.001,
           "use_augmentation": True, "overwrite": False, "n_base_participants": None,
           "participants": ["a", "b c"], "magnitude_range": [0.9, 1.1]}
    assert commands.job_command_args(job) == [
        "--fold", "0", "--mode", "full_fine_tuning", "--lr", "0.001", "--use_augmentation",
        "--participants", "a", "'b c'", "--magnitude_range", "0.9", "1.1"]


def test_job_command_line_sets_one_device_and_quotes_every_value():
    server = check_server({"host": "gpu1", "workdir": "~/my proj",
                                      "setup": "source env/bin/activate", "env": {"OMP_NUM_THREADS": 2}},
                                     "test")
    job = {"fold": 1, "prefix": "a b"}
    line = commands.job_command(server, 3, "oct1_train.py", job)
    assert line == ('cd "$HOME"/\'my proj\' && source env/bin/activate && PYTHONUNBUFFERED=1 '
                    "CUDA_DEVICE_ORDER=PCI_BUS_ID OMP_NUM_THREADS=2 CUDA_VISIBLE_DEVICES=3 python3 oct1_train.py --fold 1 --prefix 'a b'")
    assert "CUDA_VISIBLE_DEVICES='' " in commands.job_command(server, "cpu", "t.py", job)  # no GPU seen


def test_a_hostile_value_reaches_the_script_as_one_argument(tmp_path):
    mark = tmp_path / "pwned"
    values = [f"a; touch {mark}", f"$(touch {mark})", f"`touch {mark}`", "it's", "\\n \"x\""]
    server = check_server({"host": "here", "local": True, "workdir": str(tmp_path)}, "test")
    script = tmp_path / "argv.py"
    script.write_text("import json, sys; print(json.dumps(sys.argv[1:]))")
    result = shell.LocalHost().run(commands.job_command(server, 0, str(script), {"participants": values}))
    assert result.ok and json.loads(result.stdout) == ["--participants", *values]
    assert not mark.exists()


BAD_CLUSTERS = [
    ("[]", "expected an object with a \"servers\" list"),
    ("{\"servers\": []}", "\"servers\" must be a non-empty list"),
    ("{\"servers\": [{\"host\": \"a\"}], \"sripts\": 1}", "unknown field \"sripts\""),
    ("{\"servers\": [{\"user\": \"me\"}]}", "servers[0]: missing \"host\""),
    ("{\"servers\": [{\"host\": \"a\", \"gpu\": [0]}]}", "servers[0]: unknown field \"gpu\""),
    ("{\"servers\": [{\"host\": \"a\", \"gpus\": \"all\"}]}", "servers[0].gpus: expected"),
    ("{\"servers\": [{\"host\": \"a\", \"gpus\": [0, 0]}]}", "servers[0].gpus: expected"),
    ("{\"servers\": [{\"host\": \"a\", \"port\": \"22\"}]}", "servers[0].port: expected a port number"),
    ("{\"servers\": [{\"host\": \"a\", \"slots_per_gpu\": 0}]}", "servers[0].slots_per_gpu"),
    ("{\"servers\": [{\"host\": \"a\", \"password\": \"hunter2\"}]}", "servers[0].password: no passwords"),
    ("{\"servers\": [{\"host\": \"a\", \"env\": {\"DB_PASSWORD\": \"x\"}}]}", "env.DB_PASSWORD: no secrets"),
    ("{\"servers\": [{\"host\": \"a\", \"env\": {\"WANDB_API_KEY\": \"x\"}}]}", "env.WANDB_API_KEY: no secrets"),
    ("{\"servers\": [{\"host\": \"a\", \"env\": {\"GITHUB_PAT\": \"x\"}}]}", "env.GITHUB_PAT: no secrets"),
    ("{\"servers\": [{\"host\": \"a\", \"env\": {\"GOOGLE_CREDENTIALS\": \"x\"}}]}", "no secrets"),
    ("{\"servers\": [{\"host\": \"a\", \"env\": {\"CUDA_VISIBLE_DEVICES\": 0}}]}", "set per job"),
    ("{\"servers\": [{\"host\": \"a\", \"local\": true, \"port\": 22}]}", "servers[0].port: means nothing"),
    ("{\"servers\": [{\"host\": \"a\"}, {\"host\": \"a\"}]}", "distinct \"name\""),
    ("{\"servers\": [{\"host\": \"a\", \"shared_fs\": \"yes\"}]}", "servers[0].shared_fs: expected true"),
    ("{\"servers\": [{\"host\": \"a\"}]", "not valid JSON (line 1"),
]


@pytest.mark.parametrize("text,message", BAD_CLUSTERS)
def test_a_malformed_cluster_config_is_one_clear_line(text, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cluster.json").write_text(text)
    write_json(tmp_path / "jobs.json", [{"fold": 0}])
    assert rdt.main(["--cluster-config", "cluster.json", "--jobs-config", "jobs.json"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"{PROG}: error: cluster.json") and message in err
    assert "hunter2" not in err


BAD_JOBS = [
    ("{\"fold\": 0}", "expected a list of job objects"),
    ("[1]", "job 0: expected an object"),
    ("[{\"fold\": {\"a\": 1}}]", "job 0.fold: expected a string"),
    ("[{\"x; rm\": 1}]", "is not a flag name"),
    ("[{\"fold\": 0, \"job_id\": \"../../etc\"}]", "job 0.job_id"),
    ("[{\"fold\": 0, \"job_id\": \"a\"}, {\"fold\": 1, \"job_id\": \"a\"}]",
     "job 1.job_id: \"a\" repeats job 0"),
    ("", "not valid JSON"),
    ("[{\"participants\": [\"a\", \"b\\nc\"]}]", "job 0.participants: [\"a\", \"b\\nc\"] holds a control character"),
    ("[{\"tag\": \"x\\u001b[2J\"}]", "job 0.tag: \"x\\u001b[2J\" holds a control character"),
]


@pytest.mark.parametrize("text,message", BAD_JOBS)
def test_a_malformed_jobs_file_is_one_clear_line(text, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "jobs.json").write_text(text)
    assert rdt.main(["--cluster-config", str(ROOT / "cluster_config.json"), "--jobs-config",
                     "jobs.json"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"{PROG}: error: jobs.json") and message in err


def test_missing_files_are_named(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert rdt.main([]) == 2
    assert "cluster_config.json: cluster config not found" in capsys.readouterr().err


@pytest.mark.parametrize("path", ["cluster_config.json", *sorted(p.relative_to(ROOT).as_posix()
                                  for p in (ROOT / "examples").glob("cluster_*.json"))])
def test_shipped_cluster_configs_are_valid(path):
    cluster = load_cluster_config(ROOT / path)
    assert cluster["servers"]
    if path == "cluster_config.json":  # works on a fresh machine: no SSH
        assert all(s["local"] for s in cluster["servers"])


def test_jobs_without_an_id_get_a_stable_one(tmp_path):
    write_json(tmp_path / "jobs.json", [{"fold": 0, "mode": "x"}, {"mode": "x", "fold": 0, "lr": 1}])
    first = [j["job_id"] for j in load_jobs(tmp_path / "jobs.json")]
    again = [j["job_id"] for j in load_jobs(tmp_path / "jobs.json")]
    assert first == again and len(set(first)) == 2


def test_dry_run_prints_the_plan_and_runs_nothing(fake_script, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cluster = local_cluster(tmp_path, fake_script, slots_per_gpu=2)
    jobs = write_json(tmp_path / "jobs.json", [{"fold": k, "participants": ["a b", "c"], "job_id": f"d{k}"}
                                               for k in range(5)])
    assert rdt.main(["--cluster-config", cluster, "--jobs-config", jobs, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "5 jobs over 4 slots: localhost:0#1, localhost:0#2, localhost:1#1, localhost:1#2" in out
    assert "[localhost:1#1] d2\n" in out and "[localhost:0#1] d4\n" in out
    assert f"CUDA_VISIBLE_DEVICES=1 {sys.executable} {fake_script} --fold 2 --participants 'a b' c" in out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "experiments").exists()


def test_local_run_writes_ledger_logs_report_and_resumes(fake_script, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cluster = local_cluster(tmp_path, fake_script)
    jobs = write_json(tmp_path / "jobs.json", [{"prefix": "loc", "fold": k, "job_id": f"l{k}"}
                                               for k in range(4)])
    argv = ["--cluster-config", cluster, "--jobs-config", jobs]
    assert rdt.main(argv) == 0
    out = capsys.readouterr().out
    assert "localhost:0" in out and "4 done, 0 failed" in out  # the per-slot table and totals
    records = ledger(tmp_path)
    assert sorted(r["job_id"] for r in records) == ["l0", "l1", "l2", "l3"]
    for r in records:
        assert set(r) >= {"job_id", "attempt", "host", "device", "start", "end", "exit_status", "log"}
        assert r["status"] == "ok" and "RESULT_DIR" in Path(r["log"]).read_text()
        assert json.loads((tmp_path / r["result_dir"] / "record.json").read_text())["cuda"] == r["device"]
    report = json.loads((tmp_path / "runs" / "jobs" / "run_log.json").read_text())
    assert report["totals"]["done"] == 4 and {j["exit_status"] for j in report["jobs"]} == {0}
    assert all("RESULT_DIR" in j["stderr_tail"] and j["duration_s"] > 0 for j in report["jobs"])
    assert sum(s["busy_s"] for s in report["slots"]) > 0

    assert rdt.main(argv) == 0  # everything finished: nothing runs again
    captured = capsys.readouterr()
    assert "4 of 4 jobs already finished" in captured.err and len(ledger(tmp_path)) == 4


def test_without_a_result_line_the_folder_is_found(fake_script, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cluster = local_cluster(tmp_path, fake_script)
    jobs = write_json(tmp_path / "jobs.json", [{"prefix": "quiet", "fold": 3, "no_result_line": True,
                                                "job_id": "q"}])
    assert rdt.main(["--cluster-config", cluster, "--jobs-config", jobs, "--quiet"]) == 0
    assert ledger(tmp_path)[0]["result_dir"] == "experiments/quiet/fold3_p3"


def test_retries_then_failure_lists_the_log(fake_script, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cluster = local_cluster(tmp_path, fake_script)
    jobs = write_json(tmp_path / "jobs.json", [
        {"prefix": "f", "fold": 0, "job_id": "flaky", "fail_once_dir": str(tmp_path / "m")},
        {"prefix": "f", "fold": 1, "job_id": "broken", "sleep": "not a number"}])
    assert rdt.main(["--cluster-config", cluster, "--jobs-config", jobs, "--retries", "1"]) == 1
    out = capsys.readouterr().out
    assert "1 done, 1 failed" in out and "broken  failed (exit 2)  runs/jobs/logs/broken.log" in out
    attempts = [(r["job_id"], r["attempt"], r["status"]) for r in ledger(tmp_path)]
    # An argparse error (usage, exit 2) is the same on every try: never retried.
    assert sorted(attempts) == [("broken", 1, "failed"), ("flaky", 1, "failed"), ("flaky", 2, "ok")]


def test_timeout_kills_the_job(fake_script, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cluster = local_cluster(tmp_path, fake_script)
    jobs = write_json(tmp_path / "jobs.json", [{"prefix": "t", "fold": 0, "sleep": 600, "job_id": "slow"}])
    assert rdt.main(["--cluster-config", cluster, "--jobs-config", jobs, "--timeout", "1", "--quiet"]) == 1
    assert [(r["status"], r["exit_status"]) for r in ledger(tmp_path)] == [("timeout", 143)]
    assert not processes_with(f"{fake_script} --prefix t")


def test_all_hosts_down_is_a_clear_nonzero_exit(fake_script, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    port = free_port("127.0.0.1")  # nothing listens there
    cluster = write_json(tmp_path / "cluster.json", {
        "servers": [{"host": "127.0.0.1", "port": port, "gpus": [0]}],
        "known_hosts": str(tmp_path / "kh"), "ssh_config": str(tmp_path / "none"),
        "script_path": str(fake_script)})
    jobs = write_json(tmp_path / "jobs.json", [{"fold": 0, "job_id": "never"}])
    assert rdt.main(["--cluster-config", cluster, "--jobs-config", jobs, "--quiet",
                     "--down-timeout", "1"]) == 3
    err = capsys.readouterr().err
    assert "cannot connect" in err and "every host has been down" in err and "rerun to resume" in err


def test_a_ledger_that_cannot_be_written_stops_the_run_instead_of_hanging_it(fake_script, tmp_path, capsys,
                                                                              monkeypatch):
    write = run_ledger.Ledger.write

    def full_disk(self, record):  # the start lines go through; every end line fails
        if record["status"] != "started":
            raise OSError(28, "No space left on device")
        write(self, record)
    monkeypatch.setattr(run_ledger.Ledger, "write", full_disk)
    monkeypatch.chdir(tmp_path)
    jobs = write_json(tmp_path / "jobs.json", [{"prefix": "d", "fold": f} for f in range(3)])
    def hung(signum, frame):
        pytest.fail("the run hung")
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(120)  # a hang fails this test instead of stalling the suite
    try:
        status = rdt.main(["--cluster-config", local_cluster(tmp_path, fake_script), "--jobs-config", jobs, "--quiet"])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert status == 3
    assert "No space left on device; stopping (the ledger is intact: rerun to resume)" in capsys.readouterr().err


def test_the_planner_hands_out_only_ready_tasks(tmp_path):
    tasks = [Task({"job_id": "base-k"}, builds="k"), Task({"job_id": "dependent"}, needs="k"),
             Task({"job_id": "other"})]
    plan = Plan(tasks, run_ledger.Ledger(tmp_path / "ledger.jsonl"), tmp_path)
    base = plan.take(timeout=0.01)
    assert [t.job_id for t in base] == ["base-k"] and [t.job_id for t in plan.take(timeout=0.01)] == ["other"]
    assert plan.take(timeout=0.01) == [] and not plan.finished
    assert [t.job_id for t in plan.take(early=True)] == ["dependent"]  # a backend that waits on its base task
    plan.put_back(tasks[1:2])
    plan.start(base)
    plan.succeeded(base[0])  # the base model is in the cache now
    assert [t.job_id for t in plan.take(timeout=0.01)] == ["dependent"]


@pytest.mark.slow
def test_sigint_locally_stops_the_job(fake_script, tmp_path):
    cluster = local_cluster(tmp_path, fake_script)
    block = tmp_path / "block"
    block.touch()
    jobs = write_json(tmp_path / "jobs.json", [{"prefix": "s", "fold": 0, "block_file": str(block),
                                                "started_dir": str(tmp_path), "job_id": "s0"}])
    runner = subprocess.Popen([sys.executable, str(ROOT / "run_distributed_training.py"), "--cluster-config",
                               cluster, "--jobs-config", jobs, "--quiet"], cwd=tmp_path,
                              stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not list(tmp_path.glob("*-fold0")):
        assert time.time() < deadline, "the job never started"
        time.sleep(0.05)
    runner.send_signal(signal.SIGINT)
    _, err = runner.communicate(timeout=30)
    assert runner.returncode == 130 and "rerun the same command" in err
    assert not processes_with(str(block))
    assert [r["status"] for r in ledger(tmp_path)] == ["interrupted"]


def test_the_run_ends_with_the_report_headline(tmp_path, capsys):
    exp = tmp_path / "exp"
    for fold, (target, base_f1, personal_f1) in enumerate([("a", 0.5, 0.75), ("b", 0.6, 0.7)]):
        folder = exp / "grid" / "mode-full_fine_tuning" / f"fold{fold}_{target}"
        folder.mkdir(parents=True)
        (folder / "hyperparameters.json").write_text(json.dumps(
            {"mode": "full_fine_tuning", "fold": fold, "target_participant": target, "batch_size": 64}))
        (folder / "metrics.json").write_text(json.dumps(
            {"mode": "full_fine_tuning", "best_base_model_target_test_f1": base_f1,
             "best_target_model_target_test_f1": personal_f1, "best_base_epoch": 3, "best_target_epoch": 5}))
    jobs = [{"job_id": f"j{fold}", "fold": fold, "mode": "full_fine_tuning", "experiments_dir": str(exp),
             "prefix": "grid/mode-full_fine_tuning"} for fold in (0, 1)]
    print_report_headline(jobs)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "report: python summarize_results.py " + shlex.quote(str(exp / "grid" / "*"))
    assert "F1 0.550 -> 0.725 (gain +0.175), responders 2/2" in out[1]


def test_a_job_tried_before_reruns_over_its_own_folder_only(fake_script, tmp_path, capsys, monkeypatch):
    # An earlier attempt of this run published "again"'s folder but never came home (the runner
    # died): the ledger says unfinished and the folder records this run's token, so the rerun
    # replaces it. "fresh"'s folder records another run's token: it is kept, the job fails in one
    # line and is not retried, and only --overwrite replaces it.
    monkeypatch.chdir(tmp_path)
    cluster = local_cluster(tmp_path, fake_script)
    jobs = write_json(tmp_path / "jobs.json", [{"prefix": "again", "fold": 0, "job_id": "again"},
                                               {"prefix": "again", "fold": 1, "job_id": "fresh"}])
    for name, token in (("fold0_p0", "r1.again"), ("fold1_p1", "other-run.fresh")):
        (tmp_path / "experiments" / "again" / name).mkdir(parents=True)
        (tmp_path / "experiments" / "again" / name / "hyperparameters.json").write_text(
            json.dumps({"run_token": token}))
    (tmp_path / "runs" / "jobs").mkdir(parents=True)
    (tmp_path / "runs" / "jobs" / "run_id").write_text("r1\n")
    (tmp_path / "runs" / "jobs" / "ledger.jsonl").write_text(
        json.dumps({"job_id": "again", "attempt": 1, "status": "failed"}) + "\n")
    argv = ["--cluster-config", cluster, "--jobs-config", jobs, "--retries", "2"]
    assert rdt.main(argv) == 1
    status = {(r["job_id"], r["attempt"]): r["status"] for r in ledger(tmp_path)}
    assert status == {("again", 1): "failed", ("again", 2): "ok", ("fresh", 1): "failed"}  # not retried
    record = json.loads((tmp_path / "experiments" / "again" / "fold0_p0" / "record.json").read_text())
    assert "--run_token" in record["argv"] and "--overwrite" not in record["argv"]
    kept = tmp_path / "experiments" / "again" / "fold1_p1"
    assert [p.name for p in kept.iterdir()] == ["hyperparameters.json"]
    out = capsys.readouterr().out
    assert "fresh  failed (exit 2)" in out and f"{Path('experiments/again/fold1_p1')}: result folder exists" in out
    assert rdt.main(argv + ["--overwrite"]) == 0
    assert "--overwrite" in json.loads((kept / "record.json").read_text())["argv"]


class RecordingHost:
    """Isolates _send_base's paths: answers the intact check 'no', records every call."""
    name = "gpu9"

    def __init__(self):
        self.commands, self.uploads = [], []

    def run(self, command, **_):
        self.commands.append(command)
        return shell.Result(command, 1 if len(self.commands) == 1 else 0, "")

    def put_dir(self, local, remote_path):
        self.uploads.append(remote_path)
        return {}


def test_a_base_model_is_sent_to_a_relative_workdir(tmp_path):
    server = check_server({"host": "gpu9", "workdir": "proj", "gpus": [0]}, "test")
    host = RecordingHost()
    transfer = HostTransfer("oct1_train.py", say=lambda message: None)
    slot = hosts.Slot(host, server, 0, "gpu9:0")
    transfer.send_base(slot, {"mode": "full_fine_tuning"}, "k1")
    check, place = host.commands
    # Shell commands run after `cd proj`, so their paths are relative to it; SFTP's start at home.
    assert check.startswith("cd proj && ") and check.endswith(" experiments/base_models/k1")
    assert host.uploads == [f"proj/experiments/base_models/.k1.upload{os.getpid()}"]
    assert f"mv -T -- experiments/base_models/.k1.upload{os.getpid()} experiments/base_models/k1" in place
    assert "proj/proj" not in check + place


def test_a_timed_out_job_gets_time_to_clean_up_and_nothing_after_it_runs(tmp_path):
    # TERM first: a job's SIGTERM handler runs to its end before the group is killed.
    code = (f"import pathlib, signal, time\n"
            f"def stop(*_):\n    time.sleep(1)\n    pathlib.Path({str(tmp_path / 'cleaned')!r}).touch()\n"
            f"    raise SystemExit(143)\n"
            f"signal.signal(signal.SIGTERM, stop)\ntime.sleep(60)")
    host = shell.LocalHost()
    host.connect()
    try:
        result = host.run(f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}; echo never", timeout=1)
    finally:
        host.close()
    assert result.timed_out and (tmp_path / "cleaned").exists() and "never" not in result.stdout


def test_a_prefix_that_leaves_experiments_is_refused_before_anything_runs(fake_script, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    jobs = write_json(tmp_path / "jobs.json", [{"prefix": "../../out", "fold": 0, "job_id": "up"}])
    assert rdt.main(["--cluster-config", local_cluster(tmp_path, fake_script), "--jobs-config", jobs]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "job 0.prefix" in err and "inside --experiments_dir" in err
    assert not (tmp_path / "runs" / "jobs" / "ledger.jsonl").exists()


def test_the_summary_counts_base_model_jobs_apart_from_the_jobs_not_run(tmp_path):
    tasks = [Task({"job_id": "b"}), Task({"job_id": "base-k"}, builds="k"), Task({"job_id": "a"}, needs="k")]
    plan = Plan(tasks, run_ledger.Ledger(tmp_path / "ledger.jsonl"), tmp_path)
    [b] = plan.take()
    plan.start([b])
    plan.succeeded(b)  # then Ctrl-C: the base model and its dependent never ran
    line = summary_lines(plan, 0, 1.0)[0]
    assert line.startswith("1 done, 0 failed, 0 cancelled, 0 blocked, 0 skipped (finished earlier), 1 not run "
                           "(and 1 base-model jobs)")


def test_an_abbreviated_runner_option_is_refused(capsys):
    # --retry was taken for --retries; an abbreviation may later name another option.
    with pytest.raises(SystemExit) as exit_:
        rdt.parse_args(["--retry", "2"])
    assert exit_.value.code == 2 and "unrecognized arguments: --retry" in capsys.readouterr().err


class InstantBackend:
    """A whole backend in the driver's methods (runner.driver): two places; each task ends as it starts,
    "b" failing. What a fourth backend implements, and no more."""
    name = "instant"

    def __init__(self, plan):
        self.plan = plan

    def open(self):
        pass

    def capacity(self):
        return [("left", 1), ("right", 1)], 2

    def start(self, packs):
        for place, tasks in packs:
            self.plan.start(tasks, host=place)
            for task in tasks:
                failed = task.job_id == "b"
                settle(self.plan, task, Ending(done=not failed, exit_status=int(failed),
                                               fields={"exit_status": int(failed)}))
            self.plan.process_done()

    def poll(self):
        return False

    def wait(self):
        pass

    def pending(self):
        return 0

    def cancel(self, tasks):
        return list(tasks)

    def stop(self):
        pass

    def close(self):
        pass

    def figures(self, wall):
        return Figures(lines=["instant: 2 places"])

    def where(self):
        return "2 places"


def test_a_backend_is_its_methods_and_the_driver_owns_the_end(tmp_path, capsys):
    tasks = [Task({"job_id": "base-k"}, builds="k"), Task({"job_id": "a"}, needs="k"), Task({"job_id": "b"})]
    ledger = run_ledger.Ledger(tmp_path / "ledger.jsonl")
    plan = Plan(tasks, ledger, tmp_path / "logs", retries=1)
    args = SimpleNamespace(cluster_config="c.json", jobs_config="j.json")
    status = drive(InstantBackend(plan), plan, False, Say(quiet=True), args, 0, tmp_path / "run_log.json")
    ledger.close()
    assert status == 1  # b failed twice: its retry is the planner's, the exit status the driver's
    ended = [(r["job_id"], r["status"], r["host"]) for r in run_ledger.Ledger.read(tmp_path / "ledger.jsonl")
             if r["status"] != "started"]
    assert ended == [("base-k", "ok", "left"), ("b", "failed", "right"), ("a", "ok", "left"), ("b", "failed", "right")]
    report = json.loads((tmp_path / "run_log.json").read_text())
    assert report["backend"] == "instant" and report["totals"]["done"] == 1 and report["totals"]["failed"] == 1
    out = capsys.readouterr().out
    assert out.startswith("instant: 2 places\n1 done, 1 failed") and "failed jobs:\n  b  failed (exit 1)" in out
