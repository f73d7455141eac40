"""The Prefect UI as the place to watch a run, checked in a real browser: a local stack
(`prvr stack up`), the `prvr/full` deployment on a few tiny real videos, then headless
Chromium on the flow run's pages: subflows, shard tasks, progress and table artifacts, the
metrics. Full-page screenshots land in the run's folder.

Needs the system Chromium (`apt-get install -y chromium`, done by `make install`) and
Playwright (the dev extra). Missing either fails this test; it never skips."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from prvr.ui_snapshots import (
    BrowserMissing, Snapshot, chromium_path, is_png, iter_missing, newest_flow_run, plan_pages, take_snapshots,
    wait_for_final_logs,
)
from storage.runs import RunPaths
from tests.test_e2e import base_env, free_port, prvr
from synth.test_cards import make_video

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent

# (video, seconds, split): the longest video is a training one (the student's positions
# are sized by the training split); a val split, so training selects on val SumR.
VIDEOS = [("v0", 6.0, "train"), ("v1", 5.0, "train"), ("v2", 4.0, "train"), ("v3", 4.0, "val"),
          ("v4", 3.0, "test"), ("v5", 5.0, "test")]
SHARD_SIZE = 2
# Log lines each subflow's page must show, beyond what plan_pages expects: the progress of each stage.
PROGRESS_LOGS = {
    "prvr-extract": ("shard 0 committed",),
    # The query x video matrix only for the evaluated split; train gets its positive frames only.
    "prvr-teacher": ("teacher prvr-tiny-random / train: positive-frame scores",
                     "teacher prvr-tiny-random / test: query x video scores",
                     "teacher prvr-tiny-random / test: committed in"),
    "prvr-train": ("epoch 1: loss",),
    "prvr-evaluate": ("evaluate ui: ranking 2 queries: DL-DKD student (fused)",
                      "evaluate ui: DL-DKD student (fused) on test: SumR"),
}


def write_tiny_world(root: Path) -> Path:
    videos, queries = [], []
    for i, (vid, seconds, split) in enumerate(VIDEOS):
        make_video(root / "videos" / f"{vid}.mp4", seconds=seconds, pattern=("testsrc2", "testsrc")[i % 2], seed=i)
        videos.append({"video_id": vid, "path": f"videos/{vid}.mp4", "split": split})
        queries.append({"query_id": f"q-{vid}", "video_id": vid, "text": f"a moving test card number {i}",
                        "split": split, "moment": [0.5, 2.0]})
    (root / "videos.jsonl").write_text("".join(json.dumps(v) + "\n" for v in videos))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    return root


def require_browser() -> str:
    """The browser and its driver, or a failure that says how to install them (never a skip)."""
    try:
        executable = chromium_path()
        import playwright.sync_api  # noqa: F401
    except BrowserMissing as e:
        pytest.fail(str(e), pytrace=False)
    except ImportError as e:
        pytest.fail(f"Playwright is missing ({e}); install the dev extra: .venv/bin/pip install -e '.[dev]'",
                    pytrace=False)
    return executable


def run_full_deployment(api_url: str, config_path: Path, timeout_s: float) -> str:
    """Start `prvr/full` through the API, wait for a final state; the flow run id."""
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(api_url) as client:
        deployment = client.read_deployment_by_name("prvr/full")
        run = client.create_flow_run_from_deployment(deployment.id, parameters={"config_path": str(config_path)})
        deadline = time.monotonic() + timeout_s
        while True:
            state = client.read_flow_run(run.id).state
            if state is not None and state.is_final():
                assert state.is_completed(), f"prvr/full ended {state.name}: {state.message}"
                return str(run.id)
            assert time.monotonic() < deadline, f"prvr/full not finished after {timeout_s:.0f}s ({state})"
            time.sleep(2.0)  # polling the API for the run's state; the browser part waits on elements


def by_name(shots: list[Snapshot]) -> dict[str, Snapshot]:
    return {s.page.name: s for s in shots}


@pytest.mark.timeout(1200)
def test_prefect_ui_shows_the_pipeline_run(tmp_path):
    require_browser()
    world = write_tiny_world(tmp_path / "world")
    runs_dir = tmp_path / "runs"
    cfg = tmp_path / "ui.yaml"
    cfg.write_text(json.dumps({
        "name": "ui", "dataset": {"root": str(world)}, "store": str(tmp_path / "features.zarr"),
        "runs_dir": str(runs_dir),
        "extract": {"shard_size": SHARD_SIZE, "device": "cpu", "decode_workers": 1, "batch_size": 4,
                    "teacher": {"model": "prvr-tiny", "pretrained": None}},
        "train": {"epochs": 2, "batch_videos": 4, "hidden": 32, "device": "cpu"},
    }))
    port = free_port()
    # INFO: the flow runs' logs are part of what the UI shows (conftest quiets this process to WARNING).
    env = {**base_env(tmp_path), "PRVR_STACK_DIR": str(tmp_path / "stack"), "PRVR_PREFECT_PORT": str(port),
           "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_LOGGING_LEVEL": "INFO"}
    api_url, ui_url = f"http://127.0.0.1:{port}/api", f"http://127.0.0.1:{port}"
    shots_dir = RunPaths.of(runs_dir, "ui").root / "screenshots"
    try:
        prvr(["stack", "up"], env, timeout=300)
        flow_run_id = run_full_deployment(api_url, cfg, timeout_s=600)
        # `prvr stack snapshot` picks the newest top-level pipeline run by default: this one.
        assert newest_flow_run(api_url, "prvr") == str(flow_run_id)
        started = time.perf_counter()
        assert wait_for_final_logs(api_url, flow_run_id), "the run's closing log line never reached the API"
        pages = [replace(p, expect=p.expect + PROGRESS_LOGS.get(p.name, ())) for p in plan_pages(api_url, flow_run_id)]
        assert {p.name for p in pages} >= set(PROGRESS_LOGS)
        shots = take_snapshots(ui_url, pages, shots_dir, timeout_s=60)
        print(f"{len(shots)} pages in {time.perf_counter() - started:.0f}s -> {shots_dir}")
    finally:
        logs = "\n".join(p.read_text()[-3000:] for p in (tmp_path / "stack").glob("*.log"))
        prvr(["stack", "down"], env, check=False)

    # Everything the API says the run holds (subflows, task runs, artifacts, table columns) was on screen.
    missing = list(iter_missing(shots))
    assert not missing, "\n".join(missing) + "\n" + logs[-3000:]
    pages = by_name(shots)
    for name in ("prvr", *PROGRESS_LOGS):
        assert len(pages[name].page.expect) >= 3, pages[name].page  # name, flow and the first log line
    subflows = pages["prvr-subflows"].text
    for name in ("extract", "teacher", "train", "evaluate"):
        assert name in subflows, subflows
    n_shards = -(-len(VIDEOS) // SHARD_SIZE)
    tasks = pages["prvr-extract-tasks"].text
    for i in range(n_shards):
        assert f"extract-shard-{i:05d}" in tasks, tasks
    for split in ("train", "val", "test"):
        assert f"extract-text-{split}" in tasks and f"teacher-cache-prvr-tiny-random-{split}" in \
            pages["prvr-teacher-tasks"].text
    artifacts = {flow: pages[f"prvr-{flow}-artifacts"].text for flow in ("extract", "teacher", "train", "evaluate")}
    # Artifact keys carry the run's name ("ui"), so each run keeps its own history per key.
    for flow, keys in {"extract": ("extract-progress", "extract-shards"), "teacher": ("teacher-progress",),
                       "train": ("train-progress", "train-history"),
                       "evaluate": ("evaluate-progress", "metrics", "report")}.items():
        for key in keys:
            assert f"ui-{key}" in artifacts[flow], (flow, key, artifacts[flow])
    # The progress artifacts end at 100% with their last step; the metrics table shows SumR per method.
    progress = [s for name, s in pages.items() if name.startswith("artifact-") and "-progress-" in name]
    assert {s.page.expect[0] for s in progress} >= {"ui-extract-progress", "ui-teacher-progress",
                                                     "ui-train-progress", "ui-evaluate-progress"}
    for s in progress:
        assert "Progress: 100%" in s.text, (s.page.name, s.text[:500])
    metrics = next(s for name, s in pages.items() if name.startswith("artifact-ui-metrics-")).text
    saved = json.loads((RunPaths.of(runs_dir, "ui").metrics).read_text())
    fused = saved["methods"]["DL-DKD student (fused)"]["SumR"]
    assert "SumR" in metrics and "DL-DKD student (fused)" in metrics, metrics
    assert f"{fused:g}" in metrics, (fused, metrics)

    # Full-page PNGs in the run's folder, one per page.
    files = sorted(shots_dir.glob("*.png"))
    assert len(files) == len(shots) >= 15
    for f in files:
        assert is_png(f), f"{f} is not a PNG of at least 10 kB ({f.stat().st_size} bytes)"
    assert os.path.commonpath([shots_dir, runs_dir]) == str(runs_dir)
