"""The planner both backends share: what runs, in which order and packed how, and what an ended
attempt means (done, retried, requeued, failed for good, blocking its base's dependents), each
written to the ledger as it happens.

The driver (runner.driver) asks take() for the tasks of each process a backend has room for (a
job, or a pack of compatible jobs of one phase); the backend starts them and says how each attempt
ended (runner.ending.settle); it never decides a retry, a requeue or a block itself. So whatever
the planner can do, the SSH and the Slurm backend do.

    plan = Plan(tasks, ledger, log_dir, retries=1, cached=cached)
    plan.begin()
    tasks = plan.take(limit=8)                   # [] when nothing is ready now
    plan.start(tasks, host="gpu1", ...)          # a ledger line per task
    plan.succeeded(task, result_dir=...)         # or fail(), requeue(), interrupted()

Phase 1 tasks build a base model (task.builds = its key); phase 2 tasks need one (task.needs).
A task is ready when it needs nothing or its base model is in the local cache; with early=True
(a backend that can make a task wait for another, as Slurm's afterok) also while its base task
runs. Thread-safe: SSH slots call it from their own threads.
"""
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path

from runner.jobs import cache_entry
from runner.packing import next_pack


def run_token(run_id, job):
    """What a job of this run records in its result folder (engine.results)."""
    return f"{run_id}.{job['job_id']}"


@dataclass(eq=False)
class Task:
    job: dict
    attempt: int = 0  # attempts so far, earlier runs included (numbering continues)
    failures: int = 0  # failed attempts in this run
    needs: str = None  # the base key it waits for (a dependent job)
    builds: str = None  # the base key it trains (a phase-1 base job)
    pack_key: str = None  # tasks with the same key may train in one process (packing.pack_group)
    pack_cap: int = None  # the most members it may train with (a pack of it ran out of memory)
    record: dict = None  # the ledger line of its attempt now out (its start line), or of its last
    last: dict = None  # the latest ended attempt's record, with its output tail, for the report

    @property
    def job_id(self):
        return self.job["job_id"]


