"""The runner's jobs: the jobs file loaded and checked (one-line errors naming the job and the
flag), each job checked by the training script's own parser, what the ledger says is
finished, and the base-model plan (phase 1: one base_only job per distinct base key the
jobs need).

No torch and no paramiko here (the parser check imports the training CLI only when asked).
"""
import hashlib
import json
import posixpath
import re
import sys
from pathlib import Path

from engine import flags
from engine.fileio import ConfigError, read_json
from engine.flags import NOT_FLAGS
from runner.folders import missing_results

JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # it names the log file
FLAG_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
CONTROL_CHAR = re.compile(r"[\x00-\x1f\x7f]")  # NUL, newline, escape ...
BASE_CACHE_DIR = flags.BY_NAME["base_cache_dir"].default  # the training CLI's default --base_cache_dir


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
        if "prefix" in job and flags.prefix_problem(job["prefix"]):
            raise ConfigError(f"{where}.prefix: {flags.prefix_problem(job['prefix'])}")
        if "job_id" not in job:
            settings = {k: v for k, v in job.items() if k not in NOT_FLAGS}
            job["job_id"] = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
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





def needed_base(job):
    """The base key a job must wait for, or None (no base model, or one it trains alone)."""
    return None if job.get("no_base_cache") else job.get("base_key")


def cache_entry(job, key, workdir=""):
    """Where the training CLI keeps the entry of `key` for this job: relative to this folder
    (the local cache), or under a host's workdir."""
    return posixpath.join(workdir, job.get("base_cache_dir") or BASE_CACHE_DIR, key)


def plan_jobs(jobs_config, ledger_path, history, resume, workdir="."):
    """(every job, those still to do, their base jobs): a job whose last word in the ledger
    (its history, read from ledger_path) is "ok" is done, unless resume is off or its result
    folder is gone from workdir. Says on stderr how many it skips."""
    jobs = load_jobs(jobs_config)
    finished = {r.get("job_id") for r in history if r.get("status") == "ok"} if resume else set()
    finished &= {job["job_id"] for job in jobs}  # not base jobs: the cache says which base models are there
    finished -= missing_results(finished, history, workdir)
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
    """Every job through the training script's own parser, as the grid does, so a bad
    flag fails here (exit 2) instead of on every host. Returns a note when the script is not
    here to ask (it may exist on the hosts only), else None."""
    from runner import grid
    path = Path(script)
    # Only the project's CLIs are imported to ask: any other script could run on import.
    if not path.is_file() or "def build_parser(" not in path.read_text(errors="replace"):
        return f"jobs not checked before starting: {script} is not here or has no build_parser()"
    try:
        parser = grid.load_script_parser(script)
        for i, job in enumerate(jobs):
            grid.parse_job(parser, job, f"{jobs_path}: job {i} ({job['job_id']})")
    except grid.GridError as e:
        raise ConfigError(str(e)) from None
    return None
