"""Extraction reads only the media files the manifest lists, inside the dataset root.

Real HLS playlists and concat scripts made with ffmpeg, real decord, a real Zarr store.
"""

from __future__ import annotations

import json

import pytest

from configs.schema import load_config
from stages import extract as ex
from stages.manifest import load_manifest
from storage.features import FeatureStore, StoreError
from tests.test_decode import make_concat_script, make_hls_outside
from synth.test_cards import has_ffmpeg, make_video

pytestmark = pytest.mark.skipif(not has_ffmpeg(), reason="needs the system ffmpeg")


def test_playlists_and_concat_scripts_are_recorded_as_failed_with_no_frames(tmp_path):
    root = tmp_path / "ds"
    make_hls_outside(root, tmp_path / "outside")  # videos/x.mp4
    make_concat_script(root)  # videos/joined.mp4 -> videos/other.mp4
    make_video(root / "videos" / "good.mp4", 3, size=(64, 48))
    rows = [("hls", "videos/x.mp4"), ("concat", "videos/joined.mp4"), ("good", "videos/good.mp4")]
    (root / "videos.jsonl").write_text("".join(json.dumps({"video_id": v, "path": p, "split": "train"}) + "\n"
                                               for v, p in rows))
    (root / "queries.jsonl").write_text("".join(json.dumps({"query_id": f"q-{v}", "video_id": v, "text": "x",
                                                            "split": "train"}) + "\n" for v, _ in rows))
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({
        "name": "t", "dataset": {"root": str(root)}, "store": str(tmp_path / "s.zarr"),
        "extract": {"shard_size": 3, "device": "cpu", "decode_workers": 1, "shard_retries": 0,
                    "teacher": {"model": "prvr-tiny", "pretrained": None}, "visual": ["clip"]}}))
    cfg = load_config(config)
    manifest = load_manifest(root)
    plan, = ex.plan_shards(manifest, cfg.extract.shard_size)
    result = ex.extract_shard(plan, cfg, ex.shard_fingerprint(plan, cfg.extract, manifest.root))

    assert sorted(result.failed) == ["concat", "hls"] and result.videos == 1
    assert "an HLS playlist (#EXTM3U), which points at other media" in result.failed["hls"]
    assert "an ffmpeg concat script (ffconcat), which points at other media" in result.failed["concat"]
    store = FeatureStore(cfg.store)
    key = f"teacher.{cfg.extract.teacher[0].key}"
    assert len(store.video_frames("good", key)[1]) == 3
    for vid in ("hls", "concat"):
        with pytest.raises(StoreError, match="not in any committed shard"):
            store.video_frames(vid, key)
    assert result.frames == 3  # the good video's frames and none of the playlist's 30
