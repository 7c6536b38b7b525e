"""The Slurm backend: the planner's ready tasks submitted as sbatch job arrays (a dependent as
soon as its base task is queued, with --dependency=afterok on it), watched with squeue, their
ends read from sacct or scontrol and told to the planner; Ctrl-C cancels what it submitted.

Slurm grants the GPU (CUDA_VISIBLE_DEVICES). The run dir and workdir are on the filesystem the
compute nodes share with this machine, so a job's log and results need no copy.
"""
import os
import re
import sys
import time
from pathlib import Path

from tqdm import tqdm

from runner.output import OutputLines
from runner.slurm.queue import SlurmUnreachable, final_states, first_line, queue_states, slurm
from runner.slurm.scripts import array_script, phase_arrays, sbatch_argv, sbatch_options

POLL_S = 0.5
DONE = "COMPLETED"
NOT_RETRIED = ("CANCELLED",)  # someone cancelled it on purpose: reported, not retried
STILL_RUNNING = ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING")
GONE_AFTER_POLLS = 10  # a job neither squeue nor the accounting knows for this long is lost
UNREACHABLE_S = 120.0  # squeue failing this long ends the watch (the jobs stay queued)


class SubmitError(Exception):
    """sbatch refused a submission; the message is its one-line reason."""


def attempt_output(log, job_id, attempt):
    """What one attempt wrote into a job's log: the text after its own header."""
    try:
        text = Path(log).read_text(errors="replace")
    except OSError:
        return ""
    headers = list(re.finditer(rf"^=== {re.escape(job_id)} attempt {attempt}: .*$", text, re.MULTILINE))
    return text[headers[-1].end():] if headers else ""


