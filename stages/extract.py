"""Extraction: sampled frames -> teacher CLIP embeddings and student visual features,
queries -> teacher sentence embeddings and student token features, into the feature store.

Plain functions over plain data; no Prefect here. One unit of work is one shard of videos.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from configs.schema import ExtractConfig, RunConfig, TeacherSpec
from stages.drills import ShardFailed, fail_shard_drill, kill_shard_drill
from stages.encoders import Encoders
from stages.ingest import IngestWork, ShardOutcome, ShardUnit, SourceStatus, TextUnit, begin_work, planned_status
from stages.manifest import Manifest, Video
from stages.progress import Progress, counting
from storage.features import (
    LAYOUT_VERSION, FeatureStore, ShardWriter, sentence_array, teacher_array, token_arrays, visual_array,
)
from storage.fingerprint import file_sha256, fingerprint
from storage.integrity import Level

log = logging.getLogger("prvr.extract")


@dataclass(frozen=True)
class ShardPlan:
    index: int
    videos: tuple[Video, ...]


def plan_shards(manifest: Manifest, shard_size: int) -> list[ShardPlan]:
    """Consecutive runs of the manifest's videos; appending videos only touches the last shard."""
    vids = manifest.videos
    return [ShardPlan(i // shard_size, tuple(vids[i:i + shard_size])) for i in range(0, len(vids), shard_size)]


# ---- fingerprints -------------------------------------------------------------
def teacher_identity(spec: TeacherSpec) -> dict:
    """The weights' identity without loading them: a tag, or a checkpoint file's content hash."""

    path = Path(spec.pretrained).expanduser() if spec.pretrained else None
    if path is not None and path.is_file():
        return {"model": spec.model, "pretrained": {"size": path.stat().st_size, "sha256": file_sha256(path)}}
    return {"model": spec.model, "pretrained": spec.pretrained}


def visual_weights_identity(weights: str | None) -> str | dict | None:
    """A video backbone's weights without loading them: a name, or a local file's content hash."""
    from models.visual import is_weights_file

    if is_weights_file(weights) and Path(weights).is_file():
        path = Path(weights)
        return {"file": path.name, "size": path.stat().st_size, "sha256": file_sha256(path)}
    return weights


def _extraction_settings(cfg: ExtractConfig) -> dict:
    # Only what changes the stored numbers; batch sizes, devices and workers do not.
    return {
        "layout": LAYOUT_VERSION, "fps": cfg.fps, "max_frames": cfg.max_frames, "visual": cfg.visual,
        "window": cfg.window, "window_stride": cfg.window_stride,
        "visual_weights": {k: visual_weights_identity(v) for k, v in sorted(cfg.visual_weights.items())},
        "teachers": [{"key": t.key, **teacher_identity(t)} for t in cfg.teacher], "seed": cfg.seed,
    }


def shard_fingerprint(plan: ShardPlan, cfg: ExtractConfig, root: Path) -> str:
    files = []
    for v in plan.videos:
        try:
            st = os.stat(v.path)
            stat = [st.st_size, st.st_mtime_ns]
        except OSError:
            stat = None
        files.append([v.video_id, v.split, str(v.path.relative_to(root)), stat])
    return fingerprint({"videos": files, "settings": _extraction_settings(cfg)})


def text_fingerprint(manifest: Manifest, split: str, cfg: ExtractConfig) -> str:
    queries = [[q.query_id, q.video_id, q.text, q.moment] for q in manifest.queries_of(split)]
    settings = {"layout": LAYOUT_VERSION, "max_tokens": cfg.max_tokens,
                "teachers": [{"key": t.key, **teacher_identity(t)} for t in cfg.teacher]}
    return fingerprint({"queries": queries, "settings": settings})


# ---- feature names ------------------------------------------------------------
def teacher_feature(spec: TeacherSpec) -> str:
    return teacher_array(spec.key)


def visual_feature(name: str) -> str:
    return visual_array(name)


def token_model(cfg: ExtractConfig) -> str:
    """Student token features come from the first teacher's text transformer."""
    return cfg.teacher[0].key


@dataclass
class ShardResult:
    index: int
    videos: int
    frames: int
    failed: dict[str, str]
    fingerprint: str


class ShardAssembler:
    """The writer's side of a shard: per-video outputs in, each video written once it has every
    feature, in manifest order (so a shard's layout does not depend on timing)."""

    def __init__(self, writer: ShardWriter, feature_names: list[str]):
        self.writer = writer
        self.feature_names = set(feature_names)
        self._order: list[str] = []
        self._meta: dict[str, tuple[Video, float, np.ndarray]] = {}  # video, duration, sample times
        self._pending: dict[str, dict[str, np.ndarray]] = {}  # finished outputs of videos not yet written
        self.videos = 0
        self.frames = 0

    def expect(self, video: Video, duration: float, times: np.ndarray) -> None:
        self._order.append(video.video_id)
        self._meta[video.video_id] = (video, duration, times)

    def leave_out(self, video: Video, error: str) -> None:
        self.writer.add_failure(video.video_id, error)

    def take(self, outputs: dict[str, dict[str, np.ndarray]]) -> None:
        for key, features in outputs.items():
            self._pending.setdefault(key, {}).update(features)
        while self._order and set(self._pending.get(self._order[0], ())) == self.feature_names:
            key = self._order.pop(0)
            video, duration, times = self._meta.pop(key)
            self.writer.add_video(video.video_id, video.split, duration, times, self._pending.pop(key))
            self.videos += 1
            self.frames += len(times)


def extract_shard(plan: ShardPlan, cfg: RunConfig, fp: str, progress: Progress | None = None,
                  lease_token: str | None = None) -> ShardResult:
    """Decode (the reader), encode (the mapper) and write (the writer) one shard, committing it only
    when complete. `lease_token`: the run's lease on the store (storage/lease.py), checked before
    writing and committing."""
    from stages.decode import DecodeFailure, DecodeRequest, get_decode_pool

    fail_shard_drill(plan.index)
    ex = cfg.extract
    enc = Encoders(ex)
    mapper = enc.mapper()
    store = FeatureStore(cfg.store, mode="a", lease_token=lease_token)
    assembler = ShardAssembler(store.begin_shard(plan.index, enc.feature_dims()), list(enc.feature_dims()))

    short_side = enc.decode_short_side()
    requests = [
        DecodeRequest(key=v.video_id, path=str(v.path), fps=ex.fps, max_frames=ex.max_frames, short_side=short_side,
                      window=ex.window if enc.needs_windows else None, stride=ex.window_stride)
        for v in plan.videos
    ]
    by_id = {v.video_id: v for v in plan.videos}
    decoded = counting(progress, len(requests), "videos decoded")
    reader = get_decode_pool(ex.decode_workers, ex.decode_timeout_s).imap(requests, prefetch=ex.prefetch_videos)
    for n, (request, result) in enumerate(reader, 1):
        video = by_id[request.key]
        if isinstance(result, DecodeFailure):
            assembler.leave_out(video, result.error)
            log.warning("shard %d: %s left out: %s", plan.index, video.video_id, result.error)
        else:
            assembler.expect(video, result.duration, result.plan.times)  # the frames themselves are let go
            mapper.add(video.video_id, result)
            assembler.take(mapper.finished())
        decoded(n)
        if n == 1:
            kill_shard_drill(plan.index)
    assembler.take(mapper.finished(flush=True))
    failed = assembler.writer.failed
    if failed and ex.strict:
        raise ShardFailed(f"shard {plan.index}: {len(failed)} bad video(s) and extract.strict is true: "
                          + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    assembler.writer.commit(fp, {"frames": assembler.frames})
    return ShardResult(plan.index, assembler.videos, assembler.frames, failed, fp)


# ---- text ---------------------------------------------------------------------
def extract_text(manifest: Manifest, split: str, cfg: RunConfig, fp: str, lease_token: str | None = None) -> int:
    """Sentence embeddings per teacher and token features of the first teacher for one split."""
    from models.clip import load_clip_encoder, resolve_device

    ex = cfg.extract
    device = resolve_device(ex.device)
    queries = manifest.queries_of(split)
    teachers = {t.key: load_clip_encoder(t.model, t.pretrained, device, ex.seed) for t in ex.teacher}
    tok_key = token_model(ex)
    tok_enc = teachers[tok_key]
    max_tokens = min(ex.max_tokens, tok_enc.context_length)
    tokens_name, lengths_name = token_arrays(tok_key)
    arrays = {sentence_array(k): (e.embed_dim,) for k, e in teachers.items()}
    arrays[tokens_name] = (max_tokens, tok_enc.token_dim)
    arrays[lengths_name] = ()
    moments = np.array([q.moment if q.moment else (np.nan, np.nan) for q in queries], dtype=np.float32).reshape(-1, 2)
    store = FeatureStore(cfg.store, mode="a", lease_token=lease_token)
    writer = store.begin_text(split, [q.query_id for q in queries], [q.video_id for q in queries],
                              [q.text for q in queries], moments, arrays)
    for start in range(0, len(queries), ex.text_batch_size):
        texts = [q.text for q in queries[start:start + ex.text_batch_size]]
        for key, e in teachers.items():
            writer.write(sentence_array(key), start, e.encode_sentences(texts).numpy())
        tokens, lengths = tok_enc.encode_tokens(texts, max_tokens=max_tokens)
        writer.write(tokens_name, start, tokens.numpy())
        writer.write(lengths_name, start, lengths.numpy())
    writer.commit(fp)
    return len(queries)


class ManifestSource:
    """Raw videos listed by a manifest (stages/manifest.py): shards of videos decoded and encoded here."""

    kind = "extract"
    needs_gpu = True

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self._manifest: Manifest | None = None

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:  # read once per source, when first needed
            from stages.manifest import load_manifest

            self._manifest = load_manifest(self.cfg.dataset.root)
        return self._manifest

    def check(self) -> None:
        self.manifest  # noqa: B018 (reading it validates it whole: ManifestError)

    def splits(self) -> list[str]:
        return self.manifest.splits()

    def text_features(self) -> str:
        return token_model(self.cfg.extract)

    def notices(self) -> list[str]:
        return []

    def verify(self) -> None:
        return None

    def _units(self) -> list[ShardUnit]:
        return [ShardUnit(p.index, shard_fingerprint(p, self.cfg.extract, self.manifest.root), len(p.videos), p)
                for p in plan_shards(self.manifest, self.cfg.extract.shard_size)]

    def _text_fingerprints(self) -> dict[str, str]:
        return {s: text_fingerprint(self.manifest, s, self.cfg.extract) for s in self.manifest.splits()}

    def begin(self, store: FeatureStore) -> IngestWork:
        """Committed shards beyond the manifest stop the run (ShardsBeyondPlan) unless
        extract.prune_shards; shards are checked at extract.verify."""
        ex = self.cfg.extract
        return begin_work(store, self._units(), self._text_fingerprints(), ex.verify, ex.prune_shards)

    def prepare(self, work: IngestWork) -> None:
        if work.shards or work.texts:  # once, here: offline, every shard and retry would fail the same way
            from stages.weights import fetch_teacher_weights

            fetch_teacher_weights(self.cfg)

    def run_shard(self, unit: ShardUnit, store: FeatureStore, progress: Progress | None = None) -> ShardOutcome:
        r = extract_shard(unit.plan, self.cfg, unit.fingerprint, progress, lease_token=store.lease_token)
        return ShardOutcome(r.index, r.videos, r.frames, r.failed)

    def run_text(self, unit: TextUnit, store: FeatureStore, progress: Progress | None = None) -> int:
        return extract_text(self.manifest, unit.split, self.cfg, unit.fingerprint, lease_token=store.lease_token)

    def status(self, store: FeatureStore | None, verify: Level | None = "sizes") -> SourceStatus:
        units = self._units()
        return planned_status(store, {u.index: u.fingerprint for u in units},
                              {u.index: tuple(v.video_id for v in u.plan.videos) for u in units},
                              self._text_fingerprints(), verify, self.cfg.store)

    def summary(self, work: IngestWork, status: SourceStatus) -> dict:
        return {"shards": work.planned, "extracted": len(work.shards), "videos_left_out": status.left_out()}
