"""The SSH runner's hosts: connecting and checking each one (workdir, setup, python, GPUs,
code and data via hostsync), the slots it offers, and its connection health."""
import sys
import threading
import time
from dataclasses import dataclass, field

from runner.commands import in_workdir, shell_path
from runner.config import PROG
from runner.ssh import shell
from runner.ssh.shell import LocalHost


@dataclass
class Slot:
    host: shell.Host
    server: dict
    device: object  # a GPU id, or "cpu"
    label: str
    busy_s: float = 0.0
    running: bool = False  # a job or pack of this slot runs now
    ok: int = 0
    failed: int = 0


@dataclass
class Health:
    """A host's connection state, shared by its slots: down (retried with backoff) or out of the run."""
    down_since: float = None
    next_try: float = 0.0
    delay: float = 1.0
    refused: str = None  # why it is out of the run
    server: dict = None
    checked: bool = True  # check_host passed (False: down when the run began)
    checker: object = None  # the hostsync.Checker check_host runs, if any
    news: object = None  # runner.news.News: a host lost or out of the run is told there too
    lock: threading.Lock = field(default_factory=threading.Lock)  # held by the slot trying to reconnect
    state: threading.Lock = field(default_factory=threading.Lock)  # guards down_since and refused

    def lost(self, host, error, say):
        """The connection is gone: its slots wait while it is retried with backoff."""
        with self.state:
            first = self.down_since is None
            if first:
                self.down_since, self.delay = time.time(), 1.0
                self.next_try = self.down_since + self.delay
        if first:
            say(f"host {host.name} lost ({error}); its running jobs go back to the queue; "
                f"reconnecting with backoff", important=True)
            if self.news:
                self.news.host(f"host {host.name} lost ({error}); its running jobs go back to the queue")
            host.close()  # so every slot of this host notices now

    def refuse(self, error, say):
        """The host fails in a way that would repeat on every try: out of the run, once. Its other
        running jobs go on; the queue's jobs go to the other hosts."""
        with self.state:
            first, self.refused = self.refused is None, self.refused or str(error)
        if first:
            say(out_of_the_run(error), important=True)
            if self.news:
                self.news.host(f"host out of the run: {error}; its jobs go to the other hosts")

    def ready(self, host, say):
        """Whether the host can take work now; a down one is tried again when its backoff is over."""
        if self.refused:
            return False
        if self.down_since is None:
            return True
        if time.time() < self.next_try or not self.lock.acquire(blocking=False):
            return False
        refused = None
        try:
            host.connect()
            if not self.checked:
                check_host(self.server, host, self.checker)  # down when the run began: not checked yet
                self.checked = True
        except shell.HostRefused as e:
            refused = e
        except shell.HostDown as e:
            self.delay = min(self.delay * 2, 60.0)
            self.next_try = time.time() + self.delay
            say(f"host {host.name}: still down ({e}); next try in {self.delay:g} s", important=True)
            return False
        finally:
            self.lock.release()
        if refused:
            self.refuse(refused, say)
            return False
        say(f"host {host.name} is back after {time.time() - self.down_since:.0f} s", important=True)
        self.down_since = None
        return True


def all_down_for(healths):
    """Seconds every host still in the run has been down (0 while one is up)."""
    downs = [h.down_since for h in healths if not h.refused]
    if not downs or any(d is None for d in downs):
        return 0.0
    return time.time() - max(downs)


def unusable(healths):
    """Why no host can run jobs any more, or None."""
    reasons = [h.refused for h in healths]
    return "; ".join(reasons) if reasons and all(reasons) else None


def make_host(server, cluster, accept_new_hosts):
    if server["local"]:
        return LocalHost(server["name"])
    from runner.ssh.connection import RemoteHost  # paramiko: only where a server is remote
    return RemoteHost(server["host"], server["user"], server["port"], server["ssh_key"],
                             name=server["name"], known_hosts=cluster["known_hosts"],
                             ssh_config=cluster["ssh_config"], accept_new_hosts=accept_new_hosts,
                             max_sessions=server["max_sessions"])


def last_line(result):
    """How a command ended, in a few words: its exit status and last line of output."""
    lines = result.stdout.strip().splitlines()
    how = "timed out" if result.timed_out else f"exit {result.exit_status}"
    return f"{how}: {lines[-1].strip()}" if lines else how


