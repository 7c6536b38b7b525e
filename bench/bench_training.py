"""Training throughput of the engine's epoch loop against the usual per-sample loop.

Baseline ("per-sample DataLoader"): `DataLoader(TensorDataset(X, y), shuffle=True)`
collating one window at a time, with `loss.item()` every batch, as hand-written
training scripts do. Engine: `phase.train_epoch` over `TensorBatchLoader`
(batches cut from the tensors by index, on the device; one sync per epoch).
Same data, model, batch size and optimizer; prints windows/s and the ratio.

    python bench/bench_training.py            # demo-sized: 800 windows of 6 x 3000
    python bench/bench_training.py --quick    # a smoke run
"""
import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from composed_loader import TensorBatchLoader  # noqa: E402
from engine import phase
from engine.device import resolve_device
from engine.models import build_model


def per_sample_epoch(model, loader, optimizer, device):
    """The baseline: per-sample collation and a host sync per batch."""
    model.train()
    loss_fn = nn.BCEWithLogitsLoss()
    total, n = 0.0, 0
    for xb, yb in loader:
        xb, yb = xb.to(device), yb.to(device)
        loss = loss_fn(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(yb)
        n += len(yb)
    return n


def windows_per_second(run_epoch, epochs):
    run_epoch()  # warm-up: allocator, kernels
    start = time.perf_counter()
    n = sum(run_epoch() for _ in range(epochs))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=800)
    parser.add_argument("--window_size", type=int, default=3000)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--model", default="test")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="small sizes, one epoch")
    args = parser.parse_args()
    if args.quick:
        args.windows, args.window_size, args.epochs = 128, 256, 1
    device = resolve_device(args.device)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(args.windows, 6, args.window_size, generator=g)
    y = (torch.rand(args.windows, generator=g) < 0.2).float()

    def fresh():
        torch.manual_seed(0)
        model = build_model(args.model, 6).to(device)
        return model, torch.optim.AdamW(model.parameters(), lr=1e-3)

    model, optimizer = fresh()
    loader = DataLoader(TensorDataset(X, y), batch_size=args.batch_size, shuffle=True)
    baseline = windows_per_second(lambda: per_sample_epoch(model, loader, optimizer, device), args.epochs)

    model, optimizer = fresh()
    Xd, yd = X.to(device), y.to(device)
    batches = TensorBatchLoader(Xd, yd, args.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
    engine = windows_per_second(lambda: phase.train_epoch(model, batches, optimizer, None, device)[2],
                                args.epochs)

    print(f"device {device}, model {args.model}, {args.windows} windows of 6 x {args.window_size}, "
          f"batch {args.batch_size}, {args.epochs} timed epochs, {torch.get_num_threads()} threads")
    print(f"per-sample DataLoader (baseline): {baseline:10.0f} windows/s")
    print(f"engine (tensor batches)         : {engine:10.0f} windows/s")
    print(f"ratio engine / baseline         : {engine / baseline:10.2f}x")


if __name__ == "__main__":
    main()
