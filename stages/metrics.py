"""Video-level retrieval metrics for PRVR: the rank of each query's ground-truth video
among all gallery videos, and Recall@K / SumR over those ranks.

Pure functions over numpy arrays or torch tensors; no I/O. Evaluation runs in chunks of
queries so that only a (chunk, videos) score block is ever held in memory.

Tie rule (documented contract, tested):
    ties="optimistic" (default): rank = 1 + number of videos whose score is strictly
        higher than the positive's. A video tied with the positive does not push it
        down ("standard competition ranking", as in 1224 ranking).
    ties="pessimistic": rank = 1 + number of *other* videos whose score is >= the
        positive's, i.e. every tie is counted against the query.
For real-valued model scores ties are rare and both rules agree; they differ for
degenerate scorers. A scorer that returns one constant for every video gets rank 1
everywhere (R@1 = 100) under the optimistic rule and rank V under the pessimistic one,
so RankAccumulator counts the queries whose positive is tied with some other video
(`tied_queries`) to make such a case visible. NaN scores are rejected: a NaN never
compares greater, so it would silently rank first under either rule.

Misses: a query whose video is not in the gallery at all (its extraction failed) still counts
in every recall, as found at no K (it ranks after every video, also past a gallery smaller than
K), so a failed video lowers recall instead of silently leaving the figures.
"""

from __future__ import annotations

from typing import Callable, Literal

import numpy as np
import torch

from stages.progress import Progress, counting

KS: tuple[int, ...] = (1, 5, 10, 100)
TieRule = Literal["optimistic", "pessimistic"]
ScoreChunk = Callable[[slice], "torch.Tensor | np.ndarray"]


def _check_tie_rule(ties: str) -> None:
    if ties not in ("optimistic", "pessimistic"):
        raise ValueError(f"ties must be 'optimistic' or 'pessimistic', got {ties!r}")


