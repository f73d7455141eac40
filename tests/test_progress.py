"""Progress of the stages that used to run silent: the teacher caches and evaluation report
(fraction, message) through a plain callback, which flows/ turns into Prefect progress artifacts."""

from __future__ import annotations

import pytest

from stages import evaluate as ev
from stages import train as tr
from stages.teacher import build_teacher_cache
from tests.store_fixtures import TEACHER_KEY, build_store, config


def recorder() -> tuple[list[tuple[float, str]], object]:
    heard: list[tuple[float, str]] = []
    return heard, lambda fraction, message: heard.append((fraction, message))


def assert_monotone_to_one(heard: list[tuple[float, str]]) -> None:
    fractions = [f for f, _ in heard]
    assert fractions, "no progress reported"
    assert all(0.0 <= f <= 1.0 for f in fractions), fractions
    assert fractions == sorted(fractions), fractions
    assert fractions[-1] == 1.0


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    # Small query blocks: the cache is many dask tasks, each of which reports.
    return build_store(tmp_path_factory.mktemp("progress"), videos_per_split={"train": 12, "val": 4, "test": 6})


def test_teacher_cache_reports_each_dask_task_then_skips_with_one_report(store_root):
    cfg = config(store_root, "p")
    heard, progress = recorder()
    # With the query x video matrix (made for the evaluated split only, by default): the longest phase.
    result = build_teacher_cache(cfg, TEACHER_KEY, "train", query_block=4, progress=progress, video_sim=True)
    assert not result["skipped"]
    assert_monotone_to_one(heard)
    # Phases: the query x video matrix, then positive frames, then the commit.
    messages = list(dict.fromkeys(m for _, m in heard))
    assert messages[0].startswith("query x video scores: 24 queries x 12 videos")
    assert messages[1] == "positive-frame scores of 24 queries" and messages[2].startswith("committed in")
    # 24 queries in blocks of 4: the threaded scheduler reports many finished tasks, not just phase edges.
    during = [f for f, m in heard if m == messages[0]]
    assert len(set(during)) > 6, during

    heard, progress = recorder()
    again = build_teacher_cache(cfg, TEACHER_KEY, "train", query_block=4, progress=progress, video_sim=True)
    assert again["skipped"] and heard == [(1.0, "unchanged inputs, cache kept")]


def test_evaluation_reports_steps_and_query_chunks(store_root):
    cfg = config(store_root, "p", epochs=1)
    for split in ("val", "test"):
        build_teacher_cache(cfg, TEACHER_KEY, split)
    tr.train(cfg)
    heard, progress = recorder()
    summary = ev.evaluate_run(cfg, progress=progress)
    assert_monotone_to_one(heard)
    messages = [m for _, m in heard]
    # query_chunk 5 over 12 test queries: three chunks per branch, three branches.
    assert sum(m.startswith("ranking 12 queries: ") for m in messages) == 9
    fused = summary["methods"]["DL-DKD student (fused)"]["SumR"]
    assert f"DL-DKD student (fused): SumR {fused:.1f}" in messages
    assert messages[-1] == f"DL-DKD student (fused) on test: SumR {fused:.1f}"
    # No progress callback: the same metrics.
    assert ev.evaluate_run(cfg)["methods"] == summary["methods"]
