"""`prvr`: the command line around the Prefect flows."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Optional

import typer

from flows.stage_names import ALL_STAGES
from prvr.env import apply_defaults
from prvr.errors import UserError

apply_defaults()  # before anything imports prefect

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
stack_app = typer.Typer(no_args_is_help=True, help="The local Prefect stack: server, work pool, deployments, worker.")
app.add_typer(stack_app, name="stack")
import_app = typer.Typer(no_args_is_help=True, help="Bring existing datasets in: published feature releases "
                         "(ms-sl) or raw annotation releases (tvr, activitynet, charades) as a native manifest.")
app.add_typer(import_app, name="import")


def _fail(message: str, code: int = 2) -> None:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


class _WithoutTraceback(logging.Formatter):
    """Formats a record as `inner` does, leaving out its traceback."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self._inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        if not (record.exc_info or record.exc_text):
            return self._inner.format(record)
        plain = logging.makeLogRecord(record.__dict__)  # the record itself also goes to the API handler
        plain.exc_info = plain.exc_text = None
        return self._inner.format(plain)


def _tracebacks_only_in_prefect_logs() -> None:
    """A failure logs one traceback each for its task, subflow and flow: the terminal keeps their
    one-line messages, the run's logs in the Prefect UI keep the tracebacks."""
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.setFormatter(_WithoutTraceback(handler.formatter))


PROFILE_HELP = "a profile of the config file (e.g. `videos` in configs/tvr.yaml: the raw-video route)"
PORT_HELP = "port of the local Prefect server (default: $PRVR_PREFECT_PORT, else 4200)"
STAGES_HELP = f"a stage to run, repeatable: {', '.join(ALL_STAGES)} (default: all; they run in that order)"


def _load(config: Path, overrides: list[str], profile: Optional[str] = None):
    """The validated config; its dataset (manifest or release) checked too. Exits 2 on any problem."""
    from configs.schema import load_config
    from stages.sources import check_source

    try:
        cfg = load_config(config, overrides, profile)
        check_source(cfg)
    except UserError as e:
        _fail(str(e))
    return cfg


@app.command()
def run(
    config: Path = typer.Argument(..., help="YAML run config"),
    stages: Optional[list[str]] = typer.Option(None, "--stages", "-s", help=STAGES_HELP),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="override a config key: a.b=value"),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help=PROFILE_HELP),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="show the tracebacks of failed tasks and flows "
                                 "here too (they are always in the run's logs in the Prefect UI)"),
) -> None:
    """Run the pipeline in this process (a local ephemeral Prefect API unless PREFECT_API_URL is set)."""
    _load(config, set_ or [], profile)  # validate everything before Prefect starts
    unknown = sorted(set(stages or []) - set(ALL_STAGES))
    if unknown:
        _fail(f"unknown stage(s) {unknown}; known: {ALL_STAGES}")
    from configs.schema import parse_override
    from flows.pipeline import prvr_flow
    from prvr.stack import use_ephemeral_api

    if not verbose:
        _tracebacks_only_in_prefect_logs()
    flat = {".".join(keys): value for keys, value in map(parse_override, set_ or [])}
    use_ephemeral_api()  # instead of Prefect's own: this one dies with us, even on kill -9
    state = prvr_flow(str(config.resolve()), stages=stages or None, overrides=flat, profile=profile,
                      return_state=True)
    if not state.is_completed():
        _fail(f"run ended {state.name}: {state.message}", code=1)
    typer.echo(json.dumps(state.result(), indent=2, default=str))


STATE_COLOURS = {"committed": "green", "complete": "green", "failed": "red", "corrupt": "red", "stale": "yellow",
                 "missing": "magenta", "incomplete": "magenta"}


def _state(state: str) -> str:
    return f"[{STATE_COLOURS.get(state, 'white')}]{state}[/]"


def _wide_console(renderables: list):
    """A terminal's own width (cells fold, nothing is cut); piped output as wide as the widest table."""
    from rich.console import Console
    from rich.measure import Measurement

    console = Console()
    if console.is_terminal:
        return console
    options = console.options.update_width(10_000)
    widest = max((Measurement.get(console, options, r).maximum for r in renderables), default=80)
    return Console(width=max(80, widest))


