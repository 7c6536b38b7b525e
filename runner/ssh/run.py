"""A run on SSH hosts: reach and check every host (code and data as here, via hostsync), plan
their slots, run the planner's tasks over them (backend.py), then the summary and the report."""
import sys

from engine.fileio import ConfigError
from runner.check import is_project_script
from runner.commands import plural
from runner.config import PROG
from runner.report import summary_lines, task_counts, write_log_file
from runner.ssh import hostsync
from runner.ssh.backend import SshBackend
from runner.ssh.hosts import make_host, out_of_the_run, plan_slots, reach_hosts
from runner.ssh.shell import HostRefused


def make_checker(args, tasks, script):
    """The check of every host's code and data (hostsync), or None when the script is not one of
    this project's (a lab's own script has no engine.provenance beside it to answer)."""
    if not is_project_script(script):
        if args.sync_code or args.sync_data or args.allow_mismatch:
            raise ConfigError(f"{script} is not one of this project's scripts: --sync-code, --sync-data "
                              f"and --allow-mismatch apply to this project's own")
        return None
    try:
        return hostsync.Checker([t.job for t in tasks if not t.builds], script, args.sync_code,
                                args.sync_data, args.allow_mismatch)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def slot_table(slots, wall):
    lines = [f"{'slot':<28} {'ok':>5} {'failed':>6} {'busy s':>8} {'util':>5}"]
    for s in slots:
        lines.append(f"{s.label:<28} {s.ok:>5} {s.failed:>6} {s.busy_s:>8.1f} {s.busy_s / wall:>5.0%}")
    return lines


def devices(slots, wall):
    """Busy seconds and use of each device, over its slots."""
    found = {}
    for s in slots:
        d = found.setdefault(f"{s.host.name}:{s.device}", {"device": f"{s.host.name}:{s.device}",
                                                           "slots": 0, "busy_s": 0.0})
        d["slots"] += 1
        d["busy_s"] += s.busy_s
    for d in found.values():
        d["utilisation"] = d["busy_s"] / (wall * d["slots"])
    return list(found.values())


def run(args, cluster, plan, script, skipped, run_dir, say):
    """Connect, run every task, report; returns the exit status."""
    servers = cluster["servers"]
    hosts = [make_host(s, cluster, args.accept_new_hosts) for s in servers]
    backend = None
    try:
        checker = make_checker(args, plan.tasks, script)
        found, errors = reach_hosts(servers, hosts, checker)
        mismatches = [line for e in errors.values() if isinstance(e, hostsync.Mismatch) for line in e.lines]
        if mismatches:
            print("\n".join(f"{PROG}: error: {line}" for line in mismatches), file=sys.stderr)
            raise ConfigError("hosts differ from this checkout (above); not started. --allow-mismatch "
                              "runs anyway")
        refused = [str(e) for e in errors.values() if isinstance(e, HostRefused)]
        if len(refused) == len(servers):
            raise ConfigError("; ".join(refused))  # no host is usable
        for error in refused:
            print(out_of_the_run(error), file=sys.stderr)
        slots, health = plan_slots(servers, hosts, found, errors, checker)
        if not slots:
            print(f"{PROG}: error: no host reachable", file=sys.stderr)
            return 3
        say(f"{task_counts(plan.tasks)} over {plural(len(slots), 'slot')}: {', '.join(s.label for s in slots)}")
        backend = SshBackend(slots, plan, health, script, say, timeout=args.timeout,
                             down_timeout=args.down_timeout)
        backend.run()
    except ConfigError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before any job started
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        for host in hosts:
            host.close()  # also ends every session: their watchers kill what is left
    wall = max(backend.ended - backend.started, 1e-9)
    copies = {"sent": dict(backend.transfer.sent), "fetched": backend.transfer.fetched}
    write_log_file(args.log_file or run_dir / "run_log.json", plan, args, skipped,
                   {"backend": "ssh", "started": backend.started, "ended": backend.ended,
                    "interrupted": backend.interrupted, "aborted": backend.aborted, "copies": copies},
                   slots=[{"slot": s.label, "host": s.host.name, "device": str(s.device), "ok": s.ok,
                           "failed": s.failed, "busy_s": s.busy_s, "utilisation": s.busy_s / wall}
                          for s in backend.slots],
                   devices=devices(backend.slots, wall))
    print("\n".join(summary_lines(plan, skipped, wall, before=[] if say.quiet else slot_table(backend.slots, wall),
                                  base_extra=f"; {sum(copies['sent'].values())} copies sent, "
                                             f"{copies['fetched']} brought home")))
    if backend.interrupted:
        print(f"interrupted; rerun the same command to finish the rest (ledger {plan.ledger.path})",
              file=sys.stderr)
        return 130
    if backend.aborted:
        print(f"{PROG}: error: {backend.aborted}", file=sys.stderr)
        return 3
    if not plan.finished and backend.unusable:
        print(f"{PROG}: error: no usable host left ({backend.unusable}); rerun once fixed", file=sys.stderr)
        return 2
    return 1 if plan.failed or plan.blocked or plan.cancelled else 0
