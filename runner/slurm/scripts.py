"""What the Slurm backend submits: the sbatch options of every array, each array's script (a
`case` on SLURM_ARRAY_TASK_ID whose branches run one job or a pack of jobs, every value
shell-quoted, the output appended to each job's log under its own header), the sbatch line, and
how array tasks group into arrays: phase 1's base tasks, then the tasks after the same base
tasks, then the rest, each array no longer than the cluster allows. The dry run prints them."""
import json
import math
import shlex

from runner.commands import intact_check, job_command_args, shell_path
from runner.jobs import cache_entry
from runner.packing import MAX_AUTO, auto_size, trainer_path


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


def header(task):
    """The line that opens an attempt in the job's log (the runner finds the attempt's output by it)."""
    return (f"=== {task.job_id} attempt {task.attempt + 1}: slurm job ${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}} "
            f"on $(hostname), CUDA_VISIBLE_DEVICES=${{CUDA_VISIBLE_DEVICES-}} ===")


def task_line(pack, plan, settings, script, after_base):
    """The shell branch of one array task: a header into each member's log, then the job (or the
    members as one pack_train.py process), its output appended to every member's log.
    after_base: it waits for a pack of base models (afterany), so it first checks that the base
    model it needs is complete in the cache, and exits 3 when it is not."""
    env = "PYTHONUNBUFFERED=1" + ("" if settings["gpus_per_task"] else " CUDA_VISIBLE_DEVICES=")
    jobs = [plan.job_to_run(task) for task in pack]
    args = ([shell_path(script), *job_command_args(jobs[0])] if len(pack) == 1 else
            [shell_path(trainer_path(script)), "--json", shlex.quote(json.dumps(jobs))])
    line = " ".join([env, shell_path(settings["python"]), *args])
    if len(pack) == 1 and pack[0].builds:  # it succeeds only with its base model complete under the key planned
        line += " && " + intact_check(settings, script, cache_entry(pack[0].job, pack[0].builds))
    if after_base:  # a pack's members all need one base model (make_tasks groups them by it)
        entry = cache_entry(pack[0].job, pack[0].needs)
        missing = shlex.quote(f"base model {pack[0].needs} is not complete in the cache ({entry}): "
                              f"its base task failed")
        line = f"{{ {intact_check(settings, script, entry)} || {{ echo {missing}; exit 3; }}; }} && {line}"
    logs = [shlex.quote(str(plan.log_path(task))) for task in pack]
    members = shlex.quote(f"a pack of {len(pack)}: {' '.join(task.job_id for task in pack)}")
    opening = "; ".join(f'{{ echo "{header(task)}"' + (f"; echo {members}" if len(pack) > 1 else "")
                        + f"; }} >>{log}" for task, log in zip(pack, logs))
    if len(pack) == 1:
        return f"{opening}; exec >>{logs[0]} 2>&1; {line}"
    return f"{opening}; {{ {line}; }} 2>&1 | tee -a {' '.join(logs)} >/dev/null; exit ${{PIPESTATUS[0]}}"


def script_start(settings, what):
    """A job script's first lines: into the workdir, the config's setup (on lines of its own, so
    that a trailing `;`, `&` or comment in it breaks nothing; its output and errors go to Slurm's
    slurm/<job>.out), and threads for the CPUs Slurm granted."""
    lines = ["#!/bin/bash", f"# written by run_distributed_training.py: {what}",
             f"cd {shell_path(settings['workdir'])} || exit 2"]
    if settings["setup"]:
        lines += ["{ " + settings["setup"], '} || { echo "the slurm setup failed (exit $?)" >&2; exit 2; }']
    return lines + ['export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"']


def array_script(packs, plan, settings, script, after_base=False):
    """The script of one array: task i runs packs[i] (a job, or several as one process)."""
    branches = [f"  {i}) {task_line(pack, plan, settings, script, after_base)} ;;" for i, pack in enumerate(packs)]
    return "\n".join([*script_start(settings, "one job or pack per array task"),
                      'case "$SLURM_ARRAY_TASK_ID" in', *branches,
                      '  *) echo "no job for array task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;', "esac", ""])


def sbatch_argv(name, n, options, out_dir, max_running, after=(), any_end=False):
    """after: the array tasks it waits for: afterok (a failed one cancels it); any_end: afterany,
    where one of them trains a pack of base models (one may fail while the others are stored:
    each dependent then checks its own base model, task_line's after_base)."""
    argv = ["sbatch", "--parsable", f"--job-name={name}", f"--array=0-{n - 1}"
            + (f"%{max_running}" if max_running else ""), f"--output={out_dir}/%A_%a.out"]
    if after:
        argv += ([f"--dependency=afterany:{':'.join(after)}"] if any_end else
                 [f"--dependency=afterok:{':'.join(after)}", "--kill-on-invalid-dep=yes"])
    return argv + options


def phase_arrays(packs, base_of, max_array=None):
    """[(name, packs, base tasks they wait for)] for packs to submit: phase 1 (packs of base jobs)
    first, then the packs that wait for the same base tasks (base_of(key): the base task running
    for key, or None when the base model is in the cache), then the rest; none longer than max_array."""
    def waits(pack):
        return tuple(dict.fromkeys(base_of(t.needs) for t in pack if t.needs and base_of(t.needs) is not None))
    groups = {}
    for pack in packs:
        kind = "base" if pack[0].builds else "after" if waits(pack) else "jobs"
        groups.setdefault((kind != "base", kind == "jobs", waits(pack)), []).append(pack)
    arrays = []
    for (_, _, bases), members in sorted(groups.items(), key=lambda item: item[0][:2]):
        name = ("base" if members[0][0].builds else "jobs" if not bases
                else f"after-{bases[0].builds}" + (f"-and-{len(bases) - 1}" if len(bases) > 1 else ""))
        size = max_array or len(members)
        arrays += [(name, members[start:start + size], bases) for start in range(0, len(members), size)]
    return arrays


def pack_limit(settings, gpu_mib=None):
    """Jobs per array task: the config's "pack"; "auto" is 1 on a CPU task, and on a GPU task as
    many as the preflight's GPU holds (gpu_mib MiB, 0 when torch saw none there: 1; MAX_AUTO when
    not known, the dry run): a pack that runs out of memory is halved."""
    if settings["pack"] != "auto":
        return settings["pack"]
    if not settings["gpus_per_task"]:
        return 1
    return MAX_AUTO if gpu_mib is None else auto_size(gpu_mib, 0, 1)
