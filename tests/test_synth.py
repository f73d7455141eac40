"""The synthetic PRVR world: real mp4 files through ffmpeg, decoded with decord, checked
against the generator's own scene descriptions."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import decord
import numpy as np
import pytest

from stages.manifest import load_manifest
from synth.captions import (
    ACTION_WORDS, COLOUR_WORDS, SHAPE_WORDS, action_vocabulary, mentioned_actions, still_caption, words,
)
from synth.generate import generate_world, read_world_info
from synth.presets import ACTIONS, COLOURS, PRESETS, get_preset
from synth.world import Actor, Scene, actor_state, grid_cell, load_scenes, plan_still, plan_world

SEED = 3
VIDEOS = 6


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world") / "a"
    generate_world(out, VIDEOS, SEED, preset="small", workers=2)
    return out


def decode_all(path: Path) -> np.ndarray:
    reader = decord.VideoReader(str(path), num_threads=1)
    return reader.get_batch(list(range(len(reader)))).asnumpy()


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def scenes_by_query(world: Path) -> dict[str, tuple[Scene, Actor]]:
    return {a.query_id: (s, a) for s in load_scenes(world) for a in s.events() if a.query_id}


# ---------------------------------------------------------------- determinism


def test_same_seed_gives_identical_manifests_and_frames_whatever_the_worker_count(world: Path, tmp_path: Path):
    again = tmp_path / "b"
    generate_world(again, VIDEOS, SEED, preset="small", workers=1)
    for name in ("videos.jsonl", "queries.jsonl", "scenes.jsonl", "world.json"):
        assert (world / name).read_bytes() == (again / name).read_bytes(), name
    videos = sorted((world / "videos").glob("*.mp4"))
    assert [p.name for p in videos] == sorted(p.name for p in (again / "videos").glob("*.mp4"))
    for path in videos:
        assert np.array_equal(decode_all(path), decode_all(again / "videos" / path.name)), path.name


def test_a_different_seed_gives_a_different_world(world: Path, tmp_path: Path):
    other = tmp_path / "c"
    generate_world(other, 3, SEED + 1, preset="small", workers=2)
    assert jsonl(other / "queries.jsonl") != jsonl(world / "queries.jsonl")[: len(jsonl(other / "queries.jsonl"))]
    mine, theirs = decode_all(world / "videos" / "v00000.mp4"), decode_all(other / "videos" / "v00000.mp4")
    n = min(len(mine), len(theirs))
    assert not np.array_equal(mine[:n], theirs[:n])


def test_an_existing_world_is_not_overwritten_silently(world: Path):
    before = (world / "queries.jsonl").read_bytes()
    with pytest.raises(FileExistsError):
        generate_world(world, 2, SEED, preset="small")
    assert (world / "queries.jsonl").read_bytes() == before


def test_leftovers_of_an_interrupted_run_are_replaced_but_foreign_videos_are_not(tmp_path: Path):
    out = tmp_path / "w"
    (out / "videos").mkdir(parents=True)
    (out / "videos" / "v00000.mp4").write_bytes(b"half a video")
    generate_world(out, 2, SEED, preset="small", workers=1)
    assert len(decode_all(out / "videos" / "v00000.mp4")) > 0
    first = (out / "queries.jsonl").read_bytes()
    generate_world(out, 2, SEED + 1, preset="small", workers=1, overwrite=True)
    assert (out / "queries.jsonl").read_bytes() != first
    load_manifest(out)

    foreign = tmp_path / "f"
    (foreign / "videos").mkdir(parents=True)
    (foreign / "videos" / "holiday.mp4").write_bytes(b"someone else's")
    with pytest.raises(FileExistsError):
        generate_world(foreign, 2, SEED, preset="small")
    assert (foreign / "videos" / "holiday.mp4").read_bytes() == b"someone else's"


# ---------------------------------------------------------------- manifests


def test_manifest_is_valid_with_video_disjoint_splits(world: Path):
    manifest = load_manifest(world)
    assert len(manifest.videos) == VIDEOS
    assert {v.split for v in manifest.videos} == {"train", "val", "test"}
    for video in manifest.videos:
        assert video.path == (world / "videos" / f"{video.video_id}.mp4").resolve()
    split_of = {v.video_id: v.split for v in manifest.videos}
    for query in manifest.queries:
        assert query.split == split_of[query.video_id]
    per_video = Counter(q.video_id for q in manifest.queries)
    spec = PRESETS["small"]
    assert all(spec.events[0] <= per_video[v.video_id] <= spec.events[1] for v in manifest.videos)
    assert len({q.text for q in manifest.queries}) == len(manifest.queries)


def test_splits_are_70_10_20():
    scenes = plan_world(200, SEED, get_preset("demo"))
    assert Counter(s.split for s in scenes) == {"train": 140, "val": 20, "test": 40}


def test_every_moment_lies_inside_its_decoded_video(world: Path):
    durations = {row["video_id"]: row["duration"] for row in jsonl(world / "videos.jsonl")}
    spec = PRESETS["small"]
    for scene in load_scenes(world):
        reader = decord.VideoReader(str(world / "videos" / f"{scene.video_id}.mp4"), num_threads=1)
        assert len(reader) == scene.frames
        assert reader.get_avg_fps() == pytest.approx(scene.fps)
        assert reader[0].shape == (scene.height, scene.width, 3)
        assert durations[scene.video_id] == pytest.approx(len(reader) / reader.get_avg_fps())
        assert spec.duration_s[0] - 0.1 <= durations[scene.video_id] <= spec.duration_s[1] + 0.1
    for query in jsonl(world / "queries.jsonl"):
        start, end = query["moment"]
        assert 0 <= start < end <= durations[query["video_id"]]
        assert spec.event_s[0] - 0.15 <= end - start <= spec.event_s[1] + 0.15


# ---------------------------------------------------------------- queries match what happens


def _constant(values: list[float]) -> bool:
    return max(values) - min(values) < 1e-9


def assert_action_happens(actor: Actor) -> None:
    """Check from the object's own trajectory, sampled at 20 Hz, that the event is the
    action its label says, and that nothing happens to it outside the event."""
    ev = actor.event
    assert ev is not None
    ts = np.arange(ev.start, ev.end + 1e-9, 0.05)
    states = [actor_state(actor, float(t)) for t in ts]
    xs, ys = [s.x for s in states], [s.y for s in states]
    sizes, angles = [s.diameter for s in states], [s.angle for s in states]
    visible = [s.visible for s in states]
    x0, y0 = xs[0], ys[0]
    a = ev.action
    if a in ("move_left", "move_right", "move_up", "move_down"):
        moved = {"move_left": x0 - xs[-1], "move_right": xs[-1] - x0, "move_up": y0 - ys[-1], "move_down": ys[-1] - y0}[a]
        assert moved > 0.25
        still_axis = ys if a in ("move_left", "move_right") else xs
        assert _constant(still_axis) and _constant(sizes) and _constant(angles)
    elif a == "grow":
        assert sizes[-1] / sizes[0] > 1.5 and _constant(xs) and _constant(ys)
    elif a == "shrink":
        assert sizes[-1] / sizes[0] < 0.65 and _constant(xs) and _constant(ys)
    elif a == "spin":
        assert abs(angles[-1] - angles[0]) > 55 and _constant(xs) and _constant(ys) and _constant(sizes)
        assert actor.shape not in ("circle", "ring")  # a turning circle would show nothing
    elif a == "blink":
        toggles = sum(v != w for v, w in zip(visible, visible[1:]))
        assert toggles >= 2 and visible[0] and _constant(xs) and _constant(ys)
        # At 1 frame per second, the rate extraction samples at, it is seen both on and off.
        seconds = np.arange(np.ceil(ev.start), ev.end)
        if len(seconds) >= 3:
            assert len({actor_state(actor, float(t)).visible for t in seconds}) == 2
    elif a == "bounce":
        assert min(ys) < y0 - 0.1 and max(ys) <= y0 + 1e-9 and _constant(xs)
        interior = ys[len(ys) // 10: -len(ys) // 10]
        assert min(abs(y - y0) for y in interior) < 0.03  # it lands between hops
    elif a == "sway":
        assert max(xs) > x0 + 0.05 and min(xs) < x0 - 0.05 and _constant(ys)
    elif a == "orbit":
        assert max(xs) - min(xs) > 0.15 and max(ys) - min(ys) > 0.15 and _constant(sizes)
    else:
        pytest.fail(f"unknown action {a}")
    # Outside the moment the object rests: before in its starting pose, after in its final one.
    before = [actor_state(actor, float(t)) for t in np.arange(actor.appear, ev.start - 1e-6, 0.1)]
    after = [actor_state(actor, float(t)) for t in np.arange(ev.end, actor.vanish - 1e-6, 0.1)]
    assert all(s == actor_state(actor, ev.start) for s in before)
    assert all(s == actor_state(actor, ev.end) for s in after)
    assert all(s.visible for s in before + after)


def test_every_query_describes_what_happens_in_its_moment(world: Path):
    by_query = scenes_by_query(world)
    queries = jsonl(world / "queries.jsonl")
    assert len(queries) == len(by_query)
    for query in queries:
        scene, actor = by_query[query["query_id"]]
        assert actor.event is not None and scene.video_id == query["video_id"]
        assert query["moment"] == [actor.event.start, actor.event.end]
        assert mentioned_actions(query["text"]) == {actor.event.action}, query["text"]
        text_words = words(query["text"])
        assert text_words & set(COLOUR_WORDS[actor.colour]), query["text"]
        assert any(re.search(rf"\b{w}\b", query["text"]) for w in SHAPE_WORDS[actor.shape]), query["text"]
        assert actor.appear <= actor.event.start < actor.event.end <= actor.vanish <= scene.duration
        assert_action_happens(actor)


def test_actions_happen_in_every_preset():
    for name in PRESETS:
        for scene in plan_world(12, SEED, get_preset(name)):
            events = sorted(scene.events(), key=lambda a: a.event.start)  # type: ignore[union-attr]
            assert PRESETS[name].events[0] <= len(events) <= PRESETS[name].events[1]
            for actor in events:
                assert_action_happens(actor)
            for first, second in zip(events, events[1:]):  # other content between events
                assert second.event.start - first.event.end >= PRESETS[name].gap_s - 1e-6  # type: ignore[union-attr]


def test_presets_are_sized_as_documented():
    for name, (lo, hi) in {"small": (20, 24), "demo": (20, 40), "hard": (60, 90)}.items():
        scenes = plan_world(20, SEED, get_preset(name))
        assert all(lo - 0.1 <= s.duration <= hi + 0.1 for s in scenes)
        counts = [len(s.events()) for s in scenes]
        assert all(2 <= c <= 6 for c in counts)
        lengths = [a.event.end - a.event.start for s in scenes for a in s.events()]  # type: ignore[union-attr]
        assert all(1.9 <= d <= 10.1 for d in lengths)
    hard = plan_world(20, SEED, get_preset("hard"))
    assert np.mean([len(s.events()) for s in hard]) >= 4
    assert len(ACTIONS) >= 8
    custom = get_preset("demo", frame_size=64, fps=5)
    assert (custom.width, custom.height, custom.fps) == (64, 64, 5)
    with pytest.raises(ValueError):
        get_preset("nope")


def test_rendered_frames_show_each_object_where_the_scene_says(world: Path):
    """The decoded pixel under each event's object, mid-event, has the object's colour."""
    checked = 0
    for scene in load_scenes(world):
        frames = decode_all(world / "videos" / f"{scene.video_id}.mp4")
        for actor in scene.events():
            assert actor.event is not None
            index = int(round((actor.event.start + actor.event.end) / 2 * scene.fps))
            state = actor_state(actor, index / scene.fps)
            if not state.visible:
                continue  # a blink caught in its off phase
            # Sample inside the outline: the centre, except for a ring's hole.
            offset = 0.72 * state.diameter / 2 if actor.shape == "ring" else 0.0
            col = int((state.x + offset) * scene.width)
            row = int(state.y * scene.height)
            others = [
                actor_state(o, index / scene.fps) for o in scene.actors
                if o is not actor and actor_state(o, index / scene.fps).visible
            ]
            if any(abs(o.x - state.x) < (o.diameter + state.diameter) / 2 and abs(o.y - state.y) < (o.diameter + state.diameter) / 2 for o in others):
                continue  # overlapping another object
            pixel = frames[index, row - 1:row + 2, col - 1:col + 2].reshape(-1, 3).mean(axis=0)
            assert np.abs(pixel - np.asarray(COLOURS[actor.colour])).max() < 45, (scene.video_id, actor.object_id, pixel)
            checked += 1
    assert checked >= VIDEOS


# ---------------------------------------------------------------- the world's structure


def test_appearance_alone_cannot_single_out_the_video():
    """In a demo-sized test split each query's colour and shape show up in other videos
    too (as other events or as decoys), with other actions; (colour, shape, action)
    is unique within the split."""
    scenes = [s for s in plan_world(200, SEED, get_preset("demo")) if s.split == "test"]
    events = [(s.video_id, a) for s in scenes for a in s.events()]
    triples = [(a.colour, a.shape, a.event.action) for _, a in events]  # type: ignore[union-attr]
    assert len(set(triples)) == len(triples)
    videos_with = Counter()
    for s in scenes:
        for look in {(a.colour, a.shape) for a in s.actors}:
            videos_with[look] += 1
    shared = [videos_with[(a.colour, a.shape)] >= 2 for _, a in events]
    assert np.mean(shared) > 0.7


def test_still_captions_never_name_an_action():
    vocabulary = action_vocabulary()
    assert {"spins", "bounces", "grows", "slides", "blinks", "rises"} <= vocabulary
    assert not vocabulary & {"left", "right", "top", "red", "circle", "small"}
    rng = np.random.default_rng(0)
    spec = get_preset("demo")
    seen: set[str] = set()
    for _ in range(2000):
        still = plan_still(rng, spec)
        caption = still_caption([(a.colour, a.shape, a.size, grid_cell(a.x, a.y)) for a in still.named], rng)
        seen |= words(caption)
        assert not mentioned_actions(caption), caption
    assert not seen & vocabulary
    assert all(len(phrases) >= 3 for phrases in ACTION_WORDS.values())


def test_world_info_records_the_preset(world: Path):
    info = read_world_info(world)
    assert info["seed"] == SEED and info["videos"] == VIDEOS
    assert info["preset"]["name"] == "small" and info["preset"]["fps"] == 10
