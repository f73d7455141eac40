"""Named sizes of the synthetic world: how long, how busy and how large its videos are."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from prvr.errors import UsageError

# Object colours as RGB. Saturated and bright so they stand apart from the dark, muted
# backgrounds even after yuv420p halves the chroma resolution.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "orange": (250, 140, 20),
    "yellow": (240, 225, 40),
    "green": (40, 190, 60),
    "cyan": (40, 210, 225),
    "blue": (45, 85, 235),
    "purple": (155, 55, 215),
    "white": (240, 240, 240),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")
# Object diameter as a fraction of the frame side.
SIZES: dict[str, float] = {"small": 0.17, "medium": 0.25, "large": 0.34}
ACTIONS: tuple[str, ...] = (
    "move_left", "move_right", "move_up", "move_down",
    "grow", "shrink", "spin", "blink", "bounce", "sway", "orbit",
)


@dataclass(frozen=True)
class Preset:
    """Everything that sizes a world; ranges are inclusive (low, high)."""

    name: str
    width: int
    height: int
    fps: int
    duration_s: tuple[float, float]
    events: tuple[int, int]
    event_s: tuple[float, float]
    gap_s: float  # least time between consecutive events and at the video's ends
    decoys: tuple[int, int]  # objects of the palette that appear but do nothing
    distractors: tuple[int, int]  # small wandering specks, present throughout
    coloured_distractors: bool  # specks drawn from the object palette, not greys
    default_videos: int
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)  # train, val, test
    colours: tuple[str, ...] = tuple(COLOURS)
    shapes: tuple[str, ...] = SHAPES
    actions: tuple[str, ...] = ACTIONS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preset:
        tuples = {k: tuple(v) for k, v in data.items() if isinstance(v, list)}
        return cls(**{**data, **tuples})


PRESETS: dict[str, Preset] = {
    # Tests: a handful of short, sparse videos that render in seconds.
    "small": Preset(
        name="small", width=112, height=112, fps=10, duration_s=(20.0, 24.0), events=(2, 3),
        event_s=(2.0, 6.0), gap_s=1.0, decoys=(0, 1), distractors=(2, 3),
        coloured_distractors=False, default_videos=8,
    ),
    # The end-to-end demo on a 2-core laptop: generation, teacher, extraction, training.
    "demo": Preset(
        name="demo", width=112, height=112, fps=10, duration_s=(20.0, 40.0), events=(2, 5),
        event_s=(2.0, 8.0), gap_s=1.0, decoys=(1, 2), distractors=(3, 5),
        coloured_distractors=False, default_videos=200,
    ),
    # Benchmarks (not CI): the demo's videos, ten times as many, so that a 400-video test gallery
    # leaves R@100 room to differ and a 200-video validation split makes model selection more than noise.
    "bench": Preset(
        name="bench", width=112, height=112, fps=10, duration_s=(20.0, 40.0), events=(2, 5),
        event_s=(2.0, 8.0), gap_s=1.0, decoys=(1, 2), distractors=(3, 5),
        coloured_distractors=False, default_videos=2000,
    ),
    # Long videos, many events, and specks in the objects' own colours.
    "hard": Preset(
        name="hard", width=112, height=112, fps=10, duration_s=(60.0, 90.0), events=(4, 6),
        event_s=(2.0, 10.0), gap_s=1.0, decoys=(2, 4), distractors=(6, 10),
        coloured_distractors=True, default_videos=300,
    ),
}


def get_preset(name: str, frame_size: int | None = None, fps: int | None = None) -> Preset:
    """A named preset, optionally with another square frame size or frame rate."""
    if name not in PRESETS:
        raise UsageError(f"unknown synth preset {name!r}; known: {sorted(PRESETS)}")
    preset = PRESETS[name]
    if frame_size is not None:
        if frame_size < 32:
            raise UsageError(f"frame_size must be at least 32 pixels, got {frame_size}")
        if frame_size % 2:
            raise UsageError(f"frame_size must be even (yuv420p), got {frame_size}")
        preset = replace(preset, width=frame_size, height=frame_size)
    if fps is not None:
        if not 1 <= fps <= 60:
            raise UsageError(f"fps must lie in 1..60, got {fps}")
        preset = replace(preset, fps=fps)
    return preset
