"""The SSH runner's scheduler: one worker thread per slot takes the next ready task from
the queue and runs it (dispatch), retries a failing job, puts a lost host's jobs back
(requeue), follows each host's health, and blocks the dependents of a base model that failed.
Copies go through host_transfer; what the run did is read off it by run_report."""
import queue
import sys
import threading
import time
from collections import Counter, deque
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

import remote
from commands import job_command, pack_command
from gpu_watch import GpuWatch
from host_transfer import CopyError, HostTransfer
from hosts import check_host, out_of_the_run
from packing import MEMBER_DONE, next_pack, pack_limit, trainer_path
from run_config import cache_entry

STATUS_EVERY = 30.0  # seconds between status lines when stderr is not a terminal

@dataclass
class Task:
    job: dict
    attempt: int = 0  # attempts so far, earlier runs included (numbering continues)
    failures: int = 0  # failed attempts in this run
    overwrite: bool = False  # an earlier attempt may have published its folder: replace it
    last: dict = None  # the latest attempt's record, for --log-file
    needs: str = None  # the base key it waits for (a dependent job)
    builds: str = None  # the base key it trains (a phase-1 base job)
    pack_key: str = None  # tasks with the same key may train in one process (packing.pack_group)

    @property
    def job_id(self):
        return self.job["job_id"]


class JobQueue:
    """Tasks waiting for a slot. take() hands out the first task that ready(task)
    accepts, so a task can wait for something (a base model) without blocking others."""

    def __init__(self, tasks, ready=None, usable_slots=lambda: 1):
        self._waiting = deque(tasks)
        self.running = 0  # tasks handed out and not yet done or put back
        # Slots that could run a process now (usable_slots(): host up, device not busy), and the
        # processes handed out and not yet ended (process_done): a pack's share is of the difference.
        self.usable_slots, self.processes = usable_slots, 0
        self.ready = ready or (lambda task: True)
        self._cond = threading.Condition()

    @property
    def finished(self):
        with self._cond:
            return not self._waiting and self.running == 0

    def take(self, timeout, limit=1):
        """The tasks to run together in one process, or [] when none is ready within timeout:
        packing.next_pack, at most `limit`, a fair share among the slots without a process, so
        that at the start every slot gets some jobs. The caller calls process_done() after."""
        with self._cond:
            tasks = self._pop_ready(limit)
            if not tasks and self._cond.wait(timeout):
                tasks = self._pop_ready(limit)
            return tasks

    def _pop_ready(self, limit):
        ready = [task for task in self._waiting if self.ready(task)]
        tasks = next_pack(ready, limit, self.usable_slots() - self.processes) if ready else []
        for task in tasks:
            self._waiting.remove(task)
        self.running += len(tasks)
        self.processes += bool(tasks)
        return tasks

    def process_done(self):
        with self._cond:
            self.processes -= 1

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



def lost(errors):
    """The first error that says the host is lost or refused, or None."""
    return next((e for e in errors if isinstance(e, (remote.HostDown, remote.HostRefused))), None)


class OutputLines:
    """A job's output, read as it streams: its last lines, the base models it trained
    (BASE_TRAINED <key>) and the lines the runner acts on (RESULT_DIR, BASE_KEY, BASE_MODEL).
    In a pack's output, MEMBER_DONE <i> ends member i's lines: on_member_done(i, its lines)."""

    TAGS = ("RESULT_DIR ", "BASE_KEY ", "BASE_MODEL ")

    def __init__(self, on_member_done=None):
        self.on_member_done = on_member_done
        self.pending, self.tagged, self.trained, self.last = b"", [], set(), deque(maxlen=20)
        self.usage = False  # argparse printed its usage line (before an error and exit status 2)

    def feed(self, chunk):
        self.pending += chunk
        *complete, self.pending = self.pending.split(b"\n")
        for raw in complete:
            self._line(raw.decode(errors="replace").rstrip("\r"))

    def close(self):
        """The output ended: its last line may lack a newline."""
        if self.pending:
            self._line(self.pending.decode(errors="replace"))
            self.pending = b""

    def _line(self, line):
        self.last.append(line)
        self.usage = self.usage or line.startswith("usage: ")
        if line.startswith("BASE_TRAINED "):
            self.trained.add(line.split(" ", 1)[1].strip())
        elif line.startswith(self.TAGS):
            self.tagged.append(line)
        elif line.startswith(f"{MEMBER_DONE} ") and self.on_member_done:
            index, text, self.tagged = line.split(" ", 1)[1].strip(), self.text(), []
            if index.isdigit():
                self.on_member_done(int(index), text)

    def text(self):
        return "\n".join(self.tagged)

    def tail(self):
        return "\n".join(self.last)


