"""Benchmark: ComposedBatchDataLoader against the original pipeline's batch composition.

Baseline ("original"): two torch DataLoader(TensorDataset) with shuffle=True and
drop_last=True, batch sizes k and batch_size - k, zipped; each pair is
concatenated and permuted. Both loaders read the same tensors.

Prints (1) loader-only batches/s and the ratio composed/original (goal >= 10x),
and (2) the loader's share of one training epoch of a registry model (default
`test`, the original's TestModel):
share = (t_epoch_with_loader - t_epoch_over_prebuilt_batches) / t_epoch_with_loader
(goal <= 5%). Each figure is the best of a few runs. The full run uses base
4000 and target 800 windows of 6 x 3000 (about 350 MB, plus the composed
loader's concatenated copy): it fits a 2-core, 24 GiB CPU box. --quick uses
tiny sizes and finishes in seconds.

    python bench/bench_composed_loader.py [--quick] [--device auto|cpu|cuda] [--window T]

On a CPU the gather is bound by memory bandwidth; on a box shared with other
busy processes, --threads 1 avoids OpenMP threads waiting on each other.
"""
import argparse
import os
import sys
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from composed_loader import ComposedBatchDataLoader  # noqa: E402
from engine.models import build_model


def original_epoch(base, target, batch_size, k, generator):
    """The original's way: two DataLoaders zipped, each pair concatenated and permuted."""
    target_dl = DataLoader(TensorDataset(*target), batch_size=k, shuffle=True,
                           drop_last=True, generator=generator)
    base_dl = DataLoader(TensorDataset(*base), batch_size=batch_size - k, shuffle=True,
                         drop_last=True, generator=generator)
    for (xt, yt), (xb, yb) in zip(target_dl, base_dl):
        perm = torch.randperm(batch_size, generator=generator).to(xt.device)
        yield torch.cat([xt, xb])[perm], torch.cat([yt, yb])[perm]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def batches_per_s(make_epoch, device, epochs):
    """Loader-only throughput: pull every batch and drop it; the best of `epochs` epochs."""
    best = 0.0
    for _ in range(epochs):
        sync(device)
        start, n = time.perf_counter(), 0
        for _batch in make_epoch():
            n += 1
        sync(device)
        best = max(best, n / (time.perf_counter() - start))
    return best


def train_epoch_seconds(model_name, model_state, batches, channels, device):
    """Time one training epoch from the same starting weights.

    Returns (epoch seconds, seconds spent waiting for the next batch); the second
    is a direct reading of the loader's share, steadier on a busy machine.
    """
    model = build_model(model_name, channels).to(device)
    model.load_state_dict(model_state)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    batches, fetch = iter(batches), 0.0
    sync(device)
    start = time.perf_counter()
    while True:
        t = time.perf_counter()
        batch = next(batches, None)
        fetch += time.perf_counter() - t
        if batch is None:
            break
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(batch[0]), batch[1]).backward()
        optimizer.step()
    sync(device)
    return time.perf_counter() - start, fetch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke test")
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:N")
    parser.add_argument("--window", type=int, default=3000, help="samples per window (T)")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="test", help="registry model trained in the epoch-share figure")
    args = parser.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.quick:
        n_base, n_target, C, T, epochs, repeats = 400, 80, 6, 300, 2, 1
    else:
        n_base, n_target, C, T, epochs, repeats = 4000, 800, 6, args.window, 5, 3
    batch_size = 64
    gen = torch.Generator().manual_seed(args.seed)
    base = (torch.randn(n_base, C, T, generator=gen).to(device),
            torch.randint(0, 2, (n_base,), generator=gen).float().to(device))
    target = (torch.randn(n_target, C, T, generator=gen).to(device),
              torch.randint(0, 2, (n_target,), generator=gen).float().to(device))
    torch.manual_seed(args.seed)
    model_state = build_model(args.model, C).to(device).state_dict()

    print(f"device {device} | threads {torch.get_num_threads()} | base {n_base} and target "
          f"{n_target} windows of {C} x {T} | batch_size {batch_size} | epoch_rule target_pass | model {args.model}")
    rows = []
    for pct in (0.1, 0.5):
        k = round(pct * batch_size)
        loader = ComposedBatchDataLoader(base, target, batch_size, pct, generator=gen)
        original = batches_per_s(lambda: original_epoch(base, target, batch_size, k, gen),
                                 device, epochs)
        composed = batches_per_s(lambda: loader, device, epochs)

        # Same batches either way; alternate the two and keep the fastest of each.
        prebuilt = list(loader)
        train_epoch_seconds(args.model, model_state, prebuilt, C, device)  # warm-up, not timed
        with_loader = over_prebuilt = (float("inf"), 0.0)
        for _ in range(repeats):
            with_loader = min(with_loader, train_epoch_seconds(args.model, model_state, loader, C, device))
            over_prebuilt = min(over_prebuilt, train_epoch_seconds(args.model, model_state, prebuilt, C, device))
        rows.append(dict(pct=pct, k=k, batches=len(loader), original=original, composed=composed,
                         ratio=composed / original, t_loader=with_loader[0],
                         t_prebuilt=over_prebuilt[0], fetch=with_loader[1] / with_loader[0],
                         share=(with_loader[0] - over_prebuilt[0]) / with_loader[0]))

    print(f"\n{'target_pct':>10} {'k':>3} {'batches':>7} {'original b/s':>12} {'composed b/s':>12} "
          f"{'ratio':>7} {'epoch w/ loader s':>17} {'prebuilt s':>10} {'share':>7} {'fetch':>7}")
    for r in rows:
        print(f"{r['pct']:>10} {r['k']:>3} {r['batches']:>7} {r['original']:>12.1f} "
              f"{r['composed']:>12.1f} {r['ratio']:>6.1f}x {r['t_loader']:>17.3f} "
              f"{r['t_prebuilt']:>10.3f} {r['share']:>7.1%} {r['fetch']:>7.1%}")
    print("share = (epoch w/ loader - prebuilt) / epoch w/ loader; "
          "fetch = time waiting for batches / epoch w/ loader\n")
    for r in rows:
        print(f"ratio target_pct={r['pct']}: {r['ratio']:.1f}x (goal >= 10x)")
    for r in rows:
        print(f"loader share target_pct={r['pct']}: {r['share']:.1%} of the epoch, "
              f"{r['fetch']:.1%} measured inside it (goal <= 5%)")


if __name__ == "__main__":
    main()
