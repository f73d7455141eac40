"""Sentences about the world: queries (appearance + action) and still captions (appearance
and position only, for the teacher). Several wordings per attribute and per action, so a
model has to learn the words, not match fixed strings."""

from __future__ import annotations

import re

import numpy as np

from synth.world import Actor, actor_state, grid_cell

COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "crimson"),
    "orange": ("orange",),
    "yellow": ("yellow", "golden"),
    "green": ("green", "lime"),
    "cyan": ("cyan", "turquoise"),
    "blue": ("blue", "azure"),
    "purple": ("purple", "violet"),
    "white": ("white",),
}
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "ball"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
    "star": ("star",),
    "cross": ("cross", "plus sign"),
    "ring": ("ring", "hoop", "donut"),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little", "tiny"),
    "medium": ("medium-sized", "mid-sized", "medium"),
    "large": ("large", "big", "huge"),
}
POSITION_WORDS: dict[str, tuple[str, ...]] = {
    "top_left": ("in the top left", "in the upper left corner", "at the top left"),
    "top_center": ("at the top", "near the top edge", "in the upper middle"),
    "top_right": ("in the top right", "in the upper right corner", "at the top right"),
    "middle_left": ("on the left", "at the left side", "on the left edge"),
    "middle_center": ("in the middle", "in the center", "at the centre"),
    "middle_right": ("on the right", "at the right side", "on the right edge"),
    "bottom_left": ("in the bottom left", "in the lower left corner", "at the bottom left"),
    "bottom_center": ("at the bottom", "near the bottom edge", "in the lower middle"),
    "bottom_right": ("in the bottom right", "in the lower right corner", "at the bottom right"),
}
ACTION_WORDS: dict[str, tuple[str, ...]] = {
    "move_left": ("moves to the left", "slides left", "drifts leftwards", "travels to the left"),
    "move_right": ("moves to the right", "slides right", "drifts rightwards", "travels to the right"),
    "move_up": ("moves up", "rises", "floats upwards", "climbs up"),
    "move_down": ("moves down", "sinks", "drops downwards", "falls"),
    "grow": ("grows", "gets bigger", "expands", "swells up"),
    "shrink": ("shrinks", "gets smaller", "contracts", "dwindles"),
    "spin": ("spins", "rotates", "turns around", "twirls"),
    "blink": ("blinks", "flashes on and off", "flickers", "keeps disappearing and reappearing"),
    "bounce": ("bounces", "hops up and down", "jumps repeatedly", "bounces up and down"),
    "sway": ("sways from side to side", "wobbles left and right", "swings back and forth", "rocks sideways"),
    "orbit": ("goes round in a loop", "travels in a loop", "orbits", "loops around"),
}

# Templates. {obj} = article + optional size + colour + shape; {pos} = a position phrase.
QUERY_TEMPLATES = ("the {app} {act}", "{obj} {act}", "we see {obj} that {act}")
QUERY_TEMPLATES_WITH_POSITION = (
    "{obj} {pos} {act}", "the {app} {pos} {act}", "{pos}, {obj} {act}", "there is {obj} {pos} which {act}",
)
STILL_TEMPLATES = ("{obj} {pos}", "a picture of {obj} {pos}", "{pos}, there is {obj}")
STILL_PAIR_TEMPLATE = "{obj} {pos} and {obj2} {pos2}"
SIZE_MENTION_P = 0.6
POSITION_MENTION_P = 0.5


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _with_article(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def appearance_phrase(colour: str, shape: str, size: str | None, rng: np.random.Generator) -> str:
    words = [_pick(rng, SIZE_WORDS[size])] if size is not None else []
    words += [_pick(rng, COLOUR_WORDS[colour]), _pick(rng, SHAPE_WORDS[shape])]
    return " ".join(words)


def query_text(actor: Actor, rng: np.random.Generator) -> str:
    """The one query about an actor's event: what it looks like and what it does. A position,
    when mentioned, is where the event starts."""
    if actor.event is None:
        raise ValueError(f"actor {actor.object_id} has no event to describe")
    size = actor.size if rng.random() < SIZE_MENTION_P else None
    app = appearance_phrase(actor.colour, actor.shape, size, rng)
    act = _pick(rng, ACTION_WORDS[actor.event.action])
    if rng.random() < POSITION_MENTION_P:
        start = actor_state(actor, actor.event.start)
        pos = _pick(rng, POSITION_WORDS[grid_cell(start.x, start.y)])
        template = _pick(rng, QUERY_TEMPLATES_WITH_POSITION)
    else:
        pos, template = "", _pick(rng, QUERY_TEMPLATES)
    return template.format(app=app, obj=_with_article(app), pos=pos, act=act)


def still_caption(objects: list[tuple[str, str, str, str]], rng: np.random.Generator) -> str:
    """A caption of a still frame from (colour, shape, size, grid cell) of its one or two
    objects. Appearance and position only: never a word about motion."""
    phrases = [
        (_with_article(appearance_phrase(c, s, z, rng)), _pick(rng, POSITION_WORDS[cell]))
        for c, s, z, cell in objects
    ]
    if len(phrases) == 1:
        return _pick(rng, STILL_TEMPLATES).format(obj=phrases[0][0], pos=phrases[0][1])
    if len(phrases) == 2:
        (obj, pos), (obj2, pos2) = phrases
        return STILL_PAIR_TEMPLATE.format(obj=obj, pos=pos, obj2=obj2, pos2=pos2)
    raise ValueError(f"a still caption names one or two objects, got {len(objects)}")


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def action_vocabulary() -> set[str]:
    """Words that only ever describe motion: the words a still caption must never use."""
    appearance = set().union(
        *(words(p) for table in (COLOUR_WORDS, SHAPE_WORDS, SIZE_WORDS, POSITION_WORDS) for ps in table.values() for p in ps)
    )
    templates = set().union(*(words(t) for t in (*QUERY_TEMPLATES, *QUERY_TEMPLATES_WITH_POSITION)))
    motion = set().union(*(words(p) for ps in ACTION_WORDS.values() for p in ps))
    return motion - appearance - templates - {"a", "an", "the", "to", "and", "of", "in", "on", "at"}


def mentioned_actions(text: str) -> set[str]:
    """Which actions a sentence names, by whole-phrase match."""
    lowered = text.lower()
    return {
        action for action, phrases in ACTION_WORDS.items()
        if any(re.search(rf"\b{re.escape(p)}\b", lowered) for p in phrases)
    }
