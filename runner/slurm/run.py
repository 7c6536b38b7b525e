"""A run on a Slurm cluster: resume what an earlier run left queued, check a compute node
(preflight.py), size the packs and read the cluster's limits, submit the planner's tasks as job
arrays (backend.py), watch them unless --detach, then the summary and the report."""
import sys
import time

from engine.fileio import ConfigError
from runner.check import is_project_script
from runner.config import PROG
from runner.report import summary_lines, write_log_file
from runner.slurm.backend import UNREACHABLE_S, SlurmBackend, SubmitError
from runner.slurm.preflight import PreflightError, preflight
from runner.slurm.queue import SlurmUnreachable, limits, slurm
from runner.slurm.scripts import pack_limit


def prepare(args, settings, plan, script, backend, run_dir, say):
    """Before anything is submitted: the preflight (for this project's scripts), then the pack
    size it allows and the cluster's limits."""
    gpu_mib = None  # the GPU's memory, as the preflight saw it (0: none, the jobs run on the CPU)
    if is_project_script(script):
        answer = preflight(settings, script, [t.job for t in plan.tasks if not t.builds], run_dir / "slurm",
                           args.allow_mismatch, say)
        gpu_mib = answer.get("cuda_memory_mib") or 0
    elif args.allow_mismatch:
        raise ConfigError(f"{script} is not one of this project's scripts: --allow-mismatch applies to this "
                          f"project's own")
    backend.pack = pack_limit(settings, gpu_mib)
    backend.limits = limits()


def run(args, settings, plan, script, skipped, run_dir, history, say):
    """Submit and watch every task; returns the exit status."""
    backend = SlurmBackend(plan, settings, script, run_dir, say, timeout=args.timeout)
    try:
        adopted = backend.adopt(history) if args.resume else 0
        if plan.waiting:
            prepare(args, settings, plan, script, backend, run_dir, say)
    except (ConfigError, PreflightError) as e:  # nothing of this run was submitted
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except SlurmUnreachable as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:  # while the preflight waits for a node: it goes too
        slurm("scancel", "--me", "--name=preflight")
        print("interrupted before anything was submitted", file=sys.stderr)
        return 130
    if adopted:
        print(f"resume: watching {adopted} jobs already in Slurm", file=sys.stderr)
    plan.begin()
    interrupted = False
    try:
        backend.submit_ready()
        if args.detach:
            print(f"detached: {len(plan.out)} jobs queued in Slurm (arrays {', '.join(backend.submitted)}); "
                  f"rerun the same command without --detach to watch them", file=sys.stderr)
            return 0
        backend.watch()
    except SlurmUnreachable as e:
        print(f"{PROG}: error: {e} for {UNREACHABLE_S:.0f} s; submitted jobs stay in Slurm: rerun the "
              f"same command to watch them", file=sys.stderr)
        return 3
    except SubmitError as e:  # at the start or for a retry: nothing half-submitted stays queued
        backend.cancel_all()
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: cancelling the submitted jobs (scancel) ...", file=sys.stderr)
        backend.cancel_all()
        interrupted = True
    finally:
        ended = time.time()
        write_log_file(args.log_file or run_dir / "run_log.json", plan, args, skipped,
                       {"backend": "slurm", "started": backend.started, "ended": ended,
                        "interrupted": interrupted}, arrays=backend.submitted, pack=backend.pack, **backend.limits)
    print("\n".join(summary_lines(plan, skipped, ended - backend.started)))
    if interrupted:
        print(f"interrupted; rerun the same command to finish the rest (ledger {plan.ledger.path})",
              file=sys.stderr)
        return 130
    return 1 if plan.failed or plan.blocked or plan.cancelled else 0
