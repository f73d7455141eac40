"""Draws scenes: a numpy rasteriser (signed distances give anti-aliased edges without
supersampling) and an ffmpeg pipe that writes H.264 with settings that decode to the
same frames on every run."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from synth.presets import COLOURS
from synth.world import Background, Scene, actor_state, speck_position


def _regular_star(points: int, outer: float, inner: float) -> tuple[tuple[float, float], ...]:
    corners = []
    for k in range(2 * points):
        radius = outer if k % 2 == 0 else inner
        theta = -math.pi / 2 + k * math.pi / points  # first point straight up
        corners.append((radius * math.cos(theta), radius * math.sin(theta)))
    return tuple(corners)


# Outlines in units of the object's radius (diameter 2), y downwards. Sizes are tuned so
# the shapes look about equally big.
SQUARE_HALF_SIDE = 0.82
POLYGONS: dict[str, tuple[tuple[float, float], ...]] = {
    "triangle": tuple(
        (1.1 * math.cos(-math.pi / 2 + k * 2 * math.pi / 3), 1.1 * math.sin(-math.pi / 2 + k * 2 * math.pi / 3) + 0.1)
        for k in range(3)
    ),
    "star": _regular_star(5, 1.12, 0.47),
    "cross": (
        (-0.32, -0.95), (0.32, -0.95), (0.32, -0.32), (0.95, -0.32), (0.95, 0.32), (0.32, 0.32),
        (0.32, 0.95), (-0.32, 0.95), (-0.32, 0.32), (-0.95, 0.32), (-0.95, -0.32), (-0.32, -0.32),
    ),
}
RING_MID, RING_HALF_WIDTH = 0.72, 0.28
REACH = 1.2  # no outline reaches further than this many radii from the centre


def _polygon_distance(u: np.ndarray, v: np.ndarray, corners: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Signed distance (negative inside) from points (u, v) to a closed polygon."""
    a = np.asarray(corners, dtype=np.float64)
    b = np.roll(a, -1, axis=0)
    pu, pv = u[..., None] - a[:, 0], v[..., None] - a[:, 1]
    eu, ev = b[:, 0] - a[:, 0], b[:, 1] - a[:, 1]
    h = np.clip((pu * eu + pv * ev) / (eu * eu + ev * ev), 0.0, 1.0)
    dist = np.sqrt((pu - eu * h) ** 2 + (pv - ev * h) ** 2).min(axis=-1)
    # Even-odd rule: count edges crossed by a ray towards +u.
    straddles = (a[:, 1] > v[..., None]) != (b[:, 1] > v[..., None])
    with np.errstate(divide="ignore", invalid="ignore"):
        cross_u = a[:, 0] + (v[..., None] - a[:, 1]) * eu / ev
    inside = (straddles & (u[..., None] < cross_u)).sum(axis=-1) % 2 == 1
    return np.where(inside, -dist, dist)


def shape_distance(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance in radius units for points in the shape's own frame."""
    if shape == "circle":
        return np.hypot(u, v) - 1.0
    if shape == "ring":
        return np.abs(np.hypot(u, v) - RING_MID) - RING_HALF_WIDTH
    if shape == "square":  # the common speck shape: a closed form is much cheaper
        qu, qv = np.abs(u) - SQUARE_HALF_SIDE, np.abs(v) - SQUARE_HALF_SIDE
        return np.hypot(np.maximum(qu, 0.0), np.maximum(qv, 0.0)) + np.minimum(np.maximum(qu, qv), 0.0)
    if shape in POLYGONS:
        return _polygon_distance(u, v, POLYGONS[shape])
    raise ValueError(f"unknown shape {shape!r}")


SUBPIXEL = 4  # centres snap to quarter pixels: patches repeat as objects glide


@lru_cache(maxsize=4096)
def _patch(shape: str, frac_x: float, frac_y: float, radius: float, angle: float, rgb: tuple[int, int, int]) -> tuple[int, np.ndarray, np.ndarray]:
    """(half, 1 - alpha, alpha * colour) for a shape whose centre lies `frac` past a pixel
    corner; the patch spans [-half, half) pixels around that corner. Moving objects reuse
    the same few patches (shift invariance), so only scaling and turning cost a new one."""
    half = int(math.ceil(radius * REACH + 1.0))
    offsets = np.arange(-half, half, dtype=np.float64) + 0.5
    dx = (offsets - frac_x)[None, :]
    dy = (offsets - frac_y)[:, None]
    theta = math.radians(angle)
    # Into the shape's frame: rotate by -angle; on screen (y down) +angle looks counter-clockwise.
    u = (dx * math.cos(theta) - dy * math.sin(theta)) / radius
    v = (dx * math.sin(theta) + dy * math.cos(theta)) / radius
    alpha = np.clip(0.5 - shape_distance(shape, u, v) * radius, 0.0, 1.0).astype(np.float32)[..., None]
    keep = 1.0 - alpha
    paint = alpha * np.asarray(rgb, dtype=np.float32)
    keep.setflags(write=False)
    paint.setflags(write=False)
    return half, keep, paint


def _snap(coordinate: float) -> tuple[int, float]:
    whole = math.floor(coordinate)
    frac = round((coordinate - whole) * SUBPIXEL) / SUBPIXEL
    if frac >= 1.0:
        whole, frac = whole + 1, 0.0
    return whole, frac


def _paint(image: np.ndarray, shape: str, x: float, y: float, diameter: float, angle: float, rgb: tuple[int, int, int]) -> None:
    height, width = image.shape[:2]
    radius = round(max(diameter * min(width, height) / 2.0, 0.5), 2)
    col, frac_x = _snap(x * width)
    row, frac_y = _snap(y * height)
    half, keep, paint = _patch(shape, frac_x, frac_y, radius, round(angle % 360.0, 1), rgb)
    top, left = row - half, col - half
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + 2 * half, height), min(left + 2 * half, width)
    if r0 >= r1 or c0 >= c1:
        return
    region = image[r0:r1, c0:c1]
    region *= keep[r0 - top:r1 - top, c0 - left:c1 - left]
    region += paint[r0 - top:r1 - top, c0 - left:c1 - left]


