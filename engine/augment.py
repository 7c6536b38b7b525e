"""Training-time augmentation of (N, C, T) windows: per window (this project's) or per batch
(the original's), with random numbers drawn on the device so no batch waits for the host."""
import math

import torch


class Augmenter:
    """Jitter, magnitude scaling and a smooth time warp, each applied to a
    window with probability `prob`; random numbers drawn on the device."""

    def __init__(self, jitter_std, magnitude_range, prob, generator):
        self.jitter_std = jitter_std
        self.low, self.high = magnitude_range
        self.prob = prob
        self.generator = generator

    def _chosen(self, x):
        mask = torch.rand(len(x), device=x.device, generator=self.generator) < self.prob
        return mask.view(-1, 1, 1)

    def __call__(self, x):
        n, _, t = x.shape
        g = self.generator
        noise = torch.randn(x.shape, device=x.device, generator=g) * self.jitter_std
        x = x + noise * self._chosen(x)
        scale = self.low + (self.high - self.low) * torch.rand(n, 1, 1, device=x.device, generator=g)
        x = torch.where(self._chosen(x), x * scale, x)
        # Time warp: sample positions t + a*sin(2*pi*t/T + phase), linear interpolation.
        steps = torch.arange(t, device=x.device, dtype=x.dtype)
        amplitude = 0.05 * t * torch.rand(n, 1, device=x.device, generator=g)
        phase = 2 * math.pi * torch.rand(n, 1, device=x.device, generator=g)
        pos = (steps + amplitude * torch.sin(2 * math.pi * steps / t + phase)).clamp(0, t - 1)
        left = pos.floor().long().clamp(max=t - 2) if t > 1 else pos.floor().long()
        right = (left + 1).clamp(max=t - 1)
        frac = (pos - left).unsqueeze(1)
        index_shape = (n, x.shape[1], t)
        warped = (x.gather(2, left.unsqueeze(1).expand(index_shape)) * (1 - frac)
                  + x.gather(2, right.unsqueeze(1).expand(index_shape)) * frac)
        return torch.where(self._chosen(x), warped, x)


class BatchAugmenter(Augmenter):
    """The original's augmentation, with the same parameters as Augmenter: with
    probability `prob` one of jitter, magnitude scaling (one factor per window)
    and time warp, picked at random, is applied to the whole batch.

    The original's time warp was written for (N, T, C) data and indexes dim 1,
    which holds the channels of (N, C, T) windows; its slice there is empty, so
    that branch leaves the batch as it is. This reproduces it as such.
    Decisions are drawn on the device, so there is no host sync per batch.
    """

    def __call__(self, x):
        g = self.generator
        apply, pick = torch.rand(2, device=x.device, generator=g)
        # -1: untouched; 0 jitter, 1 magnitude, 2 time warp (changes nothing, as in the original).
        transform = torch.where(apply < self.prob, (pick * 3).floor().clamp(max=2), -1)
        noise = torch.randn(x.shape, device=x.device, generator=g) * self.jitter_std
        scale = self.low + (self.high - self.low) * torch.rand(len(x), 1, 1, device=x.device, generator=g)
        x = torch.where(transform == 0, x + noise, x)
        return torch.where(transform == 1, x * scale, x)


def make_augmenter(args, generator):
    """The augmentation a run's flags ask for, or None."""
    if not args.use_augmentation:
        return None
    kind = BatchAugmenter if args.augmentation == "batch" else Augmenter
    return kind(args.jitter_std, args.magnitude_range, args.aug_prob, generator)
