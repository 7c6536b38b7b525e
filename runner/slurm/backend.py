"""The Slurm backend: the planner's ready tasks, packed, submitted as sbatch job arrays (an array
task per pack; a dependent as soon as its base task is queued, with --dependency on it), in
waves that fit the user's submit limit, watched with squeue, their ends read from sacct or
scontrol and told to the planner member by member; Ctrl-C cancels what it submitted.

Slurm grants the GPU (CUDA_VISIBLE_DEVICES). The run dir and workdir are on the filesystem the
compute nodes share with this machine, so a job's log and results need no copy.
"""
import math
import os
import re
import sys
import time
from pathlib import Path

from tqdm import tqdm

from engine.base_cache import entry_intact
from runner.jobs import cache_entry
from runner.output import OutputLines, printed
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
        self.pack = 1  # jobs per array task (scripts.pack_limit, once the preflight has told the GPU)
        self.limits = {}  # queue.limits(): the most tasks per array, and queued at once
        self.submitted = []  # every array id this run submitted
        self.missing = {}  # slurm job: polls it has been unknown to Slurm
        self.states = {}  # slurm job: its state at the last poll
        self.started = time.time()
        plan.cancel = self.cancel

    def active(self):
        """{slurm job: its tasks} of the submissions out now (a pack's members share one)."""
        found = {}
        for task in self.plan.out:
            found.setdefault(task.record["slurm_job"], []).append(task)
        return found

    # -- submitting

    def room(self):
        """How many more array tasks may be queued now: the config's max_submit, or the cluster's."""
        limit = self.settings["max_submit"] or self.limits.get("max_submit")
        return limit - len(self.active()) if limit else math.inf

    def submit_ready(self):
        """Submit every pack ready now, as many as the queue has room for (the rest go in later
        waves, as tasks end); a dependent goes as soon as its base task is queued."""
        # (The planner's count of processes out only shares packs among idle SSH slots; with one
        # "slot", as here, a pack takes up to self.pack of its group, so it is not kept.)
        packs, room = [], self.room()
        while len(packs) < room:
            pack = self.plan.take(self.pack, early=True)
            if not pack:
                break
            packs.append(pack)
        submitted = []
        try:
            for name, members, bases in phase_arrays(packs, self.plan.building, self.limits.get("max_array")):
                self.submit(name, members, bases)
                submitted += members
        except SubmitError:  # what sbatch did not take waits again (the run is ending)
            self.plan.put_back([task for pack in packs if pack not in submitted for task in pack])
            raise

    def submit(self, name, packs, bases):
        """One array, task i running packs[i]; bases: the base tasks it waits for."""
        self.plan.log_dir.mkdir(parents=True, exist_ok=True)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f".{name}.sh"
        any_end = any("pack" in base.record for base in bases)  # see sbatch_argv
        path.write_text(array_script(packs, self.plan, self.settings, self.script, after_base=any_end))
        after = tuple(dict.fromkeys(base.record["slurm_job"] for base in bases))
        argv = sbatch_argv(name, len(packs), self.options, self.out_dir, self.settings["max_running"], after,
                           any_end)
        out = slurm(*argv, str(path))
        if out.returncode:
            raise SubmitError(f"sbatch refused array {name} ({len(packs)} tasks): {first_line(out.stderr)}")
        array = out.stdout.strip().split(";")[0]
        os.replace(path, self.out_dir / f"{array}.sh")  # sbatch keeps its own copy; this one is for reading
        self.submitted.append(array)
        for i, pack in enumerate(packs):
            self.plan.start(pack, "submitted", slurm_job=f"{array}_{i}", submitted=time.time(),
                            **({"pack_size": len(pack)} if len(pack) > 1 else {}))
            self.states[f"{array}_{i}"] = "PENDING"
        return array

    # -- watching

    def poll(self):
        """Ask Slurm once; handle every array task that ended."""
        active = self.active()
        queued = queue_states()
        self.states.update({job: state for job, state in queued.items() if job in active})
        gone = [job for job in active if job not in queued]
        ended = final_states(gone) if gone else {}
        # Bases first: a failed base withdraws its dependents before their own end is read.
        for job in sorted(gone, key=lambda j: not active[j][0].builds):
            tasks = [task for task in active[job] if task in self.plan.out]
            if not tasks:
                continue  # withdrawn meanwhile
            if job in ended and ended[job][0] not in STILL_RUNNING:
                self.missing.pop(job, None)
                self.finish(tasks, *ended[job])
            else:
                self.missing[job] = self.missing.get(job, 0) + 1
                if self.missing[job] >= GONE_AFTER_POLLS:
                    self.finish(tasks, "UNKNOWN", None, {})

    def finish(self, tasks, state, exit_status, times):
        """An array task ended: its output read from its log (a pack's is in every member's log);
        each member that printed its last line succeeded, the others failed, or run again."""
        first = tasks[0]
        done = {}  # a member's place in its pack: its tagged lines
        output = OutputLines(lambda i, text: done.setdefault(i, text))
        output.feed(attempt_output(first.record["log"], first.job_id, first.attempt).encode())
        output.close()
        self.plan.count_trainings(output.trained)
        members = first.record.get("pack", [first.job_id])
        if len(members) == 1 and state == DONE and exit_status == 0:
            done[0] = output.text()
        fields = {"state": state, "exit_status": exit_status, **times}
        for task in tasks:
            text = done.get(members.index(task.job_id))
            error = self.incomplete_base(task) if text is not None else None
            if text is not None and not error:
                self.plan.succeeded(task, output.tail(), result_dir=self.result_dir(task, text), **fields)
            elif state in NOT_RETRIED:  # someone cancelled it on purpose: reported, not retried
                self.plan.fail(task, "cancelled", output.tail(), retry=False, **fields)
                self.say(f"{task.job_id}: {state} (exit {exit_status})")
            elif len(members) > 1 and not error:
                why = "exit status 0 but no MEMBER_DONE for it" if exit_status == 0 else f"{state}, exit {exit_status}"
                self.plan.unfinished(task, len(members), output.out_of_memory, why, output.tail(), **fields)
            else:
                bad_flags = exit_status == 2 and output.usage  # fails the same way every time
                again = self.plan.fail(task, "timeout" if state == "TIMEOUT" else "failed", output.tail(),
                                       retry=not bad_flags, **fields, **({"error": error} if error else {}))
                self.say(f"{task.job_id}: {error or f'{state} (exit {exit_status})'}"
                         + (", retrying" if again else f"; log: {task.record['log']}"))

    def incomplete_base(self, task):
        """Why a base task that ended well did not leave its base model complete in the cache under
        the key planned (its code or data changed since planning?), or None."""
        if not task.builds:
            return None
        entry = Path(self.settings["workdir"]) / cache_entry(task.job, task.builds)
        return None if entry_intact(entry) else f"base model {task.builds} is not complete at {entry}"

    def result_dir(self, task, text):
        """Where a finished member's results are: its cache entry, or the folder it printed."""
        return str(cache_entry(task.job, task.builds)) if task.builds else printed(text, "RESULT_DIR")

    def cancel(self, tasks):
        """scancel submissions the planner withdraws (their base failed or runs again)."""
        slurm("scancel", *sorted({task.record["slurm_job"] for task in tasks}))

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
                running = sum(len(tasks) for job, tasks in self.active().items() if self.states.get(job) == "RUNNING")
                bar.n = len(plan.tasks) - len(plan.out) - len(plan.waiting)
                bar.set_postfix(done=len(plan.ok), failed=len(plan.failed), blocked=len(plan.blocked),
                                running=running, pending=len(plan.out) - running, refresh=True)
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
        for task in list(self.plan.out):
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
