"""The synthetic-world CLIP teacher: trained on stills, saved as a plain open_clip
checkpoint, loaded back through the production loader (models.clip.ClipEncoder)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.clip import ClipEncoder
from synth.captions import ACTION_WORDS, COLOUR_WORDS, POSITION_WORDS, SHAPE_WORDS, SIZE_WORDS, still_caption
from synth.generate import generate_world, read_world_info
from synth.presets import get_preset
from synth.teacher import MODEL_NAME, heldout_recall, make_stills, train_synth_teacher


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teacher_world") / "w"
    generate_world(out, 3, 0, preset="small", workers=1)
    return out


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_same_seed_gives_the_same_checkpoint_and_another_seed_does_not(world: Path, tmp_path: Path):
    budget = dict(steps=3, batch_size=32, train_stills=96, heldout_stills=32, threads=1)
    first = train_synth_teacher(world, tmp_path / "a.pt", seed=5, **budget)
    second = train_synth_teacher(world, tmp_path / "b.pt", seed=5, **budget)
    third = train_synth_teacher(world, tmp_path / "c.pt", seed=6, **budget)
    a, b, c = _state(first.checkpoint), _state(second.checkpoint), _state(third.checkpoint)
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert first.r1 == second.r1
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["checkpoint"] == str(first.checkpoint) and report["model"] == MODEL_NAME


@pytest.mark.slow
def test_teacher_beats_chance_on_heldout_stills_through_the_production_loader(world: Path):
    # One thread: on a shared machine two busy torch processes with two threads each slow
    # each other down many times over; one thread keeps the test time predictable.
    report = train_synth_teacher(
        world, seed=0, steps=100, batch_size=64, train_stills=2000, heldout_stills=200, threads=1
    )
    assert report.checkpoint == (world / "teacher" / "prvr-synth.pt").resolve()
    assert (world / "teacher" / "prvr-synth.json").is_file()
    print(report)

    # The path any CLIP checkpoint takes: `teacher: {model: prvr-synth, pretrained: <path>}`.
    encoder = ClipEncoder(model=MODEL_NAME, pretrained=str(report.checkpoint))
    assert encoder.identity()["pretrained"]["path"] == str(report.checkpoint)

    # Fresh held-out stills, not the ones the report used.
    rng = np.random.default_rng(1234)
    stills = make_stills(200, get_preset(read_world_info(world)["preset"]["name"]), rng)
    captions = [still_caption(named, rng) for named in stills.objects]
    r1, r5 = heldout_recall(encoder, stills, captions)
    chance = 100.0 / 200
    assert r1 >= 10 * chance, (r1, r5)
    assert r5 >= 10 * 5 * chance, (r1, r5)
    assert report.r1 >= 10 * report.chance_r1

    # Good at appearance, blind to action: on one-object stills, swapping the colour word
    # for another colour costs the right caption its lead, while swapping what the object
    # does (words it never read) moves the score much less.
    singles = [(i, named[0]) for i, named in enumerate(stills.objects) if len(named) == 1][:60]
    images, _ = encoder.encode_frames(stills.frames[[i for i, _ in singles]])
    colours = list(COLOUR_WORDS)

    def sentence(colour: str, shape: str, size: str, cell: str, action: str) -> str:
        return (f"a {SIZE_WORDS[size][0]} {COLOUR_WORDS[colour][0]} {SHAPE_WORDS[shape][0]} "
                f"{POSITION_WORDS[cell][0]} {ACTION_WORDS[action][0]}")

    def scores(texts: list[str]) -> torch.Tensor:
        return (images * encoder.encode_sentences(texts)).sum(-1)

    right = scores([sentence(c, s, z, cell, "spin") for _, (c, s, z, cell) in singles])
    other_colour = scores([
        sentence(colours[(colours.index(c) + 1) % len(colours)], s, z, cell, "spin") for _, (c, s, z, cell) in singles
    ])
    other_action = scores([sentence(c, s, z, cell, "bounce") for _, (c, s, z, cell) in singles])
    assert float((right > other_colour).float().mean()) >= 0.8
    assert float((right - other_action).abs().mean()) < float((right - other_colour).mean())
