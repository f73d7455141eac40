"""Teacher caches on real Zarr on disk, computed with real dask (threads and a process cluster)."""

import json
from pathlib import Path

import numpy as np
import pytest

from configs.schema import RunConfig
from stages.teacher import (
    build_teacher_cache,
    max_over_frames,
    split_frames,
    teacher_cache_fingerprint,
    teacher_keys,
    video_sim_dask,
)
from storage.features import CHUNK_BYTES, FeatureStore, StoreError
from storage.teacher_cache import TeacherCache, video_sim_chunks

DIMS = {"ta": 16, "tb": 12}  # two teachers of different widths


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


# Shard -> [(video id, split, frames)]; splits interleave inside shards, one video has no frames.
LAYOUT = {
    0: [("v00", "train", 5), ("v01", "test", 3), ("v02", "train", 9), ("v03", "train", 1)],
    1: [("v10", "test", 7), ("v11", "train", 4), ("v12", "train", 0), ("v13", "test", 2)],
    2: [("v20", "train", 6), ("v21", "train", 8), ("v22", "test", 5)],
}


def write_shard(store: FeatureStore, index: int, seed: int, fp: str,
                videos: list[tuple[str, str, int]] | None = None) -> None:
    rng = np.random.default_rng(seed)
    w = store.begin_shard(index, {f"teacher.{k}": d for k, d in DIMS.items()})
    for vid, split, n in LAYOUT[index] if videos is None else videos:
        feats = {f"teacher.{k}": unit_rows(rng, n, d) for k, d in DIMS.items()}
        w.add_video(vid, split, float(n), np.arange(n, dtype=np.float32), feats)
    w.commit(fp)


def write_text(store: FeatureStore, split: str, n_queries: int, seed: int, fp: str) -> None:
    rng = np.random.default_rng(seed)
    videos = [vid for shard in LAYOUT.values() for vid, s, _ in shard if s == split]
    # Positives in shuffled order, plus one query whose video was never stored (a failed video).
    positives = [videos[i] for i in rng.integers(0, len(videos), n_queries - 1)] + ["lost-video"]
    qids = [f"{split}-q{i}" for i in range(n_queries)]
    w = store.begin_text(split, qids, positives, [f"text {i}" for i in range(n_queries)],
                         np.full((n_queries, 2), np.nan), {f"sentence.{k}": (d,) for k, d in DIMS.items()})
    for k, d in DIMS.items():
        w.write(f"sentence.{k}", 0, unit_rows(rng, n_queries, d))
    w.commit(fp)


def make_store(path: Path) -> str:
    store = FeatureStore(str(path), mode="a")
    for index in LAYOUT:
        write_shard(store, index, seed=index, fp=f"shard-{index}")
    write_text(store, "train", 11, seed=100, fp="text-train")
    write_text(store, "test", 6, seed=200, fp="text-test")
    return str(path)


def config(tmp_path: Path, location: str) -> RunConfig:
    return RunConfig.model_validate({
        "name": "t", "dataset": {"root": str(tmp_path)}, "store": location,
        "extract": {"teacher": [{"model": "ViT-B-32", "name": k} for k in DIMS], "visual": ["clip"]},
    })


def reference(location: str, teacher: str, split: str):
    """Direct numpy, one query and one video at a time."""
    store = FeatureStore(location)
    text = store.text(split)
    sentences = text.sentences(teacher).astype(np.float32)
    videos = [vid for shard in LAYOUT.values() for vid, s, _ in shard if s == split]
    frames = {vid: store.video_frames(vid, f"teacher.{teacher}")[0].astype(np.float32) for vid in videos}
    sim = np.full((len(sentences), len(videos)), -np.inf, dtype=np.float32)
    positive = []
    for q, sentence in enumerate(sentences):
        for v, vid in enumerate(videos):
            if len(frames[vid]):
                sim[q, v] = max(float(f @ sentence) for f in frames[vid])
        pos = frames.get(text.video_ids[q], np.zeros((0, len(sentence)), dtype=np.float32))
        positive.append(np.array([f @ sentence for f in pos], dtype=np.float32))
    return sim, positive, text.query_ids, videos