def _status_tables(cfg, report: dict) -> list:
    from rich.table import Table

    def table(title: str, *columns: str) -> Table:
        t = Table(title=title, title_justify="left")
        for col in columns:
            t.add_column(col, overflow="fold")
        return t

    shards = table(f"{cfg.name}: shards of {cfg.store}", "shard", "state", "committed_at", "videos",
                   "failed videos", "error / note")
    for r in report["shards"]:
        failed = "; ".join(f"{k}: {v}" for k, v in r["failed_videos"].items())
        shards.add_row(str(r["shard"]), _state(r["state"]), r["committed_at"] or "",
                       f"{r['videos']}/{r['videos_in_manifest']}", failed, r["error"] or r["note"] or "")
    stages = table(f"{cfg.name}: stages", "stage", "state", "details")
    for name, entry in report["stages"].items():
        counted = "" if name in report["checked"] else " (not checked)"
        stages.add_row(name, _state(entry["state"]) + counted, entry["summary"])
    tables = [shards, stages]
    caches = report["stages"]["teacher"]["caches"]
    if caches:
        teacher = table(f"{cfg.name}: teacher caches", "teacher", "split", "state", "committed_at", "note")
        for c in caches:
            teacher.add_row(c["teacher"], c["split"], _state(c["state"]), c["committed_at"] or "", c["note"] or "")
        tables.append(teacher)
    return tables


def _lease_line(lease: dict | None) -> str:
    if lease is None:
        return "writer: none (no run holds the store's lease)"
    line = (f"writer: {lease['owner']} ({lease['purpose']}) since {lease['started_at']}, "
            f"last heartbeat {lease['age_s']:.0f}s ago")
    return line if lease["alive"] else f"{line} [yellow](gone: {lease['dead_because']}; the next run takes over)[/]"


@app.command()
def status(
    config: Path = typer.Argument(..., help="YAML run config"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="override a config key: a.b=value"),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help=PROFILE_HELP),
    stages: Optional[list[str]] = typer.Option(None, "--stages", "-s", help="stages that must be complete for "
                                               "exit code 0 (default: all); every stage is shown"),
    verify: bool = typer.Option(False, "--verify", help="read every stored chunk and compare its checksum with "
                                "the one recorded at commit (reads the whole store); without it, sizes only"),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """Every stage's state under the current config: the store's writer, each shard (committed, stale,
    failed, missing, corrupt) and text split, the teacher caches, training, evaluation and the search index.

    Exit codes: 0 when every checked stage (--stages, default all) is complete and current;
    1 when one is not (a rerun would do work); 2 when the config or the dataset is invalid.
    """
    from stages.status import STAGES, pipeline_status

    cfg = _load(config, set_ or [], profile)
    unknown = sorted(set(stages or []) - set(STAGES))
    if unknown:
        _fail(f"unknown stage(s) {unknown}; known: {STAGES}")
    report = pipeline_status(cfg, stages or None, verify="checksums" if verify else "sizes")
    if as_json:
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        tables = _status_tables(cfg, report)
        console = _wide_console(tables)
        console.print(_lease_line(report["lease"]))
        for t in tables:
            console.print(t)
        console.print("text: " + ", ".join(f"{k} {_state(v)}" + (f" ({report['text_notes'][k]})"
                                                                  if k in report["text_notes"] else "")
                                           for k, v in report["text"].items()))
        if report["beyond_manifest"]:
            console.print(f"[red]committed shards beyond the manifest: {report['beyond_manifest']}[/] (it shrank; "
                          f"the extract stage keeps them and stops until --set extract.prune_shards=true)")
        undone = [s for s in report["checked"] if not report["stages"][s]["complete"]]
        console.print("complete" if report["complete"] else f"[red]incomplete[/]: {', '.join(undone)}")
    if not report["complete"]:
        raise typer.Exit(1)


SPLIT_HELP = ("a split whose videos the index holds, repeatable (default: the index's own selection, all videos "
              "when there is none); another selection rebuilds the index")


def _open_searcher(cfg, splits: Optional[list[str]]):
    """The run's searcher, its index brought up to date (progress on stderr); exits 2 when it cannot."""
    from stages.search import Searcher

    def progress(fraction: float, message: str) -> None:
        if fraction in (0.0, 1.0) or "written" in message:
            typer.echo(f"index: {message}", err=True)

    try:
        return Searcher.open(cfg, splits or None, progress=progress)
    except UserError as e:
        _fail(str(e))


