"""Damage and shrinkage on a real store, through the real extract flow and `prvr status`.

- a manifest that shrank never deletes committed shards unless extract.prune_shards says so;
- a chunk deleted or corrupted on disk is found (sizes on every run, checksums with --verify),
  named with its shard and array, and redone by the next run;
- a torn text/<split>/zarr.json reads as not committed and is redone;
- `prvr status` shows every stage, exits 1 until the whole pipeline is complete and current,
  and prints whole lines when piped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from configs.schema import load_config
from storage.features import FeatureStore, StoreError, shard_name
from tests.test_extract import write_config, write_dataset



@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("ds"), broken=False)  # v0-v2 train, v3-v4 test


def task_runs_of(flow_run_id) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name: r.state_type.value for r in runs}


def run_extract(path: Path, **overrides):
    from flows.ingest import ingest_flow_for

    cfg = load_config(path, overrides)
    state = ingest_flow_for(cfg)(cfg, return_state=True)
    return state, task_runs_of(state.state_details.flow_run_id)


def status(path: Path, *args: str):
    from prvr.cli import app

    return CliRunner().invoke(app, ["status", str(path), *args])


def extracted(tmp_path: Path, root: Path, **extract) -> tuple[Path, str]:
    """A store of 3 committed shards (2 + 2 + 1 videos) and both text splits; (config path, teacher array)."""
    path = write_config(tmp_path, root, str(tmp_path / "s.zarr"), shard_size=2, **extract)
    state, _ = run_extract(path)
    assert state.is_completed(), state.message
    return path, f"teacher.{load_config(path).extract.teacher[0].key}"


def chunk_file(store: str, shard: int, array: str) -> Path:
    return Path(store) / "videos" / shard_name(shard) / array / "c" / "0" / "0"


@pytest.mark.slow
def test_a_shrunken_manifest_keeps_committed_shards_until_pruning_is_asked_for(prefect_server, tmp_path):
    root = write_dataset(tmp_path / "ds", broken=False)
    path, _ = extracted(tmp_path, root)
    store = load_config(path).store
    kept = {"v0", "v1"}
    for name in ("videos.jsonl", "queries.jsonl"):
        lines = (root / name).read_text().splitlines()
        (root / name).write_text("".join(line + "\n" for line in lines if json.loads(line)["video_id"] in kept))

    state, runs = run_extract(path)
    assert state.is_failed()
    assert "2 committed shard(s) beyond the 1 shard(s) of the current manifest: [1, 2]" in state.message
    assert "--set extract.prune_shards=true" in state.message
    assert runs == {}  # refused before any work
    assert [FeatureStore(store).shard_status(i, None).state for i in range(3)] == ["committed"] * 3
    out = status(path, "--stages", "extract")
    assert out.exit_code == 1 and "committed shards beyond the manifest: [1, 2]" in out.output, out.output

    state, runs = run_extract(path, **{"extract.prune_shards": True})
    assert state.is_completed(), state.message
    assert "extract-shard-00000" not in runs  # shard 0 (v0, v1) is unchanged: kept
    assert FeatureStore(store).shard_indices() == [0]
    assert status(path, "--stages", "extract").exit_code == 0


@pytest.mark.slow
def test_a_deleted_chunk_is_named_refused_by_readers_and_redone(prefect_server, tmp_path, dataset):
    path, teacher = extracted(tmp_path, dataset)
    store = load_config(path).store
    before = FeatureStore(store).video_frames("v2", teacher)[0]
    chunk_file(store, 1, teacher).unlink()

    with pytest.raises(StoreError, match=f"shard-00001 is damaged: {teacher}: chunk c/0/0 missing"):
        FeatureStore(store).video_frames("v2", teacher)  # not a frame of zeros
    out = status(path, "--stages", "extract")
    assert out.exit_code == 1
    assert "corrupt" in out.output and f"shard-00001 is damaged: {teacher}: chunk c/0/0 missing" in out.output

    state, runs = run_extract(path)
    assert state.is_completed(), state.message
    assert runs == {"extract-shard-00001": "COMPLETED"}
    np.testing.assert_array_equal(FeatureStore(store).video_frames("v2", teacher)[0], before)
    assert status(path, "--stages", "extract", "--verify").exit_code == 0


@pytest.mark.slow
def test_a_chunk_corrupted_in_place_is_named_found_by_verify_and_redone(prefect_server, tmp_path, dataset):
    path, teacher = extracted(tmp_path, dataset)
    store = load_config(path).store
    before = FeatureStore(store).video_frames("v0", teacher)[0]
    chunk = chunk_file(store, 0, teacher)
    data = bytearray(chunk.read_bytes())
    data[:8] = bytes(b ^ 0xFF for b in data[:8])  # same size, damaged zstd frame header
    chunk.write_bytes(bytes(data))

    with pytest.raises(StoreError, match=f"shard-00000, array '{teacher}'.*cannot read the stored data"):
        FeatureStore(store).video_frames("v0", teacher)
    frames, _, _, _ = FeatureStore(store).dask_frames(teacher)
    with pytest.raises(StoreError, match=f"shard-00000, array '{teacher}'"):
        frames.compute()
    out = status(path, "--stages", "extract", "--verify")
    assert out.exit_code == 1
    assert f"shard-00000 is damaged: {teacher}: chunk c/0/0 checksum differs from the commit's" in out.output

    # A run checks sizes by default (no read of the store): extract.verify=checksums finds and redoes it.
    state, runs = run_extract(path)
    assert state.is_completed() and runs == {}
    state, runs = run_extract(path, **{"extract.verify": "checksums"})
    assert state.is_completed(), state.message
    assert runs == {"extract-shard-00000": "COMPLETED"}
    np.testing.assert_array_equal(FeatureStore(store).video_frames("v0", teacher)[0], before)
    assert status(path, "--stages", "extract", "--verify").exit_code == 0


@pytest.mark.slow
def test_a_torn_text_split_metadata_reads_as_not_committed_and_is_redone(prefect_server, tmp_path, dataset):
    path, _ = extracted(tmp_path, dataset)
    store = load_config(path).store
    before = FeatureStore(store).text("train").texts
    meta = Path(store) / "text" / "train" / "zarr.json"
    meta.write_text(meta.read_text()[:40])  # as if killed mid-write

    out = status(path)
    assert out.exception is None or isinstance(out.exception, SystemExit), out.exception
    assert out.exit_code == 1 and "train missing (unreadable metadata: JSONDecodeError" in out.output, out.output
    assert FeatureStore(store).text_status("train", None) == "missing"

    state, runs = run_extract(path)
    assert state.is_completed(), state.message
    assert runs == {"extract-text-train": "COMPLETED"}
    assert FeatureStore(store).text("train").texts == before
    assert status(path, "--stages", "extract").exit_code == 0


def full_config(tmp_path: Path, root: Path) -> Path:
    path = write_config(tmp_path, root, str(tmp_path / "s.zarr"), shard_size=2)
    body = json.loads(path.read_text())
    body.update({"runs_dir": str(tmp_path / "runs"),
                 "train": {"epochs": 2, "batch_videos": 2, "hidden": 32, "heads": 4, "device": "cpu", "seed": 0},
                 "evaluate": {"split": "test"}})
    path.write_text(json.dumps(body))
    return path


@pytest.mark.slow
def test_status_shows_every_stage_and_exits_1_until_all_are_complete(prefect_server, tmp_path, dataset, monkeypatch):
    from stages.evaluate import evaluate_run
    from stages.index import build_index
    from stages.teacher import build_teacher_cache
    from stages.train import train

    path = full_config(tmp_path, dataset)
    monkeypatch.setenv("PRVR_FAIL_SHARDS", "1")
    state, _ = run_extract(path)
    assert state.is_failed()
    out = status(path)
    assert out.exit_code == 1
    error = "ShardFailed: shard 1 failed on purpose (PRVR_FAIL_SHARDS=1)"
    assert any(error in line for line in out.output.splitlines()), out.output  # whole, on one line
    committed_at = FeatureStore(load_config(path).store).shard_status(0, None).committed_at
    assert committed_at in out.output  # not cut to fit 80 columns
    report = json.loads(status(path, "--json").output)
    assert {k: v["state"] for k, v in report["stages"].items()} == {
        "extract": "incomplete", "teacher": "incomplete", "train": "missing", "evaluate": "missing",
        "index": "missing"}

    monkeypatch.delenv("PRVR_FAIL_SHARDS")
    assert run_extract(path)[0].is_completed()
    assert status(path, "--stages", "extract").exit_code == 0
    out = status(path)
    assert out.exit_code == 1 and "incomplete: teacher, train, evaluate, index" in out.output, out.output

    cfg = load_config(path)
    for split in ("train", "test"):
        build_teacher_cache(cfg, cfg.extract.teacher[0].key, split)
    train(cfg)
    assert status(path, "--stages", "teacher", "--stages", "train").exit_code == 0
    assert status(path).exit_code == 1  # not evaluated yet
    evaluate_run(cfg)
    assert status(path).exit_code == 1  # no search index yet
    build_index(cfg)
    out = status(path)
    assert out.exit_code == 0, out.output
    report = json.loads(status(path, "--json").output)
    assert report["complete"] and all(v["complete"] for v in report["stages"].values())
    assert "SumR" in report["stages"]["evaluate"]["summary"]

    # Another training setting: the checkpoints and metrics are no longer current.
    report = json.loads(status(path, "--json", "--set", "train.lr=0.01").output)
    assert not report["complete"]
    assert report["stages"]["train"]["state"] == "stale" and report["stages"]["evaluate"]["state"] == "stale"
    assert report["stages"]["teacher"]["complete"]
    # Another evaluation split: only the evaluation is out of date.
    out = status(path, "--json", "--set", "evaluate.split=train")
    report = json.loads(out.output)
    assert out.exit_code == 1 and report["stages"]["train"]["complete"]
    assert report["stages"]["evaluate"]["state"] == "stale"


def test_a_release_whose_plan_shrank_keeps_committed_shards_until_pruned(tmp_path):
    from stages import release as rel
    from storage.features import ShardsBeyondPlan
    from tests.release_fixtures import make_release

    tiny = make_release(tmp_path / "release")
    location = str(tmp_path / "store.zarr")

    def plan(shard_size: int):
        return rel.open_release(rel.ImportSettings(root=tiny.folder, collection=tiny.collection, feature="i3d_resnet",
                                                   shard_size=shard_size, max_frames=16, max_tokens=12))

    rel.run_import(plan(5), location)
    shards = FeatureStore(location).committed_shards()
    bigger = plan(100)  # one shard now
    with pytest.raises(ShardsBeyondPlan, match=r"beyond the 1 shard\(s\).*rerun with --prune-shards") as refused:
        rel.run_import(bigger, location)
    assert refused.value.shards == shards[1:]
    assert FeatureStore(location).committed_shards() == shards
    assert not rel.import_status(bigger, FeatureStore(location)).complete
    summary = rel.run_import(bigger, location, prune=True)
    assert summary["complete"] and summary["dropped"] == shards[1:]
    assert FeatureStore(location).committed_shards() == [0]
