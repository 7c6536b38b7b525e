"""train.py plus exact batch composition (--target_batch_pct), the base_only
mode and the shared base-model cache.

    python oct1_train.py --fold 0 --mode full_fine_tuning --target_batch_pct 0.25 --prefix demo
"""
import sys

import experiment


def build_parser():
    """This CLI's flags; generate_jobs.py validates jobs with it."""
    return experiment.build_parser(enhanced=True)


if __name__ == "__main__":
    sys.exit(experiment.main(enhanced=True))
