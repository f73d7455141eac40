"""Dropout that is cheap on CPU: the keep mask comes from 16-bit lanes of 64-bit random words.

PyTorch's CPU dropout draws one Bernoulli sample per element from a serial generator; on the demo
that was about 30% of a training epoch. Here one 64-bit draw (``random_``, the same global,
seeded generator) gives four uniform 16-bit lanes, and an element is kept when its lane is at or
above a threshold, so the drop probability is ``p`` rounded to a multiple of 1/65536 (0.1 ->
0.100006) and kept elements are scaled by the inverse of that exact keep probability: the output's
expectation is the input. Deterministic under ``torch.manual_seed``; a different random stream
from ``nn.Dropout``, so a model trained with it is a different (equally distributed) draw.

Off CPU, where the fused kernel is fast, ``Dropout`` calls ``F.dropout``. The class-wide switch
``Dropout.lanes`` turns the lane masks off everywhere, for bench/train_epoch.py's side-by-side
measurement against PyTorch's own dropout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LEVELS = 1 << 16  # values of a 16-bit lane
_LANES_PER_WORD = 4  # 16-bit lanes in one 64-bit random word
_INT16_MIN = -(1 << 15)


def drop_levels(p: float) -> int:
    """How many of the 65,536 lane values drop an element: p quantised to a multiple of 1/65536."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    return round(p * _LEVELS)


def keep_scale(p: float) -> float:
    """The factor kept elements are multiplied by: 1 / (exact keep probability of the lane mask)."""
    return _LEVELS / (_LEVELS - drop_levels(p))


def keep_mask(shape: torch.Size | tuple[int, ...], device: torch.device, p: float) -> Tensor:
    """A bool tensor of ``shape``, True where an element is kept, each with probability 1 - p (quantised)."""
    numel = math.prod(shape)
    words = -(-numel // _LANES_PER_WORD)
    # from = int64's minimum with no upper bound draws all 64 bits (random_() alone leaves the sign bit 0)
    bits = torch.empty(words, dtype=torch.int64, device=device).random_(-(1 << 63), None)
    lanes = bits.view(torch.int16)[:numel].view(shape)
    return lanes >= _INT16_MIN + drop_levels(p)


def apply_keep(x: Tensor, keep: Tensor, p: float) -> Tensor:
    """x where kept, scaled; 0 where dropped. ``where`` rather than ``x * keep``: about 4x faster on CPU."""
    return torch.where(keep, x, 0.0).mul_(keep_scale(p))


def lane_dropout(x: Tensor, p: float) -> Tensor:
    """Training-mode dropout of x with a lane mask (any device)."""
    return apply_keep(x, keep_mask(x.shape, x.device, p), p)


class Dropout(nn.Module):
    """Drop-in for ``nn.Dropout`` (no parameters, so state dicts are unchanged)."""

    lanes = True  # class-wide: False = PyTorch's own dropout on every device

    def __init__(self, p: float) -> None:
        super().__init__()
        drop_levels(p)  # validates
        self.p = p

    def uses_lanes(self, x: Tensor) -> bool:
        return self.lanes and x.device.type == "cpu"

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.uses_lanes(x):
            return lane_dropout(x, self.p)
        return F.dropout(x, self.p, training=True)

    def rows_of(self, rows: Tensor, packing) -> Tensor:
        """Dropout of the valid rows ``rows = packing.gather(x)`` of a padded x (models.student.RowPacking),
        with exactly the mask (and the random stream afterwards) that ``forward(x)`` would have used
        on those rows: the mask is drawn for the whole padded tensor, then gathered."""
        if not self.training or self.p == 0.0:
            return rows
        shape = packing.padded_shape(rows.shape[-1])
        if self.uses_lanes(rows):
            return apply_keep(rows, packing.gather(keep_mask(shape, rows.device, self.p)), self.p)
        # PyTorch's CPU dropout draws bernoulli(1 - p) then divides by 1 - p; drawn the same way here
        noise = torch.empty(shape, dtype=rows.dtype, device=rows.device).bernoulli_(1 - self.p).div_(1 - self.p)
        return rows * packing.gather(noise)

    def swapped_of(self, x: Tensor, dim0: int, dim1: int) -> Tensor:
        """Dropout of ``x = y.transpose(dim0, dim1)`` (contiguous, another layout of the same values) with
        exactly the mask that ``forward(y)`` would have drawn: drawn in y's shape, then transposed."""
        if not self.training or self.p == 0.0:
            return x
        shape = x.transpose(dim0, dim1).shape
        if self.uses_lanes(x):
            # the bool mask made contiguous (a quarter of x's bytes), so that the output keeps x's layout
            return apply_keep(x, keep_mask(shape, x.device, self.p).transpose(dim0, dim1).contiguous(), self.p)
        noise = torch.empty(shape, dtype=x.dtype, device=x.device).bernoulli_(1 - self.p).div_(1 - self.p)
        return x * noise.transpose(dim0, dim1).contiguous()

    def extra_repr(self) -> str:
        return f"p={self.p}"
