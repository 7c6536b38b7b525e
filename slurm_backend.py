"""Run a jobs JSON on a Slurm cluster: sbatch job arrays, the same two phases, ledger and resume.

Selected by a cluster config with a "slurm" section instead of "servers":

    {"slurm": {"partition": "gpu", "time": "04:00:00", "cpus_per_task": 4, "mem": "16G",
               "gpus_per_task": 1, "max_running": 8, "setup": "source venv/bin/activate",
               "workdir": "/shared/me/personalization"},
     "script_path": "oct1_train.py"}

Phase 1 is one array with a `--mode base_only` task per base key missing from the
cache; phase 2 is one array per base key, `--dependency=afterok:<its base task>`
with `--kill-on-invalid-dep=yes`, so a failed base blocks only its own dependents;
jobs that need no base model (or whose base is cached) form one more array. Each
array's script is a `case` on SLURM_ARRAY_TASK_ID whose branches run one job
(every value shell-quoted) with its output appended to <run-dir>/logs/<job_id>.log.
Slurm grants the GPU (CUDA_VISIBLE_DEVICES). The run dir and workdir must be on
the filesystem the compute nodes share with this machine.

The ledger gets a "submitted" line per attempt (Slurm job id) and an end line
(state, exit code); a rerun skips finished jobs, watches submissions still known to
Slurm (after --detach or a lost runner) and submits the rest again.

One file of ~600 lines on purpose: the settings, the sbatch scripts, the queue
polling (squeue, then sacct or scontrol) and the watch loop are one backend that
shares nothing with the SSH scheduler but the runner's planning parts it imports.
"""
import contextlib
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

import base_cache
import fileio
import run_config
from commands import in_workdir, intact_command, job_command_args, shell_path
from run_config import (DEFAULT_SCRIPT, PROG, SECRET_NAME, ConfigError, cache_entry, needed_base, plan_jobs,
                        read_json, validate_jobs)
from run_ledger import Ledger
from run_report import print_report_headline
from scheduler import raise_interrupt

POLL_S = 0.5
SLURM_WORD = re.compile(r"^[A-Za-z0-9_.:,+=@-]+$")  # partition, account, qos, gpu type
DONE = "COMPLETED"
NOT_RETRIED = ("CANCELLED",)  # someone cancelled it on purpose: reported, not retried
GONE_AFTER_POLLS = 10  # a job neither squeue nor the accounting knows for this long is lost
UNREACHABLE_S = 120.0  # squeue failing this long ends the watch (the jobs stay queued)


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
    "cpus_per_task": (run_config._int(1), "a whole number >= 1", 1),
    "mem": (lambda v: isinstance(v, str) and re.match(r"^[0-9]+[KMGT]?$", v) is not None,
            "memory like \"16G\"", None),
    "gpus_per_task": (run_config._int(0), "a whole number >= 0 (0: CPU only)", 1),
    "gpu_option": (lambda v: v in ("gres", "gpus"), "\"gres\" (--gres=gpu:N) or \"gpus\" (--gpus=N)", "gres"),
    "gpu_type": (_word, "a GPU type like \"a100\"", None),
    "max_running": (run_config._int(1), "a whole number >= 1 (the array throttle %N)", None),
    "sbatch_args": (_args, "a list of sbatch options, each starting with '-'", []),
    "setup": (lambda v: isinstance(v, str) and "\n" not in v, "a one-line shell command", ""),
    "python": (run_config._text, "a Python executable", "python3"),
    "workdir": (run_config._text, "a folder on the shared filesystem", "."),
}
TOP_FIELDS = ("slurm", "script_path")


def is_slurm_config(path):
    """True when the cluster config has a "slurm" section (bad files are left to the caller)."""
    try:
        data = read_json(path, "cluster config")
    except ConfigError:
        return False
    return isinstance(data, dict) and "slurm" in data


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
    for key in ("setup", "sbatch_args"):
        if SECRET_NAME.search(json.dumps(settings[key])):
            raise ConfigError(f"{path}: slurm.{key}: no secrets in config files (they would be "
                              f"written into every job script); set them in the cluster's environment")
    script = data.get("script_path", DEFAULT_SCRIPT)
    if not run_config._text(script):
        raise ConfigError(f"{path}: \"script_path\" must be a non-empty string")
    settings["workdir"] = os.path.abspath(os.path.expanduser(settings["workdir"]))
    return settings, script


