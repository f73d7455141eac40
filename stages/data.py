"""A split of the feature store as tensors for the student: videos, queries, teacher targets."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from configs.schema import RunConfig
from stages.extract import visual_feature
from stages.sources import source_for
from storage.features import FeatureStore, StoreError, TextSplit, resampled_rows, teacher_array
from storage.split_rows import StoredFrames, StoredTokens

log = logging.getLogger("prvr.data")
VIDEO_CHUNK = 256  # videos read and encoded at once for a gallery (evaluation, the search index)


class TensorRows:
    """Rows held in memory, (N, width, dim) float16."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.tensor.shape)

    def take(self, rows: np.ndarray, width: int | None = None) -> torch.Tensor:
        return self.tensor[torch.as_tensor(rows, dtype=torch.long), :width]

    def all(self) -> torch.Tensor:
        return self.tensor


class StreamedRows:
    """Rows read from the store on demand; several features side by side (concatenated)."""

    def __init__(self, parts: list[StoredFrames] | list[StoredTokens]):
        self.parts = parts

    @property
    def shape(self) -> tuple[int, int, int]:
        n, width, _ = self.parts[0].shape
        return n, width, sum(p.dim for p in self.parts)

    def take(self, rows: np.ndarray, width: int | None = None) -> torch.Tensor:
        blocks = [p.take(rows, width) for p in self.parts]
        return torch.from_numpy(blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=-1))

    def all(self) -> torch.Tensor:
        return self.take(np.arange(self.shape[0]))


Rows = TensorRows | StreamedRows


