"""One host's GPUs as nvidia-smi sees them: which devices other people's processes fill
(busy: their slots wait), and how many pack members fit on a device (pack "auto").

    watch = GpuWatch(server, host, say)     # one per host, shared by its slots
    if not watch.busy(slot.device): ...      # run a job there
    watch.slot_freed()                       # a job ended: the next busy() looks again

One look is one host.run of QUERY (after the server's setup); the slots of a host share it.
"""
import threading
import time

from runner.commands import in_workdir
from runner.packing import auto_size
from runner.ssh.hosts import last_line

FORMAT = "--format=csv,noheader,nounits"
# Every device's memory, then the compute apps with each one's process group (the runner's own
# jobs are told apart by it). A failing nvidia-smi fails the line, its own message last.
QUERY = (f"nvidia-smi --query-gpu=index,uuid,memory.total,memory.used {FORMAT}"
         f" && apps=$(nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory {FORMAT})"
         " && echo @@APPS && echo \"$apps\" && echo @@GROUPS"
         " && for pid in $(echo \"$apps\" | cut -s -d, -f2); do ps -o pid=,pgid= -p \"$pid\" || true; done")
QUERY_TIMEOUT_S = 60.0  # nvidia-smi can hang on a broken GPU; the host's slots must not hang with it


def fields_of(line, count):
    """The comma-separated fields of a line, stripped, or None when it has not `count` of them."""
    fields = [f.strip() for f in line.split(",")]
    return fields if len(fields) == count else None


def read_look(output, own_groups):
    """({device: (total MiB, MiB used by others)}, {devices showing one of our processes}) from
    QUERY's output, each device under its index (as text) and its UUID. Others' = memory.used
    minus what the compute apps whose process group is in own_groups use (memory of processes
    nvidia-smi cannot see counts as others')."""
    gpu_part, rest = output.split("@@APPS\n", 1)
    app_part, group_part = rest.split("@@GROUPS\n", 1)
    groups = {}
    for line in group_part.splitlines():
        pid_pgid = line.split()
        if len(pid_pgid) == 2 and all(x.isdigit() for x in pid_pgid):
            groups[pid_pgid[0]] = int(pid_pgid[1])
    own = {}  # uuid: MiB used by the runner's own jobs
    for line in app_part.splitlines():
        fields = fields_of(line, 3)
        if fields and fields[2].isdigit() and groups.get(fields[1]) in own_groups:
            own[fields[0]] = own.get(fields[0], 0) + int(fields[2])
    figures, own_seen = {}, set()
    for line in gpu_part.splitlines():  # lines the setup printed do not parse, and are passed over
        fields = fields_of(line, 4)
        if fields and fields[0].isdigit() and fields[2].isdigit() and fields[3].isdigit():
            index, uuid, total, used = fields[0], fields[1], int(fields[2]), int(fields[3])
            figures[index] = figures[uuid] = (total, max(0, used - own.get(uuid, 0)))
            if uuid in own:
                own_seen |= {index, uuid}
    return figures, own_seen


class GpuWatch:
    """One host's GPUs as nvidia-smi sees them, shared by the host's slots (thread-safe)."""

    def __init__(self, server, host, say, recheck_s=60.0):
        self.server, self.host, self.say, self.recheck_s = server, host, say, recheck_s
        self.watching = server["gpus"] == "auto"  # listed devices were chosen by the user: never busy
        self._lock = threading.Lock()  # held through a look: concurrent callers wait for that one
        self._looked_at = None  # time.monotonic() of the last look; None: never
        self._freed = False  # a slot finished since the last look
        self._figures = {}  # device: (total MiB, others' MiB), from the last look that answered
        self._busy = set()  # indices (text) of the devices said busy
        self._ours = set()  # the devices where the runner had a job at the last busy() call
        self._failing = False  # the last look failed (said once until one answers)

    def slot_freed(self):
        """Some slot of the run finished a job: the next busy() looks again."""
        self._freed = True

    def busy(self, device, ours=()):
        """True when processes that are not the runner's use more than max_busy_memory_mb of the
        device (always False on "cpu" and when the server lists its devices). ours: the devices
        (as text) where the runner has a job now; one of them on which nvidia-smi shows none of
        our processes (containers, MIG) keeps its state, as our memory would read as others'."""
        if device == "cpu" or not self.watching:
            return False
        with self._lock:
            self._ours = set(ours)
            if (self._freed or self._looked_at is None
                    or time.monotonic() - self._looked_at > self.recheck_s):
                self._look()
            return str(device) in self._busy

    def pack_size(self, device):
        """Members per pack on the device (packing.auto_size) from the last look; 1 on "cpu" and
        while nvidia-smi never answered."""
        if device == "cpu":
            return 1
        with self._lock:
            if self._looked_at is None:
                self._look()
            figures = self._figures.get(str(device))
        return auto_size(*figures, self.server["slots_per_gpu"]) if figures else 1

    def _look(self):
        self._freed = False  # a slot freed while nvidia-smi runs asks for the next look
        try:
            result = self.host.run(in_workdir(self.server, QUERY), timeout=QUERY_TIMEOUT_S)
        except BaseException:  # HostDown, Ctrl-C: the next caller looks again
            self._freed = True
            raise
        self._looked_at = time.monotonic()
        name = self.server["name"]
        if not result.ok:
            if not self._failing:
                self.say(f"{name}: nvidia-smi failed ({last_line(result)}); its GPUs count as free and "
                         f"pack sizes keep the last figures until it answers again")
            self._failing, self._busy = True, set()
            return
        self._failing = False
        self._figures, own_seen = read_look(result.stdout, self.host.running_groups())
        if self.watching:
            self._note_busy(name, self._ours - own_seen)

    def known_busy(self, device):
        """Whether the last look found the device busy (no new look)."""
        return str(device) in self._busy

    def _note_busy(self, name, unattributable):
        """Update the busy devices from the figures, saying each one that changes. A device in
        unattributable (our job runs there, nvidia-smi shows none of our processes) keeps its state."""
        limit = self.server["max_busy_memory_mb"]
        busy = set()
        for index in sorted((d for d in self._figures if d.isdigit()), key=int):
            others = self._figures[index][1]
            if index in unattributable:
                busy |= {index} & self._busy
            elif others > limit:
                busy.add(index)
                if index not in self._busy:
                    self.say(f"{name}:gpu {index}: {others} MiB in use by other processes (over "
                             f"max_busy_memory_mb {limit}); its slots wait and look again when a slot frees")
            elif index in self._busy:
                self.say(f"{name}:gpu {index}: free again ({others} MiB in use by other processes)")
        self._busy = busy
