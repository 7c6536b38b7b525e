"""What the SSH runner shows: the dry-run plan, the end-of-run summary lines, the --log-file
JSON report, and the personalization report's headline (shared with the Slurm backend)."""
import json
import shlex
from collections import Counter
from pathlib import Path

import remote
import fileio
from commands import job_command, job_counts, pack_command, plural
from hosts import devices_of, slots_of
from packing import MAX_AUTO, next_pack, pack_limit

def summary_lines(scheduler, skipped, per_slot=True):
    wall = scheduler.wall_s
    lines = []
    if per_slot:
        lines.append(f"{'slot':<28} {'ok':>5} {'failed':>6} {'busy s':>8} {'util':>5}")
        for s in scheduler.slots:
            lines.append(f"{s.label:<28} {s.ok:>5} {s.failed:>6} {s.busy_s:>8.1f} {s.busy_s / wall:>5.0%}")
    lines.append(f"{len(scheduler.done)} done, {len(scheduler.failed)} failed, "
                 f"{len(scheduler.blocked)} blocked, {skipped} skipped (finished earlier), "
                 f"{scheduler.not_run} not run; {wall:.1f} s")
    base = scheduler.base_counts()
    if base["distinct_keys"]:
        lines.append(f"base models: {base['trained']} trainings executed for {base['distinct_keys']} "
                     f"distinct keys ({base['cached']} already in the local cache), against "
                     f"{base['without_sharing']} without sharing; {sum(base['sent'].values())} copies sent, "
                     f"{base['fetched']} brought home")
    if scheduler.failed:
        lines.append("failed jobs:")
        for task in scheduler.failed:
            last = task.last
            why = last.get("error") or f"exit {last['exit_status']}"
            lines.append(f"  {task.job_id}  {last['status']} ({why})  {last['log']}")
            if last.get("output_tail"):
                lines.append(f"    {last['output_tail'].splitlines()[-1]}")
    if scheduler.blocked:
        lines.append("blocked jobs (their base model failed; a rerun tries again):")
        for key, n in Counter(task.needs for task in scheduler.blocked).items():
            lines.append(f"  {n} blocked by base {key}  {scheduler.log_dir / f'base-{key}.log'}")
    return lines


