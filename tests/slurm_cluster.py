"""A throwaway single-node Slurm cluster for tests: munge + slurmctld + slurmd on loopback.

Config, state, logs and the munge key live in one folder; ports are free ones picked
at start; two fake GPUs are GRES on /dev/null links, so `--gres=gpu:1` sets
CUDA_VISIBLE_DEVICES. By default no accounting database: finished jobs are read with
`scontrol show job` (MinJobAge keeps them for 10 minutes); with accounting=True a
MariaDB and slurmdbd run too, so `sacct` answers. Stopped by pid.
"""
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from conftest import free_port

SLURM_CONF = """\
ClusterName=testcluster
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.sock
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
DependencyParameters=kill_invalid_depend
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
KillWait=2
MessageTimeout=5
MinJobAge=600
{accounting}
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 Sockets=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=4000 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
{extra}
"""


NO_ACCOUNTING = """\
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/log/jobcomp.txt"""

ACCOUNTING = """\
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={dbd_port}
AccountingStoragePass={root}/munge/munge.sock
JobAcctGatherType=jobacct_gather/none"""

SLURMDBD_CONF = """\
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.sock
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={dbd_port}
SlurmUser=root
PidFile={root}/run/slurmdbd.pid
LogFile={root}/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={db_port}
StorageUser=slurm
StoragePass=throwaway-test-db
StorageLoc=slurm_acct_db
"""

SLURM_TOOLS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch")
ACCOUNTING_TOOLS = ("slurmdbd", "mariadbd", "mariadb-install-db", "mariadb")


def slurm_installed(accounting=False):
    return all(shutil.which(tool) for tool in SLURM_TOOLS + (ACCOUNTING_TOOLS if accounting else ()))


class SlurmCluster:
    """start() brings the node to idle; stop() ends each daemon by the pid it wrote."""

    def __init__(self, root, accounting=False, extra=""):
        """extra: more slurm.conf lines (say, MaxArraySize=8)."""
        self.root, self.accounting, self.extra = Path(root), accounting, extra
        self.db_proc = None
        self.conf = self.root / "slurm.conf"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))

    def start(self):
        root = self.root
        for sub in ("munge", "state", "spool", "log", "run", "dev"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        for i in range(2):
            os.symlink("/dev/null", root / "dev" / f"gpu{i}")
        munge = root / "munge"
        subprocess.run(["mungekey", "-c", "-k", munge / "munge.key"], check=True)
        subprocess.run(["munged", f"--socket={munge}/munge.sock", f"--key-file={munge}/munge.key",
                        f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log",
                        f"--seed-file={munge}/munged.seed"], check=True)
        dbd_port = free_port("127.0.0.1")
        accounting = (ACCOUNTING if self.accounting else NO_ACCOUNTING).format(root=root, dbd_port=dbd_port)
        self.conf.write_text(SLURM_CONF.format(root=root, ctld_port=free_port("127.0.0.1"),
                                               slurmd_port=free_port("127.0.0.1"), accounting=accounting,
                                               extra=self.extra))
        if self.accounting:
            self.start_database(dbd_port)
        (root / "gres.conf").write_text(f"NodeName=localhost Name=gpu File={root}/dev/gpu[0-1]\n")
        self.start_controller()
        subprocess.run(["slurmd", "-f", self.conf, "-N", "localhost"], check=True, env=self.env)
        self._wait(lambda: self.run("sinfo", "-h", "-o", "%T").stdout.strip() == "idle", "an idle node")

    def start_database(self, dbd_port):
        """MariaDB (its own data folder, loopback port) and slurmdbd on dbd_port."""
        db, db_port = self.root / "db", free_port("127.0.0.1")
        db.mkdir()
        with open(self.root / "log" / "mariadb-install.log", "w") as log:
            subprocess.run(["mariadb-install-db", "--no-defaults", "--user=root", f"--datadir={db}/data",
                            "--auth-root-authentication-method=normal"], stdout=log, stderr=log, check=True)
        self.db_proc = subprocess.Popen(["mariadbd", "--no-defaults", "--user=root", f"--datadir={db}/data",
                          f"--socket={db}/mysqld.sock", f"--port={db_port}", "--bind-address=127.0.0.1",
                          f"--pid-file={db}/mysqld.pid", f"--log-error={self.root}/log/mariadb.err",
                          "--skip-name-resolve"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
        sql = ["mariadb", "--no-defaults", "-S", f"{db}/mysqld.sock", "-uroot"]
        self._wait(lambda: subprocess.run(sql + ["-e", "select 1"], capture_output=True).returncode == 0,
                   "MariaDB")
        subprocess.run(sql + ["-e", "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'throwaway-test-db'; "
                                    "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"], check=True)
        conf = self.root / "slurmdbd.conf"
        conf.write_text(SLURMDBD_CONF.format(root=self.root, dbd_port=dbd_port, db_port=db_port))
        conf.chmod(0o600)  # slurmdbd refuses a config others can read
        subprocess.run(["slurmdbd"], check=True, env=self.env)  # daemonizes; reads slurmdbd.conf next to SLURM_CONF
        self._wait(lambda: self.run("sacctmgr", "-n", "list", "cluster").returncode == 0, "slurmdbd")

    def start_controller(self):
        """slurmctld, recovering the jobs it saved when it last stopped."""
        subprocess.run(["slurmctld", "-f", self.conf], check=True, env=self.env)  # daemonizes
        self._wait(lambda: self.run("scontrol", "ping").returncode == 0, "slurmctld")

    def stop_controller(self):
        stop_by_pid_files(self.root / "run" / "slurmctld.pid")

    def run(self, *argv):
        return subprocess.run(argv, capture_output=True, text=True, env=self.env)

    def queue(self):
        """Job ids (123 or 123_4) in squeue, any state."""
        return self.run("squeue", "-h", "-r", "-o", "%i").stdout.split()

    def _wait(self, ready, what, seconds=20):
        deadline = time.time() + seconds
        while not ready():
            if time.time() > deadline:
                logs = "".join(p.read_text()[-2000:] for p in (self.root / "log").glob("*.log"))
                raise RuntimeError(f"slurm test cluster: no {what} after {seconds} s\n{logs}")
            time.sleep(0.1)

    def stop(self):
        run = self.root / "run"
        stop_by_pid_files(run / "slurmd.pid", run / "slurmctld.pid", run / "slurmdbd.pid")
        if self.db_proc:  # our child: terminate and reap it (a zombie would look alive)
            self.db_proc.terminate()
            self.db_proc.wait(30)
        stop_by_pid_files(self.root / "munge" / "munged.pid")


def stop_by_pid_files(*pid_files):
    """SIGTERM the daemons whose pids the files hold, then wait (10 s at most) until they are gone."""
    pids = []
    for pid_file in pid_files:
        try:
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGTERM)
            pids.append(pid)
        except (OSError, ValueError):
            pass
    for _ in range(100):
        if not any(alive(pid) for pid in pids):
            return
        time.sleep(0.1)


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
