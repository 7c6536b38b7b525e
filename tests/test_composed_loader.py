"""Tests for composed_loader: the composed (base + target) loader and the plain one.

Windows are tagged by origin in the data itself: X[:, 0, 0] holds a unique id,
positive (1..n) for target windows and negative (-1..-n) for base windows.
"""
import itertools
import math
import os
import re
import subprocess
import sys
from collections import Counter

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from composed_loader import ComposedBatchDataLoader, TensorBatchLoader, share_count  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tagged(n, sign, C=2, T=3):
    X = torch.zeros(n, C, T)
    X[:, 0, 0] = sign * torch.arange(1, n + 1, dtype=torch.float32)
    y = (torch.arange(n) % 2).float()
    return X, y


def make(n_base, n_target, batch_size, pct, seed=0, **kw):
    return ComposedBatchDataLoader(tagged(n_base, -1), tagged(n_target, 1), batch_size, pct,
                                   generator=torch.Generator().manual_seed(seed), **kw)


def epoch_ids(loader):
    return [x[:, 0, 0].long().tolist() for x, _ in loader]


GRID = list(itertools.product([7, 50, 203], [3, 20, 64], [2, 5, 16], [0.1, 0.3, 0.5, 0.9]))


def valid(n_base, n_target, bs, pct, count):
    k = share_count(pct, bs, count)
    return 0 < k < bs and n_target >= k and n_base >= bs - k


@pytest.mark.parametrize("count", ["round", "floor"])
@pytest.mark.parametrize("rule", ["target_pass", "shortest"])
def test_len_and_composition_exact_over_grid(rule, count):
    checked = 0
    for n_base, n_target, bs, pct in GRID:
        if not valid(n_base, n_target, bs, pct, count):
            continue
        loader = make(n_base, n_target, bs, pct, epoch_rule=rule, target_count=count)
        k = share_count(pct, bs, count)
        for _ in range(2):  # the second epoch also sees the carried-over base stream
            batches = epoch_ids(loader)
            assert len(batches) == len(loader), (n_base, n_target, bs, pct)
            for ids in batches:
                assert len(ids) == bs
                assert sum(i > 0 for i in ids) == k, (n_base, n_target, bs, pct, ids)
        checked += 1
    assert checked > 40


@pytest.mark.parametrize("pct,rounded,floored", [
    (0.9, 58, 57), (0.15, 10, 9), (0.2, 13, 12), (0.4, 26, 25), (0.7, 45, 44), (0.25, 16, 16)])
def test_target_count_floor_is_the_originals_int(pct, rounded, floored):
    # The table at batch 64: the two rules differ at 0.15, 0.2, 0.4, 0.7 and 0.9.
    assert (share_count(pct, 64, "round"), share_count(pct, 64, "floor")) == (rounded, floored)
    for count, k in (("round", rounded), ("floor", floored)):
        loader = make(200, 100, 64, pct, target_count=count)
        assert all(sum(i > 0 for i in ids) == k for ids in epoch_ids(loader))


def test_target_pass_length_and_each_target_once_when_k_divides():
    loader = make(n_base=30, n_target=24, batch_size=8, pct=0.5)  # k = 4 divides 24
    assert len(loader) == 6
    for _ in range(3):
        targets = [i for ids in epoch_ids(loader) for i in ids if i > 0]
        assert sorted(targets) == list(range(1, 25))


def test_target_pass_fills_the_last_share_with_repeats():
    loader = make(n_base=30, n_target=22, batch_size=8, pct=0.5)  # k = 4, 22 = 5 * 4 + 2
    assert len(loader) == math.ceil(22 / 4)
    batches = epoch_ids(loader)
    counts = Counter(i for ids in batches for i in ids if i > 0)
    assert set(counts) == set(range(1, 23))  # every target window is seen
    assert sorted(counts.values()) == [1] * 20 + [2] * 2  # only the fill repeats
    last_targets = [i for i in batches[-1] if i > 0]
    assert len(set(last_targets)) == 4  # no window twice in one batch


