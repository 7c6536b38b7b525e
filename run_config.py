"""The runner's input: the cluster config and the jobs file, loaded and checked, and the
base-model plan (phase 1: one base_only job per distinct base key the jobs need).

Bad input raises ConfigError, whose message is one line naming the file and the field.
No torch and no paramiko here: the SSH runner and the Slurm backend both read their input through it.
"""
import hashlib
import json
import os
import posixpath
import re
import sys
from collections import Counter
from pathlib import Path

import flags
from commands import NOT_FLAGS
from fileio import ConfigError, read_json  # noqa: F401 (the one ConfigError; re-exported)

PROG = "run_distributed_training.py"  # opens the runner's error lines, whichever backend runs
DEFAULT_SCRIPT = "oct1_train.py"
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
BASE_CACHE_DIR = flags.BY_NAME["base_cache_dir"].default  # the training CLI's default --base_cache_dir


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
    # Jobs per process (pack_train.py): "auto" is 1 on a CPU slot and sized from the GPU's memory on a GPU.
    "pack": (lambda v: v == "auto" or _int(1)(v), '"auto" or a whole number >= 1', "auto"),
    "max_busy_memory_mb": (_int(0), "MiB, a whole number >= 0", 1024),
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



# ------------------------------------------------------------- two phases: base models first


def needed_base(job):
    """The base key a job must wait for, or None (no base model, or one it trains alone)."""
    return None if job.get("no_base_cache") else job.get("base_key")


def cache_entry(job, key, workdir=""):
    """Where the training CLI keeps the entry of `key` for this job: relative to this folder
    (the local cache), or under a host's workdir."""
    return posixpath.join(workdir, job.get("base_cache_dir") or BASE_CACHE_DIR, key)


def plan_jobs(jobs_config, ledger_path, history, resume):
    """(every job, those still to do, their base jobs): a job whose last word in the ledger
    (its history, read from ledger_path) is "ok" is done, unless resume is off. Says on
    stderr how many it skips."""
    finished = {r.get("job_id") for r in history if r.get("status") == "ok"} if resume else set()
    jobs = load_jobs(jobs_config)
    todo = [job for job in jobs if job["job_id"] not in finished]
    bases = plan_bases(todo)
    if len(todo) < len(jobs):
        print(f"resume: {len(jobs) - len(todo)} of {len(jobs)} jobs already finished (per {ledger_path}); "
              f"{len(todo)} to run", file=sys.stderr)
    return jobs, todo, bases


def plan_bases(jobs):
    """{key: base_only job} for the distinct base keys the jobs need, built from the first
    job that needs each key (the key fixes everything the base model depends on)."""
    bases = {}
    for job in jobs:
        key = needed_base(job)
        if key is None:
            continue
        if key not in bases:
            kept = {k: v for k, v in job.items() if k not in flags.not_in_base_job()}
            bases[key] = dict(kept, mode="base_only", job_id=f"base-{key}")
        elif cache_entry(job, key) != cache_entry(bases[key], key):
            raise ConfigError(f"job {job['job_id']}: other jobs with base key {key} use another "
                              f"base_cache_dir; give them one")
    return bases



def validate_jobs(jobs, jobs_path, script):
    """Every job through the training script's own parser, as generate_jobs.py does, so a bad
    flag fails here (exit 2) instead of on every host. Returns a note when the script is not
    here to ask (it may exist on the hosts only), else None."""
    import generate_jobs  # it imports torch (through experiment.py): only here, when needed
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