def assert_cache_matches(location: str, teacher: str, split: str) -> None:
    sim, positive, query_ids, video_ids = reference(location, teacher, split)
    cache = TeacherCache(location)
    info = cache.info(teacher, split)
    assert info["query_ids"] == query_ids and info["video_ids"] == video_ids
    if info["has_video_sim"]:
        got, got_queries, got_videos = cache.video_sim(teacher, split)
        assert got.dtype == np.float16 and got.shape == sim.shape
        assert got_queries == query_ids and got_videos == video_ids
        # float16 keeps scores in [-1, 1] to within half a step of 2**-10.
        np.testing.assert_allclose(got.astype(np.float32), sim, atol=1e-3, rtol=0)
    else:
        with pytest.raises(StoreError, match=f"{teacher}/{split} holds no query x video scores"):
            cache.video_sim(teacher, split)
    flat, offsets = cache.positive_frames(teacher, split)
    assert flat.dtype == np.float16 and offsets.dtype == np.int64 and len(offsets) == len(query_ids) + 1
    for q, expected in enumerate(positive):
        np.testing.assert_allclose(flat[offsets[q]:offsets[q + 1]].astype(np.float32), expected, atol=1e-3, rtol=0)


def chunk_mtimes(location: str, teacher: str, split: str) -> dict[str, int]:
    root = Path(location) / "teacher" / teacher / split
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def world(tmp_path):
    location = make_store(tmp_path / "s.zarr")
    return config(tmp_path, location), location


def test_cache_equals_direct_numpy_for_every_teacher_and_split(world):
    cfg, location = world
    assert teacher_keys(cfg) == ["ta", "tb"]
    for teacher in teacher_keys(cfg):
        for split, n_queries, n_videos in (("train", 11, 7), ("test", 6, 4)):
            # query_block 4 < Q: row blocks really split the queries; the split spans all three shards.
            result = build_teacher_cache(cfg, teacher, split, query_block=4, video_sim=True)
            assert result["skipped"] is False and result["queries"] == n_queries and result["videos"] == n_videos
            assert result["missing_positives"] == 1
            assert_cache_matches(location, teacher, split)
    cache = TeacherCache(location)
    assert cache.teachers() == ["ta", "tb"] and cache.splits("ta") == ["test", "train"]
    sim, _, video_ids = cache.video_sim("ta", "train")
    assert np.isneginf(sim[:, video_ids.index("v12")]).all()  # the video without frames ranks last
    flat, offsets = cache.positive_frames("ta", "train")
    assert offsets[-1] - offsets[-2] == 0  # the query whose video is lost has no positive frames
    band, band_ids, _ = cache.video_sim("ta", "train", rows=slice(4, 8))
    np.testing.assert_array_equal(band, sim[4:8])
    assert band_ids == [f"train-q{i}" for i in range(4, 8)]


def test_blocks_span_shards_and_video_blocks(world):
    """Small chunks in both directions: query blocks and video blocks that cut across shards."""
    _, location = world
    store = FeatureStore(location)
    frames = split_frames(store, "teacher.ta", "train")
    assert frames.video_ids == ["v00", "v02", "v03", "v11", "v12", "v20", "v21"]
    sentences = store.dask_sentences("train", "ta", 3)
    ref, _, _, videos = reference(location, "ta", "train")
    assert videos == frames.video_ids
    sims = video_sim_dask(sentences, frames, chunks=(3, 2), frames_per_step=4)
    assert sims.chunks == ((3, 3, 3, 2), (2, 2, 2, 1))
    np.testing.assert_allclose(sims.compute().astype(np.float32), ref, atol=1e-3, rtol=0)
    # One video per block: v12's block holds no frames at all.
    sims = video_sim_dask(sentences, frames, chunks=(5, 1))
    np.testing.assert_allclose(sims.compute().astype(np.float32), ref, atol=1e-3, rtol=0)


