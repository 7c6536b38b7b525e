"""A Slurm run's opening, before the driver submits anything (backend.SlurmBackend.open): the
submissions an earlier run left queued taken back (adopt), a compute node checked (preflight.py),
the pack size it allows and the cluster's limits."""
from engine.fileio import ConfigError
from runner.check import is_project_script
from runner.slurm.ends import done_by_its_log
from runner.slurm.preflight import preflight
from runner.slurm.queue import final_states, limits, queue_states
from runner.slurm.scripts import pack_limit


def prepare(backend, allow_mismatch, sync_env=False):
    """The preflight (for this project's scripts; with sync_env it installs requirements.txt first),
    then the pack size it allows and the cluster's limits, set on the backend."""
    plan, settings, script = backend.plan, backend.settings, backend.script
    gpu_mib = None  # the GPU's memory, as the preflight saw it (0: none, the jobs run on the CPU)
    if is_project_script(script):
        answer = preflight(settings, script, [t.job for t in plan.tasks if not t.builds], backend.out_dir,
                           allow_mismatch, backend.say, sync_env)
        gpu_mib = answer.get("cuda_memory_mib") or 0
    elif allow_mismatch or sync_env:
        raise ConfigError(f"{script} is not one of this project's scripts: --allow-mismatch and --sync-env apply "
                          f"to this project's own")
    backend.pack = pack_limit(settings, gpu_mib)
    backend.limits = limits()


def adopt(backend, history):
    """Watch the submissions of an earlier run that Slurm still knows instead of submitting them
    again; returns how many. One Slurm no longer knows is done when its log and result say so
    (Slurm forgets ended jobs MinJobAge after they end, where no accounting runs), else "lost":
    it runs again."""
    plan = backend.plan
    closed = {(r["job_id"], r.get("slurm_job")) for r in history if r.get("status") != "submitted"}
    open_ = {r["job_id"]: r for r in history
             if r.get("status") == "submitted" and (r["job_id"], r["slurm_job"]) not in closed}
    if not open_:
        return 0
    queued = queue_states()
    backend.states.update({job: state for job, (state, _) in queued.items()})
    known = set(queued) | set(final_states([r["slurm_job"] for r in open_.values()]))
    for task in plan.waiting:
        record = open_.get(task.job_id)
        if record is None:
            continue
        if record["slurm_job"] in known:
            plan.adopt(task, record)
        elif not done_by_its_log(plan, task, record, backend.settings["workdir"]):
            plan.note(task.job_id, "lost", slurm_job=record["slurm_job"])
    # A dependent waits on its base's task: if that base is to be submitted anew, so is it.
    new_bases = {task.builds for task in plan.waiting if task.builds}
    plan.withdraw([task for task in plan.out if task.needs in new_bases], "base resubmitted")
    return len(plan.out)
