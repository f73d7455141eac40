"""Video backbones through the one general path: torchvision names, local weights files (offline),
the tiny (2+1)D network of `prvr synth-backbone`, and the parameter-free frame-difference descriptor."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from models.tiny_video import TinyR2Plus1D, TinyVideoConfig, TinyVideoWeights, save_tiny_video_weights
from models.visual import VideoBackbone, is_weights_file


def clips(n=2, window=4, height=60, width=80, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, window, height, width, 3), dtype=np.uint8)


def test_is_weights_file():
    assert is_weights_file("weights/r3d.pth") and is_weights_file("r3d.pt") and is_weights_file("/abs/x.safetensors")
    assert not is_weights_file("KINETICS400_V1") and not is_weights_file(None)


def test_torchvision_backbone_from_a_local_state_dict_file(tmp_path):
    from torchvision.models import get_model

    torch.manual_seed(5)
    full = get_model("r3d_18", weights=None)  # a classifier as torchvision saves it, head included
    path = tmp_path / "r3d_18-local.pth"
    torch.save(full.state_dict(), path)

    loaded = VideoBackbone("r3d_18", str(path))
    full.fc = torch.nn.Identity()
    x = clips()
    with torch.inference_mode():
        expected = full.eval()(loaded.preprocess(torch.from_numpy(x)))
    assert torch.allclose(loaded.encode_clips(x), expected, atol=1e-5)
    assert loaded.identity()["weights"] == {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    assert "seed" not in loaded.identity()
    # Not the seeded random init: the file decides.
    assert not torch.allclose(VideoBackbone("r3d_18", None, seed=0).encode_clips(x), expected, atol=1e-3)


def test_bad_local_weights_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        VideoBackbone("r3d_18", str(tmp_path / "missing.pth"))
    other = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="does not hold r3d_18 weights"):
        VideoBackbone("r3d_18", str(other))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable weights file"):
        VideoBackbone("r3d_18", str(junk))
    with pytest.raises(ValueError, match="prvr synth-backbone"):
        VideoBackbone("tiny_r2plus1d", "KINETICS400_V1")
    with pytest.raises(ValueError, match="has no weights"):
        VideoBackbone("frame_diff", str(other))


def test_tiny_network_round_trips_through_its_weights_file(tmp_path):
    config = TinyVideoConfig(channels=(8, 16, 16, 24), input_size=32)
    torch.manual_seed(1)
    model = TinyR2Plus1D(config).eval()
    path = tmp_path / "tiny.pt"
    save_tiny_video_weights(path, TinyVideoWeights(config, model.state_dict(), mean=(0.5, 0.5, 0.5),
                                                   std=(0.2, 0.2, 0.2), labels=("a", "b")))
    backbone = VideoBackbone("tiny_r2plus1d", str(path))
    assert (backbone.dim, backbone.input_size, backbone.min_frames) == (24, 32, 2)
    x = clips(window=6)
    with torch.inference_mode():
        expected = model(backbone.preprocess(torch.from_numpy(x)))
    assert torch.equal(backbone.encode_clips(x), expected)
    with pytest.raises(ValueError, match="at least 2 frames"):
        backbone.encode_clips(clips(window=1))


def test_frame_difference_sees_motion_and_nothing_else():
    backbone = VideoBackbone("frame_diff", None)
    still = np.repeat(clips(n=1, window=1), 6, axis=1)  # one frame repeated: nothing moves
    moving = still.copy()
    moving[0, 3:, 10:30, 10:30] = 255  # a bright patch appears half way, top left
    features = backbone.encode_clips(np.concatenate([still, moving]))
    assert features.shape == (2, backbone.dim)
    assert torch.count_nonzero(features[0]) == 0
    assert float(features[1].abs().sum()) > 0
    assert backbone.identity() == {"backbone": "frame_diff", "weights": None, "input_size": 64}
