"""The base-model cache: one key function and a locked, atomically published store.

`{cache_dir}/{key}/` holds model.pt, metrics.json, losses.json, config.json,
fingerprint.json (hashes of the base participants' data files), provenance.json
(engine.provenance.record of the training) and
checksums.json (hashes of the other files). Writers hold `{key}.lock` (an
flock, so a killed writer's lock dies with it) and publish by renaming a
finished temporary folder; readers verify checksums and the data fingerprint.
A training that fails leaves no entry and no lock file.

torch and the data module are imported where tensors are handled, so the
runner can check entries (entry_intact) without paying for torch at start-up.
"""
import contextlib
import fcntl
import hashlib
import io
import json
import logging
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path

from engine import flags, markers, user_model
from engine.flag_types import SEEDED_DROPOUT_MODELS
from engine.modes import mode_of
from engine.fileio import publish_folder, staged_folder

log = logging.getLogger("experiment")
ENTRY_FILES = ("model.pt", "metrics.json", "losses.json", "config.json", "fingerprint.json", "provenance.json")


class CacheError(Exception):
    """The key cannot be computed from the given settings; one line."""


def key_settings(args, base_participants):
    """Every setting that determines the base model, and nothing else: the registry's
    keyed base-phase flags (flags.py), a user model's source hash and arguments (engine.user_model),
    the sorted base participants, and for a model whose fixed dropout once drew from torch's global
    generator (flag_types.SEEDED_DROPOUT_MODELS) that its masks now come from the phase's own, so
    that no base model cached before is reused as if it were the same. The data decides the rest,
    a recognizer's classes included (classes.json is in the data fingerprint), so a key can be
    computed where the data is not."""
    settings = dict(flags.base_key_values(vars(args)), **user_model.key_values(args),
                    **({"dropout_masks": "phase generator"} if args.model in SEEDED_DROPOUT_MODELS else {}),
                    base_participants=sorted(base_participants))
    if user_model.is_spec(args.model):  # its file's content decides, not how its path is written
        settings["model"] = user_model.parts(args.model)[1]
    return settings


