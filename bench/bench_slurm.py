"""The Slurm backend on the test cluster, two figures in one run:

1. overhead: this runner against one bare `sbatch --array` of the same N trivial jobs (a Python
   script that exits at once, one CPU each), its end seen by polling squeue as often as the
   runner does (Slurm's own floor; `sbatch --wait` polls with a backoff of up to seconds, too
   coarse to compare): both wall times, their ratio, the runner's overhead per job.
2. packs: 48 trivial training members (oct1_train.py, the `test` model on tiny data, one epoch,
   target_only) as packs of 8 against 48 solo tasks: wall time and array tasks launched, and
   the ratio. Each task pays a Python start, a torch import and a data load; a pack pays them once.

    python bench/bench_slurm.py [--jobs 100] [--members 48] [--pack 8] [--part overhead|packs|both]

Starts a throwaway single-node Slurm (as the tests do: 2 CPUs, no accounting; one thread per
task). Needs root, slurm-wlm and munge.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
from bench_dispatch import timed  # noqa: E402
from runner.ledger import Ledger  # noqa: E402
from slurm_cluster import SlurmCluster, slurm_installed  # noqa: E402  (the tests' cluster helper)
from tiny_data import write_tiny_dataset  # noqa: E402


POLL_S = 0.5  # the runner's poll_s here, and the bare array's


def runner(cluster, tmp, config, jobs, run_dir):
    """The runner's wall time on a jobs file, and the array tasks its ledger shows."""
    (tmp / "slurm.json").write_text(json.dumps(config))
    (tmp / "jobs.json").write_text(json.dumps(jobs))
    wall = timed([sys.executable, str(ROOT / "run_distributed_training.py"), "--cluster-config", "slurm.json",
                  "--jobs-config", "jobs.json", "--run-dir", str(run_dir), "--quiet"], env=cluster.env, cwd=tmp)
    records = Ledger.read(run_dir / "ledger.jsonl")
    return wall, len({r["slurm_job"] for r in records if r["status"] == "submitted"})


def overhead(cluster, tmp, n):
    script = tmp / "trivial.py"
    script.write_text("")  # exits at once
    config = {"slurm": {"gpus_per_task": 0, "python": sys.executable, "workdir": str(tmp), "poll_s": POLL_S},
              "script_path": str(script)}
    wall, _ = runner(cluster, tmp, config, [{"fold": k, "job_id": f"job{k}"} for k in range(n)], tmp / "runs" / "overhead")
    bare_script = tmp / "bare.sh"
    bare_script.write_text(f"#!/bin/bash\n{sys.executable} {script} --fold $SLURM_ARRAY_TASK_ID\n")
    started = time.perf_counter()
    array = cluster.run("sbatch", "--parsable", f"--array=0-{n - 1}", f"--output={tmp}/bare-%a.out",
                        str(bare_script)).stdout.strip()
    while any(job.split("_")[0] == array for job in cluster.queue()):
        time.sleep(POLL_S)
    bare = time.perf_counter() - started
    print(f"1. overhead: {n} trivial jobs on a 2-CPU test node, one CPU each")
    print(f"   run_distributed_training.py (slurm): {wall:.1f} s")
    print(f"   bare sbatch --array, squeue polled:  {bare:.1f} s")
    print(f"   ratio {wall / bare:.2f}; runner overhead per job {(wall - bare) / n * 1000:.0f} ms")


def packs(cluster, tmp, members, size):
    write_tiny_dataset(tmp / "data")
    jobs = [{"job_id": f"m{k}", "fold": k % 4, "lr": 1e-3 * (1 + k // 4), "mode": "target_only",
             "data_path": str(tmp / "data"), "model": "test", "max_epochs": 1, "batch_size": 8, "device": "cpu",
             "prefix": f"bench/m{k}"} for k in range(members)]
    walls = {}
    for pack in (1, size):
        config = {"slurm": {"gpus_per_task": 0, "python": sys.executable, "workdir": str(tmp), "pack": pack,
                            "poll_s": POLL_S,
                            "setup": "export OMP_NUM_THREADS=1"}, "script_path": str(ROOT / "oct1_train.py")}
        shutil.rmtree(tmp / "experiments", ignore_errors=True)
        walls[pack] = runner(cluster, tmp, config, jobs, tmp / "runs" / f"pack{pack}")
    print(f"2. packs: {members} trivial members (oct1_train.py, test model, tiny data, 1 epoch) on the 2-CPU node")
    for pack, (wall, tasks) in walls.items():
        print(f"   pack {pack:>2}: {wall:6.1f} s, {tasks} array tasks")
    print(f"   ratio solo / packs of {size}: {walls[1][0] / walls[size][0]:.2f}x wall, "
          f"{walls[1][1] / walls[size][1]:.0f}x fewer tasks")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=100)
    p.add_argument("--members", type=int, default=48)
    p.add_argument("--pack", type=int, default=8)
    p.add_argument("--part", choices=("overhead", "packs", "both"), default="both")
    args = p.parse_args()
    if not slurm_installed():
        sys.exit("needs Slurm and munge (apt-get install slurm-wlm munge)")
    tmp = Path(tempfile.mkdtemp(prefix="bench_slurm"))
    os.chmod(tmp, 0o755)  # munged wants the folders above its socket open to all
    cluster = SlurmCluster(tmp / "cluster")
    try:
        cluster.start()
        if args.part in ("overhead", "both"):
            overhead(cluster, tmp, args.jobs)
        if args.part in ("packs", "both"):
            packs(cluster, tmp, args.members, args.pack)
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
