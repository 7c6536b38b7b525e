"""One attempt on one slot: a job alone, or the members of a pack in one process (pack_train.py).

It writes the members' start lines, sends them the base models they need, runs the command with
its output streamed into every member's log, brings each finished member home as the pack prints
its MEMBER_DONE (a thread of its own, so a pack that holds the host's last SSH session does not
wait for itself), and tells the planner how each member ended.
"""
import queue
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass

from engine.modes import publishes
from runner.ending import Ending, settle
from runner.output import OutputLines
from runner.ssh.shell import HostDown, HostRefused
from runner.ssh.transfer import CopyError, ResultKept


@dataclass
class Context:
    """What every attempt of a run shares."""
    plan: object  # runner.plan.Plan
    transfer: object  # runner.ssh.transfer.HostTransfer
    health: dict  # host name: runner.ssh.hosts.Health
    say: object  # runner.report.Say
    stop: threading.Event  # set when the run stops: what ends now is interrupted, not failed
    timeout: float = None  # --timeout, seconds per process


def lost(errors):
    """The first error that says the host is lost or refused, or None."""
    return next((e for e in errors if isinstance(e, (HostDown, HostRefused))), None)


def what_ended(exit_status, timed_out, timeout):
    return f"timed out after {timeout:g} s" if timed_out else f"exit status {exit_status}"


def run_logged(host, command, shown, log_paths, header, on_output, timeout):
    """Run the command, appending a header, the command as shown (secrets masked) and then
    its output to each job's log (every member of a pack gets the pack's output)."""
    with ExitStack() as stack:
        logs = [stack.enter_context(open(path, "ab")) for path in log_paths]
        for log in logs:
            log.write(f"=== {header} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n$ {shown}\n".encode())
            log.flush()

        def stream(chunk):
            for log in logs:
                log.write(chunk)
                log.flush()  # so `tail -f` shows it now
            on_output(chunk)

        return host.run(command, stream=stream, timeout=timeout)


def attempt(context, slot, tasks, command, shown):
    """Run the tasks (one job, or a pack) as one process on the slot; every member's end goes to
    the planner."""
    Attempt(context, slot, tasks).run(command, shown)