# ------------------------------------------------------------- scripts and sbatch lines


def sbatch_options(settings, timeout=None):
    """The sbatch options every array of the run gets."""
    options = [f"--{name.replace('_', '-')}={settings[name]}"
               for name in ("partition", "account", "qos", "time", "cpus_per_task", "mem") if settings[name]]
    if timeout:  # --timeout wins over the config's time limit
        options = [o for o in options if not o.startswith("--time=")] + [f"--time={math.ceil(timeout / 60)}"]
    gpus = settings["gpus_per_task"]
    if gpus:
        typed = f"{settings['gpu_type']}:{gpus}" if settings["gpu_type"] else str(gpus)
        options.append(f"--gres=gpu:{typed}" if settings["gpu_option"] == "gres" else f"--gpus={typed}")
    return options + settings["sbatch_args"]


@dataclass
class Item:
    """One job of the run (a phase-1 base job or a jobs-file job) and its current submission."""
    job: dict
    attempts: int = 0  # submissions so far, earlier runs included
    failures: int = 0  # failed attempts in this run
    builds: str = None  # the base key it trains
    needs: str = None  # the base key it waits for
    slurm_id: str = None  # "123_4" while submitted
    status: str = "waiting"  # waiting, queued, ok, failed, cancelled, blocked
    state: str = None  # Slurm's last word
    exit_status: int = None

    @property
    def job_id(self):
        return self.job["job_id"]


def task_line(item, settings, script, log):
    """The shell branch of one array task: output to the job's log, then the job."""
    job = dict(item.job, overwrite=True) if item.attempts and not item.builds else item.job
    env = "PYTHONUNBUFFERED=1" + ("" if settings["gpus_per_task"] else " CUDA_VISIBLE_DEVICES=")
    line = in_workdir(settings, " ".join([env, shell_path(settings["python"]), shell_path(script),
                                          *job_command_args(job)]))
    if item.builds:  # a base job succeeds only when its entry is complete under the key planned
        entry = cache_entry(item.job, item.builds)
        line += " && " + intact_command(settings, script, entry)
    header = (f"=== {item.job_id} attempt {item.attempts + 1}: slurm job "
              f"${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}} on $(hostname), "
              f"CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES-}} ===")
    return f"exec >>{shlex.quote(str(log))} 2>&1; echo \"{header}\"; {line}"


def array_script(items, settings, script, log_dir):
    branches = [f"  {i}) {task_line(item, settings, script, log_dir / f'{item.job_id}.log')} ;;"
                for i, item in enumerate(items)]
    return "\n".join(["#!/bin/bash", "# written by run_distributed_training.py: one job per array task",
                      'case "$SLURM_ARRAY_TASK_ID" in', *branches,
                      '  *) echo "no job for array task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;', "esac", ""])


def sbatch_argv(name, n, options, out_dir, max_running, after=None):
    argv = ["sbatch", "--parsable", f"--job-name={name}", f"--array=0-{n - 1}"
            + (f"%{max_running}" if max_running else ""), f"--output={out_dir}/%A_%a.out"]
    if after:
        argv += [f"--dependency=afterok:{after}", "--kill-on-invalid-dep=yes"]
    return argv + options


def phase_arrays(items, everything=None):
    """[(name, members, base item or None)] for items to submit: phase 1 (their base jobs), then
    one array per base key, after that key's base item (found among everything), then the rest."""
    bases = {i.builds: i for i in everything or items if i.builds}
    arrays = [("base", [i for i in items if i.builds], None)]
    for key in dict.fromkeys(i.needs for i in items if i.needs):
        arrays.append((f"after-{key}", [i for i in items if i.needs == key], bases.get(key)))
    arrays.append(("jobs", [i for i in items if not i.builds and not i.needs], None))
    return [(name, members, base) for name, members, base in arrays if members]


# ------------------------------------------------------------- Slurm's view of the jobs


def slurm(*argv):
    return subprocess.run(argv, capture_output=True, text=True)


def first_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


class SlurmUnreachable(Exception):
    """squeue failed (the controller is down or unreachable)."""


