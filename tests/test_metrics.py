"""Retrieval ranks / Recall@K and moment metrics against direct (loop) implementations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.metrics import KS, RankAccumulator, evaluate_chunked, ranks_of_positives, recall_at_k
from stages.moments import moment_recall, predict_moment, temporal_iou


# ---- direct implementations -------------------------------------------------------
def direct_ranks(scores: np.ndarray, positive: np.ndarray, ties: str) -> np.ndarray:
    ranks = []
    for q in range(scores.shape[0]):
        target = scores[q, positive[q]]
        rank = 1
        for v in range(scores.shape[1]):
            if scores[q, v] > target:
                rank += 1
            elif ties == "pessimistic" and v != positive[q] and scores[q, v] == target:
                rank += 1
        ranks.append(rank)
    return np.array(ranks)


def direct_recall(ranks: np.ndarray, ks=KS) -> dict[str, float]:
    out = {}
    for k in ks:
        hits = 0
        for r in ranks:
            hits += 1 if r <= k else 0
        out[f"R@{k}"] = 100.0 * hits / len(ranks)
    out["SumR"] = sum(out[f"R@{k}"] for k in ks)
    return out


def random_problem(rng: np.random.Generator, queries: int, videos: int, integer: bool = False):
    # Integer-valued scores from a small range produce many ties.
    scores = rng.integers(0, 4, size=(queries, videos)).astype(np.float32) if integer else rng.normal(size=(queries, videos)).astype(np.float32)
    positive = rng.integers(0, videos, size=queries)
    return scores, positive


# ---- ranks ------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("integer", [False, True])
@pytest.mark.parametrize("ties", ["optimistic", "pessimistic"])
def test_ranks_match_direct_numpy_and_torch(seed: int, integer: bool, ties: str) -> None:
    rng = np.random.default_rng(seed)
    scores, positive = random_problem(rng, 37, 53, integer)
    expected = direct_ranks(scores, positive, ties)
    got_numpy = ranks_of_positives(scores, positive, ties=ties)
    got_torch = ranks_of_positives(torch.from_numpy(scores), positive, ties=ties)
    np.testing.assert_array_equal(got_numpy, expected)
    np.testing.assert_array_equal(got_torch, expected)
    assert got_numpy.dtype == np.int64 and got_torch.dtype == np.int64
    assert got_numpy.min() >= 1 and got_numpy.max() <= scores.shape[1]


def test_default_tie_rule_counts_only_strictly_higher_scores() -> None:
    scores = np.array([[1.0, 2.0, 2.0, 0.0], [3.0, 3.0, 3.0, 3.0], [5.0, 1.0, 2.0, 3.0]])
    positive = np.array([1, 2, 3])
    np.testing.assert_array_equal(ranks_of_positives(scores, positive), [1, 1, 2])
    np.testing.assert_array_equal(ranks_of_positives(scores, positive, ties="pessimistic"), [2, 4, 2])


def test_ranks_accept_torch_tensors_that_require_grad() -> None:
    scores = torch.randn(5, 9, requires_grad=True)
    positive = np.arange(5)
    expected = direct_ranks(scores.detach().numpy(), positive, "optimistic")
    np.testing.assert_array_equal(ranks_of_positives(scores, positive), expected)


def test_ranks_reject_bad_input() -> None:
    scores = np.zeros((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="NaN"):
        ranks_of_positives(np.array([[0.0, np.nan, 1.0]]), np.array([0]))
    with pytest.raises(ValueError, match="NaN"):
        ranks_of_positives(torch.tensor([[0.0, float("nan"), 1.0]]), np.array([0]))
    with pytest.raises(ValueError, match="lie in"):
        ranks_of_positives(scores, np.array([0, 3]))
    with pytest.raises(ValueError, match="shape"):
        ranks_of_positives(scores, np.array([0]))
    with pytest.raises(ValueError, match="integer"):
        ranks_of_positives(scores, np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="queries, videos"):
        ranks_of_positives(np.zeros(3), np.array([0]))
    with pytest.raises(ValueError, match="ties"):
        ranks_of_positives(scores, np.array([0, 1]), ties="average")  # type: ignore[arg-type]


# ---- recall -----------------------------------------------------------------------
def test_recall_is_percent_and_sumr_is_the_sum() -> None:
    ranks = np.array([1, 2, 6, 11, 101])
    assert recall_at_k(ranks) == {"R@1": 20.0, "R@5": 40.0, "R@10": 60.0, "R@100": 80.0, "SumR": 200.0}
    assert recall_at_k(np.ones(7, dtype=np.int64))["SumR"] == 400.0


@pytest.mark.parametrize("seed", [0, 1])
def test_recall_matches_direct(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ranks = rng.integers(1, 300, size=211)
    got = recall_at_k(ranks)
    expected = direct_recall(ranks)
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key])
    custom = recall_at_k(ranks, ks=(2, 50))
    assert list(custom) == ["R@2", "R@50", "SumR"]
    assert custom["R@50"] == pytest.approx(direct_recall(ranks, (2, 50))["R@50"])


def test_misses_count_as_found_at_no_k_even_past_a_small_gallery() -> None:
    """Queries whose video is not in the gallery: in every denominator, never a hit; with 3 videos,
    R@100 is not 100 when a query's video is missing."""
    rng = np.random.default_rng(5)
    scores, positive = random_problem(rng, 6, 3)
    metrics, ranks = evaluate_chunked(lambda s: scores[s], positive, chunk=4, misses=2)
    np.testing.assert_array_equal(ranks, direct_ranks(scores, positive, "optimistic"))  # the ranked ones only
    hits = {k: int((ranks <= k).sum()) for k in (1, 5, 10, 100)}
    assert metrics == pytest.approx({**{f"R@{k}": 100.0 * n / 8 for k, n in hits.items()},
                                     "SumR": sum(100.0 * n / 8 for n in hits.values())})
    assert metrics["R@100"] == 75.0
    assert recall_at_k(np.zeros(0, dtype=np.int64), misses=3)["SumR"] == 0.0