class Attempt:
    """One process on a slot and the members it runs: which have finished, the base trainings
    counted, the output read as it streams."""

    def __init__(self, context, slot, tasks):
        self.context, self.slot, self.tasks = context, slot, tasks
        self.packed = len(tasks) > 1
        self.left = list(range(len(tasks)))  # members not finished yet
        self.counted = set()  # base keys whose training this attempt has counted
        # A pack's finished members are copied home by a thread of their own while it trains the
        # others: a copy needs a session of the host, and the pack may hold the last free one.
        self.copies, self.copy_errors = queue.Queue(), []
        self.output = OutputLines((lambda i, text: self.copies.put((i, text))) if self.packed else None)
        self.result = None  # the process's result, once it has ended

    def run(self, command, shown):
        context, slot, tasks, plan = self.context, self.slot, self.tasks, self.context.plan
        plan.start(tasks, host=slot.host.name, device=str(slot.device), slot=slot.label, start=time.time(),
                   end=None, exit_status=None)
        started, error = time.time(), None
        try:
            self.process(command, shown)
        except (HostDown, HostRefused) as e:
            # Not the jobs' fault: back to the front of the queue, no retry spent. A job may have
            # published its folder before the host went: its run token lets the next attempt replace it.
            for i in self.left:
                settle(plan, tasks[i], Ending(lost=str(e)))
            health = context.health[slot.host.name]
            health.lost(slot.host, e, context.say) if isinstance(e, HostDown) else health.refuse(e, context.say)
            return
        except Exception as e:  # a copy that failed, or anything unforeseen: the jobs left fail, not the run
            error = str(e) if isinstance(e, (CopyError, OSError)) else f"{type(e).__name__}: {e}"
        finally:
            slot.busy_s += time.time() - started
            self.count_trainings([task.builds or task.needs for task in tasks])
        self.end_the_rest(self.result, error)

    def process(self, command, shown):
        """Send the base models the members need, run the command with the copier beside it, and
        bring home a job that ran alone."""
        context, slot, tasks = self.context, self.slot, self.tasks
        for task in tasks:
            if task.needs:
                context.transfer.send_base(slot, task.job, task.needs)
        header = f"attempt {tasks[0].attempt} on {slot.label}" if not self.packed else \
            f"{slot.label}: a pack of {len(tasks)} ({', '.join(t.job_id for t in tasks)})"
        copier = threading.Thread(target=self.copy_members, daemon=True, name=f"{slot.label} copies")
        copier.start()
        try:
            self.result = run_logged(slot.host, command, shown, [context.plan.log_path(t) for t in tasks], header,
                                     self.output.feed, context.timeout)
            self.output.close()
        finally:
            self.copies.put(None)
            copier.join()
        if self.copy_errors:
            raise lost(self.copy_errors) or self.copy_errors[0]
        if self.result.ok and not self.packed:
            self.member_done(0, self.output.text())

    def count_trainings(self, keys):
        new = (set(keys) & self.output.trained) - self.counted
        self.counted.update(new)
        self.context.plan.count_trainings(new)

    def copy_members(self):
        for i, text in iter(self.copies.get, None):
            try:
                if not lost(self.copy_errors):  # after a lost host the rest are requeued (run)
                    self.member_done(i, text)
            except Exception as e:
                self.copy_errors.append(e)

    def member_done(self, i, text):
        """Member i printed its last line: its folder home, then its ledger line."""
        if i not in self.left:
            return  # an index printed twice, or out of range
        context, task = self.context, self.tasks[i]
        self.count_trainings([task.builds])
        try:
            transfer = context.transfer
            bring = transfer.bring_home if publishes(task.job.get("mode")) else transfer.bring_base_home
            end = Ending(self.output.tail(), done=True, result_dir=bring(self.slot, context.plan.job_to_run(task), text))
        except (CopyError, OSError) as e:
            end = Ending(self.output.tail(), error=str(e), stopping=context.stop.is_set(),
                         alike="not retried" if isinstance(e, ResultKept) else None)
        end.exit_status = end.fields["exit_status"] = 0
        tell(context, self.slot, task, end)
        self.left.remove(i)

    def end_the_rest(self, result, error):
        """The members that did not finish, told as they ended: a pack's, by what ended the pack (they
        run again alone); a job alone, failed, retried or interrupted."""
        output = self.output
        exit_status, timed_out = (result.exit_status, result.timed_out) if result else (None, False)
        why = error or ("exit status 0 but no MEMBER_DONE for it: skipped, its folder exists there?"
                        if exit_status == 0 else what_ended(exit_status, timed_out, self.context.timeout))
        for i in list(self.left):
            tell(self.context, self.slot, self.tasks[i], Ending(
                output.tail(), error=None if self.packed else error, exit_status=exit_status, timed_out=timed_out,
                alike=None if error else output.fails_alike(exit_status), stopping=self.context.stop.is_set(),
                pack_size=len(self.tasks), out_of_memory=output.out_of_memory, why=why,
                fields={"exit_status": exit_status}))


def tell(context, slot, task, end):
    """A task's end to the planner, which decides what becomes of it (runner.ending.settle), then
    its line and the slot's counts."""
    outcome = settle(context.plan, task, end)
    if outcome == "ok":
        slot.ok += 1
    if outcome not in ("retry", "failed"):
        return
    what = end.error or what_ended(end.exit_status, end.timed_out, context.timeout)
    if end.alike:
        what += f" ({end.alike})"
    if outcome == "retry":
        context.say(f"{task.job_id}: {what} on {slot.label}; retry {task.failures}/{context.plan.retries}")
    else:
        context.say(f"{task.job_id}: {what} on {slot.label}; log: {task.record['log']}")
        slot.failed += 1
