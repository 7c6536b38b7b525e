"""A throwaway single-node Slurm cluster for tests: munge + slurmctld + slurmd on loopback.

Config, state, logs and the munge key live in one folder; ports are free ones picked
at start; two fake GPUs are GRES on /dev/null links, so `--gres=gpu:1` sets
CUDA_VISIBLE_DEVICES. No accounting database: finished jobs are read with
`scontrol show job` (MinJobAge keeps them for 10 minutes). Stopped by pid.
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
MinJobAge=600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/log/jobcomp.txt
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 Sockets=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=4000 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def slurm_installed():
    return all(shutil.which(tool) for tool in ("munged", "mungekey", "slurmctld", "slurmd", "sbatch"))


class SlurmCluster:
    """start() brings the node to idle; stop() ends each daemon by the pid it wrote."""

    def __init__(self, root):
        self.root = Path(root)
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
        self.conf.write_text(SLURM_CONF.format(root=root, ctld_port=free_port("127.0.0.1"),
                                               slurmd_port=free_port("127.0.0.1")))
        (root / "gres.conf").write_text(f"NodeName=localhost Name=gpu File={root}/dev/gpu[0-1]\n")
        self.start_controller()
        subprocess.run(["slurmd", "-f", self.conf, "-N", "localhost"], check=True, env=self.env)
        self._wait(lambda: self.run("sinfo", "-h", "-o", "%T").stdout.strip() == "idle", "an idle node")

    def start_controller(self):
        """slurmctld, recovering the jobs it saved when it last stopped."""
        subprocess.run(["slurmctld", "-f", self.conf], check=True, env=self.env)  # daemonizes
        self._wait(lambda: self.run("scontrol", "ping").returncode == 0, "slurmctld")

    def stop_controller(self):
        stop_by_pid_file(self.root / "run" / "slurmctld.pid")

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
        for pid_file in (self.root / "run" / "slurmd.pid", self.root / "run" / "slurmctld.pid",
                         self.root / "munge" / "munged.pid"):
            stop_by_pid_file(pid_file)


def stop_by_pid_file(pid_file):
    """SIGTERM the daemon whose pid the file holds, and wait (10 s at most) until it is gone."""
    try:
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
