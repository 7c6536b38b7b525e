"""SoloAdamW against torch.optim.AdamW, and StackedAdamW against SoloAdamW: the same parameters
after every step, to the bit."""
import torch
from torch import nn

from engine.adamw import BETAS, SoloAdamW, StackedAdamW, bias_corrections
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


# ---------------------------------------------------------------- StackedAdamW against SoloAdamW

SHAPES = {"conv": (8, 3, 3), "bias": (8,), "wide": (37, 29), "one": (1,)}  # vector loops and their tails


def stacked_against_solo(lrs, steps, first_step=0, seed=0):
    """Members with their own learning rates, stacked (StackedAdamW) and one SoloAdamW each, given the
    same random gradients; a member sits some steps out (its solo parameters get no gradient, and the
    stacked optimizer is not to touch its row, though it gets a gradient too). Every step, parameters
    and state must be equal to the bit. first_step: the step count both start from (with random state)."""
    generator = torch.Generator().manual_seed(seed)
    k = len(lrs)
    stacked = {name: torch.randn(k, *shape, generator=generator) for name, shape in SHAPES.items()}
    members = [{name: tensor[i].clone() for name, tensor in stacked.items()} for i in range(k)]
    stacked_optimizer = StackedAdamW(stacked, lrs, torch.device("cpu"))
    solos = [SoloAdamW(member.values(), lr) for member, lr in zip(members, lrs)]
    if first_step:
        stacked_optimizer.steps.fill_(first_step)
        for name, p in stacked.items():
            stacked_optimizer.exp_avg[name].copy_(torch.randn(p.shape, generator=generator) * 1e-2)
            stacked_optimizer.exp_avg_sq[name].copy_(torch.rand(p.shape, generator=generator) * 1e-4)
            for i, (member, solo) in enumerate(zip(members, solos)):
                solo.state[member[name]] = {"step": torch.tensor(float(first_step)),
                                            "exp_avg": stacked_optimizer.exp_avg[name][i].clone(),
                                            "exp_avg_sq": stacked_optimizer.exp_avg_sq[name][i].clone()}
    for number in range(steps):
        active = torch.rand(k, generator=generator) > 0.25
        active[0] = True  # one member steps every time
        for name, p in stacked.items():
            scale = 10.0 ** torch.randint(-4, 1, (), generator=generator).item()  # 1e-4 to 1
            p.grad = torch.randn(p.shape, generator=generator) * scale
            for i, member in enumerate(members):
                member[name].grad = p.grad[i].clone() if active[i] else None
        stacked_optimizer.step(active)
        for solo in solos:
            solo.step()
            solo.zero_grad()
        for i, (member, solo) in enumerate(zip(members, solos)):
            for name, p in stacked.items():
                where = f"step {number + 1}, member {i}, {name}"
                assert torch.equal(p[i], member[name]), where
                state = solo.state.get(member[name])
                if state is None:  # not stepped yet: nothing moved
                    assert not stacked_optimizer.exp_avg[name][i].any() and stacked_optimizer.steps[i] == 0, where
                    continue
                assert stacked_optimizer.steps[i] == state["step"], where
                assert torch.equal(stacked_optimizer.exp_avg[name][i], state["exp_avg"]), where
                assert torch.equal(stacked_optimizer.exp_avg_sq[name][i], state["exp_avg_sq"]), where
    return stacked_optimizer


def test_stacked_members_with_their_own_learning_rates_are_each_solo_adamw_to_the_bit():
    optimizer = stacked_against_solo([1e-3, 3e-3, 2e-3, 0.05, 1e-4], steps=400)
    # 400 steps pass step 356, from where 1 - 0.9 ** step is 1.0; every member sat some steps out.
    assert optimizer.steps[0] == 400 and all(0 < s < 400 for s in optimizer.steps[1:].tolist())


def test_stacked_matches_solo_where_the_second_bias_correction_reaches_one():
    # (1 - 0.999 ** step) ** 0.5 is 1.0 in double precision from step 36314 on.
    stacked_against_solo([1e-3, 0.05], steps=20, first_step=36300, seed=1)


def test_the_stacked_bias_corrections_round_to_float32_as_solo_adamws_python_floats_do():
    # torch's double pow over a long tensor (its vectorized kernel) is an ulp off Python's pow at
    # some steps; what the update uses, rounded to float32, must still be Python's at every step
    # up to and past where both corrections are 1.0 (step 36314).
    beta1, beta2 = BETAS
    steps = range(1, 40001)
    correction1, correction2_sqrt = bias_corrections(torch.tensor(steps, dtype=torch.float64))
    assert correction2_sqrt.float().tolist() == torch.tensor([(1 - beta2 ** s) ** 0.5 for s in steps]).tolist()
    for lr in (1e-4, 1e-3, 3e-3, 1e-2, 5e-2):
        step_size = torch.tensor([lr / (1 - beta1 ** s) for s in steps])  # float32, as addcdiv_ takes it
        assert torch.equal((lr / correction1).float(), step_size), lr
