"""Job command lines: the shell lines the runner sends to a host, for one job or a pack.

No torch and no paramiko: the grid, the SSH backend and the Slurm backend all use it.
Every value is shell-quoted; env values and setup lines can be shown masked (***).
"""
import json
import posixpath
import shlex

from engine.flags import job_argv

MASK = "***"
# Run on a host with the training script's folder and an entry folder: exit 0 when the entry is
# complete and matches its checksums, as that host's code sees it.
INTACT_CHECK = ("import sys; sys.path.insert(0, sys.argv[1]); from engine import base_cache; "
                "sys.exit(0 if base_cache.entry_intact(sys.argv[2]) else 1)")
# Run a module of the code beside the training script as `python -m` would, from the workdir
# (its paths stay relative to the workdir): python -c RUN_MODULE <code folder> <module> <args>.
RUN_MODULE = ("import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
              "runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)")


def plural(n, noun):
    return f"{n} {noun}" + ("" if n == 1 else "s")


def job_counts(n_jobs, n_base):
    """'30 jobs + 10 base-model jobs': the grid's jobs and the base models trained first."""
    return plural(n_jobs, "job") + (f" + {plural(n_base, 'base-model job')}" if n_base else "")


def job_command_args(job):
    """job_argv, every token shell-quoted."""
    return [shlex.quote(token) for token in job_argv(job)]


def shell_path(path):
    """Quote a path for the shell; a leading ~ keeps meaning the home folder."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def in_workdir(server, line, masked=False):
    """A shell line run in the server's workdir, after its setup (shown as *** when masked)."""
    steps = [f"cd {shell_path(server['workdir'])}"]
    if server["setup"]:  # the server's own shell snippet, written by its owner; it may hold secrets
        steps.append(MASK if masked else server["setup"])
    return " && ".join(steps + [line])


def threads_per_slot(slots):
    """Shell text for OMP_NUM_THREADS: the value the job's environment already has, else the
    host's CPU count (read there, when the job starts) divided by its slots, at least 1."""
    cpus = "$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN)"
    return f'"${{OMP_NUM_THREADS:-$(( {cpus} / {int(slots)} > 1 ? {cpus} / {int(slots)} : 1 ))}}"'


def job_command(server, device, script, job, masked=False, slots=1):
    """The shell line that runs one job on one device of a server. masked: the server's env
    values and setup shown as *** (for logs and the dry run; they may hold secrets).
    slots: how many jobs the server runs at once, which share its CPUs (threads_per_slot)."""
    return script_command(server, device, [shell_path(script), *job_command_args(job)], masked, slots)


def pack_command(server, device, trainer, jobs, masked=False, slots=1):
    """The shell line that trains several jobs in one process (pack_train.py --json), as job_command."""
    return script_command(server, device, [shell_path(trainer), "--json", shlex.quote(json.dumps(jobs))],
                          masked, slots)


def script_command(server, device, script_args, masked, slots):
    """The server's python running script_args (quoted already) on a device, in its environment."""
    env = {name: MASK if masked else shlex.quote(str(value)) for name, value in server["env"].items()}
    # Without this every job starts one thread per core and they fight over the cores.
    threads = {} if "OMP_NUM_THREADS" in env else {"OMP_NUM_THREADS": threads_per_slot(slots)}
    # nvidia-smi numbers GPUs by PCI bus; CUDA, unless told, fastest first.
    order = {} if device == "cpu" else {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    env = {"PYTHONUNBUFFERED": "1", **threads, **order, **env,  # unbuffered: the log streams live
           "CUDA_VISIBLE_DEVICES": "<asked at run time>" if device == "auto"  # dry run, remote host
           else shlex.quote("" if device == "cpu" else str(device))}
    assignments = " ".join(f"{name}={value}" for name, value in env.items())
    return in_workdir(server, " ".join([assignments, shell_path(server["python"]), *script_args]), masked)


def intact_check(server, script, path):
    """The command that checks a base-model entry, run in the server's workdir (exit 0: intact)."""
    code = posixpath.dirname(script) or "."
    return f"{shell_path(server['python'])} -c {shlex.quote(INTACT_CHECK)} {shell_path(code)} {shell_path(path)}"


def intact_command(server, script, path):
    """The shell line that checks a base-model entry on a server (exit 0: intact)."""
    return in_workdir(server, intact_check(server, script, path))


def module_args(server, script, module, args):
    """The command that runs `python -m <module> <args>` (args shell-quoted) with the code beside
    the training script, from the workdir."""
    code = posixpath.dirname(script) or "."
    words = [shlex.quote(RUN_MODULE), shell_path(code), module, *map(shlex.quote, args)]
    return f"{shell_path(server['python'])} -c {' '.join(words)}"


def module_command(server, script, module, args):
    """module_args as a shell line run in the server's workdir after its setup."""
    return in_workdir(server, module_args(server, script, module, args))
