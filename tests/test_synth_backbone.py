"""`prvr synth-backbone`: clips of a pretraining world of its own, a tiny (2+1)D network trained on
them, saved to a file that extraction loads through the general weights-file path."""

from __future__ import annotations

import json

import numpy as np
import torch

from models.visual import VideoBackbone
from synth.backbone import REST, labels_of, make_clips, train_synth_backbone
from synth.presets import get_preset
from synth.world import plan_world


def test_clips_show_actions_and_rest_from_a_world_of_their_own():
    preset = get_preset("small")
    clips, labels = make_clips(6, stream=20, seed=0, preset=preset, window=4, stride=2, workers=1)
    assert clips.shape[1:] == (4, preset.height, preset.width, 3) and clips.dtype == np.uint8
    assert len(clips) == len(labels) > 20
    names = labels_of(preset)
    assert {names[i] for i in labels} - {REST}  # actions, and...
    assert REST in {names[i] for i in labels}  # ...windows where nothing happens
    # An action window changes over time (the network has something to see).
    action = int(np.flatnonzero(labels != names.index(REST))[0])
    assert np.abs(clips[action, -1].astype(int) - clips[action, 0].astype(int)).max() > 0
    # Same arguments, same clips; another stream (the held-out split) gives other scenes.
    again, again_labels = make_clips(6, stream=20, seed=0, preset=preset, window=4, stride=2, workers=1)
    assert np.array_equal(again, clips) and np.array_equal(again_labels, labels)
    other, _ = make_clips(6, stream=21, seed=0, preset=preset, window=4, stride=2, workers=1)
    assert not np.array_equal(other[:4], clips[:4])


def test_pretraining_scenes_are_not_the_evaluation_world_of_the_same_seed():
    preset = get_preset("small")
    world = plan_world(6, 0, preset)
    from synth.world import plan_scene

    pretraining = [plan_scene(f"pretrain{i:05d}", "pretrain", preset, np.random.default_rng([0, 20, i])) for i in range(6)]
    world_events = {(a.colour, a.shape, a.event.action, a.event.start) for s in world for a in s.events()}
    pre_events = {(a.colour, a.shape, a.event.action, a.event.start) for s in pretraining for a in s.events()}
    assert not world_events & pre_events


def test_trains_deterministically_and_saves_a_loadable_backbone(tmp_path):
    kwargs = dict(seed=3, preset="small", window=4, stride=2, train_scenes=6, heldout_scenes=3, epochs=2,
                  batch_size=8, workers=1, threads=1)
    report = train_synth_backbone(tmp_path / "a", **kwargs)
    again = train_synth_backbone(tmp_path / "b", **kwargs)
    first = torch.load(report.weights, weights_only=True)["state_dict"]
    second = torch.load(again.weights, weights_only=True)["state_dict"]
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    assert report.accuracy == again.accuracy and 0 <= report.accuracy <= 100
    saved = json.loads((tmp_path / "a" / "tiny_r2plus1d.json").read_text())
    assert saved["heldout_clips"] == report.heldout_clips > 0 and saved["train_clips"] > 0
    assert "held-out action accuracy" in str(report)

    backbone = VideoBackbone("tiny_r2plus1d", str(report.weights))
    clips = np.zeros((3, 4, 112, 112, 3), dtype=np.uint8)
    assert backbone.encode_clips(clips).shape == (3, backbone.dim)
    assert backbone.identity()["weights"]["file"] == "tiny_r2plus1d.pt"
