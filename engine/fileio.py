"""Small file helpers every CLI shares: atomic writes, JSON reads that fail in one line,
and the one error type for bad settings and input files. No torch, no paramiko."""
import contextlib
import json
import os
import shutil
import uuid
from pathlib import Path


class ConfigError(Exception):
    """A bad flag combination, setting or input file; the message is one line."""


def hidden_sibling(path, kind="tmp"):
    """A fresh name next to `path` that readers pass over: .NAME.KIND-PID-RANDOM."""
    path = Path(path)
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_file(path):
    """Yield a binary file to fill; it replaces `path` whole when the block ends, and vanishes
    if the block fails. Made with os.open (not mkstemp, which makes it 0600) so the result
    gets the user's usual permissions."""
    tmp = hidden_sibling(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_atomic(path, text):
    """Write text (or bytes) into a hidden sibling, then rename it over `path`."""
    with atomic_file(path) as f:
        f.write(text.encode() if isinstance(text, str) else text)


@contextlib.contextmanager
def staged_folder(final):
    """Yield a new hidden sibling folder of `final` to fill; whatever is left of it
    afterwards (it was not published, or the block failed) is removed."""
    tmp = hidden_sibling(final)
    Path(final).parent.mkdir(parents=True, exist_ok=True)
    tmp.mkdir()  # not mkdtemp: the folder gets the user's usual permissions
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_folder(tmp, final, replace):
    """Rename a finished folder into place. An existing `final` is moved aside first (so a
    reader never sees a mix) when `replace`, else the rename fails with OSError."""
    final = Path(final)
    if not (replace and final.exists()):
        os.rename(tmp, final)
        return
    old = hidden_sibling(final, "old")
    os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old)


def read_json(path, what):
    """The parsed JSON of a file, or ConfigError in one line naming the file and what is wrong."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: {what} is not text") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read {what} ({e.strerror})") from None
