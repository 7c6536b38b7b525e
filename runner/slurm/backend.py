"""The Slurm backend under the driver (runner.driver): the planner's ready tasks, packed, submitted
as sbatch job arrays (an array task per pack; a dependent as soon as its base task is queued, with
--dependency on it), in waves that fit the user's submit limit, watched with squeue (every poll_s
seconds, longer while nothing ends), their ends read from sacct or scontrol and told to the planner
member by member (ends.py); Ctrl-C cancels what it submitted.

Slurm grants the GPU (CUDA_VISIBLE_DEVICES). The run dir and workdir are on the filesystem the
compute nodes share with this machine, so a job's log and results need no copy (no fetch).
"""
import itertools
import math
import os
import sys
import time

from engine.fileio import ConfigError
from runner.driver import Stop, error_line
from runner.report import Figures
from runner.slurm.ends import DONE, done_by_its_log, tell_plan
from runner.slurm.preflight import PreflightError
from runner.slurm.queue import SlurmUnreachable, final_states, first_line, queue_states, slurm
from runner.slurm.run import adopt, prepare
from runner.slurm.scripts import array_script, phase_arrays, sbatch_argv, sbatch_options

STILL_RUNNING = ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "REQUEUED", "RESIZING", "SUSPENDED")
GONE_AFTER_S = 600.0  # a task neither squeue nor the accounting knows for this long is lost (accounting lags)
UNREACHABLE_S = 120.0  # squeue failing this long ends the watch (the jobs stay queued)
SUBMIT_GIVE_UP_S = 1800.0  # sbatch refusing a resubmission this long ends the run (retried with backoff)
# Pending reasons that never clear by waiting: the task is cancelled and fails for good, with the reason.
# (Not PartitionConfig: the test cluster shows it for a few seconds after a submission.)
NEVER_STARTS = ("PartitionTimeLimit", "PartitionNodeLimit", "InvalidAccount", "InvalidQOS",
                "QOSMaxWallDurationPerJobLimit", "AssocMaxWallDurationPerJobLimit", "BadConstraints")


class SubmitError(Exception):
    """sbatch refused a submission; the message is its one-line reason."""


