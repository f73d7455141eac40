"""What both decoding backends share: the decoded video, its output size, the errors, and the
check that only media files themselves are decoded.

Playlists and scripts that name other files (HLS, ffmpeg concat, SDP, DASH, ...) are refused
before either backend opens them, since decoding one would read files the manifest never listed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stages.decode.plan import SamplePlan


class DecodeError(Exception):
    """A video that cannot be decoded; the message says why in user terms."""


class BackendFailure(Exception):
    """One backend could not decode the video; the other may still succeed."""


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


HEAD_BYTES = 1024
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
REFERENCE_DEMUXERS = frozenset(
    {"hls", "applehttp", "concat", "dash", "imf", "sdp", "rtsp", "rtp", "avisynth", "vapoursynth"}
)
REFUSED = "only media files themselves are decoded; list the media file in the manifest"


def _refuse_references(path: Path, head: bytes) -> None:
    """DecodeError for a playlist, script or manifest that names other media."""
    start = head.removeprefix(b"\xef\xbb\xbf").lstrip()  # a byte-order mark, blank lines
    for magic, what in _REFERENCE_STARTS:
        if start.startswith(magic):
            raise DecodeError(f"{path}: {what}, which points at other media; {REFUSED}")


def check_file(path: Path) -> None:
    if not path.exists():
        raise DecodeError(f"{path}: file not found")
    if not path.is_file():
        raise DecodeError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise DecodeError(f"{path}: file is empty (0 bytes)")
    with path.open("rb") as file:
        _refuse_references(path, file.read(HEAD_BYTES))


# decord prefixes its messages with "[hh:mm:ss] /source/file.cc:123: ".
_DECORD_LOG_PREFIX = re.compile(r"^\[\d\d:\d\d:\d\d\] \S+:\d+: ")


def one_line(message: str, limit: int = 300) -> str:
    """The last non-empty line of a tool's message, without decord's log prefix."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    text = _DECORD_LOG_PREFIX.sub("", lines[-1]) if lines else "no details"
    return text if len(text) <= limit else text[: limit - 3] + "..."
