"""Decode time-sampled frames of untrimmed videos.

decord is the fast path (seeks by key frame, resizes inside its filter graph). Its
bundled FFmpeg 4.1 cannot decode some streams (AV1 has no decoder there), so when
decord cannot open or read a video we decode the same frame indices with the system
ffmpeg instead. Some decord failures never return (a loop holding the GIL), so
batch decoding runs in worker processes that are killed when they overrun a timeout
(see ``DecodePool``).

Frame indices are the contract between the two backends: a sample is "frame i of the
stream in presentation order", and ``SamplePlan`` turns a sampling rate into such
indices from the stream's frame count and average frame rate, or, for a variable
frame rate, from the frames' own timestamps (both backends read the same ones: the
container's packet timestamps in presentation order).

Only media files are decoded: playlists and scripts that name other files (HLS,
ffmpeg concat, SDP, DASH, ...) are refused before either backend opens them, since
decoding one would read files the manifest never listed (see ``_refuse_references``).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import decord
import ffmpeg
import numpy as np

from stages.processes import die_with_parent

log = logging.getLogger(__name__)

Backend = Literal["auto", "decord", "ffmpeg"]

# Drill hooks, read by pool workers only: a request whose path contains the value of
# PRVR_DECODE_HANG sleeps forever (exercises the timeout kill without a real decord
# hang); one whose path contains PRVR_DECODE_CRASH kills its worker with SIGSEGV.
HANG_DRILL_ENV = "PRVR_DECODE_HANG"
CRASH_DRILL_ENV = "PRVR_DECODE_CRASH"

# Guards floor() against binary rounding (e.g. 6.999999999 for an exact 7).
_FLOOR_EPS = 1e-6
# Container frame counts may overstate what decodes by a frame or two; samples that
# fall this close to the end reuse the last decoded frame instead of failing the video.
_TAIL_SLACK_S = 0.5
# At most this many terms in the ffmpeg `select` expression; nearby runs of wanted
# frames are merged (the extra frames are decoded and dropped in Python).
_MAX_SELECT_TERMS = 256
# A fresh worker must import numpy/decord; a generous bound, independent of timeout_s.
_WORKER_BOOT_TIMEOUT_S = 120.0
# A stream counts as constant-rate when every frame's timestamp lies within half a
# frame of index / avg_fps; such videos keep the index arithmetic (exact, and what
# they always got). Beyond that the frames' own timestamps are used.
_CFR_TOLERANCE_FRAMES = 0.5
# Frame timestamps this close after a sample time count as "at" it: float32
# timestamps (decord) and microsecond ones (ffprobe) of the same frame differ by less.
_TIMESTAMP_EPS_S = 1e-4
# Set in decode workers: decord's C++ logging writes "ERROR opening ..." to fd 2
# whatever its log level; the worker reports the error itself, once.
_silence_native_stderr = False


class DecodeError(Exception):
    """A video that cannot be decoded; the message says why in user terms."""


class _BackendFailure(Exception):
    """One backend could not decode the video; the other may still succeed."""


# --------------------------------------------------------------------------- plans


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


def _check_sampling(fps: float, max_frames: int, window: int | None, stride: int) -> None:
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
    _check_sampling(fps, max_frames, window, stride)

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


# ------------------------------------------------------------------ decoded video


@dataclass
class DecodedVideo:
    frames: np.ndarray  # (N, H, W, 3) uint8 RGB for the sorted unique indices the plan needs
    frame_indices: np.ndarray  # (N,) int64 sorted unique, matching `frames`
    plan: SamplePlan
    duration: float  # seconds
    avg_fps: float
    backend: str  # "decord" or "ffmpeg"

    def __post_init__(self) -> None:
        if len(self.frames) != len(self.frame_indices):
            raise ValueError(f"{len(self.frames)} frames for {len(self.frame_indices)} indices")

    def _rows(self, wanted: np.ndarray) -> np.ndarray:
        """Rows of `frames` holding the frame indices `wanted` (any shape)."""
        rows = np.searchsorted(self.frame_indices, wanted)
        found = rows < len(self.frame_indices)
        found[found] = self.frame_indices[rows[found]] == wanted[found]
        if not found.all():
            raise ValueError("the plan needs frames that were not decoded")
        return rows

    def samples(self) -> np.ndarray:
        """(T, H, W, 3) centre frame of each sample, in plan order."""
        return self.frames[self._rows(self.plan.indices)]

    def clips(self) -> np.ndarray:
        """(T, window, H, W, 3) the frames of each sample's window."""
        if self.plan.windows is None:
            raise ValueError("this video was decoded without windows (window=None)")
        return self.frames[self._rows(self.plan.windows)]


