"""Encoders: the open_clip teacher wrapper (prvr-tiny, random weights) and torchvision video backbones."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing here may touch the network

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from models.clip import ClipEncoder, load_clip_encoder, register_model_configs, resolve_device
from models.visual import S3D_MIN_FRAMES, VISUAL_FEATURES, VideoBackbone, load_video_backbone

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = "prvr-tiny"
TEXTS = ["a dog", "a man is riding a horse on the beach at sunset", " ".join(["word"] * 60)]


@pytest.fixture(scope="module")
def tiny() -> ClipEncoder:
    return ClipEncoder(TINY, None, seed=0)


def random_frames(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, height, width, 3), dtype=np.uint8)


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A low-frequency image: what a camera frame looks like more than white noise does."""
    coarse = np.random.default_rng(seed).integers(0, 256, size=(height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
    return np.array(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))


# ---------------------------------------------------------------- config registration


def test_tiny_config_is_registered_and_tokenizer_matches():
    register_model_configs()
    register_model_configs()  # idempotent
    assert TINY in open_clip.list_models()
    assert open_clip.get_tokenizer(TINY).context_length == 32


def test_tiny_encoder_dimensions(tiny: ClipEncoder):
    assert (tiny.image_size, tiny.embed_dim, tiny.token_dim, tiny.context_length) == (64, 64, 64, 32)
    assert tiny.device == torch.device("cpu")
    assert not any(p.requires_grad for p in tiny.model.parameters())
    assert not tiny.model.training
    assert tiny.identity() == {"model": TINY, "image_size": 64, "pretrained": None, "seed": 0}
    json.dumps(tiny.identity())


# ---------------------------------------------------------------- frames


def test_encode_frames_shapes_and_unit_norm(tiny: ClipEncoder):
    normalised, raw = tiny.encode_frames(random_frames(5, 224, 300))
    assert normalised.shape == raw.shape == (5, 64)
    assert normalised.dtype == raw.dtype == torch.float32
    assert torch.allclose(normalised.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert torch.allclose(F.normalize(raw, dim=-1), normalised, atol=1e-6)


def test_encode_frames_batches_agree_with_one_pass(tiny: ClipEncoder):
    frames = random_frames(7, 96, 128)
    whole, _ = tiny.encode_frames(frames)
    batched, _ = tiny.encode_frames(torch.from_numpy(frames), batch_size=3)
    assert torch.allclose(whole, batched, atol=1e-5)


def test_encode_frames_empty_and_bad_input(tiny: ClipEncoder):
    normalised, raw = tiny.encode_frames(np.zeros((0, 120, 160, 3), dtype=np.uint8))
    assert normalised.shape == raw.shape == (0, 64)
    with pytest.raises(ValueError, match="uint8"):
        tiny.encode_frames(np.zeros((1, 64, 64, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        tiny.encode_frames(np.zeros((64, 64, 3), dtype=np.uint8))


@pytest.mark.parametrize("height,width", [(120, 160), (160, 120), (224, 398), (50, 30), (64, 64)])
def test_preprocess_matches_open_clip_eval_transform(tiny: ClipEncoder, height: int, width: int):
    # open_clip's own PIL pipeline for this model is the reference; PIL rounds to uint8 after resizing,
    # so one grey level (1 / 255 / std ~ 0.015 after normalisation) of disagreement is allowed.
    from open_clip.transform import PreprocessCfg, image_transform_v2

    reference_transform = image_transform_v2(PreprocessCfg(**tiny.model.visual.preprocess_cfg), is_train=False)
    image = smooth_image(height, width)
    reference = reference_transform(Image.fromarray(image))
    ours = tiny.preprocess(torch.from_numpy(image)[None])[0]
    assert ours.shape == reference.shape == (3, 64, 64)
    difference = (ours - reference).abs()
    assert difference.max() < 0.02
    assert difference.mean() < 0.005


def test_portrait_frame_is_the_transposed_landscape_case(tiny: ClipEncoder):
    # Resize and centre crop are separable and symmetric, so transposing the frame transposes the result:
    # a 160x120 portrait frame is cropped along its long side exactly as a 120x160 landscape one.
    landscape = smooth_image(120, 160, seed=3)
    portrait = np.ascontiguousarray(landscape.transpose(1, 0, 2))
    assert portrait.shape == (160, 120, 3)
    from_landscape = tiny.preprocess(torch.from_numpy(landscape)[None])
    from_portrait = tiny.preprocess(torch.from_numpy(portrait)[None])
    assert from_portrait.shape == from_landscape.shape == (1, 3, 64, 64)
    # The two separable passes run in the other order, so rounding to grey levels may differ by one.
    difference = (from_portrait - from_landscape.transpose(-1, -2)).abs()
    assert difference.max() < 0.02
    assert (difference > 1e-4).float().mean() < 0.01
    normalised, _ = tiny.encode_frames(np.stack([landscape, landscape]))
    assert torch.allclose(normalised[0], normalised[1])


# ---------------------------------------------------------------- seeding


def test_same_seed_same_weights_and_different_seed_differs(tiny: ClipEncoder):
    frames = random_frames(3, 80, 80)
    again = ClipEncoder(TINY, None, seed=0)
    other = ClipEncoder(TINY, None, seed=1)
    assert torch.equal(tiny.encode_frames(frames)[1], again.encode_frames(frames)[1])
    assert torch.equal(tiny.encode_sentences(TEXTS), again.encode_sentences(TEXTS))
    assert not torch.allclose(tiny.encode_frames(frames)[1], other.encode_frames(frames)[1])
    assert other.identity()["seed"] == 1


def test_building_an_encoder_does_not_disturb_the_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    ClipEncoder(TINY, None, seed=7)
    assert torch.equal(torch.rand(4), expected)


# ---------------------------------------------------------------- text


def test_encode_sentences_unit_norm(tiny: ClipEncoder):
    sentences = tiny.encode_sentences(TEXTS)
    assert sentences.shape == (3, 64) and sentences.dtype == torch.float32
    assert torch.allclose(sentences.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(tiny.encode_sentences(TEXTS, batch_size=2), sentences, atol=1e-6)
    assert tiny.encode_sentences([]).shape == (0, 64)


def test_encode_tokens_lengths_and_padding(tiny: ClipEncoder):
    tokens, lengths = tiny.encode_tokens(TEXTS)
    assert tokens.shape == (3, 32, 64) and tokens.dtype == torch.float32
    assert lengths.dtype == torch.int64
    ids = tiny.tokenize(TEXTS)
    # "a dog" -> SOT a dog EOT; the 60-word text is truncated to the context with EOT last.
    assert lengths[0].item() == 4
    assert lengths[2].item() == 32
    assert lengths.tolist() == [int((row != 0).sum()) for row in ids]
    for row, length in zip(tokens, lengths.tolist()):
        assert torch.all(row[length:] == 0)
        assert torch.all(row[:length].abs().sum(dim=-1) > 0)


def test_eot_token_projected_equals_sentence_embedding(tiny: ClipEncoder):
    tokens, lengths = tiny.encode_tokens(TEXTS)
    eot = tokens[torch.arange(len(TEXTS)), lengths - 1]
    projected = tiny.project_tokens(eot)
    assert projected.shape == (3, 64)
    assert torch.allclose(F.normalize(projected, dim=-1), tiny.encode_sentences(TEXTS), atol=1e-5)


def test_encode_tokens_max_tokens_truncates(tiny: ClipEncoder):
    full, _ = tiny.encode_tokens(TEXTS)
    tokens, lengths = tiny.encode_tokens(TEXTS, max_tokens=8)
    assert tokens.shape == (3, 8, 64)
    assert lengths.tolist() == [4, 8, 8]
    assert torch.allclose(tokens[1:], full[1:, :8], atol=1e-6)  # causal: a prefix doesn't see what follows
    assert torch.allclose(tokens[0, :4], full[0, :4], atol=1e-6)
    assert torch.all(tokens[0, 4:] == 0)
    assert tiny.encode_tokens(TEXTS, max_tokens=100)[0].shape == (3, 32, 64)
    with pytest.raises(ValueError):
        tiny.encode_tokens(TEXTS, max_tokens=0)


def test_custom_text_clip_tower_tokens(tmp_path: Path):
    # CustomTextCLIP keeps its TextTransformer under model.text; same contract as the CLIP class.
    config = json.loads((REPO_ROOT / "models" / "open_clip_configs" / f"{TINY}.json").read_text())
    config["custom_text"] = True
    (tmp_path / "prvr-test-custom-text.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path)
    encoder = ClipEncoder("prvr-test-custom-text", None, seed=0)
    assert type(encoder.model).__name__ == "CustomTextCLIP"
    tokens, lengths = encoder.encode_tokens(TEXTS)
    assert tokens.shape == (3, 32, 64) and lengths[0].item() == 4
    eot = tokens[torch.arange(len(TEXTS)), lengths - 1]
    assert torch.allclose(
        F.normalize(encoder.project_tokens(eot), dim=-1), encoder.encode_sentences(TEXTS), atol=1e-5
    )


# ---------------------------------------------------------------- pretrained: files and tags


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_local_checkpoint_reproduces_source_model(tiny: ClipEncoder, tmp_path: Path, suffix: str):
    source = ClipEncoder(TINY, None, seed=11)
    path = tmp_path / f"tiny{suffix}"
    state = {k: v.contiguous() for k, v in source.model.state_dict().items()}
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)

    loaded = ClipEncoder(TINY, str(path), seed=0)  # the seed must not matter once weights load
    frames = random_frames(4, 120, 160)
    assert torch.equal(loaded.encode_frames(frames)[1], source.encode_frames(frames)[1])
    assert torch.equal(loaded.encode_sentences(TEXTS), source.encode_sentences(TEXTS))
    assert not torch.allclose(loaded.encode_frames(frames)[1], tiny.encode_frames(frames)[1])

    identity = loaded.identity()
    assert identity["pretrained"] == {
        "path": str(path.resolve()),
        "size": path.stat().st_size,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    assert "seed" not in identity
    json.dumps(identity)


def test_checkpoint_of_another_architecture_is_a_clear_error(tmp_path: Path):
    path = tmp_path / "wrong.pt"
    torch.save({"not_a_clip_weight": torch.zeros(3)}, path)
    with pytest.raises(ValueError, match="quickgelu"):
        ClipEncoder(TINY, str(path))


def test_unknown_tag_lists_the_valid_ones():
    with pytest.raises(ValueError, match="openai") as caught:
        ClipEncoder("ViT-B-32", "no-such-tag")  # fails before any download
    assert "laion2b_s34b_b79k" in str(caught.value)
    with pytest.raises(ValueError, match="neither a known tag"):
        ClipEncoder(TINY, "openai")
    with pytest.raises(ValueError, match="unknown open_clip model"):
        ClipEncoder("no-such-model", None)


# ---------------------------------------------------------------- caches and devices


def test_load_clip_encoder_is_cached_per_process():
    first = load_clip_encoder(TINY, None, "cpu", seed=0)
    assert load_clip_encoder(TINY, None, "cpu", seed=0) is first
    assert load_clip_encoder(TINY, None, "auto", seed=0) is load_clip_encoder(TINY, None, resolve_device("auto"))
    assert load_clip_encoder(TINY, None, "cpu", seed=1) is not first


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        assert resolve_device("cuda") == "cuda"
    else:
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")


# ---------------------------------------------------------------- video backbones


def test_visual_registry_imports_without_torch():
    code = "import sys, models.visual; assert 'torch' not in sys.modules, 'torch imported eagerly'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)
    assert VISUAL_FEATURES["clip"].kind == "clip" and VISUAL_FEATURES["clip"].dim is None
    assert (VISUAL_FEATURES["r2plus1d_18"].kind, VISUAL_FEATURES["r2plus1d_18"].dim) == ("video", 512)
    assert (VISUAL_FEATURES["s3d"].kind, VISUAL_FEATURES["s3d"].dim) == ("video", 1024)
    assert VISUAL_FEATURES["s3d"].min_frames == S3D_MIN_FRAMES


def test_r2plus1d_shape_and_seeded_determinism():
    clips = np.random.default_rng(0).integers(0, 256, size=(2, 2, 60, 80, 3), dtype=np.uint8)
    backbone = VideoBackbone("r2plus1d_18", None, seed=0)
    assert (backbone.dim, backbone.input_size, backbone.resize_short) == (512, 112, 128)
    assert backbone.preprocess(torch.from_numpy(clips)).shape == (2, 3, 2, 112, 112)
    features = backbone.encode_clips(clips)
    assert features.shape == (2, 512) and features.dtype == torch.float32
    assert torch.equal(VideoBackbone("r2plus1d_18", None, seed=0).encode_clips(clips), features)
    assert not torch.allclose(VideoBackbone("r2plus1d_18", None, seed=1).encode_clips(clips), features)
    assert backbone.identity() == {"backbone": "r2plus1d_18", "weights": None, "input_size": 112, "seed": 0}
    with pytest.raises(ValueError, match="uint8"):
        backbone.encode_clips(clips.astype(np.float32))


def test_s3d_shape_and_minimum_window():
    backbone = load_video_backbone("s3d", None, "cpu", seed=0)
    assert load_video_backbone("s3d", None, "cpu", seed=0) is backbone
    assert (backbone.dim, backbone.input_size) == (1024, 224)
    clips = np.random.default_rng(1).integers(0, 256, size=(1, S3D_MIN_FRAMES, 48, 64, 3), dtype=np.uint8)
    assert backbone.encode_clips(clips).shape == (1, 1024)
    with pytest.raises(ValueError, match=f"at least {S3D_MIN_FRAMES} frames"):
        backbone.encode_clips(clips[:, : S3D_MIN_FRAMES - 1])


def test_video_backbone_bad_names():
    with pytest.raises(ValueError, match="KINETICS400_V1"):
        VideoBackbone("r2plus1d_18", "IMAGENET1K_V1")
    with pytest.raises(ValueError, match="unknown video backbone"):
        VideoBackbone("clip", None)
