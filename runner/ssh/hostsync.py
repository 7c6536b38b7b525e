"""Every host runs the same code on the same data with the same packages: checked before a run,
copied or installed on request.

check: each host runs `python -m engine.provenance` in its workdir and answers its code hash,
the fingerprint of the data files the jobs read, its libraries and the versions of the packages
requirements.txt pins; any difference from this checkout is one line naming the host, what
differs, and both values (runner.check).
sync(): copies the files that differ (by content hash) to a host's workdir: into
a hidden folder first, then each renamed into place, so a file on the host is
always either the old one or the new one, whole.
install(): --sync-env, requirements.txt installed with pip in the host's setup environment, its
output shown line by line under the host's name; then the host is asked again.
"""
import os
import posixpath
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from engine import provenance
from engine.provenance import PROJECT_DIR
from runner import requirements
from runner.check import CHECK_MODULE, check_arguments, data_needs, differences, local_answer, model_files, read_answer
from runner.commands import in_workdir, module_command, shell_path
from runner.ssh.hosts import last_line
from runner.ssh.shell import HostRefused

FIX_CODE = "--sync-code copies this checkout there"
FIX_DATA = "--sync-data copies it there"
FIX_ENV = "--sync-env installs this checkout's requirements.txt there"
INSTALL_TIMEOUT_S = 3600.0  # pip may download torch


def project_files(root=PROJECT_DIR):
    """The files --sync-code sends: the files git tracks, and the new ones it does not ignore (so
    the code hash there equals the one here); without git, the code and requirements."""
    try:
        listed = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                                 "--exclude-standard"], capture_output=True, timeout=30)
        if listed.returncode == 0 and listed.stdout:
            names = [n for n in listed.stdout.decode().split("\0") if n]
            return [n for n in names if os.path.isfile(os.path.join(root, n))]  # deleted, not committed
    except (OSError, subprocess.SubprocessError):
        pass
    return provenance.code_files(root) + ["requirements.txt"]


def ask_host(host, server, script, needs, models=(), packages=()):
    """The host's answer (engine.provenance.answer), or (None, why not)."""
    result = host.run(module_command(server, script, CHECK_MODULE, check_arguments(needs, list(models), packages)))
    return read_answer(result.stdout if result.stdout.strip() else f"exit status {result.exit_status}", FIX_CODE)


def in_folder(server, line):
    """A shell line run in the server's workdir without its setup (which a fresh workdir may
    not support yet); a missing workdir makes the line fail, as an empty one would answer."""
    return f"cd {shell_path(server['workdir'])} && {line}"


def remote_hashes(host, server, names):
    """{name: sha256} of the files among names that exist in the host's workdir."""
    found = {}
    for start in range(0, len(names), 200):  # keep each command line short
        quoted = " ".join(shlex.quote(n) for n in names[start:start + 200])
        result = host.run(in_folder(server, f'for f in {quoted}; do [ -f "$f" ] && sha256sum -- "$f"; done; true'))
        for line in result.stdout.splitlines():
            digest, _, name = line.partition("  ")
            if len(digest) == 64:
                found[name] = digest
    return found


def local_hashes(names, local_root="."):
    """{name: sha256} of files relative to local_root."""
    return {n: provenance.file_sha256(os.path.join(local_root, n)) for n in names}


def sync(host, server, names, local_root=".", here=None):
    """Copy the files among names (relative to local_root) whose content differs on the host.
    here: their local_hashes, when already known (one hashing for many hosts).
    Returns how many were copied."""
    here = here or local_hashes(names, local_root)
    there = remote_hashes(host, server, names)
    changed = [n for n in names if there.get(n) != here[n]]
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
    placed = host.run(in_folder(server, f"{{ {' && '.join(moves)}; }}; status=$?; rm -rf -- "
                                         f"{shlex.quote(staging)}; exit $status"))
    if not placed.ok:
        raise OSError(f"{host.name}: could not put the copied files in place: {placed.stdout.strip()[-200:]}")
    return len(changed)


def data_files(needs):
    """The files --sync-data sends for data_needs(jobs): relative paths of this checkout."""
    files = []
    for path, names in needs.items():
        if os.path.isabs(path) or ".." in path.split("/"):
            raise ValueError(f"--sync-data copies data folders inside the project only; {path} is not")
        try:
            files += provenance.data_files(path, names)
        except ValueError as e:
            raise ValueError(f"--sync-data: {e}") from None
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise ValueError(f"--sync-data: {missing[0]} not found here ({len(missing)} files missing)")
    return files


