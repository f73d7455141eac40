"""Free-text search over the stored videos with a trained student: ranked videos and moments.

A `Searcher` holds what every query needs, loaded once: the student, the text encoder that
made the stored query tokens (with the same token budget), and the run's index (the encoded
gallery, memory-mapped; stages/index.py builds it). A query is then: text -> tokens -> query
vector per branch -> scores against every frame -> per-video maximum -> top K -> moments.

Ranking is exact for the stored (float16) vectors. A first pass scores every frame in float16,
which is fast on CPUs but rounds; its error is bounded (FAST_SCORE_ERROR), so every video that
could belong to the top K is kept and scored again in float32 by the student's own
`score_encoded`, the function evaluation ranks with. The order and the scores shown are those.
"""

from __future__ import annotations

import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from configs.schema import RunConfig
from prvr.errors import UsageError, UserError
from stages.extract import token_model
from stages.index import build_index, current_selection, run_index_root, search_unavailable
from storage.features import FeatureStore
from storage.index import SearchIndex, open_index

MAX_QUERY_CHARS = 500
# Bound on |float16 pass - exact| for unit vectors: the query's rounding to float16 (<= u) and the
# output's (<= u |score| <= u), u = 2**-11, with float32 accumulation; 4u leaves room for the rest.
FAST_SCORE_ERROR = 4 * 2.0 ** -11
EXACT_CHUNK = 256  # candidate videos scored exactly per step


class QueryError(UserError, ValueError):
    """A query that cannot be searched for: empty, too long, or not text."""


def check_query(text: Any) -> str:
    """The query as it is searched for (surrounding white space removed); QueryError saying what is wrong."""
    if not isinstance(text, str):
        raise QueryError(f"the query must be text, got {type(text).__name__}")
    text = text.strip()
    if not text:
        raise QueryError("the query text is empty")
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"the query is {len(text)} characters long; at most {MAX_QUERY_CHARS} are searched for")
    if "\ufffd" in text:
        raise QueryError("the query is not text: it holds U+FFFD, the mark of bytes that were not UTF-8")
    for position, char in enumerate(text):
        if unicodedata.category(char) in ("Cc", "Cs", "Co", "Cn") and char not in "\t\n\r":
            raise QueryError(f"the query is not text: it holds the control or unassigned character "
                             f"U+{ord(char):04X} at position {position}")
    if not any(unicodedata.category(char)[0] in "LN" for char in text):
        raise QueryError("the query holds no letters or digits")
    return text


@dataclass(frozen=True)
class Hit:
    rank: int
    video_id: str
    score: float
    moment: tuple[float, float]
    split: str = ""
    best_time: float = 0.0  # time of the best-matching frame (the thumbnail's)
    duration: float = 0.0
    times: tuple[float, ...] = ()  # the video's indexed frame times
    frame_scores: tuple[float, ...] = ()  # the query's score on each of those frames (the timeline)

    def as_dict(self, timeline: bool = True) -> dict[str, Any]:
        out = {"rank": self.rank, "video_id": self.video_id, "score": self.score, "moment": list(self.moment),
               "split": self.split, "best_time": self.best_time, "duration": self.duration}
        if timeline:
            out["times"] = [round(t, 3) for t in self.times]
            out["frame_scores"] = [round(s, 5) for s in self.frame_scores]
        return out


