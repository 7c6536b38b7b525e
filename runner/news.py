"""What a run tells the lab while nobody watches the terminal (runner.notify sends it): that it
started (the jobs, and the hosts or the cluster), each quarter of its tasks finished, the jobs that
failed for good (at most one message a minute, the rest summed up in the next), a host lost, and the
end with its exit status and the report's headline. Without a "notify" section nothing is sent.

The driver (runner.driver) tells it the start, each poll and why a run stopped; a backend tells it
what only the backend sees (the SSH backend: a host lost); run.py tells it the end.
"""
import math
import socket
import time

from runner.report import task_counts, totals_line

FAILURES_EVERY_S = 60.0  # at most one message about failed jobs a minute; the rest wait and are summed up
QUARTERS = {1: "a quarter", 2: "half", 3: "three quarters"}
MEANING = {0: "all done", 1: "some jobs failed, were cancelled or blocked",
           2: "refused: bad input, or nothing usable as configured", 3: "stopped: nothing reachable, or an "
           "unexpected error; the ledger is intact", 130: "interrupted; rerun the same command to finish"}
LISTED = 5  # failed jobs named in one message


def finished(plan):
    return len(plan.ok) + len(plan.failed) + len(plan.cancelled) + len(plan.blocked)


def marks(n):
    """{tasks finished: the largest quarter that count reaches} for a run of n tasks, in order, leaving
    out the last (the end says it): 8 tasks give {2: 1, 4: 2, 6: 3}; 2 tasks {1: 2}."""
    found = {}
    for quarter in QUARTERS:
        mark = math.ceil(quarter * n / 4)
        if 0 < mark < n:
            found[mark] = quarter
    return found


def failure_text(tasks, blocked=()):
    """'2 jobs failed for good: f3 (exit status 1 on gpu1:0), base-k (timed out on gpu2:1; 4 jobs that
    need it are blocked)'. blocked: the plan's blocked tasks."""
    named = []
    for task in tasks[:LISTED]:
        last = task.last or {}
        why = last.get("error") or ("timed out" if last.get("status") == "timeout"
                                    else f"exit status {last.get('exit_status')}")
        place = last.get("slot") or (f"slurm job {last['slurm_job']}" if last.get("slurm_job") else None)
        where = f" on {place}" if place else ""
        waiting = sum(t.needs == task.builds for t in blocked) if task.builds else 0
        named.append(f"{task.job_id} ({why}{where}" + (f"; {waiting} jobs that need it are blocked)" if waiting
                                                       else ")"))
    more = f" and {len(tasks) - LISTED} more" if len(tasks) > LISTED else ""
    noun = "job" if len(tasks) == 1 else "jobs"
    return f"{len(tasks)} {noun} failed for good: {', '.join(named)}{more}"


class News:
    """The messages of one run. notifier: runner.notify.Notifier, or None (nothing is sent)."""

    def __init__(self, plan, label="run", skipped=0, notifier=None, clock=time.time):
        self.plan, self.label, self.skipped, self.notifier, self.clock = plan, label, skipped, notifier, clock
        self.began = None  # when the backend was open and the run began
        self.marks = marks(len(plan.tasks))
        self.told = 0  # the tasks finished at the last quarter told
        self.seen = 0  # failed tasks looked at (plan.failed[:seen])
        self.held = []  # failed for good, not told yet: the minute since the last such message is not over
        self.failures_told = None  # when the last message about failures went
        self.wall = None  # the run's seconds, once the driver is done
        self.stop_line = None

    def send(self, text):
        if self.notifier:
            self.notifier.send(f"{self.label}: {text}")

    def started(self, where):
        self.began = self.clock()
        skipped = f" ({self.skipped} finished earlier, skipped)" if self.skipped else ""
        self.send(f"started: {task_counts(self.plan.tasks)}{skipped} on {where}")

    def progress(self, status_line):
        """The driver's poll: the largest quarter reached since the last one told (none once every
        task has ended: the end says it), and the jobs failed for good. status_line(): the progress
        line (runner.report.Progress) a quarter's message shows."""
        if not self.notifier:
            return
        done = finished(self.plan)
        reached = [mark for mark in self.marks if self.told < mark <= done]
        if reached and done < len(self.plan.tasks):
            self.told = reached[-1]
            self.send(f"{QUARTERS[self.marks[reached[-1]]]} done: {status_line()}")
        self.failures()

    def failures(self, flush=False):
        """Tell the jobs failed for good since the last look: at once when no such message went in the
        last minute, else held and summed up later (flush: now, the run is ending)."""
        new = self.plan.failed[self.seen:]
        self.seen += len(new)
        self.held += new
        now = self.clock()
        if not self.held or (not flush and self.failures_told is not None
                             and now - self.failures_told < FAILURES_EVERY_S):
            return
        self.send(failure_text(self.held, self.plan.blocked))
        self.held, self.failures_told = [], now

    def host(self, text):
        """What only a backend sees: a host lost, or out of the run."""
        self.send(text)

    def over(self, wall, stop_line=None):
        """The driver is done: the run's seconds (None: it never began) and, when a backend stopped it
        before its end (runner.driver.Stop), the line saying why; the end message says them."""
        self.wall, self.stop_line = wall, stop_line

    def ended(self, status, headline=()):
        """The last message: the failures held back, then the exit status, the totals and the headline."""
        if not self.notifier:
            return
        self.failures(flush=True)
        meaning = ("detached: the jobs stay queued" if status == 0 and self.stop_line  # Slurm's --detach
                   else MEANING.get(status, "see the runner's output"))
        if self.began is None:
            text = f"did not start, exit status {status} ({meaning})"
        else:
            wall = self.wall if self.wall is not None else self.clock() - self.began
            text = f"ended with exit status {status} ({meaning}): {totals_line(self.plan, self.skipped, wall)}"
        self.send("\n".join([text, *([self.stop_line] if self.stop_line else []), *headline]))

    def close(self):
        if self.notifier:
            self.notifier.close()


def run_label(run_dir):
    """How the messages name the run: its run dir, and the machine the runner runs on."""
    return f"run {run_dir} ({socket.gethostname()})"
