"""Teacher caches: the teacher's scores of each query, stored next to the features.

    <store>/teacher/<teacher_key>/<split>/       one group per (teacher, split), one writer
        video_sim          (queries, videos) float16: max over a video's frames of
                           cosine(sentence, frame); -inf for a video without frames. Only in
                           caches made with it (the evaluated split's: the teacher's zero-shot
                           recall is its one reader); attrs has_video_sim says which
        positive_frames    (sum of positive-video frame counts,) float16: cosine(sentence, frame)
                           for each frame of each query's positive video, in stored frame order
        positive_offsets   (queries + 1,) int64: query i owns positive_frames[o[i]:o[i+1]]
                           (empty when its positive video is not among the split's stored videos)
        attrs: teacher, split, query_ids (row order), video_ids (column order), inputs,
               fingerprint, committed {at, fingerprint} (written last: the commit marker)

The marker sits on the group, not on one array: it vouches for all its arrays together.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import zarr

from storage.features import FeatureStore, StoreError
from storage.store_layout import CHUNK_BYTES, COMPRESSORS, now

_ITEM = np.dtype(np.float16).itemsize


def video_sim_chunks(n_queries: int, n_videos: int, query_block: int) -> tuple[int, int]:
    """Zarr chunks of a video_sim matrix: rows = the compute's query block, columns filling ~1 MB.

    The stage computes exactly one chunk per task, so no two tasks ever write one chunk.
    """
    rows = max(1, min(query_block, n_queries))
    cols = max(1, min(max(1, n_videos), CHUNK_BYTES // (_ITEM * rows)))
    return rows, cols


class TeacherCacheWriter:
    """Writes one (teacher, split) cache; nothing counts until `commit`."""

    def __init__(self, group: zarr.Group, fingerprint: str, chunks: tuple[int, int]):
        self._group = group
        self._fingerprint = fingerprint
        self.chunks = chunks
        self._positive_written = False

    @property
    def shape(self) -> tuple[int, int]:
        """(queries, videos) of the cache, with or without its video_sim matrix."""
        return len(self._group.attrs["query_ids"]), len(self._group.attrs["video_ids"])

    def store_video_sim(self, sims, scheduler: str | None = None, **compute: Any) -> None:
        """Write a dask array whose blocks are exactly the Zarr chunks, each block by one task.
        `compute` goes to dask's compute (e.g. `callbacks` of a local scheduler)."""
        import dask.array as da

        if "video_sim" not in self._group:
            raise StoreError(f"{self._group.path} was begun without a video_sim matrix")
        target = self._group["video_sim"]
        if sims.shape != target.shape:
            raise ValueError(f"video_sim has shape {sims.shape}, the cache expects {target.shape}")
        for axis, (blocks, size) in enumerate(zip(sims.chunks, self.chunks)):
            # Every block but the last must fill whole chunks, or two tasks would share a chunk.
            if any(b != size for b in blocks[:-1]) or (blocks and blocks[-1] > size):
                raise ValueError(f"blocks along axis {axis} {blocks[:4]}... do not match the chunk size {size}")
        da.store(sims, target, lock=False, scheduler=scheduler, **compute)

    def write_video_sim_block(self, row: int, col: int, block: np.ndarray) -> None:
        """Write one chunk-aligned block (for callers without dask)."""
        rows, cols = self.chunks
        if row % rows or col % cols:
            raise ValueError(f"block at ({row}, {col}) does not start on a chunk boundary {self.chunks}")
        self._group["video_sim"][row:row + block.shape[0], col:col + block.shape[1]] = block.astype(np.float16)

    def write_positive(self, flat: np.ndarray, offsets: np.ndarray) -> None:
        """The ragged positive-frame scores, written whole by this single writer."""
        n_queries = self.shape[0]
        offsets = np.asarray(offsets, dtype=np.int64)
        if offsets.shape != (n_queries + 1,) or offsets[0] != 0 or offsets[-1] != len(flat) \
                or np.any(np.diff(offsets) < 0):
            raise ValueError(f"offsets must rise from 0 to {len(flat)} over {n_queries} queries")
        chunk = max(1, min(len(flat), CHUNK_BYTES // _ITEM))
        self._group.create_array("positive_frames", shape=(len(flat),), chunks=(chunk,), dtype="float16",
                                 compressors=COMPRESSORS, fill_value=0.0, overwrite=True)
        if len(flat):
            self._group["positive_frames"][...] = np.asarray(flat, dtype=np.float16)
        self._group.create_array("positive_offsets", data=offsets, overwrite=True)
        self._positive_written = True

    def commit(self, stats: dict[str, Any] | None = None) -> None:
        if not self._positive_written:
            raise StoreError(f"{self._group.path}: positive frames were never written; refusing to commit")
        self._group.attrs.update({"fingerprint": self._fingerprint, "stats": stats or {}})
        # The marker goes in a second, final write: a crash before it leaves the cache uncommitted.
        self._group.attrs.update({"committed": {"at": now(), "fingerprint": self._fingerprint}})


class TeacherCache:
    """Teacher caches in a feature store, opened from a FeatureStore or a store location."""

    def __init__(self, store: FeatureStore | str, mode: str = "r"):
        self.store = store if isinstance(store, FeatureStore) else FeatureStore(store, mode=mode)

    def _group(self, teacher: str, split: str) -> zarr.Group | None:
        root = self.store.root
        try:
            return root["teacher"][teacher][self.store.resolve_split(split)]
        except KeyError:
            return None

    def _attrs(self, teacher: str, split: str) -> dict[str, Any] | None:
        group = self._group(teacher, split)
        return None if group is None else dict(group.attrs)

    def teachers(self) -> list[str]:
        return sorted(self.store.root["teacher"].group_keys()) if "teacher" in self.store.root else []

    def splits(self, teacher: str) -> list[str]:
        root = self.store.root
        if "teacher" not in root or teacher not in root["teacher"]:
            return []
        return sorted(root["teacher"][teacher].group_keys())

    def status(self, teacher: str, split: str, fingerprint: str | None) -> str:
        """committed (marker holds `fingerprint`, or any marker when None) | stale | missing."""
        try:
            attrs = self._attrs(teacher, split)
        except Exception:  # a torn zarr.json from a killed writer reads as "not committed"
            return "missing"
        committed = (attrs or {}).get("committed")
        if not committed:
            return "missing"
        return "committed" if fingerprint is None or committed.get("fingerprint") == fingerprint else "stale"

    def committed_at(self, teacher: str, split: str) -> str | None:
        committed = (self._attrs(teacher, split) or {}).get("committed")
        return committed.get("at") if committed else None

    def info(self, teacher: str, split: str) -> dict[str, Any]:
        """The committed cache's attributes (ids, inputs, stats), without the arrays."""
        return dict(self._committed_group(teacher, split).attrs)

    def _committed_group(self, teacher: str, split: str) -> zarr.Group:
        if self.status(teacher, split, None) != "committed":
            raise StoreError(f"teacher cache {teacher}/{split} is not committed in {self.store.location}; "
                             f"run the teacher stage")
        return self._group(teacher, split)  # type: ignore[return-value]

    def video_sim(self, teacher: str, split: str, rows: slice | None = None) -> tuple[np.ndarray, list[str], list[str]]:
        """(scores (Q, V) float16, query_ids, video_ids); `rows` reads only a band of queries."""
        group = self._committed_group(teacher, split)
        attrs = group.attrs
        if not attrs.get("has_video_sim", True):
            raise StoreError(f"teacher cache {teacher}/{split} holds no query x video scores: only the evaluated "
                             f"split's cache computes them (evaluate.split); run the teacher stage with "
                             f"evaluate.split={split}")
        query_ids = list(attrs["query_ids"])
        rows = rows or slice(None)
        return group["video_sim"][rows], query_ids[rows], list(attrs["video_ids"])

    def positive_frames(self, teacher: str, split: str) -> tuple[np.ndarray, np.ndarray]:
        """(flat float16, offsets (Q+1,) int64), rows in the order of the cache's query_ids."""
        group = self._committed_group(teacher, split)
        return group["positive_frames"][...], group["positive_offsets"][...]

    def begin(self, teacher: str, split: str, query_ids: list[str], video_ids: list[str], query_block: int,
              fingerprint: str, inputs: dict[str, Any], video_sim: bool = True) -> TeacherCacheWriter:
        """Start (or restart) a cache: earlier content of this (teacher, split) is removed.
        `video_sim` False: no (queries x videos) matrix, only the positive frames."""
        chunks = video_sim_chunks(len(query_ids), len(video_ids), query_block)
        parent = self.store.root.require_group("teacher").require_group(teacher)
        split = self.store.resolve_split(split)
        group = parent.create_group(split, overwrite=True)
        group.attrs.update({"teacher": teacher, "split": split, "query_ids": list(query_ids),
                            "video_ids": list(video_ids), "inputs": inputs, "has_video_sim": video_sim,
                            "committed": None})
        if not video_sim:
            return TeacherCacheWriter(group, fingerprint, chunks)
        # NaN fill: a chunk never written reads as NaN, not as a plausible score.
        group.create_array("video_sim", shape=(len(query_ids), len(video_ids)), chunks=chunks, dtype="float16",
                           compressors=COMPRESSORS, fill_value=np.nan)
        return TeacherCacheWriter(group, fingerprint, chunks)
