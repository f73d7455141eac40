"""The synthetic world as data: scenes, their objects and events, and where each object is at
any time. Pure and seeded; no pixels here (synth/render.py draws what this describes).

Coordinates are fractions of the frame: x to the right, y downwards, both in [0, 1].
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from prvr.errors import UsageError
from synth.presets import COLOURS, SIZES, Preset

SCENES_FILE = "scenes.jsonl"
ROTATION_SYMMETRIC = frozenset({"circle", "ring"})  # spinning them shows nothing
GROW_FROM = ("small", "medium")
SHRINK_FROM = ("medium", "large")
MOVES = {"move_left": (-1, 0), "move_right": (1, 0), "move_up": (0, -1), "move_down": (0, 1)}
EDGE = 0.02  # least gap between an object's outline and the frame border
SPECK_SHAPES = ("circle", "square")


@dataclass(frozen=True)
class Event:
    """One action of one object over [start, end] seconds: the moment a query describes."""

    action: str
    start: float
    end: float
    params: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Actor:
    """An object of the palette. With an event it is the subject of one query; without, a decoy."""

    object_id: str
    colour: str
    shape: str
    size: str
    x: float  # resting centre before its event
    y: float
    angle: float  # degrees, counter-clockwise as seen on screen
    appear: float
    vanish: float
    event: Event | None = None
    query_id: str | None = None
    query: str | None = None


@dataclass(frozen=True)
class Speck:
    """A small distractor that wanders on a smooth path for the whole video."""

    shape: str
    rgb: tuple[int, int, int]
    diameter: float
    x0: float
    y0: float
    amp_x: float
    amp_y: float
    period_x: float
    period_y: float
    phase_x: float
    phase_y: float


@dataclass(frozen=True)
class Background:
    """A dark, muted colour with soft stripes that drift: motion that belongs to no event."""

    rgb: tuple[int, int, int]
    stripe_angle: float  # radians
    stripe_period: float  # fraction of the frame side
    stripe_contrast: float
    stripe_speed: float  # frame sides per second, along the stripes' normal


@dataclass(frozen=True)
class Scene:
    video_id: str
    split: str
    width: int
    height: int
    fps: int
    frames: int
    background: Background
    specks: tuple[Speck, ...]
    actors: tuple[Actor, ...]  # drawn in this order: decoys first, then by event start

    @property
    def duration(self) -> float:
        return self.frames / self.fps

    def events(self) -> list[Actor]:
        return [a for a in self.actors if a.event is not None]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        actors = []
        for a in data["actors"]:
            event = Event(**a["event"]) if a.get("event") else None
            actors.append(Actor(**{**a, "event": event}))
        return cls(
            video_id=data["video_id"], split=data["split"], width=data["width"],
            height=data["height"], fps=data["fps"], frames=data["frames"],
            background=Background(**{**data["background"], "rgb": tuple(data["background"]["rgb"])}),
            specks=tuple(Speck(**{**s, "rgb": tuple(s["rgb"])}) for s in data["specks"]),
            actors=tuple(actors),
        )


@dataclass(frozen=True)
class ObjectState:
    x: float
    y: float
    diameter: float  # fraction of the frame side
    angle: float  # degrees
    visible: bool


def _smoothstep(u: float) -> float:
    u = min(max(u, 0.0), 1.0)
    return u * u * (3.0 - 2.0 * u)


def actor_state(actor: Actor, t: float) -> ObjectState:
    """Where the actor is and how it looks at time t. Before its event it rests; after, it
    holds the pose the event ended in, so the action happens inside its moment only."""
    diameter = SIZES[actor.size]
    visible = actor.appear <= t < actor.vanish
    ev = actor.event
    if ev is None or t <= ev.start:
        return ObjectState(actor.x, actor.y, diameter, actor.angle, visible)
    tau = min(t, ev.end) - ev.start  # seconds into the event
    u = _smoothstep(tau / (ev.end - ev.start))
    p = ev.params
    x, y, angle = actor.x, actor.y, actor.angle
    if ev.action in MOVES:
        dx, dy = MOVES[ev.action]
        x += dx * p["distance"] * u
        y += dy * p["distance"] * u
    elif ev.action in ("grow", "shrink"):
        diameter *= 1.0 + (p["factor"] - 1.0) * u
    elif ev.action == "spin":
        angle += p["degrees_per_s"] * tau
    elif ev.action == "blink":
        if t < ev.end and int(tau // p["half_period"]) % 2 == 1:
            visible = False
    elif ev.action == "bounce":
        y -= p["height"] * abs(math.sin(math.pi * tau / p["period"]))
    elif ev.action == "sway":
        x += p["amplitude"] * math.sin(2.0 * math.pi * tau / p["period"])
    elif ev.action == "orbit":
        phi0 = p["phase"]
        phi = phi0 + p["direction"] * 2.0 * math.pi * tau / p["period"]
        x += p["radius"] * (math.cos(phi) - math.cos(phi0))
        y += p["radius"] * (math.sin(phi) - math.sin(phi0))
    else:
        raise ValueError(f"unknown action {ev.action!r}")
    return ObjectState(x, y, diameter, angle, visible)


def speck_position(speck: Speck, t: float) -> tuple[float, float]:
    x = speck.x0 + speck.amp_x * math.sin(2.0 * math.pi * t / speck.period_x + speck.phase_x)
    y = speck.y0 + speck.amp_y * math.sin(2.0 * math.pi * t / speck.period_y + speck.phase_y)
    return x, y


def grid_cell(x: float, y: float) -> str:
    """The 3x3 cell a point lies in, e.g. 'top_left', 'middle_center'."""
    col = ("left", "center", "right")[min(int(x * 3), 2) if x > 0 else 0]
    row = ("top", "middle", "bottom")[min(int(y * 3), 2) if y > 0 else 0]
    return f"{row}_{col}"


# ---------------------------------------------------------------------------------------
# Planning: the seeded choices that make a world.


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _on_grid(t: float, fps: int) -> float:
    return round(t * fps) / fps


def _event_params(action: str, rng: np.random.Generator) -> dict[str, float]:
    if action in MOVES:
        return {"distance": _uniform(rng, 0.30, 0.42)}
    if action == "grow":
        return {"factor": _uniform(rng, 1.6, 2.0)}
    if action == "shrink":
        return {"factor": _uniform(rng, 0.4, 0.6)}
    if action == "spin":
        # 32-45 deg/s: frames sampled once a second differ by a clearly visible turn even
        # for the most symmetric shape (the star repeats every 72 deg, the square every 90).
        return {"degrees_per_s": _uniform(rng, 32.0, 45.0) * float(rng.choice([-1.0, 1.0]))}
    if action == "blink":
        # Just under a second on and off: frames sampled once a second (the usual rate of
        # feature extraction) then alternate between on and off instead of aliasing.
        return {"half_period": _uniform(rng, 0.9, 1.0)}
    if action == "bounce":
        return {"height": _uniform(rng, 0.15, 0.24), "period": _uniform(rng, 1.3, 1.8)}
    if action == "sway":
        return {"amplitude": _uniform(rng, 0.10, 0.16), "period": _uniform(rng, 1.3, 1.8)}
    if action == "orbit":
        return {
            "radius": _uniform(rng, 0.10, 0.15), "period": _uniform(rng, 2.5, 4.0),
            "direction": float(rng.choice([-1.0, 1.0])), "phase": _uniform(rng, 0.0, 2.0 * math.pi),
        }
    raise ValueError(f"unknown action {action!r}")


def _path_extent(action: str, params: dict[str, float]) -> tuple[float, float, float, float, float]:
    """(x_lo, x_hi, y_lo, y_hi, scale_max): the event's reach around the resting centre."""
    if action in MOVES:
        dx, dy = MOVES[action]
        d = params["distance"]
        return min(0, dx * d), max(0, dx * d), min(0, dy * d), max(0, dy * d), 1.0
    if action in ("grow", "shrink"):
        return 0.0, 0.0, 0.0, 0.0, max(1.0, params["factor"])
    if action == "bounce":
        return 0.0, 0.0, -params["height"], 0.0, 1.0
    if action == "sway":
        a = params["amplitude"]
        return -a, a, 0.0, 0.0, 1.0
    if action == "orbit":
        r, phi0 = params["radius"], params["phase"]
        cx, cy = -r * math.cos(phi0), -r * math.sin(phi0)  # orbit centre relative to rest
        return cx - r, cx + r, cy - r, cy + r, 1.0
    return 0.0, 0.0, 0.0, 0.0, 1.0


