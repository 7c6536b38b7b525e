"""The multi-class synthetic dataset (make_dataset.py synthetic --n_classes K, K >= 3): the demo's
wrist IMU at 50 Hz, 6 channels (acc_x..z in g with gravity, gyr_x..z in rad/s), each window one
activity of K: still postures told apart by how the forearm hangs (the direction of gravity),
rhythmic ones by their tempo, arm swing and bounce. Participants differ in how the sensor sits
on the wrist, handedness, posture, tempo, vigour, noise and how often they do each activity.
Same seed, same bytes. The binary demo (dataset.synthetic) stays as it is.
"""
import numpy as np

from dataset.splits import DatasetError
from dataset.synthetic import (DEMO_SIZES, DEMO_WINDOW, FS, _drift, _imu_from_angles, _random_rotation, checked_sizes,
                               participant_names)

# name, forearm pitch (deg; -90 hangs down), roll (deg), steps per second, arm swing (deg),
# vertical bounce (g). The first K are the classes of --n_classes K, in this order. Each differs
# from the others in how the forearm is held, and the rhythmic ones in their rhythm too.
ACTIVITIES = (
    ("walking", -75.0, 0.0, 1.9, 25.0, 0.25),
    ("sitting", -10.0, 0.0, 0.0, 0.0, 0.0),
    ("standing", -80.0, 0.0, 0.0, 0.0, 0.0),
    ("lying", 0.0, 90.0, 0.0, 0.0, 0.0),
    ("running", -30.0, 20.0, 2.7, 40.0, 0.8),
    ("upstairs", -60.0, -30.0, 1.5, 10.0, 0.35),  # a hand on the rail
    ("downstairs", -50.0, 40.0, 2.1, 10.0, 0.6),
    ("cycling", 15.0, -60.0, 1.2, 3.0, 0.05),  # hands on the bars, palms down
)
# The share of windows whose motion is another activity's than their label (coarse annotations):
# the loss cannot reach zero, so early stopping fires once the model has learnt the signal.
MISLABELLED = 0.1


def activity_names(n_classes):
    """The class names of --n_classes K, in id order; K out of 3..len(ACTIVITIES) is an error."""
    if not 3 <= n_classes <= len(ACTIVITIES):
        raise DatasetError(f"--n_classes must be 2 (the binary demo) or 3 to {len(ACTIVITIES)} "
                           f"(activities), got {n_classes}")
    return [activity[0] for activity in ACTIVITIES[:n_classes]]


def _participant_profile(seed, index, n_classes):
    """Everything that makes one participant different from the others."""
    rng = np.random.default_rng([seed, index, n_classes])
    return {
        "hand": rng.choice([-1.0, 1.0]),  # left wrist mirrors roll and yaw
        "rotation": _random_rotation(rng, 30.0),
        "pitch": rng.normal(0.0, 8.0),
        "roll": rng.normal(0.0, 8.0),
        "tempo": np.exp(rng.normal(0.0, 0.12)),
        "vigour": np.exp(rng.normal(0.0, 0.2)),
        "acc_noise": rng.uniform(0.01, 0.04),
        "gyr_noise": rng.uniform(0.02, 0.08),
        "gyr_bias": rng.normal(0.0, 0.02, size=3),
        "class_shares": rng.dirichlet(np.full(n_classes, 4.0)),
    }


def activity_windows(profile, kinds, window_size, rng):
    """X (N, 6, T) float32 of windows of these activities (ids into ACTIVITIES), one participant."""
    n = len(kinds)
    t = np.arange(window_size) / FS
    pitch, roll, step_hz, swing, bounce = np.array([a[1:] for a in ACTIVITIES])[kinds].T[:, :, None]
    step_hz = step_hz * profile["tempo"] * np.exp(rng.normal(0.0, 0.05, size=(n, 1)))
    swing, bounce = swing * profile["vigour"], bounce * profile["vigour"]
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1))
    stride_wave = np.sin(np.pi * step_hz * t + phase)  # the arm swings once per two steps
    step_wave = np.sin(2 * np.pi * step_hz * t + 2 * phase)
    pitch = pitch + profile["pitch"] + rng.normal(0, 5, size=(n, 1)) + swing * stride_wave + _drift(rng, n, t, 2.0)
    roll = roll + profile["roll"] + rng.normal(0, 5, size=(n, 1)) + _drift(rng, n, t, 2.0)
    yaw = 0.2 * swing * stride_wave + _drift(rng, n, t, 4.0)
    hand = profile["hand"]
    acc, gyr = _imu_from_angles(pitch, hand * roll, hand * yaw, bounce * step_wave)
    # The sensor sits rotated on this participant's wrist: both sensors turn.
    acc = np.einsum("ij,njt->nit", profile["rotation"], acc)
    gyr = np.einsum("ij,njt->nit", profile["rotation"], gyr) + profile["gyr_bias"][:, None]
    acc += rng.normal(0, profile["acc_noise"], size=acc.shape)
    gyr += rng.normal(0, profile["gyr_noise"], size=gyr.shape)
    return np.concatenate([acc, gyr], axis=1).astype(np.float32)


def _labels(profile, n, rng):
    """n class ids: each class once while n allows, the rest by the participant's shares."""
    shares = profile["class_shares"]
    first = np.arange(min(n, len(shares)))
    y = np.concatenate([first, rng.choice(len(shares), size=n - len(first), p=shares)])
    rng.shuffle(y)
    return y


def activity_splits(n_classes=3, n_participants=6, window_size=DEMO_WINDOW, n_train=DEMO_SIZES[0],
                    n_val=DEMO_SIZES[1], n_test=DEMO_SIZES[2], seed=0):
    """({(participant, split): (X, y)}, class names): X float32 (N, 6, T), y int64 class ids."""
    import torch  # here, as in dataset.synthetic
    names = activity_names(n_classes)
    sizes = checked_sizes(n_participants, window_size, n_train, n_val, n_test)
    splits = {}
    for index, name in enumerate(participant_names(n_participants)):
        profile = _participant_profile(seed, index, n_classes)
        for split_index, (split, n) in enumerate(sizes.items()):
            rng = np.random.default_rng([seed, index, split_index, n_classes])
            y = _labels(profile, n, rng)
            kinds = y.copy()
            wrong = rng.choice(n, int(round(MISLABELLED * n)), replace=False)
            kinds[wrong] = (y[wrong] + rng.integers(1, n_classes, size=len(wrong))) % n_classes
            X = activity_windows(profile, kinds, window_size, rng)
            splits[(name, split)] = (torch.from_numpy(X), torch.from_numpy(y.astype(np.int64)))
    return splits, names
