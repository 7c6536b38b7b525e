"""Which jobs may train together in one process (a pack, pack_train.py), and how many.

No torch and no paramiko: the planner groups its jobs with it; engine.pack checks its
members against the same list of flags (engine.flags.MAY_DIFFER).
"""
import json
import math
import posixpath

from engine.flags import MAY_DIFFER, NOT_FLAGS
from engine.modes import mode_of

PACK_SCRIPT = "oct1_train.py"  # the CLI whose jobs pack_train.py trains (it parses them with its parser)
TRAINER = "pack_train.py"  # beside it
# pack "auto" on a GPU: members per process. 32 is the measured peak of issue 15's table (32 models in
# one process: 5.3x one eager job on an H200); 512 MiB per member is a documented allowance, not a
# measurement (the `test` CNN's parameters, AdamW state and a batch of 64 windows of 6 x 3000 need far less).
MAX_AUTO = 32
MIB_PER_MEMBER = 512
MAX_JOBS_TEXT = 100_000  # characters of the members' JSON on a pack's command line


def pack_group(job, phase):
    """What jobs must share to train in one pack: the phase and every flag outside MAY_DIFFER
    (job_id and base_key aside), so members of different architectures (--model, --model_args and
    the flags that shape `test`) never share one. None for a job that trains alone. Every model
    packs; pack_train.py runs the members of a model it cannot stack one after another."""
    if job.get("print_base_key") or not mode_of(job.get("mode")).packable:
        return None
    shared = {k: v for k, v in job.items() if k not in MAY_DIFFER and k not in NOT_FLAGS}
    return json.dumps([phase, shared], sort_keys=True)


def next_pack(ready, limit, spread):
    """The tasks to start together from `ready` (in queue order, each with .pack_key and .pack_cap):
    the first and up to limit - 1 later ones of its group, but no more than its group's share of the
    `spread` slots that wait for work, so that a few slots do not take every job while others idle,
    and no more than the first one's pack_cap (set when a pack of it ran out of memory)."""
    first = ready[0]
    limit = min(limit, first.pack_cap or limit)
    if first.pack_key is None or limit <= 1:
        return [first]
    group = [task for task in ready if task.pack_key == first.pack_key]
    group = group[:max(1, min(limit, math.ceil(len(group) / max(1, spread))))]
    # The jobs travel as one argument: Linux refuses an argument over 128 KiB (E2BIG).
    sizes = [len(json.dumps(task.job)) + 2 for task in group]
    fits = next((n for n in range(len(group), 0, -1) if sum(sizes[:n]) <= MAX_JOBS_TEXT), 1)
    return group[:fits]


def pack_limit(server, device, gpu_auto_size):
    """Members per process on one slot: the server's "pack"; "auto" is 1 on the CPU and
    gpu_auto_size() on a GPU."""
    if server["pack"] != "auto":
        return server["pack"]
    return 1 if device == "cpu" else gpu_auto_size()


def auto_size(total_mib, others_mib, slots_on_device):
    """pack "auto" on a GPU: MIB_PER_MEMBER per member of the memory others leave free, shared
    by the device's slots, between 1 and MAX_AUTO."""
    free = max(0, total_mib - others_mib) / max(1, slots_on_device)
    return max(1, min(MAX_AUTO, int(free // MIB_PER_MEMBER)))


def trainer_path(script):
    """pack_train.py beside the training script, or None when the script's jobs cannot be packed."""
    if posixpath.basename(script) != PACK_SCRIPT:
        return None
    return posixpath.join(posixpath.dirname(script), TRAINER)