Footprint = tuple[float, float, float, float, float, float]  # t0, t1, x_lo, x_hi, y_lo, y_hi


def _place(
    rng: np.random.Generator, diameter: float, extent: tuple[float, float, float, float, float],
    lifetime: tuple[float, float], taken: list[Footprint], tries: int = 30,
) -> tuple[float, float]:
    """A resting centre that keeps the object's whole path inside the frame and, while
    possible, off the paths of objects on screen at the same time (no occlusions)."""
    x_lo, x_hi, y_lo, y_hi, scale = extent
    radius = diameter * scale / 2.0
    margin = radius + EDGE
    for attempt in range(tries):
        x = _uniform(rng, margin - x_lo, 1.0 - margin - x_hi)
        y = _uniform(rng, margin - y_lo, 1.0 - margin - y_hi)
        box = (x + x_lo - radius, x + x_hi + radius, y + y_lo - radius, y + y_hi + radius)
        clash = any(
            t0 < lifetime[1] and lifetime[0] < t1 and bx0 < box[1] and box[0] < bx1 and by0 < box[3] and box[2] < by1
            for t0, t1, bx0, bx1, by0, by1 in taken
        )
        if not clash or attempt == tries - 1:
            taken.append((lifetime[0], lifetime[1], *box))
            return x, y
    raise AssertionError("unreachable")


