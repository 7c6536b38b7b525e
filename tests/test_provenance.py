"""engine.provenance: the code hash identifies the code by content; the CLI answers the runner's check."""
import json
import shutil
import subprocess
import sys

from engine import base_cache, provenance
from engine import cli as engine_cli
from report import tables as report_tables
from tiny_data import write_tiny_dataset

PROJECT = provenance.PROJECT_DIR


def copy_code(dest):
    dest.mkdir()
    for name in provenance.code_files(PROJECT):
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(PROJECT / name, dest / name)
    return dest


def test_code_hash_follows_content_not_place_or_git(tmp_path):
    copy = copy_code(tmp_path / "copy")
    assert provenance.code_hash(copy) == provenance.code_hash(PROJECT)
    assert provenance.git_version(copy) == (None, None)  # no .git: the hash alone identifies it
    (copy / "Notes.txt").write_text("not code")
    assert provenance.code_hash(copy) == provenance.code_hash(PROJECT)
    # Every module a fold runs counts: a top-level CLI, and each file of the packages it imports.
    for name in ("train.py", "engine/models.py", "engine/phase.py", "dataset/synthetic.py"):
        before = provenance.code_hash(copy)
        with open(copy / name, "a") as f:
            f.write("\n# one changed line\n")
        assert provenance.code_hash(copy) != before, name
    edited = provenance.code_hash(copy)
    (copy / "engine" / "notes.txt").write_text("not code")
    assert provenance.code_hash(copy) == edited


def test_code_files_cover_the_packages_a_fold_imports():
    files = provenance.code_files(PROJECT)
    assert {"train.py", "oct1_train.py", "composed_loader.py", "engine/fold.py", "engine/cuda_step.py",
            "dataset/synthetic.py"} <= set(files)
    assert not [f for f in files if f.startswith(("tests/", "bench/", "runner/", "report/"))]


def test_git_commit_and_dirty_flag(tmp_path):
    repo = copy_code(tmp_path / "repo")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "x"], check=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert provenance.code_version(repo)["git_commit"] == head
    assert provenance.code_version(repo)["git_dirty"] is False
    with open(repo / "engine" / "data.py", "a") as f:
        f.write("\n")
    assert provenance.code_version(repo) == {"code_hash": provenance.code_hash(repo),
                                             "git_commit": head, "git_dirty": True}


def test_cli_answers_code_hash_and_the_base_cache_fingerprint(tmp_path):
    names = write_tiny_dataset(tmp_path / "d")
    needs = {str(tmp_path / "d"): names[:2], str(tmp_path / "missing"): None, str(tmp_path / "d") + "/": ["x"]}
    out = subprocess.run([sys.executable, "-m", "engine.provenance", "--needs", json.dumps(needs)],
                         capture_output=True, text=True, check=True, cwd=PROJECT)
    answer = json.loads(out.stdout)
    assert answer["code_hash"] == provenance.code_hash(PROJECT)
    data = answer["data"]
    assert data[str(tmp_path / "d")] == base_cache.data_fingerprint(tmp_path / "d", names[:2])
    assert len(data[str(tmp_path / "d")]) == 6  # 2 participants x 3 splits
    assert "data folder not found" in data[str(tmp_path / "missing")]["error"]
    assert "x_train.pt" in data[str(tmp_path / "d") + "/"]["error"]


def test_a_fold_and_its_base_entry_say_what_produced_them(tmp_path, capsys):
    names = write_tiny_dataset(tmp_path / "d", participants=("a", "b", "c"), window=64, sizes=(16, 8, 8))
    argv = ["--data_path", str(tmp_path / "d"), "--experiments_dir", str(tmp_path / "exp"), "--device", "cpu",
            "--batch_size", "8", "--max_epochs", "1", "--fold", "1", "--mode", "full_fine_tuning",
            "--base_cache_dir", str(tmp_path / "cache"), "--prefix", "p"]
    assert engine_cli.main(argv, enhanced=True) == 0
    record = json.loads((tmp_path / "exp" / "p" / "fold1_b" / "provenance.json").read_text())
    commit, dirty = provenance.git_version(PROJECT)
    assert (record["code_hash"], record["git_commit"], record["git_dirty"]) == (provenance.code_hash(), commit, dirty)
    assert record["data_fingerprint"] == base_cache.data_fingerprint(tmp_path / "d", names[:3])
    import torch
    assert (record["torch"], record["device"], record["hostname"]) == (torch.__version__, "cpu",
                                                                      provenance.socket.gethostname())
    assert record["started"] <= record["ended"] and record["command"][1:] == provenance.sys.argv  # the process's

    entry = next(p for p in (tmp_path / "cache").iterdir() if p.is_dir())
    assert base_cache.entry_intact(entry)
    stored = json.loads((entry / "provenance.json").read_text())
    assert stored["data_fingerprint"] == json.loads((entry / "fingerprint.json").read_text())
    assert set(stored["data_fingerprint"]) == {f"{p}_{s}.pt" for p in ("a", "c") for s in ("train", "val", "test")}
    assert stored["code_hash"] == record["code_hash"]


def test_the_report_names_folds_of_other_code_or_other_data():
    runs = [{"dir": "e/fold0_a", "code_version": "c1", "data_fingerprint": {"a_val.pt": "11" * 32}},
            {"dir": "e/fold1_b", "code_version": "c2", "data_fingerprint": {"a_val.pt": "11" * 32}},
            {"dir": "e/fold2_c", "code_version": "c1", "data_fingerprint": {"a_val.pt": "22" * 32}},
            {"dir": "e/fold3_d", "code_version": None, "data_fingerprint": None}]
    assert report_tables.provenance_conflicts(3, runs) == [
        "configuration 3: its folds come from 3 code versions: c1: e/fold0_a, e/fold2_c; c2: e/fold1_b; "
        "unknown: e/fold3_d",
        "configuration 3: data file a_val.pt differs between its folds: 111111111111: e/fold0_a, e/fold1_b; "
        "222222222222: e/fold2_c"]
    assert report_tables.provenance_conflicts(1, runs[:1] + runs[:1]) == []
