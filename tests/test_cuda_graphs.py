"""--cuda_graphs: on the CPU nothing changes (bit for bit); on CUDA the replayed steps compute
what the eager ones do. The CUDA tests skip on machines without CUDA (CI has none)."""
import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from composed_loader import ComposedBatchDataLoader, TensorBatchLoader
from engine import cli as engine_cli
from engine import cuda_step, phase
from engine import metrics as engine_metrics
from engine.fileio import ConfigError
from tiny_data import write_tiny_dataset

REPO = Path(__file__).resolve().parent.parent
# main just before issue 14: the engine whose CPU results must stay exactly as they were.
BEFORE_GRAPHS = "69c1ed1477cba85376ed82baa0285a754f55f388"
TIMING_KEYS = {"total_time_s", "train_windows_per_s", "peak_device_memory_mb"}  # (a key added since)
def needs_cuda(test):
    """A CUDA-only test (marker cuda: bench/gpu_check.py runs them on a lent GPU); skipped without CUDA."""
    return pytest.mark.cuda(pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")(test))


CONFIGS = {
    "plain": [],
    "composed+batch_aug": ["--target_batch_pct", "0.25", "--use_augmentation", "--augmentation", "batch"],
    "target_only_ft+window_aug": ["--use_augmentation", "--augmentation", "window",
                                  "--mode", "target_only_fine_tuning"],
}
# Runs every config in one process (start-up is most of the time), by the engine in sys.argv[1].
DRIVER = """
import sys
sys.path.insert(0, sys.argv[1])
import json
try:
    from engine.cli import main  # the engine since the house has two wings
except ImportError:
    from experiment import main  # the engine before
common = ["--data_path", sys.argv[2], "--fold", "1", "--batch_size", "8", "--max_epochs", "3",
          "--no_base_cache", "--device", "cpu", *json.loads(sys.argv[5])]
for name, extra in json.loads(sys.argv[4]).items():
    assert main(common + ["--prefix", name, "--experiments_dir", sys.argv[3]] + extra, enhanced=True) == 0
"""


def run_configs(code_dir, data, out, extra=()):
    """Every config by the engine in code_dir, one thread; {config: result folder}."""
    result = subprocess.run([sys.executable, "-c", DRIVER, str(code_dir), str(data), str(out), json.dumps(CONFIGS),
                             json.dumps(list(extra))],
                            capture_output=True, text=True, cwd=code_dir, timeout=300,
                            env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    return {name: next((out / name).iterdir()) for name in CONFIGS}


def test_on_the_cpu_results_are_bit_identical_to_the_engine_before_graphs(tmp_path):
    old_code = tmp_path / "before"
    old_code.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", BEFORE_GRAPHS], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(old_code)], input=archive.stdout, check=True)
    data = tmp_path / "data"
    write_tiny_dataset(data, sizes=(30, 10, 10))  # 30 windows: batches of 8 leave a partial one
    before = run_configs(old_code, data, tmp_path / "old")
    # --cuda_graphs auto on the CPU, with the engine's historic kernels (the fast ones round differently)
    after = run_configs(REPO, data, tmp_path / "new", ["--cpu_kernels", "reference"])
    for config in CONFIGS:
        for name in ("metrics.json", "losses.json"):
            old, new = (json.loads((folder[config] / name).read_text()) for folder in (before, after))
            for key in TIMING_KEYS:
                old.pop(key, None), new.pop(key, None)
            assert new == old, (config, name)
        hyper = json.loads((after[config] / "hyperparameters.json").read_text())
        assert hyper["cuda_graphs"] == "auto" and hyper["cuda_graphs_used"] is False


def test_cuda_graphs_on_without_cuda_is_a_one_line_error(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    write_tiny_dataset(tmp_path / "data")
    code = engine_cli.main(["--data_path", str(tmp_path / "data"), "--cuda_graphs", "on",
                            "--experiments_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--cuda_graphs on needs a CUDA device" in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- CUDA only

def cuda_fold(tmp_path, data, graphs, extra=()):
    out = tmp_path / f"graphs_{graphs}"
    assert engine_cli.main(["--data_path", str(data), "--fold", "0", "--batch_size", "8", "--max_epochs", "3",
                            "--device", "cuda", "--cuda_graphs", graphs, "--prefix", "g",
                            "--experiments_dir", str(out), *extra]) == 0
    folder = next((out / "g").iterdir())
    return [json.loads((folder / name).read_text()) for name in ("losses.json", "hyperparameters.json")]


@needs_cuda
@pytest.mark.parametrize("extra", [[], ["--use_augmentation"]])
def test_graphs_give_the_eager_curves_and_best_epochs(extra, tmp_path):
    data = tmp_path / "data"
    write_tiny_dataset(data, sizes=(30, 10, 10))
    eager, eager_hyper = cuda_fold(tmp_path, data, "off", extra)
    graphed, graphed_hyper = cuda_fold(tmp_path, data, "on", extra)
    assert eager_hyper["cuda_graphs_used"] is False and graphed_hyper["cuda_graphs_used"] is True
    for key in ("transition_epoch", "best_base_epoch", "best_target_epoch", "epoch"):
        assert graphed[key] == eager[key]
    for key, curve in eager.items():
        if isinstance(curve, list) and key != "epoch":
            for a, b in zip(curve, graphed[key]):
                assert (a is None) == (b is None) and (a is None or math.isclose(a, b, rel_tol=1e-4)), key


@needs_cuda
def test_replayed_batches_keep_the_exact_target_count(tmp_path):
    device = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    target = (torch.randn(37, 3, 16, generator=g) + 100, torch.ones(37))  # tag: target windows are ~100
    base = (torch.randn(90, 3, 16, generator=g), torch.zeros(90))
    target, base = [tuple(t.to(device) for t in side) for side in (target, base)]
    loader = ComposedBatchDataLoader(base, target, 16, 0.25, generator=g)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 1), nn.Flatten(0)).to(device)
    optimizer = phase.make_optimizer(model, 1e-3, device, graphs=True)
    training = cuda_step.GraphedTraining(model, optimizer, (loader.X, loader.y), 16, device)
    seen = []

    def watched():
        for xb, yb in loader:
            yield xb, yb
            seen.append(int((training.x[:, 0, 0] > 50).sum()))  # what the replay read
    _, n = training.epoch(watched(), None)
    assert n == 16 * len(loader) and seen == [4] * len(loader)


@needs_cuda
def test_the_partial_last_batch_is_scored_exactly(tmp_path):
    device = torch.device("cuda")
    g = torch.Generator().manual_seed(1)
    X, y = torch.randn(700, 3, 16, generator=g).to(device), (torch.rand(700, generator=g) > 0.5).float().to(device)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(48, 1), nn.Flatten(0)).to(device)
    eager = engine_metrics.evaluation_counts(model, X, y, device)  # 512 + 188 windows
    graphed = engine_metrics.evaluation_counts(model, X, y, device, cuda_step.GraphedEvaluation(model))
    assert torch.allclose(graphed, eager, rtol=1e-5) and graphed[1:].sum() == 700

    # Training: 70 windows in batches of 32, so the last one (6) runs eagerly; counted once each.
    copy = nn.Sequential(nn.Flatten(), nn.Linear(48, 1), nn.Flatten(0)).to(device)
    copy.load_state_dict(model.state_dict())
    loader = TensorBatchLoader(X[:70], y[:70], 32, shuffle=False)
    optimizer = phase.make_optimizer(model, 1e-3, device, graphs=True)
    counts, n = cuda_step.GraphedTraining(model, optimizer, (X, y), 32, device).epoch(loader, None)
    eager_loss, eager_f1, eager_n = phase.train_epoch(
        copy, loader, phase.make_optimizer(copy, 1e-3, device, graphs=False), None, device)
    loss, f1 = engine_metrics.loss_and_f1(counts, n)
    assert n == eager_n == 70 and math.isclose(loss, eager_loss, rel_tol=1e-4) and f1 == eager_f1
    for a, b in zip(model.parameters(), copy.parameters()):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


class HostSync(nn.Module):
    """An op a graph cannot capture: reading a value on the host (after the warm-up, which runs it)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(48, 1)

    def forward(self, x):
        out = self.linear(x.flatten(1)).squeeze(1)  # one logit per window, as the targets
        return out * float(out.sum().item() > -1e9)


@needs_cuda
def test_a_failed_capture_falls_back_to_eager_or_is_an_error_with_on(caplog):
    device = torch.device("cuda")
    X, y = torch.randn(40, 3, 16, device=device), torch.ones(40, device=device)
    loader = TensorBatchLoader(X, y, 8, shuffle=False)
    model = HostSync().to(device)
    optimizer = phase.make_optimizer(model, 1e-3, device, graphs=True)
    logging.getLogger("experiment").addHandler(caplog.handler)  # it may not propagate to the root
    try:
        assert phase.capture_steps(model, optimizer, loader, (X, y), device, "auto") == (None, None)
    finally:
        logging.getLogger("experiment").removeHandler(caplog.handler)
    assert "capture failed" in caplog.text and "runs eagerly" in caplog.text
    with pytest.raises(ConfigError, match="--cuda_graphs on: capture failed"):
        phase.capture_steps(model, optimizer, loader, (X, y), device, "on")
    # However the capture ended, the eager fallback runs on the default stream (nothing left captured).
    assert torch.cuda.current_stream() == torch.cuda.default_stream()
    eager = phase.train_epoch(model, loader, optimizer, None, device)
    assert eager[2] == 40