def _choose_appearance(action: str, preset: Preset, rng: np.random.Generator) -> tuple[str, str, str]:
    shapes = [s for s in preset.shapes if not (action == "spin" and s in ROTATION_SYMMETRIC)]
    sizes = GROW_FROM if action == "grow" else SHRINK_FROM if action == "shrink" else tuple(SIZES)
    return str(rng.choice(preset.colours)), str(rng.choice(shapes)), str(rng.choice(sizes))


def _event_times(rng: np.random.Generator, preset: Preset, duration: float) -> list[tuple[float, float]]:
    """Non-overlapping event windows with at least `gap_s` of other content around each."""
    n = int(rng.integers(preset.events[0], preset.events[1] + 1))
    lengths = [_uniform(rng, *preset.event_s) for _ in range(n)]
    while n > 1 and sum(lengths) + (n + 1) * preset.gap_s > duration:
        room = duration - (n + 1) * preset.gap_s
        scaled = [max(preset.event_s[0], d * room / sum(lengths)) for d in lengths]
        if sum(scaled) <= room:
            lengths = scaled
        else:
            n -= 1
            lengths = lengths[:n]
    slack = max(0.0, duration - sum(lengths) - (n + 1) * preset.gap_s)
    gaps = rng.dirichlet(np.ones(n + 1)) * slack
    windows, t = [], 0.0
    for i in range(n):
        t += preset.gap_s + float(gaps[i])
        windows.append((t, t + lengths[i]))
        t += lengths[i]
    return windows


def _specks(rng: np.random.Generator, preset: Preset) -> tuple[Speck, ...]:
    specks = []
    for _ in range(int(rng.integers(preset.distractors[0], preset.distractors[1] + 1))):
        if preset.coloured_distractors:
            rgb = COLOURS[str(rng.choice(preset.colours))]
            diameter = _uniform(rng, 0.05, 0.09)
        else:
            grey = int(rng.integers(110, 185))
            tint = rng.integers(-15, 16, size=3)
            rgb = tuple(int(np.clip(grey + d, 0, 255)) for d in tint)
            diameter = _uniform(rng, 0.04, 0.07)
        amp_x, amp_y = _uniform(rng, 0.05, 0.3), _uniform(rng, 0.05, 0.3)
        r = diameter / 2 + EDGE
        specks.append(Speck(
            shape=str(rng.choice(SPECK_SHAPES)), rgb=rgb, diameter=diameter,
            x0=_uniform(rng, r + amp_x, 1 - r - amp_x), y0=_uniform(rng, r + amp_y, 1 - r - amp_y),
            amp_x=amp_x, amp_y=amp_y,
            period_x=_uniform(rng, 4.0, 12.0), period_y=_uniform(rng, 4.0, 12.0),
            phase_x=_uniform(rng, 0, 2 * math.pi), phase_y=_uniform(rng, 0, 2 * math.pi),
        ))
    return tuple(specks)


