"""Frame sampling and decoding on real videos made by the system ffmpeg, real decord.

Decoded frames are checked for identity, not just shape: the "frame_gray" pattern
paints frame n in a grey that encodes n (synth/test_cards.py), and testsrc2 frames next
to each other differ by a mean of >= 8 grey levels (measured), so a frame off by one
cannot pass the "same frames" checks below.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from stages.decode import (
    DecodedVideo,
    DecodeError,
    DecodeFailure,
    DecodePool,
    DecodeRequest,
    decode_video,
    get_decode_pool,
    output_size,
    plan_samples,
)
from stages.drills import CRASH_DRILL_ENV, HANG_DRILL_ENV
from synth.test_cards import av1_encoder, frame_gray_level, make_broken, make_video, run_ffmpeg

SECONDS = 8
FPS = 10  # of the test videos: 80 frames each, 160x120

# Decord and the ffmpeg fallback run the same swscale conversion (bilinear scale to
# rgb24): measured mean abs difference 0.000 on h264/VP9, mkv/mp4/webm, resized or
# not. The bound leaves room for other FFmpeg builds' decoders and stays far below
# the >= 8 that a neighbouring frame would give.
MAX_BACKEND_MEAN_ABS_DIFF = 1.0
# Grey levels survive lossy coding and colour conversion within 0.5 (measured).
MAX_GRAY_LEVEL_ERROR = 2.0


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    return {
        "mp4": make_video(root / "h264.mp4", SECONDS, fps=FPS),
        "mkv": make_video(root / "h264.mkv", SECONDS, fps=FPS, audio=True),
        "webm": make_video(root / "vp9.webm", SECONDS, fps=FPS, audio=True),
        "gray_mp4": make_video(root / "gray.mp4", SECONDS, fps=FPS, pattern="frame_gray"),
        "gray_webm": make_video(root / "gray.webm", SECONDS, fps=FPS, pattern="frame_gray"),
        "portrait": make_video(root / "portrait.mp4", 2, fps=FPS, size=(120, 160)),
    }


def gray_levels(frames: np.ndarray) -> np.ndarray:
    return frames.reshape(len(frames), -1).mean(axis=1)


def assert_frames_are(frames: np.ndarray, indices: np.ndarray) -> None:
    """`frames` of a frame_gray video are the frames numbered `indices`."""
    expected = np.array([frame_gray_level(int(index)) for index in indices])
    np.testing.assert_allclose(gray_levels(frames), expected, atol=MAX_GRAY_LEVEL_ERROR)


# ------------------------------------------------------------------ plan_samples


def test_plan_samples_at_fps_centres_each_interval():
    plan = plan_samples(num_frames=100, avg_fps=10.0, fps=1.0, max_frames=100)
    assert plan.indices.tolist() == [5, 15, 25, 35, 45, 55, 65, 75, 85, 95]
    assert plan.indices.dtype == np.int64 and plan.times.dtype == np.float32
    np.testing.assert_allclose(plan.times, np.arange(10) + 0.5)
    assert plan.windows is None


def test_plan_samples_resamples_uniformly_above_max_frames():
    plan = plan_samples(num_frames=100, avg_fps=10.0, fps=2.0, max_frames=8)  # 20 samples wanted
    # times (j + 0.5) * 10 / 8 = 0.625, 1.875, ...; index = floor(t * 10)
    assert plan.indices.tolist() == [6, 18, 31, 43, 56, 68, 81, 93]
    np.testing.assert_allclose(plan.times, plan.indices / 10.0, rtol=1e-6)


def test_plan_samples_times_are_those_of_the_decoded_frames():
    plan = plan_samples(num_frames=90, avg_fps=29.97, fps=1.0, max_frames=64)
    assert len(plan.indices) == 3  # 90 frames at 29.97 fps last 3.003 s
    np.testing.assert_allclose(plan.times, plan.indices / 29.97, rtol=1e-6)


def test_plan_samples_is_safe_from_float_rounding():
    # (24 + 0.5) / 3 * 30 is 244.99999999999997 in floating point.
    assert plan_samples(num_frames=300, avg_fps=30.0, fps=3.0, max_frames=100).indices[24] == 245
    # 3 / 0.7 * 0.7 is 2.9999999999999996: still three samples.
    assert len(plan_samples(num_frames=3, avg_fps=0.7, fps=0.7, max_frames=10).indices) == 3


def test_plan_samples_windows_centre_and_clip():
    plan = plan_samples(num_frames=100, avg_fps=10.0, fps=1.0, max_frames=100, window=4, stride=2)
    assert plan.windows is not None and plan.windows.shape == (10, 4)
    assert plan.windows[1].tolist() == [11, 13, 15, 17]  # offsets -4, -2, 0, +2 around 15
    assert plan.windows[0].tolist() == [1, 3, 5, 7]
    edge = plan_samples(num_frames=12, avg_fps=10.0, fps=1.0, max_frames=10, window=5, stride=3)
    assert edge.indices.tolist() == [5]
    assert edge.windows.tolist() == [[0, 2, 5, 8, 11]]  # -1 clipped to 0, 11 is the last frame
    odd = plan_samples(num_frames=100, avg_fps=10.0, fps=1.0, max_frames=100, window=3)
    assert odd.windows[-1].tolist() == [94, 95, 96]


def test_plan_samples_gives_tiny_videos_one_sample():
    plan = plan_samples(num_frames=1, avg_fps=30.0, fps=1.0, max_frames=16, window=4)
    assert plan.indices.tolist() == [0]
    assert plan.times.tolist() == [0.0]
    assert plan.windows.tolist() == [[0, 0, 0, 0]]
    assert plan_samples(num_frames=5, avg_fps=25.0, fps=0.5, max_frames=16).indices.tolist() == [4]


def test_plan_samples_faster_than_the_video_repeats_frames():
    plan = plan_samples(num_frames=10, avg_fps=10.0, fps=25.0, max_frames=100)
    assert len(plan.indices) == 25
    assert np.all(np.diff(plan.indices) >= 0)
    assert plan.needed_indices().tolist() == list(range(10))


@pytest.mark.parametrize(
    "arguments",
    [
        dict(num_frames=0, avg_fps=10.0, fps=1.0, max_frames=4),
        dict(num_frames=10, avg_fps=0.0, fps=1.0, max_frames=4),
        dict(num_frames=10, avg_fps=float("nan"), fps=1.0, max_frames=4),
        dict(num_frames=10, avg_fps=10.0, fps=0.0, max_frames=4),
        dict(num_frames=10, avg_fps=10.0, fps=1.0, max_frames=0),
        dict(num_frames=10, avg_fps=10.0, fps=1.0, max_frames=4, window=0),
        dict(num_frames=10, avg_fps=10.0, fps=1.0, max_frames=4, window=2, stride=0),
    ],
)
def test_plan_samples_rejects_nonsense(arguments):
    with pytest.raises(ValueError):
        plan_samples(**arguments)


def test_output_size_scales_the_short_side():
    assert output_size(120, 160, 224) == (224, 299)
    assert output_size(160, 120, 224) == (299, 224)
    assert output_size(1080, 1920, 224) == (224, 398)
    assert output_size(120, 160, None) == (120, 160)


# ---------------------------------------------------------------------- decoding


@pytest.mark.parametrize("name", ["mp4", "mkv", "webm"])
def test_decode_samples_at_fps_with_short_side(videos, name):
    decoded = decode_video(videos[name], fps=1.0, max_frames=32, short_side=224)
    assert decoded.backend == "decord"
    assert decoded.duration == pytest.approx(SECONDS)
    assert decoded.avg_fps == pytest.approx(FPS)
    assert decoded.plan.indices.tolist() == [5, 15, 25, 35, 45, 55, 65, 75]
    np.testing.assert_allclose(decoded.plan.times, np.arange(SECONDS) + 0.5)
    samples = decoded.samples()
    assert samples.shape == (SECONDS, 224, 299, 3) and samples.dtype == np.uint8
    assert decoded.frame_indices.tolist() == decoded.plan.indices.tolist()


def test_decode_native_size_and_portrait(videos):
    assert decode_video(videos["mp4"], fps=1.0, max_frames=4, short_side=None).frames.shape[1:] == (120, 160, 3)
    assert decode_video(videos["portrait"], fps=1.0, max_frames=4, short_side=64).frames.shape[1:] == (85, 64, 3)


@pytest.mark.parametrize("name", ["gray_mp4", "gray_webm"])
def test_decoded_frames_are_the_planned_ones(videos, name):
    decoded = decode_video(videos[name], fps=2.0, max_frames=8, short_side=32, window=3, stride=2)
    assert_frames_are(decoded.frames, decoded.frame_indices)
    assert_frames_are(decoded.samples(), decoded.plan.indices)
    clips = decoded.clips()
    assert clips.shape == (8, 3, 32, 43, 3)
    for clip, window in zip(clips, decoded.plan.windows):
        assert_frames_are(clip, window)
    np.testing.assert_array_equal(clips[:, 1], decoded.samples())  # centre of an odd window


def test_clips_needs_a_window(videos):
    decoded = decode_video(videos["mp4"], fps=1.0, max_frames=4)
    with pytest.raises(ValueError, match="window"):
        decoded.clips()
    partial = DecodedVideo(decoded.frames[:2], decoded.frame_indices[:2], decoded.plan, 8.0, 10.0, "decord")
    with pytest.raises(ValueError, match="not decoded"):
        partial.samples()


@pytest.mark.parametrize(
    "arguments",
    [dict(fps=0.0), dict(max_frames=0), dict(short_side=0), dict(window=0), dict(stride=0), dict(backend="opencv")],
)
def test_decode_video_rejects_nonsense_arguments(videos, arguments):
    with pytest.raises(ValueError):
        decode_video(videos["mp4"], **{"fps": 1.0, "max_frames": 4, **arguments})


@pytest.mark.parametrize("name", ["mp4", "mkv", "webm", "gray_webm"])
@pytest.mark.parametrize("short_side", [224, None])
def test_ffmpeg_fallback_gives_the_same_frames_as_decord(videos, name, short_side):
    by_decord = decode_video(videos[name], 2.0, 16, short_side, window=2, stride=3, backend="decord")
    by_ffmpeg = decode_video(videos[name], 2.0, 16, short_side, window=2, stride=3, backend="ffmpeg")
    assert (by_decord.backend, by_ffmpeg.backend) == ("decord", "ffmpeg")
    np.testing.assert_array_equal(by_ffmpeg.frame_indices, by_decord.frame_indices)
    np.testing.assert_array_equal(by_ffmpeg.plan.times, by_decord.plan.times)
    assert by_ffmpeg.duration == pytest.approx(by_decord.duration)
    assert by_ffmpeg.frames.shape == by_decord.frames.shape
    difference = np.abs(by_ffmpeg.frames.astype(np.int16) - by_decord.frames.astype(np.int16))
    assert difference.mean() < MAX_BACKEND_MEAN_ABS_DIFF


def test_ffmpeg_fallback_with_many_scattered_frames(tmp_path):
    # 300 isolated frames: more runs than one ffmpeg select expression takes, so
    # runs are merged and the extra frames dropped on the way.
    video = make_video(tmp_path / "long_gray.mp4", 60, fps=FPS, size=(64, 48), pattern="frame_gray")
    by_ffmpeg = decode_video(video, fps=5.0, max_frames=300, short_side=None, backend="ffmpeg")
    assert by_ffmpeg.frame_indices.tolist() == list(range(1, 600, 2))
    assert_frames_are(by_ffmpeg.frames, by_ffmpeg.frame_indices)
    by_decord = decode_video(video, fps=5.0, max_frames=300, short_side=None, backend="decord")
    np.testing.assert_array_equal(by_ffmpeg.frames, by_decord.frames)


@pytest.mark.skipif(av1_encoder() is None, reason="this ffmpeg has no AV1 encoder")
@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_av1_decodes_through_ffmpeg(tmp_path, suffix):
    video = make_video(tmp_path / f"av1{suffix}", 4, fps=FPS, codec="av1", pattern="frame_gray")
    # decord 0.6.0's bundled FFmpeg has no AV1 decoder: it cannot even find the stream.
    with pytest.raises(DecodeError, match="decord cannot decode"):
        decode_video(video, fps=1.0, max_frames=8, backend="decord")
    decoded = decode_video(video, fps=1.0, max_frames=8, short_side=100, window=2)
    assert decoded.backend == "ffmpeg"
    assert decoded.plan.indices.tolist() == [5, 15, 25, 35]
    assert decoded.frames.shape[1:] == (100, 133, 3)
    assert_frames_are(decoded.frames, decoded.frame_indices)


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("empty", r"file is empty \(0 bytes\)"),
        ("text", "a text file, not a video"),
        ("garbage", "not a video file"),
        ("truncated", "truncated or incomplete MP4"),
        ("truncated_tail", r"truncated or corrupt: decoding stopped at frame \d+"),
        ("audio_only", r"no video stream \(found: audio\)"),
    ],
)
def test_bad_files_raise_decode_error_saying_why(tmp_path, kind, message):
    path = make_broken(kind, tmp_path / f"{kind}.mp4")
    with pytest.raises(DecodeError, match=message) as raised:
        decode_video(path, fps=1.0, max_frames=8)
    assert str(path) in str(raised.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DecodeError, match="file not found"):
        decode_video(tmp_path / "nowhere.mp4", fps=1.0, max_frames=8)
    with pytest.raises(DecodeError, match="not a regular file"):
        decode_video(tmp_path, fps=1.0, max_frames=8)


def test_truncated_matroska_is_a_shorter_video(tmp_path, videos):
    # Matroska has no up-front index: a cut file is just a shorter video to both backends.
    data = videos["mkv"].read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: len(data) // 2])
    by_decord = decode_video(cut, fps=1.0, max_frames=16, backend="decord")
    by_ffmpeg = decode_video(cut, fps=1.0, max_frames=16, backend="ffmpeg")
    assert 0 < by_decord.duration < SECONDS
    assert by_ffmpeg.duration == pytest.approx(by_decord.duration)
    np.testing.assert_array_equal(by_ffmpeg.frames, by_decord.frames)


def cut_before_last_frames(video: Path, cut: Path, frames: int) -> Path:
    """Copy `video` without the bytes of its last `frames` frames (no B-frames, index first)."""
    listing = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pos", "-of", "json", str(video)],
        capture_output=True, text=True, check=True,
    ).stdout
    offsets = [int(packet["pos"]) for packet in json.loads(listing)["packets"]]
    cut.write_bytes(video.read_bytes()[: offsets[-frames]])
    return cut


def test_ffmpeg_reuses_the_last_frame_when_the_final_ones_are_missing(tmp_path):
    # The index still promises 50 frames; the last 2 are gone. Samples that near the
    # end reuse frame 47 rather than failing the whole video. (decord, which counts
    # the packets present, reads this file as a 48-frame video instead.)
    whole = make_video(
        tmp_path / "whole.mp4", 5, fps=FPS, pattern="frame_gray", extra_args=["-bf", "0", "-movflags", "+faststart"]
    )
    cut = cut_before_last_frames(whole, tmp_path / "cut.mp4", frames=2)
    decoded = decode_video(cut, fps=10.0, max_frames=100, short_side=None, backend="ffmpeg")
    assert decoded.duration == pytest.approx(5.0)
    assert decoded.frame_indices.tolist() == list(range(50))
    assert_frames_are(decoded.frames, [*range(48), 47, 47])


# -------------------------------------------------------------------------- pool


def request(key: str, path: Path, window: int | None = None) -> DecodeRequest:
    return DecodeRequest(key=key, path=str(path), fps=1.0, max_frames=16, short_side=64, window=window, stride=1)


@pytest.mark.slow  # kills worker processes; waits out a timeout
def test_pool_keeps_order_isolates_failures_and_survives_a_hang(tmp_path, videos, monkeypatch):
    # Workers inherit the drill settings when they are spawned.
    monkeypatch.setenv(HANG_DRILL_ENV, "hang-drill")
    monkeypatch.setenv(CRASH_DRILL_ENV, "crash-drill")
    hang = shutil.copy(videos["mp4"], tmp_path / "hang-drill.mp4")
    crash = shutil.copy(videos["mp4"], tmp_path / "crash-drill.mp4")
    text = make_broken("text", tmp_path / "text.mp4")
    requests = [
        request("mp4", videos["mp4"], window=2),
        request("hang", hang),
        request("webm", videos["webm"]),
        request("crash", crash),
        request("text", text),
        request("missing", tmp_path / "missing.mp4"),
        request("mkv", videos["mkv"]),
        request("mp4-again", videos["mp4"], window=2),
    ]
    timeout_s = 4.0  # a normal decode here takes ~0.1 s
    with DecodePool(workers=2, timeout_s=timeout_s) as pool:
        results = list(pool.imap(requests, prefetch=3))
        assert [req.key for req, _ in results] == [req.key for req in requests]
        outcome = {req.key: result for req, result in results}
        for key in ("mp4", "webm", "mkv", "mp4-again"):
            assert isinstance(outcome[key], DecodedVideo), outcome[key]
            assert outcome[key].frames.shape[1:] == (64, 85, 3)
        for key in ("hang", "crash", "text", "missing"):
            assert isinstance(outcome[key], DecodeFailure) and outcome[key].key == key
        assert outcome["hang"].error.endswith(f"timed out after {timeout_s:g}s")
        assert "decoder process died (killed by SIGSEGV)" in outcome["crash"].error
        assert "a text file, not a video" in outcome["text"].error
        assert "file not found" in outcome["missing"].error

        # Deterministic: the same request twice, and in-process, give the same arrays.
        first, again = outcome["mp4"], outcome["mp4-again"]
        np.testing.assert_array_equal(first.frames, again.frames)
        np.testing.assert_array_equal(first.clips(), again.clips())
        in_process = decode_video(videos["mp4"], 1.0, 16, 64, window=2)
        np.testing.assert_array_equal(first.frames, in_process.frames)
        np.testing.assert_array_equal(first.plan.times, in_process.plan.times)

        # The killed and crashed workers were replaced: the pool still works.
        (_, after), = list(pool.imap([request("after", videos["webm"])]))
        assert isinstance(after, DecodedVideo)
        np.testing.assert_array_equal(after.frames, outcome["webm"].frames)


def test_pool_reads_at_most_prefetch_requests_ahead(videos):
    pulled = 0

    def requests():
        nonlocal pulled
        for number in range(7):
            pulled += 1
            yield request(f"r{number}", videos["mp4"] if number % 2 else videos["webm"])

    with DecodePool(workers=2, timeout_s=60) as pool:
        consumed = 0
        for (req, result), expected in zip(pool.imap(requests(), prefetch=2), range(7)):
            consumed += 1
            assert req.key == f"r{expected}" and isinstance(result, DecodedVideo)
            assert pulled <= consumed + 2
        assert consumed == 7

        # An abandoned iteration does not disturb the next one.
        abandoned = pool.imap(requests(), prefetch=4)
        next(abandoned)
        abandoned.close()
        keys = [req.key for req, _ in pool.imap([request("x", videos["mkv"]), request("y", videos["mp4"])])]
        assert keys == ["x", "y"]
        assert list(pool.imap([])) == []


ORPHAN_SCRIPT = """
import sys, threading
from stages.decode import DecodePool, DecodeRequest

