"""`prvr import ms-sl`: a published feature release into the feature store."""

from __future__ import annotations

from typing import Callable

import typer


def register(import_app: typer.Typer, fail: Callable[[str], None]) -> None:
    """Add the release importer to `prvr import`."""
