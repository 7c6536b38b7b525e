"""A published result is replaced only when the user says so (issue 35): the runner refuses two jobs
on one folder and a folder it did not write before anything runs, a solo trainer refuses such a
folder in one line, and a finished job whose folder is gone runs again.

Real training (oct1_train.py and pack_train.py on tiny data, CPU, one thread) on this machine.
"""
import json
import shutil
from pathlib import Path

import pytest

import run_distributed_training as rdt
from conftest import write_json
from engine import cli as engine_cli
from engine.fileio import ConfigError
from runner.folders import job_folder, refuse_foreign
from test_remote import known_hosts, ledger, write_cluster  # noqa: F401 (known_hosts: a fixture)
from test_two_phase import ONE_THREAD, SCRIPT
from tiny_data import write_tiny_dataset


@pytest.fixture
def data(tmp_path):
    return write_tiny_dataset(tmp_path / "data", participants=("a", "b", "c"))


def local_cluster(folder, pack=1):
    return write_json(folder / "cluster.json", {
        "servers": [{**ONE_THREAD, "host": "here", "local": True, "gpus": 0, "pack": pack}],
        "script_path": str(SCRIPT)})


def quick_job(tmp_path, job_id, fold, prefix, **flags):
    return {"job_id": job_id, "data_path": str(tmp_path / "data"), "device": "cpu", "mode": "target_only",
            "prefix": prefix, "fold": fold, "max_epochs": 2, "early_stopping_patience_target": 1,
            "batch_size": 8, **flags}


def run(tmp_path, jobs, *options, pack=1):
    return rdt.main(["--cluster-config", local_cluster(tmp_path, pack), "--jobs-config",
                     write_json(tmp_path / "jobs.json", jobs), "--quiet", *options])


def fingerprints(folder):
    """Each result folder's record and run token, to show that nothing was replaced."""
    return {f.name: ((f / "record.json").read_bytes(),
                     json.loads((f / "hyperparameters.json").read_text())["run_token"])
            for f in sorted(folder.iterdir())}


def test_two_jobs_on_one_folder_are_refused_before_anything_runs(data, tmp_path, capsys, monkeypatch):
    # The reproduction: folds 0 and 1 at batch sizes 8 and 16 under one prefix, in packs of 4.
    # Before, the summary said "4 done" and the batch-size-8 results were gone.
    monkeypatch.chdir(tmp_path)
    jobs = [quick_job(tmp_path, f"b{batch}-f{fold}", fold, "same", batch_size=batch)
            for batch in (8, 16) for fold in (0, 1)]
    assert run(tmp_path, jobs, pack=4) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "b8-f0" in err and "b16-f0" in err and "experiments/same/fold0_a" in err
    assert not (tmp_path / "experiments").exists() and not (tmp_path / "runs" / "jobs" / "ledger.jsonl").exists()


def test_a_rerun_elsewhere_keeps_the_results_and_a_gone_folder_runs_again(fake_script, tmp_path, capsys,
                                                                          monkeypatch):
    # The stand-in trainer (tests/conftest.py) keeps the trainer's rule on existing folders; the
    # data's participants p0, p1 name the folders it writes, so the runner knows them before the run.
    write_tiny_dataset(tmp_path / "data", participants=("p0", "p1"), sizes=(2, 2, 2))
    monkeypatch.chdir(tmp_path)
    cluster = write_json(tmp_path / "cluster.json", {"servers": [{"host": "here", "local": True, "gpus": 0}],
                                                     "script_path": str(fake_script)})
    jobs = write_json(tmp_path / "jobs.json", [{"job_id": f"j{k}", "data_path": "data", "prefix": "kept", "fold": k}
                                               for k in (0, 1)])

    def run_again(*options):
        return rdt.main(["--cluster-config", cluster, "--jobs-config", jobs, "--quiet", *options])
    assert run_again() == 0
    results = tmp_path / "experiments" / "kept"
    first = fingerprints(results)
    assert sorted(first) == ["fold0_p0", "fold1_p1"]
    capsys.readouterr()

    # The same jobs under another run dir: refused before anything runs, the results untouched.
    assert run_again("--run-dir", "runs/other") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "2 jobs would replace result folders this run did not write" in err
    assert "--overwrite" in err and fingerprints(results) == first

    # The ledger says j1 finished but its folder is gone: said in one line, and it runs again.
    shutil.rmtree(results / "fold1_p1")
    assert run_again() == 0
    err = capsys.readouterr().err
    assert "1 finished jobs' result folders are gone: j1 (experiments/kept/fold1_p1); they run again" in err
    again = fingerprints(results)
    assert again["fold0_p0"] == first["fold0_p0"] and again["fold1_p1"][1] == first["fold1_p1"][1]

    # Asked for in so many words: replaced, under the new run's token.
    assert run_again("--run-dir", "runs/other", "--overwrite") == 0
    tokens = {name: token for name, (_, token) in fingerprints(results).items()}
    other = (tmp_path / "runs" / "other" / "run_id").read_text().strip()
    assert tokens == {"fold0_p0": f"{other}.j0", "fold1_p1": f"{other}.j1"}


@pytest.mark.parametrize("flags,said", [({"fold": -2}, "--fold -2 out of range"),
                                        ({"participants": ["a", "zz"]}, "unknown participant(s) zz")])