@lru_cache(maxsize=64)
def _stripe_terms(bg: Background, width: int, height: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """base, base*c*sin(phase), base*c*cos(phase) per pixel and channel, at t = 0."""
    side = min(width, height)
    xs = (np.arange(width, dtype=np.float64) + 0.5) / side
    ys = (np.arange(height, dtype=np.float64) + 0.5) / side
    phase = 2.0 * math.pi * (xs[None, :] * math.cos(bg.stripe_angle) + ys[:, None] * math.sin(bg.stripe_angle)) / bg.stripe_period
    base = np.broadcast_to(np.asarray(bg.rgb, dtype=np.float64), (height, width, 3))
    terms = (base, base * bg.stripe_contrast * np.sin(phase)[..., None], base * bg.stripe_contrast * np.cos(phase)[..., None])
    frozen = tuple(np.ascontiguousarray(x, dtype=np.float32) for x in terms)
    for x in frozen:
        x.setflags(write=False)
    return frozen


def background_frame(bg: Background, width: int, height: int, t: float) -> np.ndarray:
    """base * (1 + c * sin(phase - shift)): stripes drifting along their normal. The sine of
    a difference is expanded so a frame costs two multiply-adds instead of a sine per pixel."""
    base, sin_part, cos_part = _stripe_terms(bg, width, height)
    shift = 2.0 * math.pi * bg.stripe_speed * t / bg.stripe_period
    image = sin_part * np.float32(math.cos(shift))
    image -= cos_part * np.float32(math.sin(shift))
    image += base
    return image


def render_frame(scene: Scene, t: float) -> np.ndarray:
    """The frame at time t as uint8 (height, width, 3): background, specks, then objects."""
    image = background_frame(scene.background, scene.width, scene.height, t)
    for speck in scene.specks:
        x, y = speck_position(speck, t)
        _paint(image, speck.shape, x, y, speck.diameter, 0.0, speck.rgb)
    for actor in scene.actors:
        state = actor_state(actor, t)
        if state.visible:
            _paint(image, actor.shape, state.x, state.y, state.diameter, state.angle, COLOURS[actor.colour])
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def render_frames(scene: Scene) -> Iterator[np.ndarray]:
    for index in range(scene.frames):
        yield render_frame(scene, index / scene.fps)


def ffmpeg_command(path: Path, width: int, height: int, fps: int) -> list[str]:
    """Raw RGB on stdin to H.264 mp4. One encoder thread and bit-exact flags: the same frames
    in give the same file out."""
    return [
        "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "pipe:0",
        "-an", "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-pix_fmt", "yuv420p",
        "-g", str(2 * fps), "-threads", "1",
        "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:v", "+bitexact",
        "-movflags", "+faststart", str(path),
    ]


def write_mp4(frames: Iterable[np.ndarray], path: Path, width: int, height: int, fps: int) -> None:
    """Encode frames to `path`, written beside it first and renamed, so a crash never
    leaves a truncated video under the final name."""
    if shutil.which("ffmpeg") is None:
        raise RuntimeError("ffmpeg is not on PATH; the synthetic world needs it to write videos")
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial.mp4")
    try:
        with tempfile.TemporaryFile() as errors:
            proc = subprocess.Popen(ffmpeg_command(tmp, width, height, fps), stdin=subprocess.PIPE, stderr=errors)
            assert proc.stdin is not None
            try:
                for frame in frames:
                    if frame.shape != (height, width, 3) or frame.dtype != np.uint8:
                        raise ValueError(f"frame of shape {frame.shape} {frame.dtype}, expected ({height}, {width}, 3) uint8")
                    proc.stdin.write(frame.tobytes())
            except BrokenPipeError:
                pass  # ffmpeg died; its exit status and stderr say why
            finally:
                proc.stdin.close()
                code = proc.wait()
            if code != 0:
                errors.seek(0)
                raise RuntimeError(f"ffmpeg failed ({code}) writing {path.name}: {errors.read().decode(errors='replace').strip()}")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def render_video(scene: Scene, path: Path) -> Path:
    write_mp4(render_frames(scene), path, scene.width, scene.height, scene.fps)
    return path
