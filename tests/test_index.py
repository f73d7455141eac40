"""The search index of a trained run (issue 14, items 1 and 2): written once by the index stage,
skipped when current, rebuilt when the checkpoint, the selection or its own files changed, shown
by `prvr status`; queries against it rank as evaluation does, on a real trained run (real ffmpeg
videos, real extraction, real training, real files on disk)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from configs.schema import load_config
from models.student import DLDKDStudent, StudentConfig
from prvr.cli import app
from stages.data import load_split
from stages.evaluate import encode_split, evaluate_run, evaluate_student
from stages.index import build_index, run_index_root
from stages.metrics import ranks_of_positives, recall_at_k
from stages.search import FAST_SCORE_ERROR, QueryError, Searcher, check_query, search
from stages.trained import load_trained_student
from storage.checkpoints import best_checkpoint, load_checkpoint, save_checkpoint
from storage.index import IndexWriter, SearchIndexError, frames_file, index_state, open_index, read_record
from storage.runs import RunPaths
from tests.search_world import EVENTS, query_text, trained_world

FLOAT16_UNIT = 2.0 ** -11  # float16's unit roundoff: a unit vector's stored components are within it, relatively


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    return trained_world(tmp_path_factory.mktemp("index-world"))


def private_run(trained: Path, tmp_path: Path):
    """The trained run, without any index, copied into tmp_path (the store is shared, read-only)."""
    cfg = load_config(trained)
    shutil.copytree(cfg.runs_dir / cfg.name, tmp_path / "runs" / cfg.name, ignore=shutil.ignore_patterns("index"))
    return load_config(trained, [f"runs_dir={tmp_path / 'runs'}"])


def stored_queries(model, data, branch):
    """Evaluation's query vectors: the stored tokens through the student (stages.evaluate.encode_split)."""
    _, queries, _ = encode_split(model, data, "cpu", branch)
    return queries


# ---- item 2: the same ranking as evaluation ----------------------------------------------------
@pytest.mark.parametrize("split", ["train", "test"])
def test_index_ranks_every_query_as_evaluation_does(trained, tmp_path, split):
    cfg = private_run(trained, tmp_path)
    model, branch, _ = load_trained_student(cfg)
    build_index(cfg, [split])
    searcher = Searcher(model, branch, open_index(run_index_root(cfg)))
    data = load_split(cfg, split)
    assert searcher.index.video_ids == data.video_ids

    gallery, queries, mask = encode_split(model, data, "cpu", branch)
    with torch.inference_mode():
        evaluation = model.score_encoded(queries, gallery, mask, branch).numpy()  # what evaluate_student ranks
    index_scores = np.full_like(evaluation, np.nan)
    for q in range(len(data.query_ids)):
        rows, scores = searcher.top_videos({b: v[q:q + 1] for b, v in queries.items()}, len(data.video_ids))
        assert sorted(rows.tolist()) == list(range(len(data.video_ids)))  # every video, once
        assert np.all(np.diff(scores) <= 0)
        index_scores[q, rows] = scores
        # The index's order is evaluation's order, but where two videos are closer than float16 storage can tell.
        assert np.all(np.diff(evaluation[q, rows]) <= 2 * FLOAT16_UNIT)
    # Stored frame vectors are evaluation's rounded to float16: a unit query's cosine moves by at most u.
    assert np.abs(index_scores - evaluation).max() <= FLOAT16_UNIT + 1e-6

    index_ranks = ranks_of_positives(index_scores, data.query_video.numpy(), ties="pessimistic")
    _, evaluation_ranks = evaluate_student(model, data, branch)
    positive = evaluation[np.arange(len(evaluation)), data.query_video.numpy()]
    near_tie = (np.abs(evaluation - positive[:, None]) <= 2 * FLOAT16_UNIT).sum(1) > 1
    np.testing.assert_array_equal(index_ranks[~near_tie], evaluation_ranks[~near_tie])
    assert near_tie.mean() < 0.5  # the comparison above covers most queries
    if split == "test":  # the figures evaluation writes for this checkpoint, from the index's ranks
        fused = evaluate_run(cfg)["methods"]["DL-DKD student (fused)"]
        ranks = np.where(near_tie, evaluation_ranks, index_ranks)
        for key, value in recall_at_k(ranks).items():
            assert fused[key] == pytest.approx(value)