def test_a_job_the_data_cannot_run_is_refused_before_the_run(flags, said, data, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    jobs = [quick_job(tmp_path, "fine", 0, "p"), dict(quick_job(tmp_path, "bad", 1, "p"), **flags)]
    assert run(tmp_path, jobs, "--retries", "2") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "job bad:" in err and said in err
    assert not (tmp_path / "experiments").exists()


def test_job_values_are_read_as_the_trainer_reads_them(data, tmp_path):
    # null leaves a flag at its default, and a lone participant is a list of one.
    job = dict(quick_job(tmp_path, "j", 1, "p"), fold=None, participants="b", prefix=5)
    assert job_folder(job, tmp_path) == tmp_path / "experiments" / "5" / "fold0_b"
    # The job's own "overwrite": true is asked for in so many words, as the runner's flag is.
    folder = job_folder(dict(job, participants=["a", "b"]), tmp_path)
    folder.mkdir(parents=True)
    with pytest.raises(ConfigError, match="would replace result folders this run did not write"):
        refuse_foreign([job], {"j": folder}, lambda job: None, overwrite=False)
    refuse_foreign([dict(job, overwrite=True)], {"j": folder}, lambda job: None, overwrite=False)
    # Where the script is not here to check a job first: one line, not a traceback.
    for odd, said in (({"mode": "fine_tune"}, "unknown --mode 'fine_tune'"), ({"fold": "x"}, "--fold x: no such participant")):
        with pytest.raises(ConfigError, match=said):
            job_folder(dict(job, **odd), tmp_path)


def test_the_trainer_replaces_only_its_own_folder(data, tmp_path, capsys):
    exp = tmp_path / "exp"
    argv = ["--data_path", str(tmp_path / "data"), "--device", "cpu", "--mode", "target_only", "--max_epochs",
            "1", "--batch_size", "8", "--experiments_dir", str(exp), "--prefix", "p", "--no_base_cache"]
    folder = exp / "p" / "fold0_a"
    folder.mkdir(parents=True)
    (folder / "hyperparameters.json").write_text(json.dumps({"run_token": "run1.x"}))
    assert engine_cli.main(argv + ["--run_token", "run2.x"], enhanced=True) == 2  # another run's: kept
    out, err = capsys.readouterr()
    assert f"RESULT_EXISTS {folder}" in out and err.count("\n") == 1 and "pass --overwrite" in err
    assert [p.name for p in folder.iterdir()] == ["hyperparameters.json"]
    assert engine_cli.main(argv + ["--run_token", "run1.x"], enhanced=True) == 0  # its own: replaced
    assert "metrics.json" in {p.name for p in folder.iterdir()}


@pytest.mark.ssh
def test_results_come_home_to_the_jobs_experiments_dir_and_never_over_a_folder_here(
        sshd_pair, user_key, known_hosts, fake_script, tmp_path, monkeypatch, capsys):
    # A host without the shared file system: each result lands here where the job put it there,
    # under its own experiments_dir (the report's headline reads that); a folder here that this
    # run did not write is kept, and the job fails in one line, its results left on the host.
    host = sshd_pair[0]
    cluster = write_cluster(tmp_path, user_key, known_hosts, fake_script, [(host, {"gpus": [0]})])
    jobs = write_json(tmp_path / "jobs.json", [{"prefix": "p", "fold": k, "experiments_dir": "elsewhere",
                                                "job_id": f"j{k}"} for k in (0, 1)])
    taken = tmp_path / "elsewhere" / "p" / "fold1_p1"
    taken.mkdir(parents=True)
    (taken / "hyperparameters.json").write_text(json.dumps({"run_token": "someone-else"}))
    monkeypatch.chdir(tmp_path)
    assert rdt.main(["--cluster-config", cluster, "--jobs-config", jobs, "--quiet", "--retries", "2"]) == 1
    assert [r["status"] for r in ledger(tmp_path / "runs" / "jobs") if r["job_id"] == "j1"] == ["failed"]  # once
    assert (tmp_path / "elsewhere" / "p" / "fold0_p0" / "record.json").exists()
    assert not (tmp_path / "experiments").exists()
    assert [p.name for p in taken.iterdir()] == ["hyperparameters.json"]
    assert (host.workdir / "elsewhere" / "p" / "fold1_p1" / "record.json").exists()
    out = capsys.readouterr().out
    assert f"{Path('elsewhere/p/fold1_p1')}: result folder exists and this run did not write it" in out


def test_a_job_whose_training_diverges_says_so_and_is_not_retried(tmp_path, data, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # An lr whose first AdamW step sends the weights past float32: the validation loss is NaN.
    jobs = [quick_job(tmp_path, "nan", 0, "d", lr=1e30), quick_job(tmp_path, "fine", 1, "d")]
    assert run(tmp_path, jobs, "--retries", "2") == 1
    records = ledger(tmp_path / "runs" / "jobs")
    assert [r["status"] for r in records if r["job_id"] == "nan"] == ["failed"]  # one try only
    assert [r["status"] for r in records if r["job_id"] == "fine"][-1] == "ok"
    log = (tmp_path / "runs" / "jobs" / "logs" / "nan.log").read_text()
    assert "NOT_FINITE fold 0 (a), target phase" in log
