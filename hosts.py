"""The SSH runner's hosts: connecting and checking each one (workdir, setup, python, GPUs,
code and data via hostsync), the slots it offers, and its connection health."""
import sys
import threading
import time
from dataclasses import dataclass, field

import remote
from commands import in_workdir, shell_path
from run_config import PROG

@dataclass
class Slot:
    host: remote.Host
    server: dict
    device: object  # a GPU id, or "cpu"
    label: str
    busy_s: float = 0.0
    running: bool = False  # a job or pack of this slot runs now
    ok: int = 0
    failed: int = 0


@dataclass
class Health:
    """A host's connection state, shared by its slots."""
    down_since: float = None
    next_try: float = 0.0
    delay: float = 1.0
    refused: str = None  # why it is out of the run
    server: dict = None
    checked: bool = True  # check_host passed (False: down when the run began)
    checker: object = None  # the hostsync.Checker check_host runs, if any
    lock: threading.Lock = field(default_factory=threading.Lock)


def make_host(server, cluster, accept_new_hosts):
    if server["local"]:
        return remote.LocalHost(server["name"])
    return remote.RemoteHost(server["host"], server["user"], server["port"], server["ssh_key"],
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
        raise remote.HostRefused(f"{host.name}: gpus is \"auto\" but nvidia-smi failed "
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
        raise remote.HostRefused(f"{host.name}: cannot run {server['python']} in {server['workdir']} "
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
        except (remote.HostDown, remote.HostRefused) as e:
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
        if isinstance(error, remote.HostRefused):
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
