"""Where a GPU surprises, nothing is lost (issue 23), each fault forced on the CPU: a pack that runs
out of GPU memory is run again in halves down to solo runs, uncharged; a capture that fails falls
back to eager and the provenance says so; and the defects found by reading the GPU paths."""
import json
import types

import torch

import pack_train
import run_distributed_training as rdt
from conftest import FAKE_TRAIN, write_json
from engine import cli as engine_cli
from engine import cuda_step, device
from engine.flags import job_argv
from engine.metrics import evaluation_counts
from engine.models import build_model
from engine.pack import Store
from engine.packed_step import PackedValidation, stack_states
from tiny_data import write_tiny_dataset

# A fake pack_train.py: a pack of more than one member runs out of device memory, as engine.pack says it.
FAKE_PACK = '''\
import argparse, json, os, subprocess, sys
p = argparse.ArgumentParser()
p.add_argument("--json")
jobs = json.loads(p.parse_args().json)
if len(jobs) > 1:
    print(f"PACK_OUT_OF_MEMORY {len(jobs)}", flush=True)
    sys.exit(3)
'''


def test_a_pack_out_of_gpu_memory_runs_again_in_halves_down_to_solo_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = tmp_path / "code"
    code.mkdir()
    (code / "oct1_train.py").write_text(FAKE_TRAIN)  # what the runner packs: oct1_train.py jobs
    (code / "pack_train.py").write_text(FAKE_PACK)
    cluster = write_json(tmp_path / "cluster.json", {
        "servers": [{"host": "here", "local": True, "gpus": [0], "pack": 4}], "script_path": str(code / "oct1_train.py")})
    jobs = write_json(tmp_path / "jobs.json", [{"prefix": "oom", "fold": k, "job_id": f"j{k}"} for k in range(4)])
    status = rdt.main(["--cluster-config", cluster, "--jobs-config", jobs, "--allow-mismatch", "--quiet"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert "4 done, 0 failed" in out and "pack members ran out of GPU memory and ran again in smaller packs" in out
    records = [json.loads(line) for line in (tmp_path / "runs" / "jobs" / "ledger.jsonl").read_text().splitlines()]
    sizes = [len(r.get("pack", [r["job_id"]])) for r in records if r["status"] == "started"]
    assert sizes[:4] == [4] * 4 and sorted(sizes[4:]) == [1] * 4 + [2] * 4  # a pack of 4, two of 2, each alone
    requeued = [r for r in records if r["status"] == "requeued"]
    assert len(requeued) == 8 and {r["pack_cap"] for r in requeued} == {2, 1}
    assert all("ran out of GPU memory" in r["error"] for r in requeued)
    assert all(r["attempt"] <= 3 for r in records)  # no retry was spent: --retries is 0
    report = json.loads((tmp_path / "runs" / "jobs" / "run_log.json").read_text())
    assert report["totals"]["out_of_memory"] == 8 and report["totals"]["failed"] == 0


def test_a_pack_that_runs_out_of_memory_says_so_and_keeps_its_finished_members(tmp_path, capsys, monkeypatch):
    write_tiny_dataset(tmp_path / "data")
    common = {"data_path": str(tmp_path / "data"), "experiments_dir": str(tmp_path / "exp"), "batch_size": 8,
              "max_epochs": 2, "device": "cpu", "prefix": "p", "mode": "target_only", "no_base_cache": True}
    calls = []
    original = pack_train.pack.train_pack

    def runs_out_the_second_time(*args, **kwargs):
        calls.append(args[0])
        if len(calls) == 2:  # where a real one would come from the device
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(*args, **kwargs)
    monkeypatch.setattr("engine.pack.train_pack", runs_out_the_second_time)
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps([dict(common, fold=0), dict(common, fold=1)]))
    assert pack_train.main([str(jobs)]) == 0  # one target pack: fine
    jobs.write_text(json.dumps([dict(common, fold=2, overwrite=True), dict(common, fold=3)]))
    assert pack_train.main([str(jobs)]) == 3
    out, err = capsys.readouterr()
    assert "PACK_OUT_OF_MEMORY 2" in out.splitlines() and err.count("ran out of memory") == 1
    assert sorted(p.name for p in (tmp_path / "exp" / "p").iterdir()) == ["fold0_a", "fold1_b"]


class EagerGraphs:
    """cuda_step.CudaGraphs without CUDA: a "graph" runs what it captured again, from the same
    start (before), so the code around the capture runs on the CPU."""

    def warm_up(self, work):
        work()

    def capture(self, work, before):
        before()

        def replay():
            before()
            work()
        return types.SimpleNamespace(replay=replay)


class FailingGraphs(EagerGraphs):
    def capture(self, work, before):
        raise RuntimeError("operation not permitted when stream is capturing")


def fold(tmp_path, name, monkeypatch=None, graphs=None):
    """A full_fine_tuning fold on the CPU; with `graphs`, the CUDA-graph path forced on over that stand-in."""
    if graphs is not None:
        monkeypatch.setattr(cuda_step, "GRAPHS", graphs)
        monkeypatch.setattr("engine.phase.graphs_wanted", lambda setting, device: True)
    argv = ["--data_path", str(tmp_path / "data"), "--fold", "1", "--batch_size", "8", "--max_epochs", "3",
            "--device", "cpu", "--no_base_cache", "--experiments_dir", str(tmp_path / name), "--use_augmentation"]
    assert engine_cli.main(argv, enhanced=True) == 0
    folder = tmp_path / name / "experiment" / "fold1_b"
    return {f: json.loads((folder / f).read_text()) for f in ("losses.json", "provenance.json", "hyperparameters.json")}


def test_the_graph_steps_plumbing_gives_the_plain_steps_numbers(tmp_path, monkeypatch):
    # The copies into the static inputs, the replay, the counts read back, the partial last batch:
    # everything but CUDA itself, against the eager engine (30 windows in batches of 8).
    write_tiny_dataset(tmp_path / "data", sizes=(30, 10, 10))
    eager = fold(tmp_path, "eager")
    graphed = fold(tmp_path, "graphed", monkeypatch, EagerGraphs())
    assert graphed["losses.json"] == eager["losses.json"]
    assert graphed["provenance.json"]["cuda_graphs_used"] is True and eager["provenance.json"]["cuda_graphs_used"] is False
    assert graphed["hyperparameters.json"]["cuda_graphs_used"] is True


def test_a_failed_capture_falls_back_to_eager_and_the_provenance_says_so(tmp_path, monkeypatch, capsys):
    write_tiny_dataset(tmp_path / "data", sizes=(30, 10, 10))
    result = fold(tmp_path, "fallback", monkeypatch, FailingGraphs())
    out = capsys.readouterr().out
    assert out.count("CUDA graph capture failed (training step: RuntimeError") == 2 and "runs eagerly" in out
    assert result["provenance.json"]["cuda_graphs_used"] is False and result["provenance.json"]["kernels"] == "fast"
    assert result["losses.json"] == fold(tmp_path, "eager")["losses.json"]


def test_a_packs_starts_on_several_devices_stack_on_its_own():
    # A base trained in the pack (on the device), a cached one (host memory), a fresh one: a meta
    # tensor stands in for the second device.
    states = [build_model("test", 3).state_dict(), {k: v.to("meta") for k, v in build_model("test", 3).state_dict().items()}]
    stacked = stack_states(states, torch.device("meta"))
    assert all(t.device.type == "meta" and t.shape[0] == 2 for t in stacked.values())


def test_the_members_validation_is_one_vmapped_pass_that_scores_as_the_solo_evaluation():
    torch.manual_seed(0)
    store = Store({"a": {"val": (torch.randn(700, 3, 32), (torch.rand(700) > 0.5).float())}}, torch.device("cpu"))
    models = [build_model("test", 3) for _ in range(3)]
    stacked = stack_states([m.state_dict() for m in models], torch.device("cpu"))
    indices = [torch.arange(700), torch.arange(5, 40), torch.arange(600, 700)]  # 700 needs two chunks of 512
    reads = []
    store.gather_into = lambda index, x, y, read=store.gather_into: reads.append(index.shape) or read(index, x, y)
    validation = PackedValidation(build_model("test", 3).eval(), stacked, store, indices, [None] * 3)
    exact = validation.counts()  # the CPU's path: member by member, to the bit
    validation.by_member = False  # the GPU's path, vmapped
    counts = validation.counts()
    assert reads == [(3, 512), (3, 188)]  # one read of the store per chunk, for every member at once
    for model, index, row, exact_row in zip(models, indices, counts, exact):
        solo = evaluation_counts(model.eval(), store.X[index], store.y[index], torch.device("cpu"))
        assert torch.allclose(row, solo, rtol=1e-5) and row[1:].sum() == len(index)
        assert torch.equal(exact_row, solo)


def test_a_cuda_device_with_an_index_becomes_the_current_device(monkeypatch):
    # Without it the side stream and the graph would live on device 0 while the work runs on N.
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert device.resolve_device("cuda:1") == torch.device("cuda:1") and current == [torch.device("cuda:1")]


def test_the_target_phase_places_all_its_tensors_with_one_decision(tmp_path, monkeypatch):
    # Two decisions could put the target side on the GPU and the base side in host memory.
    write_tiny_dataset(tmp_path / "data")
    calls = []
    place = device.place
    monkeypatch.setattr("engine.fold.place", lambda tensors, where: calls.append(len(tensors)) or place(tensors, where))
    job = {"data_path": str(tmp_path / "data"), "fold": 0, "batch_size": 8, "max_epochs": 1, "device": "cpu",
           "mode": "full_fine_tuning", "no_base_cache": True, "experiments_dir": str(tmp_path / "exp")}
    assert engine_cli.main(job_argv(job), enhanced=True) == 0
    assert calls == [4, 6]  # the base phase's, then the target phase's: target train, val and base train
