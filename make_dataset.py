"""Make datasets in the project's format: DATA/{participant}_{split}.pt.

Each file holds `torch.save((X, y))`: X float32 (N, C, T), channels first, and
y float32 (N,) with values 0/1. Splits are train, val and test.

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

  csv        Raw recordings to windowed splits. INPUT_DIR holds one subfolder
             per participant (the folder name is the participant name) with
             CSV recordings (*.csv, header row). Windows of --window_size
             samples every --stride samples, within one recording.
             Window label (--label_rule):
               any       1 if any sample in the window is positive
               majority  1 if more than half of the samples are positive
                         (default)
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
it appears whole or not at all; a non-empty folder is refused unless
--overwrite.

Over 500 lines: the synthetic generator and the CSV windowing share the checks
and the writing; the generator is the part to move out first if it grows.
"""
import argparse
import csv
import math
import os
import sys
from collections import Counter

import numpy as np
import torch

from data import SPLITS
from fileio import publish_folder, staged_folder
from flags import positive_int

FS = 50  # samples per second of the synthetic sensor

# A gesture's style: peak pitch of the forearm (deg), forearm roll at the top
# (deg), hold at the top (s), time to raise and to lower (s), time between
# repetitions (s). A style offset z moves angles by STYLE_SCALE * z and scales
# times by exp(STYLE_SCALE * z).
STYLE_SCALE = np.array([20.0, 35.0, 0.5, 0.35, 0.3])
IS_TIME = np.array([False, False, True, True, True])
# A puff is held longer, with more roll, slower and less often than the
# eating-like confounder: about 2.4 style units apart.
PUFF_STYLE = np.array([55.0, 60.0, 1.6, 0.9, 12.0])
CONFOUNDER_STYLE = np.array([50.0, 30.0, 0.7, 0.7, 8.0])
DRINK_STYLE = np.array([80.0, 70.0, 2.5, 1.0, 25.0])
FIDGET_STYLE = np.array([15.0, 10.0, 0.4, 0.5, 7.0])
# Each participant moves all their gestures by a personal style offset with
# this standard deviation per style unit: a third of the puff-confounder
# distance, so one participant's confounder can look like another's puff,
# while within one participant the two stay apart.
PERSONAL_STYLE_SD = 0.8
# Variation between sessions (windows) and between repetitions in a session.
SESSION_JITTER = 0.3
GESTURE_JITTER = 0.12

# Window contents. Negative windows are one of these, with these chances.
NONE, PUFF, CONFOUNDER, DRINK, FIDGET = range(5)
# NONE gets a style only to keep the arithmetic finite; its gestures are masked.
KIND_STYLES = np.array([FIDGET_STYLE, PUFF_STYLE, CONFOUNDER_STYLE, DRINK_STYLE, FIDGET_STYLE])
NEGATIVE_KINDS = [NONE, CONFOUNDER, DRINK, FIDGET]
NEGATIVE_CHANCES = [0.2, 0.4, 0.15, 0.25]
WALK_CHANCE = 0.35  # any window may include a stretch of walking


class DatasetError(Exception):
    """A problem with the input or the output folder; main() prints it."""


# ---------------------------------------------------------------- synthetic


def participant_names(n_participants):
    width = max(2, len(str(n_participants)))
    return [f"p{i + 1:0{width}d}" for i in range(n_participants)]


def _styled(base, z):
    """Apply a style offset z (in STYLE_SCALE units) to base gesture parameters."""
    shift = STYLE_SCALE * z
    return np.where(IS_TIME, base * np.exp(shift), base + shift)


