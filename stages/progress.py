"""The one shape of a progress report: `progress(fraction done in [0, 1], what is being done)`.

Stages take an optional `Progress`; flows show it in the Prefect UI (flows/progress.py), the
command line prints it. `scaled` maps a sub-step onto its share of a stage, `counting` turns
"n of total done" into a report. A count with no known total reports fraction 0.
"""

from __future__ import annotations

from typing import Callable

Progress = Callable[[float, str], None]
Counter = Callable[[int], None]


def silent(fraction: float, message: str) -> None:
    """Hears nothing: the progress of a caller that asked for none."""


def scaled(progress: Progress | None, lo: float, hi: float) -> Progress:
    """`progress` with [0, 1] mapped onto [lo, hi]."""
    if progress is None:
        return silent
    return lambda fraction, message: progress(lo + (hi - lo) * min(1.0, max(0.0, fraction)), message)


def counting(progress: Progress | None, total: int | None, what: str) -> Counter:
    """count(done) reports `done/total what` (`what: done` when total is None) at done/total."""
    if progress is None:
        return lambda done: None
    if total is None:
        return lambda done: progress(0.0, f"{what}: {done:,} read")
    return lambda done: progress(done / total if total else 1.0, f"{done}/{total} {what}")