@dataclass
class Batch:
    """Some videos with all their queries, as the training step reads them."""

    video: torch.Tensor  # (B, T, Dv) student visual features
    video_mask: torch.Tensor  # (B, T) bool
    tokens: torch.Tensor  # (Q, L, Dt)
    token_mask: torch.Tensor  # (Q, L) bool
    query_video: torch.Tensor  # (Q,) long: each query's video in the batch
    teacher_scores: dict[str, torch.Tensor] = field(default_factory=dict)  # key -> (Q, T) on each query's video
    teacher_frames: dict[str, torch.Tensor] = field(default_factory=dict)  # key -> (B, T, D) normalised (DL-DKD++)
    teacher_sentences: dict[str, torch.Tensor] = field(default_factory=dict)  # key -> (Q, D) normalised (DL-DKD++)

    def named_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor by a name of its own (`teacher_scores/<key>` for the teachers'): for comparisons."""
        named = {k: getattr(self, k) for k in ("video", "video_mask", "tokens", "token_mask", "query_video")}
        for group in ("teacher_scores", "teacher_frames", "teacher_sentences"):
            named.update({f"{group}/{key}": value for key, value in getattr(self, group).items()})
        return named

    def map(self, fn) -> Batch:
        """The batch with `fn` applied to every tensor."""
        return Batch(fn(self.video), fn(self.video_mask), fn(self.tokens), fn(self.token_mask), fn(self.query_video),
                     *({k: fn(v) for k, v in getattr(self, g).items()}
                       for g in ("teacher_scores", "teacher_frames", "teacher_sentences")))

    def to_device(self, device: torch.device | str, pin: bool = False) -> Batch:
        from stages.prefetch import to_device

        return self.map(lambda t: to_device(t, device, pin))


@dataclass
class SplitData:
    """A split for training or evaluation: metadata in memory, frames and tokens in memory or
    streamed from the store (`streamed`), batches the same either way."""

    split: str
    video_ids: list[str]
    frames: Rows  # (N, T, Dv) float16, student visual features (concatenated)
    video_mask: torch.Tensor  # (N, T) bool
    times: torch.Tensor  # (N, T) float32 seconds
    query_ids: list[str]
    texts: list[str]
    token_rows: Rows  # (Q, L, Dt) float16
    token_mask: torch.Tensor  # (Q, L) bool
    query_video: torch.Tensor  # (Q,) long: row of each query's video in `video`
    moments: np.ndarray  # (Q, 2) seconds, NaN when unknown
    durations: np.ndarray  # (N,)
    teacher_positive: dict[str, torch.Tensor] = field(default_factory=dict)  # key -> (Q, T) scores on own video
    # key -> (frames (N, T, Dt), sentences (Q, Dt)) float16, normalised: in-batch teacher scores (DL-DKD++)
    teacher_views: dict[str, tuple[Rows, torch.Tensor]] = field(default_factory=dict)
    queries_by_video: list[np.ndarray] = field(default_factory=list)
    # Queries of the split whose video is not in the store (its extraction failed): evaluation counts them
    # as misses, training cannot use them.
    queries_without_video: list[str] = field(default_factory=list)
    streamed: bool = False

    def __post_init__(self) -> None:
        order = self.query_video.numpy()
        self.queries_by_video = [np.flatnonzero(order == v) for v in range(len(self.video_ids))]

    @property
    def video_dim(self) -> int:
        return int(self.frames.shape[-1])

    @property
    def text_dim(self) -> int:
        return int(self.token_rows.shape[-1])

    @property
    def max_frames(self) -> int:
        return int(self.video_mask.shape[1])

    @property
    def max_tokens(self) -> int:
        return int(self.token_mask.shape[1])

    @property
    def video(self) -> torch.Tensor:
        """Every video's frames at once (read whole when streamed: for small data and tests)."""
        return self.frames.all()

    @property
    def tokens(self) -> torch.Tensor:
        """Every query's tokens at once (read whole when streamed: for small data and tests)."""
        return self.token_rows.all()

    def video_rows(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(frames float32 (n, T, Dv), mask (n, T)) of some videos at the split's padding."""
        return self.frames.take(rows).float(), self.video_mask[torch.as_tensor(rows, dtype=torch.long)]

    def query_rows(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens float32 (n, L, Dt), mask (n, L)) of some queries at the split's padding."""
        return self.token_rows.take(rows).float(), self.token_mask[torch.as_tensor(rows, dtype=torch.long)]

    def batch(self, video_rows: np.ndarray, device: torch.device | str = "cpu",
              pad_to_batch: bool = True, float32: bool = True) -> Batch:
        """Videos with all their queries; query_video indexes the batch's videos.

        Frames and tokens are cut to the batch's longest video and query (padding sits at the end and
        is masked everywhere, so the outputs are those of the split-wide padding, at less cost);
        pad_to_batch=False keeps the split-wide padding (for comparisons). float32=False leaves the
        features in float16, half the memory in a prefetch queue and on the way to a GPU
        (`as_float32` converts them where they are used)."""
        queries = np.concatenate([self.queries_by_video[v] for v in video_rows])
        position = {int(v): i for i, v in enumerate(video_rows)}
        query_video = torch.tensor([position[int(self.query_video[q])] for q in queries], dtype=torch.long)
        rows = torch.as_tensor(video_rows, dtype=torch.long)
        qrows = torch.as_tensor(queries, dtype=torch.long)
        video_mask, token_mask = self.video_mask[rows], self.token_mask[qrows]
        frames, tokens = video_mask.shape[1], token_mask.shape[1]
        if pad_to_batch:
            frames = max(1, int(video_mask.sum(1).max()))
            tokens = max(1, int(token_mask.sum(1).max())) if len(qrows) else 1
        out = Batch(
            video=self.frames.take(video_rows, frames), video_mask=video_mask[:, :frames],
            tokens=self.token_rows.take(queries, tokens), token_mask=token_mask[:, :tokens], query_video=query_video,
            teacher_scores={key: scores[qrows, :frames] for key, scores in self.teacher_positive.items()},
            teacher_frames={key: view.take(video_rows, frames) for key, (view, _) in self.teacher_views.items()},
            teacher_sentences={key: sentences[qrows] for key, (_, sentences) in self.teacher_views.items()},
        ).map(lambda t: t.to(device))
        return as_float32(out) if float32 else out


def as_float32(batch: Batch) -> Batch:
    """A batch's float16 features as float32 (masks and indices as they are)."""
    return batch.map(lambda v: v.float() if v.dtype == torch.float16 else v)


@dataclass
class Gallery:
    video_ids: list[str]
    video: torch.Tensor  # (N, T, Dv) float16
    video_mask: torch.Tensor  # (N, T) bool
    times: torch.Tensor  # (N, T) seconds
    durations: np.ndarray  # (N,)


def load_videos(cfg: RunConfig, splits: list[str], store: FeatureStore | None = None) -> Gallery:
    """The student's view of the videos of some splits, padded to one length."""
    store = store or FeatureStore(cfg.store)
    max_frames = cfg.train.max_frames or cfg.extract.max_frames
    per_split = []
    for split in splits:
        if not store.split_video_ids(split):
            continue
        parts = [store.padded(split, visual_feature(v), max_frames=max_frames, dtype=np.float16) for v in cfg.train.visual]
        if any(p.video_ids != parts[0].video_ids for p in parts):
            raise StoreError("visual features disagree on the videos of a split")
        per_split.append((parts[0], np.concatenate([p.features for p in parts], axis=-1)))
    if not per_split:
        raise StoreError(f"no videos of splits {splits} in {store.location}")
    t_max = max(p.mask.shape[1] for p, _ in per_split)

    def pad(a: np.ndarray) -> np.ndarray:
        width = [(0, 0), (0, t_max - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
        return np.pad(a, width)

    locations = store.video_index()
    video_ids = [vid for p, _ in per_split for vid in p.video_ids]
    return Gallery(
        video_ids=video_ids,
        video=torch.from_numpy(np.concatenate([pad(f) for _, f in per_split])),
        video_mask=torch.from_numpy(np.concatenate([pad(p.mask) for p, _ in per_split])),
        times=torch.from_numpy(np.concatenate([pad(p.times) for p, _ in per_split])),
        durations=np.array([locations[v].duration for v in video_ids], dtype=np.float32),
    )


def split_bytes(cfg: RunConfig, split: str, store: FeatureStore, text: TextSplit | None = None) -> int:
    """Bytes a split's frames and tokens take in memory (float16, padded): what streaming saves.
    `text`: the split's text when the caller has opened it already (opening checks its sizes)."""
    max_frames = cfg.train.max_frames or cfg.extract.max_frames
    index = store.video_index()
    split = store.resolve_split(split)
    lengths = [min(loc.stop - loc.start, max_frames) for loc in index.values() if loc.split == split]
    if not lengths:
        return 0
    widths = [store.shard_array(next(iter(index.values())).shard, visual_feature(v)).shape[1]
              for v in cfg.train.visual]
    tokens, _ = (text or store.text(split)).lazy_tokens(source_for(cfg).text_features())
    return 2 * (len(lengths) * max(lengths) * sum(widths) + int(np.prod(tokens.shape)))


def streams(cfg: RunConfig, split: str, store: FeatureStore, text: TextSplit | None = None) -> bool:
    """Whether a split is streamed from the store (train.data), `auto` streaming what exceeds
    train.memory_limit_gb."""
    mode = cfg.train.data
    if mode == "auto":
        return split_bytes(cfg, split, store, text) > cfg.train.memory_limit_gb * 2**30
    return mode == "stream"


def load_split(cfg: RunConfig, split: str, teachers: list[str] = (), store: FeatureStore | None = None,
               teacher_views: list[str] = (), stream: bool | None = None) -> SplitData:
    """A split of the store; `stream` None decides by train.data (see `streams`)."""
    store = store or FeatureStore(cfg.store)
    text = store.text(split)
    stream = streams(cfg, split, store, text) if stream is None else stream
    max_frames = cfg.train.max_frames or cfg.extract.max_frames
    if stream:
        parts = [StoredFrames(store, split, visual_feature(v), max_frames) for v in cfg.train.visual]
        video_ids = parts[0].video_ids
        times, mask = parts[0].times_and_mask()
        locations = store.video_index()
        frames: Rows = StreamedRows(parts)
        video_mask, times = torch.from_numpy(mask), torch.from_numpy(times)
        durations = np.array([locations[v].duration for v in video_ids], dtype=np.float32)
    else:
        videos = load_videos(cfg, [split], store)
        video_ids, frames = videos.video_ids, TensorRows(videos.video)
        video_mask, times, durations = videos.video_mask, videos.times, videos.durations
    index = {vid: i for i, vid in enumerate(video_ids)}

    keep = [i for i, vid in enumerate(text.video_ids) if vid in index]
    without_video = [q for q, vid in zip(text.query_ids, text.video_ids) if vid not in index]
    if without_video:
        log.warning("split %s: %d of %d queries have no video in the store (its extraction failed?), e.g. %s; "
                    "training leaves them out, evaluation counts them as misses",
                    split, len(without_video), len(text.query_ids), without_video[:5])
    tok_key = source_for(cfg).text_features()
    if stream:
        stored_tokens = StoredTokens(text, tok_key, np.asarray(keep, dtype=np.int64))
        token_rows: Rows = StreamedRows([stored_tokens])
        lengths, width = stored_tokens.lengths, stored_tokens.width
    else:
        tokens, lengths = text.tokens(tok_key)
        tokens, lengths = tokens[keep], lengths[keep]
        token_rows, width = TensorRows(torch.from_numpy(tokens)), tokens.shape[1]
    token_mask = np.arange(width)[None, :] < lengths[:, None]
    query_video = np.array([index[text.video_ids[i]] for i in keep], dtype=np.int64)
    data = SplitData(
        split=split, video_ids=video_ids, frames=frames, video_mask=video_mask,
        times=times, query_ids=[text.query_ids[i] for i in keep],
        texts=[text.texts[i] for i in keep], token_rows=token_rows, token_mask=torch.from_numpy(token_mask),
        query_video=torch.from_numpy(query_video), moments=text.moments[keep],
        durations=durations, queries_without_video=without_video, streamed=stream,
    )
    t_len = data.max_frames
    for key in teacher_views:
        sentences = torch.from_numpy(text.sentences(key)[keep].astype(np.float16))
        if stream:
            view = StoredFrames(store, split, teacher_array(key), max_frames)
            view_ids, rows = view.video_ids, StreamedRows([view])
        else:
            padded = store.padded(split, teacher_array(key), max_frames=max_frames, dtype=np.float16)
            view_ids = padded.video_ids
            frames_of_teacher = np.zeros((len(view_ids), t_len, padded.features.shape[-1]), dtype=np.float16)
            frames_of_teacher[:, : min(t_len, padded.features.shape[1])] = padded.features[:, :t_len]
            rows = TensorRows(torch.from_numpy(frames_of_teacher))
        if view_ids != video_ids:
            raise StoreError(f"teacher {key} frames and the student's videos disagree in split {split!r}")
        data.teacher_views[key] = (rows, sentences)
    if teachers:
        from storage.teacher_cache import TeacherCache

        cache = TeacherCache(store)
        n_frames = data.video_mask.sum(1).numpy()[query_video]
        for key in teachers:
            flat, offsets = cache.positive_frames(key, split)  # rows in text(split) order
            scores = np.zeros((len(keep), t_len), dtype=np.float32)
            for j, i in enumerate(keep):
                row = flat[offsets[i]:offsets[i + 1]].astype(np.float32)
                if len(row) != n_frames[j]:  # the student view was resampled to train.max_frames
                    row = row[resampled_rows(len(row), int(n_frames[j]))]
                scores[j, : n_frames[j]] = row
            data.teacher_positive[key] = torch.from_numpy(scores)
    return data
