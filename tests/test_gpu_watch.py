"""gpu_watch.GpuWatch on a real LocalHost, with a fake nvidia-smi first on PATH (through the
server's setup) that answers the two queries from files the test writes and notes each call."""
import shlex
import subprocess
import threading
import time

import pytest

from runner.config import check_server
from runner.ssh import shell
from runner.ssh.gpu_watch import GpuWatch

FAKE_SMI = """#!/bin/sh
state={state}
echo "$*" >> "$state/calls"
if [ -f "$state/delay" ]; then sleep "$(cat "$state/delay")"; fi
if [ -f "$state/fail" ]; then
  echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
  exit 9
fi
case "$1" in
  --query-gpu=index) cut -d, -f1 "$state/gpus" ;;  # the runner's first question (hosts.ask_gpus)
  --query-gpu=*) cat "$state/gpus" ;;
  --query-compute-apps=*) cat "$state/apps" ;;
esac
"""
TOTAL = 16384
UUIDS = ("GPU-aaaa-0000", "GPU-bbbb-1111")


class FakeSmi:
    def __init__(self, folder):
        self.state = folder / "smi state"  # spaces: the paths must be quoted all the way
        self.state.mkdir()
        self.bin = folder / "fake bin"
        self.bin.mkdir()
        script = self.bin / "nvidia-smi"
        script.write_text(FAKE_SMI.format(state=shlex.quote(str(self.state))))
        script.chmod(0o755)
        self.show(used=(0, 0))

    def show(self, used, apps=()):
        """Two GPUs of TOTAL MiB with `used` MiB in use; apps: (device, pid, MiB) compute apps."""
        (self.state / "gpus").write_text("".join(f"{i}, {UUIDS[i]}, {TOTAL}, {u}\n" for i, u in enumerate(used)))
        (self.state / "apps").write_text("".join(f"{UUIDS[d]}, {pid}, {mib}\n" for d, pid, mib in apps))

    def fail(self):
        (self.state / "fail").touch()

    @property
    def calls(self):
        path = self.state / "calls"
        return path.read_text().splitlines() if path.exists() else []

    @property
    def looks(self):
        return sum(call.startswith("--query-gpu=") for call in self.calls)

    def server(self, **fields):
        return check_server({"host": "gpuhost", "local": True, "gpus": "auto", "max_busy_memory_mb": 1024,
                             "setup": f"export PATH={shlex.quote(str(self.bin))}:$PATH", **fields}, "test")


@pytest.fixture
def smi(tmp_path):
    return FakeSmi(tmp_path)


@pytest.fixture
def host():
    host = shell.LocalHost("gpuhost")
    yield host
    host.kill_running()
    host.close()


