"""What the training CLIs share: the parser of train.py and oct1_train.py (every flag from
engine.flags), the demo dataset made on first use, and the error handling of a run
(one-line errors exit 2, Ctrl-C and SIGTERM 130/143, nothing half-written)."""
import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from dataset.synthetic import ensure_demo_data
from engine import base_cache, flags, markers
from engine.data import DataError
from engine.fileio import ConfigError
from engine.presets import resolve_preset
from engine.runlog import process_state, setup_logging


class TrainingParser(argparse.ArgumentParser):
    """Resolves --preset right after parsing, so every reader of the flags
    (the engine, the grid, the base-cache key) sees plain values."""

    def parse_known_args(self, args=None, namespace=None):
        parsed, rest = super().parse_known_args(args, namespace)
        return resolve_preset(parsed), rest

    def error(self, message):
        # train.py lacks oct1_train.py's flags; say where they are.
        known = {action.dest for action in self._actions}
        elsewhere = [f"--{f.name}" for f in flags.FLAGS if f.enhanced and f.name not in known
                     and f"--{f.name}" in message.split()]
        if elsewhere:
            message += f" ({', '.join(elsewhere)}: use oct1_train.py)"
        super().error(message)


def build_parser(enhanced=False):
    """The flags of train.py (every flag is defined in engine.flags); `enhanced` adds oct1_train.py's."""
    description = "Train one leave-one-participant-out fold: base model, then personalization."
    if enhanced:
        description += (" Adds to train.py: --target_batch_pct (exact share of target windows per batch) "
                        "with --epoch_rule, --mode base_only, and the shared base-model cache "
                        "(--base_cache_dir, --no_base_cache, --print_base_key).")
    else:
        description += " For an exact share of target windows per batch (--target_batch_pct), use oct1_train.py."
    parser = TrainingParser(description=description, allow_abbrev=False)
    flags.add_arguments(parser, enhanced)
    return parser


def main(argv=None, enhanced=False):
    """train.py (or with `enhanced` oct1_train.py): one fold; returns the exit status."""
    parser = build_parser(enhanced)
    args = parser.parse_args(argv)
    # torch only now: --help and a bad flag answer at once, and the runner and generate_jobs.py
    # load this module's parser to check jobs with.
    from engine.device import apply_threads
    from engine.fold import run_fold
    apply_threads(args)

    def work(log_path):
        if enhanced and args.print_base_key:
            print(base_cache.key_for_args(args))
            return 0
        ensure_demo_data(args.data_path)
        setup_logging(log_path)
        print(f"log: {log_path} (every epoch; copied into the result folder at the end)", flush=True)
        final = run_fold(args)
        if final is not None:
            markers.say(markers.RESULT_DIR, final)
        return 0
    return run_cli(parser.prog, work, "nothing was published")


def run_cli(prog, work, interrupted):
    """work(log_path) -> exit status, with the CLIs' error handling: one-line errors
    exit 2, Ctrl-C and SIGTERM 130/143 (saying `interrupted`), the log removed at the end;
    the SIGTERM handler and the logger are restored afterwards (process_state)."""
    # The log is written aside and copied into the result folder, so a failed run writes nothing.
    scratch = Path(tempfile.mkdtemp(prefix="train-log-"))
    try:
        with process_state():
            return work(scratch / "train.log")
    except (DataError, ConfigError, base_cache.CacheError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; {interrupted}", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
