"""The synthetic-world CLIP teacher: trained on stills, saved as a plain open_clip
checkpoint, loaded back through the production loader (models.clip.ClipEncoder)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.clip import ClipEncoder
from synth.captions import ACTION_WORDS, still_caption
from synth.generate import generate_world
from synth.teacher import MODEL_NAME, heldout_recall, make_stills, train_synth_teacher
from synth.world import grid_cell, plan_still


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("teacher_world") / "w"
    generate_world(out, 3, 0, preset="small", workers=1)
    return out


def _state(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_same_seed_gives_the_same_checkpoint_and_another_seed_does_not(world: Path, tmp_path: Path):
    budget = dict(steps=3, batch_size=32, train_stills=96, heldout_stills=32)
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
    report = train_synth_teacher(world, seed=0, steps=60, batch_size=128, train_stills=3000, heldout_stills=200)
    assert report.checkpoint == (world / "teacher" / "prvr-synth.pt").resolve()
    assert (world / "teacher" / "prvr-synth.json").is_file()
    print(report)

    # The path any CLIP checkpoint takes: `teacher: {model: prvr-synth, pretrained: <path>}`.
    encoder = ClipEncoder(model=MODEL_NAME, pretrained=str(report.checkpoint))
    assert encoder.image_size == 64

    # Fresh held-out stills, not the ones the report used.
    spec_rng = np.random.default_rng(1234)
    from synth.generate import read_world_info
    from synth.presets import get_preset

    preset = get_preset(read_world_info(world)["preset"]["name"])
    stills = make_stills(200, preset, spec_rng)
    captions = [still_caption(named, spec_rng) for named in stills.objects]
    r1, r5 = heldout_recall(encoder, stills, captions)
    chance = 100.0 / 200
    assert r1 >= 10 * chance, (r1, r5)
    assert r5 >= 10 * 5 * chance, (r1, r5)
    assert report.r1 >= 10 * report.chance_r1

    # Appearance decides: a still of a red star scores higher with "a red star ..." than
    # with the same sentence about a blue one.
    normalised, _ = encoder.encode_frames(stills.frames[:50])
    right = encoder.encode_sentences(captions[:50])
    assert float((normalised * right).sum(-1).mean()) > float((normalised * right.roll(1, 0)).sum(-1).mean())
