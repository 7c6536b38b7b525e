"""Fan a jobs JSON out over SSH to GPU servers, one device per job, and lose nothing.

    python generate_jobs.py -o jobs_config.json
    python run_distributed_training.py --dry-run          # the plan and the exact command lines
    python run_distributed_training.py                    # run it; rerun the same line to resume

One worker per (host, device) slot takes the next job from a shared queue and runs
    cd <workdir> && <setup> && CUDA_VISIBLE_DEVICES=<device> <python> <script> <flags>
on its host, every value shell-quoted, through one SSH connection per host
(remote.py). Output streams to <run-dir>/logs/<job_id>.log (attempts appended, each
under a header). A job that succeeded has its experiment folder copied into the
local experiments/, checked file by file (names and sizes), and only then removed
on the host if the server says remove_results. Hosts with shared_fs or local skip
the copy.

Every attempt writes a line to <run-dir>/ledger.jsonl when it starts and one when it
ends (flushed at once); a rerun skips the jobs whose last word there is "ok", and runs
a job tried before with --overwrite (its folder may be on a host). One runner per
run dir (runner.lock). A failed job is retried --retries times on any slot. A lost
host's running jobs go back to the queue (not counted as a retry) while the host is
retried with backoff; when every host has been down for --down-timeout seconds the
run stops with exit status 3. A host that fails in a way that would repeat (broken
workdir, setup or python, failing nvidia-smi, no SFTP, a bad key file) is taken out
of the run with one error line; its jobs go to the other hosts. Ctrl-C (or SIGTERM) kills
the jobs on every host, writes what it has and exits with 130.

Base models are trained once for the whole cluster, in two phases. Phase 1: one
`--mode base_only` job per distinct base_key among the jobs that need a base model
(those with a base_key and without no_base_cache). Phase 2: those dependent jobs,
each runnable once its base model is in the local cache (<base_cache_dir>/<key>/,
default experiments/base_models, relative to this folder as on the hosts); jobs
without a base_key run any time. A base model trained on a host without shared_fs
is copied home, checked against its checksums, and renamed into the local cache;
before a dependent runs on such a host the entry is sent there the same way
(hidden temporary folder, checked, renamed), unless it is already there, so the
training script reuses it. A base model already in the local cache is not trained
again (ledger status "cached"). A base job that still fails after its retries
leaves its dependents "blocked" (not run; a rerun tries the base and them again).

Exit status: 0 all jobs done, 1 some failed or were blocked by a failed base model,
2 bad input, the run dir in use by another runner, or no host usable as configured
(unknown host key, authentication, ...), 3 no host reachable, 130 interrupted.
"""
import argparse
import fcntl
import hashlib
import json
import os
import posixpath
import re
import shlex
import shutil
import signal
import sys
import threading
import time
from collections import Counter, deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from tqdm import tqdm

import base_cache
import hostsync
import provenance
import remote
from commands import (MASK, NOT_FLAGS, in_workdir, intact_command, job_argv,  # noqa: F401 (re-exported)
                      job_command, job_command_args, job_counts, plural, shell_path)

PROG = "run_distributed_training.py"
DEFAULT_SCRIPT = "oct1_train.py"
STATUS_EVERY = 30.0  # seconds between status lines when stderr is not a terminal
USAGE_LINE = re.compile(r"^usage: ", re.M)  # argparse prints it before its error and exit status 2
JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # it names the log file
FLAG_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Names that hold credentials: WANDB_API_KEY, GITHUB_PAT, AWS_ACCESS_KEY_ID, GOOGLE_CREDENTIALS ...
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|APIKEY|(^|_)(KEY|PAT|AUTH)(_|$)",
                         re.IGNORECASE)
CONTROL_CHAR = re.compile(r"[\x00-\x1f\x7f]")  # NUL, newline, escape ...
GPU_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:_-]*$")  # an index, or a GPU/MIG UUID
TOP_FIELDS = ("servers", "script_path", "known_hosts", "ssh_config")
SSH_ONLY = ("user", "port", "ssh_key", "shared_fs", "remove_results", "max_sessions")
BASE_CACHE_DIR = "experiments/base_models"  # the training CLI's default --base_cache_dir
# Flags a base job leaves out: the target phase's, and where results go (base_only publishes none).
NOT_BASE_FLAGS = ("target_data_pct", "early_stopping_patience_target", "target_batch_pct", "overwrite",
                  "no_base_cache", "prefix", "experiments_dir")


class ConfigError(Exception):
    """Bad input; the message is one line that names the file and the field."""


class CopyError(Exception):
    """A result folder did not come home intact."""


# ------------------------------------------------------------- input files


def read_json(path, what):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read {what} ({e.strerror})") from None


def _text(v):
    return isinstance(v, str) and v.strip() != ""


