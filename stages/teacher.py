"""Teacher caches: the teacher's query-video scores, computed with dask over the feature store.

For one teacher and one split:
- video_sim[q, v] = max over the frames of video v of cosine(sentence q, frame), float16, for
  the evaluated split only (its one reader is the teacher's zero-shot recall);
- positive frames: cosine(sentence q, each frame of q's positive video), ragged.

Frames and sentences are stored L2-normalised, so cosine is a dot product. The matrix is
computed blockwise, one task per (query block, video block) producing exactly one Zarr
chunk: the whole (queries x frames) matrix never exists, and no two tasks write one chunk.
Plain functions; no Prefect here.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

from configs.schema import RunConfig, TeacherSpec
from stages.extract import teacher_feature
from stages.progress import Progress, silent
from storage.features import FeatureStore, StoreError
from storage.fingerprint import fingerprint
from storage.teacher_cache import TeacherCache

if TYPE_CHECKING:
    import dask.array as da

log = logging.getLogger("prvr.teacher")

# Bump when the computation changes what is stored: every cache becomes stale.
CACHE_VERSION = 1
# Frames multiplied at once inside a task: bounds the float32 (queries x frames) product
# to query_block x 8192 x 4 bytes (32 MB at 1024 queries).
FRAMES_PER_STEP = 8192
# progress(fraction done in [0, 1], what is being done); called from the calling thread.
# Shares of a cache's time, for progress: the (queries x all frames) matrix dominates.
VIDEO_SIM_SHARE = 0.9


def teacher_keys(cfg: RunConfig) -> list[str]:
    return [t.key for t in cfg.extract.teacher]


def _teacher_spec(cfg: RunConfig, teacher_key: str) -> TeacherSpec:
    for spec in cfg.extract.teacher:
        if spec.key == teacher_key:
            return spec
    raise ValueError(f"teacher {teacher_key!r} is not configured; configured: {teacher_keys(cfg)}")


# ---- fingerprint --------------------------------------------------------------
def needs_video_sim(cfg: RunConfig, store: FeatureStore, split: str) -> bool:
    """Whether a cache of `split` computes the (queries x videos) matrix. Its one reader is the teacher's
    zero-shot recall in evaluation, on evaluate.split; training reads only the positive frames. At TVR's
    train split that matrix is 87k x 17k scores over every frame: most of the stage's time."""
    return store.resolve_split(split) == store.resolve_split(cfg.evaluate.split)


def _cache_inputs(store: FeatureStore, teacher_key: str, split: str, video_sim: bool) -> dict:
    """What the cache is a function of: the committed text and shards it reads, the teacher, and
    whether it holds the video_sim matrix."""
    text = store.committed_text_fingerprint(split)
    if text is None:
        raise StoreError(f"text of split {split!r} is not committed in {store.location}; run the extract stage")
    index = store.video_index()
    shards = sorted({index[video].shard for video in store.split_video_ids(split)})
    inputs = {
        "version": CACHE_VERSION, "teacher": teacher_key, "split": split, "text": text,
        "shards": {str(i): store.committed_shard_fingerprint(i) for i in shards},
    }
    if not video_sim:  # only then: caches with the matrix keep the fingerprints they were committed under
        inputs["video_sim"] = False
    return inputs


def teacher_cache_fingerprint(cfg: RunConfig, store: FeatureStore, teacher_key: str, split: str) -> str:
    """Hash of the split's committed text fingerprint, the committed fingerprints of the shards
    holding the split's videos, the teacher key, and whether the split needs its video_sim matrix."""
    _teacher_spec(cfg, teacher_key)
    return fingerprint(_cache_inputs(store, teacher_key, split, needs_video_sim(cfg, store, split)))


# ---- the split's frames -------------------------------------------------------
@dataclass(frozen=True)
class SplitFrames:
    """A split's videos in store order and their frames as one lazy (frames, D) array."""

    video_ids: list[str]
    frames: da.Array  # (total frames of the split, D), rows in store order
    offsets: np.ndarray  # (V+1,) int64 rows of each video in `frames`

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


