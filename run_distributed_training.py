"""Fan a jobs JSON out over SSH to GPU servers, one device per job, and lose nothing.

    python generate_jobs.py -o jobs_config.json
    python run_distributed_training.py --dry-run          # the plan and the exact command lines
    python run_distributed_training.py                    # run it; rerun the same line to resume

One worker per (host, device) slot takes the next job from a shared queue and runs
    cd <workdir> && <setup> && CUDA_VISIBLE_DEVICES=<device> <python> <script> <flags>
on its host, every value shell-quoted, through one SSH connection per host
(runner/ssh/connection.py). Output streams to <run-dir>/logs/<job_id>.log (attempts appended,
each under a header). A job that succeeded has its result folder copied to the same place
here (its experiments_dir/prefix/fold<k>_<target>), checked file by file (names and sizes),
and only then removed on the host if the server says remove_results. Hosts with shared_fs or
local skip the copy.

Results are never replaced unless you say --overwrite: two jobs that would write one folder,
or a job whose folder exists here and was not written by this run, stop the run before it
starts (exit 2); on a host such a job fails in one line and is not retried. A retry may
replace only what an earlier attempt of the same job in this run left (each job records the
run's id, <run-dir>/run_id, in its folder; --no-resume starts a new run id).

Every attempt writes a line to <run-dir>/ledger.jsonl when it starts and one when it
ends (flushed at once); a rerun skips the jobs whose last word there is "ok" and whose
result folder is here (a finished job whose folder is gone is reported and runs again). One runner per
run dir (runner.lock). A failed job is retried --retries times on any slot. A lost
host's running jobs go back to the queue (not counted as a retry) while the host is
retried with backoff; when every host has been down for --down-timeout seconds the
run stops with exit status 3. A host that fails in a way that would repeat (broken
workdir, setup or python, failing nvidia-smi, no SFTP, a bad key file) is taken out
of the run with one error line; its jobs go to the other hosts. Ctrl-C (or SIGTERM) kills
the jobs on every host, writes what it has and exits with 130.

Base models are trained once for the whole cluster, in two phases. Phase 1: one
`--mode base_only` job per distinct base_key among the jobs that need a base model
(those with a base_key and without no_base_cache). Phase 2: those dependent jobs,
each runnable once its base model is in the local cache (<base_cache_dir>/<key>/,
default experiments/base_models, relative to this folder as on the hosts); jobs
without a base_key run any time. A base model trained on a host without shared_fs
is copied home, checked against its checksums, and renamed into the local cache;
before a dependent runs on such a host the entry is sent there the same way
(hidden temporary folder, checked, renamed), unless it is already there, so the
training script reuses it. A base model already in the local cache is not trained
again (ledger status "cached"). A base job that still fails after its retries
leaves its dependents "blocked" (not run; a rerun tries the base and them again).

Exit status: 0 all jobs done, 1 some failed or were blocked by a failed base model,
2 bad input, the run dir in use by another runner, or no host usable as configured
(unknown host key, authentication, ...), 3 no host reachable (or stopped on an unexpected error), 130 interrupted.

This file is the CLI; the runner is the runner/ package: runner/run.py reads the input and
plans the tasks, runner/plan.py decides what runs (phases, packs, retries, requeues, blocks,
the ledger), runner/ssh/ and runner/slurm/ start, watch, cancel and fetch them, and
runner/report.py shows the run. A cluster config with a "slurm" section selects Slurm.
"""
import argparse
import sys

from runner import run
from runner.config import PROG


def parse_args(argv):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
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
