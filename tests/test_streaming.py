"""Streamed training data (train.data=stream): batches read from the real Zarr store as training
goes give the same tensors, the same model and the same metrics as the split held in memory."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from stages import train as tr
from stages.data import load_split, streams
from stages.evaluate import evaluate_run
from stages.prefetch import prefetched
from stages.teacher import build_teacher_cache
from storage.features import FeatureStore
from storage.runs import RunPaths
from tests.store_fixtures import TEACHER_KEY, build_store, config


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    root = build_store(tmp_path_factory.mktemp("store"))
    cfg = config(root)
    for split in ("train", "val", "test"):
        build_teacher_cache(cfg, TEACHER_KEY, split)
    return root


def assert_same_split(a, b):
    assert a.video_ids == b.video_ids and a.query_ids == b.query_ids and a.texts == b.texts
    for name in ("video", "video_mask", "times", "tokens", "token_mask", "query_video"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    np.testing.assert_array_equal(a.moments, b.moments)
    np.testing.assert_array_equal(a.durations, b.durations)
    assert a.teacher_positive.keys() == b.teacher_positive.keys()
    assert all(torch.equal(a.teacher_positive[k], b.teacher_positive[k]) for k in a.teacher_positive)
    for key in a.teacher_views:
        assert torch.equal(a.teacher_views[key][0].all(), b.teacher_views[key][0].all())
        assert torch.equal(a.teacher_views[key][1], b.teacher_views[key][1])


@pytest.mark.parametrize("max_frames", [None, 5])  # 5: long videos resampled on the way
def test_a_streamed_split_holds_what_the_in_memory_split_holds(store_root, max_frames):
    cfg = config(store_root, "rows", max_frames=max_frames)
    store = FeatureStore(cfg.store)
    kw = dict(teachers=[TEACHER_KEY], store=store, teacher_views=[TEACHER_KEY])
    memory, streamed = load_split(cfg, "train", stream=False, **kw), load_split(cfg, "train", stream=True, **kw)
    assert streamed.streamed and not memory.streamed
    assert_same_split(memory, streamed)
    rng = np.random.default_rng(0)
    for _ in range(3):  # rows out of order, across shards
        rows = rng.permutation(len(memory.video_ids))[:5]
        a, b = memory.batch(rows).named_tensors(), streamed.batch(rows).named_tensors()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_streamed_training_and_evaluation_give_the_same_model_and_metrics(store_root):
    results, states, metrics = {}, {}, {}
    for mode in ("memory", "stream"):
        cfg = config(store_root, f"mode-{mode}", data=mode, epochs=3)
        results[mode] = tr.train(cfg)
        states[mode] = tr.newest_loadable(RunPaths.of(cfg.runs_dir, cfg.name))[1]["model"]
        metrics[mode] = evaluate_run(cfg)["methods"]
    drop = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert drop(results["memory"]["history"]) == drop(results["stream"]["history"])
    assert all(torch.equal(states["memory"][k], states["stream"][k]) for k in states["memory"])
    assert metrics["memory"] == metrics["stream"]


def test_auto_streams_a_split_larger_than_the_memory_limit(store_root):
    store = FeatureStore(str(store_root / "features.zarr"))
    assert not streams(config(store_root, "auto"), "train", store)
    assert streams(config(store_root, "auto", memory_limit_gb=1e-6), "train", store)
    assert not streams(config(store_root, "auto", data="memory", memory_limit_gb=1e-6), "train", store)
    assert streams(config(store_root, "auto", data="stream"), "train", store)


def test_changing_how_data_is_read_keeps_the_run_resumable(store_root):
    """train.data and train.prefetch do not change the trajectory, so not the run's identity."""
    cfg = config(store_root, "switch", epochs=2)
    tr.train(cfg, stop_after_epochs=1)
    resumed = tr.train(config(store_root, "switch", epochs=2, data="stream", prefetch=1))
    assert resumed["epochs_done"] == 2


def test_prefetch_keeps_order_and_bounds_what_is_made_ahead():
    made, taken = [], []
    lock = threading.Lock()

    def make(i):
        with lock:
            made.append(i)
        return torch.full((2,), float(i))

    for i, value in enumerate(prefetched(make, range(20), depth=3)):
        time.sleep(0.01)  # the consumer is slower than the maker
        with lock:
            ahead = len(made) - i
        taken.append(int(value[0]))
        assert ahead <= 3 + 2  # the queue, plus one being made, plus the one handed over
    assert taken == list(range(20))
    assert [int(v[0]) for v in prefetched(make, range(5), depth=0)] == list(range(5))


def test_prefetch_raises_the_makers_error_and_stops_when_abandoned():
    def failing(i):
        if i == 2:
            raise ValueError("bad batch 2")
        return i

    with pytest.raises(ValueError, match="bad batch 2"):
        list(prefetched(failing, range(5), depth=2))
    before = threading.active_count()
    for value in prefetched(lambda i: i, range(1000), depth=2):
        if value == 3:
            break
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= before
