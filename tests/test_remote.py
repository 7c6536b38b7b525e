"""shell.py and the runner against real OpenSSH servers on 127.0.0.1 and 127.0.0.2."""
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import paramiko
import pytest

import run_distributed_training as rdt
from conftest import processes_with, write_json, write_known_hosts
from dataset import synthetic
from engine import cli as engine_cli
from runner import commands
from runner.ssh import shell
from runner.ssh.connection import RemoteHost

pytestmark = pytest.mark.ssh

ROOT = Path(__file__).resolve().parent.parent
TIMING_FIELDS = ("total_time_s", "train_windows_per_s")


def connect(server, user_key, known_hosts, **options):
    host = RemoteHost(server.address, "root", server.port, str(user_key[0]),
                             known_hosts=known_hosts, ssh_config=None, **options)
    host.connect()
    return host


@pytest.fixture(scope="module")
def known_hosts(sshd_pair, tmp_path_factory):
    return write_known_hosts(tmp_path_factory.mktemp("kh") / "known_hosts", *sshd_pair)


@pytest.fixture
def host_a(sshd_pair, user_key, known_hosts):
    host = connect(sshd_pair[0], user_key, known_hosts)
    yield host
    host.close()


def write_cluster(folder, user_key, known_hosts, script, servers):
    """A cluster config for [(LoopbackSSHD, extra fields), ...]; ~/.ssh is not read."""
    return write_json(folder / "cluster.json", {
        "servers": [s.server(ssh_key=str(user_key[0]), **fields) for s, fields in servers],
        "script_path": str(script), "known_hosts": known_hosts,
        "ssh_config": str(folder / "no_ssh_config")})


def ledger(run_dir, starts=False):
    """The ledger's lines; without start lines unless asked for."""
    records = [json.loads(line) for line in (Path(run_dir) / "ledger.jsonl").read_text().splitlines()]
    return [r for r in records if starts or r["status"] != "started"]


def wait_for(condition, timeout, what):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# ------------------------------------------------------------- shell.py


def test_run_streams_output_and_returns_exit_status(host_a):
    chunks = []
    result = host_a.run("echo out; sleep 0.2; echo err >&2; exit 3", stream=chunks.append)
    assert result.exit_status == 3 and not result.ok
    assert b"".join(chunks) == b"out\nerr\n" and len(chunks) >= 2  # arrived as it came
    assert host_a.run("printf '%s' \"$HOME\"").stdout == os.path.expanduser("~")


def test_one_connection_is_shared_by_concurrent_commands(host_a):
    seen = []

    def job():
        seen.append(host_a.run("echo $SSH_CONNECTION; sleep 1").stdout.split()[1])

    threads = [threading.Thread(target=job) for _ in range(4)]
    started = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 4 and len(set(seen)) == 1  # one client port: one TCP connection
    assert time.time() - started < 3.9  # and the four ran at once (one after another: >= 4 s)


def test_ssh_config_is_honoured(sshd_pair, user_key, known_hosts, tmp_path):
    server = sshd_pair[1]
    config = tmp_path / "ssh_config"
    config.write_text(f"Host gpubox\n  HostName {server.address}\n  Port {server.port}\n"
                      f"  User root\n  IdentityFile {user_key[0]}\n")
    jump = sshd_pair[0]  # and a host reached through another one, as behind a login node
    config.write_text(config.read_text() + f"Host inner\n  HostName {server.address}\n  Port {server.port}\n"
                      f"  User root\n  IdentityFile {user_key[0]}\n  ProxyCommand ssh -F /dev/null -i "
                      f"{user_key[0]} -o UserKnownHostsFile={known_hosts} -o BatchMode=yes -p {jump.port} "
                      f"-W %h:%p root@{jump.address}\n")
    for alias in ("gpubox", "inner"):
        host = RemoteHost(alias, ssh_config=str(config), known_hosts=known_hosts)
        host.connect()
        try:
            assert (host.hostname, host.port, host.user) == (server.address, server.port, "root")
            assert host.run("echo ok").stdout == "ok\n"
            assert (alias == "inner") == isinstance(host._client.get_transport().sock, paramiko.ProxyCommand)
        finally:
            host.close()