def output_size(height: int, width: int, short_side: int | None) -> tuple[int, int]:
    """(height, width) with the short side scaled to `short_side`, aspect kept."""
    if short_side is None:
        return height, width
    if height <= width:
        return short_side, max(1, math.floor(width * short_side / height + 0.5))
    return max(1, math.floor(height * short_side / width + 0.5)), short_side


# ------------------------------------------------------------------------ decoding


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
    _check_sampling(fps, max_frames, window, stride)
    if short_side is not None and short_side < 1:
        raise ValueError(f"short_side must be >= 1 or None, got {short_side}")
    if backend not in ("auto", "decord", "ffmpeg"):
        raise ValueError(f"backend must be 'auto', 'decord' or 'ffmpeg', got {backend!r}")
    _check_file(path)
    if backend == "ffmpeg":
        return _decode_with_ffmpeg(path, fps, max_frames, short_side, window, stride)
    try:
        return _decode_with_decord(path, fps, max_frames, short_side, window, stride)
    except _BackendFailure as decord_failure:
        if backend == "decord":
            raise DecodeError(f"{path}: decord cannot decode it: {decord_failure}") from None
        log.info("decord cannot decode %s (%s); falling back to ffmpeg", path, decord_failure)
        return _decode_with_ffmpeg(path, fps, max_frames, short_side, window, stride)


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
    _check_file(path)
    try:
        return _frame_with_decord(path, time_s, short_side)
    except _BackendFailure as decord_failure:
        log.info("decord cannot decode %s (%s); falling back to ffmpeg", path, decord_failure)
    stream = _video_stream(path)
    height, width = output_size(stream.height, stream.width, short_side)
    index = _frame_shown_at(time_s, stream.num_frames, stream.avg_fps, stream.timestamps)
    frames, decoded, stderr = _ffmpeg_frames(path, stream.index, stream.demuxer, np.array([index]), height, width)
    if decoded != 1:
        detail = _one_line(stderr) if stderr.strip() else "no frame came out"
        raise DecodeError(f"{path}: frame {index} ({time_s:.2f}s) does not decode (ffmpeg: {detail})")
    return frames[0]


def _frame_shown_at(time_s: float, num_frames: int, avg_fps: float, timestamps: np.ndarray | None) -> int:
    """The index of the frame shown at `time_s`, by the clock plan_samples gives its samples."""
    variable = None if timestamps is None else frame_times(timestamps, avg_fps)
    if variable is None or len(variable) != num_frames:
        index = math.floor((time_s + _TIMESTAMP_EPS_S) * avg_fps)
    else:
        index = int(np.searchsorted(variable, time_s + _TIMESTAMP_EPS_S, side="right")) - 1
    return min(max(index, 0), num_frames - 1)


def _frame_with_decord(path: Path, time_s: float, short_side: int | None) -> np.ndarray:
    source = os.path.abspath(path)  # never read as "protocol:..." by FFmpeg
    try:
        with _native_stderr_quiet():
            reader = decord.VideoReader(source, ctx=decord.cpu(0), num_threads=1)
            num_frames, avg_fps = len(reader), float(reader.get_avg_fps())
            if num_frames < 1 or not (math.isfinite(avg_fps) and avg_fps > 0):
                raise _BackendFailure(f"reports {num_frames} frames at {avg_fps} fps")
            timestamps = _as_numpy(reader.get_frame_timestamp(np.arange(num_frames)))[:, 0]
            index = _frame_shown_at(time_s, num_frames, avg_fps, timestamps)
            frame = _as_numpy(reader[index])
            height, width = output_size(*frame.shape[:2], short_side)
            if (height, width) != frame.shape[:2]:
                reader = decord.VideoReader(source, ctx=decord.cpu(0), num_threads=1, width=width, height=height)
                frame = _as_numpy(reader[index])
    except _BackendFailure:
        raise
    except Exception as error:  # decord raises DECORDError, RuntimeError, IndexError...
        raise _BackendFailure(_one_line(str(error))) from error
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise _BackendFailure(f"returned a frame of shape {frame.shape} {frame.dtype}")
    return np.ascontiguousarray(frame)