def request(key, path):
    return DecodeRequest(key, path, 1.0, 4, 64, None, 1)

if __name__ == "__main__":
    pool = DecodePool(workers=2, timeout_s=600)
    list(pool.imap([request("ok", sys.argv[1]), request("ok2", sys.argv[1])]))  # both workers up
    threading.Thread(target=lambda: list(pool.imap([request("hang", sys.argv[2])])), daemon=True).start()
    while True:  # peek at the queue (test only): once it is empty, a worker holds the hang request
        with pool._cond:
            if pool._jobs and not pool._pending:
                break
        threading.Event().wait(0.01)
    print(*pool.worker_pids(), flush=True)
    threading.Event().wait()
"""


def process_is_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"  # a zombie is dead, just not yet reaped


@pytest.mark.slow  # SIGKILLs a process
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux-only")
def test_workers_die_with_a_killed_parent_even_mid_hang(tmp_path, videos, monkeypatch):
    monkeypatch.setenv(HANG_DRILL_ENV, "hang-drill")
    hang = shutil.copy(videos["mp4"], tmp_path / "hang-drill.mp4")
    script = tmp_path / "orphans.py"
    script.write_text(ORPHAN_SCRIPT)
    root = Path(__file__).resolve().parents[1]
    parent = subprocess.Popen(
        [sys.executable, str(script), str(videos["mp4"]), str(hang)], cwd=root, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        worker_pids = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(worker_pids) == 2
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 60  # liveness bound, not a speed check
    while not all(process_is_gone(pid) for pid in worker_pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(process_is_gone(pid) for pid in worker_pids)


def test_pool_serves_several_threads_at_once(videos):
    names = ["mp4", "webm", "mkv", "gray_mp4"]
    outcomes: dict[str, list[tuple[str, bool]]] = {}

    def consume(label: str) -> None:
        requests = [request(f"{label}-{name}", videos[name]) for name in names]
        outcomes[label] = [(req.key, isinstance(res, DecodedVideo)) for req, res in pool.imap(requests, prefetch=2)]

    with DecodePool(workers=2, timeout_s=60) as pool:
        threads = [threading.Thread(target=consume, args=(label,)) for label in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for label in ("a", "b"):
        assert outcomes[label] == [(f"{label}-{name}", True) for name in names]


def test_pool_arguments_and_closing(videos):
    with pytest.raises(ValueError):
        DecodePool(workers=0)
    pool = DecodePool(workers=1, timeout_s=30)
    with pytest.raises(ValueError):
        pool.imap([], prefetch=0)
    pool.close()
    pool.close()  # idempotent
    assert pool.closed
    with pytest.raises(RuntimeError, match="closed"):
        pool.imap([request("late", videos["mp4"])])


def test_shared_pool_is_reused_until_settings_change():
    first = get_decode_pool(workers=1, timeout_s=30)
    try:
        assert get_decode_pool(workers=1, timeout_s=30) is first
        second = get_decode_pool(workers=1, timeout_s=31)
        assert second is not first and first.closed and not second.closed
    finally:
        get_decode_pool(workers=1, timeout_s=31).close()


# ------------------------------------------------------------ variable frame rate

# (colour, seconds, fps) of each part of a variable-frame-rate video, in order.
VFR_PARTS = [("red", 4, 25), ("green", 8, 2), ("blue", 2, 25)]
VFR_RGB = {"red": (255, 0, 0), "green": (0, 128, 0), "blue": (0, 0, 255)}


def make_vfr_video(path: Path) -> tuple[Path, list[float], list[str]]:
    """Concatenated parts at 25, 2 and 25 fps, muxed with their own timestamps (-fps_mode vfr).
    Returns the path, each frame's timestamp and colour as made."""
    inputs, stamps, colours, start = [], [], [], 0.0
    for colour, seconds, rate in VFR_PARTS:
        inputs += ["-f", "lavfi", "-i", f"color={colour}:size=64x48:rate={rate}:duration={seconds}"]
        stamps += [start + k / rate for k in range(seconds * rate)]
        colours += [colour] * (seconds * rate)
        start += seconds
    chain = "".join(f"[{i}]" for i in range(len(VFR_PARTS))) + f"concat=n={len(VFR_PARTS)}:v=1:a=0"
    run_ffmpeg([*inputs, "-filter_complex", chain, "-fps_mode", "vfr", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                str(path)])
    return path, stamps, colours


