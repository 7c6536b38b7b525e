"""Every host runs the same code on the same data: checked before a run, copied on request.

check(): each host runs `provenance.py` in its workdir and answers its code hash
and the fingerprint of the data files the jobs read; any difference from this
checkout is one line naming the host, what differs, and both values.
sync(): copies the files that differ (by content hash) to a host's workdir: into
a hidden folder first, then each renamed into place, so a file on the host is
always either the old one or the new one, whole.
"""
import os
import posixpath
import shlex
import shutil
import subprocess
import tempfile
import json

import provenance
from provenance import PROJECT_DIR

DEMO_DATA_PATH = "data/demo"  # the training CLIs' default --data_path, made on first use


def project_files(root=PROJECT_DIR):
    """The files --sync-code sends: git's tracked files, or without git the code and requirements."""
    try:
        listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], capture_output=True, timeout=30)
        if listed.returncode == 0 and listed.stdout:
            names = [n for n in listed.stdout.decode().split("\0") if n]
            return [n for n in names if os.path.isfile(os.path.join(root, n))]  # deleted, not committed
    except (OSError, subprocess.SubprocessError):
        pass
    return provenance.code_files(root) + ["requirements.txt"]


def data_needs(jobs):
    """{data_path: sorted participants, or None for every participant in the folder}."""
    needs = {}
    for job in jobs:
        path = str(job.get("data_path") or DEMO_DATA_PATH)
        names = job.get("participants")
        if not names or needs.get(path, ()) is None:
            needs[path] = None
        else:
            needs[path] = sorted(set(needs.get(path) or ()) | set(map(str, names)))
    return needs


def local_answer(needs):
    """What this checkout would answer: code hash, {data_path: fingerprint or None when absent}."""
    import base_cache
    from data import DataError, discover_participants
    data = {}
    for path, names in needs.items():
        try:
            data[path] = base_cache.data_fingerprint(path, names or discover_participants(path))
        except (OSError, DataError):
            data[path] = None  # not here: the hosts are compared with each other instead
    return {"code_hash": provenance.code_hash(), "data": data}


def ask_host(host, server, script, needs):
    """The host's answer, or (None, why not)."""
    from run_distributed_training import in_workdir, shell_path
    code = posixpath.dirname(script) or "."
    answer = {"data": {}}
    for path, names in [(None, None), *needs.items()]:
        args = "" if path is None else f" --data_path {shell_path(path)}" + (
            " --participants " + " ".join(map(shlex.quote, names)) if names else "")
        result = host.run(in_workdir(server, f"{shell_path(server['python'])} "
                                             f"{shell_path(posixpath.join(code, 'provenance.py'))}{args}"))
        if not result.ok:
            last = (result.stdout.strip().splitlines() or [f"exit status {result.exit_status}"])[-1]
            return None, f"cannot tell its code version ({last[:200]}); --sync-code copies this checkout there"
        reply = json.loads(result.stdout.strip().splitlines()[-1])
        answer["code_hash"] = reply["code_hash"]
        if path is not None:
            answer["data"][path] = reply["data_fingerprint"] or reply.get("data_error")
    return answer, None


def differences(name, local, remote):
    """One line per thing that differs between this checkout and a host's answer."""
    lines = []
    if remote["code_hash"] != local["code_hash"]:
        lines.append(f"{name}: code differs (code hash here {local['code_hash']}, there {remote['code_hash']}); "
                     f"--sync-code copies this checkout there")
    for path, here in local["data"].items():
        there = remote["data"].get(path)
        if here is None or there == here:
            continue
        if isinstance(there, str):
            lines.append(f"{name}: data {path}: {there}; --sync-data copies it there")
            continue
        changed = sorted(f for f in set(here) | set(there) if here.get(f) != there.get(f))
        first = changed[0]
        lines.append(f"{name}: data {path}/{first} differs (here {str(here.get(first))[:12]}, there "
                     f"{str(there.get(first))[:12]}; {len(changed)} files differ); --sync-data copies it there")
    return lines


def remote_hashes(host, server, names):
    """{name: sha256} of the files among names that exist in the host's workdir."""
    from run_distributed_training import in_workdir
    found = {}
    for start in range(0, len(names), 200):  # keep each command line short
        quoted = " ".join(shlex.quote(n) for n in names[start:start + 200])
        result = host.run(in_workdir(server, f'for f in {quoted}; do [ -f "$f" ] && sha256sum -- "$f"; done; true'))
        for line in result.stdout.splitlines():
            digest, _, name = line.partition("  ")
            if len(digest) == 64:
                found[name] = digest
    return found


def sync(host, server, names, local_root="."):
    """Copy the files among names (relative to local_root) whose content differs on the host.
    Returns how many were copied."""
    from run_distributed_training import in_workdir, shell_path
    there = remote_hashes(host, server, names)
    changed = [n for n in names if there.get(n) != provenance.file_sha256(os.path.join(local_root, n))]
    if not changed:
        return 0
    staging = f".sync-{os.getpid()}-{host.name}".replace("/", "_")
    with tempfile.TemporaryDirectory() as tmp:
        for name in changed:
            os.makedirs(os.path.dirname(os.path.join(tmp, name)), exist_ok=True)
            shutil.copy2(os.path.join(local_root, name), os.path.join(tmp, name))
        host.put_dir(tmp, posixpath.join(server["workdir"], staging))
    folders = sorted({posixpath.dirname(n) for n in changed} - {""})
    moves = [f"mkdir -p -- {' '.join(map(shlex.quote, folders))}"] if folders else []
    moves += [f"mv -f -- {shlex.quote(posixpath.join(staging, n))} {shlex.quote(n)}" for n in changed]
    placed = host.run(in_workdir(server, f"{{ {' && '.join(moves)}; }}; status=$?; rm -rf -- "
                                         f"{shlex.quote(staging)}; exit $status"))
    if not placed.ok:
        raise OSError(f"{host.name}: could not put the copied files in place: {placed.stdout.strip()[-200:]}")
    return len(changed)
