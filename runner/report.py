"""What a run shows, whichever backend ran it: progress lines and the progress bar, the end-of-run
summary, the --log-file JSON report, and the personalization report's headline for the run's prefixes."""
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from engine import fileio
from engine.modes import publishes
from runner.commands import job_counts


class Say:
    """Progress lines on stderr, printed above a progress bar; quiet keeps the important ones only."""

    def __init__(self, quiet=False):
        self.quiet = quiet

    def __call__(self, message, important=False):
        if important or not self.quiet:
            tqdm.write(message, file=sys.stderr)


STATUS_EVERY = 30.0  # seconds between status lines when stderr is not a terminal


class Progress:
    """The run's progress on stderr: a bar on a terminal, else a status line every STATUS_EVERY
    seconds (a bar redrawn into a file is noise); quiet shows neither."""

    def __init__(self, plan, quiet):
        self.plan, self.quiet = plan, quiet
        self.started = self.shown_at = time.time()
        self.bar = tqdm(total=len(plan.tasks), unit="job", disable=quiet or not sys.stderr.isatty(),
                        file=sys.stderr, dynamic_ncols=True)
        self.pending = 0

    def show(self, pending=0):
        """pending: tasks out that wait in the backend's queue; the others out run."""
        plan, self.pending = self.plan, pending
        self.bar.n = self.finished()
        self.bar.set_postfix_str(f"done {len(plan.ok)} failed {len(plan.failed)} blocked {len(plan.blocked)} "
                                 f"running {len(plan.out) - pending}" + (f" pending {pending}" if pending else ""),
                                 refresh=False)
        self.bar.refresh()
        if not self.quiet and not sys.stderr.isatty() and time.time() - self.shown_at >= STATUS_EVERY:
            self.shown_at = time.time()
            print(self.status_line(), file=sys.stderr, flush=True)

    def finished(self):
        plan = self.plan
        return len(plan.ok) + len(plan.failed) + len(plan.cancelled) + len(plan.blocked)

    def status_line(self, stamp=True):
        """'[12:00:30] 7/40 jobs finished: 6 done, 1 failed, 0 blocked, 2 running; ETA 3 min'
        (without stamp, no time first)."""
        plan, finished = self.plan, self.finished()
        eta = "unknown"
        if finished:
            left = (time.time() - self.started) / finished * (len(plan.tasks) - finished)
            eta = f"{left:.0f} s" if left < 120 else f"{left / 60:.0f} min"
        cancelled = f"{len(plan.cancelled)} cancelled, " if plan.cancelled else ""
        pending = f", {self.pending} pending" if self.pending else ""
        return ((f"[{time.strftime('%H:%M:%S')}] " if stamp else "") + f"{finished}/{len(plan.tasks)} jobs finished: "
                f"{len(plan.ok)} done, {len(plan.failed)} failed, {cancelled}{len(plan.blocked)} blocked, "
                f"{len(plan.out) - self.pending} running{pending}; ETA {eta}")

    def close(self):
        self.show(self.pending)
        self.bar.close()


@dataclass
class Figures:
    """A backend's part of the end of a run: lines before the summary (the per-slot table), the end
    of the summary's base-model line (copies made), what the run log's base_models adds (copies) and
    the run log's own parts of the backend (slots and devices; Slurm's arrays, pack size, limits)."""
    lines: list = field(default_factory=list)
    base_extra: str = ""
    copies: dict = field(default_factory=dict)
    log: dict = field(default_factory=dict)


def task_counts(tasks):
    n_base = sum(bool(task.builds) for task in tasks)
    return job_counts(len(tasks) - n_base, n_base)


def totals(plan, skipped):
    """The run in figures. Jobs are the jobs file's; base-model jobs are counted apart, except
    among the failed (listed by their job ids). out_of_memory: members requeued in smaller packs."""
    jobs = [task for task in plan.tasks if not task.builds]
    ended = set(map(id, plan.ok + plan.failed + plan.cancelled + plan.blocked))
    return {"jobs": len(jobs) + skipped, "skipped": skipped,
            "done": sum(not task.builds for task in plan.ok), "failed": len(plan.failed),
            "cancelled": len(plan.cancelled), "blocked": len(plan.blocked),
            "not_run": sum(id(task) not in ended for task in jobs),
            "base_not_run": sum(id(task) not in ended for task in plan.tasks if task.builds),
            "attempts": len(plan.records), "requeued": sum(r["status"] == "requeued" for r in plan.records),
            "out_of_memory": sum("pack_cap" in r for r in plan.records)}


