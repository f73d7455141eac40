"""A real collection mixes frame sizes, orientations and frame rates inside one shard.

Frames of several videos are batched through each encoder; they must be brought to the
encoder's input geometry first. Real videos (ffmpeg), real decord, a real Zarr store, and the
real extract flow on a Prefect server.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from configs.schema import load_config
from stages import extract as ex
from stages.manifest import load_manifest
from storage.features import FeatureStore
from synth.test_cards import make_video

# (video id, (width, height), fps, extra ffmpeg args): square, landscape 4:3, portrait, a
# rotated landscape (displayed portrait), wide 16:9, each at its own frame rate.
MIXED = [
    ("square", (112, 112), 10, []),
    ("landscape", (320, 240), 25, []),
    ("portrait", (120, 160), 30, []),
    ("rotated", (160, 96), 12, ["-metadata:s:v:0", "rotate=90"]),
    ("wide", (256, 144), 24, []),
]


def write_mixed_dataset(root: Path) -> Path:
    videos, queries = [], []
    for i, (vid, size, fps, extra) in enumerate(MIXED):
        make_video(root / "videos" / f"{vid}.mp4", seconds=3.0 + i, fps=fps, size=size, seed=i,
                   extra_args=extra)
        split = "train" if i < 3 else "test"
        videos.append({"video_id": vid, "path": f"videos/{vid}.mp4", "split": split})
        queries.append({"query_id": f"q-{vid}", "video_id": vid, "text": f"the {vid} video", "split": split})
    (root / "videos.jsonl").write_text("".join(json.dumps(v) + "\n" for v in videos))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    return root


def mixed_config(tmp: Path, root: Path, store: str, **extract) -> Path:
    body = {
        "name": "mixed", "dataset": {"root": str(root)}, "store": store,
        "extract": {"shard_size": len(MIXED), "fps": 2.0, "max_frames": 16, "device": "cpu", "batch_size": 64,
                    "decode_workers": 1, "decode_timeout_s": 60, "shard_retries": 0,
                    "teacher": {"model": "prvr-tiny", "pretrained": None}, "visual": ["clip"], **extract},
    }
    path = tmp / f"mixed-{abs(hash((store, json.dumps(extract, sort_keys=True))))}.yaml"
    path.write_text(json.dumps(body))
    return path


@pytest.fixture(scope="module")
def mixed_root(tmp_path_factory) -> Path:
    return write_mixed_dataset(tmp_path_factory.mktemp("mixed"))


def extract_all(cfg) -> list[ex.ShardResult]:
    manifest = load_manifest(cfg.dataset.root)
    return [ex.extract_shard(plan, cfg, ex.shard_fingerprint(plan, cfg.extract, manifest.root))
            for plan in ex.plan_shards(manifest, cfg.extract.shard_size)]


def stored(cfg, feature: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    store = FeatureStore(cfg.store)
    return {vid: store.video_frames(vid, feature) for vid, *_ in MIXED}


@pytest.mark.parametrize("visual", [["clip"], ["clip", "mc3_18"]], ids=["clip", "clip+video-backbone"])
def test_one_shard_of_mixed_sizes_batches_like_one_video_at_a_time(mixed_root, tmp_path, visual):
    extra = {"visual": visual, "window": 4, "window_stride": 1}
    together = load_config(mixed_config(tmp_path, mixed_root, str(tmp_path / "together.zarr"), **extra))
    (result,) = extract_all(together)
    assert result.failed == {} and result.videos == len(MIXED)

    alone = load_config(mixed_config(tmp_path, mixed_root, str(tmp_path / "alone.zarr"), batch_size=1,
                                     shard_size=1, **extra))
    extract_all(alone)
    for feature in ["teacher.prvr-tiny-random", *(f"visual.{v}" for v in visual)]:
        batched, single = stored(together, feature), stored(alone, feature)
        for vid, fps in ((v, f) for v, _, f, _ in MIXED):
            rows, times = batched[vid]
            assert len(rows) == len(times) > 0
            np.testing.assert_allclose(rows.astype(np.float32), single[vid][0].astype(np.float32),
                                       rtol=0, atol=2e-3, err_msg=f"{feature} of {vid}")
            np.testing.assert_array_equal(times, single[vid][1])
            # Each video keeps its own clock: samples at 2 per second of its own frames.
            assert np.all(np.diff(times) > 0.4) and np.all(np.diff(times) < 0.6), (vid, fps, times)


def test_two_teachers_of_different_input_sizes_share_a_mixed_shard(mixed_root, tmp_path):
    teachers = [{"model": "prvr-tiny", "pretrained": None, "name": "tiny"},
                {"model": "prvr-synth", "pretrained": None, "name": "synth"}]
    cfg = load_config(mixed_config(tmp_path, mixed_root, str(tmp_path / "two.zarr"), teacher=teachers))
    (result,) = extract_all(cfg)
    assert result.failed == {} and result.videos == len(MIXED)
    for feature in ("teacher.tiny", "teacher.synth", "visual.clip"):
        assert all(len(rows) > 0 for rows, _ in stored(cfg, feature).values())


@pytest.mark.slow
def test_the_extract_flow_commits_a_mixed_shard(mixed_root, tmp_path):
    from prefect.testing.utilities import prefect_test_harness

    from flows.ingest import ingest_flow_for

    cfg = load_config(mixed_config(tmp_path, mixed_root, str(tmp_path / "flow.zarr")))
    with prefect_test_harness(server_startup_timeout=120):
        state = ingest_flow_for(cfg)(cfg, return_state=True)
    assert state.is_completed(), state.message
    store = FeatureStore(cfg.store)
    status = store.shard_status(0, None)
    assert status.state == "committed" and status.videos == len(MIXED) and not status.failed_videos
    assert sorted(store.video_index()) == sorted(v for v, *_ in MIXED)
