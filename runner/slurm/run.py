"""A run on a Slurm cluster: resume what an earlier run left queued, submit the planner's tasks
as job arrays (backend.py), watch them unless --detach, then the summary and the report."""
import sys
import time

from runner.config import PROG
from runner.report import summary_lines, write_log_file
from runner.slurm.backend import UNREACHABLE_S, SlurmBackend, SubmitError
from runner.slurm.queue import SlurmUnreachable


def run(args, settings, plan, script, skipped, run_dir, history, say):
    """Submit and watch every task; returns the exit status."""
    backend = SlurmBackend(plan, settings, script, run_dir, say, timeout=args.timeout)
    plan.begin()
    interrupted = False
    try:
        if args.resume:
            adopted = backend.adopt(history)
            if adopted:
                print(f"resume: watching {adopted} jobs already in Slurm", file=sys.stderr)
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
                        "interrupted": interrupted}, arrays=backend.submitted)
    print("\n".join(summary_lines(plan, skipped, ended - backend.started)))
    if interrupted:
        print(f"interrupted; rerun the same command to finish the rest (ledger {plan.ledger.path})",
              file=sys.stderr)
        return 130
    return 1 if plan.failed or plan.blocked or plan.cancelled else 0
