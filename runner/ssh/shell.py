"""A host as an object: run a command (streamed output, exit status, timeout), kill, copy folders.

    host = LocalHost()                          # this machine; runner.ssh.connection.RemoteHost over SSH
    result = host.run("nvidia-smi -L")          # Result(exit_status, stdout, ...)

run() sends each command to a pooled session (a long-lived bash, see SESSION), which runs
it in its own process group and kills that group when our end goes away. Host holds that
protocol once; LocalHost runs it on this machine with bash and no SSH, RemoteHost
(connection.py) on a server through one paramiko connection. Both have the same interface,
so the SSH backend does not care which it has.
"""
import os
import secrets
import shlex
import shutil
import subprocess
import threading
from dataclasses import dataclass

PGID_MARK = b"@@PGID "
TAIL_BYTES = 64 * 1024

# A session: one long-lived bash per concurrent run(), fed one command at a time as
# the line "<token> <command, every byte written \xHH>", so a job costs a fork, not a
# login (whose ~/.bashrc, e.g. conda or pyenv init, can take longer than a small job).
# The escapes keep the framing whole whatever the command holds; bash's own printf
# decodes them, without a process. The command reaches the job's shell in
# its environment, never in an argv: env values and setup lines stay out of `ps`.
# Each command runs in its own session (setsid): killing its process group reaches all it
# started. A watcher reads our stdin while it runs: EOF means we went away (Ctrl-C,
# runner killed, connection dropped and sshd closed the channel) and it kills the group.
# On TERM the wrapper waits for the running command (which gets TERM too) to clean up, then exits.
# Afterwards the group is killed anyway, then "@@END <token> <status>" follows.
# stderr joins stdout at the source, so the end mark comes after all of both.
SESSION = """exec 3<&0 2>&1
while read -r token encoded; do
  printf -v RUN_COMMAND '%b' "$encoded"
  RUN_COMMAND=$RUN_COMMAND setsid bash --norc -c \\
    'trap "exit 143" TERM; echo "@@PGID $$"; line=$RUN_COMMAND; unset RUN_COMMAND; eval "$line"' \\
    job </dev/null &
  pid=$!
  (read -r _ <&3; kill -TERM -- -$pid; sleep 5; kill -KILL -- -$pid) >/dev/null 2>&1 &
  watcher=$!
  wait $pid; status=$?
  kill $watcher 2>/dev/null; wait $watcher  # gone before we read stdin again
  kill -KILL -- -$pid 2>/dev/null
  echo "@@END $token $status"
done"""
# --norc: the login shell has read ~/.bashrc; bash would read it again under sshd.
SESSION_COMMAND = f"exec bash --norc -c {shlex.quote(SESSION)}"

# TERM first so a job can clean up, KILL whatever is left after 5 s.
KILL_GROUPS = """kill -TERM {groups} 2>/dev/null
for i in $(seq 50); do kill -0 {groups} 2>/dev/null || exit 0; sleep 0.1; done
kill -KILL {groups} 2>/dev/null; exit 0"""


class HostDown(Exception):
    """Could not connect, or the connection was lost: try again later."""


class HostRefused(Exception):
    """The host cannot be used as configured (host key, authentication, key file, no SFTP):
    retrying will not help."""


@dataclass
class Result:
    command: str
    exit_status: int
    stdout: str  # stdout and stderr together; only the tail when run() streamed it
    timed_out: bool = False

    @property
    def ok(self):
        return self.exit_status == 0 and not self.timed_out


def escaped(command):
    """The command's bytes as \\xHH escapes: one line with no space, that printf %b decodes."""
    return "".join(f"\\x{b:02x}" for b in command.encode())


def local_tree(path):
    """{relative path: size} of every regular file under a local folder."""
    files = {}
    for root, _, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            if os.path.isfile(full) and not os.path.islink(full):
                files[os.path.relpath(full, path)] = os.path.getsize(full)
    return files


