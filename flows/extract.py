"""The `extract` subflow: one Prefect task per shard that is not committed under its fingerprint."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import as_completed

from configs.schema import RunConfig
from flows.progress import artifact_key
from flows import runners
from prvr.errors import UserError
from stages import extract as ex
from stages.manifest import load_manifest
from stages.weights import fetch_teacher_weights
from storage.features import FeatureStore
from storage.lease import StoreLease


class ExtractionIncomplete(UserError, RuntimeError):
    """Raised so the flow run ends Failed while any shard is missing."""


@task(name="extract-shard", task_run_name="extract-shard-{plan.index:05d}", retry_delay_seconds=2)
def extract_shard_task(config: RunConfig, plan: ex.ShardPlan, fp: str, lease_token: str) -> dict:
    logger = get_run_logger()
    logged = [-1]  # the last tenth of the shard logged

    def progress(fraction: float, message: str) -> None:
        if int(fraction * 10) > logged[0]:  # a line per tenth of the shard, and at the end
            logged[0] = int(fraction * 10)
            logger.info("shard %d: %s", plan.index, message)

    try:
        result = ex.extract_shard(plan, config, fp, progress, lease_token=lease_token)
    except Exception as e:
        FeatureStore(config.store, mode="a").record_shard_failure(plan.index, f"{type(e).__name__}: {e}")
        raise
    if result.failed:
        logger.warning("shard %d: %d video(s) left out: %s", plan.index, len(result.failed), result.failed)
    logger.info("shard %d committed: %d videos, %d frames", plan.index, result.videos, result.frames)
    return {"shard": result.index, "videos": result.videos, "frames": result.frames, "failed": result.failed}


@task(name="extract-text", task_run_name="extract-text-{split}")
def extract_text_task(config: RunConfig, split: str, fp: str, lease_token: str) -> int:
    manifest = load_manifest(config.dataset.root)
    n = ex.extract_text(manifest, split, config, fp, lease_token=lease_token)
    get_run_logger().info("text %s committed: %d queries", split, n)
    return n


def _table_rows(status: dict, ran: set[int]) -> list[dict]:
    return [{
        "shard": r["shard"], "state": r["state"], "this_run": "ran" if r["shard"] in ran else "skipped (committed)",
        "videos": r["videos_in_manifest"], "stored": r["videos"], "committed_at": r["committed_at"] or "",
        "failed_videos": "; ".join(f"{k}: {v}" for k, v in r["failed_videos"].items()),
        "error": (r["error"] or r["note"] or "")[:300],
    } for r in status["shards"]]


@flow(name="extract", log_prints=True)
def extract_flow(config: RunConfig) -> dict:
    # One writer per store: this run holds the store's lease (heartbeat in this process) until it ends;
    # shard tasks, wherever they run, only check that it is still this run's before they write.
    with StoreLease(config.store, purpose=f"extract stage of run {config.name}") as lease:
        if lease.took_over:
            get_run_logger().warning("took over the store's lease from %s: its owner is gone",
                                     lease.took_over.owner)
        return _extract(config, lease.token)


def _extract(config: RunConfig, lease_token: str) -> dict:
    logger = get_run_logger()
    manifest = load_manifest(config.dataset.root)
    store = FeatureStore(config.store, mode="a", lease_token=lease_token)
    work = ex.begin_extraction(config, manifest, store)
    plans, fps, todo = work.plans, work.fingerprints, work.shards
    if work.dropped:
        logger.warning("removed shard groups %s beyond the current manifest%s", work.dropped,
                       " (extract.prune_shards is true)" if config.extract.prune_shards else " (none was committed)")
    for index, problems in work.damaged.items():
        logger.warning("shard %d is damaged and is redone: %s", index, "; ".join(problems[:5]))
    text_todo = list(work.texts)
    logger.info("%d shards, %d to extract (%s); text splits to encode: %s", len(plans), len(todo),
                [p.index for p in todo], text_todo)
    if todo or text_todo:  # once, here: offline, every shard and retry would fail the same way
        fetch_teacher_weights(config)

    progress_id = create_progress_artifact(0.0, key=artifact_key(config, "extract-progress"),
                                           description=f"shards of {config.name}")
    runner = extract_shard_task.with_options(retries=config.extract.shard_retries)
    gpu = runners.gpu_resources(config)
    if gpu:
        logger.info("each extraction task holds Dask resources %s", gpu)
    with runners.holding(gpu):  # one task per GPU on Dask workers that declare one
        futures = [runner.submit(config, p, fps[p.index], lease_token) for p in todo]
        shard_of = {id(f): p.index for f, p in zip(futures, todo)}
        futures += [extract_text_task.submit(config, s, fp, lease_token) for s, fp in work.texts.items()]
    for finished, future in enumerate(as_completed(futures), 1):
        lost = runners.settle_lost(future)
        if lost:  # its workers died: the task could not say so itself
            logger.error("%s: %s", f"shard {shard_of[id(future)]}" if id(future) in shard_of else "text", lost)
            if id(future) in shard_of:
                store.record_shard_failure(shard_of[id(future)], lost)
        update_progress_artifact(progress_id, 100.0 * finished / max(1, len(futures)))
    status = ex.extraction_status(config, manifest, store, verify="sizes")
    rows = _table_rows(status, {p.index for p in todo})
    create_table_artifact(rows, key=artifact_key(config, "extract-shards"),
                          description=f"shard states of {config.name}")
    update_progress_artifact(progress_id, 100.0)

    missing = [r for r in rows if r["state"] != "committed"]
    text_missing = [s for s, state in status["text"].items() if state != "committed"]
    if missing or text_missing:
        detail = "; ".join(f"shard {r['shard']} ({r['state']}: {r['error'] or r['note'] or 'no error recorded'})"
                           for r in missing)
        if text_missing:
            detail += f"; text splits not committed: {text_missing}"
        raise ExtractionIncomplete(f"{len(missing)} of {len(plans)} shards not committed: {detail}")
    store.consolidate()
    left_out = {vid: err for r in status["shards"] for vid, err in r["failed_videos"].items()}
    return {"shards": len(plans), "extracted": len(todo), "videos_left_out": left_out}


def extract_flow_for(config: RunConfig):
    # threads: shards one at a time in this process (they share its decoder pool and models);
    # dask / local-dask: one shard per worker thread, each worker process with its own pool and models.
    return extract_flow.with_options(task_runner=runners.task_runner_for(config))
