"""One object per host: run a command (streamed output, exit status), copy folders, kill.

    host = RemoteHost("gpu1", user="me", known_hosts="~/.ssh/known_hosts")
    host.connect()
    result = host.run("nvidia-smi -L")          # Result(exit_status, stdout, ...)
    host.get_dir("proj/experiments/demo/fold0_a", "experiments/demo/fold0_a")

RemoteHost speaks SSH through ONE paramiko connection that every slot of the host
shares (one channel per session). LocalHost runs the same commands on this machine
with bash and no SSH. Both have the same interface, so the scheduler does not care.

run() sends each command to a pooled session (a long-lived bash on its own
channel, see SESSION), which runs it in its own process group and kills that group
when our end goes away. A host that freezes without closing the connection is
caught by the keepalive watchdog: no answer within `dead_after` seconds closes it.

Near 600 lines on purpose: the session protocol, its local twin and the SSH host are one
contract (the same run/kill/copy semantics), and splitting them would spread it over files.
"""
import getpass
import logging
import os
import secrets
import shlex
import shutil
import socket
import stat
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import paramiko

# paramiko logs a traceback for every failed connection attempt; we say one line ourselves.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False

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


def key_file_problem(path):
    """Why a file cannot be an SSH private key, or None (a passphrase is paramiko's to find)."""
    if not os.path.exists(path):
        return "not found"
    if os.path.isdir(path):
        return "is a folder, not a private key file"
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if not head.startswith(b"-----BEGIN "):
        return "is not a private key file (the .pub file? give the private key)"
    return None


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
        end = f"@@END {token} ".encode()
        pending, kept, pgid = b"", bytearray(), None
        expired = threading.Event()
        kill_lock = threading.Lock()  # the timer and the reader agree on who kills the group

        def expire():
            with kill_lock:
                expired.set()
                target = pgid
            if target:
                self._kill_quietly(target)

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
            while True:
                chunk = session.read()
                if not chunk:
                    raise HostDown(f"{self.name}: connection lost ({self.lost_reason or 'session closed'})")
                pending += chunk
                while pgid is None and b"\n" in pending:  # lines before ours came from ~/.bashrc
                    line, pending = pending.split(b"\n", 1)
                    if line.startswith(PGID_MARK):
                        with kill_lock:
                            pgid = int(line[len(PGID_MARK):])
                            late = expired.is_set()
                        with self._pool_lock:
                            self._groups.add(pgid)
                        if late:
                            self._kill_quietly(pgid)
                if pgid is None:
                    continue
                at = pending.find(end)
                if at >= 0 and pending.endswith(b"\n"):
                    emit(pending[:at])
                    status = int(pending[at + len(end):].strip())
                    break
                if at < 0:  # pass output on, but hold back what may be the start of the end mark
                    hold = next((k for k in range(min(len(end) - 1, len(pending)), 0, -1)
                                 if pending.endswith(end[:k])), 0)
                    emit(pending[:len(pending) - hold])
                    pending = pending[len(pending) - hold:]
        finally:
            if timer:
                timer.cancel()
            with self._pool_lock:
                self._groups.discard(pgid)
        return Result(command, status, kept.decode(errors="replace"), expired.is_set())

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


class RemoteProcess:
    """A command on one channel of the host's connection."""

    def __init__(self, host, channel, slot):
        self.host, self.channel, self.slot = host, channel, slot

    def read(self):
        return self.channel.recv(65536)

    def write(self, data):
        try:
            self.channel.sendall(data)
        except (OSError, EOFError, paramiko.SSHException) as e:
            raise HostDown(f"{self.host.name}: connection lost ({self.host.lost_reason or e})") from None

    def wait(self):
        status = self.channel.recv_exit_status()
        # -1: no exit status came; if the connection is gone too, the host was lost.
        if status == -1 and not self.host.connected:
            raise HostDown(f"{self.host.name}: connection lost ({self.host.lost_reason or 'closed'})")
        return status

    def close(self):
        if self.slot:
            self.channel.close()  # EOF on the session's stdin: its watcher kills what is left
            self.slot.release()
            self.slot = None


class _KnownHostsPolicy(paramiko.MissingHostKeyPolicy):
    """Unknown host key: refuse, or with accept_new trust it and append it to known_hosts."""

    lock = threading.Lock()

    def __init__(self, known_hosts, accept_new):
        self.known_hosts, self.accept_new = known_hosts, accept_new

    def missing_host_key(self, client, hostname, key):
        if not self.accept_new:
            raise HostRefused(
                f"{hostname}: unknown host key ({key.get_name()} {key.fingerprint}), not in "
                f"{self.known_hosts}. Check the fingerprint with the server's admin and add it "
                f"(ssh-keyscan), or rerun with --accept-new-hosts to trust it on first use.")
        with self.lock:
            os.makedirs(os.path.dirname(self.known_hosts) or ".", exist_ok=True)
            with open(self.known_hosts, "a") as f:
                f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)


