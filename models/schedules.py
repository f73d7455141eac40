"""Epoch-dependent weight of the distillation term (the "dynamic" in DL-DKD).

The weight is `base * shape(epoch)`, where `shape` starts at (or near) 1 and decays; the
increasing counterpart is `base * (1 - shape(epoch))`. This matches the reference code, where
the KL term is multiplied by a fixed scale (its `loss_scale_weight`, 0.1 in the released
scripts) times the decay factor of whichever schedule is chosen — so with the default base 0.1,
"exponential" gives method.md's `0.1 * 0.95**e`, and "linear" gives `0.1 * max(1 - 0.01 e, 0.05)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import get_args

from configs.schema import Schedule

SCHEDULES: tuple[str, ...] = get_args(Schedule)  # the names are the config's; each has a shape below

EXPONENTIAL_RATE = 0.95
LINEAR_SLOPE, LINEAR_FLOOR = 0.01, 0.05
SIGMOID_K = 800.0


def _exponential(epoch: int, total_epochs: int) -> float:
    return EXPONENTIAL_RATE**epoch


def _linear(epoch: int, total_epochs: int) -> float:
    return max(1.0 - LINEAR_SLOPE * epoch, LINEAR_FLOOR)


def _sigmoid(epoch: int, total_epochs: int) -> float:
    """k / (k + exp(100 e / k)), k = 800: an inverted sigmoid in e, independent of total_epochs.

    Its value at e = 0 is 800/801 ~= 0.99875 (not exactly 1); it halves at e = 8 ln 800 ~= 53.5,
    is ~= 0.607 at e = 50 and ~= 0.00297 at e = 100: nearly flat for ~20 epochs, then a drop.
    """
    exponent = 100.0 * epoch / SIGMOID_K
    # k / (k + e^x) == 1 / (1 + e^(x - ln k)); the cap keeps exp finite for any epoch.
    return 1.0 / (1.0 + math.exp(min(exponent - math.log(SIGMOID_K), 700.0)))


def _cosine(epoch: int, total_epochs: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * min(epoch, total_epochs) / total_epochs))


def _constant(epoch: int, total_epochs: int) -> float:
    return 1.0


_SHAPES: dict[str, Callable[[int, int], float]] = {
    "exponential": _exponential,
    "linear": _linear,
    "sigmoid": _sigmoid,
    "cosine": _cosine,
    "constant": _constant,
}


def distillation_weight(
    kind: str, epoch: int, total_epochs: int = 100, base: float = 0.1, increasing: bool = False
) -> float:
    """Weight of the distillation loss at `epoch` (0-based): `base * shape(epoch)`.

    shapes:
    - "exponential" (the reference code's default): 0.95**epoch
    - "linear": max(1 - 0.01 * epoch, 0.05)
    - "sigmoid": k / (k + exp(100 * epoch / k)), k = 800 — ~0.999 at epoch 0, 0.5 near epoch 53.5
    - "cosine": 0.5 * (1 + cos(pi * epoch / total_epochs)), held at 0 after total_epochs
    - "constant": 1 (the static ablation)

    increasing=True returns `base * (1 - shape(epoch))`, the increasing counterpart, for every
    kind but "constant" (a constant has none; asking for it is an error).
    """
    if kind not in _SHAPES:
        raise ValueError(f"unknown distillation schedule {kind!r}; expected one of {SCHEDULES}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if total_epochs <= 0:
        raise ValueError(f"total_epochs must be positive, got {total_epochs}")
    if increasing and kind == "constant":
        raise ValueError("the 'constant' schedule has no increasing counterpart")
    shape = _SHAPES[kind](epoch, total_epochs)
    return base * (1.0 - shape if increasing else shape)


def soft_label_weights(kind: str, epoch: int, total_epochs: int, alpha: float, beta: float) -> tuple[float, float]:
    """DL-DKD++'s (alpha, beta) at `epoch`: both decay on `kind` from their start values; beta stays
    at 0.5 or above when it starts there (the reference code's floor), alpha may reach 0."""
    shape = distillation_weight(kind, epoch, total_epochs=total_epochs, base=1.0)
    beta_floor = 0.5 if beta >= 0.5 else 0.0
    return max(alpha * shape, 0.0), max(beta * shape, beta_floor)
