"""Model registry: 1D CNNs over (N, C, T) windows that output one logit each.

`test` is the lab's configurable CNN (--base_channels, --num_blocks, --use_dilation,
--use_residual, --dropout); its defaults are the original's TestModel exactly. A lab's own model
comes from a factory (engine.user_model). build(args, n_channels) builds whichever the flags name.

Each model computes its blocks one of two ways, the same function: the reference way
(Conv1d, and LayerNorm over the channels between two transposes, the engine's historic
kernels) or, with `fast_kernels` set, as Conv2d over (N, C, 1, T) laid out channels-last,
so that the LayerNorm reads contiguous rows of channels and nothing is copied around it
(1.8x per training step on one CPU thread for `test`; float rounding aside, the same results).

Dropout draws its masks from a generator of the run's own (SeededDropout), so that a pack, which
draws each member's masks before its step, gives each member its solo run's masks.
"""
import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURE = {"base_channels": 8, "num_blocks": 4, "use_dilation": False, "use_residual": False,
                "dropout": 0.0}  # the flags that shape `test`, at the original's values


class SeededDropout(nn.Module):
    """Dropout whose masks come from `generator` (set by the engine for each phase; None: torch's
    global one). forward takes a mask drawn beforehand (a pack draws its members' masks with draw())."""

    def __init__(self, p):
        super().__init__()
        self.p, self.generator = p, None

    def draw(self, shape, device, generator=None):
        """A mask of kept (1 / (1 - p)) and dropped (0) features, from generator (default: its own)."""
        keep = torch.empty(shape, device=device).bernoulli_(1 - self.p, generator=generator or self.generator)
        return keep.div_(1 - self.p)

    def forward(self, x, mask=None):
        if mask is not None:
            return x * mask
        if not self.training or self.p == 0:
            return x
        return x * self.draw(x.shape, x.device)


class ChannelLayerNorm(nn.Module):
    """Layer norm over the channels at every time step of (N, C, T)."""

    def __init__(self, channels, affine=True):
        super().__init__()
        self.norm = nn.LayerNorm(channels, elementwise_affine=affine)

    def forward(self, x):
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


def conv_block(in_channels, out_channels, kernel_size, pool, affine, ceil_mode, dilation=1):
    """Conv1d (the length kept: padding d * (k - 1) / 2), LayerNorm over the channels, ReLU, and a
    max pool when pool > 1."""
    layers = [nn.Conv1d(in_channels, out_channels, kernel_size, padding=dilation * (kernel_size - 1) // 2,
                        dilation=dilation),
              ChannelLayerNorm(out_channels, affine), nn.ReLU()]
    if pool > 1:
        layers.append(nn.MaxPool1d(pool, ceil_mode=ceil_mode))
    return nn.Sequential(*layers)