class SlurmBackend:
    name = "slurm"

    def __init__(self, plan, settings, script, run_dir, say, timeout=None, resume=None, detach=False,
                 allow_mismatch=False, sync_env=False):
        """resume: the ledger's lines, to watch what an earlier run left queued (None: --no-resume);
        detach: submit the first wave and end the run (--detach); sync_env: the preflight job installs
        requirements.txt first (--sync-env)."""
        self.plan, self.settings, self.script, self.say = plan, settings, script, say
        self.resume, self.detach, self.allow_mismatch, self.sync_env = resume, detach, allow_mismatch, sync_env
        self.out_dir = run_dir / "slurm"
        self.options = sbatch_options(settings, timeout)
        self.pack = 1  # jobs per array task (scripts.pack_limit, once the preflight has told the GPU)
        self.limits = {}  # queue.limits(): the most tasks per array, and queued at once
        self.submitted = []  # every array id this run submitted
        self.missing = {}  # slurm job: when it was first unknown to Slurm
        self.states = {}  # slurm job: its state at the last poll
        self.watching = False  # polled once: a submission sbatch refuses is tried again, not the end
        self.wait_s = settings["poll_s"]  # until the next poll
        self.failing_since = self.refused_since = None  # squeue failing, sbatch refusing, since
        self.news = None  # runner.news.News, set by the driver (nothing here only Slurm sees is told)

    def open(self):
        """Take back what an earlier run left queued; with tasks to submit, the preflight, the pack
        size and the cluster's limits (run.py). Nothing of this run is submitted yet."""
        try:
            adopted = adopt(self, self.resume) if self.resume is not None else 0
            if self.plan.waiting:
                prepare(self, self.allow_mismatch, self.sync_env)
        except (ConfigError, PreflightError) as e:
            raise Stop(error_line(e), 2) from None
        except SlurmUnreachable as e:
            raise Stop(error_line(e), 3) from None
        except KeyboardInterrupt:  # while the preflight waits for a node: it goes too
            slurm("scancel", "--me", "--name=preflight")
            raise Stop("interrupted before anything was submitted", 130) from None
        if adopted:
            print(f"resume: watching {adopted} jobs already in Slurm", file=sys.stderr)

    def where(self):
        account = f", account {self.settings['account']}" if self.settings["account"] else ""
        return f"the Slurm partition {self.settings['partition'] or '(default)'}{account}"

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

    def capacity(self):
        """An array task for each pack the queue has room for, of up to self.pack jobs. One "slot":
        the planner's count of processes out only shares packs among idle SSH slots, so here a pack
        takes up to self.pack of its group."""
        room, place = self.room(), (None, self.pack)
        return (itertools.repeat(place) if room == math.inf else itertools.repeat(place, max(0, room))), 1

    def start(self, packs):
        """Submit the packs as arrays. A refusal before the watch began, or one that lasts
        SUBMIT_GIVE_UP_S, cancels what the run submitted and ends it (exit 2): nothing half-submitted
        stays queued; else they wait for the next try. --detach ends the run after the first wave."""
        try:
            self.submit_packs([tasks for _, tasks in packs])
            self.refused_since = None
        except SubmitError as e:  # the controller busy or restarting: the tasks wait for the next try
            self.refused_since = self.refused_since or time.time()
            if not self.watching or time.time() - self.refused_since > SUBMIT_GIVE_UP_S:
                self.cancel_all()
                raise Stop(error_line(e), 2) from None
            self.say(f"warning: {e}; submitting again later", important=True)
        if self.detach and not self.watching:
            raise Stop(f"detached: {len(self.plan.out)} jobs queued in Slurm (arrays {', '.join(self.submitted)}); "
                       f"rerun the same command without --detach to watch them", 0)

    def submit_packs(self, packs):
        """Submit packs, phase by phase, in arrays; a dependent goes as soon as its base task is queued.
        What sbatch did not take (or Ctrl-C) waits again."""
        submitted = []
        try:
            for name, members, bases in phase_arrays(packs, self.plan.building, self.limits.get("max_array")):
                self.submit(name, members, bases)
                submitted += members
        except BaseException:
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
        """Read the ends (read_ends); squeue failing is ridden out for UNREACHABLE_S (a controller
        restart is brief), then the run ends with the jobs left queued. Returns whether tasks are out."""
        self.watching = True
        try:
            # Quick while tasks end, slower (up to twice poll_s) while none does.
            poll_s = self.settings["poll_s"]
            self.wait_s = poll_s if self.read_ends() else min(self.wait_s * 1.5, 2 * poll_s)
            self.failing_since = None
        except SlurmUnreachable as e:
            self.failing_since = self.failing_since or time.time()
            if time.time() - self.failing_since > UNREACHABLE_S:
                raise Stop(error_line(f"{e} for {UNREACHABLE_S:.0f} s; submitted jobs stay in Slurm: rerun the "
                                      f"same command to watch them"), 3) from None
            self.say(f"warning: {e}; asking again", important=True)
        return bool(self.plan.out)

    def wait(self):
        time.sleep(self.wait_s)

    def pending(self):
        """Tasks out that Slurm has not started yet."""
        running = sum(len(tasks) for job, tasks in self.active().items() if self.states.get(job) == "RUNNING")
        return len(self.plan.out) - running

    def read_ends(self):
        """Ask Slurm once; handle every array task that ended, or that can never start. Returns
        whether any did."""
        active = self.active()
        if not active:
            return False  # nothing to ask about
        queued = queue_states()
        self.states.update({job: state for job, (state, _) in queued.items() if job in active})
        gone = [job for job in active if job not in queued]
        for job in set(active) - set(gone):
            self.missing.pop(job, None)  # listed again: its lag budget starts afresh when it goes
        ended = final_states(gone) if gone else {}
        # Bases first: a failed base withdraws its dependents before their own end is read.
        for job in sorted(gone, key=lambda j: not active[j][0].builds):
            tasks = [task for task in active[job] if task in self.plan.out]
            if not tasks:
                continue  # withdrawn meanwhile
            if job in ended and ended[job][0] not in STILL_RUNNING:
                self.missing.pop(job, None)
                self.ended(job, tasks, *ended[job])
            elif time.time() - self.missing.setdefault(job, time.time()) > GONE_AFTER_S:
                self.lost(tasks, job)
        # After the ends: a base's retry withdraws its dependents before their own reason is read.
        stuck = {job: reason for job, (state, reason) in queued.items()
                 if job in active and state == "PENDING" and reason in NEVER_STARTS}
        for job, reason in stuck.items():
            if all(task in self.plan.out for task in active[job]):
                self.never_starts(active[job], reason)
        return bool(stuck or any(job in ended for job in gone))

    def ended(self, job, tasks, state, exit_status, times):
        """The array task ended: each member's end to the planner (ends.py)."""
        tell_plan(self.plan, self.say, self.settings["workdir"], self.out_dir / f"{job}.out", tasks, state,
                  exit_status, times)

    def lost(self, tasks, job):
        """Neither squeue nor the accounting has known the task for GONE_AFTER_S: a member whose log
        and result show it finished is done; the others end UNKNOWN (retried)."""
        left = [task for task in tasks if not done_by_its_log(self.plan, task, task.record, self.settings["workdir"])]
        if left:
            self.ended(job, left, "UNKNOWN", None, {})

    def never_starts(self, tasks, reason):
        """A pending task Slurm will never start as asked (say, a time limit above the partition's
        MaxTime): cancelled, and failed for good with the reason."""
        job = tasks[0].record["slurm_job"]
        if slurm("scancel", job).returncode:
            return  # asked again at the next poll
        for task in tasks:
            self.plan.fail(task, "failed", retry=False, state="PENDING", error=f"Slurm will never start it: {reason}")
        self.say(f"{', '.join(t.job_id for t in tasks)}: pending for {reason}, which never clears: cancelled "
                 f"(check time, partition, account and qos)", important=True)

    def cancel(self, tasks):
        """scancel submissions the planner withdraws (their base failed or runs again); returns
        those left alone: a dependent that already runs is never withdrawn (its base had ended
        well for Slurm after all)."""
        running = [task for task in tasks if self.states.get(task.record["slurm_job"]) == "RUNNING"]
        stop = sorted({task.record["slurm_job"] for task in tasks if task not in running})
        if stop and slurm("scancel", *stop).returncode:
            return tasks  # not cancelled: they stay out and their end is read, never submitted twice
        return running

    def cancel_all(self, wait_s=30):
        """scancel every array this run submitted or adopted; wait until squeue no longer lists them.
        Where scancel fails, the ledger keeps them open: a rerun watches them."""
        active = self.active()
        arrays = sorted({job.split("_")[0] for job in active})  # not those Slurm may have purged
        if not arrays:
            return
        out = slurm("scancel", *arrays)
        if out.returncode:
            self.say(f"warning: scancel failed ({first_line(out.stderr)}): the jobs may still be queued; rerun "
                     f"the same command to watch them, or scancel {' '.join(arrays)}", important=True)
            return
        ended = final_states(list(active))
        for job, tasks in active.items():  # one that ended well since the last poll is done, not cancelled
            if ended.get(job, ("",))[0] == DONE:
                self.ended(job, tasks, *ended[job])
            else:
                for task in tasks:
                    self.plan.stopped(task, state="CANCELLED", error="interrupted")
        deadline = time.time() + wait_s
        try:
            while time.time() < deadline and any(job.split("_")[0] in arrays for job in queue_states()):
                time.sleep(0.2)
        except SlurmUnreachable as e:
            self.say(f"warning: {e}; cannot confirm the cancel: check squeue", important=True)

    def stop(self):
        print("interrupted: cancelling the submitted jobs (scancel) ...", file=sys.stderr)
        self.cancel_all()

    def close(self):
        pass  # nothing held: every Slurm command is a process of its own

    def figures(self, wall):
        return Figures(log={"arrays": self.submitted, "pack": self.pack, **self.limits})
