"""Shared fixtures: real OpenSSH servers on loopback, and a fake training script.

SSH tests run against `sshd` started here on 127.0.0.1 and 127.0.0.2 (random
ports, throwaway host and user keys, one work folder each). Nothing in ~/.ssh is
read or written: clients get the key and a known_hosts file from the tmp folder.
Without sshd the SSH tests are skipped, unless REQUIRE_SSH_TESTS=1 (set by .ci/run),
which turns the skip into a failure.
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models on two cores: one intra-op thread is much faster, and
    # leaves the other core to the subprocesses many tests start.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


SSHD_CONFIG = """\
ListenAddress {address}:{port}
HostKey {folder}/host_key
AuthorizedKeysFile {authorized_keys}
PidFile {folder}/sshd.pid
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
StrictModes no
UsePAM no
{sftp}MaxStartups 200
LogLevel ERROR
"""

# A stand-in for a training CLI: writes experiments/<prefix>/fold<k>_p<k>/ whole
# (atomic rename), records what it saw, prints RESULT_DIR like the real ones.
FAKE_TRAIN = '''\
import argparse, json, os, sys, time
from pathlib import Path

p = argparse.ArgumentParser()
p.add_argument("--prefix", default="fake")
p.add_argument("--fold", type=int, default=0)
p.add_argument("--participants", nargs="*")
p.add_argument("--data_path")  # not read: the runner reads it to know the folder's name
p.add_argument("--experiments_dir", default="experiments")
p.add_argument("--sleep", type=float, default=0.0)
p.add_argument("--fail_once_dir")      # exit 1 the first time each fold runs
p.add_argument("--block_file")         # stay running while this file exists
p.add_argument("--started_dir")        # touch <dir>/<pid> when starting
p.add_argument("--linger_file")        # after publishing, stay running while this file exists
p.add_argument("--env_names", nargs="*", default=[])  # record these variables' values
p.add_argument("--overwrite", action="store_true")
p.add_argument("--run_token")
p.add_argument("--no_result_line", action="store_true")  # leave the runner to find the folder
p.add_argument("--tag")
args = p.parse_args()

if args.started_dir:
    Path(args.started_dir, f"{os.getpid()}-fold{args.fold}").touch()
print(f"fold {args.fold} starting on CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}")
if args.fail_once_dir:
    marker = Path(args.fail_once_dir, f"fold{args.fold}")
    if not marker.exists():
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        print("failing on purpose", file=sys.stderr)
        sys.exit(1)
time.sleep(args.sleep)
while args.block_file and os.path.exists(args.block_file):
    time.sleep(0.1)
final = Path(args.experiments_dir, args.prefix, f"fold{args.fold}_p{args.fold}")
def token(folder):  # the engine's rule (engine.results): only --overwrite or its own run token replace
    try:
        return json.loads((folder / "hyperparameters.json").read_text()).get("run_token")
    except OSError:
        return None
if final.exists() and not args.overwrite and not (args.run_token and token(final) == args.run_token):
    print(f"RESULT_EXISTS {final}", flush=True)
    print(f"{final}: result folder exists", file=sys.stderr)
    sys.exit(2)
tmp = final.parent / f".tmp{os.getpid()}"
(tmp / "sub").mkdir(parents=True)
record = {"argv": sys.argv[1:], "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
          "cwd": os.getcwd(), "fold": args.fold, "env": {n: os.environ.get(n) for n in args.env_names}}
(tmp / "record.json").write_text(json.dumps(record))
(tmp / "hyperparameters.json").write_text(json.dumps({"run_token": args.run_token}))
(tmp / "sub" / "weights.bin").write_bytes(os.urandom(1000 + 37 * args.fold))
if final.exists():
    import shutil; shutil.rmtree(final)
os.rename(tmp, final)
if not args.no_result_line:
    print(f"RESULT_DIR {final}", flush=True)
while args.linger_file and os.path.exists(args.linger_file):
    time.sleep(0.1)
'''


def require_sshd():
    """Skip (or fail, under REQUIRE_SSH_TESTS=1) when OpenSSH's server is missing."""
    if os.path.exists(SSHD) and shutil.which("ssh-keygen"):
        return
    message = f"OpenSSH server not installed ({SSHD} missing): apt-get install openssh-server"
    if os.environ.get("REQUIRE_SSH_TESTS") == "1":
        pytest.fail(message + " (REQUIRE_SSH_TESTS=1)", pytrace=False)
    pytest.skip(message)