@app.command()
def search(
    config: Path = typer.Argument(..., help="YAML run config of a trained run"),
    text: str = typer.Argument(..., help="what happens in the moment you look for"),
    top: int = typer.Option(10, "--top", "-k", min=1, help="how many videos to show"),
    split: Optional[list[str]] = typer.Option(None, "--split", help=SPLIT_HELP),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="override a config key: a.b=value"),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help=PROFILE_HELP),
    as_json: bool = typer.Option(False, "--json", help="machine-readable output, with each video's frame scores"),
) -> None:
    """Rank the stored videos for a sentence with the trained student; show the matching moment.

    Reads the run's search index (runs/<name>/index), built first when it is missing or stale."""
    from stages.search import check_query

    cfg = _load(config, set_ or [], profile)
    try:
        check_query(text)
    except UserError as e:
        _fail(str(e))
    searcher = _open_searcher(cfg, split)
    try:
        hits = searcher.search(text, top)
    finally:
        searcher.close()
    if as_json:
        typer.echo(json.dumps([h.as_dict(timeline=True) for h in hits], indent=2))
        return
    for h in hits:
        typer.echo(f"{h.rank:3d}. {h.video_id:20s} score {h.score:7.4f}   moment {h.moment[0]:6.1f}s - {h.moment[1]:6.1f}s")


@app.command()
def index(
    config: Path = typer.Argument(..., help="YAML run config of a trained run"),
    split: Optional[list[str]] = typer.Option(None, "--split", help="a split whose videos the index holds, "
                                              "repeatable (default: all videos)"),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="override a config key: a.b=value"),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help=PROFILE_HELP),
) -> None:
    """Build the run's search index (the index stage, in this process): skipped when it is current."""
    from stages.index import build_index

    cfg = _load(config, set_ or [], profile)
    try:
        summary = build_index(cfg, split or None)
    except UserError as e:
        _fail(str(e))
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def serve(
    config: Path = typer.Argument(..., help="YAML run config of a trained run"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on; anything but a loopback address "
                             "opens the run's videos to the network"),
    port: int = typer.Option(8765, "--port", min=1, max=65535, help="port to listen on"),
    split: Optional[list[str]] = typer.Option(None, "--split", help=SPLIT_HELP),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="override a config key: a.b=value"),
    profile: Optional[str] = typer.Option(None, "--profile", "-p", help=PROFILE_HELP),
) -> None:
    """Serve the run's search: a page at http://HOST:PORT/ and GET /search?q=...&k=... (JSON).

    The run's search index is built first when it is missing or stale."""
    from prvr.serve import VideoFiles, serve_forever

    cfg = _load(config, set_ or [], profile)
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.secho(f"listening on {host}: anyone who reaches it can search and watch the run's videos",
                    fg=typer.colors.YELLOW, err=True)
    searcher = _open_searcher(cfg, split)
    try:
        try:
            files = VideoFiles(cfg.dataset.root)
        except UserError as e:
            _fail(str(e))
        serve_forever(searcher, files, cfg.name, host, port, echo=typer.echo)
    finally:
        searcher.close()


@app.command()
def synth(
    out: Path = typer.Argument(..., help="folder for the world: videos/, videos.jsonl, queries.jsonl"),
    videos: Optional[int] = typer.Option(None, "--videos", "-n", help="number of videos (default: the preset's)"),
    seed: int = typer.Option(0, "--seed"),
    preset: str = typer.Option("demo", "--preset", help="demo | small | hard"),
    workers: int = typer.Option(2, "--workers", help="render processes (results do not depend on it)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a world already in OUT"),
) -> None:
    """Generate the synthetic PRVR world: untrimmed videos with known moments and captions."""
    from synth.generate import generate_world
    from synth.presets import get_preset

    try:
        count = videos if videos is not None else get_preset(preset).default_videos
        with typer.progressbar(length=count, label="rendering") as bar:
            summary = generate_world(out, count, seed, preset, workers=workers, overwrite=overwrite,
                                     progress=lambda fraction, _: bar.update(round(fraction * count) - bar.pos))
    except UserError as e:
        _fail(str(e))
    typer.echo(str(summary))


@app.command("synth-teacher")
def synth_teacher(
    world: Path = typer.Argument(..., help="a world made by `prvr synth`"),
    seed: int = typer.Option(0, "--seed"),
    out: Optional[Path] = typer.Option(None, "--out", help="checkpoint path (default WORLD/teacher/prvr-synth.pt)"),
    steps: int = typer.Option(150, "--steps", min=1, help="optimisation steps: 150 take ~2 min on 2 cores; 400 give a stronger teacher"),
) -> None:
    """Train the synthetic-domain CLIP teacher: sees appearance, blind to actions."""
    from synth.teacher import train_synth_teacher

    try:
        report = train_synth_teacher(world, out, seed=seed, steps=steps, log_every=50)
    except UserError as e:
        _fail(str(e))
    typer.echo(str(report))


