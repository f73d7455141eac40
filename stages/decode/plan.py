"""The sampling plan: which frames of a video are decoded, by index, for a sampling rate.

Frame indices are the contract between the two backends: a sample is "frame i of the stream
in presentation order", and ``SamplePlan`` turns a sampling rate into such indices from the
stream's frame count and average frame rate, or, for a variable frame rate, from the frames'
own timestamps (both backends read the same ones: the container's packet timestamps in
presentation order).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Guards floor() against binary rounding (e.g. 6.999999999 for an exact 7).
_FLOOR_EPS = 1e-6
# A stream counts as constant-rate when every frame's timestamp lies within half a
# frame of index / avg_fps; such videos keep the index arithmetic (exact, and what
# they always got). Beyond that the frames' own timestamps are used.
_CFR_TOLERANCE_FRAMES = 0.5
# Frame timestamps this close after a sample time count as "at" it: float32
# timestamps (decord) and microsecond ones (ffprobe) of the same frame differ by less.
_TIMESTAMP_EPS_S = 1e-4


@dataclass(frozen=True, eq=False)  # eq=False: numpy fields make generated __eq__ ambiguous
class SamplePlan:
    times: np.ndarray  # (T,) float32 seconds of the decoded samples from the first frame
    indices: np.ndarray  # (T,) int64 centre frame index of each sample
    windows: np.ndarray | None  # (T, window) int64 clip frame indices, or None

    def needed_indices(self) -> np.ndarray:
        """Sorted unique frame indices the plan needs (samples and windows)."""
        if self.windows is None:
            return np.unique(self.indices)
        return np.unique(np.concatenate([self.indices, self.windows.ravel()]))


def check_sampling(fps: float, max_frames: int, window: int | None, stride: int) -> None:
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps}")
    if max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1 or None, got {window}")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")


def plan_samples(
    num_frames: int,
    avg_fps: float,
    fps: float,
    max_frames: int,
    window: int | None = None,
    stride: int = 1,
    timestamps: np.ndarray | None = None,
) -> SamplePlan:
    """Sample at `fps` per second: n = max(1, floor(duration*fps)) samples at times
    (k+0.5)/fps, duration = num_frames/avg_fps. If n > max_frames, resample uniformly
    to max_frames times (j+0.5)*duration/max_frames. Frame index =
    min(floor(t*avg_fps), num_frames-1), the sample's time index/avg_fps.

    `timestamps` (seconds, one per frame in presentation order, any origin) replace
    that arithmetic when they show a variable frame rate (see `frame_times`): the
    sample is then the last frame whose timestamp is at or before t, and its time is
    that frame's timestamp from the first frame.

    Window: `window` frames spaced `stride` apart, centred on the sample's index (for
    even window, offsets -w/2*stride .. (w/2-1)*stride), clipped to [0, num_frames-1]."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if not (math.isfinite(avg_fps) and avg_fps > 0):
        raise ValueError(f"avg_fps must be a positive number, got {avg_fps}")
    check_sampling(fps, max_frames, window, stride)

    duration = num_frames / avg_fps
    count = max(1, math.floor(duration * fps + _FLOOR_EPS))
    if count <= max_frames:
        sample_times = (np.arange(count, dtype=np.float64) + 0.5) / fps
    else:
        sample_times = (np.arange(max_frames, dtype=np.float64) + 0.5) * (duration / max_frames)
    variable = None if timestamps is None else frame_times(timestamps, avg_fps)
    if variable is None:
        indices = np.minimum(np.floor(sample_times * avg_fps + _FLOOR_EPS), num_frames - 1).astype(np.int64)
        times = (indices / avg_fps).astype(np.float32)
    else:
        if len(variable) != num_frames:
            raise ValueError(f"{len(variable)} timestamps for {num_frames} frames")
        at_or_before = np.searchsorted(variable, sample_times + _TIMESTAMP_EPS_S, side="right") - 1
        indices = np.clip(at_or_before, 0, num_frames - 1).astype(np.int64)
        times = variable[indices].astype(np.float32)

    windows = None
    if window is not None:
        offsets = (np.arange(window, dtype=np.int64) - window // 2) * stride
        windows = np.clip(indices[:, None] + offsets[None, :], 0, num_frames - 1)
    return SamplePlan(times=times, indices=indices, windows=windows)


def frame_times(timestamps: np.ndarray, avg_fps: float) -> np.ndarray | None:
    """Each frame's time from the first frame (float64 seconds, increasing) when the
    timestamps show a variable frame rate; None when they fit a constant rate of
    `avg_fps` within half a frame, or are unusable (missing, repeated), so index /
    avg_fps holds."""
    stamps = np.asarray(timestamps, dtype=np.float64)
    if stamps.ndim != 1 or len(stamps) < 2 or not np.isfinite(stamps).all():
        return None
    relative = np.sort(stamps) - stamps.min()
    if not (np.diff(relative) > 0).all():
        return None  # e.g. a container without timestamps: every frame reads the same
    drift = np.abs(relative - np.arange(len(relative)) / avg_fps).max()
    return None if drift <= _CFR_TOLERANCE_FRAMES / avg_fps else relative


def frame_shown_at(time_s: float, num_frames: int, avg_fps: float, timestamps: np.ndarray | None) -> int:
    """The index of the frame shown at `time_s`, by the clock plan_samples gives its samples."""
    variable = None if timestamps is None else frame_times(timestamps, avg_fps)
    if variable is None or len(variable) != num_frames:
        index = math.floor((time_s + _TIMESTAMP_EPS_S) * avg_fps)
    else:
        index = int(np.searchsorted(variable, time_s + _TIMESTAMP_EPS_S, side="right")) - 1
    return min(max(index, 0), num_frames - 1)
