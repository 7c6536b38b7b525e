"""A run of a jobs file, whichever backend runs it: the input read and checked, the tasks planned
(phase 1 base jobs for the base models missing from the cache, then the jobs; what the ledger
shows finished is skipped), then the backend of the cluster config (the SSH hosts or a Slurm
cluster) under the driver (runner.driver), and the personalization report's headline at the end.
run_distributed_training.py is its CLI.

Exit status: 0 all jobs done, 1 some failed, were cancelled or blocked, 2 bad input, the run dir
in use or nothing usable as configured, 3 no host (or no Slurm controller) reachable, or a run
stopped on an unexpected error, 130 interrupted.
"""
import contextlib
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from engine import base_cache
from engine.fileio import ConfigError
from runner.backends import backend_for, load, options_elsewhere
from runner.config import PROG
from runner.driver import drive
from runner.jobs import cache_entry, needed_base, plan_jobs, validate_jobs
from runner.folders import job_folders, refuse_foreign
from runner.ledger import Ledger, run_dir_lock, run_id
from runner.news import News, run_label
from runner.notify import Notifier, load_notify
from runner.packing import pack_group, trainer_path
from runner.plan import Plan, Task, run_token
from runner.report import Say, print_report_headline

@dataclass
class Given:
    """What a run was given, read and checked: the backend's config, the training script, the folder
    here that results land in, the "notify" settings (or None), the jobs file's jobs, and how many of
    them the ledger shows finished."""
    config: dict
    script: str
    workdir: Path
    notify: dict
    jobs: list
    skipped: int


def raise_interrupt(signum, frame):
    """A SIGTERM handler: `kill <runner>` stops the run as Ctrl-C does."""
    raise KeyboardInterrupt


def error(message):
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def main(args):
    """The runner with its parsed arguments; returns the exit status."""
    if args.backend is not None:
        return error("--backend: the cluster config chooses the backend; give it a \"slurm\" section for "
                     "Slurm (see examples/slurm_cluster.json)")
    kind = backend_for(args.cluster_config)
    refusal = options_elsewhere(args, kind)
    if refusal:
        return error(refusal)
    run_dir = Path(args.run_dir or Path("runs", Path(args.jobs_config).stem))
    if kind.absolute_run_dir:
        run_dir = run_dir.absolute()
    if args.dry_run:
        return plan_and_run(args, run_dir, kind)
    try:
        with run_dir_lock(run_dir):  # one runner per run dir, whichever backend
            return plan_and_run(args, run_dir, kind)
    except ConfigError as e:
        return error(e)


def make_tasks(todo, bases, cached, history, packs, by_base=False):
    """Phase 1 (a base job per key missing from the cache) first, then the jobs, each with its
    attempts so far; packs: whether jobs get a pack group; by_base: a pack's jobs need one base
    model (a backend that queues a task behind its base task: it is withdrawn with it)."""
    earlier = Ledger.attempts(history)

    def group(job, phase):
        shared = pack_group(job, phase) if packs else None
        return f"{shared} {needed_base(job)}" if shared and by_base and phase == "target" else shared
    tasks = [Task(job, attempt=earlier[job["job_id"]], builds=key, pack_key=group(job, "base"))
             for key, job in bases.items() if key not in cached]
    return tasks + [Task(job, attempt=earlier[job["job_id"]], needs=needed_base(job), pack_key=group(job, "target"))
                    for job in todo]


def plan_and_run(args, run_dir, kind):
    """main() after the arguments: the plan from the files and the ledger, then the run."""
    history = Ledger.read(run_dir / "ledger.jsonl")
    identity = run_id(run_dir, fresh=not args.resume, create=False)  # None: no folder can carry it yet
    try:
        config, script, workdir = load(args, kind)
        notify = load_notify(args.cluster_config)
        jobs, todo, bases = plan_jobs(args.jobs_config, run_dir / "ledger.jsonl", history, args.resume, workdir)
        note = validate_jobs(jobs, args.jobs_config, str(workdir / script))
        # Nothing runs that would lose a result: two jobs on one folder, or a folder from elsewhere.
        folders = job_folders(jobs, workdir)
        refuse_foreign(todo, folders, lambda job: identity and run_token(identity, job), args.overwrite)
    except ConfigError as e:
        return error(e)
    say = Say(args.quiet)
    if note:
        say(note)
    # A base model already complete in the local cache is not trained again, only sent.
    cached = {key: job for key, job in bases.items() if base_cache.entry_intact(workdir / cache_entry(job, key))}
    tasks = make_tasks(todo, bases, cached, history, packs=trainer_path(script) is not None, by_base=kind.early)
    if args.dry_run:
        kind.dry_run(args, config, Plan(tasks, None, run_dir / "logs", cached=cached, run_id=identity,
                                        overwrite=args.overwrite), script, run_dir)
        return 0
    if not tasks:
        print("nothing to do", file=sys.stderr)
        report_headline(jobs, workdir, 0)
        return 0
    given = Given(config, script, workdir, notify, jobs, len(jobs) - len(todo))
    return run(args, kind, given, tasks, cached, run_dir, history, say, run_id(run_dir, fresh=not args.resume))


def report_headline(jobs, workdir, status):
    """The report's headline after a run that ended (status 0 or 1); returns its lines."""
    if status not in (0, 1):
        return []
    with contextlib.chdir(workdir):  # the jobs' result folders are relative to it
        return print_report_headline(jobs)


def run(args, kind, given, tasks, cached, run_dir, history, say, identity):
    """The planned tasks on the config's backend, then the headline; the run's messages go where the
    cluster config's "notify" says. Returns the exit status."""
    ledger = Ledger(run_dir / "ledger.jsonl")
    plan = Plan(tasks, ledger, run_dir / "logs", retries=args.retries, cached=cached, say=say, run_id=identity,
                overwrite=args.overwrite)
    notifier = Notifier(given.notify, lambda line: say(line, important=True)) if given.notify else None
    news = News(plan, run_label(run_dir), given.skipped, notifier)
    previous = signal.signal(signal.SIGTERM, raise_interrupt)  # `kill <runner>` stops like Ctrl-C
    try:
        backend = kind.make(args, given.config, plan, given.script, run_dir, history, say)
        status = drive(backend, plan, kind.early, say, args, given.skipped,
                       args.log_file or run_dir / "run_log.json", news)
        news.ended(status, report_headline(given.jobs, given.workdir, status))
        return status
    except Exception as error:  # a one-line error, or a bug: whoever waits for the end message still hears it
        news.ended(2 if isinstance(error, ConfigError) else 1, [f"stopped: {error}"])
        raise
    finally:
        news.close()
        signal.signal(signal.SIGTERM, previous)
        ledger.close()
