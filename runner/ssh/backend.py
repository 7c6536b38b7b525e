"""The SSH backend: one worker thread per (host, device) slot asks the planner for its next
process (a job, or a pack of jobs) and runs it on its host (attempt.py: the output streamed to
the jobs' logs, finished results copied home, each end told to the planner). It follows
each host's health (a lost host's jobs are requeued, the host retried with backoff) and the
GPUs other people fill; Ctrl-C kills what runs on every host."""
import sys
import threading
import time

from tqdm import tqdm

from runner.commands import job_command, pack_command
from runner.packing import pack_limit, trainer_path
from runner.ssh.attempt import Context, attempt
from runner.ssh.gpu_watch import GpuWatch
from runner.ssh.hosts import all_down_for, unusable
from runner.ssh.shell import HostDown
from runner.ssh.transfer import HostTransfer

STATUS_EVERY = 30.0  # seconds between status lines when stderr is not a terminal


class SshBackend:
    def __init__(self, slots, plan, health, script, say, timeout=None, down_timeout=600.0):
        """say: the run's runner.report.Say (progress lines), the planner's too."""
        self.slots, self.plan, self.health, self.script, self.say = slots, plan, health, script, say
        self.timeout, self.down_timeout = timeout, down_timeout
        self.stop = threading.Event()
        self.transfer = HostTransfer(script, self.say)
        self.trainer = trainer_path(script)  # pack_train.py beside the script; None: no packs
        say_gpu = lambda message: self.say(message, important=True)  # noqa: E731
        # One watch per host with GPU slots: busy devices (gpus "auto") and pack sizes (pack "auto").
        self.gpus = {}
        for s in slots:
            if s.device != "cpu" and s.host.name not in self.gpus:
                self.gpus[s.host.name] = GpuWatch(s.server, s.host, say_gpu)
        self.context = Context(plan, self.transfer, health, say, self.stop, timeout)
        self.interrupted = self.aborted = None
        self.started = self.ended = None
        plan.log_dir.mkdir(parents=True, exist_ok=True)

    @property
    def unusable(self):
        return unusable(self.health.values())

    def status_line(self):
        """'[12:00:30] 7/40 jobs finished: 6 done, 1 failed, 0 blocked, 2 running; ETA 3 min'"""
        plan = self.plan
        finished = len(plan.ok) + len(plan.failed) + len(plan.blocked)
        elapsed = time.time() - self.started
        eta = "unknown"
        if finished:
            left = elapsed / finished * (len(plan.tasks) - finished)
            eta = f"{left:.0f} s" if left < 120 else f"{left / 60:.0f} min"
        return (f"[{time.strftime('%H:%M:%S')}] {finished}/{len(plan.tasks)} jobs finished: "
                f"{len(plan.ok)} done, {len(plan.failed)} failed, {len(plan.blocked)} blocked, "
                f"{len(plan.out)} running; ETA {eta}")

    def _attempt(self, slot, tasks):
        if self.stop.is_set():
            self.plan.put_back(tasks)
            return
        jobs = [self.plan.job_to_run(task) for task in tasks]
        slots = sum(s.server is slot.server for s in self.slots)  # they share the host's CPUs
        command, shown = ((pack_command(slot.server, slot.device, self.trainer, jobs, masked, slots)
                           if len(tasks) > 1 else job_command(slot.server, slot.device, self.script, jobs[0], masked,
                                                              slots))
                          for masked in (False, True))
        attempt(self.context, slot, tasks, command, shown)

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
        health = self.health[slot.host.name]
        while not self.stop.is_set() and not self.plan.finished:
            if health.refused:
                return
            if not health.ready(slot.host, self.say):
                self.stop.wait(0.25)
                continue
            watch = self.gpus.get(slot.host.name)
            ours = {str(s.device) for s in self.slots if s.host is slot.host and s.running}
            try:
                if watch and watch.busy(slot.device, ours):  # other people's processes fill it
                    self.stop.wait(0.5)
                    continue
                limit = self._pack_limit(slot, watch)
            except HostDown as e:
                health.lost(slot.host, e, self.say)
                continue
            tasks = self.plan.take(limit, timeout=0.5, usable=lambda: sum(map(self._usable, self.slots)))
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
                    self.plan.process_done()
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
        self.plan.begin()
        workers = [threading.Thread(target=self._worker, args=(s,), daemon=True, name=s.label)
                   for s in self.slots]
        plan = self.plan
        quiet = self.say.quiet
        bar = tqdm(total=len(plan.tasks), unit="job", disable=quiet or not sys.stderr.isatty(),
                   file=sys.stderr, dynamic_ncols=True)
        status_at = [time.time()]  # when the last status line was printed (no terminal)

        def refresh():
            bar.n = len(plan.ok) + len(plan.failed) + len(plan.blocked)
            bar.set_postfix_str(f"done {len(plan.ok)} failed {len(plan.failed)} "
                                f"blocked {len(plan.blocked)} running {len(plan.out)}", refresh=False)
            bar.refresh()
            if not quiet and not sys.stderr.isatty() and time.time() - status_at[0] >= STATUS_EVERY:
                status_at[0] = time.time()
                print(self.status_line(), file=sys.stderr, flush=True)

        try:
            for w in workers:
                w.start()
            while any(w.is_alive() for w in workers):
                refresh()
                if all_down_for(self.health.values()) > self.down_timeout:
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

