"""The SSH backend under the driver (runner.driver): SSH servers and this machine, one slot per
(host, device). A thread per slot keeps it ready (its host up, its GPU not filled by other people,
its pack size known) and offers it to the driver, which hands it the planner's next job or pack;
the slot runs that on its host (attempt.py: the output streamed to the jobs' logs, finished results
copied home, each end told to the planner). A lost host's jobs are requeued and the host retried
with backoff; Ctrl-C kills what runs on every host."""
import queue
import threading
import time
from dataclasses import dataclass

from engine.fileio import ConfigError
from runner.commands import job_command, pack_command, plural
from runner.driver import Stop, error_line
from runner.packing import pack_limit, trainer_path
from runner.report import Figures, task_counts
from runner.ssh.attempt import Context, attempt
from runner.ssh.gpu_watch import GpuWatch
from runner.ssh.hosts import all_down_for, make_host, unusable
from runner.ssh.run import devices, open_hosts, slot_figures, slot_table
from runner.ssh.shell import HostDown
from runner.ssh.transfer import HostTransfer

OFFER_S = 0.5  # how long a free slot waits for work before it looks at its host and GPU again


@dataclass(frozen=True)
class HostOptions:
    """The runner's options for SSH hosts."""
    timeout: float = None  # --timeout, seconds per process
    down_timeout: float = 600.0  # give up when every host has been down this long
    accept_new_hosts: bool = False
    sync_code: bool = False
    sync_data: bool = False
    allow_mismatch: bool = False
    sync_env: bool = False  # pip installs requirements.txt where the pinned packages differ
    cluster_config: str = None  # never sent by --sync-code: a "notify" URL in it is a secret


