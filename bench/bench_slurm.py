"""Slurm backend overhead: this runner against one bare `sbatch --array` of the same jobs.

    python bench/bench_slurm.py [--jobs 100]

Starts a throwaway single-node Slurm (as the tests do: 2 CPUs, no accounting),
then runs N trivial jobs (a Python script that exits at once, one CPU each) twice:
through run_distributed_training.py with a "slurm" cluster config (per-job logs,
ledger, polling), and as one hand-written array whose end is seen by polling
squeue as often as the runner does (Slurm's own floor; `sbatch --wait` polls
with a backoff of up to seconds, too coarse to compare). Prints both wall times,
their ratio, and the runner's overhead per job: (runner wall - bare wall) / jobs.
Needs root, slurm-wlm and munge.
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
from runner.slurm import backend as slurm_backend
from slurm_cluster import SlurmCluster, slurm_installed  # noqa: E402  (the tests' cluster helper)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=100)
    args = p.parse_args()
    if not slurm_installed():
        sys.exit("needs Slurm and munge (apt-get install slurm-wlm munge)")
    tmp = Path(tempfile.mkdtemp(prefix="bench_slurm"))
    os.chmod(tmp, 0o755)  # munged wants the folders above its socket open to all
    cluster = SlurmCluster(tmp / "cluster")
    try:
        cluster.start()
        script = tmp / "trivial.py"
        script.write_text("")  # exits at once
        (tmp / "jobs.json").write_text(json.dumps([{"fold": k, "job_id": f"job{k}"} for k in range(args.jobs)]))
        (tmp / "slurm.json").write_text(json.dumps({
            "slurm": {"gpus_per_task": 0, "python": sys.executable, "workdir": str(tmp)},
            "script_path": str(script)}))
        runner = timed([sys.executable, str(ROOT / "run_distributed_training.py"), "--cluster-config",
                        "slurm.json", "--jobs-config", "jobs.json", "--quiet"], env=cluster.env, cwd=tmp)
        bare_script = tmp / "bare.sh"
        bare_script.write_text(f"#!/bin/bash\n{sys.executable} {script} --fold $SLURM_ARRAY_TASK_ID\n")
        started = time.perf_counter()
        array = cluster.run("sbatch", "--parsable", f"--array=0-{args.jobs - 1}", f"--output={tmp}/bare-%a.out",
                            str(bare_script)).stdout.strip()
        while any(job.split("_")[0] == array for job in cluster.queue()):
            time.sleep(slurm_backend.POLL_S)
        bare = time.perf_counter() - started
    finally:
        cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{args.jobs} trivial jobs on a 2-CPU test node, one CPU each")
    print(f"run_distributed_training.py (slurm): {runner:.1f} s")
    print(f"bare sbatch --array, squeue polled:  {bare:.1f} s")
    print(f"ratio {runner / bare:.2f}; runner overhead per job {(runner - bare) / args.jobs * 1000:.0f} ms")


if __name__ == "__main__":
    main()
