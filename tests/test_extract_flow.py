"""The extract flow against a real Prefect server: failed shards, reruns of only those, staleness."""

from __future__ import annotations

import pytest

from configs.schema import load_config
from storage.features import FeatureStore
from tests.test_extract import write_config, write_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_server():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def task_runs_of(flow_run_id) -> dict[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {r.name: r.state_type.value for r in runs}


def run_extract(cfg):
    from flows.ingest import ingest_flow_for

    state = ingest_flow_for(cfg)(cfg, return_state=True)
    return state, task_runs_of(state.state_details.flow_run_id)


def test_failed_shard_then_rerun_only_that_shard(prefect_server, tmp_path, monkeypatch):
    root = write_dataset(tmp_path / "ds", broken=False)  # 5 videos -> shards 0, 1 (3 + 2)
    cfg = load_config(write_config(tmp_path, root, str(tmp_path / "s.zarr"), shard_size=2))  # shards 0, 1, 2

    monkeypatch.setenv("PRVR_FAIL_SHARDS", "1")
    state, runs = run_extract(cfg)
    assert state.is_failed()
    assert "shard 1 (failed" in state.message and "PRVR_FAIL_SHARDS" in state.message
    assert runs["extract-shard-00001"] == "FAILED"
    assert runs["extract-shard-00000"] == runs["extract-shard-00002"] == "COMPLETED"
    store = FeatureStore(cfg.store)
    before = {i: store.shard_status(i, None) for i in range(3)}
    assert [before[i].state for i in range(3)] == ["committed", "failed", "committed"]

    monkeypatch.delenv("PRVR_FAIL_SHARDS")
    state, runs = run_extract(cfg)
    assert state.is_completed(), state.message
    assert runs == {"extract-shard-00001": "COMPLETED"}  # nothing else ran, not even text
    after = {i: FeatureStore(cfg.store).shard_status(i, None) for i in range(3)}
    assert after[0].committed_at == before[0].committed_at and after[2].committed_at == before[2].committed_at
    assert all(s.state == "committed" for s in after.values())

    # Nothing to do on a third run.
    state, runs = run_extract(cfg)
    assert state.is_completed() and runs == {}

    # A changed extraction setting makes every shard stale; the text does not depend on fps.
    faster = load_config(write_config(tmp_path, root, str(tmp_path / "s.zarr"), shard_size=2, fps=2.0))
    assert all(FeatureStore(cfg.store).shard_status(i, None).state == "committed" for i in range(3))
    state, runs = run_extract(faster)
    assert state.is_completed()
    assert sorted(runs) == ["extract-shard-00000", "extract-shard-00001", "extract-shard-00002"]
    frames, times = FeatureStore(cfg.store).video_frames("v0", "visual.clip")
    assert len(times) == 12  # 6 s at 2 fps


def test_artifacts_show_progress_and_shard_table(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    root = write_dataset(tmp_path / "ds")
    cfg = load_config(write_config(tmp_path, root, str(tmp_path / "s.zarr")))
    state, _ = run_extract(cfg)
    assert state.is_completed(), state.message
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    by_key = {a.key.removeprefix(f"{cfg.name}-"): a for a in arts}  # keys carry the run's name
    assert all(a.key.startswith(f"{cfg.name}-") for a in arts)
    assert by_key["extract-progress"].type == "progress" and float(by_key["extract-progress"].data) == 100.0
    table = by_key["extract-shards"]
    assert table.type == "table"
    assert "bad_trunc" in str(table.data) and "committed" in str(table.data)
    result = state.result()
    assert set(result["videos_left_out"]) == {"bad_empty", "bad_trunc", "bad_text"}