_HEAD_BYTES = 1024
# Text formats FFmpeg opens as media although they only name other files or streams,
# by the way each starts (what FFmpeg's probes look for). decord's bundled FFmpeg
# takes no options, so this check, before either backend opens the file, is what
# keeps it to the file itself.
_REFERENCE_STARTS = (
    (b"#EXTM3U", "an HLS playlist (#EXTM3U)"),
    (b"ffconcat", "an ffmpeg concat script (ffconcat)"),
    (b"v=0", "an SDP stream description (v=0)"),
    (b"<?xml", "an XML document (a DASH or IMF manifest?)"),
    (b"<MPD", "a DASH manifest (<MPD>)"),
)
# Demuxers that read other files or network streams: refused on the ffmpeg path,
# should one get past the check above (named as ffprobe's format_name lists them).
_REFERENCE_DEMUXERS = frozenset(
    {"hls", "applehttp", "concat", "dash", "imf", "sdp", "rtsp", "rtp", "avisynth", "vapoursynth"}
)
_REFUSED = "only media files themselves are decoded; list the media file in the manifest"


def _refuse_references(path: Path, head: bytes) -> None:
    """DecodeError for a playlist, script or manifest that names other media."""
    start = head.removeprefix(b"\xef\xbb\xbf").lstrip()  # a byte-order mark, blank lines
    for magic, what in _REFERENCE_STARTS:
        if start.startswith(magic):
            raise DecodeError(f"{path}: {what}, which points at other media; {_REFUSED}")


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DecodeError(f"{path}: file not found")
    if not path.is_file():
        raise DecodeError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise DecodeError(f"{path}: file is empty (0 bytes)")
    with path.open("rb") as file:
        _refuse_references(path, file.read(_HEAD_BYTES))


# decord prefixes its messages with "[hh:mm:ss] /source/file.cc:123: ".
_DECORD_LOG_PREFIX = re.compile(r"^\[\d\d:\d\d:\d\d\] \S+:\d+: ")


