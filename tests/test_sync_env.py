"""--sync-env: a host whose packages differ from requirements.txt's pins is refused without it, and
with it gets `python -m pip install -r requirements.txt` in its own environment, then is checked
again; a host where pip fails sits the run out with one line. Real pip, real loopback SSH hosts, no
network: the requirements name a tiny wheel built here (pip --no-index --find-links), and each host's
python is a venv of this one (its site-packages seen too) where an older version of it is installed.
The Slurm preflight's install step is checked on the output it reads (a Slurm job costs the suite
ten seconds).
"""
import base64
import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import run_distributed_training as rdt
from conftest import write_json, write_known_hosts
from engine import provenance
from runner import requirements
from runner.config import load_cluster_config
from runner.plan import Task
from runner.slurm.preflight import PreflightError, show_install
from runner.ssh.backend import HostOptions
from runner.ssh.hosts import make_host
from runner.ssh.run import open_hosts
from test_remote import ledger, write_cluster
from tiny_data import write_tiny_dataset

JOB = {"job_id": "f0", "fold": 0, "max_epochs": 1, "early_stopping_patience": 1, "early_stopping_patience_target": 1,
       "device": "cpu", "batch_size": 8, "model": "test", "data_path": "d", "mode": "target_only", "prefix": "env"}


def dist_files(version):
    """The files of a distribution "tinypkg" at version, with its RECORD (so pip can uninstall it)."""
    info = f"tinypkg-{version}.dist-info"
    files = {"tinypkg/__init__.py": f"VERSION = {version!r}\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: tinypkg\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    digest = {path: base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
              for path, text in files.items()}
    files[f"{info}/RECORD"] = "".join(f"{p},sha256={digest[p]},{len(t.encode())}\n" for p, t in files.items()) \
        + f"{info}/RECORD,,\n"
    return files


def build_wheel(folder, version):
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / f"tinypkg-{version}-py3-none-any.whl", "w") as wheel:
        for path, text in dist_files(version).items():
            wheel.writestr(path, text)


def make_env(folder, version):
    """A venv of this python (its packages, torch too, seen through) with tinypkg installed at version;
    returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(folder)], check=True)
    python = folder / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    for path, text in dist_files(version).items():
        (site / path).parent.mkdir(parents=True, exist_ok=True)
        (site / path).write_text(text)
    return python


def same_code(*hosts):
    """The code of this checkout in each host's workdir, as it is now."""
    for host in hosts:
        for name in provenance.code_files():
            (host.workdir / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(provenance.PROJECT_DIR / name, host.workdir / name)


def installed(python):
    return subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('tinypkg'))"],
                          capture_output=True, text=True).stdout.strip()


