"""Batch loaders that cut batches from whole tensors by index.

No per-sample `__getitem__`, no worker processes: one permutation per epoch and
one gather per batch, on whatever device the tensors live on.
"""
import numbers

import torch

from engine.flags import EPOCH_RULES, share_count  # noqa: F401 (share_count re-exported)


def _epoch_order(n, shuffle, generator, device):
    # The permutation is drawn on the CPU so a CPU generator seeds CUDA runs too.
    if shuffle:
        return torch.randperm(n, generator=generator).to(device)
    return torch.arange(n, device=device)


class TensorBatchLoader:
    """Plain batches of (X, y) in shuffled (or fixed) order."""

    def __init__(self, X, y, batch_size, shuffle=True, generator=None, drop_last=False):
        if len(X) != len(y):
            raise ValueError(f"X has {len(X)} windows but y has {len(y)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.X, self.y = X, y
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator
        self.drop_last = drop_last

    def __len__(self):
        n = len(self.X)
        if self.drop_last:
            return n // self.batch_size
        return (n + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        order = _epoch_order(len(self.X), self.shuffle, self.generator, self.X.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size:(i + 1) * self.batch_size]
            yield self.X[idx], self.y[idx]


def _check_side(name, side):
    # Returns (X, y) of one side, or says in plain words what is wrong with it.
    if not (isinstance(side, (tuple, list)) and len(side) == 2
            and all(isinstance(t, torch.Tensor) and t.dim() >= 1 for t in side)):
        raise ValueError(f"{name} must be an (X, y) pair of tensors with a window axis first")
    X, y = side
    if len(X) != len(y):
        raise ValueError(f"{name}: X has {len(X)} windows but y has {len(y)}")
    if len(X) == 0:
        raise ValueError(f"{name} has no windows")
    if X.device != y.device:
        raise ValueError(f"{name}: X is on {X.device} but y is on {y.device}")
    return X, y


class ComposedBatchDataLoader:
    """Batches that each hold exactly k target windows and batch_size - k base windows.

    base, target: (X, y) tensor pairs on one device, X shaped (N, C, T).
    k = round(target_pct * batch_size) (Python's round: halves go to the even
    integer), or int(target_pct * batch_size) with target_count="floor" (the
    original pipeline's rule); both k and batch_size - k must be at least 1.

    epoch_rule says how long an epoch is:
      "target_pass" (default): one pass over the target set, so
        len = ceil(n_target / k). Every target window appears in every epoch.
        When k does not divide n_target, the last batch's target share is
        filled up with the first windows of the same epoch's target order, so
        those k - n_target % k windows appear twice and the composition stays
        exact. (Dropping the rest instead would, with shuffle=False, leave the
        same target windows out of training forever.) The base side is a
        stream of reshuffled passes that carries over from epoch to epoch, so
        every base window is used once before any is used again.
      "shortest" (the original pipeline's rule): the epoch ends when either
        side runs out, len = min(n_target // k, n_base // (batch_size - k));
        each side is reshuffled every epoch and its leftover is not used.

    With shuffle=True the target and base windows sit at random positions in
    each batch; with shuffle=False the order is fixed: the target share first,
    each side in index order. The random draws use `generator` (a CPU
    torch.Generator; None means torch's global generator), so a seeded
    generator repeats the batches exactly.

    The two sides are concatenated once, at construction, on their device:
    this costs one extra copy of the data but makes every batch a single
    gather by an index row computed for the whole epoch at its start (no
    per-sample Python work, no host sync per batch). To tell the origin of a
    window in a batch, tag it in the data itself (e.g. X[:, 0, 0]).
    """

    def __init__(self, base, target, batch_size, target_pct, shuffle=True,
                 generator=None, epoch_rule="target_pass", target_count="round"):
        Xb, yb = _check_side("base", base)
        Xt, yt = _check_side("target", target)
        if Xb.shape[1:] != Xt.shape[1:] or Xb.dtype != Xt.dtype:
            raise ValueError(f"base windows are {tuple(Xb.shape[1:])} {Xb.dtype} but target "
                             f"windows are {tuple(Xt.shape[1:])} {Xt.dtype}; they must match")
        if yb.shape[1:] != yt.shape[1:] or yb.dtype != yt.dtype:
            raise ValueError(f"base labels are {tuple(yb.shape[1:])} {yb.dtype} per window but "
                             f"target labels are {tuple(yt.shape[1:])} {yt.dtype}; they must match")
        if Xb.device != Xt.device:
            raise ValueError(f"base is on {Xb.device} but target is on {Xt.device}; "
                             "move both to one device")
        if epoch_rule not in EPOCH_RULES:
            raise ValueError(f"unknown epoch_rule {epoch_rule!r}; choose one of {EPOCH_RULES}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) \
                or batch_size < 2:
            raise ValueError(f"batch_size must be an integer >= 2 (one target and one base "
                             f"window at least), got {batch_size!r}")
        if isinstance(target_pct, bool) or not isinstance(target_pct, numbers.Real):
            raise ValueError(f"target_pct must be a number between 0 and 1, got {target_pct!r}")
        if target_pct in (0, 1):
            plain = "base" if target_pct == 0 else "target"
            raise ValueError(f"target_pct={target_pct} leaves one side out of every batch; "
                             f"use a plain TensorBatchLoader over the {plain} data instead")
        if not 0 < target_pct < 1:
            hint = " (write a percentage like 10 as 0.1)" if 1 < target_pct <= 100 else ""
            raise ValueError(f"target_pct must be a fraction strictly between 0 and 1, "
                             f"got {target_pct!r}{hint}")
        k = share_count(target_pct, batch_size, target_count)
        if not 0 < k < batch_size:
            raise ValueError(f"target_pct={target_pct} with batch_size={batch_size} gives "
                             f"{k} target windows per batch; it must give 1 to {batch_size - 1}")
        m = batch_size - k
        if len(Xt) < k:
            raise ValueError(f"target has {len(Xt)} windows, fewer than the {k} of one batch "
                             f"share (target_pct={target_pct}, batch_size={batch_size})")
        if len(Xb) < m:
            raise ValueError(f"base has {len(Xb)} windows, fewer than the {m} of one batch "
                             f"share (target_pct={target_pct}, batch_size={batch_size})")
        if generator is not None and (not isinstance(generator, torch.Generator)
                                      or generator.device.type != "cpu"):
            raise ValueError("generator must be a torch.Generator on the CPU (or None)")

        # Target first: index i < n_target is a target window, the rest are base.
        self.X = torch.cat([Xt, Xb])
        self.y = torch.cat([yt, yb])
        self.n_target, self.n_base = len(Xt), len(Xb)
        self.batch_size, self.target_per_batch, self.base_per_batch = batch_size, k, m
        self.shuffle, self.generator, self.epoch_rule = shuffle, generator, epoch_rule
        self._base_stream = torch.empty(0, dtype=torch.long)

    def __len__(self):
        k, m = self.target_per_batch, self.base_per_batch
        if self.epoch_rule == "shortest":
            return min(self.n_target // k, self.n_base // m)
        return -(-self.n_target // k)

    def _base_indices(self, count):
        if self.epoch_rule == "shortest":
            return _epoch_order(self.n_base, self.shuffle, self.generator, "cpu")[:count]
        # Append fresh passes until this epoch is covered; the rest waits for the next one.
        parts, have = [self._base_stream], len(self._base_stream)
        while have < count:
            parts.append(_epoch_order(self.n_base, self.shuffle, self.generator, "cpu"))
            have += self.n_base
        stream = torch.cat(parts)
        self._base_stream = stream[count:]
        return stream[:count]

    def _epoch_rows(self):
        # One row of indices into self.X per batch, drawn on the CPU for the whole epoch.
        n_batches, k = len(self), self.target_per_batch
        target = _epoch_order(self.n_target, self.shuffle, self.generator, "cpu")
        need = n_batches * k
        if need > self.n_target:
            # target_pass: fill the short last share with the epoch's first windows.
            target = torch.cat([target, target[:need - self.n_target]])
        target = target[:need]
        base = self._base_indices(n_batches * self.base_per_batch) + self.n_target
        rows = torch.cat([target.view(n_batches, k), base.view(n_batches, -1)], dim=1)
        if self.shuffle:
            positions = torch.rand(rows.shape, generator=self.generator).argsort(dim=1)
            rows = rows.gather(1, positions)
        return rows.to(self.X.device)

    def __iter__(self):
        rows = self._epoch_rows()
        for idx in rows:
            yield self.X.index_select(0, idx), self.y.index_select(0, idx)