def _rank_counts(scores: np.ndarray | torch.Tensor, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query: (#videos scoring strictly higher than the positive, #other videos tied with it)."""
    if scores.ndim != 2:
        raise ValueError(f"scores must be (queries, videos), got shape {tuple(scores.shape)}")
    num_queries, num_videos = scores.shape
    positive = np.asarray(positive)
    if positive.shape != (num_queries,):
        raise ValueError(f"positive must have shape ({num_queries},), got {positive.shape}")
    if not np.issubdtype(positive.dtype, np.integer):
        raise ValueError(f"positive must hold integer column indices, got dtype {positive.dtype}")
    if num_queries and (positive.min() < 0 or positive.max() >= num_videos):
        raise ValueError(f"positive indices must lie in [0, {num_videos}), got [{positive.min()}, {positive.max()}]")

    if isinstance(scores, torch.Tensor):
        # Stay on the scores' device: the block may be a GPU tensor; only (Q,) counts come back.
        scores = scores.detach()
        if torch.isnan(scores).any():
            raise ValueError("scores contain NaN")
        index = torch.as_tensor(positive, dtype=torch.long, device=scores.device)
        positive_scores = scores.gather(1, index[:, None])
        higher = (scores > positive_scores).sum(dim=1)
        equal = (scores == positive_scores).sum(dim=1) - 1  # minus the positive itself
        return higher.cpu().numpy().astype(np.int64), equal.cpu().numpy().astype(np.int64)

    scores = np.asarray(scores)
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    positive_scores = scores[np.arange(num_queries), positive][:, None]
    higher = (scores > positive_scores).sum(axis=1)
    equal = (scores == positive_scores).sum(axis=1) - 1
    return higher.astype(np.int64), equal.astype(np.int64)


def ranks_of_positives(
    scores: np.ndarray | torch.Tensor, positive: np.ndarray, ties: TieRule = "optimistic"
) -> np.ndarray:
    """1-based rank of each query's ground-truth video.

    scores: (Q, V) query-to-video scores for a chunk of queries (higher = more relevant).
    positive: (Q,) integer column of each query's ground-truth video.
    Returns (Q,) int64 ranks in [1, V]. Tie rule: see the module docstring.
    """
    _check_tie_rule(ties)
    higher, equal = _rank_counts(scores, positive)
    return 1 + higher + (equal if ties == "pessimistic" else 0)


def recall_at_k(ranks: np.ndarray, ks: tuple[int, ...] = KS, misses: int = 0) -> dict[str, float]:
    """{"R@k": percent of queries with rank <= k (0..100) for each k, "SumR": their sum}, over the
    ranked queries plus `misses` queries whose video is not in the gallery (found at no k)."""
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or ranks.size + misses == 0:
        raise ValueError(f"ranks must be a non-empty 1-d array, got shape {ranks.shape}")
    total = ranks.size + misses
    result = {f"R@{k}": float(100.0 * np.sum(ranks <= k) / total) for k in ks}
    result["SumR"] = float(sum(result[f"R@{k}"] for k in ks))
    return result


class RankAccumulator:
    """Collects ranks chunk by chunk so the full (queries, videos) matrix never exists."""

    def __init__(self, ks: tuple[int, ...] = KS, ties: TieRule = "optimistic") -> None:
        _check_tie_rule(ties)
        self.ks = tuple(ks)
        self.ties: TieRule = ties
        self._chunks: list[np.ndarray] = []
        self.tied_queries = 0  # queries whose positive shares its score with another video
        self.misses = 0  # queries whose video is not in the gallery

    def add_misses(self, count: int) -> None:
        """`count` queries whose video is not in the gallery: found at no K."""
        self.misses += count

    def add(self, scores_chunk: np.ndarray | torch.Tensor, positive_chunk: np.ndarray) -> np.ndarray:
        """Rank one chunk of queries; returns that chunk's ranks."""
        higher, equal = _rank_counts(scores_chunk, positive_chunk)
        ranks = 1 + higher + (equal if self.ties == "pessimistic" else 0)
        self.tied_queries += int((equal > 0).sum())
        self._chunks.append(ranks)
        return ranks

    @property
    def ranks(self) -> np.ndarray:
        """All ranks so far, in the order the chunks were added."""
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, dtype=np.int64)

    @property
    def num_queries(self) -> int:
        """Ranked queries; misses not included."""
        return sum(len(chunk) for chunk in self._chunks)

    def result(self) -> dict[str, float]:
        return recall_at_k(self.ranks, self.ks, self.misses)


def evaluate_chunked(
    score_chunk: ScoreChunk,
    positive: np.ndarray,
    chunk: int = 1024,
    progress: Progress | None = None,
    ks: tuple[int, ...] = KS,
    ties: TieRule = "optimistic",
    misses: int = 0,
) -> tuple[dict[str, float], np.ndarray]:
    """Rank every query against the whole gallery, `chunk` queries at a time.

    score_chunk(query_slice) must return the (len(slice), V) score block for those queries.
    positive: (Q,) ground-truth video column per query. progress(fraction, "done/total queries
    ranked") is called after each chunk. `misses`: more queries, whose video is not in the gallery; the metrics
    count them as found at no K. Returns (recall_at_k metrics, (Q,) ranks of the ranked queries).
    """
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    positive = np.asarray(positive)
    total = len(positive)
    accumulator = RankAccumulator(ks=ks, ties=ties)
    accumulator.add_misses(misses)
    ranked = counting(progress, total, "queries ranked")
    for start in range(0, total, chunk):
        queries = slice(start, min(start + chunk, total))
        scores = score_chunk(queries)
        expected = queries.stop - queries.start
        if scores.shape[0] != expected:
            raise ValueError(f"score_chunk({queries}) returned {scores.shape[0]} rows, expected {expected}")
        accumulator.add(scores, positive[queries])
        ranked(queries.stop)
    return accumulator.result(), accumulator.ranks
