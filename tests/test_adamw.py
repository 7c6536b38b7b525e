"""SoloAdamW against torch.optim.AdamW: the same parameters after every step, to the bit."""
import torch
from torch import nn

from engine.adamw import SoloAdamW
from engine.models import build_model


def train_side_by_side(make_model, lr, steps, freeze=None):
    """Two copies of a model from one seed, one trained by each optimizer on the same batches;
    returns the largest difference between their parameters after each step."""
    torch.manual_seed(0)
    ours, theirs = make_model(), make_model()
    theirs.load_state_dict(ours.state_dict())
    for model in (ours, theirs):
        if freeze is not None:
            freeze(model).requires_grad_(False)
    solo = SoloAdamW(ours.parameters(), lr)
    reference = torch.optim.AdamW(theirs.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(1)
    gaps = []
    for _ in range(steps):
        x = torch.randn(16, 3, 32, generator=generator)
        y = (torch.rand(16, generator=generator) > 0.5).float()
        for model, optimizer in ((ours, solo), (theirs, reference)):
            optimizer.zero_grad(set_to_none=True)
            nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
            optimizer.step()
        gaps.append(max((a - b).abs().max().item()
                        for a, b in zip(ours.parameters(), theirs.parameters())))
    return gaps


def test_the_test_model_trains_to_the_bit_as_with_torch_adamw():
    gaps = train_side_by_side(lambda: build_model("test", 3), lr=1e-3, steps=30)
    assert gaps == [0.0] * 30


def test_a_large_learning_rate_and_a_frozen_layer_match_too():
    # A frozen layer has no gradient: both optimizers leave it, and its state, alone.
    gaps = train_side_by_side(lambda: build_model("test", 3), lr=0.05, steps=20,
                              freeze=lambda model: next(model.children()))
    assert gaps == [0.0] * 20


def test_the_parameters_move_so_the_comparison_means_something():
    torch.manual_seed(0)
    model = build_model("test", 3)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = SoloAdamW(model.parameters(), 1e-2)
    nn.functional.binary_cross_entropy_with_logits(model(torch.randn(4, 3, 32)), torch.ones(4)).backward()
    optimizer.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    optimizer.zero_grad()
    assert all(p.grad is None for p in model.parameters())
