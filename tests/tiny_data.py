"""Tiny datasets for tests: a few participants, short windows, seconds to train."""
import torch


def write_tiny_dataset(folder, participants=("a", "b", "c", "d"), channels=3, window=64,
                       sizes=(24, 10, 10), seed=0):
    """Random windows whose label shifts the signal, a little differently per participant."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for i, name in enumerate(participants):
        for split, n in zip(("train", "val", "test"), sizes):
            y = torch.zeros(n)
            y[: max(1, n // 3)] = 1
            y = y[torch.randperm(n, generator=g)]
            X = torch.randn(n, channels, window, generator=g) + y.view(-1, 1, 1) * (0.8 + 0.3 * i)
            torch.save((X, y), folder / f"{name}_{split}.pt")
    return list(participants)


def write_tiny_recognizer(folder, names=("walk", "sit", "stand"), participants=("a", "b", "c", "d"), channels=3,
                          window=32, sizes=(24, 12, 12), seed=0, classes_file=True):
    """A recognizer's tiny dataset: K = len(names) classes, each window's class shifting one channel
    in a shape of its own; classes.json names them (unless classes_file is false)."""
    import json
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    wave = torch.linspace(0, 6.28, window)
    for name in participants:
        for split, n in zip(("train", "val", "test"), sizes):
            y = torch.arange(n) % len(names)
            y = y[torch.randperm(n, generator=g)]
            X = torch.randn(n, channels, window, generator=g)
            for k in range(len(names)):
                X[y == k, k % channels] += 1.5 * torch.sin(wave * (k + 1))
            torch.save((X, y), folder / f"{name}_{split}.pt")
    if classes_file:
        (folder / "classes.json").write_text(json.dumps(list(names)))
    return list(participants)