def _int(low, high=None):
    return lambda v: (isinstance(v, int) and not isinstance(v, bool) and v >= low
                      and (high is None or v <= high))


def _gpus(v):
    if v == "auto" or _int(0)(v):
        return True
    ids = [str(g) for g in v] if isinstance(v, list) else None
    return (ids is not None and len(set(ids)) == len(ids)
            and all(_int(0)(g) or (isinstance(g, str) and GPU_ID.match(g)) for g in v))


SERVER_FIELDS = {  # field: (check, what it must be, default)
    "host": (_text, "a host name", None),
    "name": (_text, "a label for this server", None),
    "local": (lambda v: isinstance(v, bool), "true or false", False),
    "user": (_text, "a user name", None),
    "port": (_int(1, 65535), "a port number 1-65535", None),
    "ssh_key": (_text, "a path to a private key", None),
    "gpus": (_gpus, '"auto", a number of GPUs, or a list of distinct device ids', "auto"),
    "slots_per_gpu": (_int(1), "a whole number >= 1", 1),
    "workdir": (_text, "a folder path", None),
    "setup": (lambda v: isinstance(v, str), "a shell command (string)", ""),
    "env": (lambda v: isinstance(v, dict), "an object of NAME: value", {}),
    "python": (_text, "a Python executable", None),
    "shared_fs": (lambda v: isinstance(v, bool), "true or false", False),
    "remove_results": (lambda v: isinstance(v, bool), "true or false", False),
    "max_sessions": (_int(2), "sshd's MaxSessions, a whole number >= 2", 10),
}


def check_server(entry, where):
    """One validated server with every default filled in."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected an object with at least \"host\"")
    for secret in ("password", "passphrase"):
        if secret in entry:
            raise ConfigError(f"{where}.{secret}: no passwords in config files; use an SSH key "
                              f"(ssh_key) or ssh-agent")
    for key in entry:
        if key not in SERVER_FIELDS and not key.startswith("_"):
            raise ConfigError(f"{where}: unknown field \"{key}\" (known: {', '.join(SERVER_FIELDS)})")
    if "host" not in entry:
        raise ConfigError(f"{where}: missing \"host\"")
    server = {}
    for key, (check, expected, default) in SERVER_FIELDS.items():
        if key in entry:
            if not check(entry[key]):
                raise ConfigError(f"{where}.{key}: expected {expected}, got {json.dumps(entry[key])}")
            server[key] = entry[key]
        else:
            server[key] = default
    if server["local"]:
        for key in SSH_ONLY:
            if key in entry:
                raise ConfigError(f"{where}.{key}: means nothing with \"local\": true")
    for name, value in server["env"].items():
        if not ENV_NAME.match(name):
            raise ConfigError(f"{where}.env: \"{name}\" is not a variable name")
        if name == "CUDA_VISIBLE_DEVICES":
            raise ConfigError(f"{where}.env: CUDA_VISIBLE_DEVICES is set per job from \"gpus\"")
        if SECRET_NAME.search(name):
            raise ConfigError(f"{where}.env.{name}: no secrets in config files; set it in the "
                              f"host's own environment")
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}.env.{name}: expected a string or number")
    server["name"] = server["name"] or server["host"]
    server["workdir"] = server["workdir"] or ("." if server["local"] else "~")
    server["python"] = server["python"] or (sys.executable if server["local"] else "python3")
    return server


def local_file(value, config_path):
    """A local path from the cluster config: ~ expanded, relative to the config's folder."""
    path = os.path.expanduser(value)
    return path if os.path.isabs(path) else os.path.join(os.path.dirname(os.path.abspath(config_path)), path)


def load_cluster_config(path):
    data = read_json(path, "cluster config")
    if not isinstance(data, dict) or "servers" not in data:
        raise ConfigError(f"{path}: expected an object with a \"servers\" list")
    for key in data:
        if key not in TOP_FIELDS and not key.startswith("_"):
            raise ConfigError(f"{path}: unknown field \"{key}\" (known: {', '.join(TOP_FIELDS)})")
    if not isinstance(data["servers"], list) or not data["servers"]:
        raise ConfigError(f"{path}: \"servers\" must be a non-empty list")
    servers = [check_server(s, f"{path}: servers[{i}]") for i, s in enumerate(data["servers"])]
    names = Counter(s["name"] for s in servers)
    for name, n in names.items():
        if n > 1:
            raise ConfigError(f"{path}: {n} servers are called \"{name}\"; give them distinct \"name\"s")
    for key in ("script_path", "known_hosts", "ssh_config"):
        if key in data and not _text(data[key]):
            raise ConfigError(f"{path}: \"{key}\" must be a non-empty string")
    for server in servers:
        if server["ssh_key"]:
            server["ssh_key"] = local_file(server["ssh_key"], path)
    return {"servers": servers,
            "script_path": data.get("script_path", DEFAULT_SCRIPT),
            "known_hosts": local_file(data["known_hosts"], path) if "known_hosts" in data else None,
            "ssh_config": local_file(data.get("ssh_config", "~/.ssh/config"), path)}