def _random_rotation(rng, max_angle_deg):
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.radians(rng.uniform(0.3, 1.0) * max_angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k  # Rodrigues


def _participant_profile(seed, index):
    """Everything that makes one participant different from the others."""
    rng = np.random.default_rng([seed, index])
    personal = np.clip(rng.normal(0, PERSONAL_STYLE_SD, size=len(STYLE_SCALE)), -2.5, 2.5)
    return {
        "styles": _styled(KIND_STYLES, personal),
        "hand": rng.choice([-1.0, 1.0]),  # left wrist mirrors roll and yaw
        "rotation": _random_rotation(rng, 30.0),
        "rest_pitch": rng.uniform(-20.0, 0.0),
        "swing": rng.uniform(15.0, 30.0),
        "step_hz": rng.uniform(1.6, 2.1),
        "acc_noise": rng.uniform(0.01, 0.04),
        "gyr_noise": rng.uniform(0.02, 0.08),
        "gyr_bias": rng.normal(0.0, 0.02, size=3),
        "positive_rate": rng.uniform(0.12, 0.22),
    }


def _ramp(x):
    """0 before 0, a smooth half cosine up to 1 at 1, then 1."""
    return 0.5 - 0.5 * np.cos(np.pi * np.clip(x, 0.0, 1.0))


def _pulse(t, start, move, hold):
    """Up over `move` s from `start`, hold `hold` s, down over `move` s."""
    return _ramp((t - start) / move) - _ramp((t - start - move - hold) / move)


def _drift(rng, n, t, amplitude_deg):
    """Slow, small posture changes: a few slow sines per window."""
    out = np.zeros((n, len(t)))
    for _ in range(3):
        freq = rng.uniform(0.02, 0.3, size=(n, 1))
        phase = rng.uniform(0, 2 * np.pi, size=(n, 1))
        out += amplitude_deg * np.sin(2 * np.pi * freq * t + phase)
    return out


def _gesture_angles(rng, kinds, styles, t, base_pitch):
    """Pitch, roll and yaw added by repeated gestures, each (N, T) in degrees."""
    n, duration = len(kinds), t[-1] + 1.0 / FS
    style = styles[kinds]  # (N, 5)
    active = (kinds != NONE)[:, None]
    intervals = style[:, 4:5]
    # Enough slots to fill the window at the shortest jittered interval.
    n_slots = int(math.ceil(duration / (0.8 * intervals.min()))) + 2
    start = -rng.uniform(0, 1, size=(n, 1)) * intervals
    # A session may cover only part of the window, down to one repetition, so
    # some windows hold a single gesture: the hard cases.
    span = np.maximum(rng.uniform(0.25, 1.0, size=(n, 1)) * duration, 1.5 * intervals)
    span_start = rng.uniform(0, 1, size=(n, 1)) * np.maximum(duration - span, 0)
    pitch = np.zeros((n, len(t)))
    roll = np.zeros((n, len(t)))
    yaw = np.zeros((n, len(t)))
    session = rng.normal(0, SESSION_JITTER, size=(n, len(STYLE_SCALE)))
    for _ in range(n_slots):
        z = session + rng.normal(0, GESTURE_JITTER, size=(n, len(STYLE_SCALE)))
        peak, roll_top, hold, move, interval = _styled(style, z).T[:, :, None]
        in_session = (start + 2 * move + hold > span_start) & (start < span_start + span)
        up = _pulse(t, start, move, hold) * (active & in_session)
        pitch += up * (peak - base_pitch)  # pulses never overlap, so this reaches `peak`
        roll += up * roll_top
        yaw += up * 20.0  # the hand moves toward the body's midline
        # The next repetition starts after this one ends, at the style's rhythm.
        start = start + np.maximum(interval * rng.uniform(0.8, 1.25, size=(n, 1)),
                                   2 * move + hold + 1.0)
    return pitch, roll, yaw


def _imu_from_angles(pitch, roll, yaw, bounce):
    """Accelerometer (g) and gyroscope (rad/s) of a forearm with these angles.

    Angles are Z-Y-X Euler angles in degrees, (N, T). The accelerometer reads
    gravity in the sensor frame scaled by (1 + bounce), the vertical
    acceleration of walking; the gyroscope reads the body rates.
    """
    th, ph, ps = np.radians(pitch), np.radians(roll), np.radians(yaw)
    dth, dph, dps = (np.gradient(a, 1.0 / FS, axis=1) for a in (th, ph, ps))
    acc = np.stack([-np.sin(th), np.cos(th) * np.sin(ph), np.cos(th) * np.cos(ph)], axis=1)
    gyr = np.stack([
        dph - dps * np.sin(th),
        dth * np.cos(ph) + dps * np.cos(th) * np.sin(ph),
        -dth * np.sin(ph) + dps * np.cos(th) * np.cos(ph),
    ], axis=1)
    return acc * (1.0 + bounce[:, None, :]), gyr


def synthetic_windows(profile, kinds, window_size, rng):
    """X (N, 6, T) float32 for windows of the given kinds, for one participant."""
    n = len(kinds)
    t = np.arange(window_size) / FS
    # Walking: a stretch of the window with the arm hanging and swinging.
    walks = rng.random((n, 1)) < WALK_CHANCE
    walk_len = rng.uniform(10.0, 60.0, size=(n, 1))
    walk_start = rng.uniform(-walk_len, t[-1])
    walking = _pulse(t, walk_start, 1.0, walk_len) * walks
    swing_phase = rng.uniform(0, 2 * np.pi, size=(n, 1))
    stride_wave = np.sin(np.pi * profile["step_hz"] * t + swing_phase)
    step_wave = np.sin(2 * np.pi * profile["step_hz"] * t + 2 * swing_phase)

    sit_pitch = profile["rest_pitch"] + rng.normal(0, 5, size=(n, 1))
    base_pitch = sit_pitch + walking * (-75.0 - sit_pitch) + _drift(rng, n, t, 3.0)
    base_pitch += walking * profile["swing"] * stride_wave
    base_roll = rng.normal(0, 10, size=(n, 1)) + _drift(rng, n, t, 3.0)
    base_yaw = _drift(rng, n, t, 5.0) + walking * 5.0 * stride_wave

    pitch, roll, yaw = _gesture_angles(rng, kinds, profile["styles"], t, base_pitch)
    hand = profile["hand"]
    acc, gyr = _imu_from_angles(base_pitch + pitch, hand * (base_roll + roll),
                                hand * (base_yaw + yaw), walking * 0.25 * step_wave)
    # The sensor sits rotated on this participant's wrist: both sensors turn.
    acc = np.einsum("ij,njt->nit", profile["rotation"], acc)
    gyr = np.einsum("ij,njt->nit", profile["rotation"], gyr) + profile["gyr_bias"][:, None]
    acc += rng.normal(0, profile["acc_noise"], size=acc.shape)
    gyr += rng.normal(0, profile["gyr_noise"], size=gyr.shape)
    return np.concatenate([acc, gyr], axis=1).astype(np.float32)


def _n_positive(rate, n):
    """An exact positive count per split: at least one of each class when n >= 2."""
    k = int(round(rate * n))
    return min(max(k, 1), n - 1) if n >= 2 else k


def synthetic_splits(n_participants=6, window_size=3000, n_train=120, n_val=40,
                     n_test=40, seed=0):
    """{(participant, split): (X, y)} of the synthetic dataset, in memory."""
    if n_participants < 2:
        raise DatasetError(f"--n_participants must be >= 2, got {n_participants}")
    if window_size < 2:
        raise DatasetError(f"--window_size must be >= 2, got {window_size}")
    sizes = dict(zip(SPLITS, (n_train, n_val, n_test)))
    for split, n in sizes.items():
        if n < 1:
            raise DatasetError(f"--n_{split} must be >= 1, got {n}")
    splits = {}
    for index, name in enumerate(participant_names(n_participants)):
        profile = _participant_profile(seed, index)
        for split_index, split in enumerate(SPLITS):
            rng = np.random.default_rng([seed, index, split_index])
            n = sizes[split]
            y = np.zeros(n, dtype=np.float32)
            y[:_n_positive(profile["positive_rate"], n)] = 1.0
            rng.shuffle(y)
            kinds = rng.choice(NEGATIVE_KINDS, p=NEGATIVE_CHANCES, size=n)
            kinds[y == 1] = PUFF
            X = synthetic_windows(profile, kinds, window_size, rng)
            splits[(name, split)] = (torch.from_numpy(X), torch.from_numpy(y))
    return splits


def write_synthetic_dataset(output_dir, n_participants=6, window_size=3000, n_train=120,
                            n_val=40, n_test=40, seed=0, overwrite=False):
    """Write the synthetic dataset to output_dir; return the participant names."""
    splits = synthetic_splits(n_participants, window_size, n_train, n_val, n_test, seed)
    write_splits(splits, output_dir, overwrite)
    return participant_names(n_participants)


# ---------------------------------------------------------------- csv import


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


def read_recording(path, channels, label_column, positive_label=None, label_counts=None):
    """(data (L, C) float32, labels (L,) uint8) of one CSV recording.

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
            labels.append(_cell_label(f"{line}, column '{label_column}'", text, positive_label))
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
               split_by="block", warnings=None, notes=None):
    """{(participant, split): (X, y)} windowed from the CSV recordings.

    Recordings shorter than one window are skipped with a line appended to
    `warnings`; the samples that fall in no window, per participant, go to
    `notes` (both lists, when given).
    """
    stride = stride or window_size
    warnings = [] if warnings is None else warnings
    notes = [] if notes is None else notes
    splits, label_counts = {}, Counter()
    for participant in _participant_folders(input_dir):
        folder = os.path.join(input_dir, participant)
        paths = _recordings(folder)
        if split_by == "recording" and len(paths) < 3:
            raise DatasetError(f"{folder}: --split_by recording needs >= 3 recordings, "
                               f"found {len(paths)} (use --split_by block)")
        recordings, n_samples = [], 0
        for path in paths:
            data, labels = read_recording(path, channels, label_column, positive_label, label_counts)
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
        for split, parts in _split_segments(recordings, fractions, split_by).items():
            windows = [make_windows(d, l, window_size, stride, label_rule) for d, l in parts]
            X = np.concatenate([w[0] for w in windows] or [np.zeros((0, len(channels), window_size))])
            if len(X) == 0:
                raise DatasetError(f"{folder}: no windows in the {split} split (recordings "
                                   f"too short for --window_size {window_size} and --split)")
            y = np.concatenate([w[1] for w in windows])
            n_windowed += sum(samples_in_windows(len(w[1]), window_size, stride) for w in windows)
            splits[(participant, split)] = (torch.from_numpy(X), torch.from_numpy(y))
        if n_windowed < n_samples:
            notes.append(f"{participant}: {n_samples - n_windowed} of {n_samples} samples fall in "
                         f"no window (short recordings, recording and block ends) and were dropped")
    if positive_label is not None and positive_label not in label_counts:
        found = ", ".join(f"'{text}' ({n})" for text, n in label_counts.most_common())
        raise DatasetError(f"{input_dir}: no row has label '{positive_label}' in column "
                           f"'{label_column}' (labels are case-sensitive; found: {found})")
    return splits


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


# ---------------------------------------------------------------- output


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


# ---------------------------------------------------------------- CLI


def _fractions(text):
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers like 0.6,0.2,0.2, got {text!r}")
    if len(values) != 3 or min(values) <= 0 or abs(sum(values) - 1) > 1e-6:
        raise argparse.ArgumentTypeError(f"expected three positive fractions summing to 1, "
                                         f"got {text!r}")
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

    syn = commands.add_parser(
        "synthetic", help="write the synthetic demo dataset", allow_abbrev=False,
        description="Synthetic wrist IMU at 50 Hz: acc_x..z in g (with gravity), "
                    "gyr_x..z in rad/s. Positive windows: repeated puffs.")
    syn.add_argument("--output_dir", required=True, help="folder to write (required, no default)")
    syn.add_argument("--n_participants", type=positive_int, default=6, help="participants (default 6)")
    syn.add_argument("--window_size", type=positive_int, default=3000,
                     help="samples per window (default 3000 = 60 s at 50 Hz)")
    syn.add_argument("--n_train", type=positive_int, default=120, help="train windows per participant (default 120)")
    syn.add_argument("--n_val", type=positive_int, default=40, help="val windows per participant (default 40)")
    syn.add_argument("--n_test", type=positive_int, default=40, help="test windows per participant (default 40)")
    syn.add_argument("--seed", type=int, default=0, help="seeds every draw (default 0)")
    syn.add_argument("--overwrite", action="store_true",
                     help="replace a non-empty output folder (default off)")
    add_check_flags(syn)

    raw = commands.add_parser(
        "csv", help="window raw CSV recordings into splits", allow_abbrev=False,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="INPUT_DIR/{participant}/*.csv (header row) to "
                    "OUTPUT_DIR/{participant}_{train,val,test}.pt.",
        epilog="label rules (--label_rule):\n"
               "  any       1 if any sample in the window is positive\n"
               "  majority  1 if more than half of the samples are positive\n"
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
                          "labels must be 0/1 (default none)")
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
                     help="replace a non-empty output folder (default off)")
    add_check_flags(raw)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    warnings, notes = [], []
    try:
        check_output(args.output_dir, args.overwrite)  # before any work or warning
        if args.command == "synthetic":
            splits = synthetic_splits(args.n_participants, args.window_size, args.n_train,
                                      args.n_val, args.n_test, args.seed)
        else:
            channels = [c.strip() for c in args.channels.split(",") if c.strip()]
            if not channels:
                raise DatasetError("--channels names no column")
            splits = csv_splits(args.input_dir, channels, args.label_column,
                                args.positive_label, args.window_size, args.stride,
                                args.label_rule, args.split, args.split_by, warnings, notes)
        warnings += split_warnings(splits, args.batch_size)
        for line in notes:
            print(f"note: {line}", file=sys.stderr)
        for line in warnings:
            print(f"warning: {line}", file=sys.stderr)
        if warnings and args.strict:
            raise DatasetError(f"--strict: {len(warnings)} warning(s) above; nothing written")
        write_splits(splits, args.output_dir, args.overwrite)
    except DatasetError as e:
        print(f"make_dataset.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    print(summary_table(splits))
    print(f"wrote {len(splits)} files to {args.output_dir}")


if __name__ == "__main__":
    main()
