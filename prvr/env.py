"""Process environment defaults for Prefect, set before prefect is imported."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

DEFAULTS = {
    # Project-local Prefect state: no writes to the user's home, no clash between checkouts.
    "PREFECT_HOME": str(PROJECT_ROOT / ".prefect"),
    # Analytics writes to SQLite concurrently and causes "database is locked" noise.
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # Our stage modules log through `prvr.*`; show those lines in the Prefect UI too (flows.logs gives
    # them their level). Outside a flow run (prvr search, prvr import) there is no run to send them to.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "prvr",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    # The in-process (ephemeral) API server starts slowly on a loaded 2-core machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # Offline by default: a hub download must fail fast, not hang.
    "HF_HUB_DISABLE_TELEMETRY": "1",
}


def apply_defaults() -> None:
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