class ConvNet(nn.Module):
    """Conv blocks, global average pool over time, dropout, linear to one logit, or to K logits for
    a recognizer of K >= 3 classes (`head`, the layer --finetune_layers head trains).

    ceil_mode pooling keeps a partial last window, so any window length works. residual: each
    block adds its input (through a 1x1 convolution where the channels change) after the ReLU,
    before the pool.
    """

    def __init__(self, widths, kernel_size, pools, dropout=0.0, affine=True, ceil_mode=True, dilations=None,
                 residual=False, n_classes=2):
        super().__init__()
        dilations = dilations or [1] * len(pools)
        self.features = nn.Sequential(*[
            conv_block(c_in, c_out, kernel_size, pool, affine, ceil_mode, dilation)
            for c_in, c_out, pool, dilation in zip(widths[:-1], widths[1:], pools, dilations)])
        # Only a residual model has skips: the others' state dicts keep their names.
        self.skips = nn.ModuleList([nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
                                    for c_in, c_out in zip(widths[:-1], widths[1:])]) if residual else None
        self.dropout = SeededDropout(dropout)
        self.head = nn.Linear(widths[-1], 1 if n_classes == 2 else n_classes)
        self.fast_kernels = False  # the engine sets it for a CPU run (--cpu_kernels fast)

    def forward(self, x, dropout_mask=None):
        features = self.fast_features(x) if self.fast_kernels else self.reference_features(x)
        logits = self.head(self.dropout(features, dropout_mask))
        return logits.squeeze(1) if logits.shape[1] == 1 else logits

    def feature_width(self):
        """The width of what dropout sees (a pack draws masks of this many features a window)."""
        return self.head.in_features

    def min_window(self):
        """The shortest window whose every pool still gives a sample: a floor-mode pool of size k
        needs n * k samples to give n, a ceil-mode one (n - 1) * k + 1 (the convolutions keep the length)."""
        need = 1
        for block in reversed(self.features):
            for pool in block[3:]:
                k = pool.kernel_size
                need = (need - 1) * k + 1 if pool.ceil_mode else need * k
        return need

    def reference_features(self, x):
        h = x
        for i, block in enumerate(self.features):
            conv, norm, relu, *pool = block
            out = relu(norm(conv(h)))
            if self.skips is not None:
                out = out + self.skips[i](h)
            for layer in pool:
                out = layer(out)
            h = out
        return h.mean(dim=2)

    def fast_features(self, x):
        """reference_features(x) with the blocks' own parameters, channels-last: h is (N, C, 1, T)
        with the channels innermost in memory, and its permute to (N, 1, T, C) is the contiguous
        layout the LayerNorm wants. Explicit permutes (no memory_format) so that vmap (packs) runs it too."""
        h = x.transpose(1, 2).contiguous().unsqueeze(1).permute(0, 3, 1, 2)
        for i, block in enumerate(self.features):
            conv, norm, relu, *pool = block
            out = F.conv2d(h, conv.weight.unsqueeze(2), conv.bias, padding=(0, conv.padding[0]),
                           dilation=(1, conv.dilation[0]))
            out = relu(norm.norm(out.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
            if self.skips is not None:
                skip = self.skips[i]
                out = out + (F.conv2d(h, skip.weight.unsqueeze(2), skip.bias) if isinstance(skip, nn.Conv1d) else h)
            for layer in pool:
                out = F.max_pool2d(out, (1, layer.kernel_size), ceil_mode=layer.ceil_mode)
            h = out
        return h.mean(dim=(2, 3))


def test_model(n_channels, base_channels=8, num_blocks=4, use_dilation=False, use_residual=False, dropout=0.0,
               n_classes=2):
    """The lab's CNN: blocks of kernel 3, a LayerNorm over the channels without scale/shift, ReLU,
    MaxPool1d(2) (floor) after the first block and after each odd middle block; C -> 2C in the last
    block; dilation 2^i in block i when use_dilation; then global average pool, dropout, Linear(2C, 1).
    At its defaults the original's TestModel exactly: C->8->8->8->16, 969 parameters for 6
    channels; the lab's final grid (64 channels, dilation, dropout 0.5) has 50,753."""
    widths = [n_channels] + [base_channels] * (num_blocks - 1) + [2 * base_channels]
    pools = [2] + [2 if i % 2 else 1 for i in range(1, num_blocks - 1)] + [1]
    dilations = [2 ** i if use_dilation else 1 for i in range(num_blocks)]
    return ConvNet(widths, kernel_size=3, pools=pools, dropout=dropout, affine=False, ceil_mode=False,
                   dilations=dilations, residual=use_residual, n_classes=n_classes)


def test_pool4_model(n_channels, n_classes=2):
    """This project's earlier `test`: the same widths with affine LayerNorm and
    MaxPool1d(4, ceil) after blocks 1-3 (1,049 parameters for 6 channels; 210
    convolution multiply-adds per input time step against `test`'s 384)."""
    return ConvNet([n_channels, 8, 8, 8, 16], kernel_size=3, pools=[4, 4, 4, 1], n_classes=n_classes)


def medium_cnn(n_channels, n_classes=2):
    """A wider, deeper CNN for real data sets."""
    return ConvNet([n_channels, 32, 64, 64, 128, 128], kernel_size=5,
                   pools=[2, 2, 2, 2, 1], dropout=0.2, n_classes=n_classes)


MODELS = {"test": test_model, "test_pool4": test_pool4_model, "medium": medium_cnn}


def build_model(name, n_channels, fast_kernels=False, architecture=None, n_classes=2):
    """A built-in model; architecture: the flags that shape `test` (ARCHITECTURE's keys); n_classes:
    2 for a detector (one logit), K >= 3 for a recognizer (K logits)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choices: {', '.join(sorted(MODELS))}")
    shape = dict(architecture or {}) if name == "test" else {}
    model = MODELS[name](n_channels, **shape, n_classes=n_classes)
    model.fast_kernels = fast_kernels
    model.n_classes = n_classes
    return model


def build(args, n_channels, fast_kernels=False, n_classes=2):
    """The model a run's flags name: built-in (shaped by the architecture flags) or a lab's own
    factory (--model FILE.py:FACTORY or package.module:FACTORY, with --model_args). Either knows
    its n_classes (the loops size their counts by it)."""
    from engine import user_model
    if user_model.is_spec(args.model):
        model = user_model.build(args.model, getattr(args, "model_args", None), n_channels, n_classes)
        model.n_classes = n_classes
        return model
    architecture = {name: getattr(args, name, default) for name, default in ARCHITECTURE.items()}
    return build_model(args.model, n_channels, fast_kernels, architecture, n_classes)


def head_names(model):
    """The names of the parameters --finetune_layers head trains: those of the model's `head`
    attribute when it is a module, else of its last nn.Linear (ValueError when it has neither)."""
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Module):
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError("the model has no `head` module and no nn.Linear: --finetune_layers head "
                             "has nothing to train")
        head = linears[-1]
    own = {id(p) for p in head.parameters()}
    return [name for name, p in model.named_parameters() if id(p) in own]


def stacking_problem(model):
    """Why a pack cannot train this model stacked (None when it can): buffers that training updates
    (BatchNorm's running statistics) are not parameters a pack stacks, and a pack passes each
    member's dropout masks only to the built-in models' dropout (engine.models.ConvNet)."""
    if any(True for _ in model.buffers()):
        return "it has buffers (such as BatchNorm's running statistics) that a pack cannot stack"
    if any(isinstance(m, (nn.Dropout, SeededDropout)) and m.p > 0 for m in model.modules()):
        return "it uses dropout, whose masks a pack draws as each solo run does only for the built-in models"
    return None


def dropout_layers(model):
    return [m for m in model.modules() if isinstance(m, SeededDropout) and m.p > 0]


def set_dropout_generator(model, generator):
    """Every SeededDropout of the model draws from `generator` from now on."""
    for layer in dropout_layers(model):
        layer.generator = generator


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