def _flag_value(v):
    scalar = (str, int, float, bool, type(None))
    return isinstance(v, scalar) or (isinstance(v, list) and all(isinstance(x, scalar) for x in v))


def load_jobs(path):
    """The jobs, each with a job_id (derived from its flags when missing)."""
    data = read_json(path, "jobs config")
    if not isinstance(data, list):
        raise ConfigError(f"{path}: expected a list of job objects")
    seen = {}
    for i, job in enumerate(data):
        where = f"{path}: job {i}"
        if not isinstance(job, dict):
            raise ConfigError(f"{where}: expected an object of training flags")
        for key, value in job.items():
            if key in NOT_FLAGS:
                continue
            if not FLAG_NAME.match(key):
                raise ConfigError(f"{where}: \"{key}\" is not a flag name")
            if not _flag_value(value):
                raise ConfigError(f"{where}.{key}: expected a string, number, true/false/null "
                                  f"or a list of those")
            if any(isinstance(v, str) and CONTROL_CHAR.search(v) for v in (value if isinstance(value, list)
                                                                            else [value])):
                raise ConfigError(f"{where}.{key}: {json.dumps(value)} holds a control character "
                                  f"(NUL, newline, tab, ...); job values cannot")
        if "job_id" not in job:
            flags = {k: v for k, v in job.items() if k not in NOT_FLAGS}
            job["job_id"] = hashlib.sha256(json.dumps(flags, sort_keys=True).encode()).hexdigest()[:16]
        job_id = job["job_id"]
        if not isinstance(job_id, str) or not JOB_ID.match(job_id):
            raise ConfigError(f"{where}.job_id: {json.dumps(job_id)} must be letters, digits, "
                              f"'.', '_' or '-' (it names the log file)")
        base_key = job.get("base_key")
        if base_key is not None and not (isinstance(base_key, str) and JOB_ID.match(base_key)):
            raise ConfigError(f"{where}.base_key: {json.dumps(base_key)} must be letters, digits, "
                              f"'.', '_' or '-' (it names a cache folder)")
        if job_id in seen:
            raise ConfigError(f"{where}.job_id: \"{job_id}\" repeats job {seen[job_id]}")
        seen[job_id] = i
    return data


# ------------------------------------------------------------- ledger and queue


class Ledger:
    """JSON lines, flushed as each is written: a "started" line when an attempt starts and
    one with its status when it ends, so a crash leaves a trace of what was running."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a")
        self._lock = threading.Lock()

    def write(self, record):
        with self._lock:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def close(self):
        self._file.close()

    @staticmethod
    def read(path):
        records = []
        if Path(path).exists():
            for line in Path(path).read_text().splitlines():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line cut short by a crash: that attempt simply runs again
        return records

    @staticmethod
    def attempts(records):
        """{job_id: attempts so far}: the highest attempt number, started or ended
        (ledgers written before start lines existed read the same)."""
        counts = Counter()
        for r in records:
            if isinstance(r.get("attempt"), int):
                counts[r.get("job_id")] = max(counts[r.get("job_id")], r["attempt"])
        return counts


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


# ------------------------------------------------------------- two phases: base models first


def needed_base(job):
    """The base key a job must wait for, or None (no base model, or one it trains alone)."""
    return None if job.get("no_base_cache") else job.get("base_key")


def cache_entry(job, key, workdir=""):
    """Where the training CLI keeps the entry of `key` for this job: relative to this folder
    (the local cache), or under a host's workdir."""
    return posixpath.join(workdir, job.get("base_cache_dir") or BASE_CACHE_DIR, key)


def plan_bases(jobs):
    """{key: base_only job} for the distinct base keys the jobs need, built from the first
    job that needs each key (the key fixes everything the base model depends on)."""
    bases = {}
    for job in jobs:
        key = needed_base(job)
        if key is None:
            continue
        if key not in bases:
            flags = {k: v for k, v in job.items() if k not in NOT_BASE_FLAGS}
            bases[key] = dict(flags, mode="base_only", job_id=f"base-{key}")
        elif cache_entry(job, key) != cache_entry(bases[key], key):
            raise ConfigError(f"job {job['job_id']}: other jobs with base key {key} use another "
                              f"base_cache_dir; give them one")
    return bases


# ------------------------------------------------------------- slots and hosts


@dataclass
class Slot:
    host: remote.Host
    server: dict
    device: object  # a GPU id, or "cpu"
    label: str
    busy_s: float = 0.0
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


