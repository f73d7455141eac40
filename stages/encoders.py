"""The mapper of extraction: decoded videos in, per-video features out.

Every encoder a shard needs (the teachers' image towers, the student's video backbones) is fed
rows of many videos in full batches; rows arrive already fitted to the encoder's input geometry,
so videos of different frame sizes, orientations and frame rates share a batch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from configs.schema import ExtractConfig, TeacherSpec
from storage.features import teacher_array, visual_array

if TYPE_CHECKING:
    import torch

    from stages.decode import DecodedVideo


class Encoders:
    """The models one shard needs, loaded once per process through the models' caches."""

    def __init__(self, cfg: ExtractConfig):
        from models.clip import load_clip_encoder, resolve_device
        from models.visual import VISUAL_FEATURES, load_video_backbone

        self.device = resolve_device(cfg.device)
        self.teachers = {t.key: load_clip_encoder(t.model, t.pretrained, self.device, cfg.seed) for t in cfg.teacher}
        self.first = self.teachers[cfg.teacher[0].key]
        self.backbones = {
            name: load_video_backbone(name, cfg.visual_weights.get(name), self.device, cfg.seed)
            for name in cfg.visual if VISUAL_FEATURES[name].kind == "video"
        }
        self.cfg = cfg

    def feature_dims(self) -> dict[str, int]:
        dims = {teacher_array(t.key): self.teachers[t.key].embed_dim for t in self.cfg.teacher}
        for name in self.cfg.visual:
            dims[visual_array(name)] = self.backbones[name].dim if name in self.backbones else self.first.embed_dim
        return dims

    def decode_short_side(self) -> int:
        sizes = [e.image_size for e in self.teachers.values()] + [b.input_size for b in self.backbones.values()]
        return max(sizes)

    @property
    def needs_windows(self) -> bool:
        """Whether videos are decoded with each sample's window of frames (video backbones read them)."""
        return bool(self.backbones)

    def encode_frames(self, spec: TeacherSpec, frames: torch.Tensor) -> dict[str, np.ndarray]:
        """A teacher's normalised frame embeddings; for the first teacher, also `visual.clip`, its
        un-normalised embedding (when the student reads it)."""
        normalised, raw = self.teachers[spec.key].encode_frames(frames)
        out = {teacher_array(spec.key): normalised.numpy()}
        if spec is self.cfg.teacher[0] and "clip" in self.cfg.visual:
            out[visual_array("clip")] = raw.numpy()
        return out

    def encode_clips(self, name: str, clips: torch.Tensor) -> dict[str, np.ndarray]:
        """A video backbone's pooled embedding of each sample's window."""
        return {visual_array(name): self.backbones[name].encode_clips(clips).numpy()}

    def mapper(self) -> VideoMapper:
        return VideoMapper(self)


class VideoMapper:
    """Feeds decoded videos through every encoder in full batches; hands back what is finished."""

    def __init__(self, enc: Encoders):
        ex = enc.cfg
        self._frames = [
            _RowBatcher(ex.batch_size, enc.teachers[spec.key].fit_frames,
                        lambda frames, spec=spec: enc.encode_frames(spec, frames))
            for spec in ex.teacher]
        self._clips = [
            _RowBatcher(max(1, ex.batch_size // ex.window), backbone.fit_clips,
                        lambda clips, name=name: enc.encode_clips(name, clips))
            for name, backbone in enc.backbones.items()]

    def add(self, key: str, video: DecodedVideo) -> None:
        for b in self._frames:
            b.add(key, video.samples())
        for b in self._clips:
            b.add(key, video.clips())

    def finished(self, flush: bool = False) -> dict[str, dict[str, np.ndarray]]:
        """Run every full batch (with `flush`, the rest too) and return the outputs of each video
        that some encoder has finished: video key -> {feature: rows}."""
        outputs: dict[str, dict[str, np.ndarray]] = {}
        for b in [*self._frames, *self._clips]:
            b.pump(flush)
            for key, features in b.pop_finished().items():
                outputs.setdefault(key, {}).update(features)
        return outputs


class _RowBatcher:
    """One encoder's queue: rows of many videos in, full batches through `encode`, per-video outputs out."""

    def __init__(self, batch_size: int, fit: Callable[[np.ndarray], torch.Tensor],
                 encode: Callable[[torch.Tensor], dict[str, np.ndarray]]):
        self.batch_size = batch_size
        self.fit = fit
        self.encode = encode
        self._pending: list[tuple[str, torch.Tensor]] = []  # (video key, fitted rows not yet encoded)
        self._rows = 0
        self._outputs: dict[str, dict[str, list[np.ndarray]]] = {}
        self._expected: dict[str, int] = {}
        self._done_rows: dict[str, int] = {}

    def add(self, key: str, rows: np.ndarray) -> None:
        fitted = self.fit(rows)
        self._expected[key] = len(fitted)
        self._done_rows[key] = 0
        self._outputs[key] = {}
        self._pending.append((key, fitted))
        self._rows += len(fitted)

    def _run(self, limit: int) -> None:
        import torch

        take: list[tuple[str, torch.Tensor]] = []
        n = 0
        while self._pending and n < limit:
            key, rows = self._pending[0]
            k = min(len(rows), limit - n)
            take.append((key, rows[:k]))
            n += k
            if k == len(rows):
                self._pending.pop(0)
            else:
                self._pending[0] = (key, rows[k:])
        self._rows -= n
        out = self.encode(torch.cat([r for _, r in take]))
        start = 0
        for key, rows in take:
            for name, values in out.items():
                self._outputs[key].setdefault(name, []).append(values[start:start + len(rows)])
            self._done_rows[key] += len(rows)
            start += len(rows)

    def pump(self, flush: bool = False) -> None:
        while self._rows >= self.batch_size or (flush and self._rows > 0):
            self._run(self.batch_size)

    def pop_finished(self) -> dict[str, dict[str, np.ndarray]]:
        done = [k for k, n in self._done_rows.items() if n == self._expected[k]]
        result = {}
        for key in done:
            result[key] = {name: np.concatenate(parts) for name, parts in self._outputs.pop(key).items()}
            del self._done_rows[key], self._expected[key]
        return result
