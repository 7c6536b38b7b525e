"""Train one leave-one-participant-out fold: base model, then personalization.

    python train.py --fold 0 --batch_size 64 --mode full_fine_tuning --prefix demo
"""
import sys

import experiment


def build_parser():
    """This CLI's flags; generate_jobs.py validates jobs with it."""
    return experiment.build_parser(enhanced=False)


if __name__ == "__main__":
    sys.exit(experiment.main(enhanced=False))
