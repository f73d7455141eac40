"""What a run tells its user, against a real Prefect server: the one-line reason of a failure in the
terminal (tracebacks in the run's logs), stage INFO lines in the run's logs, an offline default
teacher failing once at the door, the metrics artifact's query count, help texts, no open_clip
warning about random weights that were asked for."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from configs.schema import load_config
from stages import train as tr
from stages.teacher import build_teacher_cache
from tests.test_extract import run_all_shards, write_dataset

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prefect_api():
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


def write_config(folder: Path, dataset: Path, name: str, teacher: dict | None) -> Path:
    extract = {"shard_size": 3, "fps": 1.0, "max_frames": 128, "device": "cpu", "batch_size": 4,
               "decode_workers": 1, "decode_timeout_s": 60, "shard_retries": 2, "visual": ["clip"]}
    if teacher is not None:  # None: the default teacher, ViT-B-32-quickgelu / openai
        extract["teacher"] = teacher
    body = {"name": name, "dataset": {"root": str(dataset)}, "store": str(folder / f"{name}.zarr"),
            "runs_dir": str(folder / "runs"), "extract": extract,
            "train": {"epochs": 2, "batch_videos": 4, "hidden": 32, "heads": 4, "device": "cpu", "lr": 1e-3}}
    path = folder / f"{name}.yaml"
    path.write_text(json.dumps(body))
    return path


def prvr(api_url: str, *args: str) -> subprocess.CompletedProcess:
    """`prvr ...` as a user runs it, in its own process, against the test server."""
    env = {**os.environ, "PREFECT_API_URL": api_url, "PREFECT_LOGGING_LEVEL": "INFO", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", "from prvr.cli import main; main()", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def ended(done: subprocess.CompletedProcess) -> str:
    """The line `prvr run` ends a failed run with."""
    return next(line for line in done.stderr.splitlines() if line.startswith("run ended "))


def newest_flow_run(name: str = "prvr"):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[name])),
                                     sort=FlowRunSort.START_TIME_DESC, limit=1)[0]


def logs_of(flow_run_ids: list) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=flow_run_ids)))


def task_run_names(flow_run_ids: list) -> list[str]:
    """Task runs of these flow runs, without the ones standing for subflow calls."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids)))
        subflow_parents = {r.parent_task_run_id for r in client.read_flow_runs()}
    return [t.name for t in runs if t.id not in subflow_parents]


