"""The Slurm dry run: the packs the planner would make, each array's exact sbatch line and script
(the base arrays' ids written <base array>), then the phases in figures. Nothing is submitted;
the cluster's MaxArraySize is read where the Slurm tools answer."""
import shlex

from runner.commands import plural
from runner.slurm.queue import limits
from runner.slurm.scripts import array_script, pack_limit, phase_arrays, sbatch_argv, sbatch_options


def planned_packs(plan, size):
    """Every pack the planner hands out, in order, as if each base task were queued."""
    packs = []
    while pack := plan.take(size, early=True):
        packs.append(pack)
    return packs


def print_plan(plan, settings, script, run_dir, timeout):
    """Print the arrays the run would submit. A pack "auto" on GPU tasks is shown at its largest
    (the preflight's GPU sizes it at submit)."""
    options = sbatch_options(settings, timeout)
    packs = planned_packs(plan, pack_limit(settings))
    max_array = limits()["max_array"]
    arrays = phase_arrays(packs, plan.building, max_array)
    base_packs = [pack for pack in packs if pack[0].builds]
    where = {id(task): (f"<base array>_{i}", len(pack)) for i, pack in enumerate(base_packs) for task in pack}
    for name, members, bases in arrays:
        after = tuple(dict.fromkeys(where[id(base)][0] for base in bases))
        any_end = any(where[id(base)][1] > 1 for base in bases)
        print(f"# array {name}: {len(members)} tasks" + (f", after {', '.join(b.job_id for b in bases)}" if bases else ""))
        print(shlex.join(sbatch_argv(name, len(members), options, run_dir / "slurm", settings["max_running"],
                                     after, any_end) + [f"{run_dir}/slurm/<array id>.sh"]))
        print(array_script(members, plan, settings, script, after_base=any_end))
    phase1 = [members for _, members, _ in arrays if members[0][0].builds]
    after = [(members, bases) for _, members, bases in arrays if bases]
    dependent = sum(len(members) for members, _ in after)
    tasks = sum(len(members) for _, members, _ in arrays)
    jobs = sum(len(pack) for pack in packs)
    print(f"# phase 1: {len(base_packs)} base tasks in {plural(len(phase1), 'array')}; phase 2: {dependent} "
          f"dependent tasks in {plural(len(after), 'array')}, each after its own base task"
          f"{'s' if any(len(bases) > 1 for _, bases in after) else ''} (+ {tasks - dependent - len(base_packs)} "
          f"independent); {plural(len(arrays), 'array')}, {tasks} tasks, {dependent} dependencies"
          + (f"; {jobs} jobs in packs of up to {max(map(len, packs))}" if jobs != tasks else "")
          + (f"; arrays of at most {max_array} tasks (MaxArraySize)" if max_array else "")
          + (f"; {len(plan.cached)} base models already in the cache" if plan.cached else ""))
