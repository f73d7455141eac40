"""Extraction: sampled frames -> teacher CLIP embeddings and student visual features,
queries -> teacher sentence embeddings and student token features, into the feature store.

Plain functions over plain data; no Prefect here. One unit of work is one shard of videos.
"""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from configs.schema import ExtractConfig, RunConfig, TeacherSpec
from stages.manifest import Manifest, Video
from stages.progress import Progress, counting
from storage.features import LAYOUT_VERSION, FeatureStore, sentence_array, teacher_array, token_arrays, visual_array
from storage.fingerprint import file_sha256, fingerprint
from storage.integrity import Level

if TYPE_CHECKING:
    import torch

log = logging.getLogger("prvr.extract")


class ShardFailed(RuntimeError):
    """A shard that must not be committed (strict mode with bad videos, or a drill)."""


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


# ---- encoders -----------------------------------------------------------------
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
        dims = {teacher_feature(t): self.teachers[t.key].embed_dim for t in self.cfg.teacher}
        for name in self.cfg.visual:
            dims[visual_feature(name)] = self.backbones[name].dim if name in self.backbones else self.first.embed_dim
        return dims

    def decode_short_side(self) -> int:
        sizes = [e.image_size for e in self.teachers.values()] + [b.input_size for b in self.backbones.values()]
        return max(sizes)


# ---- batching across videos ---------------------------------------------------
class _RowBatcher:
    """Feeds rows of many videos through one encoder in full batches and hands back per-video outputs.

    Rows arrive already fitted to the encoder's input geometry (`fit`), so videos of different
    frame sizes, orientations and frame rates share a batch.
    """

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


def _frame_batchers(enc: Encoders, ex: ExtractConfig) -> dict[str, _RowBatcher]:
    """One batcher per teacher (each fits frames to its own input size); `visual.clip` is the first
    teacher's un-normalised embedding."""
    batchers = {}
    for spec in ex.teacher:
        teacher = enc.teachers[spec.key]
        with_clip = spec is ex.teacher[0] and "clip" in ex.visual

        def encode(frames, teacher=teacher, spec=spec, with_clip=with_clip) -> dict[str, np.ndarray]:
            normalised, raw = teacher.encode_frames(frames)
            out = {teacher_feature(spec): normalised.numpy()}
            if with_clip:
                out[visual_feature("clip")] = raw.numpy()
            return out

        batchers[spec.key] = _RowBatcher(ex.batch_size, teacher.fit_frames, encode)
    return batchers


