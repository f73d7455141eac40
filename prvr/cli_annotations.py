"""`prvr import tvr|activitynet|charades`: raw annotation releases to the native manifest."""

from __future__ import annotations

from typing import Callable

import typer


def register(import_app: typer.Typer, fail: Callable[[str], None]) -> None:
    """Add the annotation importers to `prvr import` (filled in by the annotations work)."""