def plan_background(rng: np.random.Generator) -> Background:
    hue, sat, val = _uniform(rng, 0, 1), _uniform(rng, 0.15, 0.45), _uniform(rng, 0.16, 0.32)
    rgb = _hsv_to_rgb(hue, sat, val)
    return Background(
        rgb=rgb, stripe_angle=_uniform(rng, 0, math.pi), stripe_period=_uniform(rng, 0.15, 0.35),
        stripe_contrast=_uniform(rng, 0.10, 0.25), stripe_speed=_uniform(rng, 0.02, 0.08),
    )


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[int, int, int]:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, w = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    r, g, b = [(v, w, p), (q, v, p), (p, v, w), (p, q, v), (w, p, v), (v, p, q)][i]
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def plan_scene(
    video_id: str, split: str, preset: Preset, rng: np.random.Generator,
    used: set[tuple[str, str, str]] | None = None,
    describe: Callable[[Actor, np.random.Generator], str] | None = None,
    text_rng: np.random.Generator | None = None,
) -> Scene:
    """One video. `used` holds (colour, shape, action) already taken in this split; they are
    avoided while possible so a split's queries do not repeat each other. `describe(actor,
    text_rng)` writes each event's query (synth.captions.query_text); it draws from its own
    stream so wording never shifts the content."""
    used = set() if used is None else used
    frames = int(round(_uniform(rng, *preset.duration_s) * preset.fps))
    duration = frames / preset.fps
    background = plan_background(rng)
    specks = _specks(rng, preset)
    taken: list[Footprint] = []

    subjects = []
    for k, (start, end) in enumerate(_event_times(rng, preset, duration)):
        start, end = _on_grid(start, preset.fps), _on_grid(end, preset.fps)
        for _ in range(50):
            action = str(rng.choice(preset.actions))
            colour, shape, size = _choose_appearance(action, preset, rng)
            if (colour, shape, action) not in used:
                break
        used.add((colour, shape, action))
        params = _event_params(action, rng)
        appear = max(0.0, _on_grid(start - _uniform(rng, 0.5, 2.0), preset.fps))
        vanish = min(duration, _on_grid(end + _uniform(rng, 0.5, 2.0), preset.fps))
        x, y = _place(rng, SIZES[size], _path_extent(action, params), (appear, vanish), taken)
        angle = _uniform(rng, 0, 360) if action == "spin" else _uniform(rng, -15, 15)
        actor = Actor(
            object_id=f"event{k}", colour=colour, shape=shape, size=size, x=x, y=y, angle=angle,
            appear=appear, vanish=vanish, event=Event(action, start, end, params),
            query_id=f"{video_id}_q{k}",
        )
        if describe is not None:
            actor = replace(actor, query=describe(actor, text_rng if text_rng is not None else rng))
        subjects.append(actor)

    decoys = []
    for k in range(int(rng.integers(preset.decoys[0], preset.decoys[1] + 1))):
        colour, shape = str(rng.choice(preset.colours)), str(rng.choice(preset.shapes))
        size = str(rng.choice(tuple(SIZES)))
        length = min(duration, _uniform(rng, 3.0, 10.0))
        appear = _on_grid(_uniform(rng, 0.0, duration - length), preset.fps)
        vanish = min(duration, _on_grid(appear + length, preset.fps))
        x, y = _place(rng, SIZES[size], (0, 0, 0, 0, 1.0), (appear, vanish), taken)
        decoys.append(Actor(
            object_id=f"decoy{k}", colour=colour, shape=shape, size=size, x=x, y=y,
            angle=_uniform(rng, -15, 15), appear=appear, vanish=vanish,
        ))

    return Scene(
        video_id=video_id, split=split, width=preset.width, height=preset.height, fps=preset.fps,
        frames=frames, background=background, specks=specks, actors=tuple(decoys + subjects),
    )


