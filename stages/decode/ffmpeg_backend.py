"""The fallback: decord's bundled FFmpeg 4.1 cannot decode some streams (AV1 has no decoder
there), so when decord cannot open or read a video the system ffmpeg decodes the same frame
indices at the same output size."""

from __future__ import annotations

import logging
import math
import os
import subprocess
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import ffmpeg
import numpy as np

from stages.decode.plan import plan_samples
from stages.decode.video import (
    HEAD_BYTES, REFERENCE_DEMUXERS, REFUSED, DecodedVideo, DecodeError, one_line, output_size,
)

log = logging.getLogger("stages.decode")

# Container frame counts may overstate what decodes by a frame or two; samples that
# fall this close to the end reuse the last decoded frame instead of failing the video.
_TAIL_SLACK_S = 0.5
# At most this many terms in the ffmpeg `select` expression; nearby runs of wanted
# frames are merged (the extra frames are decoded and dropped in Python).
_MAX_SELECT_TERMS = 256


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
        if set(demuxer.split(",")) & REFERENCE_DEMUXERS:
            raise DecodeError(f"{path}: a {demuxer} input, which points at other media; {REFUSED}")
        return info
    with path.open("rb") as file:
        head = file.read(HEAD_BYTES)
    # ffprobe says "moov atom not found" for anything named .mp4; only a file that
    # starts like an MP4 is really a truncated one.
    if "moov atom not found" in stderr and _starts_like_mp4(head):
        raise DecodeError(f"{path}: truncated or incomplete MP4 (its index, the moov atom, is missing)")
    if _looks_like_text(head):
        raise DecodeError(f"{path}: a text file, not a video")
    reason = one_line(stderr).replace(f"{os.path.abspath(path)}: ", "").replace(f"{path}: ", "")
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


def video_stream(path: Path) -> _VideoStream:
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


def ffmpeg_frames(
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


def decode_with_ffmpeg(
    path: Path, fps: float, max_frames: int, short_side: int | None, window: int | None, stride: int
) -> DecodedVideo:
    stream = video_stream(path)
    height, width = output_size(stream.height, stream.width, short_side)
    plan = plan_samples(stream.num_frames, stream.avg_fps, fps, max_frames, window, stride, stream.timestamps)
    wanted = plan.needed_indices()
    frames, decoded, stderr = ffmpeg_frames(path, stream.index, stream.demuxer, wanted, height, width)
    if decoded == 0:
        detail = one_line(stderr) if stderr.strip() else "no frames came out"
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