@app.command("synth-backbone")
def synth_backbone(
    out: Path = typer.Argument(..., help="folder for the weights file (OUT/tiny_r2plus1d.pt) and its report"),
    seed: int = typer.Option(0, "--seed", help="seed of the pretraining world and of training"),
    preset: str = typer.Option("demo", "--preset", help="world preset whose frame size, rate and actions the clips use"),
    window: int = typer.Option(8, "--window", min=2, help="frames per clip: use the same as extract.window"),
    stride: int = typer.Option(2, "--stride", min=1, help="frames between a clip's frames: extract.window_stride"),
    epochs: int = typer.Option(8, "--epochs", min=1),
    scenes: int = typer.Option(600, "--scenes", min=1, help="pretraining scenes (6 clips each)"),
) -> None:
    """Train the student's motion-aware input: a small (2+1)D network classifying the generator's actions
    on clips of a pretraining world of its own (no video of any evaluation world)."""
    from synth.backbone import train_synth_backbone

    try:
        report = train_synth_backbone(out, seed=seed, preset=preset, window=window, stride=stride, epochs=epochs,
                                      train_scenes=scenes, log=typer.echo)
    except UserError as e:
        _fail(str(e))
    typer.echo(str(report))


@stack_app.command("up")
def stack_up(port: Optional[int] = typer.Option(None, help=PORT_HELP)) -> None:
    """Start the server, create the work pool, apply the deployments, start one worker."""
    from prvr import stack

    try:
        stack.up(stack.Stack.from_env(port=port), echo=typer.echo)
    except RuntimeError as e:
        _fail(str(e), code=1)


@stack_app.command("down")
def stack_down(port: Optional[int] = typer.Option(None, help=PORT_HELP)) -> None:
    """Stop the worker and the server cleanly."""
    from prvr import stack

    stack.down(stack.Stack.from_env(port=port), echo=typer.echo)


@stack_app.command("status")
def stack_status(port: Optional[int] = typer.Option(None, help=PORT_HELP)) -> None:
    """Whether the local stack's server answers, its pids and log folder, as JSON; exit 1 when it does not."""
    from prvr import stack

    info = stack.status(stack.Stack.from_env(port=port))
    typer.echo(json.dumps(info, indent=2))
    if not info["healthy"]:
        raise typer.Exit(1)


@stack_app.command("snapshot")
def stack_snapshot(
    config: Path = typer.Argument(..., help="YAML run config: screenshots go to its run folder"),
    run_id: Optional[str] = typer.Option(None, "--run", help="flow run id (default: the newest `prvr` run)"),
    port: Optional[int] = typer.Option(None, help=PORT_HELP),
) -> None:
    """Screenshots of a finished run in the Prefect UI (headless Chromium), into <run folder>/screenshots."""
    from prvr import stack, ui_snapshots
    from storage.runs import RunPaths

    cfg = _load(config, [])
    where = stack.Stack.from_env(port=port)
    if not stack.status(where)["healthy"]:
        _fail(f"no Prefect server at {where.api_url}; `prvr stack up` first", code=1)
    try:
        run_id = run_id or ui_snapshots.newest_flow_run(where.api_url, "prvr")
        if run_id is None:
            _fail(f"no `prvr` flow run on {where.api_url}", code=1)
        out = RunPaths.of(cfg.runs_dir, cfg.name).root / "screenshots"
        shots = ui_snapshots.snapshot_flow_run(where.api_url, where.ui_url, run_id, out)
    except ui_snapshots.BrowserMissing as e:
        _fail(str(e), code=1)
    typer.echo(f"{len(shots)} screenshots of flow run {run_id} in {out}")
    for line in ui_snapshots.iter_missing(shots):
        typer.secho(f"not shown: {line}", fg=typer.colors.YELLOW)


from prvr import cli_annotations, cli_release  # noqa: E402  (they register commands on import_app)

cli_release.register(import_app, _fail)
cli_annotations.register(import_app, _fail)


def main() -> None:  # pragma: no cover
    app(sys.argv[1:])
