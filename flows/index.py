"""The index stage as a subflow: the trained student's encoded gallery written for fast search."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from configs.schema import RunConfig
from flows.model import require_complete_store
from flows.progress import ProgressArtifact, artifact_key
from stages import index as ix


@task(name="build-index")
def index_task(config: RunConfig, splits: list[str] | None) -> dict:
    progress = ProgressArtifact(artifact_key(config, "index-progress"), f"index {config.name}")
    summary = ix.build_index(config, splits, progress=progress)
    what = "unchanged, skipped" if summary["skipped"] else f"written in {summary['seconds']:.1f}s"
    get_run_logger().info("search index of %d videos (%s): %s", summary["videos"], ", ".join(summary["splits"]), what)
    create_markdown_artifact(
        f"| videos | frames | splits | size | built at |\n|---|---|---|---|---|\n"
        f"| {summary['videos']} | {summary['frames']} | {', '.join(summary['splits'])} | "
        f"{summary['bytes'] / 2**20:.1f} MiB | {summary['built_at']} |\n\n"
        f"In `{summary['index']}`. Search it: `prvr search CONFIG \"a sentence\"`, or `prvr serve CONFIG` "
        f"for the page.",
        key=artifact_key(config, "index"), description=f"search index of {config.name} ({what})")
    return summary


@flow(name="index")
def index_flow(config: RunConfig, splits: list[str] | None = None) -> dict:
    """The search index over the videos of `splits` (None: all); skipped when it is current."""
    unavailable = ix.search_unavailable(config)
    if unavailable:
        get_run_logger().info("no search index: %s", unavailable)
        return {"skipped": True, "reason": unavailable}
    require_complete_store(config)
    return index_task(config, splits)
