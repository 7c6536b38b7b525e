"""Where each job's results land, and the checks a run makes of those folders before anything runs.

A job's result folder is its experiments_dir/prefix/fold{k}_{target} relative to the workdir, on a
host as here (the SSH backend copies a host's folder to the same place here). Before a run:
- two jobs that would write one folder are refused, naming both and the folder;
- each job's fold and participants are checked against its data folder;
- a folder that exists here and that this run did not write is refused unless --overwrite;
- a job the ledger says finished whose folder is gone here is reported, and runs again.
The target's name comes from the data folder, so a job whose data is not here (it is on the
hosts only) is checked by the trainer on its host instead, by the same rules (engine.results).
"""
import os
import sys
from pathlib import Path
from types import SimpleNamespace

from engine import results
from engine.data import DataError, check_participants, fold_index, resolve_fold
from engine.fileio import ConfigError
from engine.flags import settings_with_defaults
from engine import modes


def job_folder(job, workdir="."):
    """The job's result folder under workdir, or None: a base_only job, or its data folder is not
    here. An unknown mode, a fold out of range or an unknown participant is a ConfigError naming
    the job. Values are read as the trainer reads them: null leaves a flag at its default, a lone
    value of a list flag is a list of one."""
    settings = SimpleNamespace(**settings_with_defaults({k: v for k, v in job.items() if v is not None}))
    if settings.mode not in modes.BY_NAME:
        raise ConfigError(f"job {job['job_id']}: unknown --mode {settings.mode!r}; choose one of "
                          f"{', '.join(modes.BY_NAME)}")
    data_path = Path(workdir, str(settings.data_path))
    if not modes.publishes(settings.mode) or not data_path.is_dir():
        return None
    participants = settings.participants
    participants = [participants] if isinstance(participants, (str, int, float)) else participants
    try:
        participants = check_participants(data_path, [str(p) for p in participants] if participants else None)
        fold = fold_index(participants, str(settings.fold))
        target, _ = resolve_fold(participants, fold, settings.n_base_participants)
    except (DataError, ValueError) as e:
        raise ConfigError(f"job {job['job_id']}: {e}") from None
    where = SimpleNamespace(experiments_dir=str(settings.experiments_dir), prefix=str(settings.prefix))
    return Path(os.path.abspath(Path(workdir) / results.result_dir(where, fold, target)))


def job_folders(jobs, workdir="."):
    """{job_id: its result folder} of the jobs whose folder is known here; two jobs on one folder
    are a ConfigError."""
    folders, owner = {}, {}
    for job in jobs:
        folder = job_folder(job, workdir)
        if folder is None:
            continue
        if folder in owner:
            raise ConfigError(f"jobs {owner[folder]} and {job['job_id']} would both write {folder}: give them "
                              f"different prefixes")
        owner[folder], folders[job["job_id"]] = job["job_id"], folder
    return folders


def refuse_foreign(jobs, folders, token_of, overwrite):
    """ConfigError when a job would replace a result folder this run did not write (unless the
    runner's overwrite, or the job's own "overwrite": true). token_of(job): its run token."""
    foreign = [str(folders[job["job_id"]]) for job in jobs if job["job_id"] in folders and
               results.replace_refusal(folders[job["job_id"]], overwrite or job.get("overwrite"), token_of(job))]
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise ConfigError(f"{len(foreign)} jobs would replace result folders this run did not write "
                          f"({', '.join(foreign[:3])}{more}); pass --overwrite to replace them, or give "
                          f"the jobs another prefix")


def missing_results(finished, history, workdir="."):
    """The jobs the ledger says finished (its last "ok" line for each) whose result folder is not
    here any more; says so on stderr. finished: the job ids the ledger calls done."""
    last_ok = {r["job_id"]: r for r in history if r.get("status") == "ok" and r.get("job_id") in finished}
    gone = sorted(job_id for job_id, r in last_ok.items()
                  if r.get("result_dir") and not Path(workdir, r["result_dir"]).exists())
    if gone:
        shown = ", ".join(f"{job_id} ({last_ok[job_id]['result_dir']})" for job_id in gone[:3])
        more = f" and {len(gone) - 3} more" if len(gone) > 3 else ""
        print(f"resume: {len(gone)} finished jobs' result folders are gone: {shown}{more}; they run again",
              file=sys.stderr)
    return set(gone)