def _one_line(message: str, limit: int = 300) -> str:
    """The last non-empty line of a tool's message, without decord's log prefix."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    text = _DECORD_LOG_PREFIX.sub("", lines[-1]) if lines else "no details"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _as_numpy(array: Any) -> np.ndarray:
    # decord returns its own NDArray, or a torch/other tensor if someone set a bridge.
    return array.asnumpy() if hasattr(array, "asnumpy") else np.asarray(array)


@contextlib.contextmanager
def _native_stderr_quiet() -> Iterator[None]:
    """In decode workers, point fd 2 at /dev/null for the duration (see _silence_native_stderr)."""
    if not _silence_native_stderr:
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


def _decode_with_decord(
    path: Path, fps: float, max_frames: int, short_side: int | None, window: int | None, stride: int
) -> DecodedVideo:
    source = os.path.abspath(path)  # never read as "protocol:..." by FFmpeg
    try:
        with _native_stderr_quiet():
            reader = decord.VideoReader(source, ctx=decord.cpu(0), num_threads=1)
            num_frames = len(reader)
            avg_fps = float(reader.get_avg_fps())
            if num_frames < 1 or not (math.isfinite(avg_fps) and avg_fps > 0):
                raise _BackendFailure(f"reports {num_frames} frames at {avg_fps} fps")
            timestamps = _as_numpy(reader.get_frame_timestamp(np.arange(num_frames)))[:, 0]
            # Frame 0 gives the size decord outputs (after any rotation it applies).
            native_height, native_width = _as_numpy(reader[0]).shape[:2]
            height, width = output_size(native_height, native_width, short_side)
            if (height, width) != (native_height, native_width):
                reader = decord.VideoReader(source, ctx=decord.cpu(0), num_threads=1, width=width, height=height)
            plan = plan_samples(num_frames, avg_fps, fps, max_frames, window, stride, timestamps)
            wanted = plan.needed_indices()
            frames = _as_numpy(reader.get_batch(wanted.tolist()))
    except _BackendFailure:
        raise
    except Exception as error:  # decord raises DECORDError, RuntimeError, IndexError...
        raise _BackendFailure(_one_line(str(error))) from error
    if frames.shape != (len(wanted), height, width, 3) or frames.dtype != np.uint8:
        raise _BackendFailure(f"returned frames of shape {frames.shape} {frames.dtype}")
    return DecodedVideo(
        frames=np.ascontiguousarray(frames),
        frame_indices=wanted,
        plan=plan,
        duration=num_frames / avg_fps,
        avg_fps=avg_fps,
        backend="decord",
    )


# ---------------------------------------------------------------- ffmpeg fallback


@dataclass(frozen=True)
class _VideoStream:
    index: int  # stream index in the container
    num_frames: int
    avg_fps: float
    height: int  # as displayed, after rotation metadata
    width: int
    demuxer: str  # ffprobe's format_name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    timestamps: np.ndarray | None  # (num_frames,) packet timestamps in seconds, or None if unknown


# Top-level ISO-BMFF (MP4/MOV) box types that can open a real file.
_MP4_LEADING_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"}


def _starts_like_mp4(head: bytes) -> bool:
    return head[4:8] in _MP4_LEADING_BOXES


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(char.isprintable() or char.isspace() for char in text)


# Input options for every ffprobe/ffmpeg run: local files only, no network or other protocols.
_LOCAL_ONLY = {"protocol_whitelist": "file"}


def _probe(path: Path, **options: Any) -> dict[str, Any]:
    try:
        info = ffmpeg.probe(os.path.abspath(path), **_LOCAL_ONLY, **options)
    except FileNotFoundError:
        raise RuntimeError("ffprobe is not installed (needed to decode videos decord cannot read)") from None
    except ffmpeg.Error as error:
        stderr = error.stderr.decode("utf-8", "replace")
    else:
        demuxer = info.get("format", {}).get("format_name", "")
        if set(demuxer.split(",")) & _REFERENCE_DEMUXERS:
            raise DecodeError(f"{path}: a {demuxer} input, which points at other media; {_REFUSED}")
        return info
    with path.open("rb") as file:
        head = file.read(_HEAD_BYTES)
    # ffprobe says "moov atom not found" for anything named .mp4; only a file that
    # starts like an MP4 is really a truncated one.
    if "moov atom not found" in stderr and _starts_like_mp4(head):
        raise DecodeError(f"{path}: truncated or incomplete MP4 (its index, the moov atom, is missing)")
    if _looks_like_text(head):
        raise DecodeError(f"{path}: a text file, not a video")
    reason = _one_line(stderr).replace(f"{os.path.abspath(path)}: ", "").replace(f"{path}: ", "")
    raise DecodeError(f"{path}: not a video file, or unreadable (ffprobe: {reason})")


def _rate(text: str | None) -> float:
    try:
        value = Fraction(text) if text else Fraction(0)
    except (ValueError, ZeroDivisionError):
        return 0.0
    return float(value)


def _rotation(stream: dict[str, Any]) -> int:
    for side_data in stream.get("side_data_list", []):
        if "rotation" in side_data:
            return int(side_data["rotation"])
    return int(stream.get("tags", {}).get("rotate", 0) or 0)


def _video_stream(path: Path) -> _VideoStream:
    info = _probe(path)
    streams = info.get("streams", [])
    # A cover picture is stored as a one-frame "video" stream; it is not the video.
    videos = [
        s for s in streams if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")
    ]
    if not videos:
        kinds = sorted({s.get("codec_type", "unknown") for s in streams})
        found = ", ".join(kinds) if kinds else "no streams at all"
        raise DecodeError(f"{path}: no video stream (found: {found})")
    stream = videos[0]
    avg_fps = _rate(stream.get("avg_frame_rate")) or _rate(stream.get("r_frame_rate"))
    if avg_fps <= 0:
        raise DecodeError(f"{path}: video stream has no frame rate")
    packet_times = _packet_times(path, stream["index"])
    # Matroska/WebM store no frame count; the packet listing (demuxing only) has one.
    num_frames = int(stream.get("nb_frames") or 0) or len(packet_times)
    if num_frames < 1:
        duration = float(stream.get("duration") or info.get("format", {}).get("duration") or 0)
        num_frames = math.floor(duration * avg_fps + 0.5)
    if num_frames < 1:
        raise DecodeError(f"{path}: video stream has no frames")
    timestamps = None
    if len(packet_times) == num_frames and None not in packet_times:
        # float32, as decord reports them, so both backends compare the same numbers.
        timestamps = np.array(packet_times, dtype=np.float32)
    height, width = int(stream["height"]), int(stream["width"])
    if _rotation(stream) % 180 != 0:
        height, width = width, height
    demuxer = info.get("format", {}).get("format_name", "")
    return _VideoStream(stream["index"], num_frames, avg_fps, height, width, demuxer, timestamps)


def _packet_times(path: Path, stream_index: int) -> list[float | None]:
    """Timestamps (seconds) of the stream's packets in file order, None for a packet without
    one; [] if they cannot be listed. Demuxes only, like decord's own index of a video."""
    try:
        listing = _probe(path, select_streams=str(stream_index), show_entries="packet=pts_time")
    except DecodeError:
        return []
    times: list[float | None] = []
    for packet in listing.get("packets", []):
        try:
            times.append(float(packet["pts_time"]))
        except (KeyError, ValueError):
            times.append(None)
    return times


