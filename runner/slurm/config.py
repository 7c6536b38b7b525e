"""The "slurm" section of a cluster config: every field checked with a one-line error, every
default filled in; setup and sbatch_args refuse anything that looks like a secret (they are
written into every job script)."""
import json
import os
import re

from engine.fileio import ConfigError, read_json
from runner.config import DEFAULT_SCRIPT, SECRET_NAME, _int, _text

SLURM_WORD = re.compile(r"^[A-Za-z0-9_.:,+=@-]+$")  # partition, account, qos, gpu type


def _word(v):
    return isinstance(v, str) and bool(SLURM_WORD.match(v))


def _args(v):
    return isinstance(v, list) and all(isinstance(a, str) and a.startswith("-") and "\n" not in a for a in v)


SLURM_FIELDS = {  # field: (check, what it must be, default)
    "partition": (_word, "a partition name", None),
    "account": (_word, "an account name", None),
    "qos": (_word, "a QOS name", None),
    "time": (lambda v: isinstance(v, str) and re.match(r"^[0-9][0-9:-]*$", v) is not None,
             "a Slurm time limit like \"04:00:00\" or \"1-00:00:00\"", None),
    "cpus_per_task": (_int(1), "a whole number >= 1", 1),
    "mem": (lambda v: isinstance(v, str) and re.match(r"^[0-9]+[KMGT]?$", v) is not None,
            "memory like \"16G\"", None),
    "gpus_per_task": (_int(0), "a whole number >= 0 (0: CPU only)", 1),
    "gpu_option": (lambda v: v in ("gres", "gpus"), "\"gres\" (--gres=gpu:N) or \"gpus\" (--gpus=N)", "gres"),
    "gpu_type": (_word, "a GPU type like \"a100\"", None),
    "max_running": (_int(1), "a whole number >= 1 (the array throttle %N)", None),
    "sbatch_args": (_args, "a list of sbatch options, each starting with '-'", []),
    "setup": (lambda v: isinstance(v, str) and "\n" not in v, "a one-line shell command", ""),
    "python": (_text, "a Python executable", "python3"),
    "workdir": (_text, "a folder on the shared filesystem", "."),
    # Jobs per array task (pack_train.py): "auto" is MAX_AUTO on a GPU task, 1 on a CPU one.
    "pack": (lambda v: v == "auto" or _int(1)(v), '"auto" or a whole number >= 1', "auto"),
    # The most array tasks this user may have queued at once (default: what Slurm says, see queue.limits).
    "max_submit": (_int(1), "a whole number >= 1", None),
    # Seconds between looks at squeue while nothing ends (up to twice that as the quiet lasts).
    "poll_s": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0.1 <= v <= 600,
               "seconds between 0.1 and 600", 30),
}
# The sbatch options the runner sets itself on every array; sbatch_args may not replace them.
OWN_OPTIONS = {"--array": "-a", "--output": "-o", "--job-name": "-J", "--dependency": "-d", "--parsable": None,
               "--wait": "-W", "--kill-on-invalid-dep": None}
TOP_FIELDS = ("slurm", "script_path", "notify")  # notify: runner.notify


def load_slurm_config(path):
    """(validated settings with defaults, script path)."""
    data = read_json(path, "cluster config")
    for key in data:
        if key not in TOP_FIELDS and not key.startswith("_"):
            raise ConfigError(f"{path}: unknown field \"{key}\" next to \"slurm\" (known: "
                              f"{', '.join(TOP_FIELDS)}); SSH servers and Slurm are separate configs")
    section = data["slurm"]
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: \"slurm\" must be an object of settings")
    settings = {}
    for key in section:
        if key not in SLURM_FIELDS and not key.startswith("_"):
            raise ConfigError(f"{path}: slurm: unknown field \"{key}\" (known: {', '.join(SLURM_FIELDS)})")
    for key, (check, expected, default) in SLURM_FIELDS.items():
        value = section.get(key, default)
        if key in section and not check(value):
            raise ConfigError(f"{path}: slurm.{key}: expected {expected}, got {json.dumps(value)}")
        settings[key] = value
    for arg in settings["sbatch_args"]:
        long = arg.split("=")[0]
        short = next((name for name, letter in OWN_OPTIONS.items() if letter and arg[:2] == letter), None)
        if long in OWN_OPTIONS or short:
            raise ConfigError(f"{path}: slurm.sbatch_args: {arg} is an option the runner sets itself on every "
                              f"array ({long if long in OWN_OPTIONS else short})")
    for key in ("setup", "sbatch_args"):
        if SECRET_NAME.search(json.dumps(settings[key])):
            raise ConfigError(f"{path}: slurm.{key}: no secrets in config files (they would be "
                              f"written into every job script); set them in the cluster's environment")
    script = data.get("script_path", DEFAULT_SCRIPT)
    if not _text(script):
        raise ConfigError(f"{path}: \"script_path\" must be a non-empty string")
    settings["workdir"] = os.path.abspath(os.path.expanduser(settings["workdir"]))
    return settings, script