class SshBackend:
    name = "ssh"

    def __init__(self, cluster, plan, script, say, options):
        """say: the run's runner.report.Say (progress lines), the planner's too."""
        self.cluster, self.plan, self.script, self.say, self.options = cluster, plan, script, say, options
        self.hosts, self.slots, self.health, self.threads = [], [], {}, []
        self.gpus = {}  # host name: its GpuWatch (hosts with GPU slots)
        self.stopping = threading.Event()  # set when the run stops: what ends now is interrupted, not failed
        self.transfer = HostTransfer(script, say)
        self.trainer = trainer_path(script)  # pack_train.py beside the script; None: no packs
        self.lock = threading.Lock()  # guards offers and the hand-over of work
        self.offers = {}  # id(slot): (slot, pack limit) of the free slots waiting for work
        self.inboxes = {}  # id(slot): the work handed to it
        self.changed = threading.Event()  # a slot is free or offers itself: the driver looks now
        self.aborted = None
        self.news = None  # runner.news.News, set by the driver: a host lost is told there

    @property
    def unusable(self):
        return unusable(self.health.values())

    def open(self):
        """Reach and check the hosts, plan their slots, start a thread per slot."""
        servers = self.cluster["servers"]
        self.hosts = [make_host(s, self.cluster, self.options.accept_new_hosts) for s in servers]
        try:
            self.slots, self.health = open_hosts(servers, self.hosts, self.options, self.plan.tasks, self.script)
        except ConfigError as e:
            raise Stop(error_line(e), 2) from None
        except KeyboardInterrupt:
            raise Stop("interrupted", 130) from None
        if not self.slots:
            raise Stop(error_line("no host reachable"), 3)
        for health in self.health.values():
            health.news = self.news
        self.say(f"{task_counts(self.plan.tasks)} over {plural(len(self.slots), 'slot')}: "
                 f"{', '.join(s.label for s in self.slots)}")
        say_gpu = lambda message: self.say(message, important=True)  # noqa: E731
        for s in self.slots:  # busy devices (gpus "auto") and pack sizes (pack "auto")
            if s.device != "cpu" and s.host.name not in self.gpus:
                self.gpus[s.host.name] = GpuWatch(s.server, s.host, say_gpu)
        self.context = Context(self.plan, self.transfer, self.health, self.say, self.stopping, self.options.timeout)
        self.plan.log_dir.mkdir(parents=True, exist_ok=True)
        for s in self.slots:
            self.inboxes[id(s)] = queue.Queue()
            self.threads.append(threading.Thread(target=self._serve, args=(s,), daemon=True, name=s.label))
            self.threads[-1].start()

    # -- the driver's calls

    def capacity(self):
        """The free slots that offer themselves now, each with its pack limit; the slots usable in all."""
        with self.lock:
            offers = list(self.offers.values())
        return offers, sum(map(self._usable, self.slots))

    def start(self, packs):
        """Hand each pack to the slot it was taken for. A slot that took its offer back meanwhile (to
        look at its host and GPU again) did not get it: the tasks go back to the planner."""
        for slot, tasks in packs:
            with self.lock:
                taken = self.offers.pop(id(slot), None) is not None
                if taken:
                    slot.running = True
                    self.inboxes[id(slot)].put(tasks)
            if not taken:
                self.plan.put_back(tasks)
                self.plan.process_done()

    def poll(self):
        """Each slot's thread tells the planner its tasks' ends as they come (a pack's members one
        by one, once home), so this only watches the run as a whole: every host down too long, a
        slot's unforeseen error, no usable host left. Returns whether a slot still runs a process."""
        if all_down_for(self.health.values()) > self.options.down_timeout:
            why = (f"every host has been down for more than {self.options.down_timeout:g} s; stopping (the "
                   f"ledger is intact: rerun to resume)")
            self._halt()
            raise Stop(error_line(why), 3, summary=True, aborted=why)
        if self.aborted:  # a slot's unforeseen error: the others' processes run to their end first
            if any(t.is_alive() for t in self.threads):
                return True
            raise Stop(error_line(self.aborted), 3, summary=True, aborted=self.aborted)
        if not self.plan.finished and not any(t.is_alive() for t in self.threads):
            raise Stop(error_line(f"no usable host left ({self.unusable or 'every slot stopped'}); rerun once "
                                  f"fixed"), 2, summary=True)
        return any(s.running for s in self.slots)

    def where(self):
        hosts = dict.fromkeys(s.host.name for s in self.slots)
        return f"{plural(len(self.slots), 'slot')} of {', '.join(hosts)}"

    def wait(self):
        if self.changed.wait(0.2):
            self.changed.clear()

    def pending(self):
        return 0  # a slot runs what it is handed at once

    def cancel(self, tasks):
        """Never asked: a task starts here only once its base model is in the cache, so the planner
        has no task out to withdraw. Were it asked, the tasks run to their end (left alone)."""
        return list(tasks)

    def stop(self):
        self.stopping.set()
        self.say("interrupted: stopping the jobs on every host ...", important=True)
        self._halt()

    def close(self):
        self._end_offers()
        for t in self.threads:
            t.join(1)  # one still stuck is unblocked when its host is closed
        for host in self.hosts:
            host.close()  # also ends every session: their watchers kill what is left

    def figures(self, wall):
        copies = {"sent": dict(self.transfer.sent), "fetched": self.transfer.fetched}
        return Figures(lines=[] if self.say.quiet else slot_table(self.slots, wall),
                       base_extra=f"; {sum(copies['sent'].values())} copies sent, {copies['fetched']} brought home",
                       copies=copies, log={"slots": slot_figures(self.slots, wall),
                                           "devices": devices(self.slots, wall)})

    # -- the slots

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

    def _serve(self, slot):
        """A slot's thread: ready the slot, offer it, run what the driver hands it; until the run stops."""
        health = self.health[slot.host.name]
        while not self.stopping.is_set() and not self.plan.finished:
            if health.refused:
                return
            if not health.ready(slot.host, self.say):
                self.stopping.wait(0.25)
                continue
            watch = self.gpus.get(slot.host.name)
            ours = {str(s.device) for s in self.slots if s.host is slot.host and s.running}
            try:
                if watch and watch.busy(slot.device, ours):  # other people's processes fill it
                    self.stopping.wait(0.5)
                    continue
                limit = self._pack_limit(slot, watch)
            except HostDown as e:
                health.lost(slot.host, e, self.say)
                continue
            tasks = self._offer(slot, limit)
            if tasks:
                self._run(slot, tasks)

    def _offer(self, slot, limit):
        """Offer the free slot to the driver for OFFER_S; returns the tasks it hands over, or None."""
        inbox = self.inboxes[id(slot)]
        with self.lock:
            self.offers[id(slot)] = (slot, limit)
        self.changed.set()
        try:
            return inbox.get(timeout=OFFER_S)
        except queue.Empty:
            with self.lock:
                if self.offers.pop(id(slot), None) is not None:
                    return None
            return inbox.get()  # handed over at the last moment: it is in the inbox already

    def _run(self, slot, tasks):
        slot.running = True
        try:
            if self.stopping.is_set():
                self.plan.put_back(tasks)
            else:
                self._attempt(slot, tasks)
        except Exception as e:  # a bug, or a ledger that cannot be written: stop, do not hang
            self.aborted = f"{slot.label}: {type(e).__name__}: {e}; stopping (the ledger is intact: rerun to resume)"
            self.stopping.set()
        finally:
            slot.running = False
            self.plan.process_done()
            for each in self.gpus.values():
                each.slot_freed()
            self.changed.set()

    def _attempt(self, slot, tasks):
        jobs = [self.plan.job_to_run(task) for task in tasks]
        slots = sum(s.server is slot.server for s in self.slots)  # they share the host's CPUs
        command, shown = ((pack_command(slot.server, slot.device, self.trainer, jobs, masked, slots)
                           if len(tasks) > 1 else job_command(slot.server, slot.device, self.script, jobs[0], masked,
                                                              slots))
                          for masked in (False, True))
        attempt(self.context, slot, tasks, command, shown)

    def _end_offers(self):
        self.stopping.set()
        for inbox in self.inboxes.values():
            inbox.put(None)  # a slot waiting for work looks up now and sees the run is over

    def _halt(self):
        """Kill the running jobs on every host, again while the slots' threads end (30 s at most):
        one may have just started a job."""
        self._end_offers()
        deadline = time.time() + 30
        while any(t.is_alive() for t in self.threads) and time.time() < deadline:
            hosts = {id(s.host): s.host for s in self.slots}.values()
            killers = [threading.Thread(target=h.kill_running, daemon=True) for h in hosts]
            for k in killers:
                k.start()
            for k in killers:
                k.join(15)
            for t in self.threads:
                t.join(max(0.0, min(2.0, deadline - time.time())))
