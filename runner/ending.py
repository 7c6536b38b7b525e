"""How one task's attempt ended, as plain facts a backend sees (its output, exit status, whether
its host or the cluster lost it, whether the run is stopping), and the one table (settle) that turns
them into the planner's decision: done, interrupted, cancelled, requeued, run again alone or in a
smaller pack, retried or failed for good. Every backend ends its tasks through it."""
from dataclasses import dataclass, field


@dataclass
class Ending:
    tail: str = ""  # the output's last lines, for the report
    done: bool = False  # it printed its last line, and its results are where they belong
    result_dir: str = None  # where they are (a result folder, a base entry; None when not known)
    error: str = None  # why it failed although it may have run to its end (a copy, an incomplete base entry)
    exit_status: int = None
    timed_out: bool = False
    alike: str = None  # why it would fail the same way on any try (OutputLines.fails_alike): not retried
    lost: str = None  # its host or the cluster lost it: not its fault, it runs again uncharged
    cancelled: bool = False  # someone cancelled it on purpose: reported, not retried
    stopping: bool = False  # the run is stopping: it waits for a rerun
    pack_size: int = 1  # the members of its process
    out_of_memory: bool = False  # its pack ran out of device memory
    why: str = None  # how its pack ended, for a member the pack ended without
    fields: dict = field(default_factory=dict)  # the backend's ledger fields (exit status, state, times)


def settle(plan, task, end):
    """Tell the planner (runner.plan.Plan) how the task's attempt ended; returns what became of it:
    "ok", "interrupted", "cancelled", "requeued", "unfinished" (a pack member that runs again alone
    or in a smaller pack), "retry" or "failed" (for good)."""
    fields = end.fields
    if end.done and not end.error:
        plan.succeeded(task, end.tail, result_dir=end.result_dir, **fields)
        return "ok"
    if end.stopping:
        plan.interrupted(task, end.tail, **fields)
        return "interrupted"
    if end.cancelled:
        plan.fail(task, "cancelled", end.tail, retry=False, **fields)
        return "cancelled"
    if end.lost:
        plan.requeue(task, end.tail, error=end.lost, **fields)
        return "requeued"
    if end.pack_size > 1 and not end.error:
        plan.unfinished(task, end.pack_size, end.out_of_memory, end.why, end.tail, **fields)
        return "unfinished"
    again = plan.fail(task, "timeout" if end.timed_out else "failed", end.tail, retry=not end.alike,
                      **fields, **({"error": end.error} if end.error else {}))
    return "retry" if again else "failed"