def colour_of(frame: np.ndarray) -> str:
    mean = frame.reshape(-1, 3).mean(axis=0)
    return min(VFR_RGB, key=lambda name: np.abs(mean - VFR_RGB[name]).sum())


@pytest.mark.parametrize("backend", ["decord", "ffmpeg"])
def test_variable_frame_rate_samples_the_frames_at_their_own_times(tmp_path, backend):
    path, stamps, colours = make_vfr_video(tmp_path / "vfr.mp4")
    decoded = decode_video(path, fps=1.0, max_frames=64, short_side=None, backend=backend)
    assert decoded.duration == pytest.approx(sum(seconds for _, seconds, _ in VFR_PARTS), abs=0.1)
    targets = np.arange(math.floor(decoded.duration)) + 0.5
    # The frame shown at each target time: the last one whose timestamp is at or before it.
    expected = [max(i for i, stamp in enumerate(stamps) if stamp <= target + 1e-9) for target in targets]
    assert decoded.plan.indices.tolist() == expected
    np.testing.assert_allclose(decoded.plan.times, [stamps[i] for i in expected], atol=1e-3)
    assert [colour_of(frame) for frame in decoded.samples()] == [colours[i] for i in expected]


def test_variable_frame_rate_backends_agree(tmp_path):
    path, _, _ = make_vfr_video(tmp_path / "vfr.mp4")
    by_decord = decode_video(path, 2.0, 10, 32, window=3, stride=2, backend="decord")
    by_ffmpeg = decode_video(path, 2.0, 10, 32, window=3, stride=2, backend="ffmpeg")
    np.testing.assert_array_equal(by_ffmpeg.frame_indices, by_decord.frame_indices)
    np.testing.assert_array_equal(by_ffmpeg.plan.times, by_decord.plan.times)
    np.testing.assert_array_equal(by_ffmpeg.plan.windows, by_decord.plan.windows)
    difference = np.abs(by_ffmpeg.frames.astype(np.int16) - by_decord.frames.astype(np.int16))
    assert difference.mean() < MAX_BACKEND_MEAN_ABS_DIFF