class Plan:
    def __init__(self, tasks, ledger, log_dir, retries=0, cached=None, say=None, run_id=None, overwrite=False):
        """tasks: phase 1 first, then the jobs, in order. cached: {base key: base job} of the base
        models already in the local cache. say(message, important=False): progress lines.
        run_id: the run dir's (runner.ledger.run_id); overwrite: the user's --overwrite."""
        self.tasks, self.ledger, self.log_dir, self.retries = tasks, ledger, Path(log_dir), retries
        self.run_id, self.overwrite = run_id, overwrite
        self.cached = cached or {}
        self.ready_keys = set(self.cached)  # base models complete in the local cache
        self.say = say or (lambda message, important=False: None)
        self.cancel = None  # the backend's cancel(tasks): stop tasks it was handed early (see withdraw)
        self._waiting = deque(tasks)
        self.out = []  # tasks handed out and not ended yet
        self.processes = 0  # processes (a job or a pack) handed out and not yet over (process_done)
        self.ok, self.failed, self.cancelled, self.blocked = [], [], [], []
        self.records = []  # every ended attempt's record
        self.trained = Counter()  # base key: trainings the tasks' outputs reported (BASE_TRAINED)
        self._cond = threading.Condition(threading.RLock())

    # -- what may start

    @property
    def finished(self):
        with self._cond:
            return not self._waiting and not self.out

    @property
    def waiting(self):
        with self._cond:
            return list(self._waiting)

    def building(self, key):
        """The base task of `key` handed out now, or None."""
        return next((task for task in self.out if task.builds == key), None)

    def ready(self, task, early=False):
        if task.needs is None or task.needs in self.ready_keys:
            return True
        return early and self.building(task.needs) is not None

    def take(self, limit=1, timeout=0.0, early=False, usable=lambda: 1):
        """The tasks to run together in one process, or [] when none is ready within timeout:
        packing.next_pack, at most `limit`, no more than its group's fair share of the usable()
        slots without a process, so that at the start every slot gets some. The caller calls
        process_done() once that process is over."""
        with self._cond:
            tasks = self._pop(limit, early, usable)
            if not tasks and timeout and self._cond.wait(timeout):
                tasks = self._pop(limit, early, usable)
            return tasks

    def _pop(self, limit, early, usable):
        ready = [task for task in self._waiting if self.ready(task, early)]
        tasks = next_pack(ready, limit, usable() - self.processes) if ready else []
        for task in tasks:
            self._waiting.remove(task)
            self.out.append(task)
        self.processes += bool(tasks)
        return tasks

    def process_done(self):
        with self._cond:
            self.processes -= 1

    def put_back(self, tasks):
        """Tasks taken but never started (the run is stopping): waiting again, as they were."""
        with self._cond:
            for task in reversed(tasks):
                self.out.remove(task)
                self._waiting.appendleft(task)
            self._cond.notify_all()

    def adopt(self, task, record):
        """A task an earlier run started and its backend still runs (a Slurm submission after
        --detach): out again, under its old start line, without a new attempt."""
        with self._cond:
            self._waiting.remove(task)
            self.out.append(task)
            self.processes += 1
            task.record = record

    def job_to_run(self, task):
        """The job's flags for its attempt. Its run token lets it replace the folder an earlier
        attempt of it in this run published (on a host, or before a crash) and nothing else
        (engine.results); --overwrite only when the user asked. A base job writes no folder."""
        if task.builds:
            return task.job
        extra = {"run_token": run_token(self.run_id, task.job)} if self.run_id else {}
        return dict(task.job, **extra, **({"overwrite": True} if self.overwrite else {}))

    def log_path(self, task):
        return self.log_dir / f"{task.job_id}.log"

    # -- the ledger: an attempt's start line, then one end line

    def begin(self):
        """The run starts: a ledger line for each base model the local cache already holds."""
        for key, job in self.cached.items():
            self.note(job["job_id"], "cached", base_key=key, result_dir=cache_entry(job, key))

    def start(self, tasks, status="started", **fields):
        """Each task's attempt starts (status "started", or "submitted" for a queue): its ledger
        line, written before it runs, so a crash from here on leaves this trace. fields: where it
        runs (the backend's). Returns the records."""
        records = []
        for task in tasks:
            task.attempt += 1
            key = task.builds or task.needs
            task.record = {"job_id": task.job_id, "attempt": task.attempt, **fields, "status": status,
                           "log": str(self.log_path(task)), **({"base_key": key} if key else {})}
            if len(tasks) > 1:
                task.record["pack"] = [t.job_id for t in tasks]
            self.ledger.write(task.record)
            records.append(task.record)
        return records

    def _end(self, task, status, tail, fields):
        """The attempt's end line: its start line with how it ended."""
        record = dict(task.record, end=time.time(), status=status, **fields)
        self.ledger.write(record)
        record["output_tail"] = tail  # for the report only; the log has it all
        task.last = task.record = record
        self.records.append(record)
        self.out.remove(task)

    def note(self, job_id, status, **fields):
        """A ledger line for a job that does not run: its base model is cached, it is blocked, ..."""
        record = {"job_id": job_id, "status": status, "end": time.time(), **fields}
        self.ledger.write(record)
        return record

    # -- how an attempt ended

    def succeeded(self, task, tail="", **fields):
        with self._cond:
            self._end(task, "ok", tail, fields)
            self.ok.append(task)
            if task.builds:
                self.ready_keys.add(task.builds)  # before the waiting slots wake
                self.say(f"base model {task.builds}: ready")
            self._cond.notify_all()

    def fail(self, task, status="failed", tail="", retry=True, **fields):
        """The attempt failed (status failed, timeout or cancelled). It runs again while it has
        retries left, unless retry is False (it would fail alike); else it failed for good, and
        a base task's dependents are blocked. Returns True when it will run again."""
        with self._cond:
            self._end(task, status, tail, fields)
            task.failures += 1
            again = retry and task.failures <= self.retries
            if task.builds:  # its dependents handed out early wait for the retry, or are blocked
                self.withdraw([t for t in self.out if t.needs == task.builds],
                              f"base {task.builds} {fields.get('state') or status}")
            if again:
                # Jobs wait on a base job: it goes first.
                (self._waiting.appendleft if task.builds else self._waiting.append)(task)
            else:
                (self.cancelled if status == "cancelled" else self.failed).append(task)
                if task.builds:
                    self._block(task.builds)
            self._cond.notify_all()
            return again

    def requeue(self, task, tail="", alone=False, cap=None, **fields):
        """Not the task's fault (its host was lost, its pack ended without it): back to the front,
        no retry spent. alone: it next runs by itself, not in a pack; cap: in packs of at most cap
        members (its pack ran out of memory: halved each time, down to a run alone)."""
        with self._cond:
            self._end(task, "requeued", tail, dict(fields, **({"pack_cap": cap} if cap else {})))
            if task.builds:  # its dependents handed out early wait for its next attempt
                self.withdraw([t for t in self.out if t.needs == task.builds], f"base {task.builds} runs again")
            if alone:
                task.pack_key = None
            if cap:
                task.pack_cap = cap
            self._waiting.appendleft(task)
            self._cond.notify_all()

    def unfinished(self, task, pack_size, out_of_memory, why, tail="", **fields):
        """A member its pack ended without (why: how the pack ended): not charged, since the failure
        may be another member's or the pack's size. Out of memory: it runs in packs of half the
        size next, down to alone; otherwise alone."""
        if out_of_memory:
            cap = pack_size // 2
            self.requeue(task, tail, cap=cap, error=f"its pack of {pack_size} ran out of GPU memory; it runs "
                                                    f"in packs of at most {cap} next", **fields)
        else:
            self.requeue(task, tail, alone=True, error=f"its pack ended without finishing it ({why}); it runs "
                                                       f"alone next", **fields)

    def interrupted(self, task, tail="", **fields):
        """The run is stopping: the attempt ends, the task waits for a rerun."""
        with self._cond:
            self._end(task, "interrupted", tail, fields)
            self._waiting.appendleft(task)
            self._cond.notify_all()

    def stopped(self, task, **fields):
        """The run cancelled it on its way out (Ctrl-C): cancelled, nothing blocked."""
        with self._cond:
            self._end(task, "cancelled", "", fields)
            self.cancelled.append(task)

    def withdraw(self, tasks, reason):
        """Cancel tasks handed out early (they wait in the backend for a base that failed, or that
        runs again): their ledger lines say so and they wait again. The backend's cancel returns
        those it left alone (already running): they stay out."""
        if not tasks:
            return
        with self._cond:
            running = self.cancel(tasks) or []
            for task in [t for t in tasks if t not in running]:
                self._end(task, "withdrawn", "", {"error": reason})
                self._waiting.append(task)

    def _block(self, key):
        """The base task of `key` failed for good: the tasks waiting for it do not run."""
        blocked = [task for task in self._waiting if task.needs == key]
        for task in blocked:
            self._waiting.remove(task)
            task.last = self.note(task.job_id, "blocked", base_key=key, error=f"blocked by base {key}")
        self.blocked += blocked
        if blocked:
            self.say(f"base model {key} failed: {len(blocked)} jobs that need it are blocked "
                     f"(a rerun tries again)", important=True)

    def count_trainings(self, keys):
        """Base models an attempt trained (its output said BASE_TRAINED <key>), for the report."""
        with self._cond:
            self.trained.update(keys)

    def base_counts(self):
        """The two phases in figures, for the summary and the report."""
        keys = set(self.cached) | {task.builds for task in self.tasks if task.builds}
        return {"distinct_keys": len(keys), "trained": sum(self.trained.values()), "cached": len(self.cached),
                "without_sharing": sum(task.needs is not None for task in self.tasks),
                "blocked": len(self.blocked)}
