"""Epoch-dependent weight of the distillation term (the "dynamic" in DL-DKD).

The kinds and their formulas follow method.md. Note their scales differ: `base` scales only the
exponential, cosine and constant kinds; linear and sigmoid start near 1 whatever `base` is.
"""

from __future__ import annotations

import math

SCHEDULES: tuple[str, ...] = ("exponential", "linear", "sigmoid", "cosine", "constant")

SIGMOID_K = 800.0


def _exponential(epoch: int, total_epochs: int, base: float) -> float:
    return base * 0.95**epoch


def _linear(epoch: int, total_epochs: int, base: float) -> float:
    return max(1.0 - 0.01 * epoch, 0.05)


def _sigmoid(epoch: int, total_epochs: int, base: float) -> float:
    """k / (k + exp(100 e / k)), k = 800: an inverted sigmoid in e, independent of total_epochs.

    Its value at e = 0 is 800/801 ~= 0.99875 (not exactly 1); it halves at e = 8 ln 800 ~= 53.5,
    is ~= 0.607 at e = 50 and ~= 0.00297 at e = 100.
    """
    exponent = 100.0 * epoch / SIGMOID_K
    # k / (k + e^x) == 1 / (1 + e^(x - ln k)), which stays finite for any epoch.
    return 1.0 / (1.0 + math.exp(min(exponent - math.log(SIGMOID_K), 700.0)))


def _cosine(epoch: int, total_epochs: int, base: float) -> float:
    return base * 0.5 * (1.0 + math.cos(math.pi * min(epoch, total_epochs) / total_epochs))


def _constant(epoch: int, total_epochs: int, base: float) -> float:
    return base


_DECREASING = {
    "exponential": _exponential,
    "linear": _linear,
    "sigmoid": _sigmoid,
    "cosine": _cosine,
    "constant": _constant,
}


def distillation_weight(
    kind: str, epoch: int, total_epochs: int = 100, base: float = 0.1, increasing: bool = False
) -> float:
    """Weight of the distillation loss at `epoch` (0-based).

    - "exponential" (default in the reference code): base * 0.95**epoch
    - "linear": max(1 - 0.01 * epoch, 0.05)
    - "sigmoid": k / (k + exp(100 * epoch / k)), k = 800 — ~0.999 at epoch 0, 0.5 near epoch 53.5
    - "cosine": base * 0.5 * (1 + cos(pi * epoch / total_epochs)), held at 0 after total_epochs
    - "constant": base (the static ablation)

    increasing=True returns 1 - w(epoch), the increasing counterpart, for every kind but
    "constant" (a constant has none; asking for it is an error).
    """
    if kind not in _DECREASING:
        raise ValueError(f"unknown distillation schedule {kind!r}; expected one of {SCHEDULES}")
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    if total_epochs <= 0:
        raise ValueError(f"total_epochs must be positive, got {total_epochs}")
    if increasing and kind == "constant":
        raise ValueError("the 'constant' schedule has no increasing counterpart")
    weight = _DECREASING[kind](epoch, total_epochs, base)
    return 1.0 - weight if increasing else weight
