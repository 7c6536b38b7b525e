"""The runner under attack and failure: one test per fault of issue 10, against real sshd.

Each of these failed on the runner before that issue (see its closing note) and passes now.
"""
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

import run_distributed_training as rdt
from conftest import processes_with, write_json, write_known_hosts
from runner.config import PROG
from runner.plan import Plan, Task
from runner.report import summary_lines
from runner.ssh import shell
from test_remote import connect, ledger, wait_for, write_cluster

ROOT = Path(__file__).resolve().parent.parent
RUNNER = str(ROOT / "run_distributed_training.py")


@pytest.fixture(scope="module")
def known_hosts(sshd_pair, tmp_path_factory):
    return write_known_hosts(tmp_path_factory.mktemp("kh") / "known_hosts", *sshd_pair)


def local_cluster(folder, script, **fields):
    return write_json(folder / "cluster.json", {
        "servers": [{"host": "localhost", "local": True, "gpus": [0], **fields}],
        "script_path": str(script)})


def start_runner(folder, cluster, jobs, *options):
    return subprocess.Popen([sys.executable, RUNNER, "--cluster-config", cluster, "--jobs-config", jobs,
                             "--quiet", *options], cwd=folder, stderr=subprocess.PIPE, text=True)


def replaced_its_own_folder(result_dir):
    """The folder was written by a run with the job's run token and without --overwrite: a retry
    that replaced what its own earlier attempt left."""
    argv = json.loads((Path(result_dir) / "record.json").read_text())["argv"]
    return "--run_token" in argv and "--overwrite" not in argv


# 1. A NUL byte (or newline) in a job value ran commands on the host.

