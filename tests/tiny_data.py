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