def _select_runs(wanted: np.ndarray, max_terms: int = _MAX_SELECT_TERMS) -> list[tuple[int, int]]:
    """Inclusive runs of frame indices covering `wanted`, at most `max_terms` of them."""
    breaks = np.flatnonzero(np.diff(wanted) > 1)
    starts = np.concatenate([wanted[:1], wanted[breaks + 1]])
    ends = np.concatenate([wanted[breaks], wanted[-1:]])
    if len(starts) > max_terms:
        gaps = starts[1:] - ends[:-1]
        threshold = np.sort(gaps)[len(starts) - max_terms - 1]
        keep_break = gaps > threshold  # merge across the smallest gaps
        starts = np.concatenate([starts[:1], starts[1:][keep_break]])
        ends = np.concatenate([ends[:-1][keep_break], ends[-1:]])
    return list(zip(starts.tolist(), ends.tolist()))


def _read_exactly(pipe: Any, buffer: memoryview) -> bool:
    filled = 0
    while filled < len(buffer):
        count = pipe.readinto(buffer[filled:])
        if not count:
            return False
        filled += count
    return True


def _ffmpeg_frames(
    path: Path, stream_index: int, demuxer: str, wanted: np.ndarray, height: int, width: int
) -> tuple[np.ndarray, int, str]:
    """Decode `wanted` frame indices; returns (frames, how many decoded, ffmpeg's errors)."""
    runs = _select_runs(wanted)
    expression = "+".join(f"between(n,{start},{end})" for start, end in runs)
    covered = sum(end - start + 1 for start, end in runs)
    options: dict[str, Any] = {"threads": 1, **_LOCAL_ONLY}
    if demuxer:  # pinned to the one probed (and vetted) before: a file swapped since cannot change it
        options["format_whitelist"] = demuxer
    stream = (
        ffmpeg.input(os.path.abspath(path), **options)[str(stream_index)]
        .filter("select", expression)
        # bilinear is what decord's scale uses: measured bit-identical frames to decord.
        .filter("scale", width, height, flags="bilinear")
        # passthrough: rawvideo would otherwise duplicate frames to a constant rate.
        .output("pipe:", format="rawvideo", pix_fmt="rgb24", vsync="passthrough", **{"frames:v": covered})
    )
    args = ffmpeg.compile(stream, cmd=["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error"])
    frames = np.empty((len(wanted), height, width, 3), dtype=np.uint8)
    scratch = np.empty((height, width, 3), dtype=np.uint8)
    decoded = 0
    # stderr to a file: a chatty corrupt file cannot fill a pipe and stall us.
    with tempfile.TemporaryFile() as errors:
        try:
            process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errors)
        except FileNotFoundError:
            raise RuntimeError("ffmpeg is not installed (needed to decode videos decord cannot read)") from None
        try:
            covered_indices = (index for start, end in runs for index in range(start, end + 1))
            for index in covered_indices:
                if decoded < len(wanted) and index == wanted[decoded]:
                    target = frames[decoded]
                else:
                    target = scratch
                if not _read_exactly(process.stdout, memoryview(target).cast("B")):
                    break
                if target is not scratch:
                    decoded += 1
        finally:
            process.stdout.close()
            process.wait()
        errors.seek(0)
        stderr = errors.read().decode("utf-8", "replace")
    return frames, decoded, stderr


def _decode_with_ffmpeg(
    path: Path, fps: float, max_frames: int, short_side: int | None, window: int | None, stride: int
) -> DecodedVideo:
    stream = _video_stream(path)
    height, width = output_size(stream.height, stream.width, short_side)
    plan = plan_samples(stream.num_frames, stream.avg_fps, fps, max_frames, window, stride, stream.timestamps)
    wanted = plan.needed_indices()
    frames, decoded, stderr = _ffmpeg_frames(path, stream.index, stream.demuxer, wanted, height, width)
    if decoded == 0:
        detail = _one_line(stderr) if stderr.strip() else "no frames came out"
        raise DecodeError(f"{path}: no decodable video frames (ffmpeg: {detail})")
    if decoded < len(wanted):
        first_missing = int(wanted[decoded])
        slack = math.ceil(_TAIL_SLACK_S * stream.avg_fps)
        if first_missing < stream.num_frames - slack:
            raise DecodeError(
                f"{path}: truncated or corrupt: decoding stopped at frame {first_missing} "
                f"({first_missing / stream.avg_fps:.1f}s) of {stream.num_frames} "
                f"({stream.num_frames / stream.avg_fps:.1f}s)"
            )
        log.info(
            "%s: last %d needed frames do not decode; reusing frame %d", path, len(wanted) - decoded, wanted[decoded - 1]
        )
        frames[decoded:] = frames[decoded - 1]
    return DecodedVideo(
        frames=frames,
        frame_indices=wanted,
        plan=plan,
        duration=stream.num_frames / stream.avg_fps,
        avg_fps=stream.avg_fps,
        backend="ffmpeg",
    )


# --------------------------------------------------------------------------- pool