def test_a_sentence_is_encoded_as_extraction_encoded_the_stored_queries(trained):
    cfg = load_config(trained)
    searcher = Searcher.open(cfg)
    try:
        data = load_split(cfg, "train")
        stored = stored_queries(searcher.model, data, searcher.branch)
        for q in (0, 5):
            fresh = searcher.encode(data.texts[q])
            for b in fresh:
                torch.testing.assert_close(fresh[b], stored[b][q:q + 1], atol=1e-6, rtol=0)
            assert searcher.search(data.texts[q], 5) == searcher.rank({b: v[q:q + 1] for b, v in stored.items()}, 5)
    finally:
        searcher.close()


def test_hits_carry_moments_and_the_timeline_of_each_video(trained):
    cfg = load_config(trained)
    hits = search(cfg, query_text("red"), top=4)
    index = open_index(run_index_root(cfg))
    assert [h.rank for h in hits] == [1, 2, 3, 4] and len({h.video_id for h in hits}) == 4
    for h in hits:
        v = index.video_ids.index(h.video_id)
        assert list(h.times) == index.times[index.rows(v)].tolist()
        # Fusing the branches' maxima is at least the maximum of the fused frame scores.
        assert len(h.frame_scores) == len(h.times) and max(h.frame_scores) <= h.score + 1e-6
        assert 0 <= h.moment[0] <= h.best_time <= h.moment[1] <= h.duration == index.durations[v]
        assert h.frame_scores[h.times.index(h.best_time)] == max(h.frame_scores)


