"""A stage's plain progress callback, `progress(fraction, message)`, shown in the Prefect UI as a
progress artifact (percent and the current step) and in the run's logs. Stages never import
Prefect; a task makes one of these and hands it to the stage."""

from __future__ import annotations

import re

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from configs.schema import RunConfig


def artifact_key(config: RunConfig, what: str) -> str:
    """`<run name>-<what>`: each run keeps its own artifact history in the UI (keys are per server,
    so a bare `metrics` would mix every dataset's runs). Prefect keys: lowercase letters, digits, dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{config.name.lower()}-{what}").strip("-")


class ProgressArtifact:
    """Call with (fraction in [0, 1], message). The artifact is updated when the message changes
    or the fraction has moved by `min_step`; a log line is written when the message changes or
    the fraction crosses a multiple of `log_every`. Use inside a task or flow run."""

    def __init__(self, key: str, title: str, min_step: float = 0.01, log_every: float = 0.25) -> None:
        self._title = title
        self._min_step = min_step
        self._log_every = log_every
        self._logger = get_run_logger()
        self._id = create_progress_artifact(0.0, key=key, description=f"{title}: starting")
        self._shown = 0.0
        self._logged_bucket = -1
        self._message: str | None = None

    def __call__(self, fraction: float, message: str) -> None:
        fraction = min(1.0, max(0.0, float(fraction)))
        new_message = message != self._message
        if new_message or fraction - self._shown >= self._min_step or (fraction == 1.0 and self._shown < 1.0):
            update_progress_artifact(self._id, 100.0 * fraction, description=f"{self._title}: {message}")
            self._shown = fraction
        bucket = int(fraction / self._log_every)
        if new_message or bucket > self._logged_bucket:
            self._logger.info("%s: %s (%.0f%%)", self._title, message, 100.0 * fraction)
            self._logged_bucket = bucket
        self._message = message
