"""The backends a run can use, picked from the cluster config (registry):

    kind = backend_for(path)                     # a "slurm" section: Slurm; else the SSH/local hosts
    config, script, workdir = load(args, kind)   # the config's settings; the script; where results land
    kind.dry_run(args, config, plan, script, run_dir)
    backend = kind.make(args, config, plan, script, run_dir, history, say)
    status = runner.driver.drive(backend, ...)   # the one loop, summary, run log and exit status

A backend's package (runner/ssh/, runner/slurm/) is imported only when it is chosen: paramiko only
for SSH. Its object implements the methods runner/driver.py lists (open, capacity, start, poll,
wait, pending, cancel, stop, close, figures): it starts, watches, cancels and fetches tasks and
reports how each ended (runner.ending), while the planner decides. A fourth backend is one more
entry here, with its package.
"""
from pathlib import Path

from engine.fileio import ConfigError
from runner.config import is_slurm_config, load_cluster_config
from runner.packing import PACK_SCRIPT, trainer_path


class Hosts:
    """SSH servers and this machine (a server with "local": true), one slot per device."""
    name = "hosts"
    options = ("sync_code", "sync_data", "accept_new_hosts")  # runner options for this backend only
    early = False  # a task starts only once its base model is in the cache
    absolute_run_dir = False

    @staticmethod
    def elsewhere(given):
        return f"{', '.join(given)}: for SSH servers only (a Slurm cluster config names one shared workdir)"

    @staticmethod
    def load(args):
        config = load_cluster_config(args.cluster_config)
        forced = [f"servers {s['name']}" for s in config["servers"] if s["pack"] != "auto" and s["pack"] > 1]
        return config, args.script_path or config["script_path"], Path("."), forced

    @staticmethod
    def dry_run(args, config, plan, script, run_dir):
        from runner.ssh.dry_run import print_plan
        print_plan(config["servers"], plan.tasks, script, trainer_path(script), plan.cached)

    @staticmethod
    def make(args, config, plan, script, run_dir, history, say):
        from runner.ssh.backend import HostOptions, SshBackend  # paramiko, only for SSH
        options = HostOptions(timeout=args.timeout, down_timeout=args.down_timeout,
                              accept_new_hosts=args.accept_new_hosts, sync_code=args.sync_code,
                              sync_data=args.sync_data, allow_mismatch=args.allow_mismatch,
                              sync_env=args.sync_env, cluster_config=args.cluster_config)
        return SshBackend(config, plan, script, say, options)


class Slurm:
    """A Slurm cluster: job arrays in one shared workdir."""
    name = "slurm"
    options = ("detach",)
    early = True  # afterok: a task waits in the queue for its base task, so a pack holds one base key
    absolute_run_dir = True  # the compute nodes write there from the workdir

    @staticmethod
    def elsewhere(given):
        return f"{', '.join(given)} needs a Slurm cluster config (SSH jobs end with the runner)"

    @staticmethod
    def load(args):
        from runner.slurm.config import load_slurm_config
        settings, script = load_slurm_config(args.cluster_config)
        forced = ["the slurm section"] if settings["pack"] != "auto" and settings["pack"] > 1 else []
        return settings, args.script_path or script, Path(settings["workdir"]), forced

    @staticmethod
    def dry_run(args, config, plan, script, run_dir):
        from runner.slurm.dry_run import print_plan
        print_plan(plan, config, script, run_dir, args.timeout)

    @staticmethod
    def make(args, config, plan, script, run_dir, history, say):
        from runner.slurm.backend import SlurmBackend
        return SlurmBackend(plan, config, script, run_dir, say, timeout=args.timeout,
                            resume=history if args.resume else None, detach=args.detach,
                            allow_mismatch=args.allow_mismatch, sync_env=args.sync_env)


BACKENDS = (Hosts, Slurm)


def backend_for(path):
    """The backend a cluster config asks for."""
    return BACKENDS[1] if is_slurm_config(path) else BACKENDS[0]


def options_elsewhere(args, kind):
    """A one-line refusal of runner options given for another backend than this one, or None."""
    for other in BACKENDS:
        given = [f"--{name.replace('_', '-')}" for name in other.options if getattr(args, name, False)]
        if other is not kind and given:
            return other.elsewhere(given)
    return None


def load(args, kind):
    """(config, script, workdir here): the backend's settings; packs asked for need pack_train.py."""
    config, script, workdir, forced = kind.load(args)
    if forced and not trainer_path(script):
        raise ConfigError(f"{args.cluster_config}: {', '.join(forced)} set \"pack\", but only "
                          f"{PACK_SCRIPT} jobs can be packed (the script is {script})")
    return config, script, workdir
