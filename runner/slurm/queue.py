"""Slurm's view of the jobs: squeue for what is queued or running, then sacct (where accounting
runs) or `scontrol show job` (Slurm keeps ended jobs there MinJobAge seconds) for how they ended,
and the cluster's limits (array size, jobs a user may queue)."""
import getpass
import re
import subprocess
from datetime import datetime

SACCT_FIELDS = "JobID,State,ExitCode,Submit,Start,End"


CALL_S = 60  # no Slurm command of the runner's may hang it: past this it counts as failed


def slurm(*argv, timeout=CALL_S):
    """Run a Slurm command; one that does not answer within timeout seconds fails (exit 124)."""
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 124, "", f"{argv[0]}: no answer within {timeout} s")


def expand_ids(job_id, task_ids=None):
    """Array task ids: "12_[1-3,7%2]" (sacct) or job "12" with ArrayTaskId "1-3,7%2" (scontrol),
    as a throttled or cancelled array's pending tasks are shown -> ["12_1", "12_2", "12_3", "12_7"]."""
    if task_ids is None:
        found = re.fullmatch(r"(\d+)_\[([^\]]*)\]", job_id)
        if not found:
            return [job_id]
        job_id, task_ids = found.groups()
    ids = []
    for part in task_ids.split("%")[0].split(","):
        first, _, last = part.partition("-")
        if first.isdigit() and (not last or last.isdigit()):
            ids += [f"{job_id}_{i}" for i in range(int(first), int(last or first) + 1)]
    return ids


def first_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


class SlurmUnreachable(Exception):
    """squeue failed (the controller is down or unreachable)."""


def queue_states():
    """{job id ("123_4" for an array task): (state, reason)} of this user's jobs in squeue; the
    reason says why a pending one waits (Priority, Resources, PartitionTimeLimit, ...)."""
    out = slurm("squeue", "--me", "-h", "-r", "-o", "%i|%T|%r")
    if out.returncode:
        raise SlurmUnreachable(f"squeue: {first_line(out.stderr)}")
    states = {}
    for line in out.stdout.splitlines():
        fields = line.split("|")
        if len(fields) == 3:
            for job in expand_ids(fields[0]):
                states[job] = (fields[1], fields[2])
    return states


def times(submit=None, start=None, end=None):
    """{"queued_s", "run_s"} from Slurm's timestamps (2026-12-03T14:00:00), those it has."""
    def at(text):
        try:
            return datetime.fromisoformat(text).timestamp()
        except (TypeError, ValueError):  # "Unknown", "None", absent
            return None
    submit, start, end = at(submit), at(start), at(end)
    found = {"queued_s": start - submit if None not in (submit, start) else None,
             "run_s": end - start if None not in (start, end) else None}
    return {key: value for key, value in found.items() if value is not None}


def parse_sacct(text):
    """sacct -P -o JobID,State,ExitCode[,Submit,Start,End] lines -> {id: (state, exit status, times)}."""
    states = {}
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) in (3, 6):
            for job in expand_ids(fields[0]):
                states[job] = (fields[1].split()[0] if fields[1] else "UNKNOWN",
                               int(fields[2].split(":")[0]) if fields[2] else None, times(*fields[3:6]))
    return states


def parse_scontrol(text):
    """`scontrol show job -o` lines -> {id: (state, exit status, times)} (array tasks as "123_4")."""
    states = {}
    for line in text.splitlines():
        fields = dict(token.split("=", 1) for token in line.split() if "=" in token)
        if "JobState" not in fields:
            continue
        jobs = (expand_ids(fields["ArrayJobId"], fields["ArrayTaskId"]) if "ArrayTaskId" in fields
                else [fields["JobId"]])
        for job in jobs:
            states[job] = (fields["JobState"], int(fields.get("ExitCode", "0:0").split(":")[0]),
                           times(fields.get("SubmitTime"), fields.get("StartTime"), fields.get("EndTime")))
    return states


def final_states(ids):
    """{id: (state, exit status, times)} for jobs that left the queue: sacct where accounting runs,
    else `scontrol show job` (jobs stay there MinJobAge seconds after they end)."""
    arrays = sorted({job.split("_")[0] for job in ids})
    out = slurm("sacct", "-n", "-P", "-X", "-j", ",".join(arrays), "-o", SACCT_FIELDS)
    states = parse_sacct(out.stdout) if out.returncode == 0 else {}
    # Accounting may lag behind the controller: what it does not know yet, scontrol may.
    for array in sorted({job.split("_")[0] for job in ids if job not in states}):
        states.update({job: found for job, found in parse_scontrol(
            slurm("scontrol", "show", "job", "-o", array).stdout).items() if job not in states})
    return states


def limits():
    """{"max_array": tasks one array may hold, "max_submit": array tasks this user may have queued}:
    the controller's MaxArraySize and MaxJobCount (scontrol show config), the second lowered to the
    user's MaxSubmit where accounting knows one; None where Slurm says nothing."""
    try:
        shown = slurm("scontrol", "show", "config").stdout
        config = dict((name.strip(), value.strip()) for name, _, value in
                      (line.partition("=") for line in shown.splitlines()))
        assoc = (slurm("sacctmgr", "-n", "-P", "show", "assoc", f"where user={getpass.getuser()}",
                       "format=MaxSubmit") if "slurmdbd" in config.get("AccountingStorageType", "") else None)
    except OSError:  # no Slurm tools here (a dry run on a laptop)
        return {"max_array": None, "max_submit": None}
    found = {"max_array": config.get("MaxArraySize"), "max_submit": config.get("MaxJobCount")}
    found = {key: int(value) for key, value in found.items() if value and value.isdigit()}
    submit = [int(v) for v in assoc.stdout.split() if v.isdigit()] if assoc and assoc.returncode == 0 else []
    if submit:
        found["max_submit"] = min(submit + [found.get("max_submit", submit[0])])
    return {"max_array": found.get("max_array"), "max_submit": found.get("max_submit")}
