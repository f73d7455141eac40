"""Which backend decodes a video: decord first, the system ffmpeg when decord cannot open or
read it. In this process, without a timeout (the pool adds one)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Literal

import numpy as np

from stages.decode.decord_backend import decode_with_decord, frame_with_decord
from stages.decode.ffmpeg_backend import decode_with_ffmpeg, ffmpeg_frames, video_stream
from stages.decode.plan import check_sampling, frame_shown_at
from stages.decode.video import BackendFailure, DecodedVideo, DecodeError, check_file, one_line, output_size

log = logging.getLogger("stages.decode")

Backend = Literal["auto", "decord", "ffmpeg"]


def decode_video(
    path: str | Path,
    fps: float,
    max_frames: int,
    short_side: int | None = 224,
    window: int | None = None,
    stride: int = 1,
    *,
    backend: Backend = "auto",
) -> DecodedVideo:
    """Decode the frames of `plan_samples` for one video, in this process.

    decord first (cpu, num_threads=1: several VP9 files fail with decord's default
    threading), resized while decoding so the short side is `short_side` (None keeps
    the native size). If decord cannot open or read the video, the system ffmpeg
    decodes the same frame indices at the same output size. `backend` forces one
    backend (for comparisons and debugging). Raises DecodeError for a video that
    neither backend can decode (missing, empty, not a video, truncated, no video
    stream). No timeout here: use DecodePool for untrusted files.
    """
    path = Path(path)
    check_sampling(fps, max_frames, window, stride)
    if short_side is not None and short_side < 1:
        raise ValueError(f"short_side must be >= 1 or None, got {short_side}")
    if backend not in ("auto", "decord", "ffmpeg"):
        raise ValueError(f"backend must be 'auto', 'decord' or 'ffmpeg', got {backend!r}")
    check_file(path)
    if backend == "ffmpeg":
        return decode_with_ffmpeg(path, fps, max_frames, short_side, window, stride)
    try:
        return decode_with_decord(path, fps, max_frames, short_side, window, stride)
    except BackendFailure as decord_failure:
        if backend == "decord":
            raise DecodeError(f"{path}: decord cannot decode it: {decord_failure}") from None
        log.info("decord cannot decode %s (%s); falling back to ffmpeg", path, decord_failure)
        return decode_with_ffmpeg(path, fps, max_frames, short_side, window, stride)


def decode_frame_at(path: str | Path, time_s: float, short_side: int | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB: the frame shown at `time_s` seconds from the first frame (the last one at or
    before it; past the end, the last frame), under decode_video's rules: media files only, decord
    first, the system ffmpeg when decord cannot read the video. Frame times follow extraction's,
    so a stored frame time gives back that frame. In this process, without a timeout."""
    path = Path(path)
    if not (math.isfinite(time_s) and time_s >= 0):
        raise ValueError(f"time_s must be a finite number >= 0, got {time_s}")
    if short_side is not None and short_side < 1:
        raise ValueError(f"short_side must be >= 1 or None, got {short_side}")
    check_file(path)
    try:
        return frame_with_decord(path, time_s, short_side)
    except BackendFailure as decord_failure:
        log.info("decord cannot decode %s (%s); falling back to ffmpeg", path, decord_failure)
    stream = video_stream(path)
    height, width = output_size(stream.height, stream.width, short_side)
    index = frame_shown_at(time_s, stream.num_frames, stream.avg_fps, stream.timestamps)
    frames, decoded, stderr = ffmpeg_frames(path, stream.index, stream.demuxer, np.array([index]), height, width)
    if decoded != 1:
        detail = one_line(stderr) if stderr.strip() else "no frame came out"
        raise DecodeError(f"{path}: frame {index} ({time_s:.2f}s) does not decode (ffmpeg: {detail})")
    return frames[0]