def test_recall_rejects_no_queries() -> None:
    with pytest.raises(ValueError):
        recall_at_k(np.zeros(0, dtype=np.int64))


# ---- chunked evaluation -----------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 7, 16, 50, 64, 1024])
@pytest.mark.parametrize("as_torch", [False, True])
def test_chunked_equals_unchunked(chunk: int, as_torch: bool) -> None:
    rng = np.random.default_rng(3)
    scores, positive = random_problem(rng, 50, 120)
    scores[::5] = np.round(scores[::5])  # some tied rows too
    seen: list[slice] = []
    progress: list[tuple[float, str]] = []

    def score_chunk(queries: slice):
        seen.append(queries)
        block = scores[queries]
        return torch.from_numpy(block.copy()) if as_torch else block

    metrics, ranks = evaluate_chunked(score_chunk, positive, chunk=chunk, progress=lambda f, m: progress.append((f, m)))
    expected_ranks = direct_ranks(scores, positive, "optimistic")
    np.testing.assert_array_equal(ranks, expected_ranks)
    assert metrics == recall_at_k(expected_ranks)
    # The slices tile the queries exactly once, in order, the last one possibly shorter.
    assert [s.start for s in seen] == list(range(0, 50, chunk))
    assert seen[-1].stop == 50 and all(s.stop - s.start <= chunk for s in seen)
    assert progress[-1] == (1.0, "50/50 queries ranked") and len(progress) == len(seen)


def test_chunked_pessimistic_and_tied_query_count() -> None:
    rng = np.random.default_rng(4)
    scores, positive = random_problem(rng, 30, 10, integer=True)
    metrics, ranks = evaluate_chunked(lambda s: scores[s], positive, chunk=8, ties="pessimistic")
    np.testing.assert_array_equal(ranks, direct_ranks(scores, positive, "pessimistic"))
    accumulator = RankAccumulator()
    for start in range(0, 30, 8):
        accumulator.add(scores[start:start + 8], positive[start:start + 8])
    tied = sum(
        any(scores[q, v] == scores[q, positive[q]] for v in range(10) if v != positive[q]) for q in range(30)
    )
    assert accumulator.tied_queries == tied > 0
    assert accumulator.num_queries == 30
    assert accumulator.result() == recall_at_k(direct_ranks(scores, positive, "optimistic"))


def test_chunked_rejects_wrong_block_and_chunk() -> None:
    scores = np.zeros((10, 4), dtype=np.float32)
    with pytest.raises(ValueError, match="rows"):
        evaluate_chunked(lambda s: scores[:3], np.zeros(10, dtype=np.int64), chunk=4)
    with pytest.raises(ValueError, match="chunk"):
        evaluate_chunked(lambda s: scores[s], np.zeros(10, dtype=np.int64), chunk=0)


def test_accumulator_starts_empty() -> None:
    accumulator = RankAccumulator()
    assert accumulator.ranks.shape == (0,)
    with pytest.raises(ValueError):
        accumulator.result()


# ---- moments ----------------------------------------------------------------------
TIMES = np.array([0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5])  # 1 fps samples of an 8 s video


def test_moment_around_an_interior_peak() -> None:
    scores = np.array([0.0, 0.1, 0.8, 1.0, 0.9, 0.1, 0.0, 0.2])
    # median 0.15, threshold 0.15 + 0.5 * 0.85 = 0.575: frames 2..4 -> [2 s, 5 s]
    assert predict_moment(scores, TIMES, duration=8.0) == (2.0, 5.0)
    # rel_threshold 1 keeps only frames as good as the best one.
    assert predict_moment(scores, TIMES, duration=8.0, rel_threshold=1.0) == (3.0, 4.0)


