"""What every dataset maker shares: the one error type, the warnings about splits a model
cannot learn or be scored from, the summary table, and writing the folder whole or not at all.

A maker's splits are {(participant, split): (X, y)}; with them go its class names: None for a
binary dataset (y float32 of 0/1, nothing more written), or the K >= 3 names of a multi-class one
(y int64 class ids 0..K-1), written as CLASSES_FILE, a JSON list of the names in id order."""
import json
import os
import sys

from engine.data import SPLITS
from engine.fileio import publish_folder, staged_folder

CLASSES_FILE = "classes.json"  # the class names of a multi-class dataset, in id order


class DatasetError(Exception):
    """A problem with the input or the output folder; the message is one line."""


def _missing_classes(y, classes):
    """The part of a split warning that names the classes with no window, or None."""
    if classes is None:
        n_positive = int((y > 0.5).sum())
        return ("no positive window" if n_positive == 0 else
                "no negative window" if n_positive == len(y) else None)
    found = set(y.tolist())
    missing = [f"'{name}'" for k, name in enumerate(classes) if k not in found]
    return f"no window of class {', '.join(missing)}" if missing else None


def split_warnings(splits, batch_size, classes=None):
    """One line per split a model cannot learn or be scored well from: a class with no window
    (for a binary dataset: no positive or no negative window), a train split under a batch."""
    lines = []
    for (participant, split), (_, y) in sorted(splits.items()):
        missing = _missing_classes(y, classes)
        if missing:
            lines.append(f"{participant} {split}: {missing} (of {len(y)})")
        if split == "train" and len(y) < batch_size:
            lines.append(f"{participant} {split}: {len(y)} windows, fewer than one batch "
                         f"(--batch_size {batch_size})")
    return lines


def _is_split_file(folder, name):
    """Whether `name` in `folder` is a file this module writes: NAME_{train,val,test}.pt, or
    the class names of a multi-class dataset (CLASSES_FILE)."""
    stem, ext = os.path.splitext(name)
    participant, _, split = stem.rpartition("_")
    path = os.path.join(folder, name)
    named = name == CLASSES_FILE or (ext == ".pt" and split in SPLITS and bool(participant))
    return named and not name.startswith(".") and os.path.isfile(path) and not os.path.islink(path)


def _refuse_overlap(output_dir, input_dir):
    """Refuse an output folder that is, holds or lies inside an input folder: --overwrite would
    delete the input, and a folder written inside the input is read back as input next time."""
    out, inp = os.path.realpath(output_dir), os.path.realpath(input_dir)
    common = os.path.commonpath([out, inp])
    if common not in (out, inp):
        return
    where = "is" if out == inp else "holds" if common == out else "lies inside"
    raise DatasetError(f"{output_dir}: {where} the input folder {input_dir}: "
                       "choose an output folder apart from the input")


def _refuse_foreign(output_dir):
    """Refuse an output folder holding anything but dataset files: --overwrite replaces the
    folder whole, and must never delete what this tool did not write (notes, inputs)."""
    foreign = [name for name in os.listdir(output_dir) if not _is_split_file(output_dir, name)]
    foreign.sort(key=lambda name: (name.startswith("."), name))  # name a visible one first
    if not foreign:
        return
    first = foreign[0] + ("/" if os.path.isdir(os.path.join(output_dir, foreign[0])) else "")
    more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
    raise DatasetError(f"{output_dir}: holds {first}{more}, not a dataset file (NAME_train.pt, "
                       f"NAME_val.pt, NAME_test.pt, {CLASSES_FILE}): choose another output folder")


def check_output(output_dir, overwrite, inputs=()):
    """The absolute output folder, when it may be written. This is the one rule for what may
    be replaced: an existing folder only with `overwrite`, and only when it holds nothing but
    dataset files and no input folder (`inputs`) overlaps it."""
    output_dir = os.path.abspath(output_dir)
    for input_dir in inputs:
        _refuse_overlap(output_dir, input_dir)
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise DatasetError(f"{output_dir}: exists and is not a folder")
    if os.path.isdir(output_dir):
        _refuse_foreign(output_dir)  # first: "use --overwrite" would be bad advice here
        if os.listdir(output_dir) and not overwrite:
            raise DatasetError(f"{output_dir}: folder exists and is not empty (use --overwrite)")
    return output_dir


def write_splits(splits, output_dir, overwrite=False, inputs=(), classes=None):
    """Write {(participant, split): (X, y)}, and CLASSES_FILE when `classes` names the classes
    of a multi-class dataset, so the folder appears whole or not at all; check_output says when
    an existing folder may be replaced."""
    import torch  # here: generate_jobs.py imports this module, and only writes the demo data once
    output_dir = check_output(output_dir, overwrite, inputs)
    with staged_folder(output_dir) as tmp:
        for (participant, split), (X, y) in splits.items():
            torch.save((X, y), os.path.join(tmp, f"{participant}_{split}.pt"))
        if classes is not None:
            with open(os.path.join(tmp, CLASSES_FILE), "w") as f:
                f.write(json.dumps(list(classes)) + "\n")
        try:
            # check_output refused an existing folder unless it is empty, or holds only dataset
            # files and --overwrite was given.
            publish_folder(tmp, output_dir, replace=True)
        except OSError as e:
            # Most likely another process wrote this folder meanwhile; keep theirs.
            raise DatasetError(f"{output_dir}: not written: {e.strerror}") from None


def summary_table(splits, classes=None):
    """Windows per participant and split, as text: with the positive rate for a binary dataset,
    and for a multi-class one, a line per class of its windows in each split after the table."""
    participants = sorted({participant for participant, _ in splits})
    lines = [f"{'participant':<14}" + "".join(f"{split:>18}" for split in SPLITS)]
    for participant in participants:
        cells = []
        for split in SPLITS:
            y = splits[(participant, split)][1]
            rate = "" if classes is not None else f" ({100 * float(y.float().mean()):5.1f}% pos)"
            cells.append(f"{len(y):>6}{rate}")
        lines.append(f"{participant:<14}" + "".join(f"{c:>18}" for c in cells))
    for k, name in enumerate(classes or ()):
        counts = []
        for split in SPLITS:
            n = sum(int((y == k).sum()) for (_, part), (_, y) in splits.items() if part == split)
            counts.append(f"{n} {split}")
        lines.append(f"class {k} {name!r}: {', '.join(counts)} windows")
    return "\n".join(lines)


def make(build, output_dir, overwrite=False, batch_size=64, strict=False, inputs=()):
    """build(warnings, notes) -> (splits, classes): {(participant, split): (X, y)} and the class
    names (None for a binary dataset). Say its notes and warnings (and those of split_warnings)
    on stderr, refuse on any with `strict`, then write the folder. `inputs`: the folders build
    reads, which the output folder must stay apart from. Returns (splits, classes)."""
    check_output(output_dir, overwrite, inputs)  # before any work or warning
    warnings, notes = [], []
    splits, classes = build(warnings, notes)
    warnings += split_warnings(splits, batch_size, classes)
    for line in notes:
        print(f"note: {line}", file=sys.stderr)
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    if warnings and strict:
        raise DatasetError(f"--strict: {len(warnings)} warning(s) above; nothing written")
    write_splits(splits, output_dir, overwrite, inputs, classes)
    return splits, classes