def printed(output, tag):
    """The value a training CLI printed last as `TAG value` (RESULT_DIR, BASE_KEY, BASE_MODEL)."""
    for line in reversed(output.splitlines()):
        if line.startswith(f"{tag} "):
            return line[len(tag) + 1:].strip()
    return None


def fetch_dir(host, source, dest, check=None):
    """Copy a host's folder to dest whole: into a hidden sibling, compared file by file (names
    and sizes) and, given check(folder), checked by it; only then renamed into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(f".{dest.name}.partial{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        expected = host.get_dir(source, partial)
        wrong = sorted(set(expected.items()) ^ set(remote.local_tree(partial).items()))
        if wrong or not expected:
            raise CopyError(f"copy of {host.name}:{source} came home "
                            f"{f'incomplete (differs: {wrong[:3]})' if expected else 'empty'}")
        if check and not check(partial):
            raise CopyError(f"copy of {host.name}:{source} does not match its checksums")
    except BaseException as e:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(e, OSError):
            raise CopyError(f"copy of {host.name}:{source} failed: {e}") from None
        raise
    if dest.exists():  # an earlier copy: the new one replaces it whole
        old = dest.with_name(f".{dest.name}.old{os.getpid()}")
        os.rename(dest, old)
        os.rename(partial, dest)
        shutil.rmtree(old)
    else:
        os.rename(partial, dest)


# ------------------------------------------------------------- the scheduler


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
        self.sent = Counter()  # host: base models copied there
        self.fetched = 0  # base models copied home
        self.on_host = set()  # (host, key): entry known to be complete on that host
        self.send_locks = {}  # (host, key): held while that entry is being sent
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
        command, shown = (job_command(slot.server, slot.device, self.script, job, masked)
                          for masked in (False, True))
        log_path = self.log_dir / f"{task.job_id}.log"
        record = {"job_id": task.job_id, "attempt": task.attempt, "host": slot.host.name,
                  "device": str(slot.device), "slot": slot.label, "start": time.time(),
                  "end": None, "exit_status": None, "status": "started", "log": str(log_path)}
        self.ledger.write(record)  # before it runs: a crash from here on leaves this trace
        result = result_dir = error = None
        try:
            if task.needs:
                self._send_base(slot, task.job, task.needs)
            result = self._run_logged(slot.host, command, shown, log_path,
                                      f"attempt {task.attempt} on {slot.label}")
            self._count_training(task, result)
            if result.ok:
                bring = self._bring_base_home if job.get("mode") == "base_only" else self._bring_home
                result_dir = bring(slot, task, result)
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

    def _bring_home(self, slot, task, result):
        """Copy the job's experiment folder into the local experiments/ and check it."""
        host, server = slot.host, slot.server
        rel = printed(result.stdout, "RESULT_DIR") or self._find_result_dir(slot, task.job)
        if rel is None:
            return None
        if server["local"] or server["shared_fs"]:
            return rel
        # The same place under the local experiments/ as under the job's experiments_dir.
        path, top = PurePosixPath(rel), PurePosixPath(task.job.get("experiments_dir", "experiments"))
        inside = path.relative_to(top) if path.is_relative_to(top) else PurePosixPath(*path.parts[-2:])
        if not inside.parts or inside.is_absolute() or ".." in inside.parts:
            raise CopyError(f"RESULT_DIR {rel!r} is not a folder under {top}")
        source = rel if path.is_absolute() else posixpath.join(server["workdir"], rel)
        dest = Path("experiments", *inside.parts)
        fetch_dir(host, source, dest)
        if server["remove_results"]:
            removed = host.run(f"rm -rf -- {shell_path(source)}")
            if not removed.ok:
                self.say(f"{task.job_id}: could not remove {host.name}:{source}: {removed.stdout.strip()}")
        return str(dest)

    # -- base models

    def _count_training(self, task, result):
        """A base model this job trained (not reused): the engine logs where it stored it."""
        key = task.builds or task.needs
        if key and f"base model {key}: stored in" in result.stdout:
            with self.lock:
                self.trained[key] += 1

    def _bring_base_home(self, slot, task, result):
        """A base_only job ended: check that it built the key the jobs file names, and copy
        its entry into the local cache unless the host shares it. Returns the local entry."""
        key, where = printed(result.stdout, "BASE_KEY"), printed(result.stdout, "BASE_MODEL")
        if key is None or where is None:
            raise CopyError("no BASE_KEY and BASE_MODEL lines in its output")
        expected = task.job.get("base_key")
        if expected and key != expected:
            raise CopyError(f"the training script computed base key {key} where the jobs file says "
                            f"{expected}; regenerate the jobs with the code the hosts run")
        host, server = slot.host, slot.server
        local = cache_entry(task.job, key)
        if not base_cache.entry_intact(local):
            if server["local"] or server["shared_fs"]:
                raise CopyError(f"{host.name} stored base model {key} in {where}, but {local} here "
                                f"is not a complete entry (is shared_fs right?)")
            source = where if posixpath.isabs(where) else posixpath.join(server["workdir"], where)
            fetch_dir(host, source, Path(local), check=base_cache.entry_intact)
            with self.lock:
                self.fetched += 1
        self.on_host.add((host.name, key))
        return local

    def _send_base(self, slot, job, key):
        """Before a job that needs base model `key` runs on a host that does not share our files,
        put the entry into that host's cache, where the training script will find it."""
        host, server = slot.host, slot.server
        if server["local"] or server["shared_fs"]:
            return
        with self.lock:
            lock = self.send_locks.setdefault((host.name, key), threading.Lock())
        with lock:  # one copy per host, however many of its slots want it
            if (host.name, key) in self.on_host:
                return
            # Shell commands run in the workdir; SFTP starts in the login folder.
            target = cache_entry(job, key)
            tmp = posixpath.join(posixpath.dirname(target), f".{key}.upload{os.getpid()}")
            if not host.run(intact_command(server, self.script, target)).ok:
                host.put_dir(cache_entry(job, key), posixpath.join(server["workdir"], tmp))
                # Checked there, then renamed into place (replacing a broken entry); never half there.
                q_tmp, q_target = shell_path(tmp), shell_path(target)
                placed = host.run(f"{intact_command(server, self.script, tmp)} && rm -rf -- {q_target} && "
                                  f"mv -T -- {q_tmp} {q_target} || {{ rm -rf -- {q_tmp}; exit 1; }}")
                if not placed.ok:
                    raise CopyError(f"base model {key} did not arrive intact in {host.name}:"
                                    f"{server['workdir']}/{target} {placed.stdout.strip()[-300:]}")
                with self.lock:
                    self.sent[host.name] += 1
                self.say(f"base model {key}: sent to {host.name}")
            self.on_host.add((host.name, key))

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
                "sent": dict(self.sent), "fetched": self.fetched, "blocked": len(self.blocked)}

    def _find_result_dir(self, slot, job):
        """Fallback when no RESULT_DIR line came: the one experiments/<prefix>/fold<k>_* folder."""
        if "prefix" not in job or "fold" not in job:
            return None
        stem = f"{job.get('experiments_dir', 'experiments')}/{job['prefix']}/fold{job['fold']}_"
        found = slot.host.run(f"cd {shell_path(slot.server['workdir'])} && "
                              f"for d in {shlex.quote(stem)}*; do [ -d \"$d\" ] && echo \"$d\"; done")
        dirs = found.stdout.split("\n")[:-1] if found.ok else []
        return dirs[0] if len(dirs) == 1 else None

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


