"""Extraction on real videos made by ffmpeg, real decord, a real Zarr store.

Stage-level tests run without Prefect; flow-level tests run against a real (temporary)
Prefect server and read task-run states back from its API.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from configs.schema import RunConfig, load_config
from stages import extract as ex
from stages.manifest import load_manifest
from storage.features import FeatureStore
from synth.test_cards import make_broken, make_video

GOOD = [("v0", "mp4", 6.0), ("v1", "mkv", 4.0), ("v2", "webm", 5.0), ("v3", "mp4", 3.0), ("v4", "mp4", 7.0)]


def write_dataset(root: Path, broken: bool = True) -> Path:
    (root / "videos").mkdir(parents=True, exist_ok=True)
    videos, queries = [], []
    codecs = {"mp4": "libx264", "mkv": "libx264", "webm": "libvpx-vp9"}
    for i, (vid, ext, seconds) in enumerate(GOOD):
        make_video(root / "videos" / f"{vid}.{ext}", seconds=seconds, codec=codecs[ext], pattern=("testsrc2", "testsrc")[i % 2])
        videos.append({"video_id": vid, "path": f"videos/{vid}.{ext}", "split": "train" if i < 3 else "test"})
    if broken:
        for vid, kind in [("bad_empty", "empty"), ("bad_trunc", "truncated"), ("bad_text", "text")]:
            make_broken(kind, root / "videos" / f"{vid}.mp4")
            videos.append({"video_id": vid, "path": f"videos/{vid}.mp4", "split": "test"})
    for v in videos:
        queries.append({"query_id": f"q-{v['video_id']}", "video_id": v["video_id"],
                        "text": f"a pattern in video {v['video_id']}", "split": v["split"], "moment": [0.5, 2.0]})
    (root / "videos.jsonl").write_text("".join(json.dumps(v) + "\n" for v in videos))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    return root


def write_config(tmp: Path, root: Path, store: str, **extract) -> Path:
    body = {
        "name": "t", "dataset": {"root": str(root)}, "store": store,
        "extract": {"shard_size": 3, "fps": 1.0, "max_frames": 128, "device": "cpu", "batch_size": 4,
                    "decode_workers": 1, "decode_timeout_s": 60, "shard_retries": 0,
                    "teacher": {"model": "prvr-tiny", "pretrained": None}, "visual": ["clip"], **extract},
    }
    path = tmp / f"cfg-{abs(hash(store))}.yaml"
    path.write_text(json.dumps(body))
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("ds"))


def run_all_shards(cfg: RunConfig) -> list[ex.ShardResult]:
    manifest = load_manifest(cfg.dataset.root)
    results = []
    for plan in ex.plan_shards(manifest, cfg.extract.shard_size):
        results.append(ex.extract_shard(plan, cfg, ex.shard_fingerprint(plan, cfg.extract, manifest.root)))
    for split in manifest.splits():
        ex.extract_text(manifest, split, cfg, ex.text_fingerprint(manifest, split, cfg.extract))
    return results


def test_features_of_good_videos_and_errors_of_bad_ones(dataset, tmp_path):
    from models.clip import load_clip_encoder
    from stages.decode import decode_video

    cfg = load_config(write_config(tmp_path, dataset, str(tmp_path / "s.zarr")))
    results = run_all_shards(cfg)
    failed = {k: v for r in results for k, v in r.failed.items()}
    assert set(failed) == {"bad_empty", "bad_trunc", "bad_text"}
    assert all(msg for msg in failed.values())

    store = FeatureStore(cfg.store)
    encoder = load_clip_encoder("prvr-tiny", None, "cpu", 0)
    key = cfg.extract.teacher[0].key
    for vid, ext, seconds in GOOD:
        frames, times = store.video_frames(vid, f"teacher.{key}")
        assert len(times) == int(seconds * cfg.extract.fps), vid
        assert np.all(np.diff(times) > 0) and times[-1] < seconds
        # The stored features equal a direct decode + encode of the same frames.
        decoded = decode_video(dataset / "videos" / f"{vid}.{ext}", fps=1.0, max_frames=128,
                               short_side=encoder.image_size)
        normalised, raw = encoder.encode_frames(decoded.samples())
        np.testing.assert_allclose(frames.astype(np.float32), normalised.numpy(), atol=2e-3)
        clip, _ = store.video_frames(vid, "visual.clip")
        np.testing.assert_allclose(clip.astype(np.float32), raw.numpy(), atol=1e-2, rtol=1e-2)
        np.testing.assert_allclose(np.linalg.norm(frames.astype(np.float32), axis=1), 1.0, atol=1e-2)

    text = store.text("test")
    assert text.video_ids == ["v3", "v4", "bad_empty", "bad_trunc", "bad_text"]
    sent = text.sentences(key)
    np.testing.assert_allclose(sent.astype(np.float32), encoder.encode_sentences(text.texts).numpy(), atol=2e-3)
    tokens, lengths = text.tokens(key)
    assert tokens.shape[:2] == (5, min(cfg.extract.max_tokens, encoder.context_length))
    assert (lengths > 2).all()
    np.testing.assert_allclose(text.moments, [[0.5, 2.0]] * 5)


def test_same_inputs_give_identical_features(dataset, tmp_path):
    a = load_config(write_config(tmp_path, dataset, str(tmp_path / "a.zarr")))
    b = load_config(write_config(tmp_path, dataset, str(tmp_path / "b.zarr"), decode_workers=2, prefetch_videos=1))
    c = load_config(write_config(tmp_path, dataset, str(tmp_path / "c.zarr"), batch_size=7))
    for cfg in (a, b, c):
        run_all_shards(cfg)
    sa, sb, sc = FeatureStore(a.store), FeatureStore(b.store), FeatureStore(c.store)
    for vid, _, _ in GOOD:
        for feature in sa.feature_names():
            # Decoding parallelism never changes a bit.
            np.testing.assert_array_equal(sa.video_frames(vid, feature)[0], sb.video_frames(vid, feature)[0])
            # Another batch size changes BLAS summation order: equal up to float16 rounding.
            np.testing.assert_allclose(sa.video_frames(vid, feature)[0].astype(np.float32),
                                       sc.video_frames(vid, feature)[0].astype(np.float32), atol=1e-3, rtol=1e-2)


def test_strict_mode_fails_the_shard_with_a_bad_video(dataset, tmp_path):
    cfg = load_config(write_config(tmp_path, dataset, str(tmp_path / "s.zarr"), strict=True))
    manifest = load_manifest(cfg.dataset.root)
    plans = ex.plan_shards(manifest, cfg.extract.shard_size)
    bad_plan = plans[-1]  # holds the broken files
    with pytest.raises(ex.ShardFailed, match="strict"):
        ex.extract_shard(bad_plan, cfg, ex.shard_fingerprint(bad_plan, cfg.extract, manifest.root))
    assert FeatureStore(cfg.store).shard_status(bad_plan.index, None).state == "missing"


def test_a_file_deleted_after_validation_is_recorded(tmp_path):
    root = write_dataset(tmp_path / "ds", broken=False)
    cfg = load_config(write_config(tmp_path, root, str(tmp_path / "s.zarr")))
    manifest = load_manifest(root)
    (root / "videos" / "v1.mkv").unlink()
    plan = ex.plan_shards(manifest, cfg.extract.shard_size)[0]
    result = ex.extract_shard(plan, cfg, "fp")
    assert list(result.failed) == ["v1"] and result.videos == 2


def test_shard_fingerprint_tracks_inputs_and_settings(dataset, tmp_path):
    cfg = load_config(write_config(tmp_path, dataset, str(tmp_path / "s.zarr")))
    manifest = load_manifest(dataset)
    plan = ex.plan_shards(manifest, 3)[0]
    base = ex.shard_fingerprint(plan, cfg.extract, dataset)
    assert base == ex.shard_fingerprint(plan, cfg.extract.model_copy(update={"batch_size": 99, "device": "auto"}), dataset)
    assert base != ex.shard_fingerprint(plan, cfg.extract.model_copy(update={"fps": 2.0}), dataset)
    path = plan.videos[0].path
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    try:
        assert base != ex.shard_fingerprint(plan, cfg.extract, dataset)
    finally:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
