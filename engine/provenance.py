"""What produced a result: code version, libraries, device, host, times, command line, data.

    python -m engine.provenance --needs '{"data/demo": ["p01", "p02"]}'    # JSON, for the runner's check

A fold writes `provenance.json` beside `hyperparameters.json` (record()), and a
base-model cache entry keeps one too. The runner runs this module on every host
before it dispatches a grid and compares the answer (code hash and data
fingerprint) with its own checkout.

The code hash covers the project's own Python files that a fold can run: those at
the top of the project folder (the CLIs and the design card's two modules) and every
one in the packages a fold imports (CODE_PACKAGES), by name and content, so a checkout
without .git, or a copy made with scp, still identifies itself; the git commit and a
dirty flag are added where git can tell.
"""
import argparse
import hashlib
import importlib.metadata
import json
import os
import platform
import posixpath
import socket
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
CODE_PACKAGES = ("engine", "dataset")  # what a fold imports besides the top-level modules


def code_files(root=PROJECT_DIR):
    """The project's Python files a fold runs, as paths relative to root: every *.py at the top
    of the folder and in CODE_PACKAGES (and their sub-packages)."""
    root = Path(root)
    files = [p for p in root.glob("*.py") if p.is_file()]
    for package in CODE_PACKAGES:
        files += [p for p in (root / package).rglob("*.py") if p.is_file()]
    return sorted(p.relative_to(root).as_posix() for p in files)


def file_sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def code_hash(root=PROJECT_DIR):
    """One hash of the names (paths relative to root) and contents of code_files(root)."""
    digest = hashlib.sha256()
    for name in code_files(root):
        digest.update(f"{name}\0{file_sha256(Path(root, name))}\n".encode())
    return digest.hexdigest()[:16]


def git_version(root=PROJECT_DIR):
    """(commit, dirty) where git knows the folder, else (None, None)."""
    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:
            return None, None
        status = git("status", "--porcelain", "--untracked-files=no")
        return head.stdout.strip(), bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None, None


def code_version(root=PROJECT_DIR):
    commit, dirty = git_version(root)
    return {"code_hash": code_hash(root), "git_commit": commit, "git_dirty": dirty}


def device_name(device):
    """The GPU model for a CUDA device, else the CPU model."""
    import torch
    if getattr(device, "type", str(device)).startswith("cuda"):
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def libraries():
    import numpy
    import torch
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "cuda": torch.version.cuda, "cudnn": cudnn}


def now():
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def record(device, data_fingerprint, started, phase, argv=None):
    """The provenance of a run that started at `started` (an ISO time from now()) and ends now.
    phase: what engine.phase.train_phase returned for the phase that made the stored model, so
    the record says which path computed it (CUDA graphs replayed or eager; the fast CPU kernels
    or the historic ones), whatever the flags asked for."""
    return {**code_version(), **libraries(), "device": str(device), "device_name": device_name(device),
            "hostname": socket.gethostname(), "started": started, "ended": now(),
            "command": [Path(sys.executable).name, *(sys.argv if argv is None else argv)],
            "data_fingerprint": data_fingerprint, "cuda_graphs_used": phase["cuda_graphs"],
            "kernels": "fast" if phase["fast_kernels"] else "historic", **slurm_task()}


def slurm_task():
    """{"slurm_job": "123_4"} (an array task) or {"slurm_job": "123"} in a Slurm job, else {}."""
    array, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array}_{index}" if array and index else os.environ.get("SLURM_JOB_ID")
    return {"slurm_job": job} if job else {}


def data_files(data_path, participants=None):
    """The paths of the participants' split files (every participant in the folder by default);
    ValueError in one line when the folder has none."""
    from engine.data import CLASSES_FILE, SPLITS, DataError, discover_participants
    try:
        names = participants or discover_participants(data_path)
    except DataError as e:
        raise ValueError(str(e)) from None
    classes = Path(data_path) / CLASSES_FILE  # a recognizer's class names travel with its data
    return ([posixpath.join(str(data_path), f"{name}_{split}.pt") for name in names for split in SPLITS]
            + ([posixpath.join(str(data_path), CLASSES_FILE)] if classes.is_file() else []))


def data_answer(data_path, participants=None):
    """The fingerprint of participants' files (every participant in the folder by default), or
    {"error": why} when it cannot be taken: a missing file is a difference, not a crash."""
    from engine import base_cache
    from engine.data import DataError, discover_participants
    try:
        return base_cache.data_fingerprint(data_path, participants or discover_participants(data_path))
    except OSError as e:
        return {"error": f"{e.filename}: {e.strerror}"}
    except DataError as e:
        return {"error": str(e)}


def model_answer(path):
    """The sha256 of a lab's model file (engine.user_model), or {"error": why}."""
    try:
        return file_sha256(path)
    except OSError as e:
        return {"error": f"{path}: {e.strerror}"}


def installed_version(name):
    """The version of an installed distribution, or None (no import: the metadata is enough)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def answer(needs, devices=True, models=(), packages=()):
    """What a host answers the runner's check: code hash, data fingerprints ({data folder:
    [participants] or None for all}), the hashes of the jobs' own model files, the installed versions
    of the packages named (the runner's requirements.txt pins; None: not installed), Python and torch
    versions, and the GPUs it sees. Without `devices` (the runner's own side) torch is not
    imported: it costs seconds."""
    found = {"code_hash": code_hash(), "data": {path: data_answer(path, names) for path, names in needs.items()},
             "models": {path: model_answer(path) for path in models}, "python": platform.python_version(),
             **({"packages": {name: installed_version(name) for name in packages}} if packages else {})}
    if not devices:
        return {**found, "torch": importlib.metadata.version("torch")}
    import torch
    return {**found, "torch": torch.__version__, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
            # what the runner sizes a pack "auto" by where it cannot ask nvidia-smi (a Slurm task)
            "cuda_memory_mib": (torch.cuda.get_device_properties(0).total_memory // 2 ** 20
                                if torch.cuda.is_available() else None)}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m engine.provenance", description="Print this checkout's code hash, "
                                "the fingerprints of data files, the Python and torch versions and the GPUs it sees, "
                                "as JSON (for the runner's check).", allow_abbrev=False)
    p.add_argument("--needs", type=json.loads, default={},
                   help='JSON {data folder: [participants] or null for all}, e.g. \'{"data/demo": null}\'')
    p.add_argument("--models", type=json.loads, default=[],
                   help='JSON list of the model files the jobs train (engine.user_model), e.g. \'["lab/cnn.py"]\'')
    p.add_argument("--packages", type=json.loads, default=[],
                   help='JSON list of package names whose installed versions to tell, e.g. \'["torch", "numpy"]\'')
    args = p.parse_args(argv)
    print(json.dumps(answer(args.needs, models=args.models, packages=args.packages), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
