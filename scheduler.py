"""The SSH runner's scheduler: one worker thread per slot takes the next ready task from
the queue and runs it (dispatch), retries a failing job, puts a lost host's jobs back
(requeue), follows each host's health, and blocks the dependents of a base model that failed.
Copies go through host_transfer; what the run did is read off it by run_report."""
import re
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

import remote
from commands import job_command
from host_transfer import CopyError, HostTransfer
from hosts import check_host, out_of_the_run
from run_config import cache_entry

STATUS_EVERY = 30.0  # seconds between status lines when stderr is not a terminal
USAGE_LINE = re.compile(r"^usage: ", re.M)  # argparse prints it before its error and exit status 2

@dataclass
class Task:
    job: dict
    attempt: int = 0  # attempts so far, earlier runs included (numbering continues)
    failures: int = 0  # failed attempts in this run
    overwrite: bool = False  # an earlier attempt may have published its folder: replace it
    last: dict = None  # the latest attempt's record, for --log-file
    needs: str = None  # the base key it waits for (a dependent job)
    builds: str = None  # the base key it trains (a phase-1 base job)

    @property
    def job_id(self):
        return self.job["job_id"]


class JobQueue:
    """Tasks waiting for a slot. take() hands out the first task that ready(task)
    accepts, so a task can wait for something (a base model) without blocking others."""

    def __init__(self, tasks, ready=None):
        self._waiting = deque(tasks)
        self.running = 0
        self.ready = ready or (lambda task: True)
        self._cond = threading.Condition()

    @property
    def finished(self):
        with self._cond:
            return not self._waiting and self.running == 0

    def take(self, timeout):
        """A task, or None when none is ready within timeout."""
        with self._cond:
            task = self._pop_ready()
            if task is None and self._cond.wait(timeout):
                task = self._pop_ready()
            return task

    def _pop_ready(self):
        for task in self._waiting:
            if self.ready(task):
                self._waiting.remove(task)
                self.running += 1
                return task
        return None

    def drop(self, which):
        """Remove and return the waiting tasks for which which(task) is true."""
        with self._cond:
            dropped = [task for task in self._waiting if which(task)]
            for task in dropped:
                self._waiting.remove(task)
            self._cond.notify_all()
            return dropped

    def put_back(self, task, front=False):
        with self._cond:
            (self._waiting.appendleft if front else self._waiting.append)(task)
            self.running -= 1
            self._cond.notify_all()

    def task_done(self):
        with self._cond:
            self.running -= 1
            self._cond.notify_all()



