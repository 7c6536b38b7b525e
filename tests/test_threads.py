"""Threads per slot: the runner gives each job OMP_NUM_THREADS = the host's CPUs / its slots
(unless the job's environment sets it), and the training CLIs take --threads N."""
import json
import os
from pathlib import Path

import pytest
import torch

import run_distributed_training as rdt
from conftest import write_json
from engine import cli as engine_cli
from engine.device import apply_threads


def seen_threads(tmp_path, fake_script, **server):
    """Run one job through the runner on this machine; the OMP_NUM_THREADS the job saw."""
    cluster = write_json(tmp_path / "cluster.json", {
        "servers": [{"host": "localhost", "local": True, **server}], "script_path": str(fake_script)})
    jobs = write_json(tmp_path / "jobs.json", [{"prefix": "t", "fold": 0, "env_names": ["OMP_NUM_THREADS"],
                                                "job_id": "t0"}])
    assert rdt.main(["--cluster-config", cluster, "--jobs-config", jobs, "--quiet"]) == 0
    record = json.loads(Path(tmp_path, "experiments", "t", "fold0_p0", "record.json").read_text())
    return record["env"]["OMP_NUM_THREADS"]


@pytest.mark.parametrize("gpus, slots_per_gpu", [([0], 1), ([0, 1], 2)])
def test_a_job_gets_the_host_cpus_divided_by_its_slots(gpus, slots_per_gpu, fake_script, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    slots = len(gpus) * slots_per_gpu
    expected = max(1, len(os.sched_getaffinity(0)) // slots)  # what nproc counts
    assert seen_threads(tmp_path, fake_script, gpus=gpus, slots_per_gpu=slots_per_gpu) == str(expected)


def test_an_explicit_env_in_the_cluster_config_wins(fake_script, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "5")
    assert seen_threads(tmp_path, fake_script, gpus=[0], env={"OMP_NUM_THREADS": 3}) == "3"


def test_a_value_the_job_environment_already_has_is_kept(fake_script, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", "5")  # the runner's own environment, which a local job inherits
    assert seen_threads(tmp_path, fake_script, gpus=[0]) == "5"


def test_the_dry_run_shows_the_per_slot_rule(fake_script, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cluster = write_json(tmp_path / "cluster.json", {
        "servers": [{"host": "localhost", "local": True, "gpus": [0, 1], "slots_per_gpu": 2}],
        "script_path": str(fake_script)})
    jobs = write_json(tmp_path / "jobs.json", [{"fold": 0, "job_id": "d0"}])
    assert rdt.main(["--cluster-config", cluster, "--jobs-config", jobs, "--dry-run"]) == 0
    assert "_NPROCESSORS_ONLN) / 4 > 1 ?" in capsys.readouterr().out  # 2 GPUs x 2 slots share the CPUs


def test_threads_flag_sets_torch_threads_and_rejects_zero(capsys):
    args = engine_cli.build_parser().parse_args(["--threads", "2"])
    apply_threads(args)
    assert torch.get_num_threads() == 2  # the autouse fixture puts the old value back
    before = torch.get_num_threads()
    apply_threads(engine_cli.build_parser().parse_args([]))  # default: leave torch's choice
    assert torch.get_num_threads() == before
    with pytest.raises(SystemExit) as exit_info:
        engine_cli.build_parser().parse_args(["--threads", "0"])
    assert exit_info.value.code == 2 and "--threads" in capsys.readouterr().err
