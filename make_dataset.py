"""Make datasets in the project's format: DATA/{participant}_{split}.pt.

Each file holds `torch.save((X, y))`: X float32 (N, C, T), channels first, and
y float32 (N,) with values 0/1, or for a multi-class dataset (K >= 3 classes) y int64
(N,) of class ids 0..K-1 and DATA/classes.json beside them: the K class names in id
order, as a JSON list. Splits are train, val and test.

Two subcommands:

  synthetic  A demo dataset of a wrist IMU at 50 Hz, 6 channels:
             acc_x, acc_y, acc_z in g (gravity included) and
             gyr_x, gyr_y, gyr_z in rad/s (rad/s keeps both sensors on a
             similar scale for a model fed raw values).
             Positive windows hold a smoking session: one to several puffs,
             each an arm raise with forearm rotation, a hold at the mouth and
             a lowering. Negative windows hold sitting, walking, small
             fidgets, drinking, or an eating-like hand-to-mouth "confounder"
             that is on average faster, more frequent, held shorter and
             rotated less than a puff.
             Participants differ in sensor orientation on the wrist (one
             rotation applied to both sensors), handedness, walking, noise,
             and above all in a personal style offset that moves all their
             gestures (pitch, roll, hold, speed, rhythm). Across participants
             the two classes overlap, since one person's confounder can look
             like another's puff, so a model trained on others transfers
             imperfectly; within one participant puff and confounder stay
             apart, so fine-tuning on their own windows can learn where their
             boundary lies. Same --seed, same bytes.
             --n_classes K (3..8) makes a multi-class dataset instead: each
             window one of K activities (walking, sitting, standing, lying,
             running, upstairs, downstairs, cycling: the first K), with
             classes.json.

  csv        Raw recordings to windowed splits. INPUT_DIR holds one subfolder
             per participant (the folder name is the participant name) with
             CSV recordings (*.csv, header row). Windows of --window_size
             samples every --stride samples, within one recording.
             Labels: 0/1 in the file, or --positive_label against the rest,
             or --classes A,B,C (or all) for a multi-class dataset of those
             label values, ids 0, 1, 2 in that order (all: every value found,
             sorted); rows of other labels are left out like --keep_labels.
             Window label (--label_rule):
               any       1 if any sample in the window is positive (binary only)
               majority  1 if more than half of the samples are positive
                         (default); multi-class: the class most samples have,
                         a tie going to the lower class id
               center    the label of sample window_size // 2
             --stride defaults to --window_size (no overlap).
             Split per participant (--split train,val,test fractions):
               block      (default) each recording's time axis is cut into
                          three contiguous blocks, train first, then val,
                          then test, BEFORE windowing, so no window spans two
                          splits and overlapping windows never land in
                          different splits
               recording  whole recordings go to one split each, in file
                          name order (needs >= 3 recordings per participant)

Errors are one line naming the file, exit status 2, and nothing is written.
Before writing, a split with no positive or no negative window, a train split
smaller than --batch_size, and a CSV recording shorter than one window
(skipped) are warned about on stderr; --strict makes any of them an error.
The output folder is written in a temporary sibling and renamed at the end, so
it appears whole or not at all. A non-empty folder is refused unless
--overwrite, which replaces it whole; a folder that holds anything but
NAME_{train,val,test}.pt files and classes.json, or that is, holds or lies inside
--input_dir, is refused even with --overwrite (one line, exit 2, nothing written or deleted).

The makers live in dataset/ (synthetic.py, activities.py, csv_import.py, splits.py); this
file is their command line.
"""
import argparse
import sys

from dataset import activities, csv_import, splits, synthetic
from dataset.splits import DatasetError
from engine.flags import positive_int


def _fractions(text):
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers like 0.6,0.2,0.2, got {text!r}")
    if len(values) != 3 or min(values) <= 0 or abs(sum(values) - 1) > 1e-6:
        raise argparse.ArgumentTypeError(f"expected three positive fractions summing to 1, "
                                         f"got {text!r}")
    return values


def _labels(text):
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected label values separated by commas, got {text!r}")
    return values


def add_check_flags(command):
    command.add_argument("--batch_size", type=positive_int, default=64,
                         help="the training batch size: a train split with fewer windows is "
                              "warned about (default 64, as the training CLIs)")
    command.add_argument("--strict", action="store_true",
                         help="refuse (exit 2, write nothing) instead of warning about a split "
                              "with no positive or no negative window, a train split smaller "
                              "than a batch, or a skipped recording (default off)")


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)
    add_synthetic(commands)
    add_csv(commands)
    return parser


def add_synthetic(commands):
    """The synthetic subcommand and its flags."""
    syn = commands.add_parser(
        "synthetic", help="write the synthetic demo dataset", allow_abbrev=False,
        description="Synthetic wrist IMU at 50 Hz: acc_x..z in g (with gravity), "
                    "gyr_x..z in rad/s. Positive windows: repeated puffs; with --n_classes K >= 3, "
                    "each window one of K activities.")
    syn.add_argument("--output_dir", required=True, help="folder to write (required, no default)")
    syn.add_argument("--n_participants", type=positive_int, default=6, help="participants (default 6)")
    syn.add_argument("--window_size", type=positive_int, default=synthetic.DEMO_WINDOW,
                     help=f"samples per window (default {synthetic.DEMO_WINDOW} = 10 s at 50 Hz)")
    for split, n in zip(("train", "val", "test"), synthetic.DEMO_SIZES):
        syn.add_argument(f"--n_{split}", type=positive_int, default=n,
                         help=f"{split} windows per participant (default {n})")
    syn.add_argument("--n_classes", type=positive_int, default=2,
                     help="2: the binary demo; 3 to 8: a multi-class dataset of that many activities, "
                          "with classes.json (default 2)")
    syn.add_argument("--seed", type=int, default=0, help="seeds every draw (default 0)")
    syn.add_argument("--overwrite", action="store_true",
                     help="replace an output folder of NAME_{train,val,test}.pt files; one "
                          "holding anything else is refused (default off)")
    add_check_flags(syn)