def test_max_over_frames_steps_give_the_same_scores():
    rng = np.random.default_rng(0)
    lengths = np.array([3, 0, 5, 1, 7, 0, 2])
    frames = unit_rows(rng, int(lengths.sum()), 8)
    sentences = unit_rows(rng, 5, 8)
    whole = max_over_frames(sentences, frames, lengths, frames_per_step=10_000)
    for step in (1, 2, 4, 6):
        np.testing.assert_array_equal(max_over_frames(sentences, frames, lengths, frames_per_step=step), whole)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    for v, n in enumerate(lengths):
        expected = (sentences.astype(np.float32) @ frames[starts[v]:starts[v] + n].astype(np.float32).T).max(1) \
            if n else np.full(5, -np.inf)
        np.testing.assert_allclose(whole[:, v].astype(np.float32), expected, atol=1e-3, rtol=0)


def test_only_the_evaluated_split_computes_its_query_by_video_matrix(world):
    cfg, location = world
    assert cfg.evaluate.split == "test"
    for split in ("train", "test"):
        result = build_teacher_cache(cfg, "ta", split, query_block=4)
        assert result["video_sim"] is (split == "test")
        assert_cache_matches(location, "ta", split)  # positives of both; the matrix where it exists
    assert not (Path(location) / "teacher/ta/train/video_sim").exists()
    store = FeatureStore(location)
    assert TeacherCache(store).status("ta", "train", teacher_cache_fingerprint(cfg, store, "ta", "train")) \
        == "committed"  # what `prvr status` asks
    assert build_teacher_cache(cfg, "ta", "train", query_block=4)["skipped"] is True

    # Evaluating on train now: its cache lacks what evaluation reads, so it is stale and rebuilt with it.
    on_train = cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(update={"split": "train"})})
    train_fp = teacher_cache_fingerprint(on_train, store, "ta", "train")
    assert TeacherCache(store).status("ta", "train", train_fp) == "stale"
    result = build_teacher_cache(on_train, "ta", "train", query_block=4)
    assert result["skipped"] is False and result["video_sim"] is True
    assert_cache_matches(location, "ta", "train")


def test_rerun_skips_without_rewriting(world):
    cfg, location = world
    build_teacher_cache(cfg, "ta", "train", query_block=4)
    cache = TeacherCache(location)
    at = cache.committed_at("ta", "train")
    before = chunk_mtimes(location, "ta", "train")
    again = build_teacher_cache(cfg, "ta", "train", query_block=4)
    assert again["skipped"] is True and again["queries"] == 11 and again["videos"] == 7
    assert TeacherCache(location).committed_at("ta", "train") == at
    assert chunk_mtimes(location, "ta", "train") == before


def test_changed_shard_or_text_makes_the_cache_stale(world):
    cfg, location = world
    for teacher in ("ta", "tb"):
        build_teacher_cache(cfg, teacher, "train", query_block=4)
        build_teacher_cache(cfg, teacher, "test", query_block=4)
    store = FeatureStore(location, mode="a")
    old = {s: teacher_cache_fingerprint(cfg, store, "ta", s) for s in ("train", "test")}

    # Shard 2 re-extracted with new content: both splits have videos there.
    write_shard(store, 2, seed=99, fp="shard-2-new")
    store = FeatureStore(location, mode="a")
    cache = TeacherCache(store)
    for split in ("train", "test"):
        fp = teacher_cache_fingerprint(cfg, store, "ta", split)
        assert fp != old[split] and cache.status("ta", split, fp) == "stale"
    assert cache.status("ta", "train", old["train"]) == "committed"
    result = build_teacher_cache(cfg, "ta", "train", query_block=4)
    assert result["skipped"] is False
    assert_cache_matches(location, "ta", "train")
    assert build_teacher_cache(cfg, "tb", "train", query_block=4)["skipped"] is False
    assert_cache_matches(location, "tb", "train")

    # New text for test only: train stays committed, test is recomputed.
    write_text(store, "test", 9, seed=300, fp="text-test-new")
    assert build_teacher_cache(cfg, "ta", "train", query_block=4)["skipped"] is True
    result = build_teacher_cache(cfg, "ta", "test", query_block=4)
    assert result["skipped"] is False and result["queries"] == 9
    assert_cache_matches(location, "ta", "test")


