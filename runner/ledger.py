"""The run dir's lasting state: the ledger of attempts (ledger.jsonl), the run's identity
(run_id) and the lock that keeps one runner per run dir (runner.lock). Both backends use them."""
import fcntl
import json
import os
import sys
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from engine.fileio import ConfigError, write_atomic


class Ledger:
    """JSON lines, flushed as each is written: a "started" line when an attempt starts and
    one with its status when it ends, so a crash leaves a trace of what was running."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a")
        self._lock = threading.Lock()

    def write(self, record):
        with self._lock:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def close(self):
        self._file.close()

    @staticmethod
    def read(path):
        records = []
        if Path(path).exists():
            for line in Path(path).read_text().splitlines():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line cut short by a crash: that attempt simply runs again
        return records

    @staticmethod
    def attempts(records):
        """{job_id: attempts so far}: the highest attempt number, started or ended
        (ledgers written before start lines existed read the same)."""
        counts = Counter()
        for r in records:
            if isinstance(r.get("attempt"), int):
                counts[r.get("job_id")] = max(counts[r.get("job_id")], r["attempt"])
        return counts



@contextmanager
def run_dir_lock(run_dir):
    """Held while a runner works on run_dir; a second runner gets a ConfigError naming the
    pid that holds it. The kernel drops the lock when its holder dies, however it dies; the
    pid such a runner left in the file is taken over with a message."""
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "runner.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            for _ in range(20):  # the holder may be between taking the lock and writing its pid
                f.seek(0)
                holder = f.read().strip()
                if holder:
                    break
                time.sleep(0.05)
            raise ConfigError(f"{run_dir} is in use by another runner (pid {holder or '?'}); "
                              f"wait for it to end, or stop it") from None
        f.seek(0)
        stale = f.read().strip()
        if stale:
            print(f"{run_dir}: taking over the lock of runner pid {stale}, which is no longer running",
                  file=sys.stderr)
        f.truncate(0)
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            f.truncate(0)  # a clean end leaves no pid behind; closing the file unlocks it


def run_id(run_dir, fresh=False, create=True):
    """The run's identity, kept in run_dir/run_id: made by the first run (and anew by a fresh one,
    --no-resume) and kept by the reruns that resume it. Its jobs' result folders record it
    (runner.plan.run_token), so a rerun may replace what the run itself wrote, and nothing else.
    Without create (a dry run) nothing is written: None when there is none yet."""
    path = Path(run_dir) / "run_id"
    if path.exists() and not fresh:
        return path.read_text().strip()
    if not create:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    new = uuid.uuid4().hex[:12]
    write_atomic(path, new + "\n")
    return new
