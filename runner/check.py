"""Every place a job runs has the same code, data and libraries as this checkout: what the runner
asks there (`python -m engine.provenance`, engine.provenance.answer) and how it compares the
answer with this checkout's. The SSH backend asks each host (ssh/hostsync.py); the Slurm backend
asks a compute node of the partition in one short job (slurm/preflight.py)."""
import json
import os
import posixpath
from pathlib import Path

from engine import flags, provenance, user_model
from engine.fileio import ConfigError
from runner import requirements

CHECK_MODULE = "engine.provenance"  # run as `python -m` with the code beside the training script


def is_project_script(script):
    """Whether the script is one of this project's (a lab's own has no engine.provenance beside it
    to answer the check)."""
    return posixpath.basename(script) in provenance.code_files()


def data_needs(jobs):
    """{data_path: sorted participants, or None for every participant in the folder}."""
    needs = {}
    for job in jobs:
        path = str(job.get("data_path") or flags.DEMO_DATA_PATH)
        names = job.get("participants")
        if not names or needs.get(path, ()) is None:
            needs[path] = None
        else:
            needs[path] = sorted(set(needs.get(path) or ()) | set(map(str, names)))
    return needs


def model_files(jobs):
    """The source files of the jobs' own models (engine.user_model), relative to the folder the
    runner runs in, which stands for every host's workdir (as a job's data_path does): the check
    compares them on every host and --sync-code copies them. A model package found outside this
    folder (installed) is the hosts' environment, as torch is. ValueError (one line) for a FILE.py
    that is absolute or climbs out with '..', or is not here."""
    here, files = Path.cwd().resolve(), set()
    for spec in sorted({str(job["model"]) for job in jobs if user_model.is_spec(job.get("model") or "")}):
        try:
            where, _ = user_model.parts(spec)
            if where.endswith(".py") and (os.path.isabs(where) or ".." in Path(where).parts):
                raise ValueError(f"--model {spec}: {where} is not inside the folder the jobs run from (every "
                                 f"host's workdir); give a relative path without '..'")
            path = Path(user_model.source_file(spec)).resolve()
        except ConfigError as error:
            raise ValueError(str(error)) from None
        if path.is_relative_to(here):
            files.add(path.relative_to(here).as_posix())
    return sorted(files)


def check_arguments(needs, models, packages=()):
    """The arguments of `python -m engine.provenance` for these data needs, model files and packages
    (the names requirements.txt pins: their installed versions are asked)."""
    return (["--needs", json.dumps(needs)] + (["--models", json.dumps(models)] if models else [])
            + (["--packages", json.dumps(sorted(packages))] if packages else []))


def local_answer(needs, models=()):
    """What this checkout answers (as engine.provenance.answer); data not here is None: it cannot be
    compared (the planning machine may hold none), the hosts have it."""
    here = provenance.answer(needs, devices=False, models=models)
    here["data"] = {path: None if "error" in answer else answer for path, answer in here["data"].items()}
    return here


def read_answer(output, fix):
    """(the answer a host printed last, None), or (None, why not). fix: how to make it answer."""
    lines = output.strip().splitlines()
    try:
        return json.loads(lines[-1]), None
    except (ValueError, IndexError):
        last = (lines or ["no output"])[-1]
        return None, f"cannot tell its code version (python -m {CHECK_MODULE}: {last[:200]}); {fix}"


def same_release(library, here, there):
    """Python by major.minor; torch by its release, whatever the build (2.13.0+cu126 and 2.13.0+cpu)."""
    if library == "python":
        return here.rsplit(".", 1)[0] == there.rsplit(".", 1)[0]
    return here.split("+")[0] == there.split("+")[0]


def differences(name, local, remote, fix_code, fix_data, pins=None, fix_env=""):
    """One line per thing that differs between this checkout and an answer; fix_code, fix_data,
    fix_env: what to do about code, data and packages (say, "--sync-code copies this checkout
    there"); pins: requirements.txt's ({name: version}), which the answer's packages must meet."""
    lines, told = [], set()
    if remote["code_hash"] != local["code_hash"]:
        lines.append(f"{name}: code differs (code hash here {local['code_hash']}, there {remote['code_hash']}); "
                     f"{fix_code}")
    for library in ("python", "torch"):
        here, there = local.get(library), remote.get(library)
        if there is not None and not same_release(library, here, there):
            told.add(library)
            lines.append(f"{name}: {library} differs (here {here}, there {there}); install the same there")
    missed = [item for item in requirements.unmet(pins or {}, remote.get("packages")) if item[0] not in told]
    if missed:
        lines.append(f"{name}: packages differ ({requirements.describe(missed)}); {fix_env}")
    for path, here in local["data"].items():
        there = remote["data"].get(path) or {"error": "no answer"}
        if here is None or there == here:
            continue
        if "error" in there:
            lines.append(f"{name}: data {path}: {there['error']}; {fix_data}")
            continue
        changed = sorted(f for f in set(here) | set(there) if here.get(f) != there.get(f))
        first = changed[0]
        lines.append(f"{name}: data {path}/{first} differs (here {str(here.get(first))[:12]}, there "
                     f"{str(there.get(first))[:12]}; {len(changed)} files differ); {fix_data}")
    for path, here in local.get("models", {}).items():
        there = remote.get("models", {}).get(path, {"error": "no answer"})
        if there != here:
            why = there["error"] if isinstance(there, dict) else f"here {here[:12]}, there {there[:12]}"
            lines.append(f"{name}: model file {path} differs ({why}); {fix_code}")
    return lines
