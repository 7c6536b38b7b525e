"""The run's log: every epoch to a file (copied into the result folder at the end), the
console's share of it, and the process state a CLI borrows while it runs.

All of the engine logs to the "experiment" logger.
"""
import contextlib
import logging
import signal
import sys

log = logging.getLogger("experiment")


def file_handler():
    """The handler writing the run's log file, or None outside a CLI run."""
    return next((h for h in log.handlers if isinstance(h, logging.FileHandler)), None)


def setup_logging(log_path):
    """Console gets INFO; the run's log file gets every epoch."""
    log.setLevel(logging.DEBUG)
    log.propagate = False
    for handler in list(log.handlers):  # process_state puts them back and closes ours
        log.removeHandler(handler)
    console = logging.StreamHandler(sys.stdout)
    console.setLevel(logging.INFO)
    console.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(console)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)


@contextlib.contextmanager
def process_state():
    """Inside: SIGTERM unwinds like Ctrl-C, so temporary folders and locks are cleaned up, and the
    "experiment" logger is ours to configure. Afterwards both are as they were, so a caller that
    runs main in its own process (tests, a packed runner) keeps its own handler and logging."""
    sigterm = signal.getsignal(signal.SIGTERM)
    handlers, level, propagate = list(log.handlers), log.level, log.propagate
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, sigterm)
        for handler in list(log.handlers):
            log.removeHandler(handler)
            if handler not in handlers:
                handler.close()
        for handler in handlers:
            log.addHandler(handler)
        log.setLevel(level)
        log.propagate = propagate
