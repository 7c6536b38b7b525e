"""The synthetic demo dataset: a wrist IMU at 50 Hz, 6 channels (acc_x..z in g with gravity,
gyr_x..z in rad/s), positive windows holding smoking puffs, negative ones everyday motion and
eating/drinking-like confounders; participants differ in orientation, handedness, tempo and
gesture style (make_dataset.py's help says more). Same seed, same bytes.
"""
import math
from pathlib import Path

import numpy as np
from filelock import FileLock

from dataset.splits import DatasetError, write_splits
from engine.data import SPLITS
from engine.flags import DEMO_DATA_PATH

FS = 50  # samples per second of the synthetic sensor
DEMO_WINDOW = 500  # 10 s windows
DEMO_SIZES = (240, 80, 80)  # train, val and test windows per participant

# A gesture's style: peak pitch of the forearm (deg), forearm roll at the top
# (deg), hold at the top (s), time to raise and to lower (s), time between
# repetitions (s). A style offset z moves angles by STYLE_SCALE * z and scales
# times by exp(STYLE_SCALE * z).
STYLE_SCALE = np.array([20.0, 35.0, 0.5, 0.35, 0.3])
IS_TIME = np.array([False, False, True, True, True])
# A puff is held longer, with more roll, slower and less often than the
# eating-like confounder: about 3.6 style units apart. Repetitions come every few
# seconds, so a 10 s window of a session holds one to three of them.
PUFF_STYLE = np.array([55.0, 70.0, 2.0, 0.9, 5.0])
CONFOUNDER_STYLE = np.array([50.0, 20.0, 0.5, 0.7, 3.5])
DRINK_STYLE = np.array([80.0, 70.0, 2.5, 1.0, 10.0])
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
# The share of positive windows whose content is a negative one, and the same number of negative
# windows holding puffs: what coarse annotations do. The loss cannot reach zero, so early stopping
# fires once the model has learnt what can be learnt (tens of epochs, not hundreds of slow creep).
MISLABELLED = 0.15


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


def checked_sizes(n_participants, window_size, n_train, n_val, n_test):
    """{split: windows} of a synthetic dataset's sizes (DatasetError in one line for a size too small)."""
    if n_participants < 2:
        raise DatasetError(f"--n_participants must be >= 2, got {n_participants}")
    if window_size < 2:
        raise DatasetError(f"--window_size must be >= 2, got {window_size}")
    sizes = dict(zip(SPLITS, (n_train, n_val, n_test)))
    for split, n in sizes.items():
        if n < 1:
            raise DatasetError(f"--n_{split} must be >= 1, got {n}")
    return sizes


def synthetic_splits(n_participants=6, window_size=DEMO_WINDOW, n_train=DEMO_SIZES[0], n_val=DEMO_SIZES[1],
                     n_test=DEMO_SIZES[2], seed=0):
    """{(participant, split): (X, y)} of the synthetic dataset, in memory."""
    import torch  # here: generate_jobs.py imports this module, and only writes the demo data once
    sizes = checked_sizes(n_participants, window_size, n_train, n_val, n_test)
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
            # Coarse annotations: some labelled windows hold no puff, as many unlabelled ones do.
            positives, negatives = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
            k = min(int(round(MISLABELLED * len(positives))), len(negatives))
            kinds[rng.choice(positives, k, replace=False)] = rng.choice(NEGATIVE_KINDS, p=NEGATIVE_CHANCES, size=k)
            kinds[rng.choice(negatives, k, replace=False)] = PUFF
            X = synthetic_windows(profile, kinds, window_size, rng)
            splits[(name, split)] = (torch.from_numpy(X), torch.from_numpy(y))
    return splits


def write_synthetic_dataset(output_dir, n_participants=6, window_size=DEMO_WINDOW, n_train=DEMO_SIZES[0],
                            n_val=DEMO_SIZES[1], n_test=DEMO_SIZES[2], seed=0, overwrite=False):
    """Write the synthetic dataset to output_dir; return the participant names."""
    splits = synthetic_splits(n_participants, window_size, n_train, n_val, n_test, seed)
    write_splits(splits, output_dir, overwrite)
    return participant_names(n_participants)


def ensure_demo_data(data_path):
    """The default data folder is the demo dataset; make it on first use."""
    demo = Path(DEMO_DATA_PATH)
    if data_path != DEMO_DATA_PATH or demo.exists():
        return
    demo.parent.mkdir(parents=True, exist_ok=True)
    # Jobs started together on one machine must not write it twice.
    with FileLock(str(demo.parent / f".{demo.name}.lock")):
        if not demo.exists():
            print(f"{DEMO_DATA_PATH} not found: creating the synthetic demo dataset first")
            write_synthetic_dataset(DEMO_DATA_PATH)
