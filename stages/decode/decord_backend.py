"""The fast path: decord seeks by key frame and resizes inside its filter graph (cpu,
num_threads=1: several VP9 files fail with decord's default threading)."""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import decord
import numpy as np

from stages.decode.plan import frame_shown_at, plan_samples
from stages.decode.video import BackendFailure, DecodedVideo, one_line, output_size

_silenced = False  # set in decode workers only


def silence_native_stderr() -> None:
    """In decode workers: decord's C++ logging writes "ERROR opening ..." to fd 2 whatever its log
    level; the worker reports the error itself, once."""
    global _silenced
    decord.logging.set_level(decord.logging.QUIET)  # quiets FFmpeg's own log ...
    _silenced = True  # ... but not decord's C++ lines: fd 2 is pointed away while it decodes


def frame_with_decord(path: Path, time_s: float, short_side: int | None) -> np.ndarray:
    source = os.path.abspath(path)  # never read as "protocol:..." by FFmpeg
    try:
        with _native_stderr_quiet():
            reader = decord.VideoReader(source, ctx=decord.cpu(0), num_threads=1)
            num_frames, avg_fps = len(reader), float(reader.get_avg_fps())
            if num_frames < 1 or not (math.isfinite(avg_fps) and avg_fps > 0):
                raise BackendFailure(f"reports {num_frames} frames at {avg_fps} fps")
            timestamps = _as_numpy(reader.get_frame_timestamp(np.arange(num_frames)))[:, 0]
            index = frame_shown_at(time_s, num_frames, avg_fps, timestamps)
            frame = _as_numpy(reader[index])
            height, width = output_size(*frame.shape[:2], short_side)
            if (height, width) != frame.shape[:2]:
                reader = decord.VideoReader(source, ctx=decord.cpu(0), num_threads=1, width=width, height=height)
                frame = _as_numpy(reader[index])
    except BackendFailure:
        raise
    except Exception as error:  # decord raises DECORDError, RuntimeError, IndexError...
        raise BackendFailure(one_line(str(error))) from error
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise BackendFailure(f"returned a frame of shape {frame.shape} {frame.dtype}")
    return np.ascontiguousarray(frame)


def _as_numpy(array: Any) -> np.ndarray:
    # decord returns its own NDArray, or a torch/other tensor if someone set a bridge.
    return array.asnumpy() if hasattr(array, "asnumpy") else np.asarray(array)


@contextlib.contextmanager
def _native_stderr_quiet() -> Iterator[None]:
    """In decode workers, point fd 2 at /dev/null for the duration (see _silenced)."""
    if not _silenced:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def decode_with_decord(
    path: Path, fps: float, max_frames: int, short_side: int | None, window: int | None, stride: int
) -> DecodedVideo:
    source = os.path.abspath(path)  # never read as "protocol:..." by FFmpeg
    try:
        with _native_stderr_quiet():
            reader = decord.VideoReader(source, ctx=decord.cpu(0), num_threads=1)
            num_frames = len(reader)
            avg_fps = float(reader.get_avg_fps())
            if num_frames < 1 or not (math.isfinite(avg_fps) and avg_fps > 0):
                raise BackendFailure(f"reports {num_frames} frames at {avg_fps} fps")
            timestamps = _as_numpy(reader.get_frame_timestamp(np.arange(num_frames)))[:, 0]
            # Frame 0 gives the size decord outputs (after any rotation it applies).
            native_height, native_width = _as_numpy(reader[0]).shape[:2]
            height, width = output_size(native_height, native_width, short_side)
            if (height, width) != (native_height, native_width):
                reader = decord.VideoReader(source, ctx=decord.cpu(0), num_threads=1, width=width, height=height)
            plan = plan_samples(num_frames, avg_fps, fps, max_frames, window, stride, timestamps)
            wanted = plan.needed_indices()
            frames = _as_numpy(reader.get_batch(wanted.tolist()))
    except BackendFailure:
        raise
    except Exception as error:  # decord raises DECORDError, RuntimeError, IndexError...
        raise BackendFailure(one_line(str(error))) from error
    if frames.shape != (len(wanted), height, width, 3) or frames.dtype != np.uint8:
        raise BackendFailure(f"returned frames of shape {frames.shape} {frames.dtype}")
    return DecodedVideo(
        frames=np.ascontiguousarray(frames),
        frame_indices=wanted,
        plan=plan,
        duration=num_frames / avg_fps,
        avg_fps=avg_fps,
        backend="decord",
    )
