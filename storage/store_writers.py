"""Writers of the feature store: one shard's videos, one split's text; nothing counts until `commit`."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import zarr

from storage.store_layout import COMPRESSORS, HISTORY_KEEP, event, now, rows_per_chunk


class ChunkBuffer:
    """Appends rows to a Zarr array along axis 0 in whole chunks; `flush(final=True)` writes the rest."""

    def __init__(self, array: zarr.Array):
        self._array = array
        self._chunk = array.chunks[0]
        self._parts: list[np.ndarray] = []
        self._buffered = 0
        self._written = 0

    def add(self, rows: np.ndarray) -> None:
        self._parts.append(rows)
        self._buffered += len(rows)
        if self._buffered >= self._chunk:
            self.flush(final=False)

    def flush(self, final: bool) -> None:
        if not self._buffered:
            return
        rows = np.concatenate(self._parts)
        n = len(rows) if final else len(rows) // self._chunk * self._chunk
        start, stop = self._written, self._written + n
        self._array.resize((stop, *self._array.shape[1:]))
        self._array[start:stop] = rows[:n]
        self._written = stop
        self._parts = [rows[n:]] if n < len(rows) else []
        self._buffered = len(rows) - n


class ShardWriter:
    """Writes one shard group video by video; nothing counts until `commit`."""

    def __init__(self, group: zarr.Group, feature_dims: dict[str, int], history: list[dict[str, Any]] | None = None,
                 record: Callable[[str], dict] | None = None, fence: Callable[[], None] | None = None):
        self._group = group
        self._record = record
        self._fence = fence
        self._dims = dict(feature_dims)
        self._history = list(history or [])
        self._rows = 0
        self._offsets = [0]
        self._video_ids: list[str] = []
        self._splits: list[str] = []
        self._durations: list[float] = []
        self._failed: dict[str, str] = {}
        group.create_array("frame_time", shape=(0,), chunks=(rows_per_chunk(4),), dtype="float32",
                           compressors=COMPRESSORS, fill_value=0.0)
        for name, dim in self._dims.items():
            group.create_array(name, shape=(0, dim), chunks=(rows_per_chunk(2 * dim), dim), dtype="float16",
                               compressors=COMPRESSORS, fill_value=0.0)
        # Rows wait here until they fill whole chunks: each chunk is compressed and written once,
        # instead of once per video that touches it (5-10x faster for short videos).
        self._buffers = {name: ChunkBuffer(group[name]) for name in ["frame_time", *self._dims]}

    def add_video(self, video_id: str, split: str, duration: float, times: np.ndarray,
                  features: dict[str, np.ndarray]) -> None:
        if set(features) != set(self._dims):
            raise ValueError(f"features {sorted(features)} differ from the shard's {sorted(self._dims)}")
        n = len(times)
        for name, arr in features.items():
            if arr.shape != (n, self._dims[name]):
                raise ValueError(f"{video_id}: {name} has shape {arr.shape}, expected {(n, self._dims[name])}")
        for name, arr in features.items():
            self._buffers[name].add(arr.astype(np.float16))
        self._buffers["frame_time"].add(np.asarray(times, dtype=np.float32))
        self._rows += n
        self._offsets.append(self._rows)
        self._video_ids.append(video_id)
        self._splits.append(split)
        self._durations.append(float(duration))

    def add_failure(self, video_id: str, error: str) -> None:
        self._failed[video_id] = error

    @property
    def failed(self) -> dict[str, str]:
        return dict(self._failed)

    def commit(self, fingerprint: str, info: dict[str, Any] | None = None) -> None:
        for buffer in self._buffers.values():
            buffer.flush(final=True)
        self._group.create_array("offsets", data=np.asarray(self._offsets, dtype=np.int64), overwrite=True)
        self._group.attrs.update({
            "video_ids": self._video_ids, "splits": self._splits, "durations": self._durations,
            "failed": self._failed, "fingerprint": fingerprint, "info": info or {},
        })
        record = self._record(self._group.path) if self._record else None
        if self._fence:
            self._fence()  # this run still holds the store's lease: nobody took it over while we wrote
        # The marker goes in a second, final write: a crash before it leaves the shard uncommitted.
        # The history and the integrity record ride in the same write, so they describe exactly this commit.
        history = (self._history + [event("committed", fingerprint=fingerprint)])[-HISTORY_KEEP:]
        self._group.attrs.update({"committed": {"at": now(), "fingerprint": fingerprint}, "history": history,
                                  "integrity": record})


class TextWriter:
    """Writes a split's text arrays batch by batch; `commit` marks it complete."""

    def __init__(self, group: zarr.Group, n_queries: int, arrays: dict[str, tuple[int, ...]],
                 record: Callable[[str], dict] | None = None, fence: Callable[[], None] | None = None):
        self._group = group
        self._record = record
        self._fence = fence
        for name, tail in arrays.items():
            dtype = "int32" if name.startswith("token_lengths.") else "float16"
            row_bytes = int(np.prod(tail, dtype=np.int64)) * np.dtype(dtype).itemsize
            group.create_array(name, shape=(n_queries, *tail), chunks=(min(max(1, n_queries), rows_per_chunk(row_bytes)), *tail),
                               dtype=dtype, compressors=COMPRESSORS, fill_value=0)

    def write(self, name: str, start: int, values: np.ndarray) -> None:
        arr = self._group[name]
        arr[start:start + len(values)] = values.astype(arr.dtype)

    def commit(self, fingerprint: str) -> None:
        self._group.attrs.update({"fingerprint": fingerprint})
        record = self._record(self._group.path) if self._record else None
        if self._fence:
            self._fence()
        self._group.attrs.update({"committed": {"at": now(), "fingerprint": fingerprint}, "integrity": record})
