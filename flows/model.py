"""Subflows downstream of extraction: teacher cache, student training, evaluation."""

from __future__ import annotations

import os
import socket

from prefect import flow, get_run_logger, task
from prefect.futures import wait
from prefect.artifacts import (
    create_markdown_artifact, create_progress_artifact, create_table_artifact, update_progress_artifact,
)

from prefect.task_runners import ThreadPoolTaskRunner

from configs.schema import RunConfig
from flows.progress import ProgressArtifact, artifact_key
from flows import runners
from flows.runners import dask_client
from prvr.errors import UserError
from stages import evaluate as ev
from stages import teacher as tc
from stages import train as tr
from stages.sources import source_for, stored_teachers
from storage.features import FeatureStore, StoreError


class StoreIncomplete(UserError, RuntimeError):
    """Downstream stages never start on a partial feature store."""


def require_complete_store(config: RunConfig) -> None:
    try:
        store = FeatureStore(config.store)
    except StoreError:
        store = None
    status = source_for(config).status(store)
    if not status.complete:
        raise StoreIncomplete(f"the feature store {config.store} is incomplete (shards not committed: "
                              f"{status.missing_shards}; text: {status.text}); run the extract stage first")


@task(name="teacher-cache", task_run_name="teacher-cache-{teacher}-{split}", retries=1)
def teacher_cache_task(config: RunConfig, teacher: str, split: str) -> dict:
    progress = ProgressArtifact(artifact_key(config, "teacher-progress"), f"teacher {teacher} / {split}")
    # runner dask / local-dask: the blocks run on that cluster's workers; a kept cache starts no cluster
    result = tc.build_teacher_cache(config, teacher, split, progress=progress, compute_in=lambda: dask_client(config))
    get_run_logger().info("teacher %s / %s: %s", teacher, split, "unchanged, skipped" if result["skipped"] else
                          f"{result['queries']} x {result['videos']} in {result['seconds']:.1f}s")
    return result


# One cache at a time: dask parallelises inside each, and the caches share the root metadata.
@flow(name="teacher", task_runner=ThreadPoolTaskRunner(max_workers=1))
def teacher_flow(config: RunConfig) -> list[dict]:
    require_complete_store(config)
    splits = source_for(config).splits()
    teachers = stored_teachers(config, FeatureStore(config.store))
    missing = [k for k in tc.teacher_keys(config) if k not in teachers]
    if missing:  # a release imported without its teacher files; training says what to do
        get_run_logger().warning("the store holds no frames of teacher(s) %s: no cache for them", missing)
    futures = [teacher_cache_task.submit(config, key, split) for key in teachers for split in splits]
    results = [f.result() for f in futures]
    FeatureStore(config.store, mode="a").consolidate()
    return results


@task(name="train-student", retries=1)
def train_task(config: RunConfig) -> dict:
    logger = get_run_logger()
    progress_id = create_progress_artifact(0.0, key=artifact_key(config, "train-progress"),
                                           description=f"epochs of {config.name}")

    def on_epoch(record: dict) -> None:
        done = 100.0 if record["early_stopped"] else 100.0 * (record["epoch"] + 1) / record["epochs"]
        update_progress_artifact(progress_id, done, description=f"epoch {record['epoch']}: val SumR "
                                 f"{record['val_SumR']:.1f} (best epoch {record['best_epoch']})")
        logger.info("epoch %d: loss %.4f, distill weight %.4f, val SumR %.2f", record["epoch"], record["loss"],
                    record["distill_weight"], record["val_SumR"])

    summary = tr.train(config, on_epoch=on_epoch)
    update_progress_artifact(progress_id, 100.0)
    rows = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in summary["history"]]
    create_table_artifact(rows, key=artifact_key(config, "train-history"),
                          description=f"per-epoch training of {config.name}")
    return {**{k: v for k, v in summary.items() if k != "history"}, "ran_on": ran_on()}


def ran_on() -> str:
    """host:pid of the process a task ran in (the flow's own, or a Dask worker's)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def on_the_runner(config: RunConfig, task_fn, device: str) -> dict:
    """Run one task on the flow's task runner, holding a GPU on Dask workers that declare one
    when `device` is (or may be) CUDA: training and evaluation go where extraction shards go."""
    with runners.holding(runners.gpu_resources(config, device)):
        future = task_fn.submit(config)
    wait([future])
    lost = runners.settle_lost(future)  # its workers died: the task could not say so itself
    if lost:
        raise RuntimeError(f"{task_fn.name} of run {config.name}: {lost}; run it again: training resumes from "
                           f"the newest checkpoint in {config.runs_dir}, on any worker that reaches it")
    return future.result()


@flow(name="train")
def train_flow(config: RunConfig) -> dict:
    require_complete_store(config)
    return on_the_runner(config, train_task, config.train.device)


def train_flow_for(config: RunConfig):
    """The train flow on the config's task runner (runner: dask / local-dask: a cluster worker)."""
    return train_flow.with_options(task_runner=runners.task_runner_for(config, config.train.device))


@task(name="evaluate-student")
def evaluate_task(config: RunConfig) -> dict:
    from pathlib import Path

    from stages.report import metrics_table_rows, queries_text, report_without_images

    progress = ProgressArtifact(artifact_key(config, "evaluate-progress"), f"evaluate {config.name}")
    summary = ev.evaluate_run(config, progress=progress)
    create_table_artifact(metrics_table_rows(summary), key=artifact_key(config, "metrics"),
                          description=f"{config.name}: {summary['split']}, queries {queries_text(summary)}")
    report = summary["files"].get("report")
    if report:
        text = report_without_images(Path(report).read_text(encoding="utf-8"), Path(report).parent)
        create_markdown_artifact(text, key=artifact_key(config, "report"), description=f"report of {config.name}")
    return {**summary, "ran_on": ran_on()}


@flow(name="evaluate")
def evaluate_flow(config: RunConfig) -> dict:
    require_complete_store(config)
    return on_the_runner(config, evaluate_task, config.train.device)


def evaluate_flow_for(config: RunConfig):
    """The evaluate flow on the config's task runner (runner: dask / local-dask: a cluster worker)."""
    return evaluate_flow.with_options(task_runner=runners.task_runner_for(config, config.train.device))
