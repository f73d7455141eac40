"""A parameter-free motion descriptor: pooled temporal differences over a window of frames.

The baseline beside a learned video network: it says where in the frame, and in which colour,
something changed during the window and which way the change went, and nothing more.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

GRID = 4  # cells per side of the pooling grid


class FrameDifference(nn.Module):
    """(B, 3, T, S, S) normalised clips -> (B, 2 * 3 * GRID * GRID): per grid cell and channel, the
    mean absolute change between consecutive frames, and the signed change from the window's first
    half to its second half."""

    dim = 2 * 3 * GRID * GRID

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        batch, _, time = clips.shape[:3]
        cells = F.adaptive_avg_pool3d(clips, (time, GRID, GRID))  # (B, 3, T, G, G)
        if time < 2:
            return torch.zeros(batch, self.dim, dtype=clips.dtype, device=clips.device)
        full = F.adaptive_avg_pool3d((clips[:, :, 1:] - clips[:, :, :-1]).abs(), (1, GRID, GRID))
        half = time // 2
        trend = cells[:, :, time - half:].mean(2) - cells[:, :, :half].mean(2)
        return torch.cat([full.flatten(1), trend.flatten(1)], dim=1)
