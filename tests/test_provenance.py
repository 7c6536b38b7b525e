"""provenance.py: the code hash identifies the code by content; the CLI answers the runner's check."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import base_cache
import provenance
from tiny_data import write_tiny_dataset

PROJECT = Path(provenance.__file__).resolve().parent


def copy_code(dest):
    dest.mkdir()
    for name in provenance.code_files(PROJECT):
        shutil.copy(PROJECT / name, dest / name)
    return dest


def test_code_hash_follows_content_not_place_or_git(tmp_path):
    copy = copy_code(tmp_path / "copy")
    assert provenance.code_hash(copy) == provenance.code_hash(PROJECT)
    assert provenance.git_version(copy) == (None, None)  # no .git: the hash alone identifies it
    (copy / "Notes.txt").write_text("not code")
    assert provenance.code_hash(copy) == provenance.code_hash(PROJECT)
    with open(copy / "models.py", "a") as f:
        f.write("\n# one changed line\n")
    assert provenance.code_hash(copy) != provenance.code_hash(PROJECT)


def test_git_commit_and_dirty_flag(tmp_path):
    repo = copy_code(tmp_path / "repo")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "x"], check=True)
    head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert provenance.code_version(repo)["git_commit"] == head
    assert provenance.code_version(repo)["git_dirty"] is False
    with open(repo / "data.py", "a") as f:
        f.write("\n")
    assert provenance.code_version(repo) == {"code_hash": provenance.code_hash(repo),
                                             "git_commit": head, "git_dirty": True}


def test_cli_answers_code_hash_and_the_base_cache_fingerprint(tmp_path):
    names = write_tiny_dataset(tmp_path / "d")
    needs = {str(tmp_path / "d"): names[:2], str(tmp_path / "missing"): None, str(tmp_path / "d") + "/": ["x"]}
    out = subprocess.run([sys.executable, str(PROJECT / "provenance.py"), "--needs", json.dumps(needs)],
                         capture_output=True, text=True, check=True)
    answer = json.loads(out.stdout)
    assert answer["code_hash"] == provenance.code_hash(PROJECT)
    data = answer["data"]
    assert data[str(tmp_path / "d")] == base_cache.data_fingerprint(tmp_path / "d", names[:2])
    assert len(data[str(tmp_path / "d")]) == 6  # 2 participants x 3 splits
    assert "data folder not found" in data[str(tmp_path / "missing")]["error"]
    assert "x_train.pt" in data[str(tmp_path / "d") + "/"]["error"]