# ------------------------------------------------------------- reports


def summary_lines(scheduler, skipped, per_slot=True):
    wall = scheduler.wall_s
    lines = []
    if per_slot:
        lines.append(f"{'slot':<28} {'ok':>5} {'failed':>6} {'busy s':>8} {'util':>5}")
        for s in scheduler.slots:
            lines.append(f"{s.label:<28} {s.ok:>5} {s.failed:>6} {s.busy_s:>8.1f} {s.busy_s / wall:>5.0%}")
    lines.append(f"{len(scheduler.done)} done, {len(scheduler.failed)} failed, "
                 f"{len(scheduler.blocked)} blocked, {skipped} skipped (finished earlier), "
                 f"{scheduler.not_run} not run; {wall:.1f} s")
    base = scheduler.base_counts()
    if base["distinct_keys"]:
        lines.append(f"base models: {base['trained']} trainings executed for {base['distinct_keys']} "
                     f"distinct keys ({base['cached']} already in the local cache), against "
                     f"{base['without_sharing']} without sharing; {sum(base['sent'].values())} copies sent, "
                     f"{base['fetched']} brought home")
    if scheduler.failed:
        lines.append("failed jobs:")
        for task in scheduler.failed:
            last = task.last
            why = last.get("error") or f"exit {last['exit_status']}"
            lines.append(f"  {task.job_id}  {last['status']} ({why})  {last['log']}")
            if last.get("output_tail"):
                lines.append(f"    {last['output_tail'].splitlines()[-1]}")
    if scheduler.blocked:
        lines.append("blocked jobs (their base model failed; a rerun tries again):")
        for key, n in Counter(task.needs for task in scheduler.blocked).items():
            lines.append(f"  {n} blocked by base {key}  {scheduler.log_dir / f'base-{key}.log'}")
    return lines


