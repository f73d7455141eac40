"""Student visual features: a registry of names, and video backbones over windows of frames
(torchvision's, the small network `prvr synth-backbone` trains, a parameter-free descriptor).

Importing this module is cheap (the config validator imports VISUAL_FEATURES): torch and
torchvision are imported only when a backbone is built or used.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
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
    kind: str  # "clip": per-frame teacher image embeddings; "video": a network over a window of frames
    dim: int | None  # known without loading for fixed architectures; None where the weights decide
    min_frames: int = 1  # the shortest window the backbone accepts
    family: str = "torchvision"  # video kinds: "torchvision" | "tiny" (models.tiny_video) | "descriptor"


VISUAL_FEATURES: dict[str, VisualSpec] = {
    "clip": VisualSpec("clip", "clip", None, family="clip"),
    "r2plus1d_18": VisualSpec("r2plus1d_18", "video", 512),
    "r3d_18": VisualSpec("r3d_18", "video", 512),
    "mc3_18": VisualSpec("mc3_18", "video", 512),
    "s3d": VisualSpec("s3d", "video", 1024, min_frames=S3D_MIN_FRAMES),
    # A small (2+1)D network; its weights file (from `prvr synth-backbone`) sets its width.
    "tiny_r2plus1d": VisualSpec("tiny_r2plus1d", "video", None, min_frames=2, family="tiny"),
    # Pooled temporal differences: no weights at all, the baseline beside the learned ones.
    "frame_diff": VisualSpec("frame_diff", "video", 96, min_frames=2, family="descriptor"),
}
WEIGHT_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def is_weights_file(weights: str | None) -> bool:
    """A local weights file (a path), as opposed to a torchvision weights name or None."""
    return weights is not None and ("/" in weights or weights.endswith(WEIGHT_FILE_SUFFIXES))


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
            f"unknown torchvision weights {weights!r} for {name!r}; valid: {list(enum.__members__)}, "
            f"a local weights file (a path ending in {', '.join(WEIGHT_FILE_SUFFIXES)}), or None"
        )
    return enum[member_name]


_CLASSIFIER_PREFIXES = ("fc.", "classifier.")


def _drop_classifier(model: nn.Module) -> None:
    """Replace the classification head by identity so forward returns pooled features."""
    from torch import nn

    if hasattr(model, "fc"):  # VideoResNet: avgpool -> flatten -> fc
        model.fc = nn.Identity()
    elif hasattr(model, "classifier"):  # S3D: avgpool -> classifier (1x1x1 conv) -> mean over T, H, W
        model.classifier = nn.Identity()
    else:
        raise NotImplementedError(f"don't know the classifier head of {type(model).__name__}")


def _load_state_dict_file(path: Path) -> dict:
    """A state_dict from a local file (torch or safetensors), never unpickling arbitrary objects."""
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path}: not a readable weights file ({error})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # checkpoints that wrap the weights
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds no state_dict")
    return state


def _local_file(name: str, weights: str) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ValueError(f"weights file for {name!r} not found: {path}")
    return path.resolve()


@dataclass
class _Built:
    model: nn.Module
    input_size: int
    resize_short: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dim: int
    min_frames: int
    url: str | None = None


def _build_torchvision(spec: VisualSpec, weights: str | None, seed: int) -> _Built:
    import torch
    from torchvision.models import get_model

    enum_member = None if is_weights_file(weights) else _resolve_weights(spec.name, weights)
    # Random init consumes the global RNG: seed it without disturbing the caller's RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = get_model(spec.name, weights=enum_member)
    _drop_classifier(model)
    if is_weights_file(weights):
        path = _local_file(spec.name, weights)
        state = {k: v for k, v in _load_state_dict_file(path).items() if not k.startswith(_CLASSIFIER_PREFIXES)}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            raise ValueError(f"{path} does not hold {spec.name} weights: {str(error).splitlines()[0]}") from None
    # Input geometry and normalisation from the weights' eval preset (the default weights' otherwise):
    # metadata only, no download.
    preset = (enum_member or _weights_enum(spec.name).DEFAULT).transforms()
    return _Built(model, int(preset.crop_size[0]), int(min(preset.resize_size)), tuple(float(m) for m in preset.mean),
                  tuple(float(s) for s in preset.std), int(spec.dim), spec.min_frames,
                  url=enum_member.url if enum_member is not None else None)


def _build_tiny(spec: VisualSpec, weights: str | None, seed: int) -> _Built:
    import torch

    from models.tiny_video import TinyR2Plus1D, TinyVideoConfig, TinyVideoWeights, load_tiny_video_weights

    if weights is not None and not is_weights_file(weights):
        raise ValueError(f"{spec.name} takes a weights file made by `prvr synth-backbone` (or None), not {weights!r}")
    if weights is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = TinyR2Plus1D(TinyVideoConfig())
        loaded = TinyVideoWeights(model.config, model.state_dict())
    else:
        loaded = load_tiny_video_weights(_local_file(spec.name, weights))
        model = loaded.build()
    size = loaded.config.input_size
    return _Built(model, size, size, loaded.mean, loaded.std, loaded.config.dim, loaded.config.min_frames)


def _build_descriptor(spec: VisualSpec, weights: str | None, seed: int) -> _Built:
    from models.frame_diff import FrameDifference

    if weights is not None:
        raise ValueError(f"{spec.name} has no weights; leave extract.visual_weights.{spec.name} unset")
    return _Built(FrameDifference(), 64, 64, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), FrameDifference.dim, spec.min_frames)


_BUILDERS = {"torchvision": _build_torchvision, "tiny": _build_tiny, "descriptor": _build_descriptor}


class VideoBackbone:
    """A frozen video network without its head: (B, W, H, Wd, 3) uint8 clips -> (B, dim).

    weights: None (random init seeded with `seed`; nothing for a descriptor), a torchvision
    weights name (downloaded by torchvision the first time), or a local weights file: a torchvision
    state_dict for the torchvision architectures (so a cluster without internet can use them), or a
    `prvr synth-backbone` file for tiny_r2plus1d.
    """

    def __init__(self, name: str, weights: str | None, device: str = "cpu", seed: int = 0):
        spec = VISUAL_FEATURES.get(name)
        if spec is None or spec.kind != "video":
            video = sorted(k for k, v in VISUAL_FEATURES.items() if v.kind == "video")
            raise ValueError(f"unknown video backbone {name!r}; known: {video}")
        import torch

        from models.clip import resolve_device
        from storage.fingerprint import file_sha256

        self.name = name
        self.seed = seed
        self.device = torch.device(resolve_device(device))
        built = _BUILDERS[spec.family](spec, weights, seed)
        self._weights_file = _local_file(name, weights) if is_weights_file(weights) else None
        self._weights_sha256 = file_sha256(self._weights_file) if self._weights_file else None
        self._url = built.url
        self.weights: str | None = (None if weights is None else str(self._weights_file) if self._weights_file
                                    else _resolve_weights(name, weights).name)
        self.model: nn.Module = built.model.eval().requires_grad_(False).to(self.device)
        self.min_frames = built.min_frames
        self.input_size: int = built.input_size
        self.resize_short: int = built.resize_short
        self._mean = built.mean
        self._std = built.std
        self.dim: int = built.dim

    def identity(self) -> dict[str, Any]:
        identity: dict[str, Any] = {"backbone": self.name, "weights": self.weights, "input_size": self.input_size}
        if self._weights_file is not None:
            identity["weights"] = {"file": self._weights_file.name, "sha256": self._weights_sha256}
        elif self.weights is not None:
            identity["url"] = self._url
        elif VISUAL_FEATURES[self.name].family != "descriptor":
            identity["seed"] = self.seed  # random weights depend on the seed
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
