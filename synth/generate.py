"""Writes a synthetic PRVR dataset: mp4 videos, the native manifest, and the scene
descriptions behind them (so tests can check every annotation against what was drawn)."""

from __future__ import annotations

import json
import multiprocessing
import re
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from prvr.errors import UserError
from stages.manifest import QUERIES_FILE, SPLITS, VIDEOS_FILE, load_manifest
from stages.progress import Progress, counting
from storage.runs import write_atomic
from synth.captions import query_text
from synth.presets import get_preset
from synth.render import render_video
from synth.world import SCENES_FILE, Scene, plan_world, write_scenes


class WorldExists(UserError, FileExistsError):
    """The output folder already holds a dataset or videos that are not ours."""


class WorldMissing(UserError, FileNotFoundError):
    """The folder holds no generated world."""


WORLD_FILE = "world.json"
VIDEOS_DIR = "videos"
GENERATOR_VERSION = 1  # bump when the same seed would draw a different world


@dataclass
class WorldSummary:
    out: Path
    preset: str
    seed: int
    width: int
    height: int
    fps: int
    videos: dict[str, int]
    queries: dict[str, int]
    video_seconds: float
    seconds: float
    workers: int
    actions: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        split_counts = ", ".join(f"{s} {self.videos.get(s, 0)}/{self.queries.get(s, 0)}" for s in SPLITS)
        total_videos, total_queries = sum(self.videos.values()), sum(self.queries.values())
        return [
            f"synthetic world in {self.out} (preset {self.preset}, seed {self.seed})",
            f"  {total_videos} videos, {total_queries} queries; videos/queries per split: {split_counts}",
            f"  {self.video_seconds / 60:.1f} min of video at {self.width}x{self.height}, {self.fps} fps; "
            f"mean {self.video_seconds / max(total_videos, 1):.1f} s per video",
            "  events per action: " + ", ".join(f"{a} {n}" for a, n in sorted(self.actions.items())),
            f"  generated in {self.seconds:.1f} s with {self.workers} worker(s)",
        ]

    def __str__(self) -> str:
        return "\n".join(self.lines())


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)


def manifest_rows(scenes: list[Scene]) -> tuple[list[dict], list[dict]]:
    """videos.jsonl and queries.jsonl rows in the native manifest format."""
    videos, queries = [], []
    for scene in scenes:
        videos.append({
            "video_id": scene.video_id, "path": f"{VIDEOS_DIR}/{scene.video_id}.mp4",
            "split": scene.split, "duration": scene.duration,
        })
        for actor in scene.events():
            assert actor.event is not None and actor.query_id is not None and actor.query is not None
            queries.append({
                "query_id": actor.query_id, "video_id": scene.video_id, "text": actor.query,
                "split": scene.split, "moment": [actor.event.start, actor.event.end],
            })
    return videos, queries


def _per_split(rows: list[dict]) -> dict[str, int]:
    return {s: sum(r["split"] == s for r in rows) for s in SPLITS}


_OUR_VIDEO = re.compile(r"\.?v\d{5}(\.\d+\.partial)?\.mp4")


def _clear_previous(out: Path, overwrite: bool) -> None:
    """Make room for a new world. Another dataset is only replaced when asked to; the
    leftovers of an interrupted generation (our video names, no manifest yet) always are."""
    ours = [out / VIDEOS_FILE, out / QUERIES_FILE, out / SCENES_FILE, out / WORLD_FILE]
    videos_dir = out / VIDEOS_DIR
    foreign = videos_dir.is_dir() and any(not _OUR_VIDEO.fullmatch(p.name) for p in videos_dir.iterdir())
    if (foreign or any(p.exists() for p in ours)) and not overwrite:
        raise WorldExists(f"{out} already holds a dataset or videos; pass overwrite=True or choose another folder")
    for p in ours:
        p.unlink(missing_ok=True)
    if videos_dir.is_dir():
        shutil.rmtree(videos_dir)


def _render_all(scenes: list[Scene], videos_dir: Path, workers: int, progress: Progress | None) -> None:
    paths = [videos_dir / f"{s.video_id}.mp4" for s in scenes]
    rendered = counting(progress, len(scenes), "videos rendered")
    if workers <= 1:
        for done, (scene, path) in enumerate(zip(scenes, paths), 1):
            render_video(scene, path)
            rendered(done)
        return
    # spawn, not fork: a caller may hold torch or other threads whose locks fork would copy.
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for done, _ in enumerate(pool.map(render_video, scenes, paths), 1):
            rendered(done)


def generate_world(
    out: Path, videos: int, seed: int, preset: str = "demo", workers: int = 2,
    frame_size: int | None = None, fps: int | None = None, overwrite: bool = False,
    progress: Progress | None = None,
) -> WorldSummary:
    """Plan, render and describe `videos` videos under `out`. The same arguments give the same
    annotations and the same decoded frames, whatever `workers` is."""
    started = time.perf_counter()
    spec = get_preset(preset, frame_size=frame_size, fps=fps)
    scenes = plan_world(videos, seed, spec, describe=query_text)  # bad arguments fail before any file is touched
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _clear_previous(out, overwrite)

    videos_dir = out / VIDEOS_DIR
    videos_dir.mkdir(exist_ok=True)
    _render_all(scenes, videos_dir, max(1, workers), progress)

    # Manifests last: a folder with a manifest always has every video it names.
    video_rows, query_rows = manifest_rows(scenes)
    write_scenes(scenes, out / f".{SCENES_FILE}.partial")
    (out / f".{SCENES_FILE}.partial").replace(out / SCENES_FILE)
    write_atomic(out / WORLD_FILE, json.dumps(
        {"generator_version": GENERATOR_VERSION, "seed": seed, "videos": videos, "preset": spec.to_dict()},
        indent=2, sort_keys=True,
    ).encode("utf-8") + b"\n")
    write_atomic(out / QUERIES_FILE, _jsonl(query_rows).encode("utf-8"))
    write_atomic(out / VIDEOS_FILE, _jsonl(video_rows).encode("utf-8"))
    load_manifest(out)  # our own output must pass the same validation users' data does

    actions: dict[str, int] = {}
    for scene in scenes:
        for actor in scene.events():
            assert actor.event is not None
            actions[actor.event.action] = actions.get(actor.event.action, 0) + 1
    return WorldSummary(
        out=out, preset=spec.name, seed=seed, width=spec.width, height=spec.height, fps=spec.fps,
        videos=_per_split(video_rows), queries=_per_split(query_rows),
        video_seconds=sum(s.duration for s in scenes), seconds=time.perf_counter() - started,
        workers=max(1, workers), actions=actions,
    )


def read_world_info(world: Path) -> dict:
    """world.json of a generated folder: the preset and seed it was drawn with."""
    path = Path(world) / WORLD_FILE
    if not path.is_file():
        raise WorldMissing(f"{world} has no {WORLD_FILE}; generate it with generate_world first")
    return json.loads(path.read_text(encoding="utf-8"))
