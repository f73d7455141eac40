"""Run folders: `runs/<run-name>/` with the resolved config, checkpoints, metrics, report, plots."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @classmethod
    def of(cls, runs_dir: Path, name: str) -> RunPaths:
        return cls(Path(runs_dir) / name)

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def history(self) -> Path:
        return self.root / "history.json"

    @property
    def report(self) -> Path:
        return self.root / "report.md"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    def make(self) -> RunPaths:
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        return self


def write_temp(path: Path, data: bytes, suffix: str = ".tmp") -> Path:
    """`data` in a temporary file beside `path`, flushed to disk; the caller renames it into place
    (os.replace, then sync_folder) or removes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # os.open with 0o666 honours the umask (tempfile.mkstemp would leave the file 0600).
    temp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}{suffix}")
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def sync_folder(folder: Path) -> None:
    """Make the renames in `folder` durable."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Temporary file in the same folder, fsync, rename: readers see the old or the new file, never half."""
    temp = write_temp(path, data)
    try:
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    sync_folder(path.parent)


def write_history(paths: RunPaths, history: list[dict]) -> None:
    """The per-epoch training record, rewritten after each epoch (readers need no checkpoint)."""
    write_atomic(paths.history, json.dumps(history, indent=1, default=float).encode())


def read_history(paths: RunPaths) -> list[dict] | None:
    """The per-epoch record of a run; None when the run has written none (a run from before 2026-12-02)."""
    if not paths.history.exists():
        return None
    return list(json.loads(paths.history.read_text(encoding="utf-8")))


def write_resolved_config(paths: RunPaths, config: dict) -> None:
    """The run's config as resolved (file, profile and overrides applied), for the record."""
    write_atomic(paths.config, yaml.safe_dump(config, sort_keys=False).encode())