def assign_splits(n: int, fractions: tuple[float, float, float], rng: np.random.Generator) -> list[str]:
    """Video-disjoint splits; val and test get at least one video once there are three."""
    n_val, n_test = round(n * fractions[1]), round(n * fractions[2])
    if n >= 3:
        n_val, n_test = max(1, n_val), max(1, n_test)
    n_train = n - n_val - n_test
    labels = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    order = rng.permutation(n)
    splits = [""] * n
    for position, index in enumerate(order):
        splits[int(index)] = labels[position]
    return splits


def plan_world(
    videos: int, seed: int, preset: Preset, describe: Callable[[Actor, np.random.Generator], str] | None = None,
) -> list[Scene]:
    """All scenes of a world, planned in order in one process (cheap; rendering is the slow
    part). Each video draws from its own random stream (seed, index)."""
    if videos < 1:
        raise UsageError(f"need at least one video, got {videos}")
    splits = assign_splits(videos, preset.split_fractions, np.random.default_rng([seed, 0]))
    used: dict[str, set[tuple[str, str, str]]] = {}
    scenes = []
    for index in range(videos):
        split = splits[index]
        scenes.append(plan_scene(
            f"v{index:05d}", split, preset, np.random.default_rng([seed, 1, index]),
            used.setdefault(split, set()), describe, np.random.default_rng([seed, 2, index]),
        ))
    return scenes


def write_scenes(scenes: Iterable[Scene], path: Path) -> None:
    with path.open("w", encoding="utf-8") as f:
        for scene in scenes:
            f.write(json.dumps(scene.to_dict(), sort_keys=True) + "\n")


def load_scenes(world: Path) -> list[Scene]:
    """The scene descriptions a generated world folder holds (OUT/scenes.jsonl)."""
    path = Path(world) / SCENES_FILE
    with path.open(encoding="utf-8") as f:
        return [Scene.from_dict(json.loads(line)) for line in f if line.strip()]


@dataclass(frozen=True)
class Still:
    """One frame's worth of world for the teacher: a one-frame scene, the time to draw it at,
    and the objects its caption names."""

    scene: Scene
    t: float
    named: tuple[Actor, ...]


def plan_still(rng: np.random.Generator, preset: Preset, two_objects_p: float = 0.45) -> Still:
    """A frame like those of the videos (background, specks, one or two resting objects at
    any orientation), without events: what a still can show is appearance and place."""
    # Any moment of the drifting background and wandering specks.
    t = _uniform(rng, 0.0, 60.0)
    background = plan_background(rng)
    specks = _specks(rng, preset)
    taken: list[Footprint] = []
    actors = []
    for k in range(2 if rng.random() < two_objects_p else 1):
        colour, shape = str(rng.choice(preset.colours)), str(rng.choice(preset.shapes))
        size = str(rng.choice(tuple(SIZES)))
        x, y = _place(rng, SIZES[size], (0, 0, 0, 0, 1.0), (0.0, t + 1.0), taken)
        # Spinning objects show every orientation, so stills do too (half of them).
        angle = _uniform(rng, 0, 360) if rng.random() < 0.5 else _uniform(rng, -15, 15)
        actors.append(Actor(
            object_id=f"still{k}", colour=colour, shape=shape, size=size, x=x, y=y, angle=angle,
            appear=0.0, vanish=t + 1.0,
        ))
    scene = Scene(
        video_id="still", split="", width=preset.width, height=preset.height, fps=preset.fps,
        frames=1, background=background, specks=specks, actors=tuple(actors),
    )
    return Still(scene=scene, t=t, named=tuple(actors))