@pytest.mark.ssh
def test_a_host_with_an_older_package_is_refused_without_sync_env_and_brought_to_the_pin_with_it(
        start_sshd, user_key, tmp_path, monkeypatch, capsys):
    fixed, failing = start_sshd("127.0.0.1"), start_sshd("127.0.0.2")
    monkeypatch.chdir(tmp_path)
    build_wheel(tmp_path / "wheels", "1.0")
    pinned = tmp_path / "requirements.txt"  # this checkout's, as far as the runner knows
    pinned.write_text(f"--no-index\n--find-links {tmp_path / 'wheels'}\ntinypkg==1.0  # the pin\n")
    monkeypatch.setattr(requirements, "REQUIREMENTS", pinned)
    (tmp_path / "constraints.txt").write_text("tinypkg==0.9\n")  # pip on the failing host cannot meet the pin
    write_tiny_dataset(tmp_path / "d", participants=("a", "b", "c"))
    for host in (fixed, failing):
        shutil.copytree("d", host.workdir / "d")  # the same data as here
    pythons = [make_env(tmp_path / f"env{i}", "0.9") for i in (1, 2)]
    known = write_known_hosts(tmp_path / "known_hosts", fixed, failing)
    servers = [(fixed, {"gpus": 0, "python": str(pythons[0]), "env": {"OMP_NUM_THREADS": 1}}),
               (failing, {"gpus": 0, "python": str(pythons[1]),
                          "setup": f"export PIP_CONSTRAINT={tmp_path / 'constraints.txt'}"})]

    # Without the flag: refused in one line naming the package, nothing installed, nothing run.
    alone = write_cluster(tmp_path, user_key, known, "oct1_train.py", servers[:1])
    same_code(fixed)
    jobs = write_json(tmp_path / "jobs.json", [JOB])
    assert rdt.main(["--cluster-config", alone, "--jobs-config", jobs, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert (f"error: {fixed.address}: packages differ (tinypkg 0.9 there, requirements.txt pins 1.0); "
            f"--sync-env installs this checkout's requirements.txt there") in err
    assert installed(pythons[0]) == "0.9"
    assert not Path("runs/jobs/ledger.jsonl").exists() or not ledger("runs/jobs")

    # With it (the hosts opened as a run opens them, without training a job, to keep the suite fast): pip
    # runs on both; the fixed host is checked again and gets its slot, the other sits out in one line.
    config = load_cluster_config(write_cluster(tmp_path, user_key, known, "oct1_train.py", servers))
    hosts = [make_host(server, config, False) for server in config["servers"]]
    same_code(fixed, failing)
    try:
        slots, _ = open_hosts(config["servers"], hosts, HostOptions(sync_env=True), [Task(JOB)], "oct1_train.py")
    finally:
        for host in hosts:
            host.close()
    err = capsys.readouterr().err
    assert f"{fixed.address}: Successfully installed tinypkg-1.0" in err  # pip's own lines, under the host
    assert f"{failing.address}: ERROR: Cannot install tinypkg==1.0" in err
    assert installed(pythons[0]) == "1.0" and installed(pythons[1]) == "0.9"
    out = [line for line in err.splitlines() if "out of this run" in line]
    assert len(out) == 1 and out[0].startswith(f"run_distributed_training.py: error: {failing.address}: pip install "
                                               f"-r requirements.txt failed there (exit 1: ERROR: ")
    assert [slot.label for slot in slots] == [f"{fixed.address}:cpu"]


def test_a_slurm_preflight_shows_pips_lines_and_a_failing_install_is_one_line():
    said = []
    answer = json.dumps({"code_hash": "x"})
    show_install(f"Processing ./tinypkg-1.0.whl\nSuccessfully installed tinypkg-1.0\n{answer}\n", "slurm partition gpu",
                 lambda line, important=False: said.append(line))
    assert said == ["slurm partition gpu: Processing ./tinypkg-1.0.whl",
                    "slurm partition gpu: Successfully installed tinypkg-1.0"]
    with pytest.raises(PreflightError) as failed:
        show_install(f"ERROR: No matching distribution found for tinypkg==2.0\n{requirements.FAILED} (exit 1)\n",
                     "slurm partition gpu", lambda line, important=False: None)
    assert str(failed.value) == (f"slurm partition gpu: {requirements.FAILED} (exit 1) in the preflight job (ERROR: No "
                                 f"matching distribution found for tinypkg==2.0); nothing submitted")


def test_only_exact_pins_are_compared_and_a_local_build_tag_is_no_difference():
    pins = requirements.pins("torch==2.13.0\nnumpy>=1.24\n# tests only\nTiny_Pkg == 1.0  # ours\n-r other.txt\n"
                             "scipy==1.10; python_version < '3.8'\n")
    assert pins == {"torch": "2.13.0", "tiny-pkg": "1.0"}
    assert requirements.unmet(pins, {"torch": "2.13.0+cu126", "tiny-pkg": "1.0.0"}) == []
    assert requirements.unmet(pins, {"torch": "2.12.1", "tiny-pkg": None}) == [("torch", "2.13.0", "2.12.1"),
                                                                                ("tiny-pkg", "1.0", None)]
    assert requirements.meets("2.13.*", "2.13.1+cpu") and not requirements.meets("2.13.*", "2.14.0")


def test_this_machine_is_held_to_the_pins_only_with_sync_env_and_a_missing_module_is_what_it_mends(
        tmp_path, monkeypatch):
    from runner.ssh.hostsync import missing_module
    monkeypatch.chdir(tmp_path)
    pinned = tmp_path / "requirements.txt"
    pinned.write_text("tinypkg==1.0\n")  # not installed here
    monkeypatch.setattr(requirements, "REQUIREMENTS", pinned)
    write_tiny_dataset(tmp_path / "d", participants=("a", "b", "c"))
    config = load_cluster_config(write_json(tmp_path / "cluster.json", {
        "servers": [{"host": "here", "local": True, "gpus": 0}], "script_path": str(provenance.PROJECT_DIR /
                                                                                     "oct1_train.py")}))
    hosts = [make_host(server, config, False) for server in config["servers"]]
    try:  # the README's demo on this machine is not refused for its own packages
        slots, _ = open_hosts(config["servers"], hosts, HostOptions(), [Task(JOB)], config["script_path"])
    finally:
        for host in hosts:
            host.close()
    assert [slot.label for slot in slots] == ["here:cpu"]
    assert missing_module("cannot tell its code version (python -m engine.provenance: ModuleNotFoundError: No "
                          "module named 'torch'); --sync-code copies this checkout there")
    assert not missing_module("cannot tell its code version (python -m engine.provenance: exit status 2)")
    assert not missing_module(None)
