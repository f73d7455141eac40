"""Run report: metrics.json, history.json, report.md and PNG plots in a run directory.

This is the stage that writes report files; the numbers come from stages.metrics and
stages.moments. Every file is written atomically (temp file in the same directory, then
rename), so a reader never sees a half-written report and a rerun replaces the old one.
Plots use matplotlib's Agg canvas directly (no pyplot global state) with matplotlib's
default style and no date/software metadata, so the same inputs give the same PNG bytes.
matplotlib is imported only when plotting, so the table helpers work without it.
"""

from __future__ import annotations

import io
import json
import math
import numbers
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from storage.runs import RunPaths, write_atomic

if TYPE_CHECKING:
    from matplotlib.axes import Axes

RECALL_COLUMNS: tuple[str, ...] = ("R@1", "R@5", "R@10", "R@100", "SumR")
PLOT_NAMES: tuple[str, ...] = ("losses", "val_sumr", "distill_weight", "recall")
_RECALL_KEY = re.compile(r"^R@(\d+)$")


# ---- tables -----------------------------------------------------------------------
def _recall_columns(methods: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """R@k columns present in any method, by k, then SumR; the standard set if none."""
    ks = sorted({int(m.group(1)) for values in methods.values() for key in values if (m := _RECALL_KEY.match(key))})
    return [f"R@{k}" for k in ks] + ["SumR"] if ks else list(RECALL_COLUMNS)


def metrics_table_rows(metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per method: {"method": name, "R@1": .., ..., "SumR": ..}, rounded to 1 decimal.

    Suits a Prefect table artifact. A metric missing for a method is None.
    """
    methods: Mapping[str, Mapping[str, Any]] = metrics.get("methods") or {}
    columns = _recall_columns(methods)
    rows = []
    for name, values in methods.items():
        row: dict[str, Any] = {"method": name}
        for column in columns:
            value = values.get(column)
            row[column] = None if value is None else round(float(value), 1)
        rows.append(row)
    return rows


def queries_text(metrics: Mapping[str, Any]) -> str:
    """"N" or "N (M whose video is missing from the store, counted as misses)": how many queries the
    figures are over, and how many of them could not be ranked because their video failed extraction."""
    total, missing = metrics.get("queries"), metrics.get("queries_without_video") or 0
    if not missing:
        return str(total)
    return f"{total} ({missing} whose video is missing from the store, counted as misses)"


def _format_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        value = float(value)
        if not math.isfinite(value):
            return str(value)
        # Long timings read better without an exponent; everything else at 4 significant digits.
        return f"{value:.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    return str(value)


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A GitHub-flavoured markdown table; columns are the rows' keys in first-seen order.

    Strings are written as given (pre-format numbers that need fixed decimals); other
    floats get 4 significant digits; a key missing from a row leaves its cell empty.
    """
    if not rows:
        return ""
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)

    def cell(value: Any) -> str:
        return _format_cell(value).replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(cell(c) for c in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ---- JSON -------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    """Plain JSON types: numpy/torch scalars and arrays via item()/tolist(), paths as
    strings, non-finite floats as null (strict JSON has no NaN/Infinity)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "tolist"):  # numpy/torch scalars and arrays
        return _jsonable(value.tolist())
    raise TypeError(f"cannot write {type(value).__name__} to JSON: {value!r}")


def _json_text(value: Any) -> str:
    return json.dumps(_jsonable(value), indent=2, allow_nan=False) + "\n"


# ---- plots ------------------------------------------------------------------------
def _number(value: Any) -> float:
    """A plottable float; None and non-numbers become NaN (a gap in the line)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _epochs(history: Sequence[Mapping[str, Any]]) -> list[float]:
    return [_number(row.get("epoch", index)) for index, row in enumerate(history)]


def _series_keys(history: Sequence[Mapping[str, Any]], predicate: Callable[[str], bool]) -> list[str]:
    keys: list[str] = []
    for row in history:
        keys.extend(k for k in row if predicate(k) and k not in keys and math.isfinite(_number(row[k])))
    return keys


def _render_png(draw: Callable[[Axes], None], width: float = 7.0, height: float = 4.2) -> bytes:
    import matplotlib.style
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Default style regardless of a user's matplotlibrc, for reproducible images.
    with matplotlib.style.context("default"):
        figure = Figure(figsize=(width, height), dpi=110)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        draw(axes)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _no_data(axes: Axes, what: str) -> None:
    axes.text(0.5, 0.5, f"no {what} recorded", ha="center", va="center", transform=axes.transAxes, color="0.4")
    axes.set_xticks([])
    axes.set_yticks([])


def _draw_losses(axes: Axes, history: Sequence[Mapping[str, Any]]) -> None:
    keys = _series_keys(history, lambda k: k == "loss" or k.startswith("loss_"))
    axes.set_title("Training losses per epoch")
    if not keys:
        _no_data(axes, "losses")
        return
    epochs = _epochs(history)
    values = {k: [_number(row.get(k)) for row in history] for k in keys}
    for key in keys:
        axes.plot(epochs, values[key], marker="o", markersize=3, linewidth=2.2 if key == "loss" else 1.4, label=key)
    finite = [v for series in values.values() for v in series if math.isfinite(v)]
    # Terms differ by orders of magnitude (distillation vs triplet); log scale keeps all readable.
    if finite and min(finite) > 0:
        axes.set_yscale("log")
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss")
    axes.grid(True, alpha=0.3, which="both")
    axes.legend(fontsize="small")


def _draw_val_sumr(axes: Axes, history: Sequence[Mapping[str, Any]]) -> None:
    axes.set_title("Validation SumR per epoch")
    epochs = _epochs(history)
    values = [_number(row.get("val_SumR")) for row in history]
    finite = [(e, v) for e, v in zip(epochs, values) if math.isfinite(v)]
    if not finite:
        _no_data(axes, "val_SumR")
        return
    axes.plot(epochs, values, marker="o", markersize=3, color="tab:blue", label="val SumR")
    best_epoch, best_value = max(finite, key=lambda pair: pair[1])  # first best, as early stopping keeps it
    axes.plot([best_epoch], [best_value], marker="*", markersize=14, color="tab:red", linestyle="none",
              label=f"best {best_value:.1f} @ epoch {best_epoch:g}")
    axes.set_xlabel("epoch")
    axes.set_ylabel("SumR (R@1+R@5+R@10+R@100)")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")


def _draw_distill_weight(axes: Axes, history: Sequence[Mapping[str, Any]]) -> None:
    axes.set_title("Distillation weight per epoch")
    epochs = _epochs(history)
    values = [_number(row.get("distill_weight")) for row in history]
    if not any(math.isfinite(v) for v in values):
        _no_data(axes, "distill_weight")
        return
    axes.plot(epochs, values, marker="o", markersize=3, color="tab:purple")
    axes.set_xlabel("epoch")
    axes.set_ylabel("weight of the distillation loss")
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)


def _draw_recall(axes: Axes, metrics: Mapping[str, Any]) -> None:
    axes.set_title("Recall@K per method (video-level, %)")
    methods: Mapping[str, Mapping[str, Any]] = metrics.get("methods") or {}
    columns = [c for c in _recall_columns(methods) if c != "SumR"]
    if not methods:
        _no_data(axes, "methods")
        return
    group_width = 0.8
    bar_width = group_width / len(methods)
    for index, (name, values) in enumerate(methods.items()):
        heights = [_number(values.get(c)) for c in columns]
        offsets = [g - group_width / 2 + (index + 0.5) * bar_width for g in range(len(columns))]
        sumr = _number(values.get("SumR"))
        label = f"{name} (SumR {sumr:.1f})" if math.isfinite(sumr) else name
        bars = axes.bar(offsets, heights, width=bar_width, label=label)
        axes.bar_label(bars, labels=[f"{h:.1f}" if math.isfinite(h) else "" for h in heights],
                       fontsize=7, padding=1, rotation=90 if len(methods) > 3 else 0)
    axes.set_xticks(range(len(columns)), columns)
    axes.set_ylabel("recall (%)")
    axes.set_ylim(0, 115)  # headroom for the bar labels
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(fontsize="x-small", loc="upper left")


# ---- report.md --------------------------------------------------------------------
def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool, Path)) or getattr(value, "ndim", None) == 0