def queue_states():
    """{job id ("123_4" for an array task): state} of this user's jobs in squeue."""
    out = slurm("squeue", "--me", "-h", "-r", "-o", "%i|%T")
    if out.returncode:
        raise SlurmUnreachable(f"squeue: {first_line(out.stderr)}")
    return dict(line.split("|", 1) for line in out.stdout.split())


def parse_sacct(text):
    """sacct -P -o JobID,State,ExitCode lines -> {id: (state, exit status)}."""
    states = {}
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) == 3 and "[" not in fields[0]:
            states[fields[0]] = (fields[1].split()[0] if fields[1] else "UNKNOWN",
                                 int(fields[2].split(":")[0]) if fields[2] else None)
    return states


def parse_scontrol(text):
    """`scontrol show job -o` lines -> {id: (state, exit status)} (array tasks as "123_4")."""
    states = {}
    for line in text.splitlines():
        fields = dict(token.split("=", 1) for token in line.split() if "=" in token)
        if "JobState" not in fields:
            continue
        job = (f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}" if "ArrayTaskId" in fields
               else fields["JobId"])
        states[job] = (fields["JobState"], int(fields.get("ExitCode", "0:0").split(":")[0]))
    return states


def final_states(ids):
    """{id: (state, exit status)} for jobs that left the queue: sacct where accounting runs,
    else `scontrol show job` (jobs stay there MinJobAge seconds after they end)."""
    arrays = sorted({job.split("_")[0] for job in ids})
    out = slurm("sacct", "-n", "-P", "-X", "-j", ",".join(arrays), "-o", "JobID,State,ExitCode")
    if out.returncode == 0:
        return parse_sacct(out.stdout)
    states = {}
    for array in arrays:
        states.update(parse_scontrol(slurm("scontrol", "show", "job", "-o", array).stdout))
    return states


# ------------------------------------------------------------- the run


class SubmitError(Exception):
    """sbatch refused a submission; the message is its one-line reason."""


