"""`prvr import tvr|activitynet|charades`: raw annotation releases to the native manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import typer

from prvr.errors import UserError

ANNOTATIONS_HELP = "folder holding the release files (or one release file)"
VIDEOS_HELP = "your folder of video files, named by video id (.mp4 .mkv .webm .avi .mov; searched recursively)"
OUT_HELP = "dataset root to write videos.jsonl, queries.jsonl and import_report.json into"
VAL_HELP = "fraction of the train videos held out as val (whole videos, seeded); 0: no val split"
STRICT_HELP = "fail if any annotated video is missing from --videos (default: drop it with its queries)"
FORCE_HELP = "replace a manifest (and a videos link) already in --out"


def _progress(fraction: float, message: str) -> None:
    typer.echo(f"  {message}")


def _summary(report: dict) -> None:
    typer.echo(f"{'split':<6} {'videos':>8} {'queries':>8} {'dropped videos':>15} {'dropped queries':>16} {'clamped':>8}")
    for split, c in report["splits"].items():
        typer.echo(f"{split:<6} {c['videos']:>8,} {c['queries']:>8,} {c['dropped_videos']:>15,} "
                   f"{c['dropped_queries']:>16,} {c['clamped']:>8,}")
    missing = report["missing_videos"]
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        typer.secho(f"dropped {len(missing):,} video(s) not found in {report['videos_dir']} with their queries: "
                    f"{shown} (all in import_report.json; --strict makes this an error)", fg=typer.colors.YELLOW)
    for note in report["notes"]:
        typer.secho(f"note: {note}", fg=typer.colors.YELLOW)


def _run(dataset: str, annotations: Path, videos: Path, out: Path, val_fraction: float, seed: int,
         strict: bool, force: bool, fail: Callable[[str], None]) -> None:
    from stages.annotations import REPORT_FILE, plan_import, write_import
    from stages.manifest import OUTSIDE_FILE

    typer.echo(f"reading the {dataset} annotations in {annotations}")
    try:
        plan = plan_import(dataset, annotations, videos, out, val_fraction=val_fraction, seed=seed,
                           strict=strict, force=force, progress=_progress)
        write_import(plan, force=force)
    except UserError as e:
        fail(str(e))
        return
    _summary(plan.report)
    if plan.report["videos_link"]:
        typer.echo(f"linked {plan.out}/{plan.report['videos_link']} (a folder outside the dataset root, "
                   f"allowed by {plan.out / OUTSIDE_FILE})")
    typer.secho(f"wrote {len(plan.videos):,} videos and {len(plan.queries):,} queries to {plan.out} "
                f"(details in {REPORT_FILE})", fg=typer.colors.GREEN)
    typer.echo("next: set dataset.root to that folder in a run config and run `prvr run CONFIG --stages extract`")


# name -> (help of --videos, the command's help: split conventions and what is skipped)
DATASETS = {
    "tvr": (VIDEOS_HELP, """TVR (tvr_train/val_release.jsonl): train -> train, val -> test,
        a seeded share of train -> val.

        tvr_test_public_release.jsonl has no moments and is skipped. Videos must be
        files; TVR's folders of frames must be encoded into videos first.
        """),
    "activitynet": (VIDEOS_HELP + "; 'v_' may be left off the names", """ActivityNet Captions: train.json -> train,
        val_1.json -> test, a seeded share of train -> val.

        val_2.json annotates val_1's videos a second time and is skipped. Moments
        running past the video's duration are clamped to it (counted in the report).
        """),
    "charades": (VIDEOS_HELP, """Charades-STA (charades_sta_train/test.txt): train -> train,
        test -> test, a seeded share of train -> val."""),
}


def _command(dataset: str, videos_help: str, doc: str, fail: Callable[[str], None]) -> Callable[..., None]:
    """One `prvr import <dataset>` command; the datasets differ only in their help texts."""

    def command(
        annotations: Path = typer.Argument(..., help=ANNOTATIONS_HELP),
        videos: Path = typer.Option(..., "--videos", help=videos_help),
        out: Path = typer.Option(..., "--out", help=OUT_HELP),
        val_fraction: float = typer.Option(0.05, "--val-fraction", help=VAL_HELP),
        seed: int = typer.Option(0, "--seed", help="seed of the val hold-out"),
        strict: bool = typer.Option(False, "--strict", help=STRICT_HELP),
        force: bool = typer.Option(False, "--force", help=FORCE_HELP),
    ) -> None:
        _run(dataset, annotations, videos, out, val_fraction, seed, strict, force, fail)

    command.__doc__ = doc
    return command


def register(import_app: typer.Typer, fail: Callable[[str], None]) -> None:
    """Add the annotation importers to `prvr import`."""
    for dataset, (videos_help, doc) in DATASETS.items():
        import_app.command(dataset)(_command(dataset, videos_help, doc, fail))