def _report_markdown(title: str, metrics: Mapping[str, Any], history: Sequence[Mapping[str, Any]]) -> str:
    parts = [f"# {title}\n\n"]

    parts.append("## Video retrieval (percent)\n\n")
    rows = metrics_table_rows(metrics)
    if rows:
        shown = [{k: (f"{v:.1f}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows]
        parts.append(markdown_table(shown))
    else:
        parts.append("No methods evaluated.\n")

    parts.append("\n## Moment localisation (percent of queries with IoU >= threshold)\n\n")
    moments = metrics.get("moments")
    if moments:
        rows = moments if isinstance(moments, list) else [moments]
        parts.append(markdown_table([{k: (f"{float(v):.1f}" if k.startswith("IoU@") else v) for k, v in row.items()}
                                     for row in rows]))
    else:
        parts.append("No moment annotations evaluated.\n")

    extras = {k: v for k, v in metrics.items() if k not in ("methods", "moments", "queries_without_video")}
    if "queries" in extras:
        extras["queries"] = queries_text(metrics)
    if extras:
        parts.append("\n## Run\n\n")
        scalars = [{"key": k, "value": (str(v) if isinstance(v, Path) else v)} for k, v in extras.items() if _is_scalar(v)]
        if scalars:
            parts.append(markdown_table(scalars))
        nested = {k: v for k, v in extras.items() if not _is_scalar(v)}
        if nested:
            parts.append("\n```json\n" + _json_text(nested) + "```\n")

    parts.append("\n## Training (per epoch)\n\n")
    if history:
        best = [(i, _number(row.get("val_SumR"))) for i, row in enumerate(history)]
        best = [pair for pair in best if math.isfinite(pair[1])]
        if best:
            index, value = max(best, key=lambda pair: pair[1])
            parts.append(f"Best validation SumR {value:.1f} at epoch {_format_cell(history[index].get('epoch', index))}.\n\n")
        parts.append(markdown_table(list(history)))
    else:
        parts.append("No training history.\n")

    parts.append("\n## Plots\n")
    parts.extend(f"\n![{name}](plots/{name}.png)\n" for name in PLOT_NAMES)
    return "".join(parts)


def report_without_images(markdown: str, run_dir: Path) -> str:
    """The report for places that cannot load the run folder's files (the Prefect UI): each plot
    image becomes a line naming the file, instead of a broken image."""
    def line(match: re.Match) -> str:
        return f"plot *{match.group(1)}*: `{(Path(run_dir) / match.group(2)).resolve()}`"

    return re.sub(r"!\[([^\]]*)\]\(([^)\s]+)\)", line, markdown)


def write_run_report(
    run_dir: Path, metrics: Mapping[str, Any], history: Sequence[Mapping[str, Any]], title: str
) -> dict[str, Path]:
    """Write the run's report files and return their paths.

    Files (keys of the returned dict): metrics.json ("metrics"), history.json ("history"),
    report.md ("report"), and plots/{losses,val_sumr,distill_weight,recall}.png (keys as
    the file stems). All four plots are always written (a "no data" panel when the
    history lacks the series), so a rerun replaces every file of an earlier run.
    """
    run = RunPaths(Path(run_dir))  # the run folder's file names are RunPaths'
    plots_dir = run.plots
    plots_dir.mkdir(parents=True, exist_ok=True)
    history = list(history)
    paths: dict[str, Path] = {"metrics": run.metrics, "history": run.history, "report": run.report}
    write_atomic(paths["metrics"], _json_text(metrics).encode())
    write_atomic(paths["history"], _json_text(history).encode())

    drawers = {
        "losses": lambda axes: _draw_losses(axes, history),
        "val_sumr": lambda axes: _draw_val_sumr(axes, history),
        "distill_weight": lambda axes: _draw_distill_weight(axes, history),
        "recall": lambda axes: _draw_recall(axes, metrics),
    }
    for name in PLOT_NAMES:
        paths[name] = plots_dir / f"{name}.png"
        write_atomic(paths[name], _render_png(drawers[name]))

    # report.md last: it links the plots, which exist by now.
    write_atomic(paths["report"], _report_markdown(title, metrics, history).encode())
    return paths