def totals_line(plan, skipped, wall):
    """'6 done, 1 failed, 0 cancelled, 0 blocked, 0 skipped (finished earlier), 0 not run; 12.3 s'"""
    n = totals(plan, skipped)
    return (f"{n['done']} done, {n['failed']} failed, {n['cancelled']} cancelled, {n['blocked']} blocked, "
            f"{skipped} skipped (finished earlier), {n['not_run']} not run"
            + (f" (and {n['base_not_run']} base-model jobs)" if n["base_not_run"] else "") + f"; {wall:.1f} s")


def summary_lines(plan, skipped, wall, before=(), base_extra=""):
    """The closing summary. before: the backend's lines first (the per-slot table);
    base_extra: the end of the base-model line (copies made)."""
    n = totals(plan, skipped)
    lines = [*before, totals_line(plan, skipped, wall)]
    if n["out_of_memory"]:
        lines.append(f"{n['out_of_memory']} pack members ran out of GPU memory and ran again in smaller packs "
                     f"(not charged; see their requeued lines in the ledger)")
    base = plan.base_counts()
    if base["distinct_keys"]:
        lines.append(f"base models: {base['trained']} trained for {base['distinct_keys']} distinct keys "
                     f"({base['cached']} already in the cache), against {base['without_sharing']} without "
                     f"sharing{base_extra}")
    for title, tasks in (("failed jobs:", plan.failed), ("cancelled jobs:", plan.cancelled)):
        if tasks:
            lines.append(title)
        for task in tasks:
            last = task.last
            why = last.get("error") or f"exit {last.get('exit_status')}"
            lines.append(f"  {task.job_id}  {last.get('state') or last['status']} ({why})  {last['log']}")
            if last.get("output_tail"):
                lines.append(f"    {last['output_tail'].splitlines()[-1]}")
    if plan.blocked:
        lines.append("blocked jobs (their base model failed; a rerun tries again):")
        for key in dict.fromkeys(task.needs for task in plan.blocked):
            count = sum(task.needs == key for task in plan.blocked)
            lines.append(f"  {count} blocked by base {key}  {plan.log_dir / f'base-{key}.log'}")
    return lines


def write_log_file(path, plan, args, skipped, run, **extra):
    """The --log-file JSON: totals, base models, each job's last attempt; extra: the backend's
    own parts (slots and devices, or Slurm arrays). run: started, ended, interrupted, aborted."""
    jobs = []
    for task in plan.tasks:
        last = dict(task.last or {})
        tail = last.pop("output_tail", "")
        duration = last["end"] - last["start"] if last.get("start") and last.get("end") else None
        jobs.append({**last, "job_id": task.job_id, "status": last.get("status", "not run"),
                     "attempts": task.attempt, "duration_s": duration, "stderr_tail": tail})
    report = {"backend": run["backend"], "cluster_config": args.cluster_config, "jobs_config": args.jobs_config,
              "started": run["started"], "ended": run["ended"], "wall_s": run["ended"] - run["started"],
              "totals": dict(totals(plan, skipped), interrupted=bool(run.get("interrupted")),
                             aborted=run.get("aborted")),
              "base_models": dict(plan.base_counts(), **run.get("copies", {})), **extra, "jobs": jobs}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fileio.write_atomic(path, json.dumps(report, indent=1))


def print_report_headline(jobs, max_lines=10):
    """The personalization report's headline for the prefixes these jobs write, and its command;
    returns the lines printed (the end of the run's messages, runner.news)."""
    patterns = set()
    for job in jobs:
        if job.get("prefix") is None or not publishes(job.get("mode")):
            continue
        top, _, rest = str(job["prefix"]).partition("/")
        root = Path(job.get("experiments_dir") or "experiments") / top
        # generate_jobs.py puts each configuration in its own folder under the grid's prefix.
        patterns.add(str(root / "*") if rest else str(root))
    if not patterns:
        return []
    from report.text import headline  # numpy and matplotlib, only once there is something to report
    lines = headline(sorted(patterns)).splitlines()
    shown = ["report: " + shlex.join(["python", "summarize_results.py", *sorted(patterns)]), *lines[:max_lines]]
    if len(lines) > max_lines:
        shown.append(f"... {len(lines) - max_lines} more configurations in the full report")
    print("\n".join(shown))
    return shown