def test_a_shard_without_the_split_does_not_touch_its_fingerprint(tmp_path):
    location = make_store(tmp_path / "s.zarr")
    cfg = config(tmp_path, location)
    store = FeatureStore(location, mode="a")
    before = teacher_cache_fingerprint(cfg, store, "ta", "train")
    write_shard(store, 3, seed=3, fp="shard-3", videos=[("v30", "test", 3)])  # a test-only shard
    store = FeatureStore(location, mode="a")
    assert teacher_cache_fingerprint(cfg, store, "ta", "train") == before
    assert teacher_cache_fingerprint(cfg, store, "ta", "test") != teacher_cache_fingerprint(cfg, store, "tb", "test")


def test_chunks_are_about_a_megabyte_and_aligned(world):
    rows, cols = video_sim_chunks(2000, 5000, 1024)
    assert (rows, cols) == (1024, 512) and rows * cols * 2 == CHUNK_BYTES
    assert video_sim_chunks(10, 7, 1024) == (10, 7)  # small matrices: one chunk
    assert video_sim_chunks(3, 10**6, 4)[1] == CHUNK_BYTES // (2 * 3)

    cfg, location = world
    build_teacher_cache(cfg, "ta", "train", query_block=4, video_sim=True)
    meta = json.loads((Path(location) / "teacher/ta/train/video_sim/zarr.json").read_text())
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [4, 7]
    assert meta["data_type"] == "float16" and any(c["name"] == "zstd" for c in meta["codecs"])

    # The writer refuses dask blocks that would make two tasks share one chunk.
    import dask.array as da

    cache = TeacherCache(location, mode="a")
    writer = cache.begin("ta", "scratch", ["a", "b", "c", "d", "e"], ["x", "y"], 2, "fp", {})
    with pytest.raises(ValueError, match="do not match the chunk size"):
        writer.store_video_sim(da.zeros((5, 2), chunks=(3, 2), dtype=np.float16))
    writer.store_video_sim(da.ones((5, 2), chunks=(2, 2), dtype=np.float16))
    with pytest.raises(StoreError, match="positive frames were never written"):
        writer.commit()
    assert cache.status("ta", "scratch", "fp") == "missing"


def test_errors_are_clear(world, tmp_path):
    cfg, location = world
    with pytest.raises(ValueError, match="not configured"):
        build_teacher_cache(cfg, "nope", "train")
    with pytest.raises(StoreError, match="text of split 'val' is not committed"):
        build_teacher_cache(cfg, "ta", "val")
    with pytest.raises(StoreError, match="not committed"):
        TeacherCache(location).video_sim("ta", "train")
    missing = config(tmp_path, str(tmp_path / "none.zarr"))
    with pytest.raises(StoreError, match="run the extract stage first"):
        build_teacher_cache(missing, "ta", "train")
    assert not (tmp_path / "none.zarr").exists()


@pytest.mark.slow
def test_a_process_cluster_gives_the_threaded_result(world, tmp_path):
    from distributed import Client, LocalCluster

    cfg, location = world
    build_teacher_cache(cfg, "ta", "train", query_block=4, video_sim=True)
    threaded = TeacherCache(location).video_sim("ta", "train")[0]
    threaded_flat, threaded_offsets = TeacherCache(location).positive_frames("ta", "train")

    other = config(tmp_path, make_store(tmp_path / "cluster.zarr"))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster):
        result = build_teacher_cache(other, "ta", "train", query_block=4, video_sim=True)
    assert result["skipped"] is False
    cache = TeacherCache(other.store)
    np.testing.assert_array_equal(cache.video_sim("ta", "train")[0], threaded)
    flat, offsets = cache.positive_frames("ta", "train")
    np.testing.assert_array_equal(flat, threaded_flat)
    np.testing.assert_array_equal(offsets, threaded_offsets)