@dataclass
class DecodeRequest:
    key: str  # e.g. video_id
    path: str
    fps: float
    max_frames: int
    short_side: int | None
    window: int | None
    stride: int


@dataclass
class DecodeFailure:
    key: str
    error: str  # one-line human message


def _run_drills(path: str) -> None:
    """Drill hooks (see HANG_DRILL_ENV): simulate a decoder that hangs or crashes."""
    hang_marker = os.environ.get(HANG_DRILL_ENV)
    if hang_marker and hang_marker in path:
        while True:
            time.sleep(3600)
    crash_marker = os.environ.get(CRASH_DRILL_ENV)
    if crash_marker and crash_marker in path:
        os.kill(os.getpid(), signal.SIGSEGV)


def _decode_request(request: DecodeRequest) -> DecodedVideo | DecodeFailure:
    try:
        return decode_video(
            request.path, request.fps, request.max_frames, request.short_side, request.window, request.stride
        )
    except DecodeError as error:
        return DecodeFailure(request.key, str(error))
    except Exception as error:  # a worker must survive any one video
        return DecodeFailure(request.key, f"{request.path}: unexpected {type(error).__name__}: {_one_line(str(error))}")


def _worker_main(conn: multiprocessing.connection.Connection, parent_pid: int) -> None:
    """Worker process: decode requests one at a time until told to stop.

    The kernel kills it if the parent dies, even mid-hang (the signal follows the parent
    *thread* that started it, which is why only the pool's dispatcher thread starts workers).
    """
    global _silence_native_stderr
    die_with_parent(parent_pid)
    try:
        # Own process group, so a kill also takes any ffmpeg child with it.
        os.setpgrp()
    except OSError:
        pass
    decord.logging.set_level(decord.logging.QUIET)  # quiets FFmpeg's own log ...
    _silence_native_stderr = True  # ... but not decord's C++ "ERROR opening" lines
    conn.send(("ready", os.getpid()))
    while True:
        try:
            request = conn.recv()
        except (EOFError, OSError):
            return  # parent is gone
        if request is None:
            return
        _run_drills(request.path)
        result = _decode_request(request)
        try:
            conn.send(("result", result))
        except (BrokenPipeError, OSError):
            return


_END: Any = object()  # end-of-requests marker


class _Job:
    """One imap call: its results, keyed by submission order."""

    def __init__(self) -> None:
        self.results: dict[int, tuple[DecodeRequest, DecodedVideo | DecodeFailure]] = {}
        self.cancelled = False
        self.error: BaseException | None = None


@dataclass
class _Worker:
    process: Any  # multiprocessing SpawnProcess
    conn: multiprocessing.connection.Connection
    deadline: float  # monotonic; boot deadline until ready, then the task's
    ready: bool = False
    task: tuple[_Job, int, DecodeRequest] | None = None