def test_moment_at_the_edges_reaches_the_video_bounds() -> None:
    left_peak = np.array([1.0, 0.9, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    assert predict_moment(left_peak, TIMES, duration=8.0) == (0.0, 2.0)
    right_peak = left_peak[::-1].copy()
    assert predict_moment(right_peak, TIMES, duration=8.0) == (6.0, 8.0)
    # Without duration the last frame reaches as far right as its left edge is to the left.
    assert predict_moment(right_peak, TIMES) == (6.0, 8.0)
    uneven = np.array([0.0, 1.0, 5.0])
    assert predict_moment(np.array([0.0, 0.0, 1.0]), uneven) == (3.0, 7.0)


def test_flat_scores_select_the_whole_video() -> None:
    assert predict_moment(np.full(8, 0.3), TIMES, duration=8.0) == (0.0, 8.0)
    assert predict_moment(np.array([2.0]), np.array([1.0]), duration=3.0) == (0.0, 3.0)
    assert predict_moment(np.array([2.0]), np.array([1.0])) == (0.0, 2.0)


def test_moment_is_clipped_to_duration() -> None:
    # Frames sampled past the stated duration (e.g. a rounded length) still stay inside it.
    scores = np.array([0.0, 0.0, 0.0, 1.0])
    assert predict_moment(scores, np.array([1.0, 3.0, 5.0, 7.0]), duration=6.5) == (6.0, 6.5)


def direct_moment_frames(scores: np.ndarray, rel_threshold: float) -> tuple[int, int]:
    best = int(np.argmax(scores))
    median = np.median(scores)
    keep = scores >= median + rel_threshold * (scores[best] - median)
    first = last = best
    for i in range(best, -1, -1):
        if not keep[i]:
            break
        first = i
    for i in range(best, len(scores)):
        if not keep[i]:
            break
        last = i
    return first, last


@pytest.mark.parametrize("seed", range(5))
def test_moment_matches_direct_rule_on_random_scores(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(40):
        count = int(rng.integers(1, 20))
        scores = rng.normal(size=count)
        times = np.cumsum(rng.uniform(0.2, 2.0, size=count))
        duration = float(times[-1] + rng.uniform(0.0, 1.0))
        rel = float(rng.uniform(0, 1))
        first, last = direct_moment_frames(scores, rel)
        start = 0.0 if first == 0 else (times[first - 1] + times[first]) / 2
        end = duration if last == count - 1 else (times[last] + times[last + 1]) / 2
        got = predict_moment(scores, times, duration=duration, rel_threshold=rel)
        assert got == pytest.approx((start, end))
        assert 0.0 <= got[0] <= got[1] <= duration


def test_moment_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        predict_moment(np.array([]), np.array([]))
    with pytest.raises(ValueError):
        predict_moment(np.array([1.0, 2.0]), np.array([1.0]))
    with pytest.raises(ValueError):
        predict_moment(np.array([1.0, 2.0]), np.array([2.0, 1.0]))
    with pytest.raises(ValueError):
        predict_moment(np.array([1.0, np.nan]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError):
        predict_moment(np.array([1.0, 2.0]), np.array([1.0, 2.0]), rel_threshold=1.5)


def test_iou_cases() -> None:
    assert temporal_iou((0.0, 1.0), (2.0, 3.0)) == 0.0  # disjoint
    assert temporal_iou((0.0, 1.0), (1.0, 3.0)) == 0.0  # touching
    assert temporal_iou((1.0, 2.0), (0.0, 4.0)) == pytest.approx(0.25)  # nested
    assert temporal_iou((0.0, 4.0), (1.0, 2.0)) == pytest.approx(0.25)
    assert temporal_iou((1.5, 3.5), (1.5, 3.5)) == 1.0  # identical
    assert temporal_iou((0.0, 2.0), (1.0, 3.0)) == pytest.approx(1 / 3)  # partial overlap
    assert temporal_iou((1.0, 1.0), (1.0, 1.0)) == 1.0  # same point
    assert temporal_iou((1.0, 1.0), (0.0, 2.0)) == 0.0  # a point has no length to share
    with pytest.raises(ValueError):
        temporal_iou((2.0, 1.0), (0.0, 1.0))


def test_iou_matches_counting_unit_cells() -> None:
    rng = np.random.default_rng(5)
    for _ in range(300):
        a0, a1 = sorted(rng.integers(0, 20, size=2))
        b0, b1 = sorted(rng.integers(0, 20, size=2))
        cells_a = set(range(a0, a1))
        cells_b = set(range(b0, b1))
        union = len(cells_a | cells_b)
        got = temporal_iou((float(a0), float(a1)), (float(b0), float(b1)))
        if union:
            assert got == pytest.approx(len(cells_a & cells_b) / union)
        assert got == temporal_iou((float(b0), float(b1)), (float(a0), float(a1)))


def test_moment_recall_values() -> None:
    pred = [(0.0, 1.0), (0.0, 2.0), (0.0, 1.0), (0.0, 1.0)]
    gt = [(0.0, 1.0), (0.0, 5.0), (0.0, 5.0), (0.0, 2.0)]  # IoU 1, 0.4, 0.2, 0.5 (>= counts)
    assert moment_recall(pred, gt) == {"IoU@0.3": 75.0, "IoU@0.5": 50.0, "n": 4}
    assert moment_recall(pred, gt, thresholds=(0.7,)) == {"IoU@0.7": 25.0, "n": 4}
    assert moment_recall([], []) == {"IoU@0.3": 0.0, "IoU@0.5": 0.0, "n": 0}
    with pytest.raises(ValueError):
        moment_recall(pred, gt[:2])