class Scheduler:
    def __init__(self, slots, tasks, health, ledger, log_dir, script, retries=0, timeout=None,
                 down_timeout=600.0, quiet=False, cached=None):
        """cached: {base key: base job} of the base models already in the local cache."""
        self.slots, self.tasks, self.health, self.ledger = slots, tasks, health, ledger
        self.log_dir, self.script, self.retries, self.timeout = Path(log_dir), script, retries, timeout
        self.down_timeout, self.quiet = down_timeout, quiet
        self.cached = cached or {}
        self.ready_keys = set(self.cached)  # base models complete in the local cache
        self.queue = JobQueue(tasks, ready=lambda task: task.needs is None or task.needs in self.ready_keys,
                              usable_slots=lambda: sum(map(self._usable, self.slots)))
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.done, self.failed, self.blocked, self.records = [], [], [], []
        self.trained = Counter()  # base key: trainings its jobs' outputs report
        self.transfer = HostTransfer(script, self.say)
        self.trainer = trainer_path(script)  # pack_train.py beside the script; None: no packs
        say_gpu = lambda message: self.say(message, important=True)  # noqa: E731
        # One watch per host with GPU slots: busy devices (gpus "auto") and pack sizes (pack "auto").
        self.gpus = {}
        for s in slots:
            if s.device != "cpu" and s.host.name not in self.gpus:
                self.gpus[s.host.name] = GpuWatch(s.server, s.host, say_gpu)
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

    # -- one attempt: a job alone, or the members of a pack in one process (pack_train.py)

    def _record(self, task, record, status, tail="", **fields):
        record.update(end=time.time(), status=status, **fields)
        self.ledger.write(record)
        record["output_tail"] = tail  # for --log-file only; the log has it all
        task.last = record
        with self.lock:
            self.records.append(record)

    def _run_logged(self, host, command, shown, log_paths, header, on_output):
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

            return host.run(command, stream=stream, timeout=self.timeout)

    def _start(self, slot, task, pack):
        """The attempt's ledger line, written before it runs: a crash from here on leaves this trace."""
        task.attempt += 1
        record = {"job_id": task.job_id, "attempt": task.attempt, "host": slot.host.name,
                  "device": str(slot.device), "slot": slot.label, "start": time.time(),
                  "end": None, "exit_status": None, "status": "started",
                  "log": str(self.log_dir / f"{task.job_id}.log")}
        if len(pack) > 1:
            record["pack"] = [t.job_id for t in pack]
        self.ledger.write(record)
        return record

    def _attempt(self, slot, tasks):
        if self.stop.is_set():
            for task in reversed(tasks):
                self.queue.put_back(task, front=True)
            return
        jobs = [dict(task.job, overwrite=True) if task.overwrite else task.job for task in tasks]
        slots = sum(s.server is slot.server for s in self.slots)  # they share the host's CPUs
        packed = len(tasks) > 1
        command, shown = ((pack_command(slot.server, slot.device, self.trainer, jobs, masked, slots) if packed
                           else job_command(slot.server, slot.device, self.script, jobs[0], masked, slots))
                          for masked in (False, True))
        records = [self._start(slot, task, tasks) for task in tasks]
        left = list(range(len(tasks)))  # members not finished yet
        counted = set()  # base keys whose training this attempt has counted
        started = time.time()

        def member_done(i, text):
            """Member i printed its last line: its folder home, then its ledger line."""
            if i not in left:
                return  # an index printed twice, or out of range
            task = tasks[i]
            self._count_training([task.builds], output.trained, counted)
            try:
                bring = (self.transfer.bring_base_home if task.job.get("mode") == "base_only"
                         else self.transfer.bring_home)
                result_dir = bring(slot, task.job, text)
            except (CopyError, OSError) as e:
                task.overwrite = True  # it finished: its folder is on the host
                self._unfinished(slot, task, records[i], output.tail(), 0, False, str(e))
            else:
                task.overwrite = task.overwrite or not result_dir  # done, but its folder is still there
                self._finished(slot, task, records[i], output.tail(), result_dir)
            left.remove(i)

        # A pack's finished members are copied home by a thread of their own while it trains the
        # others: a copy needs a session of the host, and the pack may hold the last free one.
        copies, copy_errors = queue.Queue(), []

        def copy_members():
            for i, text in iter(copies.get, None):
                try:
                    if not lost(copy_errors):  # after a lost host the rest are requeued, below
                        member_done(i, text)
                except Exception as e:
                    copy_errors.append(e)

        output = OutputLines((lambda i, text: copies.put((i, text))) if packed else None)
        result = error = None
        try:
            for task in tasks:
                if task.needs:
                    self.transfer.send_base(slot, task.job, task.needs)
            header = f"attempt {tasks[0].attempt} on {slot.label}" if not packed else \
                f"{slot.label}: a pack of {len(tasks)} ({', '.join(t.job_id for t in tasks)})"
            copier = threading.Thread(target=copy_members, daemon=True, name=f"{slot.label} copies")
            copier.start()
            try:
                result = self._run_logged(slot.host, command, shown, [r["log"] for r in records], header,
                                          output.feed)
                output.close()
            finally:
                copies.put(None)
                copier.join()
            if copy_errors:
                raise lost(copy_errors) or copy_errors[0]
            if result.ok and not packed:
                member_done(0, output.text())
        except (remote.HostDown, remote.HostRefused) as e:
            # Not the jobs' fault: back to the front of the queue, no retry spent. A job may have
            # published its folder before the host went, so the next attempt replaces it.
            for i in left:
                self._record(tasks[i], records[i], "requeued", error=str(e))
                tasks[i].overwrite = True
                self.queue.put_back(tasks[i], front=True)
            if isinstance(e, remote.HostDown):
                self._host_lost(slot.host, e)
            else:
                self._host_refused(slot.host, e)
            return
        except Exception as e:  # a copy that failed, or anything unforeseen: the jobs left fail, not the run
            error = str(e) if isinstance(e, (CopyError, OSError)) else f"{type(e).__name__}: {e}"
        finally:
            slot.busy_s += time.time() - started
            self._count_training([task.builds or task.needs for task in tasks], output.trained, counted)
        exit_status, timed_out = (result.exit_status, result.timed_out) if result else (None, False)
        for i in list(left):
            if packed and not self.stop.is_set():
                why = error or ("exit status 0 but no MEMBER_DONE for it: skipped, its folder exists there?"
                                if exit_status == 0 else self._what_ended(exit_status, timed_out))
                self._run_alone(tasks[i], records[i], output.tail(), exit_status, why)
            else:
                self._unfinished(slot, tasks[i], records[i], output.tail(), exit_status, timed_out, error,
                                 output.usage)

    def _run_alone(self, task, record, tail, exit_status, why):
        """A member the pack did not finish: the failure may be another member's, or the pack's
        size (GPU memory, --timeout), so it is not charged; the member runs alone next."""
        self._record(task, record, "requeued", tail, exit_status=exit_status,
                     error=f"its pack ended without finishing it ({why}); it runs alone next")
        task.pack_key, task.overwrite = None, True
        self.queue.put_back(task, front=True)

    def _what_ended(self, exit_status, timed_out):
        return f"timed out after {self.timeout:g} s" if timed_out else f"exit status {exit_status}"

    def _finished(self, slot, task, record, tail, result_dir):
        self._record(task, record, "ok", tail, exit_status=0, result_dir=result_dir)
        slot.ok += 1
        with self.lock:
            self.done.append(task)
        if task.builds:
            self.ready_keys.add(task.builds)  # before task_done wakes the waiting slots
            self.say(f"base model {task.builds}: ready")
        self.queue.task_done()

    def _unfinished(self, slot, task, record, tail, exit_status, timed_out, error, usage=False):
        """A job that did not finish: interrupted, retried, or failed for good. usage: its output
        had argparse's usage line."""
        if self.stop.is_set():
            self._record(task, record, "interrupted", tail, exit_status=exit_status)
            self.queue.put_back(task, front=True)
            return
        fields = {"error": error} if error else {}
        self._record(task, record, "timeout" if timed_out else "failed", tail, exit_status=exit_status, **fields)
        task.failures += 1
        what = error or self._what_ended(exit_status, timed_out)
        # An argparse error fails the same way on every slot: never retried.
        bad_flags = exit_status == 2 and not error and usage
        if bad_flags:
            what += " (bad flags: not retried)"
        if task.failures <= self.retries and not bad_flags:
            self.say(f"{task.job_id}: {what} on {slot.label}; retry {task.failures}/{self.retries}")
            self.queue.put_back(task, front=bool(task.builds))  # jobs wait on a base job: it goes first
        else:
            self.say(f"{task.job_id}: {what} on {slot.label}; log: {record['log']}")
            slot.failed += 1
            with self.lock:
                self.failed.append(task)
            if task.builds:
                self._block(task.builds)
            self.queue.task_done()

    def _count_training(self, keys, trained, counted):
        """The base models of `keys` this attempt trained (not reused: the engine prints
        BASE_TRAINED <key>), each counted once (counted: those it has counted)."""
        for key in (set(keys) & trained) - counted:
            counted.add(key)
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

    def _usable(self, slot):
        """Whether the slot could run a process now: its host is in the run and up, and its
        device was not busy at the last look."""
        health, watch = self.health[slot.host.name], self.gpus.get(slot.host.name)
        busy = watch is not None and watch.known_busy(slot.device)
        return not health.refused and health.down_since is None and not busy

    def _pack_limit(self, slot, watch):
        """How many jobs this slot may start in one process."""
        if not self.trainer:
            return 1
        return pack_limit(slot.server, slot.device, lambda: watch.pack_size(slot.device))

    def _worker(self, slot):
        while not self.stop.is_set() and not self.queue.finished:
            if self.health[slot.host.name].refused:
                return
            if not self._host_ready(slot.host):
                self.stop.wait(0.25)
                continue
            watch = self.gpus.get(slot.host.name)
            ours = {str(s.device) for s in self.slots if s.host is slot.host and s.running}
            try:
                if watch and watch.busy(slot.device, ours):  # other people's processes fill it
                    self.stop.wait(0.5)
                    continue
                limit = self._pack_limit(slot, watch)
            except remote.HostDown as e:
                self._host_lost(slot.host, e)
                continue
            tasks = self.queue.take(0.5, limit)
            if tasks:
                slot.running = True
                try:
                    self._attempt(slot, tasks)
                except Exception as e:  # a bug, or a ledger that cannot be written: stop, do not hang
                    self.aborted = (f"{slot.label}: {type(e).__name__}: {e}; stopping (the ledger "
                                    f"is intact: rerun to resume)")
                    self.stop.set()
                finally:
                    slot.running = False
                    self.queue.process_done()
                    for each in self.gpus.values():
                        each.slot_freed()

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