@pytest.fixture
def other_process():
    """Someone else's process on the GPU: a real sleep in its own session."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    yield proc.pid
    proc.kill()
    proc.wait()


def busy_line(index, mib):
    return (f"gpuhost:gpu {index}: {mib} MiB in use by other processes (over max_busy_memory_mb 1024); "
            f"its slots wait and look again when a slot frees")


def test_a_device_filled_by_another_process_is_busy_and_said_once(smi, host, other_process):
    smi.show(used=(300, 5000), apps=[(1, other_process, 5000)])
    said = []
    watch = GpuWatch(smi.server(), host, said.append)
    assert watch.busy(1) is True
    assert watch.busy(0) is False  # 300 MiB: under 1024
    assert watch.busy(1) is True
    assert said == [busy_line(1, 5000)]  # nothing more while the state does not change
    assert smi.calls == ["--query-gpu=index,uuid,memory.total,memory.used --format=csv,noheader,nounits",
                         "--query-compute-apps=gpu_uuid,pid,used_memory --format=csv,noheader,nounits"]

def test_a_device_running_our_job_that_nvidia_smi_cannot_attribute_keeps_its_state(smi, host, other_process):
    # In a container nvidia-smi may list none of our processes: our job's memory reads as others'.
    smi.show(used=(5000, 5000), apps=[(1, other_process, 5000)])
    said = []
    watch = GpuWatch(smi.server(), host, said.append)
    assert watch.busy(0, ours={"0"}) is False and watch.known_busy(0) is False  # not said busy for our own
    assert watch.busy(1, ours={"0"}) is True  # no job of ours there: someone else's 5000 MiB
    assert said == [busy_line(1, 5000)]
    watch.slot_freed()
    assert watch.busy(1, ours={"0", "1"}) is True  # it was busy before our job came: it stays so
    smi.show(used=(0, 5000), apps=[(1, other_process, 5000)])
    watch.slot_freed()
    assert watch.busy(0) is False and watch.busy(1) is True and len(said) == 1


def test_memory_of_the_runners_own_command_is_not_counted(smi, host, tmp_path, other_process):
    pid_file = tmp_path / "job pid"
    job = threading.Thread(target=host.run, args=(f"echo $$ > {shlex.quote(str(pid_file))}; sleep 60",))
    job.start()
    try:
        deadline = time.time() + 30
        while not (pid_file.exists() and pid_file.read_text().strip()) and time.time() < deadline:
            time.sleep(0.02)
        own = int(pid_file.read_text())
        assert own in host.running_groups()
        # Device 0: the runner's job (5000) and 200 MiB no process accounts for; device 1: another
        # process with 2000 MiB, beside a pid that no longer exists (its memory counts as others').
        smi.show(used=(5200, 2100), apps=[(0, own, 5000), (1, other_process, 2000), (1, 999999999, 100)])
        said = []
        watch = GpuWatch(smi.server(slots_per_gpu=1), host, said.append)
        assert watch.busy(0) is False
        assert watch.busy(1) is True
        assert said == [busy_line(1, 2100)]
        assert watch.pack_size(0) == (TOTAL - 200) // 512  # only the 200 MiB are others'
    finally:
        host.kill_running()
        job.join(30)


def test_busy_answers_from_the_last_look_until_a_slot_frees(smi, host, other_process):
    smi.show(used=(0, 5000), apps=[(1, other_process, 5000)])
    said = []
    watch = GpuWatch(smi.server(), host, said.append)
    assert watch.busy(1) is True and smi.looks == 1
    smi.show(used=(0, 0))  # the other process ended
    assert watch.busy(1) is True and watch.busy(0) is False and smi.looks == 1
    watch.slot_freed()
    assert watch.busy(1) is False and smi.looks == 2
    assert watch.busy(1) is False and smi.looks == 2
    assert said == [busy_line(1, 5000), "gpuhost:gpu 1: free again (0 MiB in use by other processes)"]


def test_a_look_older_than_recheck_s_is_taken_again(smi, host):
    watch = GpuWatch(smi.server(), host, print, recheck_s=0.0)
    watch.busy(0)
    watch.busy(0)
    assert smi.looks == 2


def test_concurrent_callers_share_one_look(smi, host):
    (smi.state / "delay").write_text("0.5")  # the look is still running when the others ask
    watch = GpuWatch(smi.server(), host, print)
    start = threading.Barrier(4)
    answers = []

    def ask(device):
        start.wait()
        answers.append(watch.busy(device))

    callers = [threading.Thread(target=ask, args=(k % 2,)) for k in range(4)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(30)
    assert answers == [False] * 4 and smi.looks == 1


def test_a_server_that_lists_its_devices_is_never_busy_and_never_asks(smi, host, other_process):
    smi.show(used=(9000, 9000), apps=[(0, other_process, 9000)])
    said = []
    watch = GpuWatch(smi.server(gpus=[0, 1]), host, said.append)
    assert [watch.busy(0), watch.busy(1), watch.busy("cpu")] == [False, False, False]
    watch.slot_freed()
    assert watch.busy(0) is False
    assert smi.calls == [] and said == []


def test_pack_size_comes_from_memory_left_per_slot_and_is_1_on_cpu(smi, host, other_process):
    smi.show(used=(0, 5000), apps=[(1, other_process, 5000)])
    watch = GpuWatch(smi.server(slots_per_gpu=2), host, print)
    assert watch.pack_size("cpu") == 1 and smi.looks == 0
    assert watch.pack_size(1) == 11  # (16384 - 5000) / 2 slots / 512 MiB per member
    assert watch.pack_size(0) == 16  # 16384 / 2 / 512
    assert watch.pack_size(UUIDS[1]) == 11  # a device named by its UUID
    assert smi.looks == 1


def test_a_failing_nvidia_smi_is_said_once_and_frees_the_devices(smi, host, other_process):
    smi.show(used=(0, 5000), apps=[(1, other_process, 5000)])
    said = []
    watch = GpuWatch(smi.server(slots_per_gpu=2), host, said.append)
    assert watch.busy(1) is True and watch.pack_size(1) == 11
    smi.fail()
    for _ in range(2):
        watch.slot_freed()
        assert watch.busy(1) is False
    assert smi.looks == 3
    assert said == [busy_line(1, 5000),
                    "gpuhost: nvidia-smi failed (exit 9: NVIDIA-SMI has failed because it couldn't "
                    "communicate with the NVIDIA driver.); its GPUs count as free and pack sizes keep the "
                    "last figures until it answers again"]
    assert watch.pack_size(1) == 11  # the last figures


def test_pack_size_is_1_when_nvidia_smi_never_answered(smi, host):
    smi.fail()
    said = []
    watch = GpuWatch(smi.server(), host, said.append)
    assert watch.pack_size(0) == 1 and watch.busy(0) is False
    assert len(said) == 1 and "nvidia-smi failed (exit 9" in said[0]


class Dropping(shell.LocalHost):
    """A host whose connection drops during the next command once `drop` is set."""

    drop = False

    def run(self, command, stream=None, timeout=None):
        if self.drop:
            self.drop = False
            raise shell.HostDown(f"{self.name}: connection lost (test)")
        return super().run(command, stream, timeout)


def test_a_lost_host_propagates_and_the_next_call_looks_again(smi, other_process):
    smi.show(used=(0, 0))
    host = Dropping("gpuhost")
    try:
        watch = GpuWatch(smi.server(), host, print)
        assert watch.busy(1) is False and smi.looks == 1
        smi.show(used=(0, 5000), apps=[(1, other_process, 5000)])
        watch.slot_freed()
        host.drop = True
        with pytest.raises(shell.HostDown):
            watch.busy(1)
        assert watch.busy(1) is True and smi.looks == 2  # the look the drop cut short is taken now
    finally:
        host.close()
