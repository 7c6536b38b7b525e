"""Where a run computes: the device --device names, whether it replays CUDA graphs or runs the
fast CPU kernels, whether its data fits on the device, and torch's CPU threads."""
import logging

import torch

from engine.fileio import ConfigError

log = logging.getLogger("experiment")


def apply_threads(args):
    if args.threads is not None:
        torch.set_num_threads(args.threads)


def fast_kernels(args, device):
    """Whether the model runs its fast CPU kernels (--cpu_kernels fast, on the CPU only)."""
    return device.type == "cpu" and getattr(args, "cpu_kernels", "fast") == "fast"


def graphs_wanted(setting, device):
    """--cuda_graphs auto|on|off on this device: True or False."""
    if setting == "on" and device.type != "cuda":
        raise ConfigError(f"--cuda_graphs on needs a CUDA device, not {device}")
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def resolve_device(spec):
    """The torch.device --device names (checked; a CUDA one made the current device)."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec.isdigit():
        spec = f"cuda:{spec}"
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"--device {spec!r}: expected auto, cpu, cuda, cuda:N or N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) visible")
        if device.index is not None:  # side streams and graphs go to the current device: make it this one
            torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ConfigError(f"--device {spec!r}: expected auto, cpu, cuda, cuda:N or N")
    return device


def place(tensors, device):
    """Move the data to the device when it fits comfortably, so batches are cut there."""
    if device.type == "cuda":
        needed = sum(t.numel() * t.element_size() for t in tensors)
        free, _ = torch.cuda.mem_get_info(device)
        if needed > free // 2:
            log.info(f"data ({needed / 2**30:.1f} GiB) stays in host memory; batches are copied")
            return [t.pin_memory() for t in tensors]
    return [t.to(device) for t in tensors]
