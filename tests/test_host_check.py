"""The runner checks every host's code and data before it dispatches, and copies them on request.

Two real sshd hosts on loopback run this project's own oct1_train.py from their workdir
(script_path "oct1_train.py", relative), on tiny data in a relative folder, as a lab would.
"""
import json
import shutil
from pathlib import Path

import pytest

import run_distributed_training as rdt
import summarize_results as sr
from conftest import write_json, write_known_hosts
from engine import cli as engine_cli
from engine import provenance
from runner.ssh import hostsync
from test_remote import ledger, write_cluster
from tiny_data import write_tiny_dataset

ROOT = provenance.PROJECT_DIR
FIXED = {"max_epochs": 1, "early_stopping_patience": 1, "early_stopping_patience_target": 1,
         "device": "cpu", "batch_size": 8, "model": "test", "data_path": "d", "mode": "target_only",
         "prefix": "chk"}


@pytest.fixture
def hosts(start_sshd, tmp_path):
    pair = start_sshd("127.0.0.1"), start_sshd("127.0.0.2")
    return pair, write_known_hosts(tmp_path / "known_hosts", *pair)


def setup_run(tmp_path, user_key, hosts, monkeypatch, folds=(0, 1), **fixed):
    """Data in ./d, a jobs file, and a cluster config of both hosts running workdir/oct1_train.py."""
    servers, known = hosts
    monkeypatch.chdir(tmp_path)
    write_tiny_dataset(tmp_path / "d", participants=("a", "b", "c"))
    jobs = write_json(tmp_path / "jobs.json", [dict(FIXED, **fixed, fold=k, job_id=f"f{k}") for k in folds])
    cluster = write_cluster(tmp_path, user_key, known, "oct1_train.py",
                            [(s, {"gpus": 0, "env": {"OMP_NUM_THREADS": 1}}) for s in servers])
    return ["--cluster-config", cluster, "--jobs-config", jobs, "--quiet"]


def place_copy(workdir):
    """The host got this checkout (and the data) by hand, as labs do today."""
    for name in hostsync.project_files(ROOT):
        (workdir / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, workdir / name)
    shutil.copytree("d", workdir / "d")


@pytest.mark.ssh
def test_sync_code_and_data_onto_empty_workdirs_then_the_grid_runs(hosts, user_key, tmp_path, monkeypatch,
                                                                  capsys):
    argv = setup_run(tmp_path, user_key, hosts, monkeypatch)
    assert rdt.main(argv) == 2  # empty workdirs: nothing there can answer
    err = capsys.readouterr().err
    for sshd in hosts[0]:
        assert f"error: {sshd.address}: cannot tell its code version" in err
    assert not Path("runs/jobs/ledger.jsonl").exists() or not ledger("runs/jobs")  # nothing dispatched

    assert rdt.main(argv + ["--sync-code", "--sync-data"]) == 0
    for sshd in hosts[0]:
        assert (sshd.workdir / "engine/fold.py").read_bytes() == (ROOT / "engine/fold.py").read_bytes()
        assert (sshd.workdir / "d" / "b_test.pt").read_bytes() == Path("d/b_test.pt").read_bytes()
    assert sorted(r["job_id"] for r in ledger("runs/jobs") if r["status"] == "ok") == ["f0", "f1"]
    assert sorted(p.name for p in Path("experiments/chk").iterdir()) == ["fold0_a", "fold1_b"]


@pytest.mark.ssh
def test_a_changed_file_on_one_host_refuses_the_run_naming_it(hosts, user_key, tmp_path, monkeypatch, capsys):
    argv = setup_run(tmp_path, user_key, hosts, monkeypatch)
    good, stale = hosts[0]
    for sshd in (good, stale):
        place_copy(sshd.workdir)
    with open(stale.workdir / "engine/models.py", "a") as f:
        f.write("\n# an old edit on that server\n")
    assert rdt.main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "differs" in line]
    assert len(lines) == 1 and lines[0].startswith(f"run_distributed_training.py: error: {stale.address}: "
                                                   f"code differs (code hash here {provenance.code_hash()}")

    assert rdt.main(argv + ["--sync-code"]) == 0
    assert (stale.workdir / "engine/models.py").read_bytes() == (ROOT / "engine/models.py").read_bytes()