class Scheduler:
    def __init__(self, slots, tasks, health, ledger, log_dir, script, retries=0, timeout=None,
                 down_timeout=600.0, quiet=False, cached=None):
        """cached: {base key: base job} of the base models already in the local cache."""
        self.slots, self.tasks, self.health, self.ledger = slots, tasks, health, ledger
        self.log_dir, self.script, self.retries, self.timeout = Path(log_dir), script, retries, timeout
        self.down_timeout, self.quiet = down_timeout, quiet
        self.cached = cached or {}
        self.ready_keys = set(self.cached)  # base models complete in the local cache
        self.queue = JobQueue(tasks, ready=lambda task: task.needs is None or task.needs in self.ready_keys)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.done, self.failed, self.blocked, self.records = [], [], [], []
        self.trained = Counter()  # base key: trainings its jobs' outputs report
        self.transfer = HostTransfer(script, self.say)
        self.interrupted = self.aborted = None
        self.started = self.ended = None
        self.log_dir.mkdir(parents=True, exist_ok=True)

    @property
    def wall_s(self):
        return max(self.ended - self.started, 1e-9)

    @property
    def not_run(self):
        return len(self.tasks) - len(self.done) - len(self.failed) - len(self.blocked)

    def say(self, message, important=False):
        if important or not self.quiet:
            tqdm.write(message, file=sys.stderr)

    def status_line(self):
        """'[12:00:30] 7/40 jobs finished: 6 done, 1 failed, 0 blocked, 2 running; ETA 3 min'"""
        finished = len(self.done) + len(self.failed) + len(self.blocked)
        elapsed = time.time() - self.started
        eta = "unknown"
        if finished:
            left = elapsed / finished * (len(self.tasks) - finished)
            eta = f"{left:.0f} s" if left < 120 else f"{left / 60:.0f} min"
        return (f"[{time.strftime('%H:%M:%S')}] {finished}/{len(self.tasks)} jobs finished: "
                f"{len(self.done)} done, {len(self.failed)} failed, {len(self.blocked)} blocked, "
                f"{self.queue.running} running; ETA {eta}")

    # -- one attempt

    def _record(self, task, record, status, tail="", **fields):
        record.update(end=time.time(), status=status, **fields)
        self.ledger.write(record)
        record["output_tail"] = tail  # for --log-file only; the log has it all
        task.last = record
        with self.lock:
            self.records.append(record)

    def _run_logged(self, host, command, shown, log_path, header):
        """Run the command, appending a header, the command as shown (secrets masked) and
        then its output to the job's log."""
        with open(log_path, "ab") as log:
            log.write(f"=== {header} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n$ {shown}\n".encode())
            log.flush()

            def stream(chunk):
                log.write(chunk)
                log.flush()  # so `tail -f` shows it now

            return host.run(command, stream=stream, timeout=self.timeout)

    def _attempt(self, slot, task):
        if self.stop.is_set():
            self.queue.put_back(task, front=True)
            return
        task.attempt += 1
        job = dict(task.job, overwrite=True) if task.overwrite else task.job
        slots = sum(s.server is slot.server for s in self.slots)  # they share the host's CPUs
        command, shown = (job_command(slot.server, slot.device, self.script, job, masked, slots)
                          for masked in (False, True))
        log_path = self.log_dir / f"{task.job_id}.log"
        record = {"job_id": task.job_id, "attempt": task.attempt, "host": slot.host.name,
                  "device": str(slot.device), "slot": slot.label, "start": time.time(),
                  "end": None, "exit_status": None, "status": "started", "log": str(log_path)}
        self.ledger.write(record)  # before it runs: a crash from here on leaves this trace
        result = result_dir = error = None
        try:
            if task.needs:
                self.transfer.send_base(slot, task.job, task.needs)
            result = self._run_logged(slot.host, command, shown, log_path,
                                      f"attempt {task.attempt} on {slot.label}")
            self._count_training(task, result)
            if result.ok:
                bring = (self.transfer.bring_base_home if job.get("mode") == "base_only"
                         else self.transfer.bring_home)
                result_dir = bring(slot, task.job, result)
        except (remote.HostDown, remote.HostRefused) as e:
            # Not the job's fault: back to the front of the queue, no retry spent. It may have
            # published its folder before the host went, so the next attempt replaces it.
            self._record(task, record, "requeued", error=str(e))
            task.overwrite = True
            self.queue.put_back(task, front=True)
            if isinstance(e, remote.HostDown):
                self._host_lost(slot.host, e)
            else:
                self._host_refused(slot.host, e)
            return
        except (CopyError, OSError) as e:
            error = str(e)
        finally:
            slot.busy_s += time.time() - record["start"]
            # A job that succeeded but did not come home has its folder on that host.
            task.overwrite = task.overwrite or bool(result and result.ok and not result_dir)
        tail = "\n".join(result.stdout.splitlines()[-20:]) if result else ""
        exit_status = result.exit_status if result else None
        if result and result.ok and not error:
            self._record(task, record, "ok", tail, exit_status=0, result_dir=result_dir)
            slot.ok += 1
            with self.lock:
                self.done.append(task)
            if task.builds:
                self.ready_keys.add(task.builds)  # before task_done wakes the waiting slots
                self.say(f"base model {task.builds}: ready")
            self.queue.task_done()
        elif self.stop.is_set():
            self._record(task, record, "interrupted", tail, exit_status=exit_status)
            self.queue.put_back(task, front=True)
        else:
            timed_out = bool(result and result.timed_out)
            fields = {"error": error} if error else {}
            self._record(task, record, "timeout" if timed_out else "failed", tail,
                         exit_status=exit_status, **fields)
            task.failures += 1
            what = error or (f"timed out after {self.timeout:g} s" if timed_out
                             else f"exit status {exit_status}")
            # An argparse error fails the same way on every slot: never retried.
            bad_flags = exit_status == 2 and not error and bool(USAGE_LINE.search(tail))
            if bad_flags:
                what += " (bad flags: not retried)"
            if task.failures <= self.retries and not bad_flags:
                self.say(f"{task.job_id}: {what} on {slot.label}; retry {task.failures}/{self.retries}")
                self.queue.put_back(task, front=bool(task.builds))  # jobs wait on a base job: it goes first
            else:
                self.say(f"{task.job_id}: {what} on {slot.label}; log: {log_path}")
                slot.failed += 1
                with self.lock:
                    self.failed.append(task)
                if task.builds:
                    self._block(task.builds)
                self.queue.task_done()

    def _count_training(self, task, result):
        """A base model this job trained (not reused): the engine prints BASE_TRAINED <key>."""
        key = task.builds or task.needs
        if key and f"BASE_TRAINED {key}" in result.stdout.splitlines():
            with self.lock:
                self.trained[key] += 1

    def _note(self, job_id, status, **fields):
        """A ledger line for a job that does not run: its base model is cached, or it is blocked."""
        record = {"job_id": job_id, "status": status, "end": time.time(), **fields}
        self.ledger.write(record)
        return record

    def _block(self, key):
        """The base job of `key` failed for good: the jobs waiting for it do not run."""
        blocked = self.queue.drop(lambda task: task.needs == key)
        for task in blocked:
            task.last = self._note(task.job_id, "blocked", base_key=key, error=f"blocked by base {key}")
        with self.lock:
            self.blocked += blocked
        if blocked:
            self.say(f"base model {key} failed: {len(blocked)} jobs that need it are blocked "
                     f"(a rerun tries again)", important=True)

    def base_counts(self):
        """The two phases in figures, for the summary and the report."""
        keys = set(self.cached) | {task.builds for task in self.tasks if task.builds}
        return {"distinct_keys": len(keys), "trained": sum(self.trained.values()), "cached": len(self.cached),
                "without_sharing": sum(task.needs is not None for task in self.tasks),
                "sent": dict(self.transfer.sent), "fetched": self.transfer.fetched, "blocked": len(self.blocked)}

    # -- hosts coming and going

    def _host_lost(self, host, error):
        health = self.health[host.name]
        with self.lock:
            first = health.down_since is None
            if first:
                health.down_since, health.delay = time.time(), 1.0
                health.next_try = health.down_since + health.delay
        if first:
            self.say(f"host {host.name} lost ({error}); its running jobs go back to the queue; "
                     f"reconnecting with backoff", important=True)
            host.close()  # so every slot of this host notices now

    def _host_refused(self, host, error):
        """The host fails in a way that would repeat on every try: out of the run, once. Its
        other running jobs go on; the queue's jobs go to the other hosts."""
        health = self.health[host.name]
        with self.lock:
            first, health.refused = health.refused is None, health.refused or str(error)
        if first:
            self.say(out_of_the_run(error), important=True)

    def _host_ready(self, host):
        health = self.health[host.name]
        if health.refused:
            return False
        if health.down_since is None:
            return True
        if time.time() < health.next_try or not health.lock.acquire(blocking=False):
            return False
        try:
            host.connect()
            if not health.checked:
                check_host(health.server, host, health.checker)  # down when the run began: not checked yet
                health.checked = True
        except remote.HostRefused as e:
            self._host_refused(host, e)
            return False
        except remote.HostDown as e:
            health.delay = min(health.delay * 2, 60.0)
            health.next_try = time.time() + health.delay
            self.say(f"host {host.name}: still down ({e}); next try in {health.delay:g} s", important=True)
            return False
        finally:
            health.lock.release()
        self.say(f"host {host.name} is back after {time.time() - health.down_since:.0f} s", important=True)
        health.down_since = None
        return True

    def _all_down_for(self):
        """Seconds every host still in the run has been down (0 while one is up)."""
        downs = [h.down_since for h in self.health.values() if not h.refused]
        if not downs or any(d is None for d in downs):
            return 0.0
        return time.time() - max(downs)

    @property
    def unusable(self):
        """Why no host can run jobs any more, or None."""
        reasons = [h.refused for h in self.health.values()]
        return "; ".join(reasons) if reasons and all(reasons) else None

    # -- the run

    def _worker(self, slot):
        while not self.stop.is_set() and not self.queue.finished:
            if self.health[slot.host.name].refused:
                return
            if not self._host_ready(slot.host):
                self.stop.wait(0.25)
                continue
            task = self.queue.take(timeout=0.5)
            if task is not None:
                self._attempt(slot, task)

    def _kill_all(self):
        """Kill the running jobs on every host at once."""
        hosts = {id(s.host): s.host for s in self.slots}.values()
        killers = [threading.Thread(target=h.kill_running, daemon=True) for h in hosts]
        for t in killers:
            t.start()
        for t in killers:
            t.join(15)

    def run(self):
        self.started = time.time()
        for key, job in self.cached.items():
            self._note(job["job_id"], "cached", base_key=key, result_dir=cache_entry(job, key))
        workers = [threading.Thread(target=self._worker, args=(s,), daemon=True, name=s.label)
                   for s in self.slots]
        bar = tqdm(total=len(self.tasks), unit="job", disable=self.quiet or not sys.stderr.isatty(),
                   file=sys.stderr, dynamic_ncols=True)
        status_at = [time.time()]  # when the last status line was printed (no terminal)

        def refresh():
            bar.n = len(self.done) + len(self.failed) + len(self.blocked)
            bar.set_postfix_str(f"done {len(self.done)} failed {len(self.failed)} "
                                f"blocked {len(self.blocked)} running {self.queue.running}", refresh=False)
            bar.refresh()
            if not self.quiet and not sys.stderr.isatty() and time.time() - status_at[0] >= STATUS_EVERY:
                status_at[0] = time.time()
                print(self.status_line(), file=sys.stderr, flush=True)

        try:
            for w in workers:
                w.start()
            while any(w.is_alive() for w in workers):
                refresh()
                if self._all_down_for() > self.down_timeout:
                    self.aborted = (f"every host has been down for more than {self.down_timeout:g} s; "
                                    f"stopping (the ledger is intact: rerun to resume)")
                    self.stop.set()
                    break
                time.sleep(0.2)
        except KeyboardInterrupt:
            self.interrupted = True
            self.stop.set()
            self.say("interrupted: stopping the jobs on every host ...", important=True)
        if self.stop.is_set():
            deadline = time.time() + 30
            while any(w.is_alive() for w in workers) and time.time() < deadline:
                self._kill_all()  # again while workers finish: one may have just started a job
                for w in workers:
                    w.join(max(0.0, min(2.0, deadline - time.time())))
        for w in workers:
            w.join(1)  # one still stuck is unblocked when its host is closed
        refresh()
        bar.close()
        self.ended = time.time()



def raise_interrupt(signum, frame):
    """A SIGTERM handler: `kill <runner>` stops the run as Ctrl-C does."""
    raise KeyboardInterrupt