def ask_gpus(server, host):
    """The GPU indices nvidia-smi reports on a host (after its setup); [] when it has no
    nvidia-smi. An nvidia-smi that fails is HostRefused, not a quiet fall back to the CPU."""
    result = host.run(in_workdir(server, "nvidia-smi --query-gpu=index --format=csv,noheader"))
    if result.exit_status == 127:  # command not found: a machine without NVIDIA GPUs
        return []
    if not result.ok:
        raise shell.HostRefused(f"{host.name}: gpus is \"auto\" but nvidia-smi failed "
                                 f"({last_line(result)}); fix the driver, or set \"gpus\": 0 to run "
                                 f"its jobs on the CPU")
    return [int(x) for x in result.stdout.split() if x.isdigit()]


def out_of_the_run(error):
    """The line that says a host is out of the run (HostRefused names the host first)."""
    return f"{PROG}: error: {error}; that host is out of this run, its jobs go to the other hosts"


def check_host(server, host, checker=None):
    """The devices of a host just reached. Raises HostRefused when it cannot run jobs at all
    (workdir, setup or python broken; nvidia-smi failing): every job there would fail alike;
    and hostsync.Mismatch when the checker finds other code or data there than here."""
    if checker:
        checker.prepare(host, server)  # copies what --sync-code/--sync-data ask for, then compares
    probe = host.run(in_workdir(server, f"{shell_path(server['python'])} -c ''"), timeout=120)
    if not probe.ok:
        raise shell.HostRefused(f"{host.name}: cannot run {server['python']} in {server['workdir']} "
                                 f"after its setup ({last_line(probe)})")
    return devices_of(server, host)


def devices_of(server, host):
    """The devices a server offers; host=None (dry run, remote host) leaves "auto" unresolved."""
    gpus = server["gpus"]
    if gpus == "auto":
        gpus = ask_gpus(server, host) if host else ["auto"]
    elif isinstance(gpus, int):
        gpus = list(range(gpus))
    return list(gpus) or ["cpu"]  # no GPU: the jobs run on the CPU


def slots_of(server, host, devices):
    spg = server["slots_per_gpu"]
    return [Slot(host, server, device, f"{server['name']}:{device}" + (f"#{k + 1}" if spg > 1 else ""))
            for device in devices for k in range(spg)]



def reach_hosts(servers, hosts, checker=None):
    """Connect to every host and check it (check_host), in parallel. Returns {name: devices}
    of the hosts ready now and {name: error}: HostDown (unreachable now, tried again later)
    or HostRefused (cannot be used as configured)."""
    devices, errors = {}, {}

    def reach(server, host):
        try:
            host.connect()
            devices[server["name"]] = check_host(server, host, checker)
        except (shell.HostDown, shell.HostRefused) as e:
            errors[server["name"]] = e

    threads = [threading.Thread(target=reach, args=pair, daemon=True) for pair in zip(servers, hosts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return devices, errors


def plan_slots(servers, hosts, devices, errors, checker=None):
    """The slots of every usable host, and each one's Health (down from the start when
    unreachable). Refused hosts have none."""
    slots, health = [], {}
    for server, host in zip(servers, hosts):
        error = errors.get(server["name"])
        if isinstance(error, shell.HostRefused):
            continue
        if error and server["gpus"] == "auto":
            print(f"warning: {error}; its gpus are \"auto\", so it sits this run out", file=sys.stderr)
            continue
        health[host.name] = Health(server=server, checker=checker)
        if error:
            print(f"warning: {error}; will keep trying", file=sys.stderr)
            health[host.name] = Health(down_since=time.time(), next_try=time.time() + 1.0, server=server,
                                       checked=False, checker=checker)
        host_slots = slots_of(server, host, devices.get(server["name"]) or devices_of(server, None))
        # One session is kept for control; with packs one more lets finished members come home
        # while the host's packs still train.
        spare = 1 if server["pack"] == 1 else 2
        if not server["local"] and len(host_slots) > server["max_sessions"] - spare:
            print(f"warning: {host.name} has {len(host_slots)} slots but max_sessions is "
                  f"{server['max_sessions']}: at most {server['max_sessions'] - 1} of its jobs run at "
                  f"once" + ("" if spare == 1 else ", and finished pack members wait for a free session "
                             "to come home") +
                  " (raise MaxSessions in its sshd_config and max_sessions here)", file=sys.stderr)
        slots += host_slots
    return slots, health
