"""BertAdam, as the DL-DKD / MS-SL reference code trains with it, written from its definition.

Per parameter, at each step:
  g  <- the parameter's own gradient, clipped to norm `max_grad_norm` (not a global norm)
  m  <- b1 * m + (1 - b1) * g
  v  <- b2 * v + (1 - b2) * g * g
  u  <- m / (sqrt(v) + eps) + weight_decay * p        (no bias correction of m and v)
  p  <- p - lr * u
The learning rate comes from the group (a scheduler sets it: `reference_warmup_linear`). Without
bias correction the first steps are several times larger than bias-corrected Adam's.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.optim import Optimizer


class BertAdam(Optimizer):
    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.01, max_grad_norm: float = 1.0):
        if lr < 0 or eps < 0 or weight_decay < 0 or max_grad_norm < 0:
            raise ValueError("lr, eps, weight_decay and max_grad_norm must be non-negative")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      max_grad_norm=max_grad_norm))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise RuntimeError("BertAdam does not support sparse gradients")
                if group["max_grad_norm"] > 0:
                    norm = grad.norm()
                    scale = group["max_grad_norm"] / (norm + 1e-6)
                    if scale < 1.0:  # as torch.nn.utils.clip_grad_norm_ on this parameter alone
                        grad = grad * scale
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                update = exp_avg / (exp_avg_sq.sqrt() + group["eps"])
                if group["weight_decay"] > 0:
                    update.add_(p, alpha=group["weight_decay"])
                p.add_(update, alpha=-group["lr"])
                state["step"] += 1
        return loss


def reference_warmup_linear(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    """The reference's schedule as a LambdaLR factor of step s (0-based), x = s / total_steps:
    x / warmup while x < warmup (the very first step has rate 0), then (1 - x) / (1 - warmup),
    never below 0."""
    def factor(step: int) -> float:
        x = step / max(1, total_steps)
        if warmup_fraction > 0 and x < warmup_fraction:
            return x / warmup_fraction
        return max((x - 1.0) / (warmup_fraction - 1.0), 0.0)

    return factor
