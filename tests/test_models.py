"""The model registry: every model maps (N, C, T) windows to N logits."""
import pytest
import torch
from torch import nn

import experiment
import models


@pytest.mark.parametrize("name", ["test", "medium"])
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


@pytest.mark.parametrize("name", ["test", "medium"])
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


@pytest.mark.parametrize("name", ["test", "medium"])
@pytest.mark.parametrize("window", [16, 32])
def test_models_accept_short_windows(name, window):
    # tests/tiny_data.py writes 32-sample windows by default; a registry model
    # must still give one logit per window instead of failing in max_pool1d.
    model = models.build_model(name, 3)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, window))
    assert out.shape == (2,)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("channels", [1, 3, 7])
def test_test_model_is_the_original_small_cnn(channels):
    model = models.build_model("test", channels)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv1d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (channels, 8), (8, 8), (8, 8), (8, 16)]
    assert all(c.kernel_size == (3,) for c in convs)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 1)]


def test_medium_model_is_larger_than_test_model():
    def count(model):
        return sum(p.numel() for p in model.parameters())
    assert count(models.build_model("medium", 3)) > 10 * count(models.build_model("test", 3))


def test_unknown_model_name_lists_the_choices():
    with pytest.raises(ValueError) as info:
        models.build_model("huge", 3)
    message = str(info.value)
    assert "huge" in message
    for choice in models.MODELS:
        assert choice in message
    assert "\n" not in message


def test_cli_model_choices_are_the_registry():
    parser = experiment.build_parser()
    action = next(a for a in parser._actions if a.dest == "model")
    assert sorted(action.choices) == sorted(models.MODELS)
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--model", "huge"])
    assert info.value.code == 2