def test_timestamps_of_a_constant_rate_keep_the_index_arithmetic():
    jittered = np.arange(100) / 10.0 + np.where(np.arange(100) % 2, 0.004, -0.004)  # within half a frame
    cfr = plan_samples(num_frames=100, avg_fps=10.0, fps=1.0, max_frames=100)
    with_stamps = plan_samples(num_frames=100, avg_fps=10.0, fps=1.0, max_frames=100, timestamps=jittered + 7.0)
    np.testing.assert_array_equal(with_stamps.indices, cfr.indices)
    np.testing.assert_array_equal(with_stamps.times, cfr.times)
    stalled = np.r_[np.arange(50) / 10.0, 5.0 + 3.0 + np.arange(50) / 10.0]  # a 3 s gap after frame 49
    plan = plan_samples(num_frames=100, avg_fps=10.0, fps=1.0, max_frames=100, timestamps=stalled)
    assert plan.indices.tolist()[:5] == cfr.indices.tolist()[:5]
    assert plan.indices.tolist()[5:8] == [49, 49, 49]  # 5.5-7.5 s: the gap shows frame 49 (at 4.9 s)
    assert plan.indices[8] == 55 and plan.times[8] == pytest.approx(8.5)  # frame 50 came at 8.0 s


# ------------------------------------------------------------ local media files only


