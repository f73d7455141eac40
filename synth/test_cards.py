"""Make real test videos (test cards, and broken files) with the system ffmpeg.

Used by the decode, extraction and flow tests and by the benchmarks. Everything is made by
``subprocess.run`` with an argument list; sizes and lengths are kept small so a test
can afford a fresh video.

Patterns (content always changes with time, so a wrong frame shows up):
  * ``"testsrc2"``: ffmpeg's moving colour test card with a frame counter.
  * ``"frame_gray"``: every frame one flat grey whose level encodes the frame number
    (see ``frame_gray_level``), so a test can tell which frame it got.
``seed`` rotates the hue of the test cards, so videos made with different seeds
differ in content (it leaves "frame_gray" grey).

Codecs: ``"libx264"`` (h264; default for .mp4/.mkv), ``"libvpx-vp9"`` (default for
.webm), ``"av1"`` (whichever AV1 encoder this ffmpeg has, fastest first), or an exact
encoder name such as ``"libsvtav1"`` / ``"libaom-av1"``.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

# Encoder settings chosen for speed on tiny clips; quality is irrelevant here.
_ENCODER_ARGS: dict[str, list[str]] = {
    "libx264": ["-preset", "veryfast"],
    "libvpx-vp9": ["-deadline", "realtime", "-cpu-used", "8", "-b:v", "0", "-crf", "32"],
    "libsvtav1": ["-preset", "12"],
    "libaom-av1": ["-cpu-used", "8", "-row-mt", "1"],
}
_AV1_ENCODERS = ("libsvtav1", "libaom-av1")
_DEFAULT_CODEC_BY_SUFFIX = {".webm": "libvpx-vp9"}

BROKEN_KINDS = ("empty", "text", "garbage", "truncated", "truncated_tail", "audio_only")


def frame_gray_level(frame_index: int) -> float:
    """Expected RGB grey (0-255) of frame `frame_index` in the "frame_gray" pattern.

    The luma is 16 + (7*n mod 220) in limited range, i.e. RGB = (Y-16)*255/219; it
    wraps every 32 frames, far apart enough to catch off-by-one errors.
    """
    return (frame_index * 7 % 220) * 255 / 219


@functools.cache
def available_encoders() -> frozenset[str]:
    """Names of the video encoders the system ffmpeg has."""
    listing = subprocess.run(
        ["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True, check=True
    ).stdout
    names = set()
    for line in listing.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith("V"):
            names.add(parts[1])
    return frozenset(names)


def has_ffmpeg() -> bool:
    return shutil.which("ffmpeg") is not None and shutil.which("ffprobe") is not None


def av1_encoder() -> str | None:
    """The fastest AV1 encoder available, or None."""
    return next((name for name in _AV1_ENCODERS if name in available_encoders()), None)


def _resolve_codec(codec: str | None, path: Path) -> str:
    if codec is None:
        return _DEFAULT_CODEC_BY_SUFFIX.get(path.suffix.lower(), "libx264")
    if codec == "av1":
        encoder = av1_encoder()
        if encoder is None:
            raise RuntimeError("this ffmpeg has no AV1 encoder (libsvtav1 or libaom-av1)")
        return encoder
    return codec


def _source(pattern: str, seconds: float, fps: float, size: tuple[int, int], seed: int) -> str:
    width, height = size
    if pattern in ("testsrc2", "testsrc"):
        source = f"{pattern}=size={width}x{height}:rate={fps}:duration={seconds}"
        return f"{source},hue=h={seed * 137 % 360}" if seed else source
    if pattern == "frame_gray":
        return (
            f"color=c=black:size={width}x{height}:rate={fps}:duration={seconds},"
            "format=yuv420p,geq=lum='16+mod(N*7\\,220)':cb=128:cr=128"
        )
    raise ValueError(f"unknown pattern {pattern!r}; use 'testsrc2', 'testsrc' or 'frame_gray'")


def run_ffmpeg(args: Sequence[str]) -> None:
    """Run ffmpeg quietly with `args`; raise with its stderr if it fails."""
    command = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({completed.returncode}): {' '.join(command)}\n{completed.stderr}")


def make_video(
    path: str | Path,
    seconds: float,
    fps: float = 10,
    size: tuple[int, int] = (160, 120),
    codec: str | None = None,
    pattern: str = "testsrc2",
    seed: int = 0,
    audio: bool = False,
    extra_args: Sequence[str] = (),
) -> Path:
    """Encode a `seconds`-long video of `size` (width, height) at `fps` to `path`.

    The container follows the suffix (.mp4, .mkv, .webm, ...). `seed` varies the
    content between videos of the same pattern. `audio` adds a sine
    track (decoders must still pick the video stream). `extra_args` go right before
    the output path, e.g. ``["-movflags", "+faststart"]`` or ``["-g", "5"]``.
    Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder = _resolve_codec(codec, path)
    args = ["-f", "lavfi", "-i", _source(pattern, seconds, fps, size, seed)]
    if audio:
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}"]
    args += ["-map", "0:v"] + (["-map", "1:a"] if audio else [])
    args += ["-c:v", encoder, *_ENCODER_ARGS.get(encoder, []), "-pix_fmt", "yuv420p"]
    if audio:
        args += ["-c:a", "libopus" if path.suffix.lower() == ".webm" else "aac"]
    args += [*extra_args, str(path)]
    run_ffmpeg(args)
    return path


def make_broken(kind: str, path: str | Path) -> Path:
    """Write a broken "video" of `kind` to `path` (name it .mp4 to look legitimate).

    Kinds: "empty" (0 bytes), "text" (a text file), "garbage" (random-looking bytes),
    "truncated" (first 30% of a real mp4 whose index sits at the end, so nothing can
    be read), "truncated_tail" (first 30% of a fast-start mp4: the index survives but
    most frames are gone), "audio_only" (a valid file with no video stream).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not a video, just a text file with a video's name\n")
    elif kind == "garbage":
        path.write_bytes(bytes((index * 131 + 17) % 251 for index in range(50_000)))
    elif kind in ("truncated", "truncated_tail"):
        whole = path.with_name(path.stem + ".whole" + path.suffix)
        extra = ["-movflags", "+faststart"] if kind == "truncated_tail" else []
        make_video(whole, seconds=5, codec="libx264", extra_args=extra)
        data = whole.read_bytes()
        whole.unlink()
        path.write_bytes(data[: int(len(data) * 0.3)])
    elif kind == "audio_only":
        suffix = path.suffix.lower()
        codec = "libopus" if suffix == ".webm" else "aac"
        run_ffmpeg(["-f", "lavfi", "-i", "sine=frequency=440:duration=2", "-c:a", codec, str(path)])
    else:
        raise ValueError(f"unknown broken kind {kind!r}; one of {BROKEN_KINDS}")
    return path
