"""Training checkpoints: atomic writes, newest-that-loads on resume, weights-only loading."""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path
from typing import Any

import torch

from prvr.errors import UserError
from storage.runs import RunPaths, write_atomic

log = logging.getLogger("prvr.checkpoints")
_EPOCH_FILE = re.compile(r"^epoch-(\d{4,})\.pt$")
BEST_FILE = "best.pt"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used (incompatible config, nothing to evaluate)."""


def epoch_checkpoint(paths: RunPaths, epoch: int) -> Path:
    return paths.checkpoints / f"epoch-{epoch:04d}.pt"


def best_checkpoint(paths: RunPaths) -> Path:
    return paths.checkpoints / BEST_FILE


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict[str, Any]:
    # weights_only: a checkpoint file never runs code, even one someone else handed you.
    return torch.load(path, map_location="cpu", weights_only=True)


def epoch_checkpoints(paths: RunPaths) -> list[tuple[int, Path]]:
    if not paths.checkpoints.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in paths.checkpoints.iterdir() if (m := _EPOCH_FILE.match(p.name))]
    return sorted(found)


def _try_load(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(state, "") or (None, why it does not load)."""
    try:
        return load_checkpoint(path), ""
    except Exception as e:  # truncated zip, bad pickle, wrong format
        return None, f"{type(e).__name__}: {str(e)[:200]}"


def newest_loadable(paths: RunPaths) -> tuple[Path, dict[str, Any]] | None:
    """The newest epoch checkpoint that loads; truncated or corrupt ones are skipped with a warning."""
    for _, path in reversed(epoch_checkpoints(paths)):
        state, error = _try_load(path)
        if state is not None:
            return path, state
        log.warning("skipping unreadable checkpoint %s: %s", path, error)
    return None


def prune_epoch_checkpoints(paths: RunPaths, keep: int = 2, protect: int | None = None,
                            fingerprint: str | None = None) -> None:
    """Keep the `keep` newest epoch checkpoints that load and, given `fingerprint`, were written by
    that training (the newest may be the one a crash left behind), plus epoch `protect` (the best
    epoch's: best.pt can be rebuilt from it). Everything else goes, unreadable files and another
    training's first: a higher-numbered corrupt file never pushes a good one out."""
    kept = 0
    for epoch, path in reversed(epoch_checkpoints(paths)):
        if kept >= keep and epoch != protect:
            path.unlink(missing_ok=True)
            continue
        state, error = _try_load(path)
        if state is not None and fingerprint in (None, state.get("config_fingerprint")):
            if kept < keep:
                kept += 1
            continue
        log.warning("removing checkpoint %s: %s", path, error or "written by another training config")
        path.unlink(missing_ok=True)
