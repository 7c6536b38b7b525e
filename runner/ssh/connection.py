"""A server over SSH (RemoteHost): one paramiko connection that every slot of the host shares,
one channel per session; host keys checked against known_hosts, a keepalive watchdog that
closes a connection whose host froze, SFTP copies of folders. The session protocol itself is
runner.ssh.shell.Host's.

    host = RemoteHost("gpu1", user="me", known_hosts="~/.ssh/known_hosts")
    host.connect()
    host.get_dir("proj/experiments/demo/fold0_a", "experiments/demo/fold0_a")
"""
import getpass
import logging
import os
import socket
import stat
import threading
import time
from contextlib import contextmanager

import paramiko

from runner.ssh.shell import Host, HostDown, HostRefused, local_tree

# paramiko logs a traceback for every failed connection attempt; we say one line ourselves.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False


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
