"""A split's frames and tokens read from the store on demand, padded exactly as
`FeatureStore.padded` and `TextSplit.tokens` give them whole: the streamed way to a split that
does not fit in memory. Only per-video lengths, times and row positions stay in memory.
"""

from __future__ import annotations

import numpy as np

from storage.features import FeatureStore, StoreError, TextSplit, resampled_rows


class StoredFrames:
    """One frame feature of a split's videos; `take(rows, width)` reads some videos, zero-padded."""

    def __init__(self, store: FeatureStore, split: str, feature: str, max_frames: int | None = None):
        split = store.resolve_split(split)
        index = store.video_index()
        # The order of FeatureStore.padded: shard by shard, videos in the order they were written.
        located = sorted(((loc.shard, loc.start, vid) for vid, loc in index.items() if loc.split == split))
        if not located:
            raise StoreError(f"no videos of split {split!r} in {store.location}")
        self.video_ids = [vid for _, _, vid in located]
        lengths = np.array([index[v].stop - index[v].start for v in self.video_ids], dtype=np.int64)
        longest = int(lengths.max())
        self.width = min(longest, max_frames) if max_frames else longest
        self._shard = np.array([s for s, _, _ in located], dtype=np.int64)
        # Each video's frame rows inside its shard, after the uniform resampling to `width`.
        self._rows = [start + (resampled_rows(int(n), self.width) if n > self.width else np.arange(n))
                      for (_, start, _), n in zip(located, lengths)]
        self._arrays = {int(s): store.shard_array(int(s), feature) for s in np.unique(self._shard)}
        self._times = {int(s): store.shard_array(int(s), "frame_time") for s in np.unique(self._shard)}
        self.dim = int(next(iter(self._arrays.values())).shape[1])

    def __len__(self) -> int:
        return len(self.video_ids)

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.video_ids), self.width, self.dim

    def times_and_mask(self) -> tuple[np.ndarray, np.ndarray]:
        """((N, width) float32 seconds, 0 on padding; (N, width) bool, True on real frames)."""
        times = np.zeros((len(self), self.width), dtype=np.float32)
        mask = np.zeros((len(self), self.width), dtype=bool)
        for shard, stamps in self._times.items():
            stamps = stamps[...]
            for i in np.flatnonzero(self._shard == shard):
                rows = self._rows[i]
                times[i, : len(rows)] = stamps[rows]
                mask[i, : len(rows)] = True
        return times, mask

    def take(self, rows: np.ndarray, width: int | None = None) -> np.ndarray:
        """(len(rows), width, dim) float16 frames of the videos at `rows`, zeros past each video's end."""
        width = self.width if width is None else width
        rows = np.asarray(rows, dtype=np.int64)
        out = np.zeros((len(rows), width, self.dim), dtype=np.float16)
        for shard in np.unique(self._shard[rows]):
            mine = np.flatnonzero(self._shard[rows] == shard)
            wanted = [self._rows[rows[j]][:width] for j in mine]
            block = self._arrays[int(shard)].take(np.concatenate(wanted))
            at = 0
            for j, frames in zip(mine, wanted):
                out[j, : len(frames)] = block[at:at + len(frames)]
                at += len(frames)
        return out


class StoredTokens:
    """A text model's token features of some queries of a split, read on demand."""

    def __init__(self, text: TextSplit, model: str, keep: np.ndarray):
        self._tokens, lengths = text.lazy_tokens(model)
        self._keep = np.asarray(keep, dtype=np.int64)  # stored row of each query kept
        self.lengths = lengths[self._keep]
        self.width, self.dim = int(self._tokens.shape[1]), int(self._tokens.shape[2])

    def __len__(self) -> int:
        return len(self._keep)

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self._keep), self.width, self.dim

    def take(self, rows: np.ndarray, width: int | None = None) -> np.ndarray:
        """(len(rows), width, dim) float16 token features of the queries at `rows`."""
        width = self.width if width is None else width
        block = self._tokens.take(self._keep[np.asarray(rows, dtype=np.int64)])
        return block[:, :width].astype(np.float16, copy=False)