def free_port(address):
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def keygen(path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)],
                   check=True)
    return Path(str(path) + ".pub").read_text().split()


def process_table():
    """{pid: (ppid, command name)} from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)
                name = fields[0].split("(", 1)[1]
                table[int(entry)] = (int(fields[1].split()[1]), name)
            except (OSError, IndexError):
                pass
    return table


def processes_with(text):
    """PIDs of live processes whose command line contains text."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if text.encode() in cmdline and state != "Z":
                found.append(int(entry))
    return found


class LoopbackSSHD:
    """One sshd on a loopback address, with its own host key and work folder."""

    def __init__(self, folder, address, user_pub, sftp=True):
        self.folder, self.address = Path(folder), address
        self.folder.mkdir(parents=True)
        self.workdir = self.folder / "work"
        self.workdir.mkdir()
        self.port = free_port(address)
        host_key = keygen(self.folder / "host_key")
        self.known_hosts_line = f"[{address}]:{self.port} {host_key[0]} {host_key[1]}\n"
        authorized = self.folder / "authorized_keys"
        authorized.write_text(" ".join(user_pub[:2]) + "\n")
        config = self.folder / "sshd_config"
        config.write_text(SSHD_CONFIG.format(address=address, port=self.port, folder=self.folder,
                                             authorized_keys=authorized,
                                             sftp="Subsystem sftp internal-sftp\n" if sftp else ""))
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation folder
        self.log = open(self.folder / "sshd.log", "wb")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 10
        while True:
            try:
                socket.create_connection((address, self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"sshd on {address}:{self.port} did not start: "
                                       f"{(self.folder / 'sshd.log').read_text()}")
                time.sleep(0.05)

    def sshd_pids(self):
        """The listener and every per-connection sshd below it (not the users' commands)."""
        table = process_table()
        pids, changed = {self.proc.pid}, True
        while changed:
            more = {pid for pid, (ppid, name) in table.items()
                    if ppid in pids and name.startswith("sshd") and pid not in pids}
            pids |= more
            changed = bool(more)
        return sorted(pids)

    def signal(self, signum):
        """Send a signal to sshd and its sessions (SIGKILL: the server 'dies')."""
        for pid in self.sshd_pids():
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def drop_connections(self):
        """Kill every connection's sshd, not the listener: the clients lose their connection
        and can connect again."""
        for pid in self.sshd_pids():
            if pid != self.proc.pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def stop(self):
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGKILL)
            self.proc.wait()
        self.log.close()

    def server(self, **fields):
        """This host's entry in a cluster config."""
        return {"host": self.address, "port": self.port, "user": "root",
                "workdir": str(self.workdir), "python": sys.executable, **fields}


@pytest.fixture(scope="session")
def user_key(tmp_path_factory):
    """A throwaway client key: (private key path, public key fields)."""
    require_sshd()
    folder = tmp_path_factory.mktemp("client")
    pub = keygen(folder / "id_ed25519")
    return folder / "id_ed25519", pub


@pytest.fixture(scope="session")
def start_sshd(tmp_path_factory, user_key):
    """Factory: start_sshd(address, sftp=True) -> LoopbackSSHD (sftp=False: no SFTP subsystem);
    every server is stopped at the end."""
    servers = []

    def start(address="127.0.0.1", sftp=True):
        server = LoopbackSSHD(tmp_path_factory.mktemp("sshd") / address, address, user_key[1], sftp)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def sshd_pair(start_sshd):
    """Two hosts: sshd on 127.0.0.1 and on 127.0.0.2."""
    return start_sshd("127.0.0.1"), start_sshd("127.0.0.2")


def write_known_hosts(path, *servers):
    Path(path).write_text("".join(s.known_hosts_line for s in servers))
    return str(path)


def write_json(path, data):
    Path(path).write_text(json.dumps(data, indent=1))
    return str(path)


@pytest.fixture
def fake_script(tmp_path):
    path = tmp_path / "fake_train.py"
    path.write_text(FAKE_TRAIN)
    return path
