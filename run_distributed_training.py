"""Fan a jobs JSON out over SSH to GPU servers, one device per job, and lose nothing.

    python generate_jobs.py -o jobs_config.json
    python run_distributed_training.py --dry-run          # the plan and the exact command lines
    python run_distributed_training.py                    # run it; rerun the same line to resume

One worker per (host, device) slot takes the next job from a shared queue and runs
    cd <workdir> && <setup> && CUDA_VISIBLE_DEVICES=<device> <python> <script> <flags>
on its host, every value shell-quoted, through one SSH connection per host
(remote.py). Output streams to <run-dir>/logs/<job_id>.log (attempts appended, each
under a header). A job that succeeded has its experiment folder copied into the
local experiments/, checked file by file (names and sizes), and only then removed
on the host if the server says remove_results. Hosts with shared_fs or local skip
the copy.

Every attempt writes a line to <run-dir>/ledger.jsonl when it starts and one when it
ends (flushed at once); a rerun skips the jobs whose last word there is "ok", and runs
a job tried before with --overwrite (its folder may be on a host). One runner per
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

This file is the CLI; the work is done by parts, each importing only those above it:
commands.py (job command lines), run_config.py (cluster config, jobs file, base-model plan),
run_ledger.py (ledger, run dir lock), hosts.py (reaching and checking hosts, slots),
host_transfer.py (results home, base models home and out), scheduler.py (dispatch, retries,
requeue, host health), run_report.py (dry-run plan, summary lines, --log-file report, headline).
A cluster config with a "slurm" section goes to slurm_backend.py instead, which reuses the
input, ledger and report parts.
"""
import argparse
import posixpath
import signal
import sys
from pathlib import Path

import base_cache
import hostsync
import provenance
import remote
import slurm_backend
from commands import plural
from hosts import make_host, out_of_the_run, plan_slots, reach_hosts
from packing import PACK_SCRIPT, pack_group, trainer_path
from run_config import (PROG, ConfigError, cache_entry, load_cluster_config, needed_base, plan_jobs,
                        validate_jobs)
from run_ledger import Ledger, run_dir_lock
from run_report import print_plan, print_report_headline, summary_lines, task_counts, write_log_file
from scheduler import Scheduler, Task, raise_interrupt


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
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="run every job, even those the ledger shows finished")
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



def make_checker(args, tasks, script):
    """The check of every host's code and data (hostsync), or None when the script is not one of
    this project's (a lab's own script has no provenance.py beside it to answer)."""
    if posixpath.basename(script) not in provenance.code_files():
        if args.sync_code or args.sync_data or args.allow_mismatch:
            raise ConfigError(f"{script} is not one of this project's scripts: --sync-code, --sync-data "
                              f"and --allow-mismatch apply to this project's own")
        return None
    try:
        return hostsync.Checker([t.job for t in tasks if not t.builds], script, args.sync_code,
                                args.sync_data, args.allow_mismatch)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def run_jobs(args, cluster, tasks, cached, skipped, run_dir, script):
    """Connect, run every task, report; returns the exit status."""
    servers = cluster["servers"]
    hosts = [make_host(s, cluster, args.accept_new_hosts) for s in servers]
    previous = signal.signal(signal.SIGTERM, raise_interrupt)  # `kill <runner>` stops like Ctrl-C
    try:
        checker = make_checker(args, tasks, script)
        devices, errors = reach_hosts(servers, hosts, checker)
        mismatches = [line for e in errors.values() if isinstance(e, hostsync.Mismatch) for line in e.lines]
        if mismatches:
            print("\n".join(f"{PROG}: error: {line}" for line in mismatches), file=sys.stderr)
            raise ConfigError("hosts differ from this checkout (above); not started. --allow-mismatch "
                              "runs anyway")
        refused = [str(e) for e in errors.values() if isinstance(e, remote.HostRefused)]
        if len(refused) == len(servers):
            raise ConfigError("; ".join(refused))  # no host is usable
        for error in refused:
            print(out_of_the_run(error), file=sys.stderr)
        slots, health = plan_slots(servers, hosts, devices, errors, checker)
        if not slots:
            print(f"{PROG}: error: no host reachable", file=sys.stderr)
            return 3
        if not args.quiet:
            print(f"{task_counts(tasks)} over {plural(len(slots), 'slot')}: {', '.join(s.label for s in slots)}",
                  file=sys.stderr)
        ledger = Ledger(run_dir / "ledger.jsonl")
        scheduler = Scheduler(slots, tasks, health, ledger, run_dir / "logs", script, retries=args.retries,
                              timeout=args.timeout, down_timeout=args.down_timeout, quiet=args.quiet,
                              cached=cached)
        try:
            scheduler.run()
        finally:
            ledger.close()
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before any job started
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        for host in hosts:
            host.close()  # also ends every session: their watchers kill what is left
    write_log_file(args.log_file or run_dir / "run_log.json", scheduler, args, skipped)
    print("\n".join(summary_lines(scheduler, skipped, per_slot=not args.quiet)))
    if scheduler.interrupted:
        print(f"interrupted; rerun the same command to finish the rest (ledger {ledger.path})",
              file=sys.stderr)
        return 130
    if scheduler.aborted:
        print(f"{PROG}: error: {scheduler.aborted}", file=sys.stderr)
        return 3
    if scheduler.not_run and scheduler.unusable:
        print(f"{PROG}: error: no usable host left ({scheduler.unusable}); rerun once fixed", file=sys.stderr)
        return 2
    return 1 if scheduler.failed or scheduler.blocked else 0