def write_log_file(path, scheduler, args, skipped):
    wall = scheduler.wall_s
    jobs = []
    for task in scheduler.tasks:
        last = task.last or {}
        jobs.append({"job_id": task.job_id, "status": last.get("status", "not run"),
                     "host": last.get("host"), "device": last.get("device"), "slot": last.get("slot"),
                     "start": last.get("start"), "end": last.get("end"),
                     "duration_s": last["end"] - last["start"] if last.get("start") else None,
                     "exit_status": last.get("exit_status"), "attempts": task.attempt,
                     "result_dir": last.get("result_dir"), "log": last.get("log"),
                     "stderr_tail": last.get("output_tail", "")})
    devices = {}
    for s in scheduler.slots:
        d = devices.setdefault(f"{s.host.name}:{s.device}", {"device": f"{s.host.name}:{s.device}",
                                                              "slots": 0, "busy_s": 0.0})
        d["slots"] += 1
        d["busy_s"] += s.busy_s
    for d in devices.values():
        d["utilisation"] = d["busy_s"] / (wall * d["slots"])
    report = {
        "cluster_config": args.cluster_config, "jobs_config": args.jobs_config,
        "started": scheduler.started, "ended": scheduler.ended, "wall_s": wall,
        "totals": {"jobs": len(scheduler.tasks) + skipped, "skipped": skipped,
                   "done": len(scheduler.done), "failed": len(scheduler.failed),
                   "blocked": len(scheduler.blocked),
                   "not_run": scheduler.not_run,
                   "attempts": len(scheduler.records),
                   "requeued": sum(r["status"] == "requeued" for r in scheduler.records),
                   "interrupted": bool(scheduler.interrupted), "aborted": scheduler.aborted},
        "base_models": scheduler.base_counts(),
        "slots": [{"slot": s.label, "host": s.host.name, "device": str(s.device), "ok": s.ok,
                   "failed": s.failed, "busy_s": s.busy_s, "utilisation": s.busy_s / wall}
                  for s in scheduler.slots],
        "devices": list(devices.values()),
        "jobs": jobs,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(report, indent=1))
    os.replace(tmp, path)


def task_counts(tasks):
    n_base = sum(bool(task.builds) for task in tasks)
    return job_counts(len(tasks) - n_base, n_base)


def validate_jobs(jobs, jobs_path, script):
    """Every job through the training script's own parser, as generate_jobs.py does, so a bad
    flag fails here (exit 2) instead of on every host. Returns a note when the script is not
    here to ask (it may exist on the hosts only), else None."""
    import generate_jobs  # it imports this module; needed only here
    path = Path(script)
    # Only the project's CLIs are imported to ask: any other script could run on import.
    if not path.is_file() or "def build_parser(" not in path.read_text(errors="replace"):
        return f"jobs not checked before starting: {script} is not here or has no build_parser()"
    try:
        parser = generate_jobs.load_script_parser(script)
        for i, job in enumerate(jobs):
            generate_jobs.parse_job(parser, job, f"{jobs_path}: job {i} ({job['job_id']})")
    except generate_jobs.GridError as e:
        raise ConfigError(str(e)) from None
    return None


def print_plan(servers, tasks, script, cached):
    """The dry run: the slots, each job's exact command line (round-robin over the slots), the phases."""
    slots = []
    for server in servers:
        local = remote.LocalHost(server["name"]) if server["local"] else None
        try:
            slots += slots_of(server, local, devices_of(server, local))
        except remote.HostRefused as e:
            print(f"# error: {e}")
        finally:
            if local:
                local.close()
        if server["gpus"] == "auto" and not server["local"]:
            print(f"# {server['name']}: gpus \"auto\" is asked at run time "
                  f"(CPU slots if it has no nvidia-smi)")
    print(f"# {task_counts(tasks)} over {plural(len(slots), 'slot')}: {', '.join(s.label for s in slots)}")
    if not slots:
        return
    print("# slots take the next job as they free up; this is the first round, in order")
    for i, task in enumerate(tasks):
        slot = slots[i % len(slots)]
        shown = job_command(slot.server, slot.device, script, task.job, masked=True)
        print(f"[{slot.label}] {task.job_id}\n  {shown}")
    bases = sum(bool(task.builds) for task in tasks)
    dependents = sum(task.needs is not None for task in tasks)
    print(f"# phase 1: {bases} base jobs; phase 2: {dependents} dependent jobs "
          f"(+ {len(tasks) - bases - dependents} independent)"
          + (f"; {len(cached)} base models already in the local cache" if cached else ""))


# ------------------------------------------------------------- CLI