class Checker:
    """What the runner does on each host as it is reached: copy what was asked for, then
    compare the host's code and data with this checkout's.

    Raises ValueError (one line) when a copy asked for cannot be made from here."""

    def __init__(self, jobs, script, sync_code=False, sync_data=False, allow_mismatch=False, sync_env=False,
                 cluster_config=None):
        self.needs, self.script, self.allow_mismatch, self.sync_env = data_needs(jobs), script, allow_mismatch, sync_env
        self.requirements = requirements.text()  # what --sync-env installs, and the pins every host must meet
        self.pins = requirements.pins(self.requirements)
        self.models = model_files(jobs)  # the jobs' own model files: checked, and copied with the code
        self.code_files = [name for name in project_files() if not same_file(PROJECT_DIR / name, cluster_config)] \
            if sync_code else []  # the cluster config stays here: its "notify" URL is a secret
        # Files relative to the folder the runner runs in: the data, and the model files (they travel with the code).
        self.local_files = (data_files(self.needs) if sync_data else []) + (self.models if sync_code else [])
        # Hashed once here, not once per host.
        self.code_hashes = local_hashes(self.code_files, PROJECT_DIR)
        self.local_hashes = local_hashes(self.local_files)
        self.local = local_answer(self.needs, self.models)
        self.copied = {}  # host name: files copied

    def prepare(self, host, server):
        """Copy, then check. Raises HostRefused naming every difference unless allow_mismatch,
        which prints them as warnings instead."""
        try:
            self.copied[host.name] = (sync(host, server, self.code_files, PROJECT_DIR, self.code_hashes)
                                      + sync(host, server, self.local_files, here=self.local_hashes))
        except OSError as e:  # what stopped the copy happens on every try
            raise HostRefused(f"{host.name}: copying to {server['workdir']} failed ({e})") from None
        # This machine (a local server) is held to the pins only when --sync-env asks to install them.
        pins = self.pins if self.sync_env or not server["local"] else {}
        answer, why = ask_host(host, server, self.script, self.needs, self.models, pins)
        if self.sync_env and (missing_module(why) or not why and requirements.unmet(pins, answer.get("packages"))):
            answer, why = self.install(host, server)
        lines = [f"{host.name}: {why}"] if why else differences(host.name, self.local, answer, FIX_CODE, FIX_DATA,
                                                                 pins, FIX_ENV)
        if lines and not self.allow_mismatch:
            raise Mismatch("; ".join(lines), lines)
        for line in lines:
            print(f"warning: {line} (--allow-mismatch)", file=sys.stderr)

    def install(self, host, server):
        """--sync-env: pip installs requirements.txt on the host, its output printed under the host's
        name, then the host is asked again. HostRefused (the host sits this run out) when pip fails or
        the pins are still not met."""
        print(f"{host.name}: --sync-env: python -m pip install -r requirements.txt", file=sys.stderr)
        line = requirements.install_line(shell_path(server["python"]), self.requirements)
        printer = LinePrinter(f"{host.name}: ")
        result = host.run(in_workdir(server, line), stream=printer, timeout=INSTALL_TIMEOUT_S)
        printer(b"\n" if printer.rest else b"")  # a last line without its newline
        if not result.ok:
            raise HostRefused(f"{host.name}: {requirements.FAILED} there ({last_line(result)})")
        answer, why = ask_host(host, server, self.script, self.needs, self.models, self.pins)
        missed = [] if why else requirements.unmet(self.pins, answer.get("packages"))
        if missed:
            raise HostRefused(f"{host.name}: after pip install -r requirements.txt, {requirements.describe(missed)}")
        return answer, why


def same_file(path, other):
    """Whether path is the file other names (None: no file)."""
    return other is not None and Path(path).resolve() == Path(other).resolve()


def missing_module(why):
    """Whether a host's check failed because a package it imports is missing or broken there (torch
    not installed, say): what --sync-env's install can mend."""
    return bool(why) and ("No module named" in why or "ImportError" in why)


class LinePrinter:
    """A command's streamed output (bytes) printed on stderr line by line, each under a prefix."""

    def __init__(self, prefix):
        self.prefix, self.rest = prefix, b""

    def __call__(self, chunk):
        *lines, self.rest = (self.rest + chunk).split(b"\n")
        for line in lines:
            print(self.prefix + line.decode(errors="replace").rstrip(), file=sys.stderr, flush=True)


class Mismatch(HostRefused):
    """A host runs other code, or reads other data, than this checkout."""

    def __init__(self, message, lines):
        super().__init__(message)
        self.lines = lines
