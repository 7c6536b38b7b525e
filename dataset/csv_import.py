"""Raw CSV recordings to windowed splits: one folder per participant, windows of
--window_size samples every --stride within one recording, a label per window by a rule,
and splits cut per participant by contiguous blocks of each recording (or by whole
recordings), so overlapping windows never land in different splits.

Labels are binary (0/1 in the file, or --positive_label against the rest) or, with --classes,
class ids 0..K-1 of K >= 3 named classes; rows whose label is not among them are left out like
the rows --keep_labels or --drop_labels leave out: no window holds or spans them."""
import csv
import math
import os
from collections import Counter

import numpy as np

from dataset.splits import DatasetError
from engine.data import SPLITS

DROPPED = -1  # the label of a row left out by its label text: no window holds it
ALL = "all"  # --classes all: every label value found, sorted


def _column_index(path, header, name):
    if name not in header:
        raise DatasetError(f"{path}: missing column '{name}' (header: {', '.join(header)})")
    return header.index(name)


def _cell_label(where, text, positive_label):
    if positive_label is not None:
        return 1 if text == positive_label else 0
    try:
        value = float(text)
    except ValueError:
        value = None
    if value not in (0.0, 1.0):
        raise DatasetError(f"{where}: label '{text}' is not 0 or 1 (use --positive_label to map "
                           "class names to 0/1, or --classes for a multi-class dataset)")
    return int(value)


def _cell_value(where, text):
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DatasetError(f"{where}: non-numeric value '{text}'")
    return value


def read_recording(path, channels, label_column, label_of, label_counts=None):
    """(data (L, C) float32, labels (L,) int32) of one CSV recording.

    label_of(where, text) gives a row's label (a number, or DROPPED) from its label text;
    label_counts, a Counter, when given, counts each raw label text seen.
    """
    with open(path, newline="") as f:
        rows = csv.reader(f)
        header = [name.strip() for name in next(rows, [])]
        if not header:
            raise DatasetError(f"{path}: empty file (no header row)")
        columns = [_column_index(path, header, name) for name in channels]
        label_index = _column_index(path, header, label_column)
        data, labels = [], []
        for row in rows:
            if not row:
                continue
            # Line numbers as a text editor shows them (the header is line 1).
            line = f"{path}: line {rows.line_num}"
            if len(row) != len(header):
                raise DatasetError(f"{line}: {len(row)} fields, header has {len(header)}")
            data.append([_cell_value(f"{line}, column '{name}'", row[i])
                         for name, i in zip(channels, columns)])
            text = row[label_index].strip()
            labels.append(label_of(f"{line}, column '{label_column}'", text))
            if label_counts is not None:
                label_counts[text] += 1
    data = np.array(data, dtype=np.float32).reshape(len(data), len(channels))
    return data, np.array(labels, dtype=np.int32)


def binary_labels(positive_label=None, kept=None):
    """label_of for read_recording: 0/1 (by --positive_label, or the file's own 0/1), or
    DROPPED for a row kept(text) leaves out."""
    def label_of(where, text):
        if kept is not None and not kept(text):
            return DROPPED
        return _cell_label(where, text, positive_label)
    return label_of