class Host:
    """What both kinds of host share: run() in pooled sessions, with streaming, timeout and kill."""

    name = "?"
    lost_reason = None

    def __init__(self):
        self._groups = set()  # process groups of commands run() has running now
        self._idle = []  # sessions waiting for their next command
        self._pool_lock = threading.Lock()

    def run(self, command, stream=None, timeout=None):
        """Run a shell command on the host; return a Result.

        stream: called with each chunk of output (bytes) as it arrives; without it the
        whole output is kept in Result.stdout. timeout: seconds, after which the
        command's process group is killed and Result.timed_out is set.
        Raises HostDown when the connection is lost on the way.
        """
        with self._pool_lock:
            session = self._idle.pop() if self._idle else None
        session = session or self._open(SESSION_COMMAND)
        try:
            result = self._run_in(session, command, stream, timeout)
        except BaseException:
            session.close()
            raise
        with self._pool_lock:
            self._idle.append(session)
        return result

    def _run_in(self, session, command, stream, timeout):
        if "\0" in command:
            raise ValueError("a shell command cannot hold a NUL byte")
        token = secrets.token_hex(8)
        kept, pgid = bytearray(), None
        expired = threading.Event()
        kill_lock = threading.Lock()  # the timer and the reader agree on who kills the group

        def expire():
            with kill_lock:
                expired.set()
                target = pgid
            if target:
                self._kill_quietly(target)

        def started(group):
            nonlocal pgid
            with kill_lock:
                pgid = group
                late = expired.is_set()
            with self._pool_lock:
                self._groups.add(group)
            if late:
                self._kill_quietly(group)

        def emit(data):
            if data and stream:
                stream(data)
            kept.extend(data)
            if stream:
                del kept[:-TAIL_BYTES]

        # The timeout runs from dispatch: a job that never starts properly is killed too.
        timer = threading.Timer(timeout, expire) if timeout else None
        if timer:
            timer.daemon = True
            timer.start()
        try:
            session.write(f"{token} {escaped(command)}\n".encode())
            status = self._read_to_end(session, f"@@END {token} ".encode(), started, emit)
        finally:
            if timer:
                timer.cancel()
            with self._pool_lock:
                self._groups.discard(pgid)
        return Result(command, status, kept.decode(errors="replace"), expired.is_set())

    def _read_to_end(self, session, end, started, emit):
        """Read a command's output from its session: its process group's line first (started(pgid);
        lines before it came from ~/.bashrc), then its output to emit() up to the end mark.
        Returns its exit status."""
        pending, pgid = b"", None
        while True:
            chunk = session.read()
            if not chunk:
                raise HostDown(f"{self.name}: connection lost ({self.lost_reason or 'session closed'})")
            pending += chunk
            while pgid is None and b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                if line.startswith(PGID_MARK):
                    pgid = int(line[len(PGID_MARK):])
                    started(pgid)
            if pgid is None:
                continue
            at = pending.find(end)
            if at >= 0 and pending.endswith(b"\n"):
                emit(pending[:at])
                return int(pending[at + len(end):].strip())
            if at < 0:  # pass output on, but hold back what may be the start of the end mark
                hold = next((k for k in range(min(len(end) - 1, len(pending)), 0, -1)
                             if pending.endswith(end[:k])), 0)
                emit(pending[:len(pending) - hold])
                pending = pending[len(pending) - hold:]

    def _kill_quietly(self, pgid):
        try:
            self.kill([pgid])
        except HostDown:
            pass  # the run itself sees the lost connection

    def kill(self, pgids):
        """Kill process groups on the host: TERM, then KILL after 5 s."""
        pgids = [p for p in pgids if p]
        if not pgids:
            return
        groups = "-- " + " ".join(f"-{int(p)}" for p in pgids)
        proc = self._open(KILL_GROUPS.format(groups=groups), control=True)
        try:
            while proc.read():
                pass
            proc.wait()
        finally:
            proc.close()

    def running_groups(self):
        """The process groups of the commands run() has running on this host now."""
        with self._pool_lock:
            return set(self._groups)

    def kill_running(self):
        """Kill every command that run() has running on this host now."""
        try:
            self.kill(list(self.running_groups()))
        except HostDown:
            pass  # each session's watcher kills its job when sshd closes the channel

    def _drop_sessions(self):
        with self._pool_lock:
            idle, self._idle = self._idle, []
        for session in idle:
            session.close()  # EOF: its shell ends

    # What each kind of host provides.
    def connect(self):
        pass

    def close(self):
        self._drop_sessions()

    @property
    def connected(self):
        return True

    def _open(self, command, control=False):
        raise NotImplementedError

    def get_dir(self, remote_path, local_path):
        raise NotImplementedError

    def put_dir(self, local_path, remote_path):
        raise NotImplementedError


class LocalProcess:
    def __init__(self, command):
        # Own session: a Ctrl-C in the terminal reaches the runner, which decides what to kill.
        self.popen = subprocess.Popen(["bash", "-c", command], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      start_new_session=True)

    def read(self):
        return os.read(self.popen.stdout.fileno(), 65536)

    def write(self, data):
        try:
            self.popen.stdin.write(data)
            self.popen.stdin.flush()
        except BrokenPipeError:
            raise HostDown("local session ended") from None

    def wait(self):
        return self.popen.wait()

    def close(self):
        for pipe in (self.popen.stdin, self.popen.stdout):
            try:
                pipe.close()
            except BrokenPipeError:
                pass
        self.popen.wait()


class LocalHost(Host):
    """This machine, without SSH."""

    def __init__(self, name="localhost"):
        super().__init__()
        self.name = name

    def __repr__(self):
        return f"LocalHost({self.name!r})"

    def _open(self, command, control=False):
        return LocalProcess(command)

    def get_dir(self, remote_path, local_path):
        return self._copy(os.path.expanduser(remote_path), local_path)

    def put_dir(self, local_path, remote_path):
        return self._copy(local_path, os.path.expanduser(remote_path))

    @staticmethod
    def _copy(src, dst):
        shutil.copytree(src, dst, dirs_exist_ok=True)
        return local_tree(src)
