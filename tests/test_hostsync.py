"""runner.ssh.hostsync against a real loopback sshd: the check names what differs, sync copies only that."""
import os
import shutil

import pytest

from conftest import write_known_hosts
from engine import provenance
from runner.config import check_server
from runner import check
from runner.ssh import hostsync
from runner.ssh.connection import RemoteHost
from tiny_data import write_tiny_dataset

ROOT = provenance.PROJECT_DIR


@pytest.fixture
def host_and_server(sshd_pair, user_key, tmp_path):
    sshd = sshd_pair[1]
    workdir = sshd.workdir / tmp_path.name  # each test its own empty workdir on the host
    workdir.mkdir()
    host = RemoteHost(sshd.address, "root", sshd.port, str(user_key[0]), ssh_config=None,
                             known_hosts=write_known_hosts(tmp_path / "known_hosts", sshd))
    host.connect()
    server = check_server(sshd.server(workdir=str(workdir)), "test")
    yield host, server, workdir
    host.close()


@pytest.mark.ssh
def test_an_empty_workdir_is_reported_then_synced_then_passes(host_and_server, tmp_path, monkeypatch):
    host, server, workdir = host_and_server
    write_tiny_dataset(tmp_path / "d", participants=("a", "b"))
    monkeypatch.chdir(tmp_path)
    needs = {"d": None}
    local = check.local_answer(needs)
    answer, why = hostsync.ask_host(host, server, "oct1_train.py", needs)
    assert answer is None and "engine.provenance" in why and "--sync-code" in why

    names = hostsync.project_files(ROOT)
    assert "engine/fold.py" in names and "tests/conftest.py" in names
    assert hostsync.sync(host, server, names, local_root=ROOT) == len(names)
    assert (workdir / "engine/fold.py").read_bytes() == (ROOT / "engine/fold.py").read_bytes()
    assert not [p for p in workdir.iterdir() if p.name.startswith(".sync")]  # staging folder removed
    answer, why = hostsync.ask_host(host, server, "oct1_train.py", needs)
    assert why is None and answer["code_hash"] == local["code_hash"]
    assert check.differences("h", local, answer, hostsync.FIX_CODE, hostsync.FIX_DATA) == [f"h: data d: {answer['data']['d']['error']}; "
                                                        f"--sync-data copies it there"]
    assert "d: data folder not found" in answer["data"]["d"]["error"]

    data_files = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "d").iterdir())
    assert hostsync.sync(host, server, data_files) == 6
    answer, _ = hostsync.ask_host(host, server, "oct1_train.py", needs)
    assert check.differences("h", local, answer, hostsync.FIX_CODE, hostsync.FIX_DATA) == []
    assert hostsync.sync(host, server, names, local_root=ROOT) == 0  # nothing changed: nothing sent


@pytest.mark.ssh
def test_one_changed_file_is_named_and_only_it_is_sent_again(host_and_server, tmp_path, monkeypatch):
    host, server, workdir = host_and_server
    monkeypatch.chdir(tmp_path)
    names = hostsync.project_files(ROOT)
    hostsync.sync(host, server, names, local_root=ROOT)
    with open(workdir / "engine/models.py", "a") as f:
        f.write("\n# edited on the server\n")
    os.makedirs(tmp_path / "d")
    write_tiny_dataset(tmp_path / "d", participants=("a", "b"))
    shutil.copytree(tmp_path / "d", workdir / "d")
    (workdir / "d" / "b_val.pt").write_bytes(b"not the same")
    local = check.local_answer({"d": ["a", "b"]})
    answer, _ = hostsync.ask_host(host, server, "oct1_train.py", {"d": ["a", "b"]})
    lines = check.differences("gpu9", local, answer, hostsync.FIX_CODE, hostsync.FIX_DATA)
    assert len(lines) == 2
    assert lines[0].startswith("gpu9: code differs (code hash here ") and local["code_hash"] in lines[0]
    assert lines[1].startswith("gpu9: data d/b_val.pt differs") and "1 files differ" in lines[1]
    assert hostsync.sync(host, server, names, local_root=ROOT) == 1
    assert (workdir / "engine/models.py").read_bytes() == (ROOT / "engine/models.py").read_bytes()


def test_data_needs_merges_participants_per_folder():
    jobs = [{"participants": ["b", "a"]}, {"data_path": "x", "participants": ["c"]},
            {"participants": ["c"]}, {"data_path": "y"}, {"data_path": "y", "participants": ["q"]}]
    assert check.data_needs(jobs) == {"data/demo": ["a", "b", "c"], "x": ["c"], "y": None}
