"""The data contract: `DATA/{participant}_{split}.pt` files holding `(X, y)`.

X is float (N, C, T), y is (N,) or (N, 1) with class ids 0 .. K-1: 0/1 for a detector (two
classes, one logit), K >= 3 for a recognizer. A recognizer's folder names its classes in
`classes.json` (a JSON list, in id order), which fixes K for every fold; without it K is the
largest id found plus one, and no id below it may be missing. Every problem is a `DataError` whose
message is one line naming the file; the CLIs turn it into exit status 2 before anything is written.
"""
import json
from dataclasses import dataclass
from pathlib import Path

from engine.modes import mode_of

SPLITS = ("train", "val", "test")


class DataError(Exception):
    """Bad input data or a bad data-related flag; the message is one line."""


def discover_participants(data_path):
    """Every participant name found in the folder, sorted.

    A name is what stands before the last `_` of a `*_{split}.pt` file.
    """
    folder = Path(data_path)
    if not folder.is_dir():
        raise DataError(f"{folder}: data folder not found")
    names = set()
    for path in folder.glob("*_*.pt"):
        name, _, split = path.stem.rpartition("_")
        if split in SPLITS and name:
            names.add(name)
    if not names:
        raise DataError(f"{folder}: no participant files (expected NAME_train.pt, NAME_val.pt, NAME_test.pt)")
    return sorted(names)


def load_split(data_path, participant, split):
    """Load and validate one split file; returns (X float32 (N,C,T), y float32 (N,))."""
    import torch  # here, so the CLIs that only plan or check (generate_jobs.py) start without it
    path = Path(data_path) / f"{participant}_{split}.pt"
    if not path.is_file():
        raise DataError(f"{path}: missing split file")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds for a bad file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: unreadable tensor file ({reason})") from None
    if not (isinstance(content, (tuple, list)) and len(content) == 2
            and all(isinstance(t, torch.Tensor) for t in content)):
        raise DataError(f"{path}: expected a pair of tensors (X, y)")
    X, y = content
    if X.dim() != 3 or not X.is_floating_point():
        raise DataError(f"{path}: X must be a 3-D float tensor (N, C, T), got {X.dim()}-D {X.dtype}")
    if y.dim() == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.dim() != 1:
        raise DataError(f"{path}: y must have shape (N,) or (N, 1), got {tuple(y.shape)}")
    if len(y) != len(X):
        raise DataError(f"{path}: y has {len(y)} labels but X has {len(X)} windows")
    if len(X) == 0:
        raise DataError(f"{path}: empty split")
    # Checked after the cast: a float64 value beyond float32's range (1e300) becomes inf there.
    X = X.to(torch.float32).contiguous()
    if not torch.isfinite(X).all():
        raise DataError(f"{path}: X contains NaN or inf (as float32)")
    if y.is_floating_point() and not torch.isfinite(y).all():
        raise DataError(f"{path}: labels must be class ids 0, 1, ... (found NaN or inf)")
    y = y.to(torch.float32)  # class ids as floats: BCE takes them so, cross-entropy as .long()
    if not ((y >= 0) & (y == y.round())).all():
        raise DataError(f"{path}: labels must be class ids 0, 1, ... (whole numbers >= 0), found "
                        f"{y[(y < 0) | (y != y.round())][0].item():g}")
    return X, y


CLASSES_FILE = "classes.json"


@dataclass(frozen=True)
class Shape:
    """What a model is built for: the windows' channels and length, and the classes (None for a
    detector, else a recognizer's K >= 3 names)."""
    channels: int
    window: int
    classes: tuple = None

    @property
    def n_classes(self):
        return len(self.classes) if self.classes else 2


def shape_of(data_path, data):
    """The Shape of loaded data (load_participants), its classes checked (class_names)."""
    X = next(iter(next(iter(data.values())).values()))[0]
    names = class_names(data_path, data)
    return Shape(int(X.shape[1]), int(X.shape[2]), tuple(names) if names else None)


def read_classes(data_path):
    """The class names of classes.json in the data folder, or None when it has none."""
    path = Path(data_path) / CLASSES_FILE
    if not path.is_file():
        return None
    try:
        names = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable ({err})") from None
    if not (isinstance(names, list) and len(names) >= 2 and all(isinstance(n, str) and n for n in names)
            and len(set(names)) == len(names)):
        raise DataError(f"{path}: expected a JSON list of two or more distinct class names, in id order")
    return names