def make_hls_outside(root: Path, outside: Path) -> Path:
    """An HLS playlist saved as root/videos/x.mp4 whose segments lie in `outside`."""
    make_video(outside / "secret.mp4", 3, fps=FPS, size=(64, 48), pattern="frame_gray")
    run_ffmpeg(["-i", str(outside / "secret.mp4"), "-c", "copy", "-f", "hls", "-hls_time", "1",
                "-hls_list_size", "0", str(outside / "list.m3u8")])
    lines = (outside / "list.m3u8").read_text().splitlines()
    playlist = root / "videos" / "x.mp4"
    playlist.parent.mkdir(parents=True, exist_ok=True)
    playlist.write_text("".join((line if line.startswith("#") else str(outside / line)) + "\n" for line in lines))
    return playlist


def make_concat_script(root: Path) -> Path:
    """An ffmpeg concat script, named like a video, naming another video beside it."""
    make_video(root / "videos" / "other.mp4", 2, fps=FPS, size=(64, 48))
    script = root / "videos" / "joined.mp4"
    script.write_text("ffconcat version 1.0\nfile 'other.mp4'\nfile 'other.mp4'\n")
    return script


@pytest.mark.parametrize("backend", ["auto", "decord", "ffmpeg"])
def test_playlists_and_concat_scripts_are_refused(tmp_path, backend):
    hls = make_hls_outside(tmp_path / "root", tmp_path / "outside")
    concat = make_concat_script(tmp_path / "root")
    with pytest.raises(DecodeError, match=r"an HLS playlist \(#EXTM3U\), which points at other media; only media"):
        decode_video(hls, fps=1.0, max_frames=8, backend=backend)
    with pytest.raises(DecodeError, match=r"an ffmpeg concat script \(ffconcat\), which points at other media"):
        decode_video(concat, fps=1.0, max_frames=8, backend=backend)


