"""What the runner tells a researcher: a status line instead of a redrawn bar
when stderr is a file, and jobs checked by the training script's parser first."""
import json
import re
import shutil
from pathlib import Path

import run_distributed_training as rdt
from conftest import write_json
from runner import report
from runner.config import PROG

ROOT = Path(__file__).resolve().parent.parent


def local_cluster(folder, script):
    return write_json(folder / "cluster.json", {
        "servers": [{"host": "localhost", "local": True, "gpus": [0, 1]}], "script_path": str(script)})


def test_without_a_terminal_the_runner_prints_status_lines_not_a_redrawn_bar(fake_script, tmp_path, capsys,
                                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(report, "STATUS_EVERY", 1.0)  # 30 s in use; 1 s keeps the test short
    jobs = write_json(tmp_path / "jobs.json", [{"prefix": "s", "fold": k, "sleep": 0.5, "job_id": f"s{k}"}
                                               for k in range(8)])
    # Under pytest stderr is captured, not a terminal: as `runner 2> run.txt`.
    assert rdt.main(["--cluster-config", local_cluster(tmp_path, fake_script), "--jobs-config", jobs]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err  # no bar redrawn into the file
    status = [line for line in err.splitlines() if " jobs finished: " in line]
    assert status, err
    assert all(re.fullmatch(r"\[\d\d:\d\d:\d\d\] \d/8 jobs finished: \d done, 0 failed, 0 blocked, "
                            r"\d running; ETA (\d+ s|unknown)", line) for line in status), status
    assert len(err.splitlines()) < 50


def test_a_bad_flag_fails_the_dry_run_naming_job_and_flag(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cluster = local_cluster(tmp_path, ROOT / "oct1_train.py")
    jobs = write_json(tmp_path / "jobs.json", [
        {"fold": 0, "max_epochs": 2, "job_id": "good"},
        {"fold": 1, "max_epocs": 2, "job_id": "typo"}])
    assert rdt.main(["--cluster-config", cluster, "--jobs-config", jobs, "--dry-run"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(f"{PROG}: error: {jobs}: job 1 (typo): ")
    assert "--max_epocs" in err
    assert not (tmp_path / "runs").exists()


def ended(folder):
    """The ledger's end lines (each attempt also writes a start line)."""
    lines = (folder / "runs" / "jobs" / "ledger.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["status"] != "started"]


def test_an_argparse_error_is_never_retried(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # A script the runner cannot ask beforehand (no build_parser here): the job fails on the host.
    script = tmp_path / "strict_train.py"
    script.write_text("import argparse\nargparse.ArgumentParser().parse_args()\n")
    jobs = write_json(tmp_path / "jobs.json", [{"max_epocs": 2, "job_id": "typo"}])
    argv = ["--cluster-config", local_cluster(tmp_path, script), "--jobs-config", jobs, "--retries", "3"]
    assert rdt.main(argv) == 1
    out, err = capsys.readouterr()
    assert "jobs not checked before starting" in err
    records = ended(tmp_path)
    assert [(r["attempt"], r["exit_status"]) for r in records] == [(1, 2)]
    assert "bad flags: not retried" in err

    # An exit 2 without argparse's usage (say data missing on that host) may pass on another slot: retried.
    script.write_text("import sys\nprint('data/x_train.pt: missing', file=sys.stderr)\nsys.exit(2)\n")
    shutil.rmtree(tmp_path / "runs")
    assert rdt.main(argv) == 1
    records = ended(tmp_path)
    assert [(r["attempt"], r["exit_status"]) for r in records] == [(1, 2), (2, 2), (3, 2), (4, 2)]
    assert "data/x_train.pt: missing" in capsys.readouterr().out  # the summary shows the last line