def class_names(data_path, data):
    """The classes of the loaded data: None for a detector (ids 0/1 and no classes.json naming more),
    else the K >= 3 names (classes.json's, or "0" .. "K-1"). An id beyond classes.json's names, or a
    gap in the ids found without it, is a DataError."""
    named = read_classes(data_path)
    found, where = set(), {}
    for name, splits in data.items():
        for split, (_, y) in splits.items():
            for value in y.unique().long().tolist():
                found.add(value)
                where.setdefault(value, Path(data_path) / f"{name}_{split}.pt")
    if named is not None:
        beyond = sorted(v for v in found if v >= len(named))
        if beyond:
            raise DataError(f"{where[beyond[0]]}: class id {beyond[0]}, but {Path(data_path) / CLASSES_FILE} names "
                            f"{len(named)} classes (ids 0..{len(named) - 1})")
        return None if len(named) == 2 else named
    k = max(max(found) + 1, 2)
    missing = sorted(set(range(k)) - found)
    if missing and k > 2:
        raise DataError(f"{where[k - 1]}: class id {k - 1}, but no window of the data has id {missing[0]}; ids must "
                        f"be 0..K-1 without gaps (or name the K classes in {Path(data_path) / CLASSES_FILE})")
    return None if k == 2 else [str(i) for i in range(k)]


def load_participants(data_path, participants, window_size=None):
    """Load every split of the given participants: {name: {split: (X, y)}}.

    Channel count and window length must agree across all files, and with
    `window_size` when given.
    """
    data = {}
    shape, shape_file = None, None
    for name in participants:
        data[name] = {}
        for split in SPLITS:
            X, y = load_split(data_path, name, split)
            path = Path(data_path) / f"{name}_{split}.pt"
            if shape is None:
                shape, shape_file = tuple(X.shape[1:]), path
            elif tuple(X.shape[1:]) != shape:
                raise DataError(f"{path}: (channels, window length) {tuple(X.shape[1:])} "
                                f"differs from {shape} in {shape_file}")
            data[name][split] = (X, y)
    if window_size is not None and shape[1] != window_size:
        raise DataError(f"{shape_file}: window length is {shape[1]} but --window_size is {window_size}")
    return data


def fold_index(participants, fold):
    """The index of a fold given as an index or as its target participant's name."""
    if isinstance(fold, str) and not fold.lstrip("-").isdigit():
        if fold not in participants:
            raise DataError(f"--fold {fold}: no such participant ({', '.join(participants)})")
        return participants.index(fold)
    if not 0 <= int(fold) < len(participants):
        raise DataError(f"--fold {fold} out of range: {len(participants)} participants "
                        f"({', '.join(participants)}), so 0..{len(participants) - 1}")
    return int(fold)


def resolve_fold(participants, fold, n_base_participants="all"):
    """Target and base participants of a leave-one-participant-out fold (an index or a name)."""
    target = participants[fold_index(participants, fold)]
    others = [p for p in participants if p != target]
    if n_base_participants == "all":
        return target, others
    n = int(n_base_participants)
    if n < 1 or n > len(others):
        raise DataError(f"--n_base_participants {n} is not in 1..{len(others)} "
                        f"(participants other than the target {target})")
    return target, others[:n]


def check_base(mode, target, base_names):
    """A mode with a base phase needs at least one participant besides the target."""
    if mode_of(mode).base_phase and not base_names:
        raise DataError(f"--mode {mode} trains a base model on the participants other than the target "
                        f"{target}, and there are none; give more participants or use --mode target_only")


def check_participants(data_path, participants):
    """Participants to use: the given list (each must exist) or all found."""
    found = discover_participants(data_path)
    if not participants:
        return found
    unknown = [p for p in participants if p not in found]
    if unknown:
        raise DataError(f"{data_path}: unknown participant(s) {', '.join(unknown)}; found {', '.join(found)}")
    if len(set(participants)) != len(participants):
        raise DataError(f"--participants lists a name twice: {' '.join(participants)}")
    return list(participants)
