"""One fold on a GPU with CUDA graphs off and on: windows/s per phase, whole-fold time, ratio.

Writes demo-shaped data (6 participants x 600/200/200 windows of 6 x 3000) to a
temporary folder, then runs fold 0 of full_fine_tuning (batch 64, a fixed number
of epochs per phase: early stopping cannot fire) twice with --cuda_graphs off and
on, and the same pair with --target_batch_pct 0.25. Each run is its own process
(oct1_train.py, no base cache). Whole fold = the engine's total_time_s (data
loading to scores, without Python's start-up); windows/s = the median of the
phase's epochs (training + validation, as the log reports them).

    python bench/bench_gpu_fold.py              # about 2 minutes on one H200
    python bench/bench_gpu_fold.py --epochs 5   # a quicker look

Needs CUDA: without it, one line and exit 2.
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from dataset import synthetic

EPOCH_LINE = re.compile(r"(base|target) epoch \d+: .* ([\d.]+) windows/s")


def run_fold(data, out, graphs, epochs, extra):
    """One fold in its own process: ({phase: median windows/s}, whole-fold seconds)."""
    argv = [sys.executable, str(REPO / "oct1_train.py"), "--data_path", str(data), "--fold", "0",
            "--mode", "full_fine_tuning", "--batch_size", "64", "--max_epochs", str(epochs),
            "--early_stopping_patience", str(epochs + 1), "--early_stopping_patience_target", str(epochs + 1),
            "--device", "cuda", "--cuda_graphs", graphs, "--no_base_cache", "--prefix", f"graphs_{graphs}",
            "--experiments_dir", str(out), "--overwrite", *extra]
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"bench_gpu_fold.py: the run with --cuda_graphs {graphs} failed: "
                 f"{(result.stderr.strip().splitlines() or ['no output'])[-1]}")
    folder = Path(result.stdout.strip().splitlines()[-1].split(" ", 1)[1])
    rates = {"base": [], "target": []}
    for phase, rate in EPOCH_LINE.findall((folder / "train.log").read_text()):
        rates[phase].append(float(rate))
    metrics = json.loads((folder / "metrics.json").read_text())
    used = json.loads((folder / "hyperparameters.json").read_text())["cuda_graphs_used"]
    if used != (graphs == "on"):
        sys.exit(f"bench_gpu_fold.py: --cuda_graphs {graphs} but the run says cuda_graphs_used={used}")
    return {phase: statistics.median(r) for phase, r in rates.items()}, metrics["total_time_s"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20, help="epochs of each phase (default 20)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("bench_gpu_fold.py: error: needs a CUDA device; this machine has none", file=sys.stderr)
        return 2
    print(f"device: {torch.cuda.get_device_name(0)}; torch {torch.__version__}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; {args.epochs} + {args.epochs} epochs")
    with tempfile.TemporaryDirectory(prefix="bench-gpu-fold-") as tmp:
        data = Path(tmp) / "data"
        synthetic.write_synthetic_dataset(str(data), n_participants=6, window_size=3000,
                                             n_train=600, n_val=200, n_test=200)
        for title, extra in (("plain batches", []), ("--target_batch_pct 0.25", ["--target_batch_pct", "0.25"])):
            print(f"\n{title}, fold 0, full_fine_tuning, batch 64")
            walls = {}
            for graphs in ("off", "on"):
                rates, walls[graphs] = run_fold(data, Path(tmp) / "out", graphs, args.epochs, extra)
                print(f"  graphs {graphs:3}: base {rates['base']:9,.0f} windows/s | target "
                      f"{rates['target']:9,.0f} windows/s | whole fold {walls[graphs]:6.1f} s")
            print(f"  ratio off / on (whole fold): {walls['off'] / walls['on']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