def test_unknown_host_key_is_refused_unless_accepted(sshd_pair, user_key, tmp_path):
    known = tmp_path / "known_hosts"
    with pytest.raises(shell.HostRefused, match="--accept-new-hosts"):
        connect(sshd_pair[1], user_key, str(known))
    assert not known.exists()
    host = connect(sshd_pair[1], user_key, str(known), accept_new_hosts=True)
    host.close()
    assert known.read_text().split()[1:] == sshd_pair[1].known_hosts_line.split()[1:]
    connect(sshd_pair[1], user_key, str(known)).close()  # known now


def test_changed_host_key_is_refused(sshd_pair, user_key, tmp_path):
    wrong_key = sshd_pair[0].known_hosts_line.split()[1:]
    known = tmp_path / "known_hosts"
    known.write_text(f"[{sshd_pair[1].address}]:{sshd_pair[1].port} {' '.join(wrong_key)}\n")
    with pytest.raises(shell.HostRefused, match="CHANGED"):
        connect(sshd_pair[1], user_key, str(known), accept_new_hosts=True)


def test_copy_folders_both_ways(host_a, sshd_pair, tmp_path):
    source = tmp_path / "src"
    (source / "a" / "b").mkdir(parents=True)
    (source / "top.txt").write_text("top")
    (source / "a" / "b" / "deep.bin").write_bytes(os.urandom(100_000))
    target = f"{sshd_pair[0].workdir}/copy/here"
    sent = host_a.put_dir(str(source), target)
    assert sent == shell.local_tree(source) == shell.local_tree(target)
    back = host_a.get_dir(target, tmp_path / "back")
    assert back == shell.local_tree(tmp_path / "back") == sent
    deep = Path("a", "b", "deep.bin")
    assert (tmp_path / "back" / deep).read_bytes() == (source / deep).read_bytes()