def window_labels(labels, rule, n_classes=None):
    """One label per window from the sample labels of windows (N, W).

    Binary (n_classes None): any (1 if any sample is 1), majority (1 if more than half are),
    center (the label of sample W // 2). Multi-class: majority is the class most samples
    have, a tie going to the lower id (as a binary window half positive is 0); center as above.
    """
    if rule == "center":
        return labels[:, labels.shape[1] // 2]
    if n_classes is not None and rule == "majority":
        counts = np.stack([(labels == k).sum(axis=1) for k in range(n_classes)], axis=1)
        return counts.argmax(axis=1)  # the first of the largest counts: the lowest id
    if n_classes is not None:
        raise ValueError(f"label rule {rule!r} is binary only")
    if rule == "any":
        return labels.max(axis=1)
    if rule == "majority":
        return (2 * labels.sum(axis=1) > labels.shape[1]).astype(np.uint8)
    raise ValueError(f"unknown label rule {rule!r}")


def samples_in_windows(n_windows, window_size, stride):
    """How many samples the first n_windows windows cover (stride may exceed the window)."""
    return 0 if n_windows == 0 else (n_windows - 1) * min(stride, window_size) + window_size


def make_windows(data, labels, window_size, stride, rule, n_classes=None):
    """X (N, C, W) and y (N,) of the windows starting every `stride` samples: y float32 of
    0/1, or with n_classes int64 class ids."""
    y_type = np.float32 if n_classes is None else np.int64
    if len(data) < window_size:
        return (np.zeros((0, data.shape[1], window_size), np.float32),
                np.zeros(0, y_type))
    X = np.lib.stride_tricks.sliding_window_view(data, window_size, axis=0)[::stride]
    sample_labels = np.lib.stride_tricks.sliding_window_view(labels, window_size)[::stride]
    return np.ascontiguousarray(X), window_labels(sample_labels, rule, n_classes).astype(y_type)


def kept_runs(data, labels):
    """The stretches of a recording (part) between dropped rows: windows never span a dropped row."""
    runs, start = [], 0
    for stop in [*np.flatnonzero(labels == DROPPED), len(labels)]:
        if stop > start:
            runs.append((data[start:stop], labels[start:stop]))
        start = stop + 1
    return runs


def label_filter(positive_label, keep=None, drop=None, classes=None):
    """kept(text) for --keep_labels / --drop_labels (lists of raw label texts), or None without
    them; one that leaves out --positive_label, or a class --classes names, is an error."""
    if not (keep or drop):
        return None
    kept = (lambda text: text in keep) if keep else (lambda text: text not in drop)
    flag = f"{'--keep_labels' if keep else '--drop_labels'} {','.join(keep or drop)}"
    if positive_label is not None and not kept(positive_label):
        raise DatasetError(f"{flag} leaves out --positive_label '{positive_label}'")
    for name in [] if classes in (None, [ALL]) else classes:
        if not kept(name):
            raise DatasetError(f"{flag} leaves out --classes '{name}'")
    return kept


def check_class_count(names, given):
    """A multi-class dataset has at least 3 classes; two are the binary path's."""
    if len(names) == 2:
        raise DatasetError(f"{given}: two classes make a binary dataset: use --positive_label {names[1]} "
                           f"--keep_labels {names[0]},{names[1]} instead")
    if len(names) < 2:
        raise DatasetError(f"{given}: {len(names)} class(es); a multi-class dataset needs at least 3")


def check_class_flags(classes, positive_label, label_rule):
    """What --classes cannot go with, and a list of it that names a class twice or too few."""
    if classes is None:
        return
    if positive_label is not None:
        raise DatasetError("--classes and --positive_label exclude each other: --classes makes a "
                           "multi-class dataset, --positive_label a binary one")
    if label_rule == "any":
        raise DatasetError("--label_rule any is binary only (1 if any sample is positive): "
                           "with --classes use majority or center")
    if classes == [ALL]:
        return
    given = f"--classes {','.join(classes)}"
    twice = [name for k, name in enumerate(classes) if name in classes[:k]]
    if twice:
        raise DatasetError(f"{given}: names '{twice[0]}' twice")
    check_class_count(classes, given)


class ClassLabels:
    """label_of for read_recording with --classes. A row's label is first the code of its text
    (texts numbered as they come); ids() maps codes to class ids, or DROPPED for a text that is
    no class, once every text is known, so that --classes all can take them all."""

    def __init__(self, classes, kept=None):
        self.classes, self.kept, self.codes = classes, kept, {}

    def __call__(self, where, text):
        return self.codes.setdefault(text, len(self.codes))

    def names(self, input_dir, label_column, label_counts):
        """The class names in id order: the ones --classes gives, each on some row, or every
        label text of a row kept, sorted (an empty label is never a class)."""
        if self.classes != [ALL]:
            check_labels_found(input_dir, label_column, label_counts, self.classes, "--classes")
            return list(self.classes)
        names = sorted(text for text in label_counts if text and (self.kept is None or self.kept(text)))
        check_class_count(names, f"{input_dir}: --classes all found {', '.join(map(repr, names)) or 'no label'} "
                                 f"in column '{label_column}'")
        return names

    def ids(self, names):
        """Text codes to class ids: a table to index the codes with."""
        index = {name: k for k, name in enumerate(names)}
        table = np.full(len(self.codes), DROPPED, dtype=np.int32)
        for text, code in self.codes.items():
            table[code] = index.get(text, DROPPED)
        return table


def check_labels_found(input_dir, label_column, label_counts, names, flag):
    """Every label value a flag names must be on some row (the labels are case-sensitive)."""
    found = ", ".join(f"'{text}' ({n})" for text, n in label_counts.most_common())
    for text in names or ():
        if text not in label_counts:
            raise DatasetError(f"{input_dir}: {flag} '{text}': no row has this label in column '{label_column}' "
                               f"(labels are case-sensitive; found: {found})")


def split_bounds(n, fractions):
    """(0, a, b, n): range(n) cut into train, val, test by these fractions.

    Each part gets at least one item when n >= 3.
    """
    first = min(max(round(fractions[0] * n), 1), n - 2)
    second = min(max(round((fractions[0] + fractions[1]) * n), first + 1), n - 1)
    return 0, first, second, n


def _participant_folders(input_dir):
    if not os.path.isdir(input_dir):
        raise DatasetError(f"{input_dir}: not a folder")
    entries = sorted(e for e in os.listdir(input_dir) if not e.startswith("."))
    stray = [e for e in entries if e.lower().endswith(".csv")]
    if stray:
        raise DatasetError(f"{os.path.join(input_dir, stray[0])}: CSV outside a participant "
                           "subfolder (expected one subfolder per participant)")
    folders = [e for e in entries if os.path.isdir(os.path.join(input_dir, e))]
    if not folders:
        raise DatasetError(f"{input_dir}: no participant subfolders")
    return folders


def _recordings(folder):
    names = sorted(e for e in os.listdir(folder)
                   if e.lower().endswith(".csv") and not e.startswith("."))
    if not names:
        raise DatasetError(f"{folder}: no .csv recordings")
    return [os.path.join(folder, name) for name in names]


def _split_segments(recordings, fractions, split_by):
    """{split: [(data, labels), ...]}: the parts of the recordings in each split."""
    if split_by == "recording":
        bounds = split_bounds(len(recordings), fractions)
        return {split: recordings[start:stop]
                for split, start, stop in zip(SPLITS, bounds, bounds[1:])}
    segments = {split: [] for split in SPLITS}
    for data, labels in recordings:
        bounds = split_bounds(len(data), fractions)
        for split, start, stop in zip(SPLITS, bounds, bounds[1:]):
            segments[split].append((data[start:stop], labels[start:stop]))
    return segments


def read_participant(folder, channels, label_column, label_of, label_counts, window_size, split_by,
                     warnings):
    """([(data, labels), ...], samples read): a participant's recordings of at least one window;
    a shorter one is skipped with a line appended to `warnings`."""
    paths = _recordings(folder)
    if split_by == "recording" and len(paths) < 3:
        raise DatasetError(f"{folder}: --split_by recording needs >= 3 recordings, "
                           f"found {len(paths)} (use --split_by block)")
    recordings, n_samples = [], 0
    for path in paths:
        data, labels = read_recording(path, channels, label_column, label_of, label_counts)
        n_samples += len(data)
        if len(data) < window_size:
            warnings.append(f"{path}: {len(data)} samples, shorter than one window "
                            f"(--window_size {window_size}): skipped")
            continue
        recordings.append((data, labels))
    if split_by == "recording" and len(recordings) < 3:
        raise DatasetError(f"{folder}: --split_by recording needs >= 3 recordings of at least "
                           f"one window, found {len(recordings)}")
    return recordings, n_samples


def window_participant(folder, recordings, n_samples, window_size, stride, label_rule, fractions,
                       split_by, n_classes, notes):
    """{split: (X, y)} of one participant's recordings, as numpy arrays; the samples dropped
    by their label and the samples in no window go to `notes`."""
    participant = os.path.basename(folder)
    out, n_windowed = {}, 0
    n_dropped = sum(int((labels == DROPPED).sum()) for _, labels in recordings)
    for split, parts in _split_segments(recordings, fractions, split_by).items():
        windows = [make_windows(d, l, window_size, stride, label_rule, n_classes)
                   for part in parts for d, l in kept_runs(*part)]
        if sum(len(w[1]) for w in windows) == 0:
            raise DatasetError(f"{folder}: no windows in the {split} split (recordings "
                               f"too short for --window_size {window_size} and --split)")
        out[split] = (np.concatenate([w[0] for w in windows]), np.concatenate([w[1] for w in windows]))
        n_windowed += sum(samples_in_windows(len(w[1]), window_size, stride) for w in windows)
    if n_dropped:
        notes.append(f"{participant}: {n_dropped} of {n_samples} samples dropped by their label")
    if n_windowed + n_dropped < n_samples:
        notes.append(f"{participant}: {n_samples - n_windowed - n_dropped} of {n_samples} samples fall in "
                     f"no window (short recordings, recording and block ends) and were dropped")
    return out


def check_binary_labels(input_dir, label_column, label_counts, positive_label):
    """--positive_label must be on some row (the labels are case-sensitive)."""
    if positive_label is not None and positive_label not in label_counts:
        found = ", ".join(f"'{text}' ({n})" for text, n in label_counts.most_common())
        raise DatasetError(f"{input_dir}: no row has label '{positive_label}' in column "
                           f"'{label_column}' (labels are case-sensitive; found: {found})")


def csv_splits(input_dir, channels, label_column, positive_label=None, window_size=3000,
               stride=None, label_rule="majority", fractions=(0.6, 0.2, 0.2),
               split_by="block", warnings=None, notes=None, keep_labels=None, drop_labels=None,
               classes=None):
    """(splits, class names): {(participant, split): (X, y)} windowed from the CSV recordings,
    and None for a binary dataset (y float32 0/1), or with `classes` (label texts in id order,
    or [ALL]: every label text found, sorted) the K >= 3 names of the ids in y (int64).

    Recordings shorter than one window are skipped with a line appended to
    `warnings`; the samples that fall in no window, per participant, go to
    `notes` (both lists, when given). keep_labels / drop_labels (raw label texts):
    only rows with those labels, or all but them, are windowed, and with `classes` only
    the rows of a class; the splits are cut first, then each part is windowed within its
    stretches of kept rows.
    """
    import torch  # here, as in dataset.synthetic: make_dataset.py refuses a bad folder without it
    stride = stride or window_size
    warnings = [] if warnings is None else warnings
    notes = [] if notes is None else notes
    check_class_flags(classes, positive_label, label_rule)
    kept = label_filter(positive_label, keep_labels, drop_labels, classes)
    label_of = binary_labels(positive_label, kept) if classes is None else ClassLabels(classes, kept)
    label_counts, read = Counter(), {}
    for participant in _participant_folders(input_dir):
        read[participant] = read_participant(os.path.join(input_dir, participant), channels, label_column,
                                             label_of, label_counts, window_size, split_by, warnings)
    check_labels_found(input_dir, label_column, label_counts, keep_labels, "--keep_labels")
    check_labels_found(input_dir, label_column, label_counts, drop_labels, "--drop_labels")
    check_binary_labels(input_dir, label_column, label_counts, positive_label)
    names = None if classes is None else label_of.names(input_dir, label_column, label_counts)
    table = None if classes is None else label_of.ids(names)
    n_classes = None if classes is None else len(names)
    splits = {}
    for participant, (recordings, n_samples) in read.items():
        if table is not None:
            recordings = [(data, table[codes]) for data, codes in recordings]
        windows = window_participant(os.path.join(input_dir, participant), recordings, n_samples, window_size,
                                     stride, label_rule, fractions, split_by, n_classes, notes)
        for split, (X, y) in windows.items():
            splits[(participant, split)] = (torch.from_numpy(X), torch.from_numpy(y))
    return splits, names
