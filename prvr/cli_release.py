"""`prvr import ms-sl`: a published feature release into the feature store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

import typer

from prvr.errors import UserError


def register(import_app: typer.Typer, fail: Callable[[str], None]) -> None:
    """Add the release importer to `prvr import`."""

    @import_app.command("ms-sl")
    def import_ms_sl(
        root: Path = typer.Argument(..., help="release root holding <collection>/TextData and FeatureData "
                                               "(or the collection folder itself)"),
        collection: str = typer.Option(..., "--collection", "-c", help="tvr, activitynet, charades, ..."),
        store: str = typer.Option(..., "--store", help="feature store to write: a path or fsspec URL"),
        feature: Optional[str] = typer.Option(None, help="FeatureData/<feature> (default: i3d_resnet for tvr, "
                                                         "i3d for activitynet, i3d_rgb_lgi for charades)"),
        text: str = typer.Option("roberta", help="token features: TextData/<text>_<collection>_query_feat.hdf5"),
        teacher: Optional[str] = typer.Option(None, help="store key of the CLIP teacher (default: the key of "
                                                         "ViT-B-32-quickgelu/openai, as in configs/<collection>.yaml)"),
        max_frames: int = typer.Option(128, min=1, help="frames kept per video (mean-pooled, as the papers)"),
        max_tokens: int = typer.Option(30, min=1, help="tokens kept per query"),
        shard_size: int = typer.Option(500, min=1, help="videos per shard: the unit of resumption"),
        prune_shards: bool = typer.Option(False, "--prune-shards", help="delete committed shards beyond the "
                                          "release's plan (it shrank); without it they stop the import, named"),
    ) -> None:
        """Import an MS-SL / DL-DKD / GMMFormer feature release; an interrupted import resumes where it stopped."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        from stages import release as rel

        if feature is None:
            feature = rel.DEFAULT_FEATURES.get(collection)
            if feature is None:
                fail(f"no default feature for collection {collection!r}: pass --feature "
                     f"(known defaults: {rel.DEFAULT_FEATURES})")
        try:
            settings = rel.ImportSettings(
                root=rel.collection_folder(root, collection), collection=collection, feature=feature, text=text,
                teacher=teacher or rel.RELEASE_TEACHER, shard_size=shard_size, max_frames=max_frames,
                max_tokens=max_tokens)
            typer.echo(f"checking the release in {settings.root} ...")
            plan = rel.open_release(settings)
        except UserError as e:
            fail(str(e))
            return
        videos = sum(len(s.videos) for s in plan.shards)
        queries = sum(len(c) for c in plan.captions.values())
        typer.echo(f"{videos} videos, {queries} queries, splits {plan.splits}"
                   + (f", aliases {plan.aliases}" if plan.aliases else "") + f"; {len(plan.shards)} shards")
        if not plan.has_teacher:
            typer.secho("note: " + rel.no_teacher_advice(plan.files, f"configs/{collection}.yaml"),
                        fg=typer.colors.YELLOW, err=True)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn()) as bar:
            total = bar.add_task("videos", total=videos)
            def on_shard(result: rel.ShardOutcome) -> None:
                bar.update(total, description=f"shard {result.index} committed")

            def progress(fraction: float, message: str) -> None:  # over the shards this run imports
                bar.update(total, completed=round(fraction * videos))

            try:
                summary = rel.run_import(plan, store, on_shard=on_shard, progress=progress, prune=prune_shards)
            except UserError as e:
                fail(str(e))
                return
            bar.update(total, completed=videos)
        typer.echo(json.dumps(summary, indent=2))
        if not summary["complete"]:
            fail("the import did not complete; run the same command again to resume", code=1)
