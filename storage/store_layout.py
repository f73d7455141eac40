"""The feature store's vocabulary: array and group names, chunking, and shard history events.

The layout itself (which groups hold which arrays) is described in storage/features.py.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from typing import Any

import numpy as np
from zarr.codecs import ZstdCodec

LAYOUT_VERSION = 1
CHUNK_BYTES = 1 << 20  # chunks around 1 MB: few objects on remote stores, cheap partial reads
COMPRESSORS = ZstdCodec(level=3)
HISTORY_KEEP = 50  # events kept per shard: enough to see every attempt of a run, bounded over years


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def event(kind: str, **extra: Any) -> dict[str, Any]:
    """One line of a shard's history: what happened, when, and which process on which machine."""
    return {"event": kind, "at": now(), "by": f"{socket.gethostname()}:{os.getpid()}", **extra}


# ---- array names: the store's vocabulary; callers use these instead of spelling them ----
def teacher_array(key: str) -> str:
    """A teacher's L2-normalised frame embeddings, per shard."""
    return f"teacher.{key}"


def visual_array(name: str) -> str:
    """A student visual feature's frames, per shard."""
    return f"visual.{name}"


def sentence_array(key: str) -> str:
    """A teacher's L2-normalised sentence embeddings, per text split."""
    return f"sentence.{key}"


def token_arrays(model: str) -> tuple[str, str]:
    """(token features, token counts) of a text model, per text split."""
    return f"tokens.{model}", f"token_lengths.{model}"


def resampled_rows(n: int, t_max: int) -> np.ndarray:
    """Rows kept when n frames are uniformly resampled to t_max (readers of any aligned data use this rule)."""
    return np.round(np.linspace(0, n - 1, t_max)).astype(int)


def rows_per_chunk(row_bytes: int) -> int:
    return max(64, CHUNK_BYTES // max(1, row_bytes))
