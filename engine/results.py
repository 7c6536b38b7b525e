"""Where a fold's result folder goes, and who may replace one that exists.

A published folder is replaced only when the user says so (--overwrite), or when it is what an
earlier attempt of the very same job of the same runner run left (a retry after a crash or a
lost host): the runner gives each job a --run_token, the trainer records it in
hyperparameters.json, and a folder carrying the same token may be replaced. Anything else that
exists is refused: the trainer prints `RESULT_EXISTS <folder>` (the runner reads it, and does
not retry) before its one-line error. No torch here: the runner reads folders with it too.
"""
import json
from pathlib import Path



def result_dir(args, fold, target_name):
    return Path(args.experiments_dir) / args.prefix / f"fold{fold}_{target_name}"


def written_by(folder):
    """The run token recorded in a result folder's hyperparameters.json, or None (none recorded,
    or unreadable: then nobody may claim it)."""
    try:
        token = json.loads((Path(folder) / "hyperparameters.json").read_text()).get("run_token")
    except (OSError, ValueError, AttributeError):
        return None
    return token if isinstance(token, str) else None


def may_replace(folder, overwrite, token):
    """Whether an existing result folder may be replaced by a run with these flags."""
    return overwrite or (token is not None and written_by(folder) == token)


def replace_refusal(folder, overwrite, token):
    """Why an existing folder must not be replaced (a one-line message), or None when it is absent
    or may be replaced."""
    folder = Path(folder)
    if not folder.exists() or may_replace(folder, overwrite, token):
        return None
    return f"{folder}: result folder exists and this run did not write it; pass --overwrite to replace it"
