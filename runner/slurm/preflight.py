"""Before a grid is queued: one short job on the partition asked for runs the runner's check on
a compute node (runner.check: code hash, data fingerprints, Python and torch versions, the GPU
Slurm grants), so a thousand tasks are never queued against the wrong checkout.

Each difference is one line; they refuse the run (exit 2) unless --allow-mismatch. The answer
also tells how much memory the GPU has, which sizes a pack "auto"."""
import sys

from engine.fileio import ConfigError
from runner.config import PROG
from runner.check import CHECK_MODULE, check_arguments, data_needs, differences, local_answer, model_files, read_answer
from runner.commands import module_args
from runner.slurm.queue import first_line, slurm
from runner.slurm.scripts import sbatch_options, script_start

PREFLIGHT_S = 300  # its time limit: short, so that the scheduler fits it in soon
WAIT_S = 1800  # how long the runner waits for it to start and end (a busy partition)


class PreflightError(Exception):
    """The preflight job could not run (sbatch refused it, or it gave no answer)."""


def ask_node(settings, script, needs, models, out_dir):
    """(answer, None) from a compute node, or (None, why not)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    check = module_args(settings, script, CHECK_MODULE, check_arguments(needs, models))
    env = "" if settings["gpus_per_task"] else "CUDA_VISIBLE_DEVICES= "  # as the tasks run
    path = out_dir / "preflight.sh"
    path.write_text("\n".join([*script_start(settings, "the check before submitting"), env + check, ""]))
    out = slurm("sbatch", "--parsable", "--wait", "--job-name=preflight", f"--output={out_dir}/preflight-%j.out",
                *sbatch_options(settings, PREFLIGHT_S), str(path), timeout=WAIT_S)  # it waits for a node
    job = out.stdout.strip().split(";")[0]
    if out.returncode == 124:
        slurm("scancel", "--me", "--name=preflight")
        raise PreflightError(f"the preflight job did not run within {WAIT_S} s (cancelled): is the partition "
                             f"full, or its time limit under {PREFLIGHT_S // 60} minutes?")
    if not job.isdigit():
        raise PreflightError(f"sbatch refused the preflight job: {first_line(out.stderr)}")
    try:
        output = (out_dir / f"preflight-{job}.out").read_text(errors="replace")
    except OSError as e:
        return None, (f"no output from the preflight job {job} here ({e}): is the run dir on a filesystem the "
                      f"compute nodes share?")
    return read_answer(output, "is the workdir on the filesystem the compute nodes share?")


def preflight(settings, script, jobs, out_dir, allow_mismatch, say):
    """Run the check on a compute node; returns its answer. Raises ConfigError after printing one
    line per difference (unless allow_mismatch: then they are warnings), PreflightError when it
    cannot run."""
    needs = data_needs(jobs)
    try:
        models = model_files(jobs)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    where = f"slurm partition {settings['partition'] or '(default)'}"
    say(f"preflight: one short job on {where} checks the code, data and libraries there")
    answer, why = ask_node(settings, script, needs, models, out_dir)
    if why:
        raise PreflightError(f"{where}: {why}")
    workdir = settings["workdir"]
    lines = differences(where, local_answer(needs, models), answer,
                        f"update the checkout in the workdir {workdir} (it runs the jobs)",
                        f"copy the data into the workdir {workdir}")
    if settings["gpus_per_task"] and not answer.get("cuda_visible_devices"):
        lines.append(f"{where}: no GPU granted (CUDA_VISIBLE_DEVICES is empty) although gpus_per_task is "
                     f"{settings['gpus_per_task']}; check gpu_option and gpu_type")
    elif settings["gpus_per_task"] and not answer.get("cuda_devices"):
        say(f"warning: {where}: torch sees no GPU there (CUDA_VISIBLE_DEVICES={answer['cuda_visible_devices']}, "
            f"torch {answer.get('torch')}): the jobs will run on the CPU", important=True)
    if lines and not allow_mismatch:
        print("\n".join(f"{PROG}: error: {line}" for line in lines), file=sys.stderr)
        raise ConfigError("the compute nodes differ from this checkout (above); nothing submitted. "
                          "--allow-mismatch runs anyway")
    for line in lines:
        say(f"warning: {line}", important=True)
    return answer