def test_idle_sessions_make_room_within_max_sessions(sshd_pair, user_key, known_hosts, tmp_path):
    host = connect(sshd_pair[0], user_key, known_hosts, max_sessions=3)  # 2 channels + 1 for kill
    try:
        threads = [threading.Thread(target=host.run, args=("sleep 0.5",)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(host._idle) == 2  # the third waited its turn and reused a session
        (tmp_path / "f").write_text("x")
        host.put_dir(str(tmp_path), f"{sshd_pair[0].workdir}/room")  # SFTP takes an idle one's place
        assert host.run("echo still").stdout == "still\n"
    finally:
        host.close()


def test_timeout_and_kill_leave_no_process(host_a):
    result = host_a.run("sleep 301.25", timeout=1)
    assert result.timed_out and not result.ok
    threading.Timer(1, host_a.kill_running).start()
    started = time.time()
    result = host_a.run("sleep 302.25; echo never")
    assert result.exit_status != 0 and "never" not in result.stdout and time.time() - started < 5
    # Only this test's sleeps: other work on the machine may be sleeping too.
    wait_for(lambda: not processes_with("sleep 301.25") and not processes_with("sleep 302.25"), 5, "no sleep left")


def test_dropped_connection_kills_the_remote_command(sshd_pair, user_key, known_hosts):
    host = connect(sshd_pair[0], user_key, known_hosts)
    outcome = []

    def job():
        try:
            host.run("sleep 303")
        except shell.HostDown as e:
            outcome.append(e)

    t = threading.Thread(target=job)
    t.start()
    wait_for(lambda: processes_with("sleep 303"), 5, "the command to start")
    host.close()  # as if the runner died: sshd closes the session, the watcher kills the job
    t.join(5)
    assert outcome and isinstance(outcome[0], shell.HostDown)
    wait_for(lambda: not processes_with("sleep 303"), 10, "the orphan to be killed")


def test_frozen_host_is_noticed_by_the_keepalive(start_sshd, user_key, tmp_path):
    server = start_sshd("127.0.0.1")
    known = write_known_hosts(tmp_path / "kh", server)
    host = connect(server, user_key, known, keepalive=0.5, dead_after=1.5)
    errors = []

    def job():
        try:
            host.run("sleep 304")
        except shell.HostDown as e:
            errors.append((time.time(), e))

    t = threading.Thread(target=job)
    t.start()
    wait_for(lambda: processes_with("sleep 304"), 5, "the command to start")
    frozen = time.time()
    server.signal(signal.SIGSTOP)  # the TCP connection stays up; nothing answers
    t.join(10)
    assert errors, "a frozen host went unnoticed"
    assert errors[0][0] - frozen < 4 and "keepalive" in str(errors[0][1])  # 0.5 + 1.5 s, plus slack
    server.stop()  # sshd gone: the job's watcher sees its stdin close and kills it
    wait_for(lambda: not processes_with("sleep 304"), 10, "the orphan to be killed")


# ------------------------------------------------------------- the runner over SSH


def test_grid_over_two_hosts_comes_home_one_device_per_job(sshd_pair, user_key, known_hosts,
                                                           fake_script, tmp_path, monkeypatch):
    a, b = sshd_pair
    cluster = write_cluster(tmp_path, user_key, known_hosts, fake_script,
                            [(a, {"gpus": [0, 1]}), (b, {"gpus": [3], "slots_per_gpu": 2,
                                                         "remove_results": True})])
    jobs = write_json(tmp_path / "jobs.json", [{"prefix": "grid/a b", "fold": k, "sleep": 0.5,
                                                "job_id": f"grid{k}"} for k in range(8)])
    monkeypatch.chdir(tmp_path)
    assert rdt.main(["--cluster-config", cluster, "--jobs-config", jobs, "--quiet"]) == 0
    records = {r["job_id"]: r for r in ledger(tmp_path / "runs" / "jobs")}
    assert len(records) == 8 and all(r["status"] == "ok" for r in records.values())
    assert {r["slot"] for r in records.values()} == {"127.0.0.1:0", "127.0.0.1:1",
                                                      "127.0.0.2:3#1", "127.0.0.2:3#2"}
    for k in range(8):
        home = tmp_path / "experiments" / "grid" / "a b" / f"fold{k}_p{k}"
        seen = json.loads((home / "record.json").read_text())
        record = records[f"grid{k}"]
        assert record["result_dir"] == f"experiments/grid/a b/fold{k}_p{k}"
        assert seen["cuda"] == record["device"]  # exactly its own device
        server = a if record["host"] == "127.0.0.1" else b
        assert seen["cwd"] == str(server.workdir)  # ran there, came home here
        remote_copy = server.workdir / "experiments" / "grid" / "a b" / f"fold{k}_p{k}"
        if server is a:
            assert shell.local_tree(remote_copy) == shell.local_tree(home)
        else:
            assert not remote_copy.exists()  # remove_results, after the check
    report = json.loads((tmp_path / "runs" / "jobs" / "run_log.json").read_text())
    assert report["totals"]["done"] == 8 and len(report["devices"]) == 3


def test_a_dead_host_loses_nothing(sshd_pair, start_sshd, user_key, fake_script, tmp_path):
    survivor, victim = sshd_pair[0], start_sshd("127.0.0.2")
    known = write_known_hosts(tmp_path / "known_hosts", survivor, victim)
    cluster = write_cluster(tmp_path, user_key, known, fake_script,
                            [(survivor, {"gpus": [0, 1]}), (victim, {"gpus": [0, 1]})])
    started = tmp_path / "started"
    started.mkdir()
    jobs = write_json(tmp_path / "jobs.json", [{"prefix": "fault", "fold": k, "sleep": 1.5,
                                                "started_dir": str(started), "job_id": f"f{k}"}
                                               for k in range(8)])
    runner = subprocess.Popen([sys.executable, str(ROOT / "run_distributed_training.py"),
                               "--cluster-config", cluster, "--jobs-config", jobs, "--quiet"],
                              cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(list(started.iterdir())) >= 4, 30, "four jobs to start")
    killed = time.time()
    victim.signal(signal.SIGKILL)  # sshd and its sessions die; the host is gone
    _, stderr = runner.communicate(timeout=120)
    finished = time.time()
    assert runner.returncode == 0, stderr
    assert "Traceback" not in stderr  # reconnecting says one line per try, not paramiko's traces
    records = ledger(tmp_path / "runs" / "jobs")
    requeued = [r for r in records if r["status"] == "requeued"]
    assert requeued and all(r["host"] == "127.0.0.2" for r in requeued)
    assert {r["job_id"] for r in records if r["status"] == "ok"} == {f"f{k}" for k in range(8)}
    for k in range(8):
        assert (tmp_path / "experiments" / "fault" / f"fold{k}_p{k}" / "record.json").exists()
    noticed = min(r["end"] for r in requeued) - killed
    print(f"\nfault test: dead host noticed after {noticed:.2f} s, run finished "
          f"{finished - killed:.1f} s after the kill")
    assert noticed < 35
    # The killed host's jobs were killed by their watchers, not left running.
    wait_for(lambda: not processes_with(str(started)), 10, "the dead host's jobs to be killed")


def test_a_job_that_fails_once_passes_with_one_retry(sshd_pair, user_key, known_hosts, fake_script,
                                                     tmp_path, monkeypatch):
    cluster = write_cluster(tmp_path, user_key, known_hosts, fake_script,
                            [(sshd_pair[0], {"gpus": [0]}), (sshd_pair[1], {"gpus": [0]})])
    jobs = write_json(tmp_path / "jobs.json", [{"prefix": "retry", "fold": k, "job_id": f"r{k}",
                                                "fail_once_dir": str(tmp_path / "failed")}
                                               for k in range(2)])
    monkeypatch.chdir(tmp_path)
    assert rdt.main(["--cluster-config", cluster, "--jobs-config", jobs, "--quiet", "--retries", "1"]) == 0
    records = ledger(tmp_path / "runs" / "jobs")
    for k in range(2):
        mine = [r for r in records if r["job_id"] == f"r{k}"]
        assert [(r["attempt"], r["status"], r["exit_status"]) for r in mine] == [(1, "failed", 1),
                                                                                  (2, "ok", 0)]
        log = Path(mine[0]["log"]).read_text()
        assert log.count("=== attempt") == 2 and "failing on purpose" in log  # both attempts kept


def test_sigint_stops_remote_jobs_and_a_rerun_finishes_the_rest(sshd_pair, user_key, known_hosts,
                                                                fake_script, tmp_path, monkeypatch):
    cluster = write_cluster(tmp_path, user_key, known_hosts, fake_script,
                            [(sshd_pair[0], {"gpus": [0]}), (sshd_pair[1], {"gpus": [0]})])
    block, started = tmp_path / "block", tmp_path / "started"
    block.touch()
    started.mkdir()
    jobs = [{"prefix": "int", "fold": k, "started_dir": str(started), "job_id": f"i{k}"} for k in range(2)]
    jobs += [{"prefix": "int", "fold": k, "started_dir": str(started), "block_file": str(block),
              "job_id": f"i{k}"} for k in range(2, 4)]
    jobs = write_json(tmp_path / "jobs.json", jobs)
    argv = ["--cluster-config", cluster, "--jobs-config", jobs, "--quiet"]
    runner = subprocess.Popen([sys.executable, str(ROOT / "run_distributed_training.py"), *argv],
                              cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(list(started.glob("*-fold[23]"))) == 2, 30, "the blocked jobs to start")
    runner.send_signal(signal.SIGINT)
    _, stderr = runner.communicate(timeout=60)
    assert runner.returncode == 130, stderr
    assert not processes_with(str(block))  # no job left running on either host
    statuses = {r["job_id"]: r["status"] for r in ledger(tmp_path / "runs" / "jobs")}
    assert statuses == {"i0": "ok", "i1": "ok", "i2": "interrupted", "i3": "interrupted"}

    block.unlink()
    monkeypatch.chdir(tmp_path)
    assert rdt.main(argv) == 0
    again = ledger(tmp_path / "runs" / "jobs")[4:]
    assert sorted((r["job_id"], r["status"]) for r in again) == [("i2", "ok"), ("i3", "ok")]


def test_injection_attempt_is_inert(sshd_pair, user_key, known_hosts, fake_script, tmp_path, monkeypatch):
    marks = [tmp_path / f"pwned{i}" for i in range(4)]
    evil = [f"a; touch {marks[0]}", f"$(touch {marks[1]})", f"`touch {marks[2]}`", "it's \"quoted\""]
    cluster = write_cluster(tmp_path, user_key, known_hosts, fake_script, [(sshd_pair[1], {"gpus": [0]})])
    jobs = write_json(tmp_path / "jobs.json", [{"prefix": "evil", "fold": 0, "participants": evil,
                                                "tag": f"x && touch {marks[3]}", "job_id": "evil"}])
    monkeypatch.chdir(tmp_path)
    assert rdt.main(["--cluster-config", cluster, "--jobs-config", jobs, "--quiet"]) == 0
    argv = json.loads((tmp_path / "experiments" / "evil" / "fold0_p0" / "record.json").read_text())["argv"]
    assert argv[argv.index("--participants") + 1:][:4] == evil
    assert argv[argv.index("--tag") + 1] == f"x && touch {marks[3]}"
    assert not any(m.exists() for m in marks)


def test_runner_refuses_an_unknown_host_key(sshd_pair, user_key, fake_script, tmp_path, monkeypatch, capsys):
    known = tmp_path / "known_hosts"
    known.write_text("")
    cluster = write_cluster(tmp_path, user_key, str(known), fake_script, [(sshd_pair[1], {"gpus": [0]})])
    jobs = write_json(tmp_path / "jobs.json", [{"prefix": "k", "fold": 0, "job_id": "k0"}])
    monkeypatch.chdir(tmp_path)
    assert rdt.main(["--cluster-config", cluster, "--jobs-config", jobs, "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown host key" in err and "--accept-new-hosts" in err
    assert not (tmp_path / "experiments").exists()
    argv = ["--cluster-config", cluster, "--jobs-config", jobs, "--quiet"]
    assert rdt.main(argv + ["--accept-new-hosts"]) == 0
    assert f"[{sshd_pair[1].address}]:{sshd_pair[1].port}" in known.read_text()


def test_small_real_grid_matches_a_local_run(sshd_pair, user_key, known_hosts, tmp_path, monkeypatch):
    import torch

    data = tmp_path / "data"
    participants = synthetic.write_synthetic_dataset(str(data), n_participants=4, window_size=64,
                                                        n_train=16, n_val=8, n_test=8, seed=0)
    flags = {"prefix": "real", "data_path": str(data), "max_epochs": 2, "device": "cpu",
             "mode": "full_fine_tuning", "batch_size": 8, "model": "test"}
    jobs = [dict(flags, fold=k, job_id=f"real{k}") for k in range(4)]
    cluster = write_cluster(tmp_path, user_key, known_hosts, ROOT / "oct1_train.py",
                            [(s, {"gpus": [0, 1], "env": {"OMP_NUM_THREADS": 1}}) for s in sshd_pair])
    jobs_path = write_json(tmp_path / "jobs.json", jobs)
    monkeypatch.chdir(tmp_path)
    assert rdt.main(["--cluster-config", cluster, "--jobs-config", jobs_path, "--quiet"]) == 0

    local = tmp_path / "local"  # the reference: the same jobs run here, in this process
    local.mkdir()
    monkeypatch.chdir(local)
    sigterm, threads = signal.getsignal(signal.SIGTERM), torch.get_num_threads()
    torch.set_num_threads(1)  # as the jobs did (OMP_NUM_THREADS=1): 4 jobs share 2 cores
    try:
        for job in jobs:
            assert engine_cli.main(shlex.split(" ".join(commands.job_command_args(job))), enhanced=True) == 0
    finally:
        signal.signal(signal.SIGTERM, sigterm)
        torch.set_num_threads(threads)
    for k, name in enumerate(participants):
        home = tmp_path / "experiments" / "real" / f"fold{k}_{name}"
        reference = local / "experiments" / "real" / f"fold{k}_{name}"
        assert sorted(shell.local_tree(home)) == sorted(shell.local_tree(reference))
        for file in ("metrics.json", "losses.json"):
            got, want = (json.loads((d / file).read_text()) for d in (home, reference))
            for key in TIMING_FIELDS:
                got.pop(key, None)
                want.pop(key, None)
            assert got == want, f"fold {k}: {file} differs from the local run"
