"""A small world for the search tests: real ffmpeg videos in which one colour fills the screen
for a known stretch of time (the event), a manifest with one query per event, extracted with
the tiny random CLIP and a student trained on it.

Full-screen colours are what a random teacher's frame features tell apart, so a student trained
for a few dozen epochs fits the training queries; the synthetic world's small objects on dark
backgrounds are not, with a random teacher (every query ranks the videos the same way)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from configs.schema import RunConfig, load_config
from stages import train as tr
from stages.sources import source_for
from stages.teacher import build_teacher_cache
from tests.test_extract import run_all_shards
from synth.test_cards import run_ffmpeg

COLOURS = ("red", "green", "blue", "yellow", "magenta", "cyan", "white", "orange")
SECONDS = 12.0
# (video id, split, [(colour, start, end)]): each video shows two colours, at its own times; a colour recurs
# in other videos, so test queries name colours that training saw.
EVENTS = [
    (f"v{i:02d}", split, [(COLOURS[i % 8], 1.0 + i % 3, 4.0 + i % 3), (COLOURS[(i * 3 + 1) % 8], 7.0, 10.0 + i % 2)])
    for i, split in enumerate(["train"] * 10 + ["test"] * 2)
]
# Without a val split the best epoch is the one of the lowest training loss; no dropout, so 30 epochs fit.
TRAIN = {"epochs": 30, "batch_videos": 2, "hidden": 64, "heads": 4, "dropout": 0.0, "device": "cpu", "lr": 1e-3,
         "seed": 0}


def query_text(colour: str) -> str:
    return f"the whole screen turns {colour}"


def make_event_video(path: Path, events: list[tuple[str, float, float]]) -> None:
    """A dark grey video with each (colour, start, end) filling the screen over [start, end) seconds."""
    inputs = ["-f", "lavfi", "-i", f"color=c=0x202020:size=96x72:rate=10:duration={SECONDS}"]
    chain, last = [], "0:v"
    for n, (colour, start, end) in enumerate(events, 1):
        inputs += ["-f", "lavfi", "-i", f"color=c={colour}:size=96x72:rate=10:duration={SECONDS}"]
        chain.append(f"[{last}][{n}:v]overlay=enable='between(t,{start},{end - 0.01})'[o{n}]")
        last = f"o{n}"
    path.parent.mkdir(parents=True, exist_ok=True)
    run_ffmpeg([*inputs, "-filter_complex", ";".join(chain), "-map", f"[{last}]", "-c:v", "libx264",
                "-preset", "veryfast", "-pix_fmt", "yuv420p", str(path)])


def write_world(root: Path) -> Path:
    videos, queries = [], []
    for vid, split, events in EVENTS:
        make_event_video(root / "videos" / f"{vid}.mp4", events)
        videos.append({"video_id": vid, "path": f"videos/{vid}.mp4", "split": split})
        for n, (colour, start, end) in enumerate(events):
            queries.append({"query_id": f"{vid}-q{n}", "video_id": vid, "text": query_text(colour), "split": split,
                            "moment": [start, end]})
    (root / "videos.jsonl").write_text("".join(json.dumps(v) + "\n" for v in videos))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    return root


def write_config(folder: Path, root: Path, name: str = "colours", **train) -> Path:
    body = {
        "name": name, "dataset": {"root": str(root)}, "store": str(folder / "store.zarr"),
        "runs_dir": str(folder / "runs"),
        "extract": {"shard_size": 5, "fps": 1.0, "max_frames": 128, "device": "cpu", "batch_size": 8,
                    "decode_workers": 1, "decode_timeout_s": 60, "shard_retries": 0,
                    "teacher": {"model": "prvr-tiny", "pretrained": None}, "visual": ["clip"]},
        "train": {**TRAIN, **train},
    }
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(body))
    return path


def extract_and_train(cfg: RunConfig) -> None:
    run_all_shards(cfg)
    for split in source_for(cfg).splits():
        for teacher in cfg.extract.teacher:
            build_teacher_cache(cfg, teacher.key, split)
    tr.train(cfg)


def trained_world(folder: Path) -> Path:
    """The config path of a trained run on a fresh world under `folder`."""
    config_path = write_config(folder, write_world(folder / "world"))
    extract_and_train(load_config(config_path))
    return config_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(config_path: Path, port: int, timeout_s: float = 240) -> Iterator[tuple[str, list[str]]]:
    """`prvr serve CONFIG --port PORT` as a user starts it, in its own process, until it answers;
    yields (its base URL, its output lines once it has stopped) and stops it with Ctrl+C."""
    import httpx

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1"}
    server = subprocess.Popen([sys.executable, "-c", "from prvr.cli import main; main()", "serve", str(config_path),
                               "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    output: list[str] = []
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if server.poll() is not None:
                raise AssertionError(f"prvr serve ended with {server.returncode}:\n{server.stdout.read()}")
            if time.monotonic() > deadline:
                raise AssertionError("prvr serve did not answer in time")
            try:
                httpx.get(f"http://127.0.0.1:{port}/info", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}", output
    finally:
        server.send_signal(signal.SIGINT)
        try:
            text, _ = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            text, _ = server.communicate()
        output.extend(text.splitlines())