class SlurmRun:
    def __init__(self, items, settings, script, run_dir, ledger, retries=0, timeout=None, quiet=False):
        self.items, self.settings, self.script = items, settings, script
        self.run_dir, self.ledger, self.retries, self.quiet = run_dir, ledger, retries, quiet
        self.log_dir, self.out_dir = run_dir / "logs", run_dir / "slurm"
        self.options = sbatch_options(settings, timeout)
        self.submitted = []  # every array id this run submitted
        self.missing = {}  # id: polls it has been unknown to Slurm
        self.started = time.time()

    def say(self, message, important=False):
        if important or not self.quiet:
            tqdm.write(message, file=sys.stderr)

    # -- submitting

    def submit(self, name, members, after=None):
        """One array of members; after: the base item whose task they wait for."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f".{name}.sh"
        path.write_text(array_script(members, self.settings, self.script, self.log_dir))
        argv = sbatch_argv(name, len(members), self.options, self.out_dir, self.settings["max_running"],
                           after.slurm_id if after else None)
        out = slurm(*argv, str(path))
        if out.returncode:
            raise SubmitError(f"sbatch refused array {name} ({len(members)} tasks): {first_line(out.stderr)}")
        array = out.stdout.strip().split(";")[0]
        os.replace(path, self.out_dir / f"{array}.sh")  # sbatch keeps its own copy; this one is for reading
        self.submitted.append(array)
        for i, item in enumerate(members):
            item.slurm_id, item.status, item.state = f"{array}_{i}", "queued", "PENDING"
            item.attempts += 1
            self.ledger.write({"job_id": item.job_id, "status": "submitted", "slurm_job": item.slurm_id,
                               "attempt": item.attempts, "submitted": time.time(),
                               "log": str(self.log_dir / f"{item.job_id}.log"),
                               **({"base_key": item.builds or item.needs} if item.builds or item.needs else {})})
        return array

    def submit_waiting(self):
        """Submit every waiting item; a dependent waits for its base's task while that is queued."""
        for name, members, base in phase_arrays([i for i in self.items if i.status == "waiting"], self.items):
            self.submit(name, members, after=base if base and base.status == "queued" else None)

    # -- watching

    def active(self):
        return {item.slurm_id: item for item in self.items if item.status == "queued"}

    def poll(self):
        """Ask Slurm once; handle every job that ended."""
        active = self.active()
        queued = queue_states()
        for job, state in queued.items():
            if job in active:
                active[job].state = state
        gone = [job for job in active if job not in queued]
        ended = final_states(gone) if gone else {}
        # Bases first: a failed base withdraws its dependents before their own end is read.
        for job in sorted(gone, key=lambda j: not active[j].builds):
            item = active[job]
            if item.slurm_id != job:
                continue  # withdrawn meanwhile
            if job in ended and ended[job][0] not in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING"):
                self.missing.pop(job, None)
                self.finish(item, *ended[job])
            else:
                self.missing[job] = self.missing.get(job, 0) + 1
                if self.missing[job] >= GONE_AFTER_POLLS:
                    self.finish(item, "UNKNOWN", None)

    def finish(self, item, state, exit_status):
        job, ok = item.slurm_id, state == DONE and exit_status == 0
        item.state, item.exit_status, item.slurm_id = state, exit_status, None
        retry = not ok and state not in NOT_RETRIED and item.failures < self.retries
        status = "ok" if ok else "cancelled" if state in NOT_RETRIED else "failed"
        self.ledger.write({"job_id": item.job_id, "status": status, "slurm_job": job,
                           "state": state, "exit_status": exit_status, "end": time.time(),
                           "attempt": item.attempts})
        if ok:
            item.status = "ok"
            return
        item.failures += 1
        self.say(f"{item.job_id}: {state} (exit {exit_status})" + (", retrying" if retry else ""))
        dependents = [i for i in self.items if item.builds and i.needs == item.builds and i.status == "queued"]
        self.withdraw(dependents, f"base {item.builds} {state}")
        if retry:
            item.status = "waiting"
            self.submit(f"retry-{item.job_id}", [item])
            if dependents:
                self.submit(f"after-{item.builds}", dependents, after=item)
            return
        item.status = status
        for dependent in dependents:
            dependent.status = "blocked"
            self.ledger.write({"job_id": dependent.job_id, "status": "blocked", "base_key": item.builds,
                               "error": f"blocked by base {item.builds}", "end": time.time()})

    def withdraw(self, members, reason):
        """Cancel submissions that must not run (yet); their ledger lines say so."""
        if not members:
            return
        slurm("scancel", *[m.slurm_id for m in members])
        for m in members:
            self.ledger.write({"job_id": m.job_id, "status": "withdrawn", "slurm_job": m.slurm_id,
                               "error": reason, "end": time.time()})
            m.slurm_id, m.status = None, "waiting"

    def watch(self):
        """Poll until every item has ended; Ctrl-C cancels what is queued or running."""
        bar = tqdm(total=len(self.items), desc="jobs", unit="job", disable=self.quiet, file=sys.stderr)
        failing_since = None
        try:
            while self.active():
                try:
                    self.poll()
                    failing_since = None
                except SlurmUnreachable as e:  # a controller restart is brief; ride it out
                    failing_since = failing_since or time.time()
                    if time.time() - failing_since > UNREACHABLE_S:
                        raise
                    self.say(f"warning: {e}; asking again", important=True)
                counts = {s: sum(i.status == s for i in self.items) for s in ("ok", "failed", "blocked")}
                running = sum(i.state == "RUNNING" for i in self.active().values())
                bar.n = len(self.items) - len(self.active())
                bar.set_postfix(done=counts["ok"], failed=counts["failed"], blocked=counts["blocked"],
                                running=running, pending=len(self.active()) - running, refresh=True)
                if self.active():
                    time.sleep(POLL_S)
        finally:
            bar.close()

    def cancel_all(self, wait_s=30):
        """scancel every array this run submitted or adopted; wait until squeue no longer lists them."""
        active = self.active()
        arrays = sorted({job.split("_")[0] for job in active} | set(self.submitted))
        if arrays:
            slurm("scancel", *arrays)
        for item in active.values():
            self.ledger.write({"job_id": item.job_id, "status": "cancelled", "slurm_job": item.slurm_id,
                               "state": "CANCELLED", "error": "interrupted", "end": time.time(),
                               "attempt": item.attempts})
            item.status, item.slurm_id = "cancelled", None
        deadline = time.time() + wait_s
        try:
            while time.time() < deadline and any(job.split("_")[0] in arrays for job in queue_states()):
                time.sleep(0.2)
        except SlurmUnreachable as e:
            self.say(f"warning: {e}; cannot confirm the cancel: check squeue", important=True)


# ------------------------------------------------------------- resume and CLI


