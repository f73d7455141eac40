"""A small (2+1)D convolutional video network: the synthetic world's counterpart of I3D.

Each block factorises a 3D convolution into a spatial 3x3 convolution then a temporal 3-tap one
(as R(2+1)D does), so the network sees how a window of frames changes, which CLIP on single
frames cannot. Its pooled embedding is the student's motion-aware input; its classifier head
exists only for pretraining on actions (`prvr synth-backbone`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TinyVideoConfig:
    channels: tuple[int, ...] = (16, 32, 64, 128)  # per block; the last is the embedding size
    temporal_strides: tuple[int, ...] = (1, 1, 2, 1)  # time is halved once, mid-network
    input_size: int = 56  # square frames the network reads
    classes: int = 12  # pretraining labels (the head is unused for features)
    min_frames: int = 2  # the shortest window that keeps one time step after the strides

    def __post_init__(self) -> None:
        if len(self.channels) != len(self.temporal_strides) or not self.channels:
            raise ValueError("channels and temporal_strides must have the same, non-zero length")
        if self.input_size < 2 ** len(self.channels):
            raise ValueError(f"input_size {self.input_size} is too small for {len(self.channels)} halvings")

    @property
    def dim(self) -> int:
        return self.channels[-1]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TinyVideoConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def _block(c_in: int, c_out: int, temporal_stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False),
        nn.BatchNorm3d(c_out), nn.ReLU(inplace=True),
        nn.Conv3d(c_out, c_out, (3, 1, 1), stride=(temporal_stride, 1, 1), padding=(1, 0, 0), bias=False),
        nn.BatchNorm3d(c_out), nn.ReLU(inplace=True),
    )


class TinyR2Plus1D(nn.Module):
    """(B, 3, T, S, S) normalised clips -> (B, dim) pooled embeddings; `classify` adds the head."""

    def __init__(self, config: TinyVideoConfig):
        super().__init__()
        self.config = config
        widths = (3, *config.channels)
        self.blocks = nn.Sequential(*(_block(widths[i], widths[i + 1], s) for i, s in enumerate(config.temporal_strides)))
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.head = nn.Linear(config.dim, config.classes)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.pool(self.blocks(clips)).flatten(1)

    def classify(self, clips: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward(clips))


# ---- weights file: the network, its preprocessing and its labels in one file -------------
WEIGHTS_FORMAT = "prvr-tiny-video/1"
# Normalisation of 0..255 frames: (x / 255 - mean) / std per channel. The synthetic world's frames
# are dark backgrounds with bright objects.
DEFAULT_MEAN = (0.3, 0.3, 0.3)
DEFAULT_STD = (0.25, 0.25, 0.25)


@dataclass(frozen=True)
class TinyVideoWeights:
    config: TinyVideoConfig
    state_dict: dict[str, torch.Tensor]
    mean: tuple[float, float, float] = DEFAULT_MEAN
    std: tuple[float, float, float] = DEFAULT_STD
    labels: tuple[str, ...] = ()
    about: dict | None = None  # how it was trained (world, seed, accuracy): for people, not for loading

    def build(self) -> TinyR2Plus1D:
        model = TinyR2Plus1D(self.config)
        model.load_state_dict(self.state_dict)
        return model


def save_tiny_video_weights(path, weights: TinyVideoWeights) -> None:
    """Write atomically (a partial file never carries the final name); loads with weights_only=True."""
    import os
    from pathlib import Path

    path = Path(path)
    payload = {
        "format": WEIGHTS_FORMAT, "config": weights.config.to_dict(),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in weights.state_dict.items()},
        "mean": list(weights.mean), "std": list(weights.std), "labels": list(weights.labels),
        "about": weights.about or {},
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    torch.save(payload, tmp)
    tmp.replace(path)


def load_tiny_video_weights(path) -> TinyVideoWeights:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated file, not a torch file, unsafe content
        raise ValueError(f"{path}: not a readable weights file ({error})") from None
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{path}: not a {WEIGHTS_FORMAT} file (made by `prvr synth-backbone`)")
    return TinyVideoWeights(
        config=TinyVideoConfig.from_dict(payload["config"]), state_dict=payload["state_dict"],
        mean=tuple(payload["mean"]), std=tuple(payload["std"]), labels=tuple(payload["labels"]),
        about=payload.get("about"),
    )
