"""A grid of fine-tuning folds on one GPU: one job at a time, 4 jobs per GPU, and one pack.

    python bench/bench_gpu_grid.py            # needs CUDA; about 8 minutes or less on one H200
    python bench/bench_gpu_grid.py --quick    # tiny data and grid on any machine, to check that it runs

Data of the demo's shape (6 participants x 600/200/200 windows of 6 x 3000); a grid of
24 full_fine_tuning folds (6 folds x 4 target_data_pct) with fixed epochs (patience =
max_epochs, so nothing stops early). Their 6 base models are trained first, untimed,
into a cache all runs share. Then, each in a fresh folder and timed:
  (a) run_distributed_training.py, one slot on GPU 0 (one job at a time),
  (b) the same with slots_per_gpu 4,
  (c) pack_train.py with all the jobs in one process.
Prints each wall time (process starts included), the aggregate training windows/s
and the ratios to (a). --quick runs on the CPU with one thread per process.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from dataset import synthetic

FULL = {"data": {"n_participants": 6, "window_size": 3000, "n_train": 600, "n_val": 200, "n_test": 200},
        "target_data_pct": [0.25, 0.5, 0.75, 1.0], "max_epochs": 5}
QUICK = {"data": {"n_participants": 2, "window_size": 128, "n_train": 24, "n_val": 8, "n_test": 8},
         "target_data_pct": [1.0], "max_epochs": 2}


def make_jobs(folder, data, setting, cache):
    """The grid's jobs JSON (generate_jobs.py) in folder; returns its jobs."""
    epochs = setting["max_epochs"]
    grid = {"prefix": "bench", "folds": "all",
            "fixed": {"data_path": str(data), "mode": "full_fine_tuning", "max_epochs": epochs,
                      "early_stopping_patience": epochs, "early_stopping_patience_target": epochs,
                      "base_cache_dir": str(cache)},
            "grid": {"target_data_pct": setting["target_data_pct"]}}
    (folder / "grid.json").write_text(json.dumps(grid))
    subprocess.run([sys.executable, str(ROOT / "generate_jobs.py"), "grid.json", "-o", "jobs.json",
                    "--script", str(ROOT / "oct1_train.py")], cwd=folder, check=True, stdout=subprocess.DEVNULL)
    return json.loads((folder / "jobs.json").read_text())


def timed(command, folder, env):
    started = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"{command[1]} in {folder} failed ({done.returncode}): {done.stderr[-2000:]}")
    return wall


def run_grid(folder, data, setting, cache, env, slots_per_gpu=None):
    """Wall seconds of the grid through the runner (slots_per_gpu given) or as one pack."""
    folder.mkdir()
    make_jobs(folder, data, setting, cache)
    if slots_per_gpu is None:
        return timed([sys.executable, str(ROOT / "pack_train.py"), "jobs.json"], folder, env)
    gpus = [0] if torch.cuda.is_available() else []  # no GPU: the slots are CPU slots
    (folder / "cluster.json").write_text(json.dumps({
        "servers": [{"host": "localhost", "local": True, "gpus": gpus, "slots_per_gpu": slots_per_gpu,
                     "env": {"OMP_NUM_THREADS": 1}}],
        "script_path": str(ROOT / "oct1_train.py")}))
    return timed([sys.executable, str(ROOT / "run_distributed_training.py"), "--cluster-config", "cluster.json",
                  "--jobs-config", "jobs.json", "--quiet"], folder, env)


def training_windows(setting, n_jobs_per_pct):
    """Windows trained on over the grid: every epoch of a job passes over the base
    participants' train+val and its share of the target's train split."""
    d = setting["data"]
    base = (d["n_participants"] - 1) * (d["n_train"] + d["n_val"])
    return sum(n_jobs_per_pct * setting["max_epochs"] * (base + round(pct * d["n_train"]))
               for pct in setting["target_data_pct"])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny data and grid on the CPU, to check that it runs")
    args = p.parse_args()
    if not args.quick and not torch.cuda.is_available():
        print("bench_gpu_grid.py: error: needs a CUDA GPU (none visible); --quick checks it on the CPU",
              file=sys.stderr)
        return 2
    setting = QUICK if args.quick else FULL
    env = dict(os.environ, OMP_NUM_THREADS="1")
    tmp = Path(tempfile.mkdtemp(prefix="bench_gpu_grid"))
    try:
        data, cache = tmp / "data", tmp / "base_models"
        synthetic.write_synthetic_dataset(str(data), **setting["data"])
        # The base models, untimed: every timed run reuses them and trains fine-tuning folds only.
        warm = tmp / "warm"
        warm.mkdir()
        jobs = make_jobs(warm, data, setting, cache)
        base_jobs = {job["base_key"]: dict(job, mode="base_only") for job in jobs}
        (warm / "base.json").write_text(json.dumps(list(base_jobs.values())))
        timed([sys.executable, str(ROOT / "pack_train.py"), "base.json"], warm, env)
        walls = {"(a) one job at a time": run_grid(tmp / "a", data, setting, cache, env, 1),
                 "(b) slots_per_gpu 4": run_grid(tmp / "b", data, setting, cache, env, 4),
                 f"(c) one pack of {len(jobs)}": run_grid(tmp / "c", data, setting, cache, env)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU, 1 thread per process"
    windows = training_windows(setting, setting["data"]["n_participants"])
    print(f"{len(jobs)} full_fine_tuning folds, {setting['max_epochs']} epochs each, {windows} training windows "
          f"in all, on {device}")
    baseline = walls["(a) one job at a time"]
    for name, wall in walls.items():
        print(f"{name:24s} {wall:8.2f} s  {windows / wall:10.0f} windows/s  x{baseline / wall:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