def make_items(jobs, bases, cached, history):
    """Items for the base jobs to train and the jobs to run, with earlier submissions counted."""
    submitted = {}
    for r in history:
        if r.get("status") == "submitted":
            submitted.setdefault(r["job_id"], []).append(r["slurm_job"])
    items = [Item(job, builds=key) for key, job in bases.items() if key not in cached]
    items += [Item(job, needs=None if needed_base(job) in cached else needed_base(job)) for job in jobs]
    for item in items:
        item.attempts = len(submitted.get(item.job_id, []))
    return items


def open_submissions(history):
    """{job_id: slurm job} of submissions the ledger has no end line for (detached or lost)."""
    closed = {r.get("slurm_job") for r in history if r.get("status") != "submitted"}
    return {r["job_id"]: r["slurm_job"] for r in history
            if r.get("status") == "submitted" and r["slurm_job"] not in closed}


def adopt(run, history):
    """Watch the submissions of an earlier run that Slurm still knows instead of submitting again."""
    open_ = open_submissions(history)
    if not open_:
        return 0
    known = set(queue_states()) | set(final_states(list(open_.values())))
    for item in run.items:
        job = open_.get(item.job_id)
        if job in known:
            item.slurm_id, item.status = job, "queued"
        elif job:
            run.ledger.write({"job_id": item.job_id, "status": "lost", "slurm_job": job, "end": time.time()})
    # A dependent waits on its base's task: if that base is to be submitted anew, so is it.
    new_bases = {item.builds for item in run.items if item.builds and item.status == "waiting"}
    run.withdraw([i for i in run.items if i.status == "queued" and i.needs in new_bases], "base resubmitted")
    return len(run.active())


def print_plan(items, settings, script, run_dir, timeout, cached):
    """The dry run: each array's exact sbatch line and script, then the phases in figures."""
    options = sbatch_options(settings, timeout)
    arrays = phase_arrays(items)
    base_tasks = [i for i in items if i.builds]
    for name, members, base in arrays:
        after = f"<base array>_{base_tasks.index(base)}" if base else None
        print(f"# array {name}: {len(members)} tasks" + (f", after {base.job_id}" if base else ""))
        print(shlex.join(sbatch_argv(name, len(members), options, run_dir / "slurm", settings["max_running"],
                                     after) + [f"{run_dir}/slurm/<array id>.sh"]))
        print(array_script(members, settings, script, run_dir / "logs"))
    bases = sum(bool(i.builds) for i in items)
    dependents = sum(bool(i.needs) for i in items)
    print(f"# phase 1: {bases} base tasks in {int(bases > 0)} array; phase 2: {dependents} dependent tasks in "
          f"{sum(base is not None for _, _, base in arrays)} arrays, each after its own base task "
          f"(+ {len(items) - bases - dependents} independent); {len(arrays)} arrays, {len(items)} tasks, "
          f"{dependents} dependencies" + (f"; {len(cached)} base models already in the cache" if cached else ""))


def summary_lines(run, skipped, cached):
    """The closing summary: jobs by outcome, the base models in figures, what failed and why."""
    jobs = [i for i in run.items if not i.builds]
    by = {s: [i for i in run.items if i.status == s] for s in ("ok", "failed", "cancelled", "blocked")}
    lines = [f"{sum(not i.builds for i in by['ok'])} done, {len(by['failed'])} failed, "
             f"{len(by['cancelled'])} cancelled, {len(by['blocked'])} blocked, {skipped} skipped "
             f"(finished earlier), {sum(i.status in ('waiting', 'queued') for i in jobs)} not run; "
             f"{time.time() - run.started:.1f} s"]
    keys = {i.builds for i in run.items if i.builds} | set(cached)
    if keys:
        lines.append(f"base models: {sum(bool(i.builds) for i in by['ok'])} trained for {len(keys)} distinct "
                     f"keys ({len(cached)} already in the cache), against "
                     f"{sum(i.job.get('base_key') in keys for i in jobs)} without sharing")
    for status in ("failed", "cancelled"):
        if by[status]:
            lines.append(f"{status} jobs:")
            lines += [f"  {i.job_id}  {i.state} (exit {i.exit_status})  {run.log_dir / f'{i.job_id}.log'}"
                      for i in by[status]]
    if by["blocked"]:
        lines.append("blocked jobs (their base model failed; a rerun tries again):")
        for key in sorted({i.needs for i in by["blocked"]}):
            n = sum(i.needs == key for i in by["blocked"])
            lines.append(f"  {n} blocked by base {key}  {run.log_dir / f'base-{key}.log'}")
    return lines