def _exit_description(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


class DecodePool:
    """`workers` spawned processes, each decoding one request at a time.

    A request that runs past `timeout_s` has its worker killed (with its process
    group, so ffmpeg children die too) and replaced; it yields DecodeFailure('...
    timed out after Ns'). A worker that dies (segfault) yields DecodeFailure for its
    request and is replaced. A dispatcher thread feeds the workers, so decoding
    continues while the consumer works on earlier results. Reusable across imap
    calls, also concurrent ones from several threads; closed by close(), the context
    manager, or at interpreter exit.

    Uses the 'spawn' start method: scripts that create a pool need the usual
    ``if __name__ == "__main__":`` guard. Workers leave their parent's process group
    (terminal Ctrl-C reaches only the parent, which then closes the pool); on Linux
    the kernel kills them if the parent dies, even mid-hang.
    """

    def __init__(self, workers: int = 2, timeout_s: float = 300.0) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if multiprocessing.current_process().daemon:
            # multiprocessing refuses children here; say why instead of failing in the dispatcher.
            raise RuntimeError(
                "decode workers cannot start inside a daemonic process; on a Dask worker start it with "
                "DASK_DISTRIBUTED__WORKER__DAEMON=False (dask config distributed.worker.daemon: false)"
            )
        self.workers = workers
        self.timeout_s = float(timeout_s)
        self._context = multiprocessing.get_context("spawn")
        self._cond = threading.Condition()
        self._pending: deque[tuple[_Job, int, DecodeRequest]] = deque()  # guarded by _cond
        self._jobs: set[_Job] = set()  # guarded by _cond
        self._closing = False
        self._closed = False
        self._failure: BaseException | None = None
        self._wake_reader, self._wake_writer = self._context.Pipe(duplex=False)
        self._wake_lock = threading.Lock()
        self._pool: list[_Worker] = []  # owned by the dispatcher thread, which starts every worker
        self._dispatcher = threading.Thread(target=self._dispatch_loop, name="prvr-decode-dispatch", daemon=True)
        self._dispatcher.start()
        atexit.register(self.close)

    @property
    def closed(self) -> bool:
        return self._closed

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (for monitoring; they change on replacement)."""
        return [worker.process.pid for worker in list(self._pool)]

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- consumer side

    def imap(
        self, requests: Iterable[DecodeRequest], prefetch: int = 4
    ) -> Iterator[tuple[DecodeRequest, DecodedVideo | DecodeFailure]]:
        """Yield (request, result) in request order, with at most `prefetch` requests
        submitted but not yet yielded (so at most that many decoded results wait in
        memory). Decoding of later requests overlaps the consumer's work."""
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        if self._closed or self._closing:
            raise RuntimeError("DecodePool is closed")
        return self._ordered_results(iter(requests), prefetch)

    def _ordered_results(
        self, requests: Iterator[DecodeRequest], prefetch: int
    ) -> Iterator[tuple[DecodeRequest, DecodedVideo | DecodeFailure]]:
        job = _Job()
        with self._cond:
            self._jobs.add(job)
        submitted = 0
        next_seq = 0
        exhausted = False
        try:
            while True:
                while not exhausted and submitted - next_seq < prefetch:
                    request = next(requests, _END)
                    if request is _END:
                        exhausted = True
                    else:
                        self._submit(job, submitted, request)
                        submitted += 1
                if next_seq == submitted:
                    return
                request, result = self._take(job, next_seq)
                next_seq += 1
                # Refill before handing the result out, so the next decode overlaps.
                if not exhausted:
                    request_next = next(requests, _END)
                    if request_next is _END:
                        exhausted = True
                    else:
                        self._submit(job, submitted, request_next)
                        submitted += 1
                yield request, result
        finally:
            with self._cond:
                job.cancelled = True
                self._jobs.discard(job)
                self._pending = deque(item for item in self._pending if item[0] is not job)
            self._wake()

    def _submit(self, job: _Job, seq: int, request: DecodeRequest) -> None:
        with self._cond:
            if self._closing:
                raise RuntimeError("DecodePool is closed")
            self._pending.append((job, seq, request))
        self._wake()

    def _take(self, job: _Job, seq: int) -> tuple[DecodeRequest, DecodedVideo | DecodeFailure]:
        with self._cond:
            while seq not in job.results:
                if job.error is not None:
                    raise RuntimeError("decode pool stopped") from job.error
                if self._failure is not None:
                    raise RuntimeError("decode pool dispatcher failed") from self._failure
                if self._closing:
                    raise RuntimeError("DecodePool was closed while results were pending")
                self._cond.wait(timeout=1.0)
            return job.results.pop(seq)

    def _wake(self) -> None:
        with self._wake_lock:
            if not self._wake_writer.closed:
                self._wake_writer.send_bytes(b"")

    # ---- dispatcher side (runs in the dispatcher thread; owns self._pool)

    def _start_worker(self) -> _Worker:
        parent_end, child_end = self._context.Pipe(duplex=True)
        process = self._context.Process(
            target=_worker_main, args=(child_end, os.getpid()), name="prvr-decode-worker", daemon=True
        )
        process.start()
        child_end.close()
        return _Worker(process=process, conn=parent_end, deadline=time.monotonic() + _WORKER_BOOT_TIMEOUT_S)

    def _dispatch_loop(self) -> None:
        try:
            self._pool = [self._start_worker() for _ in range(self.workers)]
            while True:
                with self._cond:
                    if self._closing:
                        return
                    self._assign_locked()
                waitables: list[Any] = [self._wake_reader]
                for worker in self._pool:
                    waitables += [worker.conn, worker.process.sentinel]
                timeout = max(0.0, min(w.deadline for w in self._pool) - time.monotonic())
                ready = multiprocessing.connection.wait(waitables, timeout=min(timeout, 3600.0))
                while self._wake_reader.poll():
                    self._wake_reader.recv_bytes()
                for position, worker in enumerate(self._pool):
                    if worker.conn in ready or worker.process.sentinel in ready:
                        self._pool[position] = self._collect(worker)
                now = time.monotonic()
                for position, worker in enumerate(self._pool):
                    if worker.deadline <= now:
                        self._pool[position] = self._expire(worker)
        except BaseException as error:
            log.exception("decode pool dispatcher failed")
            with self._cond:
                self._failure = error
                self._cond.notify_all()

    def _assign_locked(self) -> None:
        for worker in self._pool:
            if not self._pending:
                return
            if worker.ready and worker.task is None:
                job, seq, request = self._pending.popleft()
                worker.task = (job, seq, request)
                worker.deadline = time.monotonic() + self.timeout_s
                try:
                    worker.conn.send(request)
                except OSError:
                    pass  # it just died; its sentinel reports that with this task

    def _deliver(self, job: _Job, seq: int, request: DecodeRequest, result: DecodedVideo | DecodeFailure) -> None:
        with self._cond:
            if not job.cancelled:  # an abandoned imap's late results are dropped
                job.results[seq] = (request, result)
                self._cond.notify_all()

    def _collect(self, worker: _Worker) -> _Worker:
        """Read a worker's message, or replace it if it died."""
        unreadable: str | None = None
        try:
            message = worker.conn.recv() if worker.conn.poll() else None
        except (EOFError, OSError):
            message = None  # it died, perhaps halfway through sending
        except Exception as error:  # e.g. a result that does not unpickle
            message = None
            unreadable = f"its result could not be received ({type(error).__name__}: {_one_line(str(error))})"
        if message is not None:
            kind, payload = message
            if kind == "ready":
                worker.ready = True
                worker.deadline = math.inf
            elif worker.task is not None:
                job, seq, request = worker.task
                worker.task = None
                worker.deadline = math.inf
                self._deliver(job, seq, request, payload)
            if worker.process.is_alive():
                return worker
        if unreadable is None:
            worker.process.join(timeout=5)
        if worker.process.is_alive():  # unusable: no message, or a broken pipe
            self._kill(worker)
        cause = unreadable or f"decoder process died ({_exit_description(worker.process.exitcode)})"
        if not worker.ready:
            raise RuntimeError(f"decode worker failed to start: {cause}")
        if worker.task is not None:
            job, seq, request = worker.task
            log.warning("decode worker failed on %s: %s; replacing it", request.path, cause)
            self._deliver(job, seq, request, DecodeFailure(request.key, f"{request.path}: {cause}"))
        worker.conn.close()
        return self._start_worker()

    def _expire(self, worker: _Worker) -> _Worker:
        if not worker.ready:
            self._kill(worker)
            raise RuntimeError(f"decode worker did not start within {_WORKER_BOOT_TIMEOUT_S:g}s")
        self._kill(worker)
        if worker.task is not None:
            job, seq, request = worker.task
            log.warning("decoding %s timed out after %gs; killed its worker", request.path, self.timeout_s)
            failure = DecodeFailure(request.key, f"{request.path}: decoding timed out after {self.timeout_s:g}s")
            self._deliver(job, seq, request, failure)
        return self._start_worker()

    @staticmethod
    def _kill(worker: _Worker) -> None:
        try:
            os.killpg(worker.process.pid, signal.SIGKILL)  # the worker leads its own group
        except (ProcessLookupError, PermissionError):
            pass  # not yet its own group leader, or already gone
        worker.process.kill()
        worker.process.join(timeout=5)
        worker.conn.close()

    # ---- shutdown

    def close(self) -> None:
        """Stop the workers (idle ones politely, busy ones by kill). Idempotent."""
        if self._closed:
            return
        with self._cond:
            self._closing = True
            for job in self._jobs:
                job.error = RuntimeError("DecodePool closed")
            self._cond.notify_all()
        self._wake()
        if self._dispatcher.is_alive() and self._dispatcher is not threading.current_thread():
            self._dispatcher.join(timeout=30)
        idle = []
        for worker in self._pool:
            if worker.ready and worker.task is None and worker.process.is_alive():
                try:
                    worker.conn.send(None)
                    idle.append(worker)
                    continue
                except OSError:
                    pass
            self._kill(worker)  # busy or booting: its work is no longer wanted
        for worker in idle:
            worker.process.join(timeout=2)
            if worker.process.is_alive():
                self._kill(worker)
            else:
                worker.conn.close()
        with self._wake_lock:
            self._wake_writer.close()
        self._wake_reader.close()
        self._closed = True
        atexit.unregister(self.close)


_shared_pool: DecodePool | None = None
_shared_pool_lock = threading.Lock()


def get_decode_pool(workers: int, timeout_s: float) -> DecodePool:
    """Process-wide pool reused across shards and tasks, so worker processes (and what
    they load) start once; recreated only if the settings differ (the old pool is
    closed then, failing any iteration still running on it)."""
    global _shared_pool
    with _shared_pool_lock:
        pool = _shared_pool
        if pool is not None and not pool.closed and pool.workers == workers and pool.timeout_s == float(timeout_s):
            return pool
        if pool is not None:
            pool.close()
        _shared_pool = DecodePool(workers=workers, timeout_s=timeout_s)
        return _shared_pool
