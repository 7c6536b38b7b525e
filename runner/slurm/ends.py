"""How an array task ended, member by member: its output read from the members' logs (every
member's log holds its pack's whole output, after the member's own header), and each member's
end told to the planner: done (it printed its last line; a base model complete in the cache),
retried, requeued (lost to the cluster, or its pack ended without it) or failed for good."""
import re
from pathlib import Path

from engine.base_cache import entry_intact
from engine.markers import RESULT_DIR
from runner.ending import Ending, settle
from runner.jobs import cache_entry
from runner.output import OutputLines, printed

DONE = "COMPLETED"
NOT_RETRIED = ("CANCELLED",)  # someone cancelled it on purpose: reported, not retried
# The cluster lost the task: not the job's fault, so it runs again without spending a retry.
LOST_TO_CLUSTER = ("PREEMPTED", "NODE_FAIL", "BOOT_FAIL")


def attempt_output(log, job_id, attempt):
    """What one attempt wrote into a job's log: the text after its own header, or None when the
    log holds no such header (the task never started its branch)."""
    try:
        text = Path(log).read_text(errors="replace")
    except OSError:
        return None
    headers = list(re.finditer(rf"^=== {re.escape(job_id)} attempt {attempt}: .*$", text, re.MULTILINE))
    return text[headers[-1].end():] if headers else None


def read_members(tasks, solo_done):
    """(OutputLines, {member's place in its pack: its tagged lines} of the members that finished,
    whether the output was found). solo_done: a task of one job ended well (Slurm's word)."""
    first = tasks[0]
    done = {}
    output = OutputLines(lambda i, text: done.setdefault(i, text))
    text = attempt_output(first.record["log"], first.job_id, first.attempt)
    output.feed((text or "").encode())
    output.close()
    if len(first.record.get("pack", [first.job_id])) == 1 and solo_done:
        done[0] = output.text()
    return output, done, text is not None


def incomplete_base(task, workdir):
    """Why a base task that ended well did not leave its base model complete in the cache under
    the key planned (its code or data changed since planning?), or None."""
    if not task.builds:
        return None
    entry = Path(workdir) / cache_entry(task.job, task.builds)
    return None if entry_intact(entry) else f"base model {task.builds} is not complete at {entry}"


def result_dir(task, text):
    """Where a finished member's results are: its cache entry, or the folder it printed."""
    return str(cache_entry(task.job, task.builds)) if task.builds else printed(text, RESULT_DIR)


def tell_plan(plan, say, workdir, out_file, tasks, state, exit_status, times):
    """Each member's end, to the planner, as plain facts (runner.ending). out_file: Slurm's own
    output of the task (where setup's errors go), named when the member's log has nothing of this attempt."""
    output, done, found = read_members(tasks, state == DONE and exit_status == 0)
    plan.count_trainings(output.trained)
    members = tasks[0].record.get("pack", [tasks[0].job_id])
    for task in tasks:
        text = done.get(members.index(task.job_id))
        error = incomplete_base(task, workdir) if text is not None else None
        why = "exit status 0 but no MEMBER_DONE for it" if exit_status == 0 else f"{state}, exit {exit_status}"
        end = Ending(output.tail(), done=text is not None, result_dir=text and result_dir(task, text), error=error,
                     exit_status=exit_status, timed_out=state == "TIMEOUT",
                     alike=None if error else output.fails_alike(exit_status),
                     lost=f"lost to the cluster ({state}); it runs again" if state in LOST_TO_CLUSTER else None,
                     cancelled=state in NOT_RETRIED, pack_size=len(members), out_of_memory=output.out_of_memory,
                     why=why, fields={"state": state, "exit_status": exit_status, **times})
        outcome = settle(plan, task, end)
        if outcome == "cancelled":
            say(f"{task.job_id}: {state} (exit {exit_status})")
        elif outcome == "requeued":
            say(f"{task.job_id}: {state}, runs again (no retry spent)")
        elif outcome in ("retry", "failed"):
            where = task.record["log"] if found else out_file
            say(f"{task.job_id}: {error or end.alike or f'{state} (exit {exit_status})'}"
                + (", retrying" if outcome == "retry" else f"; log: {where}"))


def finished_in_log(task, record, workdir):
    """A submission Slurm no longer knows (it forgot it MinJobAge after it ended, and no
    accounting runs): the member's result dir when its log shows it finished and the result is
    there, else None."""
    task.record = record
    members = record.get("pack", [task.job_id])
    output, done, _ = read_members([task], solo_done=len(members) == 1)
    text = done.get(members.index(task.job_id))
    if text is None or (not task.builds and not printed(text, RESULT_DIR)) or incomplete_base(task, workdir):
        return None
    found = result_dir(task, text)
    return found if found and (Path(workdir) / found).is_dir() else None


def done_by_its_log(plan, task, record, workdir):
    """A submission Slurm no longer knows: done, and told to the planner, when its log and result
    folder show it finished (finished_in_log). Returns whether it was."""
    found = finished_in_log(task, record, workdir)
    if found:
        if task not in plan.out:  # an earlier run's, on resume
            plan.adopt(task, record)
        plan.succeeded(task, result_dir=found, state="UNKNOWN",
                       note="Slurm no longer knows it; its log and result folder show it finished")
    return bool(found)
