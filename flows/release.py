"""The `import-release` subflow: the extract stage of a config whose dataset is a published release.

One Prefect task per shard not committed under its fingerprint, one per text split; a rerun
after a failure imports only what is missing.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from configs.schema import RunConfig
from flows.progress import artifact_key
from prvr.errors import UserError
from stages import release as rel
from storage.features import FeatureStore
from storage.lease import StoreLease


class ImportIncomplete(UserError, RuntimeError):
    """Raised so the flow run ends Failed while any shard or text split is missing."""


def _plan(config: RunConfig) -> rel.ReleasePlan:
    # Read once per process (the door check already read it in the flow's process).
    return rel.cached_plan(rel.ImportSettings.from_config(config))


@task(name="import-shard", task_run_name="import-shard-{index:05d}", retry_delay_seconds=2)
def import_shard_task(config: RunConfig, index: int, fp: str, lease_token: str) -> dict:
    plan = _plan(config)
    store = FeatureStore(config.store, mode="a", lease_token=lease_token)
    try:
        result = rel.import_shard(plan, plan.shards[index], fp, store)
    except Exception as e:
        store.record_shard_failure(index, f"{type(e).__name__}: {e}")
        raise
    get_run_logger().info("shard %d committed: %d videos, %d frames", index, result["videos"], result["frames"])
    return result


@task(name="import-text", task_run_name="import-text-{split}")
def import_text_task(config: RunConfig, split: str, fp: str, lease_token: str) -> int:
    plan = _plan(config)
    logger = get_run_logger()

    def progress(fraction: float, message: str) -> None:
        logger.info("text %s: %s", split, message)

    n = rel.import_text(plan, split, fp, FeatureStore(config.store, mode="a", lease_token=lease_token), progress)
    logger.info("text %s committed: %d queries", split, n)
    return n


@flow(name="import-release", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=1))
def import_flow(config: RunConfig) -> dict:
    plan = _plan(config)
    rel.verify_features(plan)  # every feature file cross-checked before any work
    # One writer per store, as in the extract flow: this run holds the lease until it ends.
    with StoreLease(config.store, purpose=f"import stage of run {config.name}") as lease:
        if lease.took_over:
            get_run_logger().warning("took over the store's lease from %s: its owner is gone",
                                     lease.took_over.owner)
        return _import(config, plan, lease.token)


def _import(config: RunConfig, plan: rel.ReleasePlan, lease_token: str) -> dict:
    logger = get_run_logger()
    if not plan.has_teacher:
        logger.warning(rel.no_teacher_advice(plan.files))
    store = FeatureStore(config.store, mode="a", lease_token=lease_token)
    work = rel.begin_import(plan, store, prune=config.extract.prune_shards, verify=config.extract.verify)
    if work.dropped:
        logger.warning("removed shard groups %s beyond the current plan", work.dropped)
    for index, problems in work.damaged.items():
        logger.warning("shard %d is damaged and is redone: %s", index, "; ".join(problems[:5]))
    todo = [sh.index for sh, _ in work.shards]
    text_todo = [split for split, _ in work.texts]
    logger.info("%d shards, %d to import; text splits to import: %s; split aliases: %s",
                len(plan.shards), len(todo), text_todo, plan.aliases)

    progress_id = create_progress_artifact(0.0, key=artifact_key(config, "import-progress"),
                                           description=f"shards of {config.name}")
    runner = import_shard_task.with_options(retries=config.extract.shard_retries)
    futures = [runner.submit(config, sh.index, fp, lease_token) for sh, fp in work.shards]
    futures += [import_text_task.submit(config, split, fp, lease_token) for split, fp in work.texts]
    for finished, _ in enumerate(as_completed(futures), 1):
        update_progress_artifact(progress_id, 100.0 * finished / max(1, len(futures)))
    status = rel.import_status(plan, store)
    ran = set(todo)
    rows = [{"shard": r["shard"], "state": r["state"],
             "this_run": "ran" if r["shard"] in ran else "skipped (committed)",
             "videos": r["videos_in_manifest"], "committed_at": r["committed_at"] or "",
             "error": (r["error"] or r["note"] or "")[:300]} for r in status["shards"]]
    create_table_artifact(rows, key=artifact_key(config, "import-shards"),
                          description=f"imported shards of {config.name}")
    update_progress_artifact(progress_id, 100.0)
    if not status["complete"]:
        missing = [r["shard"] for r in rows if r["state"] != "committed"]
        raise ImportIncomplete(f"shards not committed: {missing}; text: {status['text']}")
    store.consolidate()
    return {"shards": len(plan.shards), "imported": len(todo), "text_imported": text_todo,
            "teacher": status["teacher"], "aliases": plan.aliases}