@pytest.mark.ssh
def test_a_changed_data_file_is_caught_and_allow_mismatch_runs_and_the_report_warns(hosts, user_key, tmp_path,
                                                                                   monkeypatch, capsys):
    # Fine-tuning: fold 0 (target a) and fold 1 (base a, c) both read a's files.
    argv = setup_run(tmp_path, user_key, hosts, monkeypatch, folds=(0,), mode="full_fine_tuning")
    good, stale = hosts[0]
    for sshd in (good, stale):
        place_copy(sshd.workdir)
    shutil.copy(stale.workdir / "d" / "c_val.pt", stale.workdir / "d" / "a_val.pt")  # another file's bytes
    assert rdt.main(argv) == 2
    err = capsys.readouterr().err
    assert f"error: {stale.address}: data d/a_val.pt differs" in err and good.address + ":" not in err

    # Fold 0 runs on the stale host alone; fold 1 here, on this checkout's data.
    only_stale = write_cluster(tmp_path, user_key, hosts[1], "oct1_train.py",
                               [(stale, {"gpus": 0, "env": {"OMP_NUM_THREADS": 1}})])
    argv[argv.index("--cluster-config") + 1] = only_stale
    assert rdt.main(argv + ["--allow-mismatch"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {stale.address}: data d/a_val.pt differs" in err and "(--allow-mismatch)" in err
    assert [r["status"] for r in ledger("runs/jobs") if r["status"] != "started"] == ["ok"]
    flags = [f"--{k}={v}" for k, v in dict(FIXED, mode="full_fine_tuning").items()]
    assert engine_cli.main(flags + ["--fold", "1"], enhanced=True) == 0
    capsys.readouterr()
    assert sr.main(["experiments/chk", "-o", "report"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "differs between its folds" in line]
    assert len(warnings) == 1 and "data file a_val.pt" in warnings[0]
    assert "experiments/chk/fold0_a" in warnings[0] and "experiments/chk/fold1_b" in warnings[0]


def test_a_foreign_script_is_not_checked_and_sync_flags_say_why(fake_script, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cluster = write_json(tmp_path / "cluster.json", {"servers": [{"host": "localhost", "local": True,
                                                                  "gpus": 0}], "script_path": str(fake_script)})
    jobs = write_json(tmp_path / "jobs.json", [{"job_id": "j", "fold": 0}])
    argv = ["--cluster-config", cluster, "--jobs-config", jobs, "--quiet"]
    assert rdt.main(argv + ["--sync-code"]) == 2
    assert "is not one of this project's scripts" in capsys.readouterr().err
    assert rdt.main(argv) == 0
    assert json.loads(Path("experiments/fake/fold0_p0/record.json").read_text())["fold"] == 0


LAB_MODEL = '''from torch import nn


class Lab(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv1d(channels, 4, 3, padding=1)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        return self.head(self.conv(x).relu().mean(dim=2)).squeeze(1)


def make(channels):
    return Lab(channels)
'''


@pytest.mark.ssh
def test_a_jobs_own_model_file_is_checked_on_every_host_and_synced_with_the_code(hosts, user_key, tmp_path,
                                                                                 monkeypatch, capsys):
    argv = setup_run(tmp_path, user_key, hosts, monkeypatch, folds=(0,), model="lab/cnn.py:make")
    Path("lab").mkdir()
    Path("lab/cnn.py").write_text(LAB_MODEL)
    good, stale = hosts[0]
    for sshd in (good, stale):
        place_copy(sshd.workdir)
        (sshd.workdir / "lab").mkdir()
        (sshd.workdir / "lab/cnn.py").write_text(LAB_MODEL)
    (stale.workdir / "lab/cnn.py").write_text(LAB_MODEL.replace("4,", "5,").replace("(4, 1)", "(5, 1)"))
    assert rdt.main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "differs" in line]
    assert len(lines) == 1 and f"{stale.address}: model file lab/cnn.py differs" in lines[0]

    assert rdt.main(argv + ["--sync-code"]) == 0
    assert (stale.workdir / "lab/cnn.py").read_text() == LAB_MODEL
    assert sorted(p.name for p in Path("experiments/chk").iterdir()) == ["fold0_a"]
    provenance_of = json.loads(Path("experiments/chk/fold0_a/provenance.json").read_text())
    assert provenance_of["model_source"] == "lab/cnn.py"

    outside = tmp_path.parent / f"{tmp_path.name}_lab.py"
    outside.write_text(LAB_MODEL)
    jobs = json.loads(Path("jobs.json").read_text())
    write_json(tmp_path / "jobs.json", [dict(job, model=f"{outside}:make", job_id=job["job_id"] + "-outside", prefix="out")
                                        for job in jobs])
    assert rdt.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not inside the folder the jobs run from" in err[0]
