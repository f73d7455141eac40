"""The `prvr` flow: the pipeline's stages as subflows. Deployments in prefect.yaml point here."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from configs.schema import load_config
from flows.ingest import ingest_flow_for
from flows.logs import give_extra_loggers_a_level
from flows.stage_names import ALL_STAGES, Stage
from stages.sources import check_source

# Every process that runs the pipeline imports this module (`prvr run`, a worker's flow run).
give_extra_loggers_a_level()


@flow(name="prvr", log_prints=True)
def prvr_flow(
    config_path: str = "configs/demo.yaml",
    stages: list[Stage] | None = None,
    overrides: dict[str, Any] | None = None,
    profile: str | None = None,
    index_splits: list[str] | None = None,
) -> dict:
    """Run the pipeline's stages in order; `overrides` are dotted keys, e.g. {"extract.fps": 2};
    `profile` picks a profile of the config file (e.g. "videos" in configs/tvr.yaml); `index_splits`
    the splits whose videos the search index holds (default: all videos)."""
    from flows.index import index_flow
    from flows.model import evaluate_flow_for, teacher_flow, train_flow_for

    cfg = load_config(config_path, overrides or {}, profile)
    check_source(cfg)  # the manifest or release validated at the door, before any work
    wanted = [s for s in ALL_STAGES if s in (stages or ALL_STAGES)]
    get_run_logger().info("run %s: stages %s, store %s", cfg.name, wanted, cfg.store)
    results: dict[str, Any] = {}
    # Each subflow raises on failure, so a later stage never starts after a failed one.
    if "extract" in wanted:  # extraction from raw videos, or a release's import
        results["extract"] = ingest_flow_for(cfg)(cfg)
    if "teacher" in wanted:
        results["teacher"] = teacher_flow(cfg)
    if "train" in wanted:
        results["train"] = train_flow_for(cfg)(cfg)
    if "evaluate" in wanted:
        results["evaluate"] = {k: v for k, v in evaluate_flow_for(cfg)(cfg).items() if k != "files"}
    if "index" in wanted:
        results["index"] = index_flow(cfg, index_splits)
    return results