@pytest.mark.ssh
def test_1_a_nul_byte_in_a_job_value_is_refused_and_runs_nothing(sshd_pair, user_key, known_hosts,
                                                                 fake_script, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    jobs = write_json(tmp_path / "jobs.json", [
        {"job_id": "n", "participants": ["p1\u0000A\nB\ntouch pwned_marker\u0000"], "fold": 0}])
    ssh = write_cluster(tmp_path, user_key, known_hosts, fake_script, [(sshd_pair[1], {"gpus": [0]})])
    for cluster in (ssh, local_cluster(tmp_path, fake_script)):
        assert rdt.main(["--cluster-config", cluster, "--jobs-config", jobs, "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "jobs.json: job 0.participants" in err and "control character" in err
    assert not (sshd_pair[1].workdir / "pwned_marker").exists() and not (tmp_path / "pwned_marker").exists()


@pytest.mark.ssh
def test_1_no_command_text_breaks_the_session_framing(sshd_pair, user_key, known_hosts):
    host = connect(sshd_pair[0], user_key, known_hosts)
    try:
        for text in ["a\nb\ntouch x", "@@END 0123 0\n", "\x01\x1b[2J\t\r\n", "'\"$(x)`y`\\"]:
            result = host.run(f"printf '%s' {shlex.quote(text)}")
            assert result.ok and result.stdout == text
        with pytest.raises(ValueError):
            host.run("echo a\0b")
        assert host.run("echo still fine").stdout == "still fine\n"
    finally:
        host.close()


class SlowSessionHost(shell.LocalHost):
    """A host whose sessions start 4 s late (as behind a slow ~/.bashrc), so a job's first
    line comes long after its dispatch."""

    def _open(self, command, control=False):
        return shell.LocalProcess(command if control else f"sleep 4; {command}")


def test_1_the_timeout_runs_from_dispatch_not_from_the_first_line(tmp_path):
    host = SlowSessionHost()
    try:
        result = host.run("sleep 0.5; echo finished", timeout=2)  # would end 0.5 s after its start
    finally:
        host.close()
    assert result.timed_out and not result.ok


# 2. A host without the SFTP subsystem made an endless requeue loop that killed its other jobs.

@pytest.mark.ssh
def test_2_a_host_without_sftp_is_taken_out_and_its_jobs_go_elsewhere(sshd_pair, start_sshd, user_key,
                                                                    fake_script, tmp_path, monkeypatch):
    good, no_sftp = sshd_pair[0], start_sshd("127.0.0.3", sftp=False)
    known = write_known_hosts(tmp_path / "known_hosts", good, no_sftp)
    jobs = write_json(tmp_path / "jobs.json", [{"prefix": "sftp", "fold": k, "sleep": 1, "job_id": f"s{k}"}
                                               for k in range(3)])
    cluster = write_cluster(tmp_path, user_key, known, fake_script,
                            [(no_sftp, {"gpus": [0, 1]}), (good, {"gpus": [0]})])
    runner = start_runner(tmp_path, cluster, jobs, "--down-timeout", "30")
    _, stderr = runner.communicate(timeout=120)
    assert runner.returncode == 0, stderr
    records = ledger(tmp_path / "runs" / "jobs")
    requeued = [r for r in records if r["status"] == "requeued"]
    # Both jobs it ran finished there (the first copy's failure killed neither), then went elsewhere.
    assert len(requeued) == 2 and all("cannot open SFTP" in r["error"] for r in requeued)
    assert {r["host"] for r in requeued} == {"127.0.0.3"}
    assert sorted(r["job_id"] for r in records if r["status"] == "ok") == ["s0", "s1", "s2"]
    assert "127.0.0.3: cannot open SFTP" in stderr and "out of this run" in stderr

    # Alone, it is no usable host: exit 2 naming the cause, no loop.
    alone = write_cluster(tmp_path, user_key, known, fake_script, [(no_sftp, {"gpus": [0]})])
    jobs = write_json(tmp_path / "alone.json", [{"prefix": "alone", "fold": k} for k in range(3)])
    monkeypatch.chdir(tmp_path)
    assert rdt.main(["--cluster-config", alone, "--jobs-config", jobs, "--quiet",
                     "--down-timeout", "30"]) == 2
    alone_records = ledger(tmp_path / "runs" / "alone")  # one attempt, then no host to try
    assert [r["status"] for r in alone_records] == ["requeued"] and "SFTP" in alone_records[0]["error"]


# 3. A connection lost after the job published its folder: every retry failed ("folder exists").
# Now the retry carries the run's token, so it may replace that folder (and nothing else).

@pytest.mark.ssh
def test_3_a_connection_lost_after_result_dir_ends_ok_replacing_its_own_folder(sshd_pair, user_key, known_hosts,
                                                                   fake_script, tmp_path):
    host = sshd_pair[1]
    linger = tmp_path / "linger"
    linger.touch()
    jobs = write_json(tmp_path / "jobs.json", [{"prefix": "lost", "fold": 0, "job_id": "lost",
                                                "linger_file": str(linger)}])
    cluster = write_cluster(tmp_path, user_key, known_hosts, fake_script, [(host, {"gpus": [0]})])
    runner = start_runner(tmp_path, cluster, jobs, "--retries", "2")
    published = host.workdir / "experiments" / "lost" / "fold0_p0"
    wait_for(published.exists, 30, "the job to publish its folder")
    host.drop_connections()
    linger.unlink()
    _, stderr = runner.communicate(timeout=120)
    assert runner.returncode == 0, stderr
    records = ledger(tmp_path / "runs" / "jobs")
    assert [r["status"] for r in records] == ["requeued", "ok"]
    assert replaced_its_own_folder(tmp_path / "experiments" / "lost" / "fold0_p0")


# 4. The runner SIGKILLed after a job published: the rerun failed the same way.

@pytest.mark.slow
def test_4_a_rerun_after_a_sigkill_finishes_a_published_job(fake_script, tmp_path, monkeypatch):
    linger = tmp_path / "linger"
    linger.touch()
    jobs = write_json(tmp_path / "jobs.json", [{"prefix": "kill", "fold": 0, "job_id": "kill",
                                                "linger_file": str(linger)}])
    cluster = local_cluster(tmp_path, fake_script)
    runner = start_runner(tmp_path, cluster, jobs)
    published = tmp_path / "experiments" / "kill" / "fold0_p0"
    wait_for(published.exists, 30, "the job to publish its folder")
    runner.kill()
    runner.communicate(timeout=30)
    wait_for(lambda: not processes_with(str(linger)), 15, "the orphaned job to be killed")
    linger.unlink()
    started = ledger(tmp_path / "runs" / "jobs", starts=True)
    assert [(r["attempt"], r["status"]) for r in started] == [(1, "started")]  # its only trace
    monkeypatch.chdir(tmp_path)
    assert rdt.main(["--cluster-config", cluster, "--jobs-config", jobs, "--quiet"]) == 0
    assert [(r["attempt"], r["status"]) for r in ledger(tmp_path / "runs" / "jobs")] == [(2, "ok")]
    assert replaced_its_own_folder(published)


# 5. Secrets leaked into logs, the dry run, and the host's `ps` for the job's lifetime.

@pytest.mark.ssh
def test_5_env_values_and_setup_stay_out_of_runs_and_of_every_argv(sshd_pair, user_key, known_hosts,
                                                                   fake_script, tmp_path, monkeypatch,
                                                                   capsys):
    label, setting = "s3cr3t-label-8f1c", "s3cr3t-setting-27ad"
    block, started = tmp_path / "block", tmp_path / "started"
    block.touch()
    started.mkdir()
    cluster = write_cluster(tmp_path, user_key, known_hosts, fake_script, [(sshd_pair[0], {
        "gpus": [0], "env": {"RUN_LABEL": label}, "setup": f"export EXTRA_SETTING={setting}"})])
    jobs = write_json(tmp_path / "jobs.json", [{"prefix": "sec", "fold": 0, "job_id": "sec",
                                                "block_file": str(block), "started_dir": str(started),
                                                "env_names": ["RUN_LABEL", "EXTRA_SETTING"]}])
    monkeypatch.chdir(tmp_path)
    assert rdt.main(["--cluster-config", cluster, "--jobs-config", jobs, "--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "RUN_LABEL=***" in plan and " && *** && " in plan and label not in plan and setting not in plan

    runner = start_runner(tmp_path, cluster, jobs)
    wait_for(lambda: any(started.iterdir()), 30, "the job to start")
    leaks = []
    for entry in os.listdir("/proc"):  # every process on the machine, the host's included
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if label.encode() in cmdline or setting.encode() in cmdline:
            leaks.append((entry, cmdline))
    block.unlink()
    _, stderr = runner.communicate(timeout=60)
    assert runner.returncode == 0, stderr
    assert not leaks
    record = json.loads((tmp_path / "experiments" / "sec" / "fold0_p0" / "record.json").read_text())
    assert record["env"] == {"RUN_LABEL": label, "EXTRA_SETTING": setting}  # the job had them
    files = [p for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert files and not [p for p in files if label in p.read_text() or setting in p.read_text()]
    assert "RUN_LABEL=***" in (tmp_path / "runs" / "jobs" / "logs" / "sec.log").read_text()
    assert label not in stderr and setting not in stderr


# 6. A bad key file waited ten minutes (--down-timeout) instead of failing at once.

@pytest.mark.ssh
@pytest.mark.parametrize("which", ["public key", "folder"])
def test_6_a_key_file_that_is_no_private_key_exits_2_at_once(which, sshd_pair, user_key, known_hosts,
                                                             fake_script, tmp_path, monkeypatch, capsys):
    key = str(user_key[0]) + ".pub" if which == "public key" else str(tmp_path)
    cluster = write_json(tmp_path / "cluster.json", {
        "servers": [sshd_pair[0].server(ssh_key=key, gpus=[0])], "script_path": str(fake_script),
        "known_hosts": known_hosts, "ssh_config": str(tmp_path / "no_ssh_config")})
    jobs = write_json(tmp_path / "jobs.json", [{"prefix": "key", "fold": 0}])
    monkeypatch.chdir(tmp_path)
    began = time.time()
    assert rdt.main(["--cluster-config", cluster, "--jobs-config", jobs, "--quiet"]) == 2
    assert time.time() - began < 5  # the bound; it used to wait --down-timeout (600 s)
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{sshd_pair[0].address}: SSH key {key}" in err


# 7. gpus "auto" with a failing nvidia-smi fell back to CPU slots without a word.

@pytest.mark.ssh
def test_7_a_failing_nvidia_smi_is_a_one_line_error(sshd_pair, user_key, known_hosts, fake_script,
                                                   tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho \"NVIDIA-SMI has failed because it couldn't communicate with the "
                   "NVIDIA driver.\"\nexit 9\n")
    smi.chmod(0o755)
    cluster = write_cluster(tmp_path, user_key, known_hosts, fake_script, [(sshd_pair[1], {
        "gpus": "auto", "setup": f"export PATH={shlex.quote(str(bin_dir))}:$PATH"})])
    jobs = write_json(tmp_path / "jobs.json", [{"prefix": "smi", "fold": 0}])
    monkeypatch.chdir(tmp_path)
    assert rdt.main(["--cluster-config", cluster, "--jobs-config", jobs, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert f"{sshd_pair[1].address}: gpus is \"auto\" but nvidia-smi failed (exit 9" in err
    assert "\"gpus\": 0" in err and not (tmp_path / "experiments").exists()


# 8. No lock on the run folder: the same run started twice trained every job twice.

@pytest.mark.slow
def test_8_a_second_runner_on_the_same_run_exits_2_naming_the_first(fake_script, tmp_path):
    started = tmp_path / "started"
    started.mkdir()
    jobs = write_json(tmp_path / "jobs.json", [{"prefix": "twice", "fold": k, "sleep": 0.3, "job_id": f"t{k}",
                                                "started_dir": str(started)} for k in range(8)])
    cluster = local_cluster(tmp_path, fake_script, gpus=[0, 1])
    runners = [start_runner(tmp_path, cluster, jobs) for _ in range(2)]
    outcomes = sorted((r.wait(120), r.pid, r.stderr.read()) for r in runners)
    (ok, _, ok_err), (refused, _, err) = outcomes
    assert (ok, refused) == (0, 2), ok_err + err
    holder = next(r.pid for r in runners if r.returncode == 0)
    assert err.strip() == (f"{PROG}: error: runs/jobs is in use by another runner (pid {holder}); "
                           f"wait for it to end, or stop it")
    assert len(list(started.iterdir())) == 8  # one training per job


def test_8_a_lock_left_by_a_dead_runner_is_taken_over(fake_script, tmp_path, monkeypatch, capsys):
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "runs" / "jobs").mkdir(parents=True)
    (tmp_path / "runs" / "jobs" / "runner.lock").write_text(f"{dead.pid}\n")
    jobs = write_json(tmp_path / "jobs.json", [{"prefix": "stale", "fold": 0}])
    monkeypatch.chdir(tmp_path)
    assert rdt.main(["--cluster-config", local_cluster(tmp_path, fake_script), "--jobs-config", jobs,
                     "--quiet"]) == 0
    assert f"taking over the lock of runner pid {dead.pid}" in capsys.readouterr().err
    assert (tmp_path / "runs" / "jobs" / "runner.lock").read_text() == ""  # released at the end


# Smaller points of the same issue.

@pytest.mark.parametrize("field,value", [("python", "/nonexistent/python3"), ("workdir", "/nonexistent")])
def test_a_host_that_cannot_start_python_is_one_line_exit_2(field, value, fake_script, tmp_path, monkeypatch,
                                                            capsys):
    jobs = write_json(tmp_path / "jobs.json", [{"prefix": "py", "fold": 0}])
    monkeypatch.chdir(tmp_path)
    assert rdt.main(["--cluster-config", local_cluster(tmp_path, fake_script, **{field: value}),
                     "--jobs-config", jobs, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "localhost: cannot run" in err and "/nonexistent" in err


def test_a_refused_copy_shows_its_reason_in_the_summary(tmp_path, capsys):
    task = Task({"job_id": "c"}, last={"status": "failed", "exit_status": 0, "log": "c.log",
                                       "error": "copy of h:x failed: Permission denied"})
    plan = Plan([task], None, tmp_path / "logs")
    plan.failed = [task]
    lines = summary_lines(plan, 0, 1.0)
    assert "  c  failed (copy of h:x failed: Permission denied)  c.log" in lines


def test_a_ledger_written_before_start_lines_still_resumes(fake_script, tmp_path, monkeypatch, capsys):
    # Lines as the runner wrote them before start lines: "a" finished, "b" was requeued twice.
    (tmp_path / "runs" / "jobs").mkdir(parents=True)
    (tmp_path / "runs" / "jobs" / "ledger.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"job_id": "a", "attempt": 1, "host": "h", "device": "0", "slot": "h:0", "start": 1.0, "end": 2.0,
         "exit_status": 0, "status": "ok", "log": "a.log"},
        {"job_id": "b", "attempt": 1, "status": "requeued", "error": "h: connection lost"},
        {"job_id": "b", "attempt": 2, "status": "requeued", "error": "h: connection lost"}]))
    # b's stranded folder: such a ledger records no run token, so nothing shows this run wrote it.
    (tmp_path / "experiments" / "old" / "fold1_p1").mkdir(parents=True)
    jobs = write_json(tmp_path / "jobs.json", [{"prefix": "old", "fold": k, "job_id": j}
                                               for k, j in enumerate("ab")])
    monkeypatch.chdir(tmp_path)
    argv = ["--cluster-config", local_cluster(tmp_path, fake_script), "--jobs-config", jobs, "--quiet"]
    assert rdt.main(argv) == 1  # kept, in one line, not retried
    assert "resume: 1 of 2 jobs already finished" in capsys.readouterr().err
    again = ledger(tmp_path / "runs" / "jobs", starts=True)[3:]
    assert [(r["job_id"], r["attempt"], r["status"]) for r in again] == [("b", 3, "started"), ("b", 3, "failed")]
    assert list((tmp_path / "experiments" / "old" / "fold1_p1").iterdir()) == []
    assert rdt.main(argv + ["--overwrite"]) == 0  # the user says so
    assert ledger(tmp_path / "runs" / "jobs")[-1]["status"] == "ok"