def parse_args(argv):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--cluster-config", default="cluster_config.json", help="servers (default: %(default)s)")
    p.add_argument("--jobs-config", default="jobs_config.json", help="jobs JSON (default: %(default)s)")
    p.add_argument("--script-path", help="training script on the hosts, relative to workdir "
                                         "(default: the cluster config's script_path)")
    p.add_argument("--run-dir", help="ledger and logs (default: runs/<jobs-config name>)")
    p.add_argument("--log-file", help="JSON report: per job, per slot and device, totals "
                                      "(default: <run-dir>/run_log.json)")
    p.add_argument("--retries", type=int, default=0, help="extra attempts for a failing job (default: 0)")
    p.add_argument("--timeout", type=float, help="seconds a job may run before it is killed")
    p.add_argument("--down-timeout", type=float, default=600.0,
                   help="give up when every host has been down this many seconds (default: %(default)s)")
    p.add_argument("--no-resume", dest="resume", action="store_false",
                   help="run every job, even those the ledger shows finished")
    p.add_argument("--dry-run", action="store_true", help="print the slots and command lines, run nothing")
    p.add_argument("--accept-new-hosts", action="store_true",
                   help="trust unknown host keys on first use and add them to known_hosts")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-job lines")
    p.add_argument("--detach", action="store_true",
                   help="Slurm only: submit and exit, leaving the jobs queued; rerun to watch them")
    p.add_argument("--backend", help=argparse.SUPPRESS)  # refused in main(): the cluster config decides
    p.add_argument("--sync-code", action="store_true",
                   help="first copy this checkout's tracked files that differ to each host's workdir")
    p.add_argument("--sync-data", action="store_true",
                   help="first copy the data files the jobs read that differ to each host's workdir")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="run even where a host's code or data differ from this checkout (warns)")
    args = p.parse_args(argv)
    if args.retries < 0:
        p.error("--retries must be >= 0")
    return args


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
        if not server["local"] and len(host_slots) > server["max_sessions"] - 1:
            print(f"warning: {host.name} has {len(host_slots)} slots but max_sessions is "
                  f"{server['max_sessions']}: at most {server['max_sessions'] - 1} of its jobs run at "
                  f"once (raise MaxSessions in its sshd_config and max_sessions here)", file=sys.stderr)
        slots += host_slots
    return slots, health


def make_checker(args, tasks, script):
    """The check of every host's code and data (hostsync), or None when the script is not one of
    this project's (a lab's own script has no provenance.py beside it to answer)."""
    if posixpath.basename(script) not in provenance.code_files():
        if args.sync_code or args.sync_data or args.allow_mismatch:
            raise ConfigError(f"{script} is not one of this project's scripts: --sync-code, --sync-data "
                              f"and --allow-mismatch apply to this project's own")
        return None
    try:
        return hostsync.Checker([t.job for t in tasks if not t.builds], script, args.sync_code,
                                args.sync_data, args.allow_mismatch)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def run_jobs(args, cluster, tasks, cached, skipped, run_dir, script):
    """Connect, run every task, report; returns the exit status."""
    servers = cluster["servers"]
    hosts = [make_host(s, cluster, args.accept_new_hosts) for s in servers]
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # `kill <runner>` stops like Ctrl-C
    try:
        checker = make_checker(args, tasks, script)
        devices, errors = reach_hosts(servers, hosts, checker)
        mismatches = [line for e in errors.values() if isinstance(e, hostsync.Mismatch) for line in e.lines]
        if mismatches:
            print("\n".join(f"{PROG}: error: {line}" for line in mismatches), file=sys.stderr)
            raise ConfigError("hosts differ from this checkout (above); not started. --allow-mismatch "
                              "runs anyway")
        refused = [str(e) for e in errors.values() if isinstance(e, remote.HostRefused)]
        if len(refused) == len(servers):
            raise ConfigError("; ".join(refused))  # no host is usable
        for error in refused:
            print(out_of_the_run(error), file=sys.stderr)
        slots, health = plan_slots(servers, hosts, devices, errors, checker)
        if not slots:
            print(f"{PROG}: error: no host reachable", file=sys.stderr)
            return 3
        if not args.quiet:
            print(f"{task_counts(tasks)} over {plural(len(slots), 'slot')}: {', '.join(s.label for s in slots)}",
                  file=sys.stderr)
        ledger = Ledger(run_dir / "ledger.jsonl")
        scheduler = Scheduler(slots, tasks, health, ledger, run_dir / "logs", script, retries=args.retries,
                              timeout=args.timeout, down_timeout=args.down_timeout, quiet=args.quiet,
                              cached=cached)
        try:
            scheduler.run()
        finally:
            ledger.close()
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before any job started
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        for host in hosts:
            host.close()  # also ends every session: their watchers kill what is left
    write_log_file(args.log_file or run_dir / "run_log.json", scheduler, args, skipped)
    print("\n".join(summary_lines(scheduler, skipped, per_slot=not args.quiet)))
    if scheduler.interrupted:
        print(f"interrupted; rerun the same command to finish the rest (ledger {ledger.path})",
              file=sys.stderr)
        return 130
    if scheduler.aborted:
        print(f"{PROG}: error: {scheduler.aborted}", file=sys.stderr)
        return 3
    if scheduler.not_run and scheduler.unusable:
        print(f"{PROG}: error: no usable host left ({scheduler.unusable}); rerun once fixed", file=sys.stderr)
        return 2
    return 1 if scheduler.failed or scheduler.blocked else 0


