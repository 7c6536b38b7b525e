"""Before a grid is queued: one short job on the partition asked for runs the runner's check on
a compute node (runner.check: code hash, data fingerprints, Python and torch versions, the packages
requirements.txt pins, the GPU Slurm grants), so a thousand tasks are never queued against the
wrong checkout. With --sync-env the job first installs this checkout's requirements.txt with pip
(its output shown under the partition's name), then checks.

Each difference is one line; they refuse the run (exit 2) unless --allow-mismatch. The answer
also tells how much memory the GPU has, which sizes a pack "auto"."""
import shlex
import sys

from engine.fileio import ConfigError
from runner import requirements
from runner.config import PROG
from runner.check import CHECK_MODULE, check_arguments, data_needs, differences, local_answer, model_files, read_answer
from runner.commands import module_args, shell_path
from runner.slurm.queue import first_line, slurm
from runner.slurm.scripts import sbatch_options, script_start

PREFLIGHT_S = 300  # its time limit: short, so that the scheduler fits it in soon
INSTALL_S = 3600  # more, with --sync-env: pip may download torch
WAIT_S = 1800  # how long the runner waits for it to start and end (a busy partition); + INSTALL_S with it


class PreflightError(Exception):
    """The preflight job could not run (sbatch refused it, or it gave no answer)."""


def install_step(settings, out_dir):
    """The preflight's --sync-env line: pip installs this checkout's requirements.txt (copied into the
    run dir, which the compute nodes share); when pip fails it says so in a line of its own, exit 2."""
    path = out_dir / "requirements.txt"
    path.write_text(requirements.text())
    return (f"{shell_path(settings['python'])} {requirements.PIP_INSTALL} {shlex.quote(str(path))} 2>&1 || "
            f"{{ echo \"{requirements.FAILED} (exit $?)\"; exit 2; }}")


def ask_node(settings, script, needs, models, out_dir, pins=(), sync_env=False):
    """(answer, None, output) from a compute node, or (None, why not, output)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    check = module_args(settings, script, CHECK_MODULE, check_arguments(needs, models, pins))
    env = "" if settings["gpus_per_task"] else "CUDA_VISIBLE_DEVICES= "  # as the tasks run
    install = [install_step(settings, out_dir)] if sync_env else []
    path = out_dir / "preflight.sh"
    path.write_text("\n".join([*script_start(settings, "the check before submitting"), *install, env + check, ""]))
    limit, wait = (PREFLIGHT_S + INSTALL_S, WAIT_S + INSTALL_S) if sync_env else (PREFLIGHT_S, WAIT_S)
    out = slurm("sbatch", "--parsable", "--wait", "--job-name=preflight", f"--output={out_dir}/preflight-%j.out",
                *sbatch_options(settings, limit), str(path), timeout=wait)  # it waits for a node
    job = out.stdout.strip().split(";")[0]
    if out.returncode == 124:
        slurm("scancel", "--me", "--name=preflight")
        raise PreflightError(f"the preflight job did not run within {wait} s (cancelled): is the partition "
                             f"full, or its time limit under {limit // 60} minutes?")
    if not job.isdigit():
        raise PreflightError(f"sbatch refused the preflight job: {first_line(out.stderr)}")
    try:
        output = (out_dir / f"preflight-{job}.out").read_text(errors="replace")
    except OSError as e:
        return None, (f"no output from the preflight job {job} here ({e}): is the run dir on a filesystem the "
                      f"compute nodes share?"), ""
    return *read_answer(output, "is the workdir on the filesystem the compute nodes share?"), output


def show_install(output, where, say):
    """The pip lines of a --sync-env preflight, each under the partition's name; PreflightError when pip
    failed there."""
    lines = output.strip().splitlines()
    for line in lines[:-1] if lines and lines[-1].startswith("{") else lines:
        say(f"{where}: {line}", important=True)
    failed = next((line for line in lines if line.startswith(requirements.FAILED)), None)
    if failed:
        last = next((line for line in reversed(lines[:lines.index(failed)]) if line.strip()), "no output")
        raise PreflightError(f"{where}: {failed} in the preflight job ({last.strip()[:200]}); nothing submitted")


def preflight(settings, script, jobs, out_dir, allow_mismatch, say, sync_env=False):
    """Run the check on a compute node (after pip installs requirements.txt there, with sync_env);
    returns its answer. Raises ConfigError after printing one line per difference (unless
    allow_mismatch: then they are warnings), PreflightError when it cannot run or pip fails."""
    needs = data_needs(jobs)
    try:
        models = model_files(jobs)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    where = f"slurm partition {settings['partition'] or '(default)'}"
    pins = requirements.pins(requirements.text())
    say(f"preflight: one short job on {where} " + ("installs requirements.txt, then " if sync_env else "")
        + "checks the code, data and libraries there")
    answer, why, output = ask_node(settings, script, needs, models, out_dir, pins, sync_env)
    if sync_env:
        show_install(output, where, say)
    if why:
        raise PreflightError(f"{where}: {why}")
    workdir = settings["workdir"]
    lines = differences(where, local_answer(needs, models), answer,
                        f"update the checkout in the workdir {workdir} (it runs the jobs)",
                        f"copy the data into the workdir {workdir}", pins,
                        "--sync-env installs this checkout's requirements.txt in the preflight job")
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
