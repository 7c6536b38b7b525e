"""Train one leave-one-participant-out fold: base model, then personalization.

    python train.py --fold 0 --batch_size 64 --mode full_fine_tuning --prefix demo

The fold is engine.fold; the flags are engine.flags; this file is its command line.
"""
import sys

from engine import cli


def build_parser():
    """This CLI's flags; generate_jobs.py validates jobs with it."""
    return cli.build_parser(enhanced=False)


if __name__ == "__main__":
    sys.exit(cli.main(enhanced=False))