def write_log_file(path, run, args, skipped):
    """The JSON report of --log-file: totals and, per job, its last Slurm job, state and exit code."""
    jobs = [{"job_id": i.job_id, "status": i.status, "state": i.state, "exit_status": i.exit_status,
             "attempts": i.attempts, "log": str(run.log_dir / f"{i.job_id}.log")} for i in run.items]
    totals = {status: sum(i.status == status for i in run.items) for status in ("ok", "failed", "cancelled",
                                                                                "blocked", "queued")}
    report = {"backend": "slurm", "cluster_config": args.cluster_config, "jobs_config": args.jobs_config,
              "started": run.started, "wall_s": time.time() - run.started, "arrays": run.submitted,
              "totals": dict(totals, jobs=len(run.items) + skipped, skipped=skipped), "jobs": jobs}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fileio.write_atomic(path, json.dumps(report, indent=1))


def main(args):
    """run_distributed_training.py with a Slurm cluster config; returns the exit status."""
    run_dir = Path(args.run_dir or Path("runs", Path(args.jobs_config).stem)).absolute()
    history = Ledger.read(run_dir / "ledger.jsonl")
    try:
        settings, script = load_slurm_config(args.cluster_config)
        jobs, todo, bases = plan_jobs(args.jobs_config, run_dir / "ledger.jsonl", history, args.resume)
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    script = args.script_path or script
    workdir = Path(settings["workdir"])
    try:  # the jobs through the script's own parser, as the SSH runner does
        note = validate_jobs(jobs, args.jobs_config, str(workdir / script))
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    if note and not args.quiet:
        print(note, file=sys.stderr)
    cached = {key: job for key, job in bases.items()
              if base_cache.entry_intact(workdir / cache_entry(job, key))}
    items = make_items(todo, bases, cached, history)
    skipped = len(jobs) - len(todo)
    if args.dry_run:
        print_plan(items, settings, script, run_dir, args.timeout, cached)
        return 0
    if not items:
        print("nothing to do", file=sys.stderr)
        return finish_run(jobs, workdir, 0)
    ledger = Ledger(run_dir / "ledger.jsonl")
    run = SlurmRun(items, settings, script, run_dir, ledger, retries=args.retries, timeout=args.timeout,
                   quiet=args.quiet)
    for key, job in cached.items():
        ledger.write({"job_id": job["job_id"], "status": "cached", "base_key": key, "end": time.time()})
    previous = signal.signal(signal.SIGTERM, raise_interrupt)  # `kill <runner>` stops like Ctrl-C
    try:
        if args.resume:
            adopted = adopt(run, history)
            if adopted:
                print(f"resume: watching {adopted} jobs already in Slurm", file=sys.stderr)
        run.submit_waiting()
        if args.detach:
            print(f"detached: {len(run.active())} jobs queued in Slurm (arrays {', '.join(run.submitted)}); "
                  f"rerun the same command without --detach to watch them", file=sys.stderr)
            return 0
        run.watch()
    except SlurmUnreachable as e:
        print(f"{PROG}: error: {e} for {UNREACHABLE_S:.0f} s; submitted jobs stay in Slurm: rerun the "
              f"same command to watch them", file=sys.stderr)
        return 3
    except SubmitError as e:  # at the start or for a retry: nothing half-submitted stays queued
        run.cancel_all()
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: cancelling the submitted jobs (scancel) ...", file=sys.stderr)
        run.cancel_all()
        print("\n".join(summary_lines(run, skipped, cached)))
        print(f"interrupted; rerun the same command to finish the rest (ledger {ledger.path})", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        ledger.close()
        write_log_file(args.log_file or run_dir / "run_log.json", run, args, skipped)
    print("\n".join(summary_lines(run, skipped, cached)))
    return finish_run(jobs, workdir, 0 if all(i.status == "ok" for i in items) else 1)


def finish_run(jobs, workdir, status):
    with contextlib.chdir(workdir):  # the jobs' result folders are relative to it
        print_report_headline(jobs)
    return status
