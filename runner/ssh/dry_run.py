"""The SSH backend's dry run: the slots, each process's exact command line (the first round over
the slots, with the packs they would form) and the phases in figures. Nothing is started."""
from runner.commands import job_command, pack_command, plural
from runner.packing import MAX_AUTO, next_pack, pack_limit
from runner.report import task_counts
from runner.ssh.hosts import devices_of, slots_of
from runner.ssh.shell import HostRefused, LocalHost


def print_plan(servers, tasks, script, trainer, cached):
    slots = []
    for server in servers:
        local = LocalHost(server["name"]) if server["local"] else None
        try:
            slots += slots_of(server, local, devices_of(server, local))
        except HostRefused as e:
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
