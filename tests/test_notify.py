"""A run's messages (runner/notify.py, runner/news.py) against a loopback HTTP server started here:
what arrives and in which order over two loopback SSH hosts, that a webhook that refuses or hangs
changes nothing else and slows the run by its timeout at most, and that the URL, a secret, is in no
file the run writes, in no line it prints and in no process's argv.
"""
import http.server
import json
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import run_distributed_training as rdt
from conftest import processes_with, write_json, write_known_hosts
from test_remote import ledger, wait_for, write_cluster

ROOT = Path(__file__).resolve().parent.parent
SECRET = f"hook-{secrets.token_hex(8)}"  # the URL's secret part


class Hook(http.server.ThreadingHTTPServer):
    """A webhook on 127.0.0.1 that keeps what it is sent. answer: "ok", "refuse" (HTTP 500) or
    "hang" (answers after hang_s)."""
    daemon_threads = True

    def __init__(self, answer="ok", hang_s=5.0):
        super().__init__(("127.0.0.1", 0), HookHandler)
        self.answer, self.hang_s, self.posts = answer, hang_s, []
        threading.Thread(target=self.serve_forever, args=(0.05,), daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/{SECRET}"

    def texts(self):
        return [body["text"].split(": ", 1)[1] for _, body in list(self.posts)]


class HookHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.posts.append((self.path, body))
        if self.server.answer == "hang":
            time.sleep(self.server.hang_s)
        self.send_response(500 if self.server.answer == "refuse" else 200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def hook(monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")  # a proxy in the environment must not take it
    started = []

    def start(answer="ok", hang_s=5.0):
        started.append(Hook(answer, hang_s))
        return started[-1]

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def files_holding(text, *folders):
    return [p for folder in folders for p in Path(folder).rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


@pytest.mark.ssh
def test_a_grid_over_two_hosts_tells_its_start_quarters_failures_a_lost_host_and_its_end(
        start_sshd, user_key, fake_script, hook, tmp_path):
    a, b = start_sshd("127.0.0.1"), start_sshd("127.0.0.2")
    server = hook()
    block, started = tmp_path / "block", tmp_path / "started"
    block.touch()
    started.mkdir()
    # j0 fails at once; the others wait for the block file, and j7 fails last.
    jobs = [{"prefix": "news", "fold": k, "job_id": f"j{k}", "block_file": str(block), "started_dir": str(started),
             **({"fail_once_dir": str(tmp_path / "failed")} if k in (0, 7) else {})} for k in range(8)]
    cluster = json.loads(Path(write_cluster(tmp_path, user_key, write_known_hosts(tmp_path / "known_hosts", a, b),
                                            fake_script, [(a, {"gpus": [0]}), (b, {"gpus": [0]})])).read_text())
    config = write_json(tmp_path / "cluster.json", dict(cluster, notify={"url": server.url, "timeout_s": 2}))
    runner = subprocess.Popen([sys.executable, str(ROOT / "run_distributed_training.py"), "--cluster-config",
                               config, "--jobs-config", write_json(tmp_path / "jobs.json", jobs), "--quiet"],
                              cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: len(list(started.iterdir())) >= 3, 30, "j0 to fail and two jobs to wait")
    wait_for(lambda: len(server.posts) >= 2, 30, "the start and j0's failure")
    leaks = processes_with(SECRET)  # in no argv on this machine, the hosts' included
    b.drop_connections()
    wait_for(lambda: any("lost" in text for text in server.texts()), 30, "the lost host's message")
    block.unlink()
    _, stderr = runner.communicate(timeout=60)
    assert runner.returncode == 1, stderr
    assert not leaks and SECRET not in stderr

    texts = server.texts()
    assert {path for path, _ in server.posts} == {f"/hooks/{SECRET}"}
    assert texts[0] == "started: 8 jobs on 2 slots of 127.0.0.1, 127.0.0.2"
    assert texts[1].startswith("1 job failed for good: j0 (exit status 1 on 127.0.0.")
    assert texts[2].startswith("host 127.0.0.2 lost (") and "its running jobs go back to the queue" in texts[2]
    # Each quarter once, in order (two reached at one look are one message, for the larger).
    quarters = [text.split(" done: ") for text in texts if " done: " in text]
    names = [name for name, _ in quarters]
    assert names and names == [name for name in ("a quarter", "half", "three quarters") if name in names]
    for name, status in quarters:
        assert {"a quarter": 2, "half": 4, "three quarters": 6}[name] <= int(status.split("/")[0]) < 8
        assert status.split(" jobs finished")[0].endswith("/8")
    assert texts[-2].startswith("1 job failed for good: j7 (exit status 1 on 127.0.0.")  # held, then summed up
    assert texts[-1].startswith("ended with exit status 1 (some jobs failed, were cancelled or blocked): 6 done, "
                                "2 failed, 0 cancelled, 0 blocked")
    assert len(texts) == 3 + len(quarters) + 2
    assert [r["status"] for r in ledger(tmp_path / "runs" / "jobs")].count("requeued") >= 1
    assert not files_holding(SECRET, tmp_path / "runs", tmp_path / "experiments", a.workdir, b.workdir)
    assert not files_holding(f":{server.server_address[1]}/", tmp_path / "runs", tmp_path / "experiments")


def local_run(folder, fake_script, notify, monkeypatch):
    """Four jobs on this machine's two slots, one failing: (exit status, ledger ends, seconds)."""
    folder.mkdir()
    monkeypatch.chdir(folder)
    config = write_json(folder / "cluster.json", {"servers": [{"host": "localhost", "local": True, "gpus": [0, 1]}],
                                                  "script_path": str(fake_script), "notify": notify})
    jobs = write_json(folder / "jobs.json", [{"prefix": "p", "fold": k, "job_id": f"j{k}", "sleep": 0.1,
                                              **({"fail_once_dir": "failed"} if k == 2 else {})} for k in range(4)])
    began = time.monotonic()
    status = rdt.main(["--cluster-config", config, "--jobs-config", jobs, "--quiet"])
    seconds = time.monotonic() - began
    return status, sorted((r["job_id"], r["status"]) for r in ledger("runs/jobs")), seconds


def test_a_webhook_that_refuses_or_hangs_changes_nothing_else_and_a_command_gets_every_message(
        fake_script, hook, tmp_path, monkeypatch, capsys):
    good = hook()
    command = f"cat >> {tmp_path / 'messages.txt'}"
    outcome = local_run(tmp_path / "good", fake_script, {"url": good.url, "command": command}, monkeypatch)
    assert outcome[:2] == (1, [("j0", "ok"), ("j1", "ok"), ("j2", "failed"), ("j3", "ok")])
    assert "notify" not in capsys.readouterr().err
    texts = good.texts()
    assert texts[0] == "started: 4 jobs on 2 slots of localhost" and texts[-1].startswith("ended with exit status 1")
    assert sum(text.startswith("1 job failed for good: j2") for text in texts) == 1
    written = (tmp_path / "messages.txt").read_text()
    assert all(text in written for text in texts) and written.count("\nrun ") == len(texts) - 1  # one per message

    refused = local_run(tmp_path / "refused", fake_script, {"url": hook("refuse").url}, monkeypatch)
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "notify" in line]
    assert refused[:2] == outcome[:2] and len(warnings) == 1 and "HTTP 500" in warnings[0]

    timeout = 0.5
    hung = local_run(tmp_path / "hung", fake_script, {"url": hook("hang", 5.0).url, "timeout_s": timeout}, monkeypatch)
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "notify" in line]
    assert hung[:2] == outcome[:2] and len(warnings) == 1 and f"no answer within {timeout:g} s" in warnings[0]
    print(f"\nruns: {outcome[2]:.2f} s, webhook refusing {refused[2]:.2f} s, hanging {hung[2]:.2f} s")
    assert hung[2] < refused[2] + timeout + 1.0, (hung[2], refused[2])  # at most its timeout slower
    assert SECRET not in err
    assert not files_holding(SECRET, *(tmp_path / name / "runs" for name in ("good", "refused", "hung")),
                             *(tmp_path / name / "experiments" for name in ("good", "refused", "hung")))


@pytest.mark.parametrize("notify, error", [
    ({"url": "https://chat.example/hooks/T0", "channel": "#grid"},
     "notify: unknown field \"channel\" (known: url, command, field, timeout_s)"),
    ({"url": f"ftp://chat.example/{SECRET}"},
     "notify.url: expected an http:// or https:// URL (its value is not shown"),
    ({"timeout_s": 5}, "notify: give \"url\" (a webhook), \"command\" (gets each message on stdin), or both"),
    ({"command": "mail me", "timeout_s": 0}, "notify.timeout_s: expected seconds between 0.1 and 300"),
])
def test_a_bad_notify_section_is_one_line_that_never_shows_the_url(notify, error, fake_script, tmp_path, monkeypatch,
                                                                    capsys):
    monkeypatch.chdir(tmp_path)
    config = write_json(tmp_path / "cluster.json", {"servers": [{"host": "localhost", "local": True, "gpus": [0]}],
                                                    "script_path": str(fake_script), "notify": notify})
    jobs = write_json(tmp_path / "jobs.json", [{"fold": 0}])
    assert rdt.main(["--cluster-config", config, "--jobs-config", jobs, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and error in err[0] and SECRET not in err[0]


def test_sync_code_never_sends_the_cluster_config_that_holds_the_url(tmp_path, monkeypatch):
    from engine.provenance import PROJECT_DIR
    from runner.ssh.hostsync import Checker
    monkeypatch.chdir(tmp_path)
    jobs = [{"job_id": "a", "fold": 0, "data_path": "d", "participants": ["a", "b"]}]
    shipped = PROJECT_DIR / "cluster_config.json"  # tracked by git: --sync-code would send it
    assert "cluster_config.json" in Checker(jobs, "oct1_train.py", sync_code=True).code_files
    assert "cluster_config.json" not in Checker(jobs, "oct1_train.py", sync_code=True,
                                                cluster_config=str(shipped)).code_files


def test_a_run_that_stops_on_a_one_line_error_still_sends_its_end(tmp_path, monkeypatch, capsys):
    from engine.provenance import PROJECT_DIR
    monkeypatch.chdir(tmp_path)
    heard = tmp_path / "heard.txt"
    config = write_json(tmp_path / "cluster.json", {
        "servers": [{"host": "localhost", "local": True, "gpus": 0}], "script_path": str(PROJECT_DIR / "oct1_train.py"),
        "notify": {"command": f"cat >> {heard}"}})
    outside = tmp_path.parent / f"{tmp_path.name}_lab.py"  # a model file the hosts cannot get: refused at the check
    outside.write_text("def make(c):\n    return None\n")
    jobs = write_json(tmp_path / "jobs.json", [{"fold": 0, "mode": "target_only", "model": f"{outside}:make"}])
    assert rdt.main(["--cluster-config", config, "--jobs-config", jobs, "--quiet"]) == 2
    assert "not inside the folder the jobs run from" in capsys.readouterr().err
    said = heard.read_text()
    assert "did not start, exit status 2" in said and "is not inside the folder the jobs run from" in said

    # A crash of the runner itself (a bug, here made on purpose) ends with a message too.
    def crash(*_):
        raise RuntimeError("boom")
    monkeypatch.setattr("runner.driver.start_ready", crash)
    jobs = write_json(tmp_path / "jobs.json", [{"fold": 0, "mode": "target_only", "data_path": "nowhere"}])
    heard.write_text("")
    with pytest.raises(RuntimeError, match="boom"):
        rdt.main(["--cluster-config", config, "--jobs-config", jobs, "--quiet", "--no-resume"])
    said = heard.read_text()
    assert "exit status 1" in said and "stopped: boom" in said
