"""What the Slurm backend submits: the sbatch options of every array, each array's script (a
`case` on SLURM_ARRAY_TASK_ID whose branches run one job, every value shell-quoted, with its
output appended to the job's log), the sbatch line, and how tasks group into arrays: phase 1's
base tasks, one array per base key after its base task, the rest. The dry run prints them."""
import math
import shlex

from runner.commands import in_workdir, intact_command, job_command_args, shell_path
from runner.jobs import cache_entry


def sbatch_options(settings, timeout=None):
    """The sbatch options every array of the run gets."""
    options = [f"--{name.replace('_', '-')}={settings[name]}"
               for name in ("partition", "account", "qos", "time", "cpus_per_task", "mem") if settings[name]]
    if timeout:  # --timeout wins over the config's time limit
        options = [o for o in options if not o.startswith("--time=")] + [f"--time={math.ceil(timeout / 60)}"]
    gpus = settings["gpus_per_task"]
    if gpus:
        typed = f"{settings['gpu_type']}:{gpus}" if settings["gpu_type"] else str(gpus)
        options.append(f"--gres=gpu:{typed}" if settings["gpu_option"] == "gres" else f"--gpus={typed}")
    return options + settings["sbatch_args"]


def task_line(task, job, settings, script, log):
    """The shell branch of one array task: output to the job's log, then the job (its flags for
    this attempt: job)."""
    env = "PYTHONUNBUFFERED=1" + ("" if settings["gpus_per_task"] else " CUDA_VISIBLE_DEVICES=")
    line = in_workdir(settings, " ".join([env, shell_path(settings["python"]), shell_path(script),
                                          *job_command_args(job)]))
    if task.builds:  # a base job succeeds only when its entry is complete under the key planned
        entry = cache_entry(task.job, task.builds)
        line += " && " + intact_command(settings, script, entry)
    header = (f"=== {task.job_id} attempt {task.attempt + 1}: slurm job "
              f"${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}} on $(hostname), "
              f"CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES-}} ===")
    return f"exec >>{shlex.quote(str(log))} 2>&1; echo \"{header}\"; {line}"


def array_script(tasks, plan, settings, script):
    """The script of one array: task i runs tasks[i]."""
    branches = [f"  {i}) {task_line(task, plan.job_to_run(task), settings, script, plan.log_path(task))} ;;"
                for i, task in enumerate(tasks)]
    return "\n".join(["#!/bin/bash", "# written by run_distributed_training.py: one job per array task",
                      'case "$SLURM_ARRAY_TASK_ID" in', *branches,
                      '  *) echo "no job for array task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;', "esac", ""])


def sbatch_argv(name, n, options, out_dir, max_running, after=None):
    argv = ["sbatch", "--parsable", f"--job-name={name}", f"--array=0-{n - 1}"
            + (f"%{max_running}" if max_running else ""), f"--output={out_dir}/%A_%a.out"]
    if after:
        argv += [f"--dependency=afterok:{after}", "--kill-on-invalid-dep=yes"]
    return argv + options


def phase_arrays(tasks, base_of):
    """[(name, members, base task or None)] for tasks to submit: phase 1 (their base tasks), then
    one array per base key whose base task base_of(key) runs, after it, then the rest (no base
    model, or one in the cache already)."""
    waits = [task for task in tasks if task.needs and base_of(task.needs) is not None]
    arrays = [("base", [task for task in tasks if task.builds], None)]
    for key in dict.fromkeys(task.needs for task in waits):
        arrays.append((f"after-{key}", [task for task in waits if task.needs == key], base_of(key)))
    arrays.append(("jobs", [task for task in tasks if not task.builds and task not in waits], None))
    return [(name, members, base) for name, members, base in arrays if members]


def print_plan(plan, settings, script, run_dir, timeout):
    """The dry run: each array's exact sbatch line and script, then the phases in figures."""
    options = sbatch_options(settings, timeout)
    tasks = plan.tasks
    bases = {task.builds: task for task in tasks if task.builds}
    arrays = phase_arrays(tasks, bases.get)
    base_tasks = list(bases.values())
    for name, members, base in arrays:
        after = f"<base array>_{base_tasks.index(base)}" if base else None
        print(f"# array {name}: {len(members)} tasks" + (f", after {base.job_id}" if base else ""))
        print(shlex.join(sbatch_argv(name, len(members), options, run_dir / "slurm", settings["max_running"],
                                     after) + [f"{run_dir}/slurm/<array id>.sh"]))
        print(array_script(members, plan, settings, script))
    dependents = sum(len(members) for _, members, base in arrays if base is not None)
    print(f"# phase 1: {len(bases)} base tasks in {int(bool(bases))} array; phase 2: {dependents} dependent tasks "
          f"in {sum(base is not None for _, _, base in arrays)} arrays, each after its own base task "
          f"(+ {len(tasks) - len(bases) - dependents} independent); {len(arrays)} arrays, {len(tasks)} tasks, "
          f"{dependents} dependencies"
          + (f"; {len(plan.cached)} base models already in the cache" if plan.cached else ""))
