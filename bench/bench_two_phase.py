"""Two-phase runs against the same grid with the base-model cache off, on this machine.

    python bench/bench_two_phase.py [--quick] [--slots 2]

Writes a synthetic dataset (the demo dataset's shape: 6 participants, 60 s windows
at 50 Hz; --quick: 4 participants, short windows) and a grid in which several jobs
share each base model: 2 fine-tuning modes x target_data_pct values x every fold.
Runs it twice with run_distributed_training.py on a local cluster of --slots CPU
slots, each run in a fresh folder: as generated (two phases: each base model
trained once, then the jobs that need it) and with no_base_cache on every job (each
job trains its own base model). Prints both wall times, each including the runner's
start, and their ratio.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from dataset import synthetic

FULL = {"data": {"n_participants": 6, "window_size": 3000, "n_train": 120, "n_val": 40, "n_test": 40},
        "target_data_pct": [0.25, 0.5, 1.0], "max_epochs": 10}
QUICK = {"data": {"n_participants": 4, "window_size": 512, "n_train": 64, "n_val": 16, "n_test": 16},
         "target_data_pct": [0.5, 1.0], "max_epochs": 5}


def timed_run(folder, data, setting, slots, cache):
    """Generate the grid in a fresh folder and run it there; (wall seconds, the run's base-model figures)."""
    folder.mkdir()
    grid = {"prefix": "bench", "folds": "all",
            "fixed": {"data_path": str(data), "device": "cpu", "max_epochs": setting["max_epochs"],
                      "no_base_cache": not cache},
            "grid": {"mode": ["full_fine_tuning", "target_only_fine_tuning"],
                     "target_data_pct": setting["target_data_pct"]}}
    (folder / "grid.json").write_text(json.dumps(grid))
    threads = max(1, (os.cpu_count() or 1) // slots)
    (folder / "cluster.json").write_text(json.dumps({
        "servers": [{"host": "localhost", "local": True, "gpus": slots, "env": {"OMP_NUM_THREADS": threads}}],
        "script_path": str(ROOT / "oct1_train.py")}))
    subprocess.run([sys.executable, str(ROOT / "generate_jobs.py"), "grid.json", "-o", "jobs.json",
                    "--script", str(ROOT / "oct1_train.py")],
                   cwd=folder, check=True, stdout=subprocess.DEVNULL)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "run_distributed_training.py"), "--cluster-config",
                           "cluster.json", "--jobs-config", "jobs.json", "--quiet"],
                          cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"the run in {folder} failed ({done.returncode}): {done.stderr[-2000:]}")
    report = json.loads((folder / "runs" / "jobs" / "run_log.json").read_text())
    return wall, report["base_models"], report["totals"]["jobs"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="a small dataset and grid, to check that the bench runs (about 2 minutes on 2 cores)")
    p.add_argument("--slots", type=int, default=2, help="CPU slots of the local cluster (default: 2)")
    args = p.parse_args()
    setting = QUICK if args.quick else FULL

    tmp = Path(tempfile.mkdtemp(prefix="bench_two_phase"))
    try:
        data = tmp / "data"
        synthetic.write_synthetic_dataset(str(data), **setting["data"])
        two_phase, figures, jobs = timed_run(tmp / "two_phase", data, setting, args.slots, cache=True)
        cache_off, _, plain_jobs = timed_run(tmp / "cache_off", data, setting, args.slots, cache=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"grid: {figures['without_sharing']} fine-tuning jobs over {figures['distinct_keys']} distinct "
          f"base models, {args.slots} CPU slots, max_epochs {setting['max_epochs']}")
    print(f"two-phase  {two_phase:8.1f} s  ({jobs} jobs, {figures['trained']} base trainings)")
    print(f"cache off  {cache_off:8.1f} s  ({plain_jobs} jobs, each trains its own base model)")
    print(f"ratio cache off / two-phase: {cache_off / two_phase:.2f}")


if __name__ == "__main__":
    main()