def write_log_file(path, scheduler, args, skipped):
    wall = scheduler.wall_s
    jobs = []
    for task in scheduler.tasks:
        last = task.last or {}
        jobs.append({"job_id": task.job_id, "status": last.get("status", "not run"),
                     "host": last.get("host"), "device": last.get("device"), "slot": last.get("slot"),
                     "start": last.get("start"), "end": last.get("end"),
                     "duration_s": last["end"] - last["start"] if last.get("start") else None,
                     "exit_status": last.get("exit_status"), "attempts": task.attempt,
                     "result_dir": last.get("result_dir"), "log": last.get("log"),
                     "stderr_tail": last.get("output_tail", "")})
    devices = {}
    for s in scheduler.slots:
        d = devices.setdefault(f"{s.host.name}:{s.device}", {"device": f"{s.host.name}:{s.device}",
                                                              "slots": 0, "busy_s": 0.0})
        d["slots"] += 1
        d["busy_s"] += s.busy_s
    for d in devices.values():
        d["utilisation"] = d["busy_s"] / (wall * d["slots"])
    report = {
        "cluster_config": args.cluster_config, "jobs_config": args.jobs_config,
        "started": scheduler.started, "ended": scheduler.ended, "wall_s": wall,
        "totals": {"jobs": len(scheduler.tasks) + skipped, "skipped": skipped,
                   "done": len(scheduler.done), "failed": len(scheduler.failed),
                   "blocked": len(scheduler.blocked),
                   "not_run": scheduler.not_run,
                   "attempts": len(scheduler.records),
                   "requeued": sum(r["status"] == "requeued" for r in scheduler.records),
                   "interrupted": bool(scheduler.interrupted), "aborted": scheduler.aborted},
        "base_models": scheduler.base_counts(),
        "slots": [{"slot": s.label, "host": s.host.name, "device": str(s.device), "ok": s.ok,
                   "failed": s.failed, "busy_s": s.busy_s, "utilisation": s.busy_s / wall}
                  for s in scheduler.slots],
        "devices": list(devices.values()),
        "jobs": jobs,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fileio.write_atomic(path, json.dumps(report, indent=1))


def task_counts(tasks):
    n_base = sum(bool(task.builds) for task in tasks)
    return job_counts(len(tasks) - n_base, n_base)



def print_plan(servers, tasks, script, trainer, cached):
    """The dry run: the slots, each process's exact command line (the first round over the slots,
    with the packs they would form), the phases."""
    slots = []
    for server in servers:
        local = remote.LocalHost(server["name"]) if server["local"] else None
        try:
            slots += slots_of(server, local, devices_of(server, local))
        except remote.HostRefused as e:
            print(f"# error: {e}")
        finally:
            if local:
                local.close()
        if server["gpus"] == "auto" and not server["local"]:
            print(f"# {server['name']}: gpus \"auto\" is asked at run time "
                  f"(CPU slots if it has no nvidia-smi)")
        if trainer and server["pack"] == "auto" and server["gpus"] != 0:
            print(f"# {server['name']}: pack \"auto\": 1 job per process on a CPU; on a GPU up to "
                  f"{MAX_AUTO}, sized from its free memory at run time ({MAX_AUTO} shown here)")
    print(f"# {task_counts(tasks)} over {plural(len(slots), 'slot')}: {', '.join(s.label for s in slots)}")
    if not slots:
        return
    print("# slots take the next job (or pack of jobs) as they free up; this is the first round, in order")
    waiting, turn = list(tasks), 0
    while waiting:
        slot = slots[turn % len(slots)]
        turn += 1
        limit = pack_limit(slot.server, slot.device, lambda: MAX_AUTO) if trainer else 1
        pack = next_pack(waiting, limit, len(slots) - turn + 1)  # the slots not yet given work wait
        waiting = [task for task in waiting if task not in pack]
        share = sum(s.server is slot.server for s in slots)
        if len(pack) == 1:
            shown = job_command(slot.server, slot.device, script, pack[0].job, masked=True, slots=share)
            print(f"[{slot.label}] {pack[0].job_id}\n  {shown}")
        else:
            shown = pack_command(slot.server, slot.device, trainer, [task.job for task in pack], masked=True,
                                 slots=share)
            print(f"[{slot.label}] pack of {len(pack)}: {' '.join(task.job_id for task in pack)}\n  {shown}")
    bases = sum(bool(task.builds) for task in tasks)
    dependents = sum(task.needs is not None for task in tasks)
    print(f"# phase 1: {bases} base jobs; phase 2: {dependents} dependent jobs "
          f"(+ {len(tasks) - bases - dependents} independent)"
          + (f"; {len(cached)} base models already in the local cache" if cached else ""))



def print_report_headline(jobs, max_lines=10):
    """The personalization report's headline for the prefixes these jobs write, and its command."""
    patterns = set()
    for job in jobs:
        if job.get("prefix") is None or job.get("mode") == "base_only":
            continue
        top, _, rest = str(job["prefix"]).partition("/")
        root = Path(job.get("experiments_dir") or "experiments") / top
        # generate_jobs.py puts each configuration in its own folder under the grid's prefix.
        patterns.add(str(root / "*") if rest else str(root))
    if not patterns:
        return
    import summarize_results  # numpy and matplotlib, only once there is something to report
    lines = summarize_results.headline(sorted(patterns)).splitlines()
    print("report: " + shlex.join(["python", "summarize_results.py", *sorted(patterns)]))
    print("\n".join(lines[:max_lines]))
    if len(lines) > max_lines:
        print(f"... {len(lines) - max_lines} more configurations in the full report")
