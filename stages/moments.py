"""Moment localisation read off a retrieval model's per-frame scores, and its evaluation
against annotated (start, end) moments. Pure numpy; no I/O.

PRVR models are trained for video-level retrieval only; the moment here is a by-product:
the run of frames around the best-matching frame.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

Moment = tuple[float, float]


def _frame_edges(times: np.ndarray, duration: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Left and right edge in seconds of the stretch of video each sampled frame stands for."""
    midpoints = (times[:-1] + times[1:]) / 2
    left = np.concatenate([[0.0], midpoints])
    if duration is not None:
        last_right = float(duration)
    else:
        # Without the video's length, mirror the last frame's left half onto its right.
        last_right = float(times[-1] + (times[-1] - left[-1]))
    right = np.concatenate([midpoints, [last_right]])
    return left, right


def predict_moment(
    frame_scores: np.ndarray,
    times: np.ndarray,
    duration: float | None = None,
    rel_threshold: float = 0.5,
) -> Moment:
    """The moment (start, end) in seconds that a query's per-frame scores point at.

    Rule:
      1. best = argmax of frame_scores (the first one on ties).
      2. threshold = median + rel_threshold * (max - median) of the scores, so
         rel_threshold = 1 keeps only frames scoring as high as the best and 0 keeps
         every frame at or above the median.
      3. Grow a contiguous run from `best` left and right while the neighbour's score
         is >= threshold. Flat scores (max == median) therefore select the whole video:
         nothing singles out a part of it.
      4. Frames -> seconds: a sampled frame at time t_i stands for the video from the
         midpoint with its left neighbour to the midpoint with its right neighbour
         (half the gap each side). The first frame reaches back to 0; the last frame
         reaches to `duration` when given, else as far right of t_last as its left
         edge is to the left.
      5. Clip to [0, duration] (to [0, inf) without duration).

    frame_scores: (T,) scores of the video's valid frames only (drop padding first).
    times: (T,) non-decreasing sample times in seconds, as stored by extraction.
    """
    frame_scores = np.asarray(frame_scores, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    if frame_scores.ndim != 1 or frame_scores.size == 0:
        raise ValueError(f"frame_scores must be a non-empty 1-d array, got shape {frame_scores.shape}")
    if times.shape != frame_scores.shape:
        raise ValueError(f"times must match frame_scores' shape {frame_scores.shape}, got {times.shape}")
    if not np.isfinite(frame_scores).all():
        raise ValueError("frame_scores must be finite")
    if not np.isfinite(times).all() or np.any(np.diff(times) < 0):
        raise ValueError("times must be finite and non-decreasing")
    if not 0.0 <= rel_threshold <= 1.0:
        raise ValueError(f"rel_threshold must lie in [0, 1], got {rel_threshold}")
    if duration is not None and not (np.isfinite(duration) and duration >= 0):
        raise ValueError(f"duration must be a finite number >= 0, got {duration}")

    best = int(np.argmax(frame_scores))
    top = frame_scores[best]
    median = float(np.median(frame_scores))
    threshold = median + rel_threshold * (top - median)
    first = best
    while first > 0 and frame_scores[first - 1] >= threshold:
        first -= 1
    last = best
    while last < len(frame_scores) - 1 and frame_scores[last + 1] >= threshold:
        last += 1

    left, right = _frame_edges(times, duration)
    upper = float(duration) if duration is not None else np.inf
    start = float(np.clip(left[first], 0.0, upper))
    end = float(np.clip(right[last], start, upper))
    return start, end


def temporal_iou(a: Moment, b: Moment) -> float:
    """Intersection over union of two [start, end] intervals in seconds.

    Touching or disjoint intervals give 0. Two zero-length intervals give 1 when they are
    the same point, else 0 (the union has no length to divide by).
    """
    for name, (start, end) in (("a", a), ("b", b)):
        if not start <= end:
            raise ValueError(f"interval {name} must have start <= end, got {(start, end)}")
    intersection = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = (a[1] - a[0]) + (b[1] - b[0]) - intersection
    if union <= 0.0:
        return 1.0 if (a[0], a[1]) == (b[0], b[1]) else 0.0
    return float(intersection / union)


def moment_recall(
    pred: Sequence[Moment], gt: Sequence[Moment], thresholds: Sequence[float] = (0.3, 0.5)
) -> dict[str, float | int]:
    """{"IoU@t": percent of predictions with IoU >= t against their ground truth, "n": count}.

    pred[i] is compared with gt[i]. With no pairs, every percentage is 0.0 and n is 0.
    """
    if len(pred) != len(gt):
        raise ValueError(f"pred and gt must pair up, got {len(pred)} and {len(gt)}")
    ious = np.array([temporal_iou(p, g) for p, g in zip(pred, gt)], dtype=np.float64)
    result: dict[str, float | int] = {}
    for threshold in thresholds:
        result[f"IoU@{threshold:g}"] = float(100.0 * np.mean(ious >= threshold)) if len(ious) else 0.0
    result["n"] = len(ious)
    return result
