"""Raw CSV recordings to windowed splits: one folder per participant, windows of
--window_size samples every --stride within one recording, a label per window by a rule,
and splits cut per participant by contiguous blocks of each recording (or by whole
recordings), so overlapping windows never land in different splits."""
import csv
import math
import os
from collections import Counter

import numpy as np

from dataset.splits import DatasetError
from engine.data import SPLITS

DROPPED = 255  # the label of a row --keep_labels or --drop_labels leaves out: no window holds it


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
        raise DatasetError(f"{where}: label '{text}' is not 0 or 1 "
                           "(use --positive_label to map class names)")
    return int(value)


def _cell_value(where, text):
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DatasetError(f"{where}: non-numeric value '{text}'")
    return value


def read_recording(path, channels, label_column, positive_label=None, label_counts=None, kept=None):
    """(data (L, C) float32, labels (L,) uint8) of one CSV recording.

    label_counts, a Counter, when given, counts each raw label text seen. kept(text), when
    given, says whether a row with that label is kept; a row it drops gets the label DROPPED.
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
            dropped = kept is not None and not kept(text)
            labels.append(DROPPED if dropped else _cell_label(f"{line}, column '{label_column}'", text,
                                                              positive_label))
            if label_counts is not None:
                label_counts[text] += 1
    data = np.array(data, dtype=np.float32).reshape(len(data), len(channels))
    return data, np.array(labels, dtype=np.uint8)


def window_labels(labels, rule):
    """One 0/1 label per window from the sample labels of windows (N, W)."""
    if rule == "any":
        return labels.max(axis=1)
    if rule == "majority":
        return (2 * labels.sum(axis=1) > labels.shape[1]).astype(np.uint8)
    if rule == "center":
        return labels[:, labels.shape[1] // 2]
    raise ValueError(f"unknown label rule {rule!r}")


def samples_in_windows(n_windows, window_size, stride):
    """How many samples the first n_windows windows cover (stride may exceed the window)."""
    return 0 if n_windows == 0 else (n_windows - 1) * min(stride, window_size) + window_size


def make_windows(data, labels, window_size, stride, rule):
    """X (N, C, W) and y (N,) of the windows starting every `stride` samples."""
    if len(data) < window_size:
        return (np.zeros((0, data.shape[1], window_size), np.float32),
                np.zeros(0, np.float32))
    X = np.lib.stride_tricks.sliding_window_view(data, window_size, axis=0)[::stride]
    sample_labels = np.lib.stride_tricks.sliding_window_view(labels, window_size)[::stride]
    return np.ascontiguousarray(X), window_labels(sample_labels, rule).astype(np.float32)


def kept_runs(data, labels):
    """The stretches of a recording (part) between dropped rows: windows never span a dropped row."""
    runs, start = [], 0
    for stop in [*np.flatnonzero(labels == DROPPED), len(labels)]:
        if stop > start:
            runs.append((data[start:stop], labels[start:stop]))
        start = stop + 1
    return runs


def label_filter(positive_label, keep=None, drop=None):
    """kept(text) for --keep_labels / --drop_labels (lists of raw label texts), or None without
    them; one that leaves out --positive_label is an error."""
    if not (keep or drop):
        return None
    kept = (lambda text: text in keep) if keep else (lambda text: text not in drop)
    if positive_label is not None and not kept(positive_label):
        flag = "--keep_labels" if keep else "--drop_labels"
        raise DatasetError(f"{flag} {','.join(keep or drop)} leaves out --positive_label '{positive_label}'")
    return kept


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


def csv_splits(input_dir, channels, label_column, positive_label=None, window_size=3000,
               stride=None, label_rule="majority", fractions=(0.6, 0.2, 0.2),
               split_by="block", warnings=None, notes=None, keep_labels=None, drop_labels=None):
    """{(participant, split): (X, y)} windowed from the CSV recordings.

    Recordings shorter than one window are skipped with a line appended to
    `warnings`; the samples that fall in no window, per participant, go to
    `notes` (both lists, when given). keep_labels / drop_labels (raw label texts):
    only rows with those labels, or all but them, are windowed; the splits are cut
    first, then each part is windowed within its stretches of kept rows.
    """
    import torch  # here, as in dataset.synthetic: make_dataset.py refuses a bad folder without it
    stride = stride or window_size
    warnings = [] if warnings is None else warnings
    notes = [] if notes is None else notes
    kept = label_filter(positive_label, keep_labels, drop_labels)
    splits, label_counts = {}, Counter()
    for participant in _participant_folders(input_dir):
        folder = os.path.join(input_dir, participant)
        paths = _recordings(folder)
        if split_by == "recording" and len(paths) < 3:
            raise DatasetError(f"{folder}: --split_by recording needs >= 3 recordings, "
                               f"found {len(paths)} (use --split_by block)")
        recordings, n_samples = [], 0
        for path in paths:
            data, labels = read_recording(path, channels, label_column, positive_label, label_counts, kept)
            n_samples += len(data)
            if len(data) < window_size:
                warnings.append(f"{path}: {len(data)} samples, shorter than one window "
                                f"(--window_size {window_size}): skipped")
                continue
            recordings.append((data, labels))
        if split_by == "recording" and len(recordings) < 3:
            raise DatasetError(f"{folder}: --split_by recording needs >= 3 recordings of at least "
                               f"one window, found {len(recordings)}")
        n_windowed = 0
        n_dropped = sum(int((labels == DROPPED).sum()) for _, labels in recordings)
        for split, parts in _split_segments(recordings, fractions, split_by).items():
            windows = [make_windows(d, l, window_size, stride, label_rule)
                       for part in parts for d, l in kept_runs(*part)]
            X = np.concatenate([w[0] for w in windows] or [np.zeros((0, len(channels), window_size))])
            if len(X) == 0:
                raise DatasetError(f"{folder}: no windows in the {split} split (recordings "
                                   f"too short for --window_size {window_size} and --split)")
            y = np.concatenate([w[1] for w in windows])
            n_windowed += sum(samples_in_windows(len(w[1]), window_size, stride) for w in windows)
            splits[(participant, split)] = (torch.from_numpy(X), torch.from_numpy(y))
        if n_dropped:
            notes.append(f"{participant}: {n_dropped} of {n_samples} samples dropped by their label")
        if n_windowed + n_dropped < n_samples:
            notes.append(f"{participant}: {n_samples - n_windowed - n_dropped} of {n_samples} samples fall in "
                         f"no window (short recordings, recording and block ends) and were dropped")
    check_labels_found(input_dir, label_column, label_counts, keep_labels, "--keep_labels")
    check_labels_found(input_dir, label_column, label_counts, drop_labels, "--drop_labels")
    if positive_label is not None and positive_label not in label_counts:
        found = ", ".join(f"'{text}' ({n})" for text, n in label_counts.most_common())
        raise DatasetError(f"{input_dir}: no row has label '{positive_label}' in column "
                           f"'{label_column}' (labels are case-sensitive; found: {found})")
    return splits