def test_the_ffmpeg_path_refuses_reference_demuxers_past_the_first_check(tmp_path):
    from stages.decode.ffmpeg_backend import video_stream

    hls = make_hls_outside(tmp_path / "root", tmp_path / "outside")
    with pytest.raises(DecodeError, match=r"a hls input, which points at other media"):
        video_stream(hls)  # what the ffmpeg path probes, here without the check on the first bytes


NOISE_SCRIPT = """
import sys
from stages.decode import DecodeFailure, DecodePool, DecodeRequest

if __name__ == "__main__":
    with DecodePool(workers=1, timeout_s=120) as pool:
        for request, result in pool.imap([DecodeRequest(p, p, 1.0, 4, 32, None, 1) for p in sys.argv[1:]]):
            print(result.error if isinstance(result, DecodeFailure) else f"{request.key}: decoded", flush=True)
"""


def test_decode_workers_keep_decords_error_lines_off_the_terminal(tmp_path):
    paths = [make_broken(kind, tmp_path / f"{kind}.mp4") for kind in ("text", "garbage", "truncated")]
    good = make_video(tmp_path / "good.mp4", 2, fps=FPS, size=(64, 48))
    script = tmp_path / "noise.py"
    script.write_text(NOISE_SCRIPT)
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(script), *map(str, paths), str(good)], cwd=root,
                          env={**os.environ, "PYTHONPATH": str(root)}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "ERROR opening" not in done.stderr and "video_reader.cc" not in done.stderr, done.stderr
    said = done.stdout.splitlines()
    assert said == [f"{paths[0]}: a text file, not a video",
                    f"{paths[1]}: not a video file, or unreadable (ffprobe: Invalid data found when processing input)",
                    f"{paths[2]}: truncated or incomplete MP4 (its index, the moov atom, is missing)",
                    f"{good}: decoded"]
