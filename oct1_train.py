"""train.py plus exact batch composition (--target_batch_pct), the base_only
mode and the shared base-model cache.

    python oct1_train.py --fold 0 --mode full_fine_tuning --target_batch_pct 0.25 --prefix demo

The fold is engine.fold; the flags are engine.flags; this file is its command line.
"""
import sys

from engine import cli


def build_parser():
    """This CLI's flags; generate_jobs.py validates jobs with it."""
    return cli.build_parser(enhanced=True)


if __name__ == "__main__":
    sys.exit(cli.main(enhanced=True))
