"""Every place a job runs has the same code, data and libraries as this checkout: what the runner
asks there (`python -m engine.provenance`, engine.provenance.answer) and how it compares the
answer with this checkout's. The SSH backend asks each host (ssh/hostsync.py); the Slurm backend
asks a compute node of the partition in one short job (slurm/preflight.py)."""
import json
import posixpath

from engine import flags, provenance

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


def local_answer(needs):
    """What this checkout answers (as engine.provenance.answer); data not here is None: it cannot be
    compared (the planning machine may hold none), the hosts have it."""
    here = provenance.answer(needs, devices=False)
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


def differences(name, local, remote, fix_code, fix_data):
    """One line per thing that differs between this checkout and an answer; fix_code, fix_data:
    what to do about code and data (say, "--sync-code copies this checkout there")."""
    lines = []
    if remote["code_hash"] != local["code_hash"]:
        lines.append(f"{name}: code differs (code hash here {local['code_hash']}, there {remote['code_hash']}); "
                     f"{fix_code}")
    for library in ("python", "torch"):
        here, there = local.get(library), remote.get(library)
        if there is not None and not same_release(library, here, there):
            lines.append(f"{name}: {library} differs (here {here}, there {there}); install the same there")
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
    return lines
