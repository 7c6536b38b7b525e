"""Model registry: 1D CNNs over (N, C, T) windows that output one logit each.

Each model computes its blocks one of two ways, the same function: the reference way
(Conv1d, and LayerNorm over the channels between two transposes, the engine's historic
kernels) or, with `fast_kernels` set, as Conv2d over (N, C, 1, T) laid out channels-last,
so that the LayerNorm reads contiguous rows of channels and nothing is copied around it
(1.8x per training step on one CPU thread for `test`; float rounding aside, the same results).
"""
import torch.nn.functional as F
from torch import nn


class ChannelLayerNorm(nn.Module):
    """Layer norm over the channels at every time step of (N, C, T)."""

    def __init__(self, channels, affine=True):
        super().__init__()
        self.norm = nn.LayerNorm(channels, elementwise_affine=affine)

    def forward(self, x):
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


def conv_block(in_channels, out_channels, kernel_size, pool, affine, ceil_mode):
    layers = [nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
              ChannelLayerNorm(out_channels, affine), nn.ReLU()]
    if pool > 1:
        layers.append(nn.MaxPool1d(pool, ceil_mode=ceil_mode))
    return nn.Sequential(*layers)


class ConvNet(nn.Module):
    """Conv blocks, global average pool over time, linear to one logit.

    ceil_mode pooling keeps a partial last window, so any window length works.
    """

    def __init__(self, widths, kernel_size, pools, dropout=0.0, affine=True, ceil_mode=True):
        super().__init__()
        self.features = nn.Sequential(*[
            conv_block(c_in, c_out, kernel_size, pool, affine, ceil_mode)
            for c_in, c_out, pool in zip(widths[:-1], widths[1:], pools)])
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(widths[-1], 1)
        self.fast_kernels = False  # the engine sets it for a CPU run (--cpu_kernels fast)

    def forward(self, x):
        features = self.fast_features(x) if self.fast_kernels else self.features(x).mean(dim=2)
        return self.head(self.dropout(features)).squeeze(1)

    def min_window(self):
        """The shortest window whose every pool still gives a sample: a floor-mode pool of size k
        needs n * k samples to give n, a ceil-mode one (n - 1) * k + 1 (the convolutions keep the length)."""
        need = 1
        for block in reversed(self.features):
            for pool in block[3:]:
                k = pool.kernel_size
                need = (need - 1) * k + 1 if pool.ceil_mode else need * k
        return need

    def fast_features(self, x):
        """self.features(x).mean(dim=2) with the blocks' own parameters, channels-last: h is
        (N, C, 1, T) with the channels innermost in memory, and its permute to (N, 1, T, C) is the
        contiguous layout the LayerNorm wants. Explicit permutes (no memory_format) so that vmap
        (packs) runs it too."""
        h = x.transpose(1, 2).contiguous().unsqueeze(1).permute(0, 3, 1, 2)
        for block in self.features:
            conv, norm, relu, *pool = block
            h = F.conv2d(h, conv.weight.unsqueeze(2), conv.bias, padding=(0, conv.padding[0]))
            h = relu(norm.norm(h.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
            for layer in pool:
                h = F.max_pool2d(h, (1, layer.kernel_size), ceil_mode=layer.ceil_mode)
        return h.mean(dim=(2, 3))


def test_model(n_channels):
    """The original's TestModel exactly: C->8->8->8->16, kernel 3, LayerNorm over the
    channels without scale/shift, MaxPool1d(2) after blocks 1 and 2 only (floor, as
    there), global average pool, Linear(16, 1); 969 parameters for 6 channels."""
    return ConvNet([n_channels, 8, 8, 8, 16], kernel_size=3, pools=[2, 2, 1, 1],
                   affine=False, ceil_mode=False)


def test_pool4_model(n_channels):
    """This project's earlier `test`: the same widths with affine LayerNorm and
    MaxPool1d(4, ceil) after blocks 1-3 (1,049 parameters for 6 channels; 210
    convolution multiply-adds per input time step against `test`'s 384)."""
    return ConvNet([n_channels, 8, 8, 8, 16], kernel_size=3, pools=[4, 4, 4, 1])


def medium_cnn(n_channels):
    """A wider, deeper CNN for real data sets."""
    return ConvNet([n_channels, 32, 64, 64, 128, 128], kernel_size=5,
                   pools=[2, 2, 2, 2, 1], dropout=0.2)


MODELS = {"test": test_model, "test_pool4": test_pool4_model, "medium": medium_cnn}


def build_model(name, n_channels, fast_kernels=False):
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choices: {', '.join(sorted(MODELS))}")
    model = MODELS[name](n_channels)
    model.fast_kernels = fast_kernels
    return model


def load_original_state_dict(model, original_state):
    """Load a state_dict saved by the original's TestModel into `test`.

    Its tensor names differ from this registry's, but its parameters come in the
    same order (conv weight and bias per block, then the linear layer): they are
    matched by position and each shape is checked.
    """
    ours = model.state_dict()
    if len(ours) != len(original_state):
        raise ValueError(f"the original state has {len(original_state)} tensors; this model has {len(ours)}")
    mapped = {}
    for (name, own), (original_name, tensor) in zip(ours.items(), original_state.items()):
        if own.shape != tensor.shape:
            raise ValueError(f"{original_name} has shape {tuple(tensor.shape)}; "
                             f"{name} needs {tuple(own.shape)}")
        mapped[name] = tensor
    model.load_state_dict(mapped)
    return model