def split_frames(store: FeatureStore, feature: str, split: str) -> SplitFrames:
    """Only the split's videos: other splits' rows are sliced away shard by shard, unread."""
    import dask.array as da

    frames, offsets, video_ids, splits = store.dask_frames(feature)
    split = store.resolve_split(split)
    keep = [j for j, s in enumerate(splits) if s == split]
    runs: list[list[int]] = []  # contiguous row ranges, so the graph holds slices, not index lists
    for j in keep:
        start, stop = int(offsets[j]), int(offsets[j + 1])
        if runs and runs[-1][1] == start:
            runs[-1][1] = stop
        else:
            runs.append([start, stop])
    lengths = np.array([offsets[j + 1] - offsets[j] for j in keep], dtype=np.int64)
    parts = [frames[a:b] for a, b in runs if b > a]
    selected = da.concatenate(parts, axis=0) if parts else frames[:0]
    return SplitFrames([video_ids[j] for j in keep], selected,
                       np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))


# ---- block kernels (module level: they travel to distributed workers) ------------
def _frame_steps(lengths: np.ndarray, frames_per_step: int) -> list[tuple[int, int]]:
    """Consecutive video ranges [a, b) holding at most frames_per_step frames (or one longer video)."""
    steps, start, count = [], 0, 0
    for j, n in enumerate(lengths.tolist()):
        if count and count + n > frames_per_step:
            steps.append((start, j))
            start, count = j, 0
        count += n
    if start < len(lengths):
        steps.append((start, len(lengths)))
    return steps


def max_over_frames(sentences: np.ndarray, frames: np.ndarray, lengths: np.ndarray,
                    frames_per_step: int = FRAMES_PER_STEP) -> np.ndarray:
    """(q, videos) float16: per video, the max over its frames of sentence . frame.

    `frames` holds the videos' frames back to back, `lengths` frames per video. A video without
    frames scores -inf (ranks last).
    """
    q = np.asarray(sentences, dtype=np.float32)
    lengths = np.asarray(lengths, dtype=np.int64)
    out = np.full((q.shape[0], len(lengths)), -np.inf, dtype=np.float32)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    for a, b in _frame_steps(lengths, frames_per_step):
        nonempty = np.flatnonzero(lengths[a:b] > 0) + a
        if not len(nonempty):
            continue
        base = starts[a]
        scores = q @ np.asarray(frames[base:starts[b]], dtype=np.float32).T
        # reduceat needs strictly increasing starts inside the range: empty videos are left out.
        out[:, nonempty] = np.maximum.reduceat(scores, starts[nonempty] - base, axis=1)
    return out.astype(np.float16)