def add_csv(commands):
    """The csv subcommand and its flags."""
    raw = commands.add_parser(
        "csv", help="window raw CSV recordings into splits", allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="INPUT_DIR/{participant}/*.csv (header row) to "
                    "OUTPUT_DIR/{participant}_{train,val,test}.pt.",
        epilog="label rules (--label_rule):\n"
               "  any       1 if any sample in the window is positive (binary only)\n"
               "  majority  1 if more than half of the samples are positive; with --classes,\n"
               "            the class most samples have (a tie: the lower class id)\n"
               "  center    the label of sample window_size // 2\n"
               "splits (--split_by):\n"
               "  block      each recording is cut into contiguous train, val, test\n"
               "             blocks before windowing: no window spans two splits\n"
               "  recording  whole recordings, in file name order (>= 3 per participant)")
    raw.add_argument("--input_dir", required=True, help="folder of participant folders (required, no default)")
    raw.add_argument("--output_dir", required=True, help="folder to write (required, no default)")
    raw.add_argument("--channels", required=True,
                     help="comma-separated sensor columns, e.g. acc_x,acc_y,acc_z (required, no default)")
    raw.add_argument("--label_column", required=True, help="column of the labels (required, no default)")
    raw.add_argument("--positive_label", default=None,
                     help="label value that means 1 (everything else is 0); without it "
                          "or --classes, labels must be 0/1 (default none)")
    raw.add_argument("--classes", type=_labels, default=None, metavar="A,B,C",
                     help="a multi-class dataset: these label values (3 or more) are class ids 0, 1, "
                          "2, ... in this order, or 'all': every value found, sorted; rows of other "
                          "labels are left out like --keep_labels; writes classes.json (default none)")
    labels = raw.add_mutually_exclusive_group()
    labels.add_argument("--keep_labels", type=_labels, default=None, metavar="A,B",
                        help="window only the rows with these label values, before anything else "
                             "(default: every row)")
    labels.add_argument("--drop_labels", type=_labels, default=None, metavar="A,B",
                        help="leave out the rows with these label values (transitions, unlabelled rows) "
                             "before windowing: no window spans them (default: none)")
    raw.add_argument("--window_size", type=positive_int, default=3000,
                     help="samples per window (default 3000)")
    raw.add_argument("--stride", type=positive_int, default=None,
                     help="samples between window starts (default: window_size)")
    raw.add_argument("--label_rule", choices=["any", "majority", "center"], default="majority",
                     help="how a window gets its label (default: majority; see below)")
    raw.add_argument("--split", type=_fractions, default=(0.6, 0.2, 0.2),
                     help="train,val,test fractions (default 0.6,0.2,0.2)")
    raw.add_argument("--split_by", choices=["block", "recording"], default="block",
                     help="how splits are cut (default: block; see below)")
    raw.add_argument("--overwrite", action="store_true",
                     help="replace an output folder of NAME_{train,val,test}.pt files; one "
                          "holding anything else is refused (default off)")
    add_check_flags(raw)


def _synthetic_build(args):
    """build(warnings, notes) -> (splits, class names) of the synthetic subcommand."""
    def build(warnings, notes):
        if args.n_classes == 2:
            return synthetic.synthetic_splits(args.n_participants, args.window_size, args.n_train, args.n_val,
                                              args.n_test, args.seed), None
        return activities.activity_splits(args.n_classes, args.n_participants, args.window_size, args.n_train,
                                          args.n_val, args.n_test, args.seed)
    return build


def _csv_build(args):
    """build(warnings, notes) -> (splits, class names) of the csv subcommand."""
    def build(warnings, notes):
        channels = [c.strip() for c in args.channels.split(",") if c.strip()]
        if not channels:
            raise DatasetError("--channels names no column")
        return csv_import.csv_splits(args.input_dir, channels, args.label_column, args.positive_label,
                                     args.window_size, args.stride, args.label_rule, args.split,
                                     args.split_by, warnings, notes, args.keep_labels, args.drop_labels,
                                     args.classes)
    return build


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.command == "synthetic":
        build, inputs = _synthetic_build(args), []
    else:
        build, inputs = _csv_build(args), [args.input_dir]  # the output folder must stay apart from it
    try:
        if args.command == "csv":  # the flags' own errors before any folder's
            csv_import.check_class_flags(args.classes, args.positive_label, args.label_rule)
        made, classes = splits.make(build, args.output_dir, args.overwrite, args.batch_size, args.strict, inputs)
    except DatasetError as e:
        print(f"make_dataset.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(splits.summary_table(made, classes))
    print(f"wrote {len(made)} files{'' if classes is None else f' and {splits.CLASSES_FILE}'} to {args.output_dir}")


if __name__ == "__main__":
    main()
