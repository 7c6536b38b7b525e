"""Run a jobs JSON over SSH hosts or a Slurm cluster, one device per process, and lose nothing.

    python generate_jobs.py -o jobs_config.json
    python run_distributed_training.py --dry-run          # the plan and the exact command lines
    python run_distributed_training.py                    # run it; rerun the same line to resume

The cluster config chooses the backend: "servers" (SSH hosts, or this machine) or a "slurm"
section. Base models are trained once, before the jobs that need them; every attempt is in
<run-dir>/ledger.jsonl, so a rerun skips what finished; a result folder this run did not write
is replaced only with --overwrite.

Exit status: 0 all jobs done, 1 some failed, were cancelled or blocked, 2 bad input, the run dir
in use or nothing usable as configured, 3 no host (or no Slurm controller) reachable, or a run
stopped on an unexpected error, 130 interrupted.

See docs/runner.md (SSH) and docs/slurm.md (Slurm); the runner itself is the runner/ package.
"""
import argparse
import sys

from runner import run
from runner.config import PROG


def parse_args(argv):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--cluster-config", default="cluster_config.json", help="servers (default: %(default)s)")
    p.add_argument("--jobs-config", default="jobs_config.json", help="jobs JSON (default: %(default)s)")
    p.add_argument("--script-path", help="training script on the hosts, relative to workdir "
                                         "(default: the cluster config's script_path)")
    p.add_argument("--run-dir", help="ledger and logs (default: runs/<jobs-config name>)")
    p.add_argument("--log-file", help="JSON report: per job, per slot and device, totals "
                                      "(default: <run-dir>/run_log.json)")
    p.add_argument("--retries", type=int, default=0, help="extra attempts for a failing job (default: 0)")
    p.add_argument("--timeout", type=float, help="seconds a job may run before it is killed")
    p.add_argument("--down-timeout", type=float, default=600.0,
                   help="give up when every host has been down this many seconds (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace result folders this run did not write (refused without it)")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="run every job as a new run, even those the ledger shows finished (their folders "
                        "are then replaced only with --overwrite)")
    p.add_argument("--dry-run", action="store_true", help="print the slots and command lines, run nothing")
    p.add_argument("--accept-new-hosts", action="store_true",
                   help="trust unknown host keys on first use and add them to known_hosts")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-job lines")
    p.add_argument("--detach", action="store_true",
                   help="Slurm only: submit and exit, leaving the jobs queued; rerun to watch them")
    p.add_argument("--backend", help=argparse.SUPPRESS)  # refused in main(): the cluster config decides
    p.add_argument("--sync-code", action="store_true",
                   help="first copy this checkout's tracked files that differ to each host's workdir")
    p.add_argument("--sync-data", action="store_true",
                   help="first copy the data files the jobs read that differ to each host's workdir")
    p.add_argument("--sync-env", action="store_true",
                   help="where a host misses a package version requirements.txt pins, first pip install "
                        "requirements.txt there, in the host's setup environment (Slurm: in the preflight job)")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="run even where a host's code or data differ from this checkout (warns)")
    args = p.parse_args(argv)
    if args.retries < 0:
        p.error("--retries must be >= 0")
    return args



def main(argv=None):
    return run.main(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
