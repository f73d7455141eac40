"""The feature store on real Zarr on disk: commit markers, readers, dask view, text."""

import json

import numpy as np
import pytest

from storage.features import FeatureStore, StoreError, shard_name


def fill(store: FeatureStore, index: int, videos: dict[str, int], split: str = "train", fp: str = "fp",
         commit: bool = True, dim: int = 8):
    w = store.begin_shard(index, {"teacher.t": dim, "visual.clip": dim})
    rng = np.random.default_rng(index)
    data = {}
    for vid, n in videos.items():
        f = rng.standard_normal((n, dim)).astype(np.float16)
        data[vid] = f
        w.add_video(vid, split, n * 1.0, np.arange(n, dtype=np.float32) + 0.5, {"teacher.t": f, "visual.clip": -f})
    if commit:
        w.commit(fp)
    return data


def test_commit_marker_decides_state(tmp_path):
    store = FeatureStore(str(tmp_path / "s.zarr"), mode="a")
    assert store.shard_status(0, "fp").state == "missing"
    fill(store, 0, {"a": 3}, commit=False)
    s = store.shard_status(0, "fp")
    assert s.state == "missing" and "never committed" in s.note
    fill(store, 0, {"a": 3})
    assert store.shard_status(0, "fp").state == "committed"
    assert store.shard_status(0, "other").state == "stale"
    store.record_shard_failure(1, "boom")
    assert store.shard_status(1, "fp").state == "failed" and store.shard_status(1, "fp").error == "boom"
    store.record_shard_failure(0, "late")  # never overrides a committed shard
    assert store.shard_status(0, "fp").state == "committed"


def test_uncommitted_shards_are_invisible_to_readers(tmp_path):
    store = FeatureStore(str(tmp_path / "s.zarr"), mode="a")
    fill(store, 0, {"a": 3, "b": 2})
    fill(store, 1, {"c": 4}, commit=False)
    reader = FeatureStore(str(tmp_path / "s.zarr"))
    assert set(reader.video_index()) == {"a", "b"}
    with pytest.raises(StoreError, match="not in any committed shard"):
        reader.video_frames("c", "teacher.t")


def test_restarting_a_shard_removes_earlier_content(tmp_path):
    store = FeatureStore(str(tmp_path / "s.zarr"), mode="a")
    fill(store, 0, {"a": 5, "b": 5}, commit=False)
    data = fill(store, 0, {"a": 2})
    frames, times = FeatureStore(str(tmp_path / "s.zarr")).video_frames("a", "teacher.t")
    np.testing.assert_array_equal(frames, data["a"])
    assert store.root["videos"][shard_name(0)]["teacher.t"].shape == (2, 8)


def test_torn_metadata_reads_as_not_committed(tmp_path):
    store = FeatureStore(str(tmp_path / "s.zarr"), mode="a")
    fill(store, 0, {"a": 3})
    meta = tmp_path / "s.zarr" / "videos" / shard_name(0) / "zarr.json"
    meta.write_text(meta.read_text()[:40])  # as if killed mid-write
    reader = FeatureStore(str(tmp_path / "s.zarr"))
    assert reader.shard_status(0, "fp").state == "missing"
    assert reader.shard_indices() == [0] and reader.video_index() == {}
    fill(store, 0, {"a": 3})  # a rerun rewrites it
    assert FeatureStore(str(tmp_path / "s.zarr")).shard_status(0, "fp").state == "committed"


def test_readers_padded_and_dask_agree(tmp_path):
    store = FeatureStore(str(tmp_path / "s.zarr"), mode="a")
    data = fill(store, 0, {"a": 3, "b": 5})
    data.update(fill(store, 1, {"c": 2}))
    data.update(fill(store, 2, {"d": 4}, split="test"))
    r = FeatureStore(str(tmp_path / "s.zarr"))
    assert sorted(r.split_video_ids("train")) == ["a", "b", "c"]
    p = r.padded("train", "teacher.t")
    assert p.features.shape == (3, 5, 8) and p.mask.sum(1).tolist() == [3, 5, 2]
    for i, vid in enumerate(p.video_ids):
        n = len(data[vid])
        np.testing.assert_array_equal(p.features[i, :n], data[vid].astype(np.float32))
        assert not p.features[i, n:].any()
    capped = r.padded("train", "teacher.t", max_frames=4)
    assert capped.features.shape == (3, 4, 8) and capped.mask.sum(1).tolist() == [3, 4, 2]
    arr, offsets, ids, splits = r.dask_frames("visual.clip")
    full = arr.compute()
    for j, vid in enumerate(ids):
        np.testing.assert_array_equal(full[offsets[j]:offsets[j + 1]], -data[vid])
    assert splits == ["train", "train", "train", "test"]


def test_chunks_are_about_a_megabyte(tmp_path):
    store = FeatureStore(str(tmp_path / "s.zarr"), mode="a")
    fill(store, 0, {"a": 3}, dim=512)
    arr = store.root["videos"][shard_name(0)]["teacher.t"]
    assert arr.chunks == (1024, 512) and arr.dtype == np.float16
    codecs = json.loads((tmp_path / "s.zarr/videos/shard-00000/teacher.t/zarr.json").read_text())["codecs"]
    assert any(c["name"] == "zstd" for c in codecs)


def test_text_roundtrip_and_consolidation(tmp_path):
    store = FeatureStore(str(tmp_path / "s.zarr"), mode="a")
    fill(store, 0, {"a": 3})
    moments = np.array([[1, 2], [np.nan, np.nan]], dtype=np.float32)
    w = store.begin_text("train", ["q1", "q2"], ["a", "a"], ["x", "y"], moments,
                         {"sentence.t": (4,), "tokens.t": (5, 6), "token_lengths.t": ()})
    assert store.text_status("train", "fp") == "missing"
    w.write("sentence.t", 0, np.ones((2, 4)))
    w.write("tokens.t", 0, np.full((2, 5, 6), 2.0))
    w.write("token_lengths.t", 0, np.array([3, 5]))
    w.commit("fp")
    store.consolidate()
    t = FeatureStore(str(tmp_path / "s.zarr")).text("train")
    assert t.query_ids == ["q1", "q2"] and t.texts == ["x", "y"]
    np.testing.assert_array_equal(t.sentences("t"), np.ones((2, 4)))
    tok, lengths = t.tokens("t")
    assert tok.shape == (2, 5, 6) and lengths.tolist() == [3, 5]
    assert np.isnan(t.moments[1]).all()
    store.invalidate_consolidated()
    assert "consolidated_metadata" not in json.loads((tmp_path / "s.zarr/zarr.json").read_text())


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="run the extract stage first"):
        FeatureStore(str(tmp_path / "none.zarr"))
