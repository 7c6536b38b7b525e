"""Copies between this machine and the SSH hosts: a job's result folder home, a base model
home after phase 1 and out to a host before its dependents run there. Every copy lands in a
hidden sibling, is checked, and only then is renamed into place."""
import os
import posixpath
import shlex
import shutil
import threading
from collections import Counter
from pathlib import Path, PurePosixPath

from engine import base_cache, fileio, markers, results
from runner.commands import intact_command, shell_path
from runner.jobs import cache_entry
from runner.output import printed
from runner.ssh.shell import local_tree


class CopyError(Exception):
    """A result folder did not come home intact."""


class ResultKept(CopyError):
    """A folder here that this run did not write stands where a result would come home: it is kept,
    and the job fails alike on every try (not retried)."""


def fetch_dir(host, source, dest, check=None):
    """Copy a host's folder to dest whole: into a hidden sibling, compared file by file (names
    and sizes) and, given check(folder), checked by it; only then renamed into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = fileio.hidden_sibling(dest, "partial")  # its own name: slots copy home at once
    shutil.rmtree(partial, ignore_errors=True)
    try:
        expected = host.get_dir(source, partial)
        wrong = sorted(set(expected.items()) ^ set(local_tree(partial).items()))
        if wrong or not expected:
            raise CopyError(f"copy of {host.name}:{source} came home "
                            f"{f'incomplete (differs: {wrong[:3]})' if expected else 'empty'}")
        if check and not check(partial):
            raise CopyError(f"copy of {host.name}:{source} does not match its checksums")
    except BaseException as e:
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(e, OSError):
            raise CopyError(f"copy of {host.name}:{source} failed: {e}") from None
        raise
    fileio.publish_folder(partial, dest, replace=True)  # an earlier copy is replaced whole


class HostTransfer:
    """The copies of one run, from any slot's thread: each base model goes to a host once,
    however many of its slots want it. Counts what it copied, for the report."""

    def __init__(self, script, say):
        self.script, self.say = script, say  # say(message): a progress line
        self.lock = threading.Lock()
        self.sent = Counter()  # host: base models copied there
        self.fetched = 0  # base models copied home
        self.on_host = set()  # (host, key): entry known to be complete on that host
        self.send_locks = {}  # (host, key): held while that entry is being sent

    def bring_home(self, slot, job, output):
        """Copy the job's result folder (its output's RESULT_DIR) to the same place here, under the
        job's experiments_dir, and check it. A folder there that this run did not write is kept
        (CopyError), unless the job runs with --overwrite. job: the flags it ran with."""
        host, server = slot.host, slot.server
        rel = printed(output, markers.RESULT_DIR) or self.find_result_dir(slot, job)
        if rel is None:
            return None
        if server["local"] or server["shared_fs"]:
            return rel
        # The same place under the local experiments/ as under the job's experiments_dir.
        path, top = PurePosixPath(rel), PurePosixPath(job.get("experiments_dir", "experiments"))
        inside = path.relative_to(top) if path.is_relative_to(top) else PurePosixPath(*path.parts[-2:])
        if not inside.parts or inside.is_absolute() or ".." in inside.parts:
            raise CopyError(f"RESULT_DIR {rel!r} is not a folder under {top}")
        source = rel if path.is_absolute() else posixpath.join(server["workdir"], rel)
        dest = Path(top, *inside.parts)
        refusal = results.replace_refusal(dest, job.get("overwrite"), job.get("run_token"))
        if refusal:
            raise ResultKept(f"{refusal}; kept it, and the job's results on {host.name}:{source}")
        fetch_dir(host, source, dest)
        if server["remove_results"] and not path.is_relative_to(top):
            # The job printed a folder outside its experiments_dir: never delete what we cannot place.
            self.say(f"{job['job_id']}: kept {host.name}:{source} (not under {top}, so not removed)")
        elif server["remove_results"]:
            removed = host.run(f"rm -rf -- {shell_path(source)}")
            if not removed.ok:
                self.say(f"{job['job_id']}: could not remove {host.name}:{source}: {removed.stdout.strip()}")
        return str(dest)

    def bring_base_home(self, slot, job, output):
        """A base_only job ended: check that it built the key the jobs file names (its output's
        BASE_KEY), and copy its entry into the local cache unless the host shares it. Returns
        the local entry."""
        key, where = printed(output, markers.BASE_KEY), printed(output, markers.BASE_MODEL)
        if key is None or where is None:
            raise CopyError("no BASE_KEY and BASE_MODEL lines in its output")
        expected = job.get("base_key")
        if expected and key != expected:
            raise CopyError(f"the training script computed base key {key} where the jobs file says "
                            f"{expected}; regenerate the jobs with the code the hosts run")
        host, server = slot.host, slot.server
        local = cache_entry(job, key)
        if not base_cache.entry_intact(local):
            if server["local"] or server["shared_fs"]:
                raise CopyError(f"{host.name} stored base model {key} in {where}, but {local} here "
                                f"is not a complete entry (is shared_fs right?)")
            source = where if posixpath.isabs(where) else posixpath.join(server["workdir"], where)
            fetch_dir(host, source, Path(local), check=base_cache.entry_intact)
            with self.lock:
                self.fetched += 1
        self.on_host.add((host.name, key))
        return local

    def send_base(self, slot, job, key):
        """Before a job that needs base model `key` runs on a host that does not share our files,
        put the entry into that host's cache, where the training script will find it."""
        host, server = slot.host, slot.server
        if server["local"] or server["shared_fs"]:
            return
        with self.lock:
            lock = self.send_locks.setdefault((host.name, key), threading.Lock())
        with lock:  # one copy per host, however many of its slots want it
            if (host.name, key) in self.on_host:
                return
            # Shell commands run in the workdir; SFTP starts in the login folder.
            target = cache_entry(job, key)
            tmp = posixpath.join(posixpath.dirname(target), f".{key}.upload{os.getpid()}")
            if not host.run(intact_command(server, self.script, target)).ok:
                host.put_dir(cache_entry(job, key), posixpath.join(server["workdir"], tmp))
                # Checked there, then renamed into place (replacing a broken entry); never half there.
                q_tmp, q_target = shell_path(tmp), shell_path(target)
                placed = host.run(f"{intact_command(server, self.script, tmp)} && rm -rf -- {q_target} && "
                                  f"mv -T -- {q_tmp} {q_target} || {{ rm -rf -- {q_tmp}; exit 1; }}")
                if not placed.ok:
                    raise CopyError(f"base model {key} did not arrive intact in {host.name}:"
                                    f"{server['workdir']}/{target} {placed.stdout.strip()[-300:]}")
                with self.lock:
                    self.sent[host.name] += 1
                self.say(f"base model {key}: sent to {host.name}")
            self.on_host.add((host.name, key))

    def find_result_dir(self, slot, job):
        """Fallback when no RESULT_DIR line came: the one experiments/<prefix>/fold<k>_* folder."""
        if "prefix" not in job or "fold" not in job:
            return None
        stem = f"{job.get('experiments_dir', 'experiments')}/{job['prefix']}/fold{job['fold']}_"
        found = slot.host.run(f"cd {shell_path(slot.server['workdir'])} && "
                              f"for d in {shlex.quote(stem)}*; do [ -d \"$d\" ] && echo \"$d\"; done")
        dirs = found.stdout.split("\n")[:-1] if found.ok else []
        return dirs[0] if len(dirs) == 1 else None
