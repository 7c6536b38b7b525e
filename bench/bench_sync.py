"""Keeping hosts the same: --sync-code and the pre-run check against a plain `tar | ssh` copy.

    python bench/bench_sync.py [--jobs 100]

Starts two throwaway sshd on 127.0.0.1 and 127.0.0.2 (as the tests do), each with an
empty workdir, and times, over both hosts at once (one thread per host, as the runner
does): the first --sync-code (every project file), a rerun with nothing changed, the
baseline `tar c FILES | ssh host tar x` of the same files (what a lab does by hand:
everything, every time), and the runner's pre-run check (code hash and data
fingerprint on each host, and here) for a grid of N jobs over the demo dataset
(6 participants x 120/40/40 windows of 6 x 3000). Needs root and openssh-server.
"""
import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from conftest import LoopbackSSHD, keygen, write_known_hosts  # noqa: E402  (the tests' sshd helper)
from dataset import synthetic
from runner.config import check_server
from runner.ssh import hostsync
from runner.ssh.connection import RemoteHost


def on_all(hosts, work):
    """Seconds to run work(host, server) on every host at once."""
    started = time.perf_counter()
    threads = [threading.Thread(target=work, args=pair) for pair in hosts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=100)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_sync"))
    key = tmp / "id_ed25519"
    pub = keygen(key)
    servers = [LoopbackSSHD(tmp / a, a, pub) for a in ("127.0.0.1", "127.0.0.2")]
    hosts = []
    try:
        known = write_known_hosts(tmp / "known_hosts", *servers)
        for s in servers:
            host = RemoteHost(s.address, "root", s.port, str(key), known_hosts=known, ssh_config=None)
            host.connect()
            hosts.append((host, check_server(s.server(), "bench")))
        files = hostsync.project_files(ROOT)
        size = sum((ROOT / f).stat().st_size for f in files)
        first = on_all(hosts, lambda h, s: hostsync.sync(h, s, files, local_root=ROOT))
        again = on_all(hosts, lambda h, s: hostsync.sync(h, s, files, local_root=ROOT))

        def tar_ssh(host, server):
            ssh = ["ssh", "-F", "/dev/null", "-p", str(host.port), "-i", str(key), "-o",
                   f"UserKnownHostsFile={known}", "-o", "BatchMode=yes", f"root@{host.hostname}",
                   f"mkdir -p {server['workdir']}/tarcopy && tar x -C {server['workdir']}/tarcopy"]
            tar = subprocess.Popen(["tar", "c", "-C", str(ROOT), *files], stdout=subprocess.PIPE)
            subprocess.run(ssh, stdin=tar.stdout, check=True)
            tar.wait()
        baseline = on_all(hosts, tar_ssh)
        # the demo dataset, here and on both hosts (as --sync-data would leave it)
        synthetic.write_synthetic_dataset(str(tmp / "d"))
        for s in servers:
            subprocess.run(["cp", "-r", str(tmp / "d"), str(s.workdir / "d")], check=True)
        jobs = [{"data_path": str(tmp / "d"), "fold": k % 6, "seed": k, "mode": "target_only"}
                for k in range(args.jobs)]
        started = time.perf_counter()
        checker = hostsync.Checker(jobs, "oct1_train.py")
        local_s = time.perf_counter() - started
        check = on_all(hosts, checker.prepare) + local_s
    finally:
        for host, _ in hosts:
            host.close()
        for s in servers:
            s.stop()
        subprocess.run(["rm", "-rf", str(tmp)])
    print(f"{len(files)} project files, {size / 1e6:.2f} MB, to 2 hosts at once")
    print(f"--sync-code, first copy:        {first:6.2f} s")
    print(f"--sync-code, nothing changed:   {again:6.2f} s")
    print(f"baseline tar | ssh, every file: {baseline:6.2f} s   (first copy / baseline {first / baseline:.2f}, "
          f"unchanged rerun / baseline {again / baseline:.2f})")
    print(f"pre-run check, {args.jobs} jobs over 6 demo participants (hashing here {local_s:.2f} s): "
          f"{check:6.2f} s")


if __name__ == "__main__":
    main()
