"""The model registry: every model maps (N, C, T) windows to N logits."""
import pytest
import torch
from torch import nn

from engine import cli as engine_cli
from engine import flags, models


@pytest.mark.parametrize("name", sorted(models.MODELS))
@pytest.mark.parametrize("channels,window", [(1, 64), (3, 64), (6, 128), (3, 3000)])
def test_registry_models_give_one_logit_per_window(name, channels, window):
    torch.manual_seed(0)
    model = models.build_model(name, channels)
    model.eval()
    x = torch.randn(5, channels, window)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (5,)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # The logits depend on the window (not a constant head).
    with torch.no_grad():
        other = model(x.flip(0))
    assert torch.allclose(other, out.flip(0), atol=1e-5)
    assert not torch.allclose(out, out[:1].expand(5))
    # A single window works too (no batch-size-1 squeeze to a scalar).
    with torch.no_grad():
        assert model(x[:1]).shape == (1,)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = models.build_model(name, 3)
    model.train()
    loss = nn.functional.binary_cross_entropy_with_logits(model(torch.randn(4, 3, 64)),
                                                          torch.tensor([0.0, 1.0, 1.0, 0.0]))
    loss.backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, pname
        assert torch.isfinite(param.grad).all(), pname


@pytest.mark.parametrize("name", sorted(models.MODELS))
@pytest.mark.parametrize("window", [16, 32])
def test_models_accept_short_windows(name, window):
    # Datasets may use windows shorter than tests/tiny_data.py's 64 samples; a registry model
    # must still give one logit per window instead of failing in max_pool1d.
    model = models.build_model(name, 3)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, window))
    assert out.shape == (2,)
    assert torch.isfinite(out).all()


def parameter_count(model):
    return sum(p.numel() for p in model.parameters())


def test_test_model_is_the_originals_test_model():
    # The original: 4 blocks Conv1d(k3, p1) -> LayerNorm over channels without
    # affine -> ReLU, MaxPool1d(2) after blocks 1-2 only, global average pool, Linear(16, 1).
    model = models.build_model("test", 6)
    assert parameter_count(model) == 969
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.LayerNorm, nn.ReLU, nn.MaxPool1d, nn.Linear))]
    kinds = [type(m).__name__ for m in layers]
    assert kinds == ["Conv1d", "LayerNorm", "ReLU", "MaxPool1d"] * 2 + ["Conv1d", "LayerNorm", "ReLU"] * 2 + ["Linear"]
    convs = [m for m in layers if isinstance(m, nn.Conv1d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (6, 8, (3,), (1,)), (8, 8, (3,), (1,)), (8, 8, (3,), (1,)), (8, 16, (3,), (1,))]
    norms = [m for m in layers if isinstance(m, nn.LayerNorm)]
    assert [n.normalized_shape for n in norms] == [(8,), (8,), (8,), (16,)]
    assert not any(n.elementwise_affine for n in norms)
    pools = [m for m in layers if isinstance(m, nn.MaxPool1d)]
    assert all(p.kernel_size == 2 and p.stride == 2 and not p.ceil_mode for p in pools)
    assert [(m.in_features, m.out_features) for m in layers if isinstance(m, nn.Linear)] == [(16, 1)]


def test_test_model_normalizes_each_time_step_over_channels():
    # Features after the first block's norm have mean 0 and variance 1 over the
    # channels at every time step: the norm runs over C, not over T.
    model = models.build_model("test", 6)
    block = model.features[0]
    with torch.no_grad():
        normed = block[1](block[0](torch.randn(3, 6, 40)))
    assert torch.allclose(normed.mean(dim=1), torch.zeros(3, 40), atol=1e-5)
    assert torch.allclose(normed.var(dim=1, unbiased=False), torch.ones(3, 40), atol=1e-3)


def test_test_pool4_keeps_the_projects_earlier_network():
    model = models.build_model("test_pool4", 6)
    assert parameter_count(model) == 1049
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool1d)]
    assert [(p.kernel_size, p.ceil_mode) for p in pools] == [(4, True)] * 3


def original_shaped_state(seed):
    # The original's TestModel names its tensors its own way; shapes and order are what count.
    g = torch.Generator().manual_seed(seed)
    shapes = {"conv1.weight": (8, 6, 3), "conv1.bias": (8,), "conv2.weight": (8, 8, 3), "conv2.bias": (8,),
              "conv3.weight": (8, 8, 3), "conv3.bias": (8,), "conv4.weight": (16, 8, 3), "conv4.bias": (16,),
              "fc.weight": (1, 16), "fc.bias": (1,)}
    return {name: torch.randn(shape, generator=g) for name, shape in shapes.items()}


def test_a_state_dict_of_the_originals_shapes_loads_into_test():
    state = original_shaped_state(0)
    model = models.load_original_state_dict(models.build_model("test", 6), state)
    assert torch.equal(model.features[0][0].weight, state["conv1.weight"])
    assert torch.equal(model.features[3][0].bias, state["conv4.bias"])
    assert torch.equal(model.head.weight, state["fc.weight"])
    # Fed through: the loaded weights decide the logits.
    x = torch.randn(2, 6, 64)
    with torch.no_grad():
        first = model(x)
        models.load_original_state_dict(model, original_shaped_state(1))
        assert not torch.allclose(model(x), first)


def test_a_state_dict_of_other_shapes_is_refused_by_name():
    state = original_shaped_state(0)
    state["conv2.weight"] = torch.zeros(8, 8, 5)
    with pytest.raises(ValueError, match="conv2.weight has shape"):
        models.load_original_state_dict(models.build_model("test", 6), state)
    with pytest.raises(ValueError, match="tensors"):
        models.load_original_state_dict(models.build_model("test_pool4", 6), original_shaped_state(0))


def test_medium_model_is_larger_than_test_model():
    assert parameter_count(models.build_model("medium", 3)) > 10 * parameter_count(models.build_model("test", 3))


def test_unknown_model_name_lists_the_choices():
    with pytest.raises(ValueError) as info:
        models.build_model("huge", 3)
    message = str(info.value)
    assert "huge" in message
    for choice in models.MODELS:
        assert choice in message
    assert "\n" not in message


def test_cli_model_choices_are_the_registry():
    parser = engine_cli.build_parser()
    assert sorted(flags.MODEL_NAMES) == sorted(models.MODELS)
    for name in models.MODELS:
        assert parser.parse_args(["--model", name]).model == name
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--model", "huge"])
    assert info.value.code == 2


def test_the_flags_name_every_model_the_registry_builds():
    # The parser takes its --model choices from engine.flags, which must not import torch.
    assert sorted(flags.MODEL_NAMES) == sorted(models.MODELS)