def base_key(args, base_participants):
    text = json.dumps(key_settings(args, base_participants), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def key_for_args(args):
    """The base key of a run's flags; reads only the folder listing, and not
    even that when --participants is given."""
    from engine.data import check_base, check_participants, resolve_fold
    if not mode_of(args.mode).base_phase:
        raise CacheError(f"--mode {args.mode} trains no base model, so it has no base key")
    participants = args.participants or check_participants(args.data_path, None)
    target, base_names = resolve_fold(participants, args.fold, args.n_base_participants)
    check_base(args.mode, target, base_names)
    return base_key(args, base_names)


def _sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def data_fingerprint(data_path, participants):
    """Content hashes of the participants' data files (mtimes differ between hosts), and of the
    folder's classes.json when it has one (a recognizer's class names)."""
    from engine.data import CLASSES_FILE, SPLITS
    found = {f"{p}_{s}.pt": _sha256(Path(data_path) / f"{p}_{s}.pt") for p in sorted(participants) for s in SPLITS}
    classes = Path(data_path) / CLASSES_FILE
    return dict(found, **{CLASSES_FILE: _sha256(classes)} if classes.is_file() else {})


@dataclass
class Entry:
    key: str
    path: Path
    result: dict
    reused: bool


def _read_checked(folder):
    """({file name: bytes}, None) when every file matches checksums.json, else (None, why not).
    A missing file raises OSError, a malformed checksums.json ValueError."""
    blobs = {name: (folder / name).read_bytes() for name in ENTRY_FILES + ("checksums.json",)}
    checksums = json.loads(blobs["checksums.json"])
    for name in ENTRY_FILES:
        if hashlib.sha256(blobs[name]).hexdigest() != checksums.get(name):
            return None, f"checksum mismatch in {name}"
    return blobs, None


def entry_intact(folder):
    """Whether a folder holds a complete entry whose files match their checksums.

    Needs no torch and no data: the runner calls it on entries it copies between hosts.
    """
    try:
        return _read_checked(Path(folder))[1] is None
    except (OSError, ValueError, AttributeError):  # AttributeError: checksums.json is not an object
        return False


def read_entry(folder, fingerprint):
    """(result, None) for a usable entry, else (None, why not).

    Each file is read once, and checked and parsed from the same bytes, so a
    writer replacing the entry meanwhile cannot slip unverified data in.
    """
    import torch
    if not folder.is_dir():
        return None, "not in the cache"
    try:
        blobs, problem = _read_checked(folder)
        if problem:
            return None, problem
        stored = json.loads(blobs["fingerprint.json"])
        if stored != fingerprint:
            changed = sorted(n for n in set(stored) | set(fingerprint) if stored.get(n) != fingerprint.get(n))
            return None, f"base data changed since it was trained ({', '.join(changed)})"
        state = torch.load(io.BytesIO(blobs["model.pt"]), map_location="cpu", weights_only=True)
        metrics = json.loads(blobs["metrics.json"])
        losses = json.loads(blobs["losses.json"])
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as err:
        return None, f"unreadable entry ({err})"
    return dict(metrics, curves=losses, state=state, provenance=json.loads(blobs["provenance.json"])), None


def _write_entry(folder, result, settings, fingerprint):
    import torch
    torch.save({k: v.cpu() for k, v in result["state"].items()}, folder / "model.pt")
    metrics = {k: result[k] for k in ("best_epoch", "best_val_loss", "val_f1_at_best_loss", "best_val_f1",
                                       "best_val_f1_epoch", "epochs_run", "windows_per_s")}
    contents = {"metrics.json": metrics, "losses.json": result["curves"],
                "config.json": settings, "fingerprint.json": fingerprint,
                "provenance.json": result.get("provenance")}
    for name, content in contents.items():
        (folder / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
    checksums = {name: _sha256(folder / name) for name in ENTRY_FILES}
    (folder / "checksums.json").write_text(json.dumps(checksums, indent=2) + "\n")


@contextlib.contextmanager
def key_lock(path):
    """Hold an flock on `path` (a killed holder's lock dies with it). After a success the file stays
    (it marks a store that trained the key); after a failure it is removed while still held, so a
    failed training leaves the store as it found it. A waiter that then gets the lock of the removed
    file sees it is no longer the file at `path`, and locks again."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.path.samestat(os.fstat(fd), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    except BaseException:
        Path(path).unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)  # releases the flock


def get_or_train(cache_dir, key, fingerprint, settings, train):
    """Reuse the verified entry for `key`, or train it (once, under the lock) and publish it."""
    cache_dir = Path(cache_dir)
    folder = cache_dir / key
    result, _ = read_entry(folder, fingerprint)
    if result is not None:
        log.info(f"base model {key}: reused from {folder}")
        return Entry(key, folder, result, reused=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with key_lock(cache_dir / f"{key}.lock"):
        # Another process may have published it while we waited for the lock.
        result, problem = read_entry(folder, fingerprint)
        if result is not None:
            log.info(f"base model {key}: reused from {folder} (trained by another run)")
            return Entry(key, folder, result, reused=True)
        log.info(f"base model {key}: training ({problem})")
        # Holding the lock, no other writer of this key is alive: clear what killed ones left.
        for leftover in cache_dir.glob(f".{key}.*"):
            shutil.rmtree(leftover, ignore_errors=True)
        if folder.exists():
            stale = cache_dir / f".{key}.stale{os.getpid()}"
            folder.rename(stale)
            shutil.rmtree(stale)
        result = train()
        with staged_folder(folder) as tmp:
            _write_entry(tmp, result, settings, fingerprint)
            publish_folder(tmp, folder, replace=False)
        log.info(f"base model {key}: stored in {folder}")
        markers.say(markers.BASE_TRAINED, key)  # the runner counts base trainings by this line
        return Entry(key, folder, result, reused=False)
