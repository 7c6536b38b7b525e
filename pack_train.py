"""Train several folds in one process at once ("a pack"), each exactly as it would run alone.

    python pack_train.py jobs.json      # a jobs JSON (or a slice of one) from generate_jobs.py
    python pack_train.py --json TEXT    # the same list as JSON text (how the runner starts a pack)

The pack is engine.pack (members, data, base models, publishing) and engine.packed_step
(the stacked step); this file is its command line.
"""
import argparse
import sys

from engine import pack


def build_parser():
    parser = argparse.ArgumentParser(description="Train the jobs of a jobs JSON together, as one pack.",
                                     allow_abbrev=False)
    parser.add_argument("jobs", nargs="?", help="jobs JSON: a list of jobs, each an object of oct1_train.py flags")
    parser.add_argument("--json", metavar="TEXT", help="the jobs as JSON text instead of a file (how the runner "
                        "starts a pack on a host)")
    return parser


def main(argv=None):
    parser = build_parser()
    given = parser.parse_args(argv)
    return pack.main(given.jobs, given.json, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
