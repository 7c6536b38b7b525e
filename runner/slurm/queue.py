"""Slurm's view of the jobs: squeue for what is queued or running, then sacct (where accounting
runs) or `scontrol show job` (Slurm keeps ended jobs there MinJobAge seconds) for how they ended."""
import subprocess


def slurm(*argv):
    return subprocess.run(argv, capture_output=True, text=True)


def first_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


class SlurmUnreachable(Exception):
    """squeue failed (the controller is down or unreachable)."""


def queue_states():
    """{job id ("123_4" for an array task): state} of this user's jobs in squeue."""
    out = slurm("squeue", "--me", "-h", "-r", "-o", "%i|%T")
    if out.returncode:
        raise SlurmUnreachable(f"squeue: {first_line(out.stderr)}")
    return dict(line.split("|", 1) for line in out.stdout.split())


def parse_sacct(text):
    """sacct -P -o JobID,State,ExitCode lines -> {id: (state, exit status)}."""
    states = {}
    for line in text.splitlines():
        fields = line.split("|")
        if len(fields) == 3 and "[" not in fields[0]:
            states[fields[0]] = (fields[1].split()[0] if fields[1] else "UNKNOWN",
                                 int(fields[2].split(":")[0]) if fields[2] else None)
    return states


def parse_scontrol(text):
    """`scontrol show job -o` lines -> {id: (state, exit status)} (array tasks as "123_4")."""
    states = {}
    for line in text.splitlines():
        fields = dict(token.split("=", 1) for token in line.split() if "=" in token)
        if "JobState" not in fields:
            continue
        job = (f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}" if "ArrayTaskId" in fields
               else fields["JobId"])
        states[job] = (fields["JobState"], int(fields.get("ExitCode", "0:0").split(":")[0]))
    return states


def final_states(ids):
    """{id: (state, exit status)} for jobs that left the queue: sacct where accounting runs,
    else `scontrol show job` (jobs stay there MinJobAge seconds after they end)."""
    arrays = sorted({job.split("_")[0] for job in ids})
    out = slurm("sacct", "-n", "-P", "-X", "-j", ",".join(arrays), "-o", "JobID,State,ExitCode")
    if out.returncode == 0:
        return parse_sacct(out.stdout)
    states = {}
    for array in arrays:
        states.update(parse_scontrol(slurm("scontrol", "show", "job", "-o", array).stdout))
    return states