class SlurmBackend:
    def __init__(self, plan, settings, script, run_dir, say, timeout=None):
        self.plan, self.settings, self.script, self.say = plan, settings, script, say
        self.out_dir = run_dir / "slurm"
        self.options = sbatch_options(settings, timeout)
        self.submitted = []  # every array id this run submitted
        self.missing = {}  # slurm job: polls it has been unknown to Slurm
        self.states = {}  # slurm job: its state at the last poll
        self.started = time.time()
        plan.cancel = self.cancel

    def active(self):
        """{slurm job: task} of the submissions out now."""
        return {task.record["slurm_job"]: task for task in self.plan.out}

    # -- submitting

    def submit_ready(self):
        """Submit every task ready now; a dependent goes as soon as its base task is queued."""
        taken = []
        while True:
            tasks = self.plan.take(early=True)
            if not tasks:
                break
            taken += tasks
        submitted = []
        try:
            for name, members, base in phase_arrays(taken, self.plan.building):
                self.submit(name, members, after=base)
                submitted += members
        except SubmitError:  # what sbatch did not take waits again (the run is ending)
            unsent = [task for task in taken if task not in submitted]
            self.plan.put_back(unsent)
            for _ in unsent:
                self.plan.process_done()
            raise

    def submit(self, name, members, after=None):
        """One array of members; after: the base task they wait for."""
        self.plan.log_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f".{name}.sh"
        path.write_text(array_script(members, self.plan, self.settings, self.script))
        argv = sbatch_argv(name, len(members), self.options, self.out_dir, self.settings["max_running"],
                           after.record["slurm_job"] if after else None)
        out = slurm(*argv, str(path))
        if out.returncode:
            raise SubmitError(f"sbatch refused array {name} ({len(members)} tasks): {first_line(out.stderr)}")
        array = out.stdout.strip().split(";")[0]
        os.replace(path, self.out_dir / f"{array}.sh")  # sbatch keeps its own copy; this one is for reading
        self.submitted.append(array)
        for i, task in enumerate(members):
            key = task.builds or task.needs
            self.plan.start([task], "submitted", slurm_job=f"{array}_{i}", submitted=time.time(),
                            **({"base_key": key} if key else {}))
            self.states[f"{array}_{i}"] = "PENDING"
        return array

    # -- watching

    def poll(self):
        """Ask Slurm once; handle every job that ended."""
        active = self.active()
        queued = queue_states()
        self.states.update({job: state for job, state in queued.items() if job in active})
        gone = [job for job in active if job not in queued]
        ended = final_states(gone) if gone else {}
        # Bases first: a failed base withdraws its dependents before their own end is read.
        for job in sorted(gone, key=lambda j: not active[j].builds):
            task = active[job]
            if task not in self.plan.out:
                continue  # withdrawn meanwhile
            if job in ended and ended[job][0] not in STILL_RUNNING:
                self.missing.pop(job, None)
                self.finish(task, *ended[job])
            else:
                self.missing[job] = self.missing.get(job, 0) + 1
                if self.missing[job] >= GONE_AFTER_POLLS:
                    self.finish(task, "UNKNOWN", None)

    def finish(self, task, state, exit_status):
        """A submission ended: its output read from its log, its end told to the planner."""
        self.plan.process_done()
        output = OutputLines()
        output.feed(attempt_output(task.record["log"], task.job_id, task.attempt).encode())
        output.close()
        self.plan.count_trainings(output.trained)
        fields = {"state": state, "exit_status": exit_status}
        if state == DONE and exit_status == 0:
            self.plan.succeeded(task, output.tail(), **fields)
            return
        cancelled = state in NOT_RETRIED
        again = self.plan.fail(task, "cancelled" if cancelled else "failed", output.tail(), retry=not cancelled,
                                 **fields)
        self.say(f"{task.job_id}: {state} (exit {exit_status})" + (", retrying" if again else ""))

    def cancel(self, tasks):
        """scancel submissions the planner withdraws (their base failed or runs again)."""
        slurm("scancel", *[task.record["slurm_job"] for task in tasks])
        for _ in tasks:
            self.plan.process_done()

    def watch(self):
        """Poll until every task has ended, submitting what becomes ready (retries); Ctrl-C cancels
        what is queued or running."""
        plan = self.plan
        bar = tqdm(total=len(plan.tasks), desc="jobs", unit="job", disable=self.say.quiet, file=sys.stderr)
        failing_since = None
        try:
            while not plan.finished:
                try:
                    self.poll()
                    failing_since = None
                except SlurmUnreachable as e:  # a controller restart is brief; ride it out
                    failing_since = failing_since or time.time()
                    if time.time() - failing_since > UNREACHABLE_S:
                        raise
                    self.say(f"warning: {e}; asking again", important=True)
                self.submit_ready()
                active = self.active()
                running = sum(self.states.get(job) == "RUNNING" for job in active)
                bar.n = len(plan.tasks) - len(active) - len(plan.waiting)
                bar.set_postfix(done=len(plan.ok), failed=len(plan.failed), blocked=len(plan.blocked),
                                running=running, pending=len(active) - running, refresh=True)
                if not plan.finished:
                    time.sleep(POLL_S)
        finally:
            bar.close()

    def cancel_all(self, wait_s=30):
        """scancel every array this run submitted or adopted; wait until squeue no longer lists them."""
        active = self.active()
        arrays = sorted({job.split("_")[0] for job in active} | set(self.submitted))
        if arrays:
            slurm("scancel", *arrays)
        for task in active.values():
            self.plan.stopped(task, state="CANCELLED", error="interrupted")
        deadline = time.time() + wait_s
        try:
            while time.time() < deadline and any(job.split("_")[0] in arrays for job in queue_states()):
                time.sleep(0.2)
        except SlurmUnreachable as e:
            self.say(f"warning: {e}; cannot confirm the cancel: check squeue", important=True)

    # -- resume

    def adopt(self, history):
        """Watch the submissions of an earlier run that Slurm still knows instead of submitting them
        again; returns how many. A submission it no longer knows is "lost" and runs again."""
        closed = {r.get("slurm_job") for r in history if r.get("status") != "submitted"}
        open_ = {r["job_id"]: r for r in history if r.get("status") == "submitted" and r["slurm_job"] not in closed}
        if not open_:
            return 0
        known = set(queue_states()) | set(final_states([r["slurm_job"] for r in open_.values()]))
        for task in self.plan.waiting:
            record = open_.get(task.job_id)
            if record and record["slurm_job"] in known:
                self.plan.adopt(task, record)
            elif record:
                self.plan.note(task.job_id, "lost", slurm_job=record["slurm_job"])
        # A dependent waits on its base's task: if that base is to be submitted anew, so is it.
        new_bases = {task.builds for task in self.plan.waiting if task.builds}
        self.plan.withdraw([task for task in self.plan.out if task.needs in new_bases], "base resubmitted")
        return len(self.plan.out)