class RemoteHost(Host):
    """A server over SSH: one paramiko connection, shared by every command.

    user, port and key_filename override ~/.ssh/config (HostName, User, Port,
    IdentityFile, ProxyCommand), as ssh's own command-line options do; the SSH agent
    and the default keys are tried too. known_hosts defaults to ssh_config's
    UserKnownHostsFile, else ~/.ssh/known_hosts.
    max_sessions: sshd's MaxSessions (default 10) caps the channels of one connection:
    one is kept for kill commands, the rest serve sessions and SFTP (an idle session
    gives its channel up when another is needed).
    keepalive / dead_after: every `keepalive` s we ask for an answer; none within
    `dead_after` s closes the connection, so a frozen or unreachable host is noticed
    within about keepalive + dead_after seconds.
    """

    def __init__(self, host, user=None, port=None, key_filename=None, *, name=None,
                 known_hosts=None, ssh_config="~/.ssh/config", accept_new_hosts=False,
                 max_sessions=10, keepalive=5.0, dead_after=25.0, connect_timeout=15.0):
        super().__init__()
        ssh_config = os.path.expanduser(ssh_config) if ssh_config else None
        found = {}
        if ssh_config and os.path.exists(ssh_config):
            found = paramiko.SSHConfig.from_path(ssh_config).lookup(host)
        self.name = name or host
        self.hostname = found.get("hostname", host)
        self.user = user or found.get("user") or getpass.getuser()
        self.port = int(port or found.get("port", 22))
        # ssh_config's IdentityFile lines that do not exist are skipped, as ssh does.
        keys = [key_filename] if key_filename else [k for k in found.get("identityfile", [])
                                                    if os.path.exists(os.path.expanduser(k))]
        self.key_filenames = [os.path.expanduser(k) for k in keys]
        known = known_hosts or (found.get("userknownhostsfile", "").split() or ["~/.ssh/known_hosts"])[0]
        self.known_hosts = os.path.expanduser(known)
        self.proxy_command = found.get("proxycommand")  # e.g. ssh -W %h:%p jumphost
        self.accept_new_hosts = accept_new_hosts
        self.keepalive, self.dead_after, self.connect_timeout = keepalive, dead_after, connect_timeout
        self.lost_reason = None
        self._client = None
        self._lock = threading.Lock()
        self._sessions = threading.BoundedSemaphore(max(1, max_sessions - 1))
        self._control = threading.BoundedSemaphore(1)

    def __repr__(self):
        return f"RemoteHost({self.name!r}, {self.user}@{self.hostname}:{self.port})"

    @property
    def connected(self):
        transport = self._client.get_transport() if self._client else None
        return bool(transport and transport.is_active())

    def connect(self):
        """Open the connection unless it is up. Raises HostDown or HostRefused."""
        with self._lock:
            if self.connected:
                return
            self._drop_sessions()  # they belonged to the lost connection
            for key in self.key_filenames:
                problem = key_file_problem(key)
                if problem:
                    raise HostRefused(f"{self.name}: SSH key {key} {problem}")
            client = paramiko.SSHClient()
            if os.path.exists("/etc/ssh/ssh_known_hosts"):
                client.load_system_host_keys("/etc/ssh/ssh_known_hosts")
            if os.path.exists(self.known_hosts):
                client.load_host_keys(self.known_hosts)
            client.set_missing_host_key_policy(_KnownHostsPolicy(self.known_hosts, self.accept_new_hosts))
            where = f"{self.user}@{self.hostname}:{self.port}"
            try:
                sock = paramiko.ProxyCommand(self.proxy_command) if self.proxy_command else None
                client.connect(self.hostname, self.port, self.user, key_filename=self.key_filenames or None,
                               sock=sock, timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                               auth_timeout=self.connect_timeout, channel_timeout=self.connect_timeout)
            except paramiko.BadHostKeyException as e:
                raise HostRefused(f"{where}: host key CHANGED ({e.key.get_name()} {e.key.fingerprint}) "
                                  f"versus {self.known_hosts}; refusing to connect. If the server was "
                                  f"reinstalled, remove its old line from that file.") from None
            except paramiko.PasswordRequiredException:
                raise HostRefused(f"{where}: the SSH key is passphrase-protected; load it into "
                                  f"ssh-agent (ssh-add) and run again") from None
            except paramiko.AuthenticationException as e:
                raise HostRefused(f"{where}: authentication failed ({e}); check ssh_key, "
                                  f"the user, or the keys in your ssh-agent") from None
            except (paramiko.SSHException, OSError, EOFError) as e:
                raise HostDown(f"{where}: cannot connect ({e or type(e).__name__})") from None
            transport = client.get_transport()
            try:  # small request/answer messages: do not let Nagle delay them
                transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (AttributeError, OSError):
                pass
            self._client, self.lost_reason = client, None
            threading.Thread(target=self._watchdog, args=(transport,), daemon=True,
                             name=f"keepalive-{self.name}").start()

    def close(self):
        self._drop_sessions()
        with self._lock:
            if self._client:
                self._client.close()

    def _watchdog(self, transport):
        while transport.is_active():
            alarm = threading.Timer(self.dead_after, self._declare_dead, args=(transport,))
            alarm.daemon = True
            alarm.start()
            try:  # OpenSSH answers any global request; the answer is what proves it is alive.
                transport.global_request("keepalive@openssh.com", wait=True)
            except (paramiko.SSHException, OSError, EOFError):
                return  # the connection is going away; its commands notice it themselves
            finally:
                alarm.cancel()
            time.sleep(self.keepalive)

    def _declare_dead(self, transport):
        self.lost_reason = f"no answer to keepalive within {self.dead_after:g} s"
        transport.close()

    def _take(self, semaphore):
        """A channel slot; when all are taken, an idle session gives its slot up."""
        while not semaphore.acquire(timeout=0.2):
            if not self.connected:  # a lost host frees no slot: do not wait for one
                raise HostDown(f"{self.name}: connection lost ({self.lost_reason or 'closed'})")
            with self._pool_lock:
                idle = self._idle.pop() if self._idle else None
            if idle:
                idle.close()

    def _open(self, command, control=False):
        if not self.connected:
            raise HostDown(f"{self.name}: not connected ({self.lost_reason or 'connection closed'})")
        slot = self._control if control else self._sessions
        self._take(slot)
        try:
            channel = self._client.get_transport().open_session(timeout=self.connect_timeout)
            channel.set_combine_stderr(True)
            channel.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError, AttributeError) as e:
            slot.release()
            raise HostDown(f"{self.name}: cannot start a command ({e or type(e).__name__})") from None
        return RemoteProcess(self, channel, slot)

    @contextmanager
    def _sftp(self, what):
        """An SFTP session, counted against max_sessions like a command; a failure
        while `what` (e.g. "copying x") is HostDown if the connection went with it."""
        if not self.connected:
            raise HostDown(f"{self.name}: not connected")
        self._take(self._sessions)
        try:
            sftp = self._client.open_sftp()
        except (paramiko.SSHException, OSError, EOFError, AttributeError) as e:
            self._sessions.release()
            why = f"cannot open SFTP ({e or type(e).__name__})"
            if self.connected:  # the server said no: it will say no every time
                raise HostRefused(f"{self.name}: {why}; enable 'Subsystem sftp' in its sshd_config, "
                                  f"or set \"shared_fs\": true if it shares this file system") from None
            raise HostDown(f"{self.name}: {why}") from None
        try:
            yield sftp
        except (paramiko.SSHException, EOFError, OSError) as e:
            if not self.connected:
                raise HostDown(f"{self.name}: connection lost while {what}") from None
            raise OSError(f"{self.name}: {what}: {e}") from None
        finally:
            sftp.close()
            self._sessions.release()

    @staticmethod
    def _sftp_path(path):
        # SFTP starts in the login folder, where "~" points.
        if path == "~":
            return "."
        return path[2:] if path.startswith("~/") else path

    def _walk(self, sftp, top, prefix=""):
        files = {}
        for entry in sftp.listdir_attr(f"{top}/{prefix}" if prefix else top):
            rel = f"{prefix}/{entry.filename}" if prefix else entry.filename
            if stat.S_ISDIR(entry.st_mode):
                files.update(self._walk(sftp, top, rel))
            elif stat.S_ISREG(entry.st_mode):
                files[rel] = entry.st_size
        return files

    def get_dir(self, remote_path, local_path):
        """Copy a folder from the host; return {relative path: size} of what the host has."""
        remote_path = self._sftp_path(remote_path)
        with self._sftp(f"copying {remote_path}") as sftp:
            files = self._walk(sftp, remote_path)
            for rel in files:
                target = os.path.join(local_path, rel)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                sftp.get(f"{remote_path}/{rel}", target)
            return files

    @staticmethod
    def _makedirs(sftp, path):
        parts = path.split("/")
        for i in range(1, len(parts) + 1):
            sub = "/".join(parts[:i])
            if sub in ("", ".", "~"):
                continue
            try:
                sftp.stat(sub)
            except FileNotFoundError:
                sftp.mkdir(sub)

    def put_dir(self, local_path, remote_path):
        """Copy a local folder to the host; return {relative path: size} of what was sent."""
        remote_path = self._sftp_path(remote_path)
        files = local_tree(local_path)
        with self._sftp(f"copying to {remote_path}") as sftp:
            for folder in sorted({os.path.dirname(rel) for rel in files} | {""}):
                self._makedirs(sftp, f"{remote_path}/{folder}" if folder else remote_path)
            for rel in files:
                sftp.put(os.path.join(local_path, rel), f"{remote_path}/{rel}")
            return files