@contextmanager
def run_dir_lock(run_dir):
    """Held while a runner works on run_dir; a second runner gets a ConfigError naming the
    pid that holds it. The kernel drops the lock when its holder dies, however it dies; the
    pid such a runner left in the file is taken over with a message."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "runner.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            for _ in range(20):  # the holder may be between taking the lock and writing its pid
                f.seek(0)
                holder = f.read().strip()
                if holder:
                    break
                time.sleep(0.05)
            raise ConfigError(f"{run_dir} is in use by another runner (pid {holder or '?'}); "
                              f"wait for it to end, or stop it") from None
        f.seek(0)
        stale = f.read().strip()
        if stale:
            print(f"{run_dir}: taking over the lock of runner pid {stale}, which is no longer running",
                  file=sys.stderr)
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)  # a clean end leaves no pid behind; closing the file unlocks it


def main(argv=None):
    args = parse_args(argv)
    if args.backend is not None:
        print(f"{PROG}: error: --backend: the cluster config chooses the backend; give it a \"slurm\" "
              f"section for Slurm (see examples/slurm_cluster.json)", file=sys.stderr)
        return 2
    import slurm_backend  # here: it builds on this module
    if slurm_backend.is_slurm_config(args.cluster_config):
        return slurm_backend.main(args)
    if args.detach:
        print(f"{PROG}: error: --detach needs a Slurm cluster config (SSH jobs end with the runner)",
              file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir or Path("runs", Path(args.jobs_config).stem))
    if args.dry_run:
        return plan_and_run(args, run_dir)
    try:
        with run_dir_lock(run_dir):
            return plan_and_run(args, run_dir)
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2


def plan_and_run(args, run_dir):
    """main() after the arguments: the plan from the files and the ledger, then the run."""
    history = Ledger.read(run_dir / "ledger.jsonl")
    finished = {r.get("job_id") for r in history if r.get("status") == "ok"} if args.resume else set()
    try:
        cluster = load_cluster_config(args.cluster_config)
        jobs = load_jobs(args.jobs_config)
        todo = [job for job in jobs if job["job_id"] not in finished]
        bases = plan_bases(todo)
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    script = args.script_path or cluster["script_path"]
    try:
        note = validate_jobs(jobs, args.jobs_config, script)
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    if note and not args.quiet:
        print(note, file=sys.stderr)
    earlier = Ledger.attempts(history)
    # Phase 1 goes first in the queue, so base jobs take the first free slots; a base model
    # already complete in the local cache (an earlier run) is not trained again, only sent.
    cached = {key: job for key, job in bases.items() if base_cache.entry_intact(cache_entry(job, key))}
    tasks = [Task(job, attempt=earlier[job["job_id"]], builds=key)
             for key, job in bases.items() if key not in cached]
    # The ledger, not a folder on a host, says whether a job finished: a job tried before
    # (its result may be on a host without having come home) reruns with --overwrite.
    tasks += [Task(job, attempt=earlier[job["job_id"]], needs=needed_base(job),
                   overwrite=earlier[job["job_id"]] > 0) for job in todo]
    skipped = len(jobs) - len(todo)
    if skipped:
        print(f"resume: {skipped} of {len(jobs)} jobs already finished (per {run_dir / 'ledger.jsonl'}); "
              f"{len(todo)} to run", file=sys.stderr)
    if args.dry_run:
        print_plan(cluster["servers"], tasks, script, cached)
        return 0
    if not tasks:
        print("nothing to do", file=sys.stderr)
        status = 0
    else:
        status = run_jobs(args, cluster, tasks, cached, skipped, run_dir, script)
    if status in (0, 1):
        print_report_headline(jobs)
    return status


def print_report_headline(jobs, max_lines=10):
    """The personalization report's headline for the prefixes these jobs write, and its command."""
    patterns = set()
    for job in jobs:
        if job.get("prefix") is None or job.get("mode") == "base_only":
            continue
        top, _, rest = str(job["prefix"]).partition("/")
        root = Path(job.get("experiments_dir") or "experiments") / top
        # generate_jobs.py puts each configuration in its own folder under the grid's prefix.
        patterns.add(str(root / "*") if rest else str(root))
    if not patterns:
        return
    import summarize_results  # numpy and matplotlib, only once there is something to report
    lines = summarize_results.headline(sorted(patterns)).splitlines()
    print("report: " + shlex.join(["python", "summarize_results.py", *sorted(patterns)]))
    print("\n".join(lines[:max_lines]))
    if len(lines) > max_lines:
        print(f"... {len(lines) - max_lines} more configurations in the full report")


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