def runs_under(parent) -> list:
    """The flow run and every subflow run it started."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs()
        tasks = {t.id: t for t in client.read_task_runs()}
    found, frontier = [parent], [parent.id]
    while frontier:
        children = [r for r in runs if r.parent_task_run_id in tasks
                    and tasks[r.parent_task_run_id].flow_run_id in frontier]
        found += children
        frontier = [r.id for r in children]
    return found


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("ds"), broken=True)


def test_offline_default_teacher_fails_once_at_the_door_with_a_one_line_reason(prefect_api, dataset, tmp_path):
    cfg_path = write_config(tmp_path, dataset, "offline", teacher=None)
    done = prvr(prefect_api, "run", str(cfg_path), "--stages", "extract")
    output = done.stdout + done.stderr
    assert done.returncode == 1, output[-3000:]
    weights = dataset / "weights" / "openai.bin"
    reason = (f"cannot download the weights of teacher ViT-B-32-quickgelu/openai (offline?): Failed to download "
              f"file (open_clip_pytorch_model.bin) for timm/vit_base_patch32_clip_224.openai. Download "
              f"https://huggingface.co/timm/vit_base_patch32_clip_224.openai/resolve/main/open_clip_pytorch_model.bin "
              f"on a machine with internet, put the weights file at {weights} and set "
              f"extract.teacher.pretrained: {weights}")
    assert ended(done).startswith("run ended Failed: ") and reason in ended(done), output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    # Once, before any shard: no shard task ran (nor retried).
    run = newest_flow_run()
    runs = runs_under(run)
    assert [r.name for r in runs if r.id != run.id] == [newest_flow_run("extract").name]
    assert task_run_names([r.id for r in runs]) == []
    # The traceback is in the run's logs, in the Prefect UI.
    assert any("Traceback" in log.message for log in logs_of([run.id]))


@pytest.fixture(scope="module")
def trained(dataset, tmp_path_factory) -> Path:
    """A run trained to the end on a real extracted store (3 of its 5 test videos failed extraction)."""
    folder = tmp_path_factory.mktemp("trained")
    cfg_path = write_config(folder, dataset, "done", teacher={"model": "prvr-tiny", "pretrained": None})
    cfg = load_config(cfg_path)
    run_all_shards(cfg)
    for split in ("train", "test"):
        build_teacher_cache(cfg, cfg.extract.teacher[0].key, split)
    tr.train(cfg)
    return cfg_path


def test_stage_info_lines_reach_the_run_logs_and_the_terminal(prefect_api, trained):
    done = prvr(prefect_api, "run", str(trained), "--stages", "train")
    assert done.returncode == 0, done.stderr[-3000:]
    line = "resuming done from epoch-0002.pt (epoch 2 done)"
    assert line in done.stderr
    logs = logs_of([r.id for r in runs_under(newest_flow_run())])
    found = [log for log in logs if log.name == "prvr.train" and log.message == line]
    assert len(found) == 1 and found[0].level == logging.INFO and found[0].task_run_id is not None


def untrained_config(trained: Path, folder: Path) -> Path:
    """Another run on the same complete store, never trained: its evaluation task fails."""
    body = json.loads(trained.read_text())
    body["name"] = "untrained"
    path = folder / "untrained.yaml"
    path.write_text(json.dumps(body))
    return path


def test_a_failed_run_shows_its_reason_in_one_line_without_tracebacks(prefect_api, trained, tmp_path):
    done = prvr(prefect_api, "run", str(untrained_config(trained, tmp_path)), "--stages", "evaluate")
    assert done.returncode == 1, done.stderr[-3000:]
    # The task, its subflow and the flow each logged the exception: one line each, no traceback.
    assert "Traceback" not in done.stdout + done.stderr, done.stderr[-5000:]
    assert "no trained model in" in ended(done) and "run the train stage first" in ended(done)
    logs = logs_of([r.id for r in runs_under(newest_flow_run())])
    assert sum("Traceback" in log.message for log in logs) >= 1  # kept in the run's logs


def test_verbose_shows_the_tracebacks_in_the_terminal(prefect_api, trained, tmp_path):
    done = prvr(prefect_api, "run", str(untrained_config(trained, tmp_path)), "--stages", "evaluate", "--verbose")
    assert done.returncode == 1 and "Traceback" in done.stderr, done.stderr[-3000:]
    assert "no trained model in" in ended(done)


def test_metrics_artifact_counts_queries_whose_video_failed(prefect_api, trained):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.model import evaluate_flow

    cfg = load_config(trained)
    evaluate_flow(cfg)
    with get_client(sync_client=True) as client:
        key = ArtifactFilterKey(any_=["done-metrics"])
        (artifact,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=key))
    assert artifact.description == "done: test, queries 5 (3 whose video is missing from the store, counted as misses)"


def test_help_texts(monkeypatch):
    from flows.pipeline import ALL_STAGES
    from prvr.cli import app

    monkeypatch.setenv("COLUMNS", "250")  # one line per option
    runner = CliRunner()
    run_help = runner.invoke(app, ["run", "--help"]).output
    assert f"a stage to run, repeatable: {', '.join(ALL_STAGES)}" in run_help
    assert "--verbose" in run_help
    stack_status = runner.invoke(app, ["stack", "status", "--help"]).output
    assert "Whether the local stack's server answers" in stack_status
    for command in ("up", "down", "status", "snapshot"):
        shown = runner.invoke(app, ["stack", command, "--help"]).output
        assert "port of the local Prefect server" in shown, command
    assert "Whether the local stack's server answers" in runner.invoke(app, ["stack", "--help"]).output


def test_no_random_weights_warning_when_random_weights_were_asked_for(caplog):
    from models.clip import ClipEncoder

    with caplog.at_level(logging.WARNING):
        ClipEncoder("prvr-tiny", None, seed=123)
        logging.warning("No pretrained weights loaded for model 'elsewhere'.")  # not ours: still shown
    assert [r.getMessage() for r in caplog.records] == ["No pretrained weights loaded for model 'elsewhere'."]