def main(argv=None):
    args = parse_args(argv)
    if args.backend is not None:
        print(f"{PROG}: error: --backend: the cluster config chooses the backend; give it a \"slurm\" "
              f"section for Slurm (see examples/slurm_cluster.json)", file=sys.stderr)
        return 2
    slurm = slurm_backend.is_slurm_config(args.cluster_config)
    ssh_only = [flag for flag, given in (("--sync-code", args.sync_code), ("--sync-data", args.sync_data),
                                         ("--allow-mismatch", args.allow_mismatch),
                                         ("--accept-new-hosts", args.accept_new_hosts)) if given]
    if slurm and ssh_only:
        print(f"{PROG}: error: {', '.join(ssh_only)}: for SSH servers only (a Slurm cluster config names "
              f"one shared workdir)", file=sys.stderr)
        return 2
    if args.detach and not slurm:
        print(f"{PROG}: error: --detach needs a Slurm cluster config (SSH jobs end with the runner)",
              file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir or Path("runs", Path(args.jobs_config).stem))

    def run():
        return slurm_backend.main(args) if slurm else plan_and_run(args, run_dir)
    if args.dry_run:
        return run()
    try:
        with run_dir_lock(run_dir):  # one runner per run dir, whichever backend
            return run()
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


def plan_and_run(args, run_dir):
    """main() after the arguments: the plan from the files and the ledger, then the run."""
    history = Ledger.read(run_dir / "ledger.jsonl")
    try:
        cluster = load_cluster_config(args.cluster_config)
        jobs, todo, bases = plan_jobs(args.jobs_config, run_dir / "ledger.jsonl", history, args.resume)
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    script = args.script_path or cluster["script_path"]
    trainer = trainer_path(script)
    packs = [s["name"] for s in cluster["servers"] if s["pack"] != "auto" and s["pack"] > 1]
    if packs and not trainer:
        print(f"{PROG}: error: {args.cluster_config}: servers {', '.join(packs)} set \"pack\", but only "
              f"{PACK_SCRIPT} jobs can be packed (the script is {script})", file=sys.stderr)
        return 2
    try:
        note = validate_jobs(jobs, args.jobs_config, script)
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    if note and not args.quiet:
        print(note, file=sys.stderr)
    earlier = Ledger.attempts(history)
    # Phase 1 goes first in the queue, so base jobs take the first free slots; a base model
    # already complete in the local cache (an earlier run) is not trained again, only sent.
    cached = {key: job for key, job in bases.items() if base_cache.entry_intact(cache_entry(job, key))}

    def group(job, phase):
        return pack_group(job, phase) if trainer else None
    tasks = [Task(job, attempt=earlier[job["job_id"]], builds=key, pack_key=group(job, "base"))
             for key, job in bases.items() if key not in cached]
    # The ledger, not a folder on a host, says whether a job finished: a job tried before
    # (its result may be on a host without having come home) reruns with --overwrite.
    tasks += [Task(job, attempt=earlier[job["job_id"]], needs=needed_base(job), pack_key=group(job, "target"),
                   overwrite=earlier[job["job_id"]] > 0) for job in todo]
    skipped = len(jobs) - len(todo)
    if args.dry_run:
        print_plan(cluster["servers"], tasks, script, trainer, cached)
        return 0
    if not tasks:
        print("nothing to do", file=sys.stderr)
        status = 0
    else:
        status = run_jobs(args, cluster, tasks, cached, skipped, run_dir, script)
    if status in (0, 1):
        print_report_headline(jobs)
    return status


if __name__ == "__main__":
    sys.exit(main())
