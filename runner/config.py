"""The SSH runner's cluster config: its servers, each checked field by field with a one-line
error naming the file and the field, every default filled in. (A config with a "slurm"
section is read by runner.slurm.config instead.)

No torch and no paramiko here.
"""
import json
import os
import re
import sys
from collections import Counter

from engine.fileio import ConfigError, read_json

PROG = "run_distributed_training.py"  # opens the runner's error lines, whichever backend runs
DEFAULT_SCRIPT = "oct1_train.py"
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Names that hold credentials: WANDB_API_KEY, GITHUB_PAT, AWS_ACCESS_KEY_ID, GOOGLE_CREDENTIALS ...
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|APIKEY|(^|_)(KEY|PAT|AUTH)(_|$)",
                         re.IGNORECASE)
GPU_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:_-]*$")  # an index, or a GPU/MIG UUID
TOP_FIELDS = ("servers", "script_path", "known_hosts", "ssh_config", "notify")  # notify: runner.notify
SSH_ONLY = ("user", "port", "ssh_key", "shared_fs", "remove_results", "max_sessions")


def is_slurm_config(path):
    """True when the cluster config has a "slurm" section (bad files are left to the caller)."""
    try:
        data = read_json(path, "cluster config")
    except ConfigError:
        return False
    return isinstance(data, dict) and "slurm" in data


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
