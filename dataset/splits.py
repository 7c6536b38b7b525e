"""What every dataset maker shares: the one error type, the warnings about splits a model
cannot learn or be scored from, the summary table, and writing the folder whole or not at all."""
import os
import sys

from engine.data import SPLITS
from engine.fileio import publish_folder, staged_folder


class DatasetError(Exception):
    """A problem with the input or the output folder; the message is one line."""


def split_warnings(splits, batch_size):
    """One line per split a model cannot learn or be scored well from."""
    lines = []
    for (participant, split), (_, y) in sorted(splits.items()):
        n_positive = int((y > 0.5).sum())
        if n_positive == 0:
            lines.append(f"{participant} {split}: no positive window (of {len(y)})")
        elif n_positive == len(y):
            lines.append(f"{participant} {split}: no negative window (of {len(y)})")
        if split == "train" and len(y) < batch_size:
            lines.append(f"{participant} {split}: {len(y)} windows, fewer than one batch "
                         f"(--batch_size {batch_size})")
    return lines


def check_output(output_dir, overwrite):
    """The absolute output folder, when it may be written."""
    output_dir = os.path.abspath(output_dir)
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        raise DatasetError(f"{output_dir}: folder exists and is not empty (use --overwrite)")
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise DatasetError(f"{output_dir}: exists and is not a folder")
    return output_dir


def write_splits(splits, output_dir, overwrite=False):
    """Write {(participant, split): (X, y)} so the folder appears whole or not at all."""
    import torch  # here: generate_jobs.py imports this module, and only writes the demo data once
    output_dir = check_output(output_dir, overwrite)
    with staged_folder(output_dir) as tmp:
        for (participant, split), (X, y) in splits.items():
            torch.save((X, y), os.path.join(tmp, f"{participant}_{split}.pt"))
        try:
            # check_output refused an existing folder unless it is empty or --overwrite was given.
            publish_folder(tmp, output_dir, replace=True)
        except OSError as e:
            # Most likely another process wrote this folder meanwhile; keep theirs.
            raise DatasetError(f"{output_dir}: not written: {e.strerror}") from None


def summary_table(splits):
    """Windows and positive rate per participant and split, as text."""
    participants = sorted({participant for participant, _ in splits})
    lines = [f"{'participant':<14}" + "".join(f"{split:>18}" for split in SPLITS)]
    for participant in participants:
        cells = []
        for split in SPLITS:
            y = splits[(participant, split)][1]
            cells.append(f"{len(y):>6} ({100 * float(y.float().mean()):5.1f}% pos)")
        lines.append(f"{participant:<14}" + "".join(f"{c:>18}" for c in cells))
    return "\n".join(lines)


def make(build, output_dir, overwrite=False, batch_size=64, strict=False):
    """build(warnings, notes) -> {(participant, split): (X, y)}; say its notes and warnings
    (and those of split_warnings) on stderr, refuse on any with `strict`, then write the folder.
    Returns the splits."""
    check_output(output_dir, overwrite)  # before any work or warning
    warnings, notes = [], []
    splits = build(warnings, notes)
    warnings += split_warnings(splits, batch_size)
    for line in notes:
        print(f"note: {line}", file=sys.stderr)
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    if warnings and strict:
        raise DatasetError(f"--strict: {len(warnings)} warning(s) above; nothing written")
    write_splits(splits, output_dir, overwrite)
    return splits
