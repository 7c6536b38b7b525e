"""The one loop every backend runs under, and how a run ends: the driver takes the planner's next
job or pack for each place a backend offers, hands it over, polls, and at the end writes the run
log (--log-file), prints the summary and gives the exit status, whichever backend ran the tasks.

A backend starts, watches, cancels and fetches tasks and tells the planner how each attempt ended,
as plain facts (runner.ending.settle); the planner (runner.plan) decides what runs next and what
becomes of an ending. A backend is one package (runner/ssh/, runner/slurm/) with one object that has:

    name                "ssh", "slurm": the run log's backend
    open()              reach and check what runs the tasks; Stop when nothing can run
    capacity()          (places, slots): an iterable of (place, most members) where one more process
                        may start now, and how many places it has in all (a pack's fair share of them)
    start(packs)        [(place, tasks)]: the planner's tasks for those places, started
    poll()              read what ended, tell the planner; returns whether a process still runs there
    wait()              until the next poll is worth it
    pending()           tasks out that wait in a queue and do not run yet (for the progress line)
    cancel(tasks)       the planner withdraws them (Plan.withdraw); returns those it left alone
    stop()              Ctrl-C: stop every task out; each ends interrupted or cancelled
    close()             give back what open() took (connections)
    figures(wall)       runner.report.Figures: its part of the summary and of the run log
    where()             where the tasks run, in a few words, once open (the run's start message)
    news                set by the driver before open(): runner.news.News, for what only the backend
                        sees (the SSH backend: a host lost)

and an entry in runner/backends.py that builds it. There is no fetch(): a backend brings a task's
results home before it reports the task done (over SSH from the attempt's own thread as each member
finishes; on Slurm they are on the shared filesystem already).
"""
import sys
import time

from runner.config import PROG
from runner.news import News
from runner.report import Progress, summary_lines, write_log_file


class Stop(Exception):
    """A backend cannot go on. line: what the runner prints on stderr; status: the exit status.
    From open(), nothing ran. Later, the run log is written first; with summary the summary is
    printed too, and aborted is the reason the run log gives."""

    def __init__(self, line, status, summary=False, aborted=None):
        super().__init__(line)
        self.line, self.status, self.summary, self.aborted = line, status, summary, aborted


def error_line(message):
    return f"{PROG}: error: {message}"


def drive(backend, plan, early, say, args, skipped, log_file, news=None):
    """Run the planned tasks on the backend to their end; returns the exit status.
    early: tasks may start while their base task runs (the backend queues them behind it).
    news: runner.news.News, the run's messages (start, quarters, failures; run.py sends the end)."""
    news = news or News(plan)
    plan.cancel, backend.news = backend.cancel, news
    try:
        backend.open()
    except Stop as stop:
        backend.close()
        print(stop.line, file=sys.stderr)
        news.over(None, stop.line)
        return stop.status
    plan.begin()
    started = time.time()
    news.started(backend.where())
    progress = Progress(plan, say.quiet)
    interrupted, stop = False, None
    try:
        loop(backend, plan, early, progress, news)
    except KeyboardInterrupt:
        interrupted = True
        try:
            backend.stop()
        except KeyboardInterrupt:
            pass  # pressed again: no more waiting for the tasks to end; close() still ends what it holds
    except Stop as e:
        stop = e
    finally:
        progress.close()
        backend.close()
    ended = time.time()
    wall = max(ended - started, 1e-9)
    news.over(wall, stop and stop.line)
    figures = backend.figures(wall)
    write_log_file(log_file, plan, args, skipped,
                   {"backend": backend.name, "started": started, "ended": ended, "interrupted": interrupted,
                    "aborted": stop and stop.aborted, "copies": figures.copies}, **figures.log)
    if stop is None or stop.summary:
        print("\n".join(summary_lines(plan, skipped, wall, before=figures.lines, base_extra=figures.base_extra)))
    if interrupted:
        print(f"interrupted; rerun the same command to finish the rest (ledger {plan.ledger.path})",
              file=sys.stderr)
        return 130
    if stop:
        print(stop.line, file=sys.stderr)
        return stop.status
    return 1 if plan.failed or plan.blocked or plan.cancelled else 0


def loop(backend, plan, early, progress, news):
    """Start what is ready, poll, show, tell; wait; until every task has ended and no process runs."""
    start_ready(backend, plan, early)
    while True:
        running = backend.poll()
        news.progress(lambda: progress.status_line(stamp=False))
        if plan.finished and not running:
            return
        start_ready(backend, plan, early)
        progress.show(backend.pending())
        backend.wait()


def start_ready(backend, plan, early):
    """The planner's next job or pack for each place the backend has free, as long as any is ready.
    The backend is always called, with nothing to start too (Slurm ends a --detach run there)."""
    places, slots = backend.capacity()
    packs = []
    for place, limit in places:
        tasks = plan.take(limit, early=early, usable=lambda: slots)
        if not tasks:
            break
        packs.append((place, tasks))
    backend.start(packs)
