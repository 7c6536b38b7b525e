"""AdamW with torch.optim.AdamW's defaults, written out so the CPU engine need not import
torch._dynamo (about 2 s of every training process's start: torch.optim's optimizers load it
the first time one is built).

SoloAdamW is torch.optim.AdamW's single-tensor update, operation for operation, so a CPU run
repeats the engine's historic results to the bit (tests/test_adamw.py holds it to that).
StackedAdamW trains the members of a pack at once (engine.packed_step), each member as
SoloAdamW to the bit.
"""
import torch

BETAS, EPS, WEIGHT_DECAY = (0.9, 0.999), 1e-8, 1e-2


class SoloAdamW:
    """torch.optim.AdamW(params, lr) on the CPU: each parameter's state is made at its first
    gradient, and a parameter without a gradient is left alone (a frozen layer)."""

    def __init__(self, params, lr):
        self.params, self.lr = list(params), lr
        self.state = {}  # parameter -> torch's own state: step (a tensor, as torch keeps it), exp_avg, exp_avg_sq

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self):
        beta1, beta2 = BETAS
        for p in self.params:
            if p.grad is None:
                continue
            if p not in self.state:
                self.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                 "exp_avg_sq": torch.zeros_like(p)}
            state = self.state[p]
            state["step"] += 1
            step, exp_avg, exp_avg_sq = state["step"].item(), state["exp_avg"], state["exp_avg_sq"]
            grad = p.grad
            p.mul_(1 - self.lr * WEIGHT_DECAY)
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            step_size = self.lr / (1 - beta1 ** step)
            denom = (exp_avg_sq.sqrt() / (1 - beta2 ** step) ** 0.5).add_(EPS)
            p.addcdiv_(exp_avg, denom, value=-step_size)


def bias_corrections(steps):
    """1 - beta1 ** step and (1 - beta2 ** step) ** 0.5 for a tensor of step counts, in double
    precision as SoloAdamW works them out in Python floats. torch's double pow can be an ulp off
    Python's, never so far as to change the float32 they are rounded to (tests/test_adamw.py
    checks every step)."""
    beta1, beta2 = BETAS
    return 1 - beta1 ** steps, (1 - beta2 ** steps).sqrt()


class StackedAdamW:
    """torch.optim.AdamW over stacked parameters, one learning rate and one step count per
    member; a member outside `active` keeps its parameters and optimizer state. Everything
    lives on the parameters' device and is updated in place, so a CUDA graph can replay it.
    On the CPU each member's update is SoloAdamW's to the bit (tests/test_adamw.py)."""

    def __init__(self, params, lrs, device):
        self.params = params
        self.lr = torch.tensor(lrs, dtype=torch.float64, device=device)
        self.steps = torch.zeros(len(lrs), dtype=torch.float64, device=device)
        self.exp_avg = {name: torch.zeros_like(p) for name, p in params.items()}
        self.exp_avg_sq = {name: torch.zeros_like(p) for name, p in params.items()}

    @torch.no_grad()
    def step(self, active):
        beta1, beta2 = BETAS
        self.steps += active.double()
        correction1, correction2_sqrt = bias_corrections(self.steps.clamp(min=1))
        decay = 1 - self.lr * WEIGHT_DECAY
        step_size = self.lr / correction1
        for name, p in self.params.items():
            shape = (-1,) + (1,) * (p.dim() - 1)

            def per_member(values):  # as SoloAdamW's Python-float scalars: rounded to float32 first
                return values.to(p.dtype).view(shape)

            # SoloAdamW.step's operations in its order: float32 rounding follows the operations.
            # addcmul_ rounds exp_avg_sq + value * grad * grad once (a fused multiply-add), which
            # a * b + c does not; addcdiv_(t1, t2, value) computes p + (value * t1) / t2, so
            # value * exp_avg goes in as t1 (p + value * (exp_avg / denom) rounds differently).
            keep = active.view(shape)
            m = self.exp_avg[name].lerp(p.grad, 1 - beta1)
            v = self.exp_avg_sq[name].mul(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denom = (v.sqrt() / per_member(correction2_sqrt)).add_(EPS)
            new = (p * per_member(decay)).addcdiv_(per_member(-step_size) * m, denom)
            p.copy_(torch.where(keep, new, p))
            self.exp_avg[name].copy_(torch.where(keep, m, self.exp_avg[name]))
            self.exp_avg_sq[name].copy_(torch.where(keep, v, self.exp_avg_sq[name]))
            p.grad = None
