"""The ingest subflow: fill the feature store from the run's data source, one Prefect task per unit
not committed under its fingerprint (a rerun after a failure runs only what is missing).

The same flow for every source (stages/ingest.py is the contract); the source names its flow,
tasks and artifacts: `extract` with `extract-shard-NNNNN` for raw videos, `import-release` with
`import-shard-NNNNN` for a feature release.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import as_completed

from configs.schema import RunConfig
from flows import runners
from flows.progress import artifact_key
from prvr.errors import UserError
from stages.ingest import IngestWork, ShardUnit, Source, SourceStatus, TextUnit
from stages.sources import source_for
from storage.features import FeatureStore
from storage.lease import StoreLease

FLOW_NAMES = {"extract": "extract", "import": "import-release"}


class IngestIncomplete(UserError, RuntimeError):
    """Raised so the flow run ends Failed while any shard or text split is missing."""


@task(name="ingest-shard", retry_delay_seconds=2)
def shard_task(config: RunConfig, unit: ShardUnit, lease_token: str) -> dict:
    logger = get_run_logger()
    logged = [-1]  # the last tenth of the shard logged

    def progress(fraction: float, message: str) -> None:
        if int(fraction * 10) > logged[0]:  # a line per tenth of the shard, and at the end
            logged[0] = int(fraction * 10)
            logger.info("shard %d: %s", unit.index, message)

    store = FeatureStore(config.store, mode="a", lease_token=lease_token)
    try:
        outcome = source_for(config).run_shard(unit, store, progress)
    except Exception as e:
        store.record_shard_failure(unit.index, f"{type(e).__name__}: {e}")
        raise
    if outcome.failed:
        logger.warning("shard %d: %d video(s) left out: %s", unit.index, len(outcome.failed), outcome.failed)
    logger.info("shard %d committed: %d videos, %d frames", unit.index, outcome.videos, outcome.frames)
    return {"shard": outcome.index, "videos": outcome.videos, "frames": outcome.frames, "failed": outcome.failed}


@task(name="ingest-text", retry_delay_seconds=2)
def text_task(config: RunConfig, unit: TextUnit, lease_token: str) -> int:
    logger = get_run_logger()

    def progress(fraction: float, message: str) -> None:
        logger.info("text %s: %s", unit.split, message)

    store = FeatureStore(config.store, mode="a", lease_token=lease_token)
    n = source_for(config).run_text(unit, store, progress)
    logger.info("text %s committed: %d queries", unit.split, n)
    return n


def _table_rows(status: SourceStatus, ran: set[int]) -> list[dict]:
    return [{
        "shard": s.index, "state": s.stored.state, "this_run": "ran" if s.index in ran else "skipped (committed)",
        "videos": s.videos_in_plan, "stored": s.stored.videos, "committed_at": s.stored.committed_at or "",
        "failed_videos": "; ".join(f"{k}: {v}" for k, v in s.stored.failed_videos.items()),
        "error": (s.stored.error or s.stored.note or "")[:300],
    } for s in status.shards]


@flow(name="ingest", log_prints=True)
def ingest_flow(config: RunConfig) -> dict:
    source = source_for(config)
    for notice in source.notices():
        get_run_logger().warning(notice)
    source.verify()  # before the store is touched
    # One writer per store: this run holds the store's lease (heartbeat in this process) until it ends;
    # unit tasks, wherever they run, only check that it is still this run's before they write.
    with StoreLease(config.store, purpose=f"{source.kind} stage of run {config.name}") as lease:
        if lease.took_over:
            get_run_logger().warning("took over the store's lease from %s: its owner is gone",
                                     lease.took_over.owner)
        return _ingest(config, source, lease.token)


def _ingest(config: RunConfig, source: Source, lease_token: str) -> dict:
    logger = get_run_logger()
    store = FeatureStore(config.store, mode="a", lease_token=lease_token)
    work = source.begin(store)
    _log_work(logger, config, source, work)
    source.prepare(work)

    kind = source.kind
    progress_id = create_progress_artifact(0.0, key=artifact_key(config, f"{kind}-progress"),
                                           description=f"shards of {config.name}")
    # Task run names say which unit: extract-shard-00042, import-text-val.
    shard_runner = shard_task.with_options(name=f"{kind}-shard", task_run_name=f"{kind}-shard-{{unit.index:05d}}",
                                           retries=config.extract.shard_retries)
    text_runner = text_task.with_options(name=f"{kind}-text", task_run_name=f"{kind}-text-{{unit.split}}",
                                         retries=config.extract.shard_retries)
    gpu = runners.gpu_resources(config) if source.needs_gpu else {}
    if gpu:
        logger.info("each %s task holds Dask resources %s", kind, gpu)
    with runners.holding(gpu):  # one task per GPU on Dask workers that declare one
        futures = [shard_runner.submit(config, unit, lease_token) for unit in work.shards]
        shard_of = {id(f): unit.index for f, unit in zip(futures, work.shards)}
        futures += [text_runner.submit(config, unit, lease_token) for unit in work.texts]
    for finished, future in enumerate(as_completed(futures), 1):
        lost = runners.settle_lost(future)
        if lost:  # its workers died: the task could not say so itself
            logger.error("%s: %s", f"shard {shard_of[id(future)]}" if id(future) in shard_of else "text", lost)
            if id(future) in shard_of:
                store.record_shard_failure(shard_of[id(future)], lost)
        update_progress_artifact(progress_id, 100.0 * finished / max(1, len(futures)))
    status = source.status(store, verify="sizes")
    create_table_artifact(_table_rows(status, {u.index for u in work.shards}),
                          key=artifact_key(config, f"{kind}-shards"), description=f"shard states of {config.name}")
    update_progress_artifact(progress_id, 100.0)

    if not status.complete:
        raise IngestIncomplete(_incomplete(status))
    store.consolidate()
    return source.summary(work, status)


def _log_work(logger, config: RunConfig, source: Source, work: IngestWork) -> None:
    if work.dropped:
        logger.warning("removed shard groups %s beyond the current plan%s", list(work.dropped),
                       " (extract.prune_shards is true)" if config.extract.prune_shards else " (none was committed)")
    for index, problems in work.damaged.items():
        logger.warning("shard %d is damaged and is redone: %s", index, "; ".join(problems[:5]))
    logger.info("%d shards, %d to %s (%s); text splits to %s: %s", work.planned, len(work.shards), source.kind,
                [u.index for u in work.shards], source.kind, [t.split for t in work.texts])


def _incomplete(status: SourceStatus) -> str:
    missing = [s for s in status.shards if not s.committed]
    detail = "; ".join(f"shard {s.index} ({s.stored.state}: {s.stored.error or s.stored.note or 'no error recorded'})"
                       for s in missing)
    if status.missing_text:
        detail += f"; text splits not committed: {status.missing_text}"
    if status.beyond_plan:
        detail += f"; committed shards beyond the plan: {list(status.beyond_plan)}"
    if not status.aliases_ok:
        detail += f"; split aliases not recorded: {status.details.get('aliases')}"
    return f"{len(missing)} of {len(status.shards)} shards not committed: {detail}"


def ingest_flow_for(config: RunConfig):
    """The flow for this config's source, on its runner. threads: shards one at a time in this process
    (they share its decoder pool and models); dask / local-dask: one shard per worker thread, each
    worker process with its own pool and models."""
    kind = source_for(config).kind
    return ingest_flow.with_options(name=FLOW_NAMES[kind], task_runner=runners.task_runner_for(config))