def test_target_pass_base_stream_uses_every_base_window_before_repeating():
    # 23 target / k=2 -> 12 batches x 6 base = 72 base windows per epoch, base has 10.
    loader = make(n_base=10, n_target=23, batch_size=8, pct=0.25)
    counts = Counter()
    for _ in range(3):
        counts.update(-i for ids in epoch_ids(loader) for i in ids if i < 0)
        # The stream goes through whole passes, so use counts never differ by more than one.
        assert set(counts) == set(range(1, 11))
        assert max(counts.values()) - min(counts.values()) <= 1
    assert sum(counts.values()) == 3 * 72


def test_target_pass_base_stream_carries_over_epochs_without_shuffle():
    loader = make(n_base=10, n_target=4, batch_size=4, pct=0.5, shuffle=False)
    first = [-i for ids in epoch_ids(loader) for i in ids if i < 0]
    second = [-i for ids in epoch_ids(loader) for i in ids if i < 0]
    assert first == [1, 2, 3, 4] and second == [5, 6, 7, 8]


@pytest.mark.parametrize("n_base,n_target,expected", [(100, 30, 10), (20, 300, 2), (57, 9, 3)])
def test_shortest_length_and_no_repeats(n_base, n_target, expected):
    loader = make(n_base, n_target, batch_size=10, pct=0.3, epoch_rule="shortest")  # k=3, 7 base
    assert len(loader) == min(n_target // 3, n_base // 7) == expected
    batches = epoch_ids(loader)
    assert len(batches) == expected
    flat = [i for ids in batches for i in ids]
    assert len(flat) == len(set(flat))


def test_shuffle_mixes_positions_within_batches():
    loader = make(n_base=200, n_target=200, batch_size=16, pct=0.25)
    first_positions = [ids[:4] for ids in epoch_ids(loader)]
    assert not all(all(i > 0 for i in head) for head in first_positions)
    seen_target_at = {p for ids in epoch_ids(loader) for p, i in enumerate(ids) if i > 0}
    assert seen_target_at == set(range(16))


def test_no_shuffle_is_fixed_order_target_first():
    loader = make(n_base=8, n_target=4, batch_size=4, pct=0.5, shuffle=False, epoch_rule="shortest")
    assert epoch_ids(loader) == [[1, 2, -1, -2], [3, 4, -3, -4]]


def test_labels_follow_their_windows():
    (Xb, yb), (Xt, yt) = tagged(40, -1), tagged(30, 1)
    yb, yt = yb.unsqueeze(1), yt.unsqueeze(1) + 5  # (N, 1) labels, distinct per side
    loader = ComposedBatchDataLoader((Xb, yb), (Xt, yt), 10, 0.4)
    for x, y in loader:
        assert y.shape == (10, 1)
        ids = x[:, 0, 0].long()
        expected = torch.where(ids > 0, yt[(ids - 1).clamp(min=0), 0], yb[(-ids - 1).clamp(min=0), 0])
        assert torch.equal(y[:, 0], expected)


def test_batches_stay_on_the_tensors_device():
    X, y = torch.zeros(10, 2, 3, device="meta"), torch.zeros(10, device="meta")
    loader = ComposedBatchDataLoader((X, y), (X[:5], y[:5]), 4, 0.5)
    assert [xb.device.type for xb, _ in loader] == ["meta"] * len(loader)


def test_seeded_determinism():
    a = [epoch_ids(make(50, 20, 8, 0.25, seed=1)) for _ in range(2)]
    assert a[0] == a[1]
    assert epoch_ids(make(50, 20, 8, 0.25, seed=2)) != a[0]
    loader = make(50, 20, 8, 0.25, seed=1)
    assert epoch_ids(loader) != epoch_ids(loader)  # a new epoch is reshuffled


BASE, TARGET = tagged(20, -1), tagged(10, 1)


@pytest.mark.parametrize("kwargs,message", [
    (dict(target_pct=0), "target_pct=0 leaves one side out.*TensorBatchLoader over the base"),
    (dict(target_pct=1), "target_pct=1 leaves one side out.*TensorBatchLoader over the target"),
    (dict(target_pct=1.5), "strictly between 0 and 1, got 1.5"),
    (dict(target_pct=10), "percentage like 10 as 0.1"),
    (dict(target_pct=-0.2), "strictly between 0 and 1"),
    (dict(target_pct=float("nan")), "strictly between 0 and 1"),
    (dict(target_pct="0.5"), "target_pct must be a number"),
    (dict(target_pct=0.01), r"target_pct=0.01 with batch_size=8 gives 0 target"),
    (dict(target_pct=0.97), r"target_pct=0.97 with batch_size=8 gives 8 target"),
    (dict(batch_size=1), "batch_size must be an integer >= 2"),
    (dict(batch_size=4.0), "batch_size must be an integer >= 2"),
    (dict(target=tagged(0, 1)), "target has no windows"),
    (dict(base=tagged(0, -1)), "base has no windows"),
    (dict(target=tagged(3, 1)), "target has 3 windows, fewer than the 4 of one batch share"),
    (dict(base=tagged(3, -1)), "base has 3 windows, fewer than the 4 of one batch share"),
    (dict(base=(torch.zeros(5, 2, 3), torch.zeros(4))), "base: X has 5 windows but y has 4"),
    (dict(target=(torch.zeros(5, 2, 3), torch.zeros(6))), "target: X has 5 windows but y has 6"),
    (dict(target=tagged(10, 1, C=3)), r"base windows are \(2, 3\).*target windows are \(3, 3\)"),
    (dict(target=tagged(10, 1, T=4)), r"must match"),
    (dict(target=(TARGET[0].double(), TARGET[1])), "torch.float64; they must match"),
    (dict(target=(TARGET[0], TARGET[1].unsqueeze(1))), "labels are"),
    (dict(target=(TARGET[0].to("meta"), TARGET[1].to("meta"))), "base is on cpu but target is on meta"),
    (dict(base=(BASE[0], BASE[1].to("meta"))), "base: X is on cpu but y is on meta"),
    (dict(target=TARGET[0]), r"target must be an \(X, y\) pair"),
    (dict(epoch_rule="longest"), "unknown epoch_rule 'longest'"),
    (dict(target_count="ceil"), "unknown count rule 'ceil'"),
    (dict(generator=0), "generator must be a torch.Generator"),
])
def test_bad_arguments_raise_clear_value_errors(kwargs, message):
    args = dict(base=BASE, target=TARGET, batch_size=8, target_pct=0.5) | kwargs
    with pytest.raises(ValueError, match=message):
        ComposedBatchDataLoader(**args)


# TensorBatchLoader

@pytest.mark.parametrize("n,bs,drop_last,expected", [
    (10, 3, False, 4), (10, 3, True, 3), (9, 3, False, 3), (9, 3, True, 3),
    (2, 5, False, 1), (2, 5, True, 0)])
def test_tensor_loader_len(n, bs, drop_last, expected):
    loader = TensorBatchLoader(*tagged(n, 1), bs, drop_last=drop_last)
    assert len(loader) == expected
    assert len(list(loader)) == expected


def test_tensor_loader_covers_each_window_once_per_epoch():
    loader = TensorBatchLoader(*tagged(23, 1), 5, generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        batches = epoch_ids(loader)
        assert [len(b) for b in batches] == [5, 5, 5, 5, 3]
        assert sorted(i for b in batches for i in b) == list(range(1, 24))
    assert epoch_ids(TensorBatchLoader(*tagged(4, 1), 3, shuffle=False)) == [[1, 2, 3], [4]]


def test_tensor_loader_determinism():
    def run(seed):
        generator = torch.Generator().manual_seed(seed)
        return epoch_ids(TensorBatchLoader(*tagged(30, 1), 4, generator=generator))
    assert run(3) == run(3)
    assert run(3) != run(4)


def test_tensor_loader_rejects_bad_arguments():
    with pytest.raises(ValueError, match="X has 3 windows but y has 2"):
        TensorBatchLoader(torch.zeros(3, 1, 1), torch.zeros(2), 2)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        TensorBatchLoader(torch.zeros(3, 1, 1), torch.zeros(3), 0)


@pytest.mark.slow
def test_bench_quick_prints_ratio_and_share_lines():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_composed_loader.py"),
                             "--quick", "--device", "cpu"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for pct in ("0.1", "0.5"):
        assert re.search(rf"^ratio target_pct={pct}: [\d.]+x", out, re.M), out
        assert re.search(rf"^loader share target_pct={pct}: -?[\d.]+%", out, re.M), out
