"""Model registry: 1D CNNs over (N, C, T) windows that output one logit each."""
from torch import nn


class ChannelLayerNorm(nn.Module):
    """Layer norm over the channels at every time step of (N, C, T)."""

    def __init__(self, channels):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x):
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


def conv_block(in_channels, out_channels, kernel_size, pool):
    layers = [nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
              ChannelLayerNorm(out_channels), nn.ReLU()]
    if pool > 1:
        layers.append(nn.MaxPool1d(pool, ceil_mode=True))  # any window length works
    return nn.Sequential(*layers)


class ConvNet(nn.Module):
    """Conv blocks, global average pool over time, linear to one logit."""

    def __init__(self, widths, kernel_size, pools, dropout=0.0):
        super().__init__()
        self.features = nn.Sequential(*[
            conv_block(c_in, c_out, kernel_size, pool)
            for c_in, c_out, pool in zip(widths[:-1], widths[1:], pools)])
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(widths[-1], 1)

    def forward(self, x):
        features = self.features(x).mean(dim=2)
        return self.head(self.dropout(features)).squeeze(1)


def small_cnn(n_channels):
    """The original's `test` model: C->8->8->8->16, kernel 3, pooling in the first blocks."""
    return ConvNet([n_channels, 8, 8, 8, 16], kernel_size=3, pools=[4, 4, 4, 1])


def medium_cnn(n_channels):
    """A wider, deeper CNN for real data sets."""
    return ConvNet([n_channels, 32, 64, 64, 128, 128], kernel_size=5,
                   pools=[2, 2, 2, 2, 1], dropout=0.2)


MODELS = {"test": small_cnn, "medium": medium_cnn}


def build_model(name, n_channels):
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choices: {', '.join(sorted(MODELS))}")
    return MODELS[name](n_channels)
