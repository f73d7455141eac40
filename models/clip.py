"""open_clip wrapper: the teacher's image/text embeddings and the student's text-token inputs.

Frames are preprocessed with torch ops on the model's device (no PIL), following open_clip's eval
transform: resize (bicubic, antialiased) then centre crop, scale to [0, 1], normalise.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from storage.fingerprint import file_sha256

CONFIG_DIR = Path(__file__).parent / "open_clip_configs"

# Pool types whose pooled token sits at the tokenizer's end-of-text token.
_EOT_POOL_TYPES = ("argmax", "eos")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")

_registered_config_stems: frozenset[str] | None = None
_register_lock = threading.Lock()


def register_model_configs() -> None:
    """Make the json configs in CONFIG_DIR known to open_clip (e.g. "prvr-tiny").

    Idempotent; re-registers only when the folder gained or lost a config since the last call.
    """
    global _registered_config_stems
    import open_clip

    stems = frozenset(p.stem for p in CONFIG_DIR.glob("*.json"))
    with _register_lock:
        if stems == _registered_config_stems:
            return
        open_clip.add_model_config(CONFIG_DIR)
        _registered_config_stems = stems


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when available else "cpu"; a CUDA device without CUDA is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    parsed = torch.device(device)  # raises on malformed strings
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available on this machine")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise RuntimeError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def autocast_context(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision on CUDA (bfloat16 where supported); full precision elsewhere."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def _batches(n: int, batch_size: int | None) -> Iterator[slice]:
    step = n if not batch_size else batch_size
    for start in range(0, n, max(step, 1)):
        yield slice(start, min(start + step, n))


def resized_size(height: int, width: int, size: int, resize_mode: str) -> tuple[int, int]:
    """Output (h, w) of open_clip's eval resize for a square target `size`.

    "shortest": short side -> size, long side int(size * long / short) (torchvision Resize(int) rule);
    "longest": long side -> size, short side scaled likewise; "squash": (size, size).
    """
    if resize_mode == "squash":
        return size, size
    short, long = min(height, width), max(height, width)
    if resize_mode == "shortest":
        new_short, new_long = size, int(size * long / short)
    elif resize_mode == "longest":
        new_short, new_long = int(size * short / long), size
    else:
        raise ValueError(f"unknown resize_mode {resize_mode!r}")
    return (new_short, new_long) if height <= width else (new_long, new_short)


def resize_frames(images: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Antialiased resize of (N, C, H, W) float images holding 0..255 values.

    Like resizing uint8 images (PIL, torchvision): overshoot is clipped and values rounded.
    """
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    images = F.interpolate(images, size=size, mode=mode, align_corners=False, antialias=True)
    return images.clamp_(0.0, 255.0).round_()


def resize_short_side(images: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    """Resize (N, C, H, W) 0..255 float images so the short side is `size`, keeping the aspect ratio."""
    height, width = images.shape[-2:]
    return resize_frames(images, resized_size(height, width, size, "shortest"), mode)


def centre_crop_or_pad(images: torch.Tensor, size: int, fill: float) -> torch.Tensor:
    """Centre crop (N, C, H, W) to size x size, padding with `fill` where the image is smaller."""
    height, width = images.shape[-2:]
    pad_h, pad_w = max(size - height, 0), max(size - width, 0)
    if pad_h or pad_w:
        # Same split as torchvision's center_crop padding: the extra pixel goes to the bottom/right.
        images = F.pad(images, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2), value=fill)
        height, width = images.shape[-2:]
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return images[..., top : top + size, left : left + size]


