"""Turn a grid of training settings into a validated jobs JSON.

    python generate_jobs.py                               # the demo grid -> jobs_config.json
    python generate_jobs.py examples/original_grid.json -o jobs.json
    python generate_jobs.py grid.json --set batch_size=32,64 --set folds=0,1 --print

The grid's rules (every job checked by the training CLI's own parser, settings that cannot
change a job collapsed, one prefix per configuration) are runner.grid; this file is its
command line.
"""
import argparse
import sys

from runner import grid


def build_parser():
    parser = argparse.ArgumentParser(prog="generate_jobs.py", allow_abbrev=False,
                                     description="Turn a grid of training settings into a jobs JSON.")
    parser.add_argument("grid_file", nargs="?", help="JSON grid file (default: the demo grid)")
    parser.add_argument("--set", action="append", default=[], metavar="FLAG=V1,V2",
                        help="make FLAG a grid dimension with these values (repeatable); also folds=, prefix= "
                             "(default: the grid file's)")
    parser.add_argument("-o", "--output", default="jobs_config.json", help="jobs file to write (default %(default)s)")
    parser.add_argument("--script", default="oct1_train.py",
                        help="training CLI whose parser validates the jobs (default %(default)s)")
    parser.add_argument("--print", action="store_true",
                        help="print the jobs as command lines, write nothing (default off)")
    return parser


def main(argv=None):
    parser = build_parser()
    return grid.main(parser.parse_args(argv), parser.prog)


if __name__ == "__main__":
    sys.exit(main())
