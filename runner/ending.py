"""How one task's attempt ended, as plain facts a backend sees (its output, exit status, whether
its host or the cluster lost it, whether the run is stopping). The planner alone turns them into
done, interrupted, cancelled, requeued, run again alone or in a smaller pack, retried or failed
for good (runner.plan.Plan.ended), so every backend ends tasks by the same table."""
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
