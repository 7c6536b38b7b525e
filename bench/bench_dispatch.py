"""Dispatch overhead: this runner against GNU parallel on trivial jobs over SSH.

    python bench/bench_dispatch.py [--jobs 200] [--slots-per-host 2]

Starts two throwaway sshd on 127.0.0.1 and 127.0.0.2 (as the tests do), then runs
the same N jobs (a Python script that exits at once) with the same number of
slots per host, first with run_distributed_training.py (one SSH connection per
host, a reused shell session per slot) and then with `parallel --sshloginfile`
(an ssh login per job). Prints both wall times (each includes the dispatcher's
own start), their ratio, and each one's overhead per job: (wall - the wall of the
same jobs run here directly by xargs -P, as many at a time) * slots / jobs.
Needs root (sshd), OpenSSH's server and GNU parallel.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import LoopbackSSHD, keygen, write_known_hosts  # noqa: E402  (the tests' sshd helper)


def direct_wall(script, n, slots):
    """Seconds the n jobs take run here directly, `slots` at a time (xargs -P), no SSH."""
    started = time.perf_counter()
    subprocess.run(["xargs", "-P", str(slots), "-I{}", sys.executable, str(script), "--fold", "{}"],
                   input="\n".join(map(str, range(n))), text=True, check=True)
    return time.perf_counter() - started


def timed(command, **kwargs):
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kwargs)
    if done.returncode:
        sys.exit(f"{command[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return time.perf_counter() - started


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--slots-per-host", type=int, default=2)
    args = p.parse_args()
    if not shutil.which("parallel") or not os.path.exists("/usr/sbin/sshd"):
        sys.exit("needs GNU parallel and openssh-server (apt-get install parallel openssh-server)")

    tmp = Path(tempfile.mkdtemp(prefix="bench_dispatch"))
    key = tmp / "id_ed25519"
    pub = keygen(key)
    servers = [LoopbackSSHD(tmp / address, address, pub) for address in ("127.0.0.1", "127.0.0.2")]
    try:
        known = write_known_hosts(tmp / "known_hosts", *servers)
        script = tmp / "trivial.py"
        script.write_text("")  # exits at once
        n, spg = args.jobs, args.slots_per_host
        slots = spg * len(servers)
        direct = direct_wall(script, n, slots)

        cluster = tmp / "cluster.json"
        cluster.write_text(json.dumps({
            "servers": [s.server(ssh_key=str(key), gpus=spg) for s in servers],
            "script_path": str(script), "known_hosts": known, "ssh_config": str(tmp / "none")}))
        jobs = tmp / "jobs.json"
        jobs.write_text(json.dumps([{"fold": k, "job_id": f"b{k}"} for k in range(n)]))
        ours = timed([sys.executable, str(ROOT / "run_distributed_training.py"), "--cluster-config",
                      str(cluster), "--jobs-config", str(jobs), "--run-dir", str(tmp / "run"), "--quiet"],
                     cwd=tmp)

        # The same command line per job, one ssh login per job, as GNU parallel does it.
        logins = tmp / "sshloginfile"
        logins.write_text("".join(
            f"{spg}/ssh -F /dev/null -p {s.port} -i {key} -o UserKnownHostsFile={known} "
            f"-o BatchMode=yes root@{s.address}\n" for s in servers))
        command = (f"cd {tmp} && CUDA_VISIBLE_DEVICES=0 {sys.executable} {script} "
                   f"--fold {{}}")
        theirs = timed(["parallel", "--will-cite", "--sshloginfile", str(logins), command, ":::",
                        *map(str, range(n))], env=dict(os.environ, PARALLEL_HOME=str(tmp / "parallel")))
        direct = min(direct, direct_wall(script, n, slots))  # the quieter of two tries
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    def overhead_ms(wall):  # what dispatching added, per job and slot
        return (wall - direct) * slots / n * 1000

    print(f"{n} trivial jobs, {len(servers)} hosts x {spg} slots; "
          f"run here directly, {slots} at a time: {direct:.2f} s")
    print(f"run_distributed_training.py: {ours:7.2f} s  overhead {overhead_ms(ours):6.1f} ms/job")
    print(f"GNU parallel --sshloginfile: {theirs:7.2f} s  overhead {overhead_ms(theirs):6.1f} ms/job")
    print(f"ratio (ours / GNU parallel): {ours / theirs:.2f}  (goal <= 0.5)")


if __name__ == "__main__":
    main()
