"""Student visual features: a registry of names, and torchvision video backbones.

Importing this module is cheap (the config validator imports VISUAL_FEATURES): torch and
torchvision are imported only when a backbone is built or used.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

# S3D's features end in a (2, 7, 7) average pool after a total temporal stride of 8: with 224x224
# input, 12 frames leave 1 temporal step (fails), 13 leave 2. torchvision's weights meta says 14.
S3D_MIN_FRAMES = 13


@dataclass(frozen=True)
class VisualSpec:
    name: str
    kind: str  # "clip": per-frame teacher image embeddings; "video": a torchvision video backbone over a window
    dim: int | None  # known without loading for video backbones; None for clip (depends on the CLIP)
    min_frames: int = 1  # the shortest window the backbone accepts


VISUAL_FEATURES: dict[str, VisualSpec] = {
    "clip": VisualSpec("clip", "clip", None),
    "r2plus1d_18": VisualSpec("r2plus1d_18", "video", 512),
    "r3d_18": VisualSpec("r3d_18", "video", 512),
    "mc3_18": VisualSpec("mc3_18", "video", 512),
    "s3d": VisualSpec("s3d", "video", 1024, min_frames=S3D_MIN_FRAMES),
}


def _weights_enum(name: str) -> Any:
    from torchvision.models import get_model_weights

    return get_model_weights(name)


def _resolve_weights(name: str, weights: str | None) -> Any:
    """A weights name ("KINETICS400_V1", "DEFAULT", or "R2Plus1D_18_Weights.KINETICS400_V1") -> enum member."""
    if weights is None:
        return None
    enum = _weights_enum(name)
    member_name = weights.removeprefix(enum.__name__ + ".")
    if member_name not in enum.__members__:
        raise ValueError(
            f"unknown torchvision weights {weights!r} for {name!r}; valid: {list(enum.__members__)} or None"
        )
    return enum[member_name]


def _drop_classifier(model: nn.Module) -> None:
    """Replace the classification head by identity so forward returns pooled features."""
    from torch import nn

    if hasattr(model, "fc"):  # VideoResNet: avgpool -> flatten -> fc
        model.fc = nn.Identity()
    elif hasattr(model, "classifier"):  # S3D: avgpool -> classifier (1x1x1 conv) -> mean over T, H, W
        model.classifier = nn.Identity()
    else:
        raise NotImplementedError(f"don't know the classifier head of {type(model).__name__}")


class VideoBackbone:
    """A frozen torchvision video classifier without its head: (B, W, H, Wd, 3) uint8 clips -> (B, dim)."""

    def __init__(self, name: str, weights: str | None, device: str = "cpu", seed: int = 0):
        spec = VISUAL_FEATURES.get(name)
        if spec is None or spec.kind != "video":
            video = sorted(k for k, v in VISUAL_FEATURES.items() if v.kind == "video")
            raise ValueError(f"unknown video backbone {name!r}; known: {video}")
        import torch
        from torchvision.models import get_model

        from models.clip import resolve_device

        self.name = name
        self.seed = seed
        self.device = torch.device(resolve_device(device))
        self.min_frames = spec.min_frames
        self._weights = _resolve_weights(name, weights)
        self.weights: str | None = None if self._weights is None else self._weights.name

        # Random init consumes the global RNG: seed it without disturbing the caller's RNG stream.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = get_model(name, weights=self._weights)
        _drop_classifier(model)
        self.model: nn.Module = model.eval().requires_grad_(False).to(self.device)

        # Input geometry and normalisation from the weights' eval preset (the default weights when random).
        preset = (self._weights or _weights_enum(name).DEFAULT).transforms()
        self.input_size: int = int(preset.crop_size[0])
        self.resize_short: int = int(min(preset.resize_size))
        self._mean = tuple(float(m) for m in preset.mean)
        self._std = tuple(float(s) for s in preset.std)
        self.dim: int = int(spec.dim)  # every video entry of VISUAL_FEATURES states its dim

    def identity(self) -> dict[str, Any]:
        identity: dict[str, Any] = {"backbone": self.name, "weights": self.weights, "input_size": self.input_size}
        if self._weights is None:
            identity["seed"] = self.seed  # random weights depend on the seed
        else:
            identity["url"] = self._weights.url
        return identity

    def fit_clips(self, clips: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, W, H, Wd, 3) uint8 clips of any frame size -> (B, W, S, S, 3) uint8 on the device.

        Short side resized to the preset's resize size (bilinear, antialiased; the preset squashes to
        a fixed 4:3 size instead, which distorts other aspect ratios), then centre crop. Geometry
        only, lossless (the resize rounds to whole values): clips of videos of different sizes can
        be batched together once fitted, and a fitted clip passes `preprocess` unchanged.
        """
        import torch

        from models.clip import as_uint8_frames, centre_crop_or_pad, resize_short_side

        tensor = as_uint8_frames(clips, 5, "clips")
        batch, window = tensor.shape[:2]
        frames = tensor.to(self.device, non_blocking=True).flatten(0, 1).permute(0, 3, 1, 2).float()
        frames = resize_short_side(frames, self.resize_short, mode="bilinear")
        frames = centre_crop_or_pad(frames, self.input_size, 0.0)
        frames = frames.to(torch.uint8).permute(0, 2, 3, 1)
        return frames.reshape(batch, window, self.input_size, self.input_size, 3).contiguous()

    def preprocess(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, W, H, Wd, 3) uint8 -> (B, 3, W, S, S) normalised float32 on the device."""
        import torch

        batch, window = clips.shape[:2]
        frames = self.fit_clips(clips).flatten(0, 1).permute(0, 3, 1, 2).float()
        mean = torch.tensor(self._mean, device=self.device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self._std, device=self.device).view(1, 3, 1, 1) * 255.0
        frames = (frames - mean) / std
        return frames.view(batch, window, 3, self.input_size, self.input_size).permute(0, 2, 1, 3, 4)

    def encode_clips(self, clips: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(B, W, H, Wd, 3) uint8 RGB clips of W frames each -> (B, dim) float32 CPU pooled features."""
        import torch

        from models.clip import as_uint8_frames, autocast_context

        tensor = as_uint8_frames(clips, 5, "clips")
        if tensor.shape[1] < self.min_frames:
            raise ValueError(
                f"{self.name} needs clips of at least {self.min_frames} frames, got {tensor.shape[1]}"
            )
        if tensor.shape[0] == 0:
            return torch.empty(0, self.dim)
        with torch.inference_mode(), autocast_context(self.device):
            features = self.model(self.preprocess(tensor))
        return features.float().flatten(1).cpu()


_backbone_cache: dict[tuple[str, str | None, str, int], VideoBackbone] = {}
_backbone_cache_lock = threading.Lock()


def load_video_backbone(name: str, weights: str | None, device: str = "cpu", seed: int = 0) -> VideoBackbone:
    """A process-wide shared VideoBackbone per (name, weights, device, seed)."""
    from models.clip import resolve_device

    # The seed only matters for random init; pretrained weights ignore it.
    key = (name, weights, resolve_device(device), seed if weights is None else 0)
    with _backbone_cache_lock:
        if key not in _backbone_cache:
            _backbone_cache[key] = VideoBackbone(name, weights, device=key[2], seed=key[3])
        return _backbone_cache[key]
