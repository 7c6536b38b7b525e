"""An SSH run's hosts before and after: every host reached and checked (code and data as here, via
hostsync), their slots planned; at the end the slots' figures for the summary and the run log."""
import sys

from engine.fileio import ConfigError
from runner.check import is_project_script
from runner.config import PROG
from runner.ssh import hostsync
from runner.ssh.hosts import out_of_the_run, plan_slots, reach_hosts
from runner.ssh.shell import HostRefused


def make_checker(options, tasks, script):
    """The check of every host's code and data (hostsync), or None when the script is not one of
    this project's (a lab's own script has no engine.provenance beside it to answer)."""
    if not is_project_script(script):
        if options.sync_code or options.sync_data or options.allow_mismatch or options.sync_env:
            raise ConfigError(f"{script} is not one of this project's scripts: --sync-code, --sync-data, "
                              f"--sync-env and --allow-mismatch apply to this project's own")
        return None
    try:
        return hostsync.Checker([t.job for t in tasks if not t.builds], script, options.sync_code,
                                options.sync_data, options.allow_mismatch, options.sync_env, options.cluster_config)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def open_hosts(servers, hosts, options, tasks, script):
    """Reach and check every host; returns (slots, {host name: Health}); no slots when no host is
    reachable. ConfigError when the hosts differ from this checkout or none is usable as configured;
    a host refused while others are usable is named in one line and is out of the run."""
    checker = make_checker(options, tasks, script)
    found, errors = reach_hosts(servers, hosts, checker)
    mismatches = [line for e in errors.values() if isinstance(e, hostsync.Mismatch) for line in e.lines]
    if mismatches:
        print("\n".join(f"{PROG}: error: {line}" for line in mismatches), file=sys.stderr)
        raise ConfigError("hosts differ from this checkout (above); not started. --allow-mismatch runs anyway")
    refused = [str(e) for e in errors.values() if isinstance(e, HostRefused)]
    if len(refused) == len(servers):
        raise ConfigError("; ".join(refused))  # no host is usable
    for error in refused:
        print(out_of_the_run(error), file=sys.stderr)
    return plan_slots(servers, hosts, found, errors, checker)


def slot_table(slots, wall):
    lines = [f"{'slot':<28} {'ok':>5} {'failed':>6} {'busy s':>8} {'util':>5}"]
    for s in slots:
        lines.append(f"{s.label:<28} {s.ok:>5} {s.failed:>6} {s.busy_s:>8.1f} {s.busy_s / wall:>5.0%}")
    return lines


def slot_figures(slots, wall):
    """The run log's slots: each one's counts and use."""
    return [{"slot": s.label, "host": s.host.name, "device": str(s.device), "ok": s.ok, "failed": s.failed,
             "busy_s": s.busy_s, "utilisation": s.busy_s / wall} for s in slots]


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