class QueryEncoder:
    """Sentences -> student token features, as extraction made the stored ones."""

    def __init__(self, cfg: RunConfig, device: str = "cpu"):
        from models.clip import load_clip_encoder
        from stages.weights import fetch_pretrained

        teacher = next(t for t in cfg.extract.teacher if t.key == token_model(cfg.extract))
        fetch_pretrained(teacher.model, teacher.pretrained, cfg.dataset.root)
        self.encoder = load_clip_encoder(teacher.model, teacher.pretrained, device, cfg.extract.seed)
        self.max_tokens = min(cfg.extract.max_tokens, self.encoder.context_length)
        self.device = device

    @torch.inference_mode()
    def tokens(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens (Q, L, D) float32, mask (Q, L) bool) with the same budget and float16 rounding as stored."""
        tokens, lengths = self.encoder.encode_tokens(texts, max_tokens=self.max_tokens)
        tokens = tokens.to(torch.float16).float()
        mask = torch.arange(tokens.shape[1])[None, :] < lengths[:, None].cpu()
        return tokens, mask


class Searcher:
    """The student, its text encoder and the run's index, loaded once for many queries."""

    def __init__(self, model, branch: str, index: SearchIndex, encoder: QueryEncoder | None = None,
                 device: str = "cpu", threads: int | None = None):
        self.model, self.branch, self.index, self.encoder, self.device = model, branch, index, encoder, device
        self.frames = {b: torch.from_numpy(a) for b, a in index.frames.items()}
        self.starts = index.offsets[:-1]
        self.lengths = np.diff(index.offsets)
        workers = threads or torch.get_num_threads()
        # Each branch in blocks of whole videos, scored side by side (torch and numpy release the GIL).
        cuts = np.unique(np.searchsorted(self.starts, np.linspace(0, index.record["frames"], workers + 1)[1:-1]))
        edges = [0, *[int(c) for c in cuts if 0 < c < len(self.starts)], len(self.starts)]
        self.blocks = [(b, slice(lo, hi)) for b in self.frames for lo, hi in zip(edges, edges[1:])]
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="prvr-search")

    @classmethod
    def open(cls, cfg: RunConfig, splits: list[str] | None = None, progress=None) -> Searcher:
        """The searcher of run `cfg.name`: its index brought up to date first (built when missing, stale
        or damaged; `splits` None keeps the index's selection, all videos when there is none)."""
        from models.clip import resolve_device
        from stages.trained import load_trained_student

        unavailable = search_unavailable(cfg)
        if unavailable:
            raise UsageError(unavailable)
        device = resolve_device(cfg.train.device)
        store = FeatureStore(cfg.store)
        trained = load_trained_student(cfg, cfg.evaluate.checkpoint, device, store)  # best unless set
        selection = splits if splits is not None else current_selection(cfg)
        build_index(cfg, selection, progress, trained=trained, store=store)
        model, branch, _ = trained
        return cls(model, branch, open_index(run_index_root(cfg)), QueryEncoder(cfg, device), device)

    def close(self) -> None:
        self.pool.shutdown(wait=False)

    @property
    def video_count(self) -> int:
        return len(self.index.video_ids)

    @torch.inference_mode()
    def encode(self, text: str) -> dict[str, torch.Tensor]:
        """A sentence -> {branch: (1, H) normalised query vector} on the CPU."""
        tokens, mask = self.encoder.tokens([check_query(text)])
        encoded = self.model.encode_queries(tokens.to(self.device), mask.to(self.device), self.branch)
        return {b: v.float().cpu() for b, v in encoded.items()}

    def search(self, text: str, top: int = 10) -> list[Hit]:
        return self.rank(self.encode(text), top)

    # ---- scoring -------------------------------------------------------------
    def _fused(self, per_branch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(V,) the student's fusion of per-branch video scores (V,), applied by score_encoded itself: it fuses
        each branch's maximum over frames, so each video's branch maximum goes in as a one-frame video
        scored by a unit query."""
        unit = {b: torch.ones(1, 1) for b in per_branch}
        one_frame = {b: s.float()[:, None, None] for b, s in per_branch.items()}
        mask = torch.ones(len(next(iter(per_branch.values()))), 1, dtype=torch.bool)
        return self.model.score_encoded(unit, one_frame, mask, self.branch)[0]

    @torch.inference_mode()
    def fast_scores(self, query: dict[str, torch.Tensor]) -> torch.Tensor:
        """(V,) video scores from float16 arithmetic: within FAST_SCORE_ERROR of the exact ones."""
        per_video = {b: np.empty(len(self.starts), dtype=np.float32) for b in self.frames}
        half = {b: q.to(torch.float16) for b, q in query.items()}
        offsets = self.index.offsets

        def score(block: tuple[str, slice]) -> None:
            branch, videos = block
            first, last = int(offsets[videos.start]), int(offsets[videos.stop])
            with torch.inference_mode():  # per thread
                frame_scores = F.linear(self.frames[branch][first:last], half[branch])[:, 0].numpy()
            # numpy converts float16 to float32 an order of magnitude faster than torch does on CPUs.
            per_video[branch][videos] = np.maximum.reduceat(frame_scores.astype(np.float32),
                                                            self.starts[videos] - first)

        list(self.pool.map(score, self.blocks))
        return self._fused({b: torch.from_numpy(v) for b, v in per_video.items()})

    def _padded(self, videos: np.ndarray) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Frames of some videos as the student's (B, T, H) float32 gallery, with its mask."""
        t_max = int(self.lengths[videos].max())
        mask = torch.zeros(len(videos), t_max, dtype=torch.bool)
        frames = {b: np.zeros((len(videos), t_max, a.shape[1]), dtype=np.float32) for b, a in self.index.frames.items()}
        for i, v in enumerate(videos):
            rows = self.index.rows(int(v))
            n = rows.stop - rows.start
            mask[i, :n] = True
            for b, a in self.index.frames.items():
                frames[b][i, :n] = a[rows]
        return {b: torch.from_numpy(f) for b, f in frames.items()}, mask

    @torch.inference_mode()
    def exact_scores(self, query: dict[str, torch.Tensor], videos: np.ndarray) -> np.ndarray:
        """Scores of `videos` as evaluation computes them (score_encoded, float32) from the stored vectors."""
        parts = []
        for start in range(0, len(videos), EXACT_CHUNK):
            frames, mask = self._padded(videos[start:start + EXACT_CHUNK])
            parts.append(self.model.score_encoded(query, frames, mask, self.branch)[0].numpy())
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def top_videos(self, query: dict[str, torch.Tensor], top: int) -> tuple[np.ndarray, np.ndarray]:
        """(video rows, exact scores) of the `top` best videos, best first (ties: index order)."""
        top = max(1, min(int(top), self.video_count))
        fast = self.fast_scores(query).numpy()
        kth = np.partition(fast, -top)[-top]
        # Any video of the exact top K scores at least kth - 2 * error in the fast pass.
        candidates = np.flatnonzero(fast >= kth - 2 * FAST_SCORE_ERROR)
        exact = self.exact_scores(query, candidates)
        order = np.lexsort((candidates, -exact))[:top]
        return candidates[order], exact[order]

    @torch.inference_mode()
    def rank(self, query: dict[str, torch.Tensor], top: int = 10) -> list[Hit]:
        from stages.moments import predict_moment

        videos, scores = self.top_videos(query, top)
        frames, mask = self._padded(videos)
        per_frame = self.model.frame_scores_encoded(query, frames, self.branch)[0].numpy()
        hits = []
        for rank, (v, score) in enumerate(zip(videos.tolist(), scores.tolist()), 1):
            rows = self.index.rows(v)
            n = rows.stop - rows.start
            curve, times = per_frame[rank - 1, :n].astype(np.float64), self.index.times[rows].astype(np.float64)
            duration = float(self.index.durations[v])
            start, end = predict_moment(curve, times, duration)
            hits.append(Hit(rank, self.index.video_ids[v], float(score), (float(start), float(end)),
                            self.index.splits[v], float(times[int(np.argmax(curve))]), duration,
                            tuple(times.tolist()), tuple(curve.tolist())))
        return hits


def search(cfg: RunConfig, text: str, top: int = 10, splits: list[str] | None = None) -> list[Hit]:
    """One query: the searcher opened (the index built if needed), used once and closed."""
    check_query(text)
    searcher = Searcher.open(cfg, splits)
    try:
        return searcher.search(text, top)
    finally:
        searcher.close()