def _clip_batchers(enc: Encoders, ex: ExtractConfig) -> dict[str, _RowBatcher]:
    return {
        name: _RowBatcher(max(1, ex.batch_size // ex.window), b.fit_clips,
                          lambda clips, b=b, name=name: {visual_feature(name): b.encode_clips(clips).numpy()})
        for name, b in enc.backbones.items()
    }


def _drill_shards(variable: str) -> set[str]:
    return {s.strip() for s in os.environ.get(variable, "").split(",") if s.strip()}


def _drill_fail(index: int) -> None:
    # PRVR_FAIL_SHARDS="1,3": those shards raise, for tests and failure drills.
    if str(index) in _drill_shards("PRVR_FAIL_SHARDS"):
        raise ShardFailed(f"shard {index} failed on purpose (PRVR_FAIL_SHARDS={os.environ['PRVR_FAIL_SHARDS']})")


# PRVR_KILL_SHARDS="1,3": the process extracting those shards SIGKILLs itself after decoding the
# shard's first video (a lost machine or Dask worker, mid-shard, partial shard on disk). With
# PRVR_KILL_ONCE_DIR set, only once per shard: a marker file there records that it happened.
KILL_DRILL_ENV = "PRVR_KILL_SHARDS"
KILL_ONCE_ENV = "PRVR_KILL_ONCE_DIR"


def _drill_kill(index: int) -> None:
    if str(index) not in _drill_shards(KILL_DRILL_ENV):
        return
    once = os.environ.get(KILL_ONCE_ENV)
    if once:
        try:  # O_EXCL: of all attempts on all machines sharing the folder, one creates it
            os.close(os.open(Path(once) / f"killed-shard-{index:05d}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    log.warning("shard %d: killing this process (pid %d) on purpose (%s)", index, os.getpid(), KILL_DRILL_ENV)
    os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class ShardResult:
    index: int
    videos: int
    frames: int
    failed: dict[str, str]
    fingerprint: str


def extract_shard(plan: ShardPlan, cfg: RunConfig, fp: str, progress: Progress | None = None,
                  lease_token: str | None = None) -> ShardResult:
    """Decode, encode and write one shard, committing it only when complete.
    `lease_token`: the run's lease on the store (storage/lease.py), checked before writing and committing."""
    from stages.decode import DecodeFailure, DecodeRequest, get_decode_pool

    _drill_fail(plan.index)
    ex = cfg.extract
    enc = Encoders(ex)
    store = FeatureStore(cfg.store, mode="a", lease_token=lease_token)
    writer = store.begin_shard(plan.index, enc.feature_dims())
    short_side = enc.decode_short_side()
    needs_windows = bool(enc.backbones)

    frame_batchers = _frame_batchers(enc, ex)
    clip_batchers = _clip_batchers(enc, ex)
    meta: dict[str, tuple[Video, float, np.ndarray]] = {}  # video, duration, sample times (frames are let go)
    order: list[str] = []
    pending: dict[str, dict[str, np.ndarray]] = {}  # finished outputs of videos not yet written
    feature_names = list(enc.feature_dims())
    written = 0
    frames_total = 0

    def write_finished(flush: bool) -> None:
        nonlocal written, frames_total
        for b in [*frame_batchers.values(), *clip_batchers.values()]:
            b.pump(flush)
            for k, v in b.pop_finished().items():
                pending.setdefault(k, {}).update(v)
        # Write in manifest order so a shard's layout does not depend on timing.
        while order and order[0] in pending and len(pending[order[0]]) == len(feature_names):
            key = order.pop(0)
            video, duration, times = meta.pop(key)
            writer.add_video(video.video_id, video.split, duration, times, pending.pop(key))
            written += 1
            frames_total += len(times)

    requests = [
        DecodeRequest(key=v.video_id, path=str(v.path), fps=ex.fps, max_frames=ex.max_frames, short_side=short_side,
                      window=ex.window if needs_windows else None, stride=ex.window_stride)
        for v in plan.videos
    ]
    by_id = {v.video_id: v for v in plan.videos}
    decoded = counting(progress, len(requests), "videos decoded")
    pool = get_decode_pool(ex.decode_workers, ex.decode_timeout_s)
    for n, (request, result) in enumerate(pool.imap(requests, prefetch=ex.prefetch_videos), 1):
        video = by_id[request.key]
        if isinstance(result, DecodeFailure):
            writer.add_failure(video.video_id, result.error)
            log.warning("shard %d: %s left out: %s", plan.index, video.video_id, result.error)
        else:
            meta[video.video_id] = (video, result.duration, result.plan.times)
            order.append(video.video_id)
            for b in frame_batchers.values():
                b.add(video.video_id, result.samples())
            for b in clip_batchers.values():
                b.add(video.video_id, result.clips())
            write_finished(flush=False)
        decoded(n)
        if n == 1:
            _drill_kill(plan.index)
    write_finished(flush=True)
    failed = writer.failed
    if failed and ex.strict:
        raise ShardFailed(f"shard {plan.index}: {len(failed)} bad video(s) and extract.strict is true: "
                          + "; ".join(f"{k}: {v}" for k, v in failed.items()))
    writer.commit(fp, {"frames": frames_total})
    return ShardResult(plan.index, written, frames_total, failed, fp)


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


PRUNE_ADVICE = "rerun with --set extract.prune_shards=true (or `prune_shards: true` under `extract:` in the config)"


@dataclass
class ExtractionWork:
    """What an extraction run has to do: shards and text splits not committed (intact) under their fingerprints."""

    plans: list[ShardPlan]
    fingerprints: dict[int, str]  # shard -> fingerprint
    shards: list[ShardPlan]  # to extract
    texts: dict[str, str]  # split -> fingerprint, to encode
    dropped: list[int]  # shard groups beyond the manifest, removed
    damaged: dict[int, list[str]]  # committed shards redone because their data is damaged


def begin_extraction(cfg: RunConfig, manifest: Manifest, store: FeatureStore) -> ExtractionWork:
    """Prepare the store for a run and list its work. Committed shards beyond the manifest stop the
    run (ShardsBeyondPlan) unless extract.prune_shards; shards are checked at extract.verify."""
    plans = plan_shards(manifest, cfg.extract.shard_size)
    store.invalidate_consolidated()
    dropped = store.drop_shards_from(len(plans), prune=cfg.extract.prune_shards, how_to_prune=PRUNE_ADVICE)
    fps = {p.index: shard_fingerprint(p, cfg.extract, manifest.root) for p in plans}
    states = store.shard_statuses(fps, verify=cfg.extract.verify)
    todo = [p for p in plans if states[p.index].state != "committed"]
    damaged = {i: s.problems for i, s in states.items() if s.state == "corrupt"}
    text_fps = {s: text_fingerprint(manifest, s, cfg.extract) for s in manifest.splits()}
    texts = {s: fp for s, fp in text_fps.items() if store.text_status(s, fp, verify=cfg.extract.verify) != "committed"}
    return ExtractionWork(plans, fps, todo, texts, dropped, damaged)


def extraction_status(cfg: RunConfig, manifest: Manifest, store: FeatureStore | None = None,
                      verify: Level | None = "sizes") -> dict:
    """Every shard's and text split's state under the current fingerprints (for status and artifacts);
    committed shards are checked against their commit records at level `verify`."""
    plans = plan_shards(manifest, cfg.extract.shard_size)
    store = store or FeatureStore(cfg.store, mode="r")
    states = store.shard_statuses({p.index: shard_fingerprint(p, cfg.extract, manifest.root) for p in plans}, verify)
    shards = []
    for p in plans:
        shards.append({**states[p.index].as_dict(), "videos_in_manifest": len(p.videos),
                       "first_video": p.videos[0].video_id, "last_video": p.videos[-1].video_id})
    reports = {split: store.text_report(split, text_fingerprint(manifest, split, cfg.extract), verify)
               for split in manifest.splits()}
    text = {split: r.state for split, r in reports.items()}
    beyond = store.shards_beyond(len(plans))
    beyond_committed = [i for i in beyond if store.committed_shard_fingerprint(i) is not None]
    return {"store": cfg.store, "shards": shards, "text": text,
            "text_notes": {split: r.note for split, r in reports.items() if r.note},
            "beyond_manifest": beyond_committed,
            "complete": all(r["state"] == "committed" for r in shards) and all(v == "committed" for v in text.values())
            and not beyond_committed}