def positive_scores(sentences: np.ndarray, frames: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Flat float16: for each query in order, sentence . frame for frames[start:stop].

    Queries arrive grouped by positive video, so each video's frames meet all its queries at once.
    """
    q = np.asarray(sentences, dtype=np.float32)
    pieces = []
    i = 0
    while i < len(q):
        j = i + 1
        while j < len(q) and starts[j] == starts[i] and stops[j] == stops[i]:
            j += 1
        block = np.asarray(frames[starts[i]:stops[i]], dtype=np.float32)
        pieces.append((q[i:j] @ block.T).ravel())  # row-major: query by query, frames in order
        i = j
    return np.concatenate(pieces).astype(np.float16) if pieces else np.zeros(0, dtype=np.float16)


# ---- lazy computations -------------------------------------------------------
def video_sim_dask(sentences: da.Array, split: SplitFrames, chunks: tuple[int, int],
                   frames_per_step: int = FRAMES_PER_STEP) -> da.Array:
    """(Q, V) float16 dask array whose blocks are the Zarr chunks `chunks`.

    Frames are regrouped so block j holds exactly the frames of videos [j*cols, (j+1)*cols);
    each (query block, video block) task then yields one output chunk.
    """
    import dask.array as da

    rows, cols = chunks
    n_videos = len(split.video_ids)
    col_chunks = tuple(min(cols, n_videos - c) for c in range(0, n_videos, cols))
    edges = np.concatenate([[0], np.cumsum(col_chunks)])
    frame_chunks = tuple(int(split.offsets[edges[k + 1]] - split.offsets[edges[k]]) for k in range(len(col_chunks)))
    frames = split.frames.rechunk({0: frame_chunks, 1: -1})
    lengths = da.from_array(split.lengths, chunks=(col_chunks,))
    sentences = sentences.rechunk({0: rows, 1: -1})
    return da.blockwise(
        partial(max_over_frames, frames_per_step=frames_per_step), "qv",
        sentences, "qd", frames, "vd", lengths, "v",
        dtype=np.float16, adjust_chunks={"v": col_chunks}, align_arrays=False, concatenate=True,
        meta=np.empty((0, 0), dtype=np.float16),
    )


@dataclass(frozen=True)
class PositivePlan:
    """Where each query's positive frames come from and go to."""

    columns: np.ndarray  # (Q,) the positive video's column among the split's videos, -1 when absent
    offsets: np.ndarray  # (Q+1,) int64 output offsets in query order
    order: np.ndarray  # queries with frames, sorted by positive video (stable): the compute order


def plan_positives(positive_ids: list[str], split: SplitFrames) -> PositivePlan:
    column = {vid: j for j, vid in enumerate(split.video_ids)}
    columns = np.array([column.get(v, -1) for v in positive_ids], dtype=np.int64)
    lengths = np.zeros(len(columns), dtype=np.int64)
    lengths[columns >= 0] = split.lengths[columns[columns >= 0]]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    with_frames = np.flatnonzero(lengths > 0)
    order = with_frames[np.argsort(columns[with_frames], kind="stable")]
    return PositivePlan(columns, offsets, order)


def positive_frames_compute(sentences: da.Array, split: SplitFrames, plan: PositivePlan, query_block: int,
                            scheduler: str | None, **compute: Any) -> np.ndarray:
    """Flat positive-frame scores in query order.

    Tasks take query blocks in positive-video order, so each reads one narrow band of frames
    (not every shard, as query order could demand); the client then puts the scores, which are
    small next to the frames, back in query order.
    """
    import dask
    import dask.array as da

    pieces = []
    for a in range(0, len(plan.order), query_block):
        queries = plan.order[a:a + query_block]
        cols = plan.columns[queries]
        first, last = int(cols[0]), int(cols[-1])
        base = int(split.offsets[first])
        frames = split.frames[base:int(split.offsets[last + 1])]
        starts = split.offsets[cols] - base
        stops = split.offsets[cols + 1] - base
        total = int((stops - starts).sum())
        task = dask.delayed(positive_scores, pure=True)(sentences[queries], frames, starts, stops)
        pieces.append(da.from_delayed(task, shape=(total,), dtype=np.float16))
    if not pieces:
        return np.zeros(0, dtype=np.float16)
    in_order = da.concatenate(pieces).compute(scheduler=scheduler, **compute)
    # in_order holds the queries of plan.order back to back; gather them into query order.
    lengths = np.diff(plan.offsets)
    source_start = np.zeros(len(lengths), dtype=np.int64)
    source_start[plan.order] = np.concatenate([[0], np.cumsum(lengths[plan.order])[:-1]])
    gather = np.repeat(source_start - plan.offsets[:-1], lengths) + np.arange(plan.offsets[-1])
    return in_order[gather]


# ---- progress ----------------------------------------------------------------
def task_progress(progress: Progress | None, lo: float, hi: float, message: str, collection: Any,
                  scheduler: str | None) -> dict[str, Any]:
    """Keyword arguments for dask's compute that report the share of finished tasks, mapped onto
    [lo, hi], as progress. Only dask's local schedulers (threads, processes, sync) take callbacks;
    on a distributed Client this reports nothing here (its dashboard shows the tasks)."""
    if progress is None:
        return {}
    from dask.base import get_scheduler

    get = get_scheduler(scheduler=scheduler, collections=[collection])
    if not (getattr(get, "__module__", None) or "").startswith("dask."):
        return {}

    def posttask(key, result, dsk, state, worker_id) -> None:
        done = len(state["finished"])
        total = done + len(state["ready"]) + len(state["waiting"]) + len(state["running"])
        progress(hi if done >= total else lo + (hi - lo) * done / total, message)

    # dask's callback tuple: (start, start_state, pretask, posttask, finish); passed per call,
    # not registered globally, so computations in other threads never report here.
    return {"callbacks": [(None, None, None, posttask, None)]}


# ---- the stage ---------------------------------------------------------------
def build_teacher_cache(cfg: RunConfig, teacher_key: str, split: str, query_block: int = 1024,
                        scheduler: str | None = None, progress: Progress | None = None,
                        compute_in: Callable[[], AbstractContextManager] | None = None,
                        video_sim: bool | None = None) -> dict:
    """Compute and write one (teacher, split) cache unless one is committed under the current
    fingerprint. `video_sim` None: the (queries x videos) matrix only where it is read
    (`needs_video_sim`); True or False forces it. `scheduler` None uses dask's default: threads,
    or a distributed Client in scope.
    `progress(fraction, message)` hears each phase and, on dask's local schedulers, each finished task.
    `compute_in()` is entered around the computation only, e.g. a client of the configured Dask cluster."""
    report = progress or silent
    if query_block < 1:
        raise ValueError(f"query_block must be >= 1, got {query_block}")
    spec = _teacher_spec(cfg, teacher_key)
    started = time.perf_counter()
    FeatureStore(cfg.store)  # raises a clear error when there is no store, instead of creating one
    store = FeatureStore(cfg.store, mode="a")
    cache = TeacherCache(store)
    if video_sim is None:
        video_sim = needs_video_sim(cfg, store, split)
    inputs = _cache_inputs(store, teacher_key, split, video_sim)
    fp = fingerprint(inputs)
    if cache.status(teacher_key, split, fp) == "committed":
        info = cache.info(teacher_key, split)
        report(1.0, "unchanged inputs, cache kept")
        return {"teacher": teacher_key, "split": split, "queries": len(info["query_ids"]),
                "videos": len(info["video_ids"]), "skipped": True,
                "seconds": round(time.perf_counter() - started, 3),
                "missing_positives": info.get("stats", {}).get("missing_positives", 0)}

    # Only real work enters the caller's compute context (e.g. a Dask cluster): a kept cache starts nothing.
    with compute_in() if compute_in is not None else contextlib.nullcontext():
        text = store.text(split)
        sentences = store.dask_sentences(split, teacher_key, query_block)
        frames = split_frames(store, teacher_feature(spec), split)
        if sentences.shape[1] != frames.frames.shape[1]:
            raise StoreError(f"teacher {teacher_key}: sentences have {sentences.shape[1]} dims, "
                             f"frames {frames.frames.shape[1]}")
        n_queries, n_videos = len(text.query_ids), len(frames.video_ids)
        positives = plan_positives(text.video_ids, frames)
        missing = int((positives.columns < 0).sum())
        if missing:
            log.warning("%s/%s: %d of %d queries have no stored positive video in the split",
                        teacher_key, split, missing, n_queries)

        store.invalidate_consolidated()
        writer = cache.begin(teacher_key, split, text.query_ids, frames.video_ids, query_block, fp, inputs,
                             video_sim=video_sim)
        positive_share = VIDEO_SIM_SHARE if video_sim else 0.0
        if video_sim and n_queries and n_videos:
            sims = video_sim_dask(sentences, frames, writer.chunks)
            message = (f"query x video scores: {n_queries} queries x {n_videos} videos "
                       f"({int(frames.offsets[-1])} frames)")
            report(0.0, message)
            writer.store_video_sim(sims, scheduler=scheduler,
                                   **task_progress(progress, 0.0, VIDEO_SIM_SHARE, message, sims, scheduler))
        message = f"positive-frame scores of {n_queries} queries"
        report(positive_share, message)
        flat = positive_frames_compute(sentences, frames, positives, query_block, scheduler,
                                       **task_progress(progress, positive_share, 1.0, message, sentences, scheduler))
        writer.write_positive(flat, positives.offsets)
        seconds = time.perf_counter() - started
        writer.commit({"queries": n_queries, "videos": n_videos, "frames": int(frames.offsets[-1]),
                       "missing_positives": missing, "video_sim": video_sim, "seconds": round(seconds, 3)})
        report(1.0, f"committed in {seconds:.1f}s")
        log.info("%s/%s: %d queries x %d videos in %.1fs", teacher_key, split, n_queries, n_videos, seconds)
        return {"teacher": teacher_key, "split": split, "queries": n_queries, "videos": n_videos,
                "skipped": False, "seconds": round(seconds, 3), "missing_positives": missing, "video_sim": video_sim}