def as_uint8_frames(frames: np.ndarray | torch.Tensor, ndim: int, what: str) -> torch.Tensor:
    """Validate a channels-last RGB uint8 array/tensor and return it as a torch tensor (no copy when possible)."""
    tensor = torch.from_numpy(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if tensor.dtype != torch.uint8:
        raise ValueError(f"{what} must be uint8 RGB, got dtype {tensor.dtype}")
    if tensor.ndim != ndim or tensor.shape[-1] != 3:
        raise ValueError(f"{what} must have {ndim} dims with 3 channels last, got shape {tuple(tensor.shape)}")
    return tensor


@dataclass(frozen=True)
class _TextTower:
    """The pieces of an open_clip causal text transformer, wherever the model keeps them."""

    token_embedding: nn.Embedding
    positional_embedding: torch.Tensor
    transformer: nn.Module
    ln_final: nn.Module
    attn_mask: torch.Tensor | None
    text_projection: nn.Linear | torch.Tensor | None
    pool_type: str
    eos_id: int | None

    @property
    def width(self) -> int:
        return int(self.token_embedding.embedding_dim)


def _text_tower(model: nn.Module) -> _TextTower | str:
    """The model's text tower, or a message saying why its tokens are not supported."""
    from open_clip.transformer import TextTransformer

    if hasattr(model, "token_embedding") and hasattr(model, "ln_final"):  # open_clip.CLIP
        return _TextTower(
            token_embedding=model.token_embedding,
            positional_embedding=model.positional_embedding,
            transformer=model.transformer,
            ln_final=model.ln_final,
            attn_mask=model.attn_mask,
            text_projection=model.text_projection,
            pool_type=model.text_pool_type,
            eos_id=getattr(model, "text_eos_id", None),
        )
    text = getattr(model, "text", None)
    if not isinstance(text, TextTransformer):  # e.g. HFTextEncoder
        return f"text tower {type(text).__name__} is not an open_clip TextTransformer"
    if text.cls_emb is not None:
        return "text towers with an appended class token (CoCa style) do not pool at the end-of-text token"
    if text.use_pad_mask:
        return "bidirectional text towers with padding masks are not supported"
    return _TextTower(
        token_embedding=text.token_embedding,
        positional_embedding=text.positional_embedding,
        transformer=text.transformer,
        ln_final=text.ln_final,
        attn_mask=text.attn_mask,
        text_projection=text.text_projection,
        pool_type=text.pool_type,
        eos_id=getattr(text, "eos_id", None),
    )


def project_pooled(projection: nn.Linear | torch.Tensor | None, pooled: torch.Tensor) -> torch.Tensor:
    if projection is None:
        return pooled
    if isinstance(projection, nn.Linear):
        return projection(pooled)
    return pooled @ projection


@contextlib.contextmanager
def _without_random_init_notice() -> Iterator[None]:
    """open_clip warns "No pretrained weights loaded ... initialized randomly" (through the root
    logger) also when random weights are what was asked for: pretrained=None."""
    def keep(record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded for model")

    logging.getLogger().addFilter(keep)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(keep)


class ClipEncoder:
    """A frozen open_clip model with batch helpers returning float32 CPU tensors.

    pretrained: None -> random init seeded with `seed`; a tag known to open_clip for `model`
    (downloaded through open_clip, needs internet the first time); or a local checkpoint path.
    OpenAI CLIP weights use QuickGELU: load them from a file with the "-quickgelu" model name
    (e.g. "ViT-B-32-quickgelu"). For a tag, a QuickGELU mismatch is fixed automatically.
    """

    def __init__(self, model: str, pretrained: str | None, device: str = "cpu", seed: int = 0):
        import open_clip

        register_model_configs()
        self.model_name = model
        self.pretrained = pretrained
        self.seed = seed
        self.device = torch.device(resolve_device(device))
        self._checkpoint_path: Path | None = None
        self._identity: dict[str, Any] | None = None

        has_schema = model.startswith(("hf-hub:", "local-dir:"))
        if not has_schema and model not in open_clip.list_models():
            raise ValueError(
                f"unknown open_clip model {model!r}; known include the configs in {CONFIG_DIR} "
                f"and open_clip.list_models() (e.g. ViT-B-32, ViT-B-32-quickgelu, ViT-L-14)"
            )

        create_kwargs: dict[str, Any] = {}
        if pretrained is not None and not has_schema:
            tag_cfg = open_clip.get_pretrained_cfg(model, pretrained)
            if tag_cfg:
                model_cfg = open_clip.get_model_config(model) or {}
                if tag_cfg.get("quick_gelu", False) and not model_cfg.get("quick_gelu", False):
                    create_kwargs["force_quick_gelu"] = True  # the weights were trained with QuickGELU
            elif Path(pretrained).expanduser().is_file():
                self._checkpoint_path = Path(pretrained).expanduser().resolve()
            else:
                tags = open_clip.list_pretrained_tags_by_model(model)
                raise ValueError(
                    f"pretrained {pretrained!r} is neither a known tag for {model!r} nor an existing file. "
                    f"Valid tags for {model!r}: {tags or 'none (this model has no published weights)'}; "
                    f"or pass a local checkpoint path ({', '.join(_CHECKPOINT_SUFFIXES)}), or None for random init."
                )

        # Random init consumes the global RNG: seed it, without disturbing the caller's RNG stream.
        quiet = _without_random_init_notice() if pretrained is None else contextlib.nullcontext()
        with torch.random.fork_rng(devices=[]), quiet:
            torch.manual_seed(seed)
            try:
                clip_model = open_clip.create_model(
                    model,
                    pretrained=str(self._checkpoint_path) if self._checkpoint_path else pretrained,
                    device="cpu",
                    weights_only=True,
                    **create_kwargs,
                )
            except Exception as error:
                if self._checkpoint_path is None:
                    raise
                raise ValueError(
                    f"could not load checkpoint {self._checkpoint_path} into open_clip model {model!r}: {error}. "
                    f"The model name must match the checkpoint's architecture; OpenAI CLIP weights need the "
                    f"'-quickgelu' model name (e.g. 'ViT-B-32-quickgelu'); TorchScript archives "
                    f"(OpenAI's original .pt) cannot be loaded with weights_only=True, use an open_clip "
                    f"state_dict (.bin/.safetensors) instead."
                ) from error

        clip_model.eval().requires_grad_(False)
        self.model: nn.Module = clip_model.to(self.device)

        preprocess_cfg = dict(getattr(clip_model.visual, "preprocess_cfg", {}) or {})
        size = preprocess_cfg.get("size", getattr(clip_model.visual, "image_size", 224))
        if isinstance(size, (tuple, list)):
            if len(set(size)) != 1:
                raise NotImplementedError(f"non-square image towers are not supported (size {size})")
            size = size[0]
        self.image_size: int = int(size)
        self._mean = tuple(preprocess_cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self._std = tuple(preprocess_cfg.get("std", open_clip.OPENAI_DATASET_STD))
        self._interpolation: str = preprocess_cfg.get("interpolation", "bicubic")
        self._resize_mode: str = preprocess_cfg.get("resize_mode", "shortest")
        self._fill_color: int = int(preprocess_cfg.get("fill_color", 0))
        if self._interpolation not in ("bicubic", "bilinear"):
            self._interpolation = "bicubic"  # open_clip uses bicubic for anything else at eval ("random")

        self.tokenizer = open_clip.get_tokenizer(model)
        self._text_tower = _text_tower(clip_model)
        text = getattr(clip_model, "text", None)
        self.context_length: int = int(
            getattr(clip_model, "context_length", None) or getattr(text, "context_length", None)
            or self.tokenizer.context_length
        )
        self.token_dim: int | None = (
            self._text_tower.width if isinstance(self._text_tower, _TextTower) else None
        )
        with torch.inference_mode(), autocast_context(self.device):
            probe = clip_model.encode_text(self.tokenizer([""]).to(self.device))
        self.embed_dim: int = int(probe.shape[-1])

    # ------------------------------------------------------------------ identity

    def identity(self) -> dict[str, Any]:
        """JSON-able description of the weights, for cache fingerprints."""
        if self._identity is None:
            identity: dict[str, Any] = {"model": self.model_name, "image_size": self.image_size}
            if self._checkpoint_path is not None:
                identity["pretrained"] = {
                    "path": str(self._checkpoint_path),
                    "size": self._checkpoint_path.stat().st_size,
                    "sha256": file_sha256(self._checkpoint_path),
                }
            else:
                identity["pretrained"] = self.pretrained
                if self.pretrained is None:
                    identity["seed"] = self.seed  # random weights depend on the seed
            self._identity = identity
        return dict(self._identity)

    # ------------------------------------------------------------------ images

    def fit_frames(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 frames of any size -> (N, S, S, 3) uint8 on the model's device: the
        eval transform's geometry (resize, centre crop or pad) without normalisation.

        Lossless to split here: the resize rounds to whole 0..255 values. Frames of videos of
        different sizes can be batched together once fitted; a fitted frame passes `preprocess`'s
        geometry unchanged.
        """
        pixels = as_uint8_frames(frames, 4, "frames")
        images = pixels.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        height, width = images.shape[-2:]
        new_size = resized_size(height, width, self.image_size, self._resize_mode)
        images = resize_frames(images, new_size, self._interpolation)
        images = centre_crop_or_pad(images, self.image_size, float(self._fill_color))
        return images.to(torch.uint8).permute(0, 2, 3, 1).contiguous()

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 on any device -> (N, 3, S, S) normalised float32 on the model's device."""
        images = self.fit_frames(frames).permute(0, 3, 1, 2).float()
        mean = torch.tensor(self._mean, device=self.device).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(self._std, device=self.device).view(1, 3, 1, 1) * 255.0
        return (images - mean) / std

    @torch.inference_mode()
    def encode_frames(
        self, frames: np.ndarray | torch.Tensor, batch_size: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, H, W, 3) uint8 RGB frames -> (normalised, un-normalised) image embeddings, each (N, embed_dim)."""
        pixels = as_uint8_frames(frames, 4, "frames")
        raw = torch.empty(pixels.shape[0], self.embed_dim)
        for part in _batches(pixels.shape[0], batch_size):
            with autocast_context(self.device):
                raw[part] = self.model.encode_image(self.preprocess(pixels[part])).float().cpu()
        return F.normalize(raw, dim=-1), raw

    # ------------------------------------------------------------------ text

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """(Q, context_length) int64 token ids."""
        if isinstance(texts, str):
            raise TypeError("texts must be a list of strings, not a single string")
        return self.tokenizer(list(texts))

    @torch.inference_mode()
    def encode_sentences(self, texts: list[str], batch_size: int | None = None) -> torch.Tensor:
        """(Q, embed_dim) L2-normalised sentence embeddings, float32 CPU."""
        ids = self.tokenize(texts)
        out = torch.empty(ids.shape[0], self.embed_dim)
        for part in _batches(ids.shape[0], batch_size):
            with autocast_context(self.device):
                out[part] = self.model.encode_text(ids[part].to(self.device)).float().cpu()
        return F.normalize(out, dim=-1)

    def _require_text_tower(self) -> _TextTower:
        if isinstance(self._text_tower, str):
            raise NotImplementedError(
                f"per-token text outputs are not supported for {self.model_name!r}: {self._text_tower}"
            )
        if self._text_tower.pool_type not in _EOT_POOL_TYPES:
            raise NotImplementedError(
                f"per-token text outputs need a tower pooled at the end-of-text token "
                f"(pool_type in {_EOT_POOL_TYPES}); {self.model_name!r} uses {self._text_tower.pool_type!r}"
            )
        return self._text_tower

    def eot_positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Index of the pooled end-of-text token per row, exactly as open_clip's pooling picks it."""
        tower = self._require_text_tower()
        if tower.pool_type == "argmax":
            return ids.argmax(dim=-1)  # the CLIP tokenizer's EOT has the largest id
        return (ids == tower.eos_id).int().argmax(dim=-1)

    def token_states(self, ids: torch.Tensor) -> torch.Tensor:
        """(Q, context_length) token ids on the device -> (Q, L, token_dim) text transformer outputs after
        ln_final, differentiable (encode_tokens is the inference wrapper; synth.teacher trains through it)."""
        tower = self._require_text_tower()
        cast_dtype = tower.transformer.get_cast_dtype()
        x = tower.token_embedding(ids).to(cast_dtype)
        x = x + tower.positional_embedding.to(cast_dtype)
        x = tower.transformer(x, attn_mask=tower.attn_mask)
        return tower.ln_final(x)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self._require_text_tower().token_embedding

    @torch.inference_mode()
    def encode_tokens(
        self, texts: list[str], max_tokens: int | None = None, batch_size: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token text transformer outputs after ln_final, before pooling/projection.

        Returns (Q, L, token_dim) float32 CPU with zeros past each query's length, and lengths (Q,)
        int64 = EOT position + 1 (SOT and EOT included), L = min(context_length, max_tokens).
        Truncating to max_tokens drops the tail (EOT included) of longer queries: their length is L.
        The text transformer is causal, so kept positions do not depend on the dropped ones.
        """
        tower = self._require_text_tower()
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        ids = self.tokenize(texts)
        keep = self.context_length if max_tokens is None else min(self.context_length, max_tokens)
        lengths = (self.eot_positions(ids) + 1).clamp_(max=keep).to(torch.int64)
        tokens = torch.zeros(ids.shape[0], keep, tower.width)
        for part in _batches(ids.shape[0], batch_size):
            with autocast_context(self.device):
                x = self.token_states(ids[part].to(self.device))
            tokens[part] = x[:, :keep].float().cpu()
        valid = torch.arange(keep).unsqueeze(0) < lengths.unsqueeze(1)
        tokens.mul_(valid.unsqueeze(-1))
        return tokens, lengths

    @torch.inference_mode()
    def project_tokens(self, pooled: torch.Tensor) -> torch.Tensor:
        """Apply the text projection to (..., token_dim) token outputs -> (..., embed_dim), un-normalised."""
        tower = self._require_text_tower()
        projection = tower.text_projection
        weight = projection.weight if isinstance(projection, nn.Linear) else projection
        dtype = weight.dtype if weight is not None else torch.float32
        with autocast_context(self.device):
            out = project_pooled(projection, pooled.to(self.device, dtype))
        return out.float().cpu()


_encoder_cache: dict[tuple[str, str | None, str, int], ClipEncoder] = {}
_encoder_cache_lock = threading.Lock()


def load_clip_encoder(model: str, pretrained: str | None, device: str = "cpu", seed: int = 0) -> ClipEncoder:
    """A process-wide shared ClipEncoder: each (model, pretrained, device, seed) loads once per process."""
    # The seed only matters for random init; pretrained weights ignore it.
    key = (model, pretrained, resolve_device(device), seed if pretrained is None else 0)
    with _encoder_cache_lock:  # held while loading so concurrent callers don't load twice
        if key not in _encoder_cache:
            _encoder_cache[key] = ClipEncoder(model, pretrained, device=key[2], seed=key[3])
        return _encoder_cache[key]