# ---- the fast pass never loses a video of the exact top K ----------------------------------------
def random_index(root: Path, videos: int, hidden: int, seed: int, duplicates: int = 0):
    """An index of random unit frame vectors (ragged videos); the last `duplicates` videos copy the first ones."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 30, videos)
    if duplicates:
        lengths[-duplicates:] = lengths[:duplicates]
    starts = np.concatenate([[0], np.cumsum(lengths)])
    vectors = {}
    for b in ("inheritance", "exploration"):
        v = rng.standard_normal((int(starts[-1]), hidden)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        for i in range(duplicates):
            j = videos - duplicates + i
            v[starts[j]:starts[j + 1]] = v[starts[i]:starts[i + 1]]
        vectors[b] = v
    times = np.concatenate([np.arange(n, dtype=np.float32) + 0.5 for n in lengths])
    with IndexWriter(root, list(vectors), hidden, int(starts[-1]), videos) as writer:
        writer.add({b: v.astype(np.float16) for b, v in vectors.items()}, times, lengths)
        writer.commit("random", {"splits": ["test"], "selection": "all"}, [f"r{i}" for i in range(videos)],
                      ["test"] * videos, lengths.astype(np.float32))
    return open_index(root)


def test_fast_pass_keeps_every_video_of_the_exact_top_k(tmp_path):
    """A random index with 200 videos duplicated (exact ties): the top K of the two-pass ranking is the
    top K of exact scores of every video, for several queries and K."""
    torch.manual_seed(0)
    model = DLDKDStudent(StudentConfig(video_dim=8, text_dim=8, hidden=48, fusion=0.7)).eval()
    index = random_index(tmp_path / "index", videos=3000, hidden=48, seed=1, duplicates=200)
    searcher = Searcher(model, "fused", index)
    everything = np.arange(len(index.video_ids))
    for seed in range(5):
        q = torch.nn.functional.normalize(torch.randn(2, 48, generator=torch.Generator().manual_seed(seed)), dim=-1)
        query = {"inheritance": q[:1], "exploration": q[1:]}
        exact_all = searcher.exact_scores(query, everything)
        fast = searcher.fast_scores(query).numpy()
        assert np.abs(fast - exact_all).max() <= FAST_SCORE_ERROR
        for top in (1, 10, 100):
            rows, scores = searcher.top_videos(query, top)
            best = np.sort(exact_all)[::-1][:top]
            # float32 sums of differently padded batches differ in the last bit; nothing more.
            np.testing.assert_allclose(scores, best, rtol=0, atol=1e-6)
            np.testing.assert_allclose(exact_all[rows], best, rtol=0, atol=1e-6)
            assert len(set(rows.tolist())) == top
            twins = [r for r in rows if r >= 2800]  # a duplicate in the top K: its original is there too
            assert all(r - 2800 in rows for r in twins)


def test_one_branch_runs_index_only_that_branch(tmp_path):
    torch.manual_seed(0)
    model = DLDKDStudent(StudentConfig(video_dim=8, text_dim=8, hidden=16)).eval()
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((10, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with IndexWriter(tmp_path, ["exploration"], 16, 10, 3) as writer:
        writer.add({"exploration": vectors.astype(np.float16)}, np.arange(10, dtype=np.float32), np.array([2, 5, 3]))
        writer.commit("x", {"splits": ["test"], "selection": "all"}, ["a", "b", "c"], ["test"] * 3,
                      np.array([2.0, 5.0, 3.0]))
    searcher = Searcher(model, "exploration", open_index(tmp_path))
    query = {"exploration": torch.from_numpy(vectors[6:7])}
    hits = searcher.rank(query, 3)
    assert hits[0].video_id == "b" and hits[0].score == pytest.approx(1.0, abs=FLOAT16_UNIT)
    assert hits[0].best_time == 6.0


# ---- item 1: the index stage: skipped when current, rebuilt when stale or damaged -----------------
def test_unchanged_index_is_skipped_a_changed_checkpoint_or_selection_rebuilds_it(trained, tmp_path):
    cfg = private_run(trained, tmp_path)
    root = run_index_root(cfg)
    first = build_index(cfg)
    assert not first["skipped"] and first["videos"] == len(EVENTS) and first["splits"] == ["train", "test"]
    record = read_record(root)
    assert build_index(cfg)["skipped"] and read_record(root) == record

    # A checkpoint with other weights (retrained, or replaced by hand) makes the index stale.
    paths = RunPaths.of(cfg.runs_dir, cfg.name)
    state = load_checkpoint(best_checkpoint(paths))
    state["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in state["model"].items()}
    save_checkpoint(best_checkpoint(paths), state)
    report = json.loads(CliRunner().invoke(app, ["status", str(trained), "--set", f"runs_dir={cfg.runs_dir}",
                                                 "--json"]).output)
    assert report["stages"]["index"]["state"] == "stale"
    assert "the checkpoint (retrained?) changed" in report["stages"]["index"]["summary"]
    rebuilt = build_index(cfg)
    assert not rebuilt["skipped"] and read_record(root)["fingerprint"] != record["fingerprint"]
    assert not (root / record["folder"]).exists()  # the replaced build is gone
    assert [p.name for p in root.iterdir() if p.is_dir()] == [read_record(root)["folder"]]

    # Another selection is another index.
    only_test = build_index(cfg, ["test"])
    assert not only_test["skipped"] and only_test["splits"] == ["test"]
    assert open_index(root).video_ids == [vid for vid, split, _ in EVENTS if split == "test"]
    with pytest.raises(ValueError, match=r"split\(s\) \['val'\] hold no videos .* with videos: \['train', 'test'\]"):
        build_index(cfg, ["val"])


def test_a_damaged_index_is_found_and_rebuilt(trained, tmp_path):
    cfg = private_run(trained, tmp_path)
    root = run_index_root(cfg)
    build_index(cfg)
    record = read_record(root)
    data = root / record["folder"] / frames_file("inheritance")
    with data.open("r+b") as handle:
        handle.truncate(data.stat().st_size - 64)
    state = index_state(root, record["fingerprint"])
    assert state.state == "corrupt" and f"{frames_file('inheritance')} has" in state.note
    with pytest.raises(SearchIndexError, match="is damaged"):
        open_index(root)
    status_args = ["status", str(trained), "--set", f"runs_dir={cfg.runs_dir}", "--json"]
    assert json.loads(CliRunner().invoke(app, status_args).output)["stages"]["index"]["state"] == "corrupt"
    assert not build_index(cfg)["skipped"]
    assert index_state(root, read_record(root)["fingerprint"]).state == "current"

    # Bytes changed in place keep the sizes: only the checksums (prvr status --verify) see them.
    times = root / read_record(root)["folder"] / "times.npy"
    raw = bytearray(times.read_bytes())
    raw[-1] ^= 0xFF
    times.write_bytes(bytes(raw))
    assert json.loads(CliRunner().invoke(app, status_args).output)["stages"]["index"]["state"] == "complete"
    verified = json.loads(CliRunner().invoke(app, [*status_args, "--verify"]).output)["stages"]["index"]
    assert verified["state"] == "corrupt" and "times.npy: checksum differs" in verified["summary"]


def test_an_interrupted_build_leaves_the_previous_index(trained, tmp_path, monkeypatch):
    cfg = private_run(trained, tmp_path)
    root = run_index_root(cfg)
    build_index(cfg, ["test"])
    before = read_record(root)

    def fail(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(IndexWriter, "commit", fail)
    with pytest.raises(KeyboardInterrupt):
        build_index(cfg)
    assert read_record(root) == before
    assert open_index(root).video_ids == [vid for vid, split, _ in EVENTS if split == "test"]
    assert [p.name for p in root.iterdir() if p.is_dir()] == [before["folder"]]


def test_prvr_status_shows_the_index_stage(trained, tmp_path):
    cfg = private_run(trained, tmp_path)
    args = ["status", str(trained), "--set", f"runs_dir={cfg.runs_dir}"]
    report = json.loads(CliRunner().invoke(app, [*args, "--json"]).output)
    assert report["stages"]["index"]["state"] == "missing" and not report["complete"]
    assert "index" in report["checked"]
    build_index(cfg)
    out = CliRunner().invoke(app, [*args, "--json"])
    index = json.loads(out.output)["stages"]["index"]
    assert index["state"] == "complete" and index["videos"] == len(EVENTS)
    table = CliRunner().invoke(app, args).output
    assert f"{len(EVENTS)} videos (train, test)" in table
    assert CliRunner().invoke(app, [*args, "--stages", "index"]).exit_code == 0


# ---- prvr search and prvr index ----------------------------------------------------------------------
def test_prvr_search_builds_the_index_once_then_reads_it(trained, tmp_path):
    cfg = private_run(trained, tmp_path)
    args = ["search", str(trained), query_text("blue"), "--top", "3", "--json", "--set", f"runs_dir={cfg.runs_dir}"]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "index: index of 12 videos written" in first.stderr
    hits = json.loads(first.stdout)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert all(len(h["frame_scores"]) == len(h["times"]) and 0 <= h["moment"][0] <= h["moment"][1] for h in hits)
    again = CliRunner().invoke(app, args)
    assert "unchanged, skipped" in again.stderr and json.loads(again.stdout) == hits

    # `prvr index --split test`: the selection is kept by later searches.
    built = CliRunner().invoke(app, ["index", str(trained), "--split", "test", "--set", f"runs_dir={cfg.runs_dir}"])
    assert built.exit_code == 0 and json.loads(built.stdout)["splits"] == ["test"]
    hits = json.loads(CliRunner().invoke(app, args).stdout)
    assert {h["video_id"] for h in hits} == {vid for vid, split, _ in EVENTS if split == "test"}

    text_plain = CliRunner().invoke(app, args[:3] + ["--set", f"runs_dir={cfg.runs_dir}"])
    assert text_plain.exit_code == 0 and "  1. " in text_plain.stdout and "moment" in text_plain.stdout


@pytest.mark.parametrize("text, message", [
    ("", "the query text is empty"), ("   \n ", "the query text is empty"),
    ("x" * 501, "the query is 501 characters long; at most 500"),
    ("a\x00door", "not text: it holds the control or unassigned character U+0000 at position 1"),
    ("a \ufffd door", "bytes that were not UTF-8"), ("?!  ...", "no letters or digits"),
])
def test_queries_that_cannot_be_searched_for_are_refused(text, message):
    with pytest.raises(QueryError, match=re.escape(message)):
        check_query(text)


def test_refused_queries_fail_the_command_before_any_loading(trained):
    out = CliRunner().invoke(app, ["search", str(trained), "  "])
    assert out.exit_code == 2 and "the query text is empty" in out.output
    assert check_query("  a man opens the door\n") == "a man opens the door"
    with pytest.raises(QueryError, match="must be text"):
        check_query(b"bytes")


# ---- the stage in the flow ---------------------------------------------------------------------------
def test_index_stage_runs_in_the_pipeline_flow_and_skips_when_current(trained, tmp_path):
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import prvr_flow
    from flows.stage_names import ALL_STAGES

    assert ALL_STAGES[-2:] == ["evaluate", "index"]
    cfg = private_run(trained, tmp_path)
    overrides = {"runs_dir": str(cfg.runs_dir)}
    with prefect_test_harness(server_startup_timeout=120):
        first = prvr_flow(str(trained), stages=["index"], overrides=overrides, index_splits=["test"])
        second = prvr_flow(str(trained), stages=["index"], overrides=overrides, index_splits=["test"])
    assert not first["index"]["skipped"] and first["index"]["splits"] == ["test"]
    assert second["index"]["skipped"] and second["index"]["built_at"] == first["index"]["built_at"]


def test_a_release_run_has_no_index_and_says_why(tmp_path):
    """Releases ship token features of their own queries only: no text model to encode a sentence."""
    from stages.index import index_status
    from tests.release_fixtures import make_release, write_release_config

    cfg = load_config(write_release_config(tmp_path / "r.yaml", make_release(tmp_path / "release"),
                                           tmp_path / "store.zarr", tmp_path / "runs"))
    with pytest.raises(ValueError, match="free-text search needs the model that made the student's token features"):
        build_index(cfg)
    with pytest.raises(ValueError, match="free-text search needs"):
        search(cfg, "a man opens the door")
    status = index_status(cfg, None, train_complete=False)
    assert status["state"] == "not applicable" and status["complete"]


def test_the_bench_compares_like_with_like(trained, tmp_path):
    """bench/search.py's baseline (the search before the index: everything re-encoded per call) ranks as
    the index does, and its random index is one a Searcher reads."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_search", Path(__file__).parents[1] / "bench" / "search.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    cfg = load_config(trained)
    before = bench.search_by_reencoding(cfg, query_text("green"), top=len(EVENTS))
    after = search(cfg, query_text("green"), top=len(EVENTS))
    assert [v for v, _ in before] == [h.video_id for h in after]
    assert max(abs(s - h.score) for (_, s), h in zip(before, after)) <= FLOAT16_UNIT + 1e-6
    measured = bench.query_random_index(str(bench.random_index(tmp_path / "r", 50, 16).root), 16, 5, 2)
    assert measured["rescored_candidates_median"] >= 5 and measured["memory_after_queries"]["rss_mib"] > 0
