"""The Zarr feature store: the one place that knows its layout.

    <store>/
      zarr.json                       attrs: layout version
      videos/shard-00042/             one group per extraction shard, one writer each
        frame_time                    (frames_in_shard,) float32 seconds
        offsets                       (videos_in_shard + 1,) int64, written at commit
        <feature>                     (frames_in_shard, D) float16, e.g. teacher.<key>, visual.clip
        attrs: video_ids, splits, durations, failed {video_id: error}, started_at,
               fingerprint, committed {at, fingerprint} (written last: the commit marker),
               integrity {algorithm, objects {key: [bytes, crc32]}} (in the marker's write; storage/integrity.py),
               last_error (a failed attempt, for status),
               history [{event: started|failed|committed, at, by: host:pid}] kept across restarts
      text/<split>/                   one group per split
        moment                        (queries, 2) float32 seconds, NaN when unknown
        sentence.<teacher>            (queries, D) float16, L2-normalised
        tokens.<model>                (queries, L, W) float16, zeros beyond length
        token_lengths.<model>         (queries,) int32
        attrs: query_ids, video_ids, texts, fingerprint, committed {at, fingerprint}, integrity
      leases/                         the writer's lease (storage/lease.py): one writer per store

A shard or text split counts only when its commit marker holds the current fingerprint and
what the commit wrote is still there ("corrupt" otherwise: see storage/integrity.py).
Array names and chunking: storage/store_layout.py; the shard and text writers:
storage/store_writers.py; reading and committing through them: FeatureStore, here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import zarr

from prvr.errors import UserError
from storage import integrity
from storage.integrity import Level
from storage.location import list_sizes, store_exists, zarr_store
from storage.store_layout import (  # noqa: F401 (the store's vocabulary, for its readers too)
    CHUNK_BYTES, HISTORY_KEEP, LAYOUT_VERSION, event, now, resampled_rows, sentence_array, shard_name, teacher_array,
    token_arrays, visual_array,
)
from storage.store_writers import ShardWriter, TextWriter

class StoreError(UserError, RuntimeError):
    """The store is missing, incomplete or does not hold what was asked for."""


class ShardsBeyondPlan(StoreError):
    """Committed shards past the current plan (the manifest shrank): kept unless pruning is asked for."""

    def __init__(self, location: str, shards: list[int], planned: int, how_to_prune: str):
        self.shards = shards
        super().__init__(
            f"the store {location} holds {len(shards)} committed shard(s) beyond the {planned} shard(s) of the "
            f"current manifest: {shards}. They are kept: deleting committed work needs your word. If the "
            f"manifest shrank on purpose, {how_to_prune} to delete them; otherwise restore the missing videos "
            f"to the manifest (or use another store).")


DAMAGED_ADVICE = ("`prvr status CONFIG --verify` checks every shard; the extract stage redoes damaged shards "
                  "(with --set extract.verify=checksums for damage that kept the sizes)")


class _NamedArray:
    """A stored array whose read errors say which store, shard or split and array failed."""

    def __init__(self, array: zarr.Array, where: str):
        self._array = array
        self.where = where
        self.shape, self.dtype, self.chunks, self.ndim = array.shape, array.dtype, array.chunks, array.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return self._array[key]
        except Exception as e:
            raise StoreError(f"{self.where}: cannot read the stored data ({type(e).__name__}: {e}); "
                             f"{DAMAGED_ADVICE}") from e

    def take(self, rows: np.ndarray) -> np.ndarray:
        """The given rows (any order, repeats allowed), reading each chunk they touch once."""
        unique, inverse = np.unique(np.asarray(rows, dtype=np.int64), return_inverse=True)
        if len(unique) == 0:
            return np.zeros((0, *self.shape[1:]), dtype=self.dtype)
        lo, hi = int(unique[0]), int(unique[-1]) + 1
        try:
            # A dense run reads as one slice, cheaper than an orthogonal selection over the same chunks.
            block = (self._array[lo:hi][unique - lo] if hi - lo <= 2 * len(unique)
                     else self._array.oindex[unique])
        except Exception as e:
            raise StoreError(f"{self.where}: cannot read the stored data ({type(e).__name__}: {e}); "
                             f"{DAMAGED_ADVICE}") from e
        return block[inverse]

    def __len__(self) -> int:
        return self.shape[0]

    def __dask_tokenize__(self) -> tuple:
        return ("prvr-stored-array", self.where, self.shape, str(self.dtype), self.chunks)


@dataclass(frozen=True)
class ShardStatus:
    index: int
    state: str  # committed | stale | failed | missing | corrupt (committed, but its data is damaged)
    committed_at: str | None = None
    videos: int = 0
    failed_videos: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    note: str | None = None
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "shard": self.index, "state": self.state, "committed_at": self.committed_at,
            "videos": self.videos, "failed_videos": self.failed_videos, "error": self.error, "note": self.note,
            "problems": self.problems,
        }


@dataclass(frozen=True)
class TextStatus:
    split: str
    state: str  # committed | stale | missing | corrupt
    note: str | None = None
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class VideoLocation:
    shard: int
    start: int
    stop: int
    split: str
    duration: float


@dataclass
class PaddedSplit:
    video_ids: list[str]
    features: np.ndarray  # (N, T, D)
    mask: np.ndarray  # (N, T) bool, True on real frames
    times: np.ndarray  # (N, T) float32 seconds, 0 on padding


@dataclass
class TextSplit:
    query_ids: list[str]
    video_ids: list[str]
    texts: list[str]
    moments: np.ndarray  # (Q, 2) float32, NaN when unknown
    group: Any = field(repr=False)

    def sentences(self, teacher: str) -> np.ndarray:
        return _read(self.group, sentence_array(teacher), self.where)

    def tokens(self, model: str) -> tuple[np.ndarray, np.ndarray]:
        tokens, lengths = token_arrays(model)
        return _read(self.group, tokens, self.where), _read(self.group, lengths, self.where)

    def lazy_tokens(self, model: str) -> tuple[_NamedArray, np.ndarray]:
        """(token features read on demand (Q, L, W), token counts (Q,)): for data larger than memory."""
        tokens, lengths = token_arrays(model)
        return _named(self.group, tokens, self.where), _read(self.group, lengths, self.where)

    @property
    def where(self) -> str:
        return f"text split {self.group.path.removeprefix('text/')!r}"


def _list_dir(store, prefix: str) -> list[str]:
    from zarr.core.sync import sync

    async def collect() -> list[str]:
        return [name async for name in store.list_dir(prefix)]

    return sync(collect())


def _named(group, name: str, where: str) -> _NamedArray:
    if name not in group:
        raise StoreError(f"{group.path}: no array {name!r}; present: {sorted(group.array_keys())}")
    return _NamedArray(group[name], f"{where}, array {name!r} of {group.store}")


def _read(group, name: str, where: str) -> np.ndarray:
    return _named(group, name, where)[...]


class FeatureStore:
    """Read and write the feature store at a local path or fsspec URL."""

    def __init__(self, location: str, mode: str = "r", lease_token: str | None = None):
        """`lease_token`: the writer's lease (storage/lease.py) this store's writes go under; every
        shard and text split checks it before it starts and before it commits."""
        self.location = location
        self.lease_token = lease_token
        if mode == "r" and not store_exists(location):
            raise StoreError(f"no feature store at {location}; run the extract stage first")
        store = zarr_store(location, read_only=(mode == "r"))
        # State checks must see the truth, never a consolidated snapshot taken earlier.
        self.root = zarr.open_group(store, mode="r" if mode == "r" else "a", use_consolidated=False)
        if mode != "r" and "layout_version" not in self.root.attrs:
            self.root.attrs.update({"layout_version": LAYOUT_VERSION, "created_at": now()})
        self._index: dict[str, VideoLocation] | None = None

    # ---- integrity and the writer's lease --------------------------------------
    def _fence(self) -> None:
        if self.lease_token is not None:
            from storage.lease import check_holder

            check_holder(self.location, self.lease_token)

    def _read_object(self, key: str) -> bytes | None:
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        buffer = sync(self.root.store.get(key, prototype=default_buffer_prototype()))
        return None if buffer is None else buffer.to_bytes()

    def _record_group(self, prefix: str) -> dict:
        """Read back what a commit wrote under `prefix` and record it (storage/integrity.py)."""
        return integrity.make_record(prefix, list_sizes(self.location, prefix), self._read_object)

    def _problems(self, attrs: dict[str, Any], prefix: str, sizes: dict[str, int], level: Level) -> list[str]:
        record = attrs.get("integrity")
        if not record:  # committed before records were kept: nothing to compare with
            return []
        return integrity.find_problems(record, prefix, sizes, level, self._read_object)

    # ---- shards -------------------------------------------------------------
    def _videos(self) -> zarr.Group | None:
        return self.root["videos"] if "videos" in self.root else None

    def shard_indices(self) -> list[int]:
        # List names from the store itself: parsing each child's metadata would fail on a torn one.
        names = _list_dir(self.root.store, "videos")
        return sorted(int(k.split("-")[1]) for k in names if k.startswith("shard-") and k[6:].isdigit())

    def _shard_attrs(self, index: int) -> dict[str, Any] | None:
        videos = self._videos()
        if videos is None:
            return None
        try:
            return dict(videos[shard_name(index)].attrs)
        except KeyError:
            return None
        except Exception as e:  # a torn zarr.json from a killed writer reads as "not committed"
            return {"_unreadable": f"{type(e).__name__}: {e}"}

    def begin_shard(self, index: int, feature_dims: dict[str, int]) -> ShardWriter:
        """Start (or restart) a shard: any earlier partial or stale content is removed."""
        self._fence()
        videos = self.root.require_group("videos")
        history = (self.shard_history(index) + [event("started")])[-HISTORY_KEEP:]  # outlives the group
        group = videos.create_group(shard_name(index), overwrite=True)
        group.attrs.update({"started_at": history[-1]["at"], "committed": None, "history": history})
        self._index = None
        return ShardWriter(group, feature_dims, history, record=self._record_group, fence=self._fence)

    def shard_history(self, index: int) -> list[dict[str, Any]]:
        """Every start, failure and commit of a shard, oldest first (see HISTORY_KEEP)."""
        history = (self._shard_attrs(index) or {}).get("history")
        return list(history) if isinstance(history, list) else []

    def record_shard_failure(self, index: int, error: str) -> None:
        """Remember why the last attempt failed, for `prvr status`; never touches a committed shard's data."""
        videos = self.root.require_group("videos")
        name = shard_name(index)
        group = videos[name] if name in videos else videos.create_group(name)
        attrs = dict(group.attrs)
        if attrs.get("committed"):
            return
        history = (list(attrs.get("history") or []) + [event("failed", error=error[:300])])[-HISTORY_KEEP:]
        group.attrs.update({"last_error": {"at": now(), "error": error[:2000]}, "history": history})

    def shard_status(self, index: int, fingerprint: str | None, verify: Level | None = "sizes") -> ShardStatus:
        """A shard's state; `verify` also compares a committed shard's objects with its commit's record."""
        return self.shard_statuses({index: fingerprint}, verify)[index]

    def shard_statuses(self, fingerprints: dict[int, str | None],
                       verify: Level | None = "sizes") -> dict[int, ShardStatus]:
        """The state of each shard in `fingerprints` (index -> expected fingerprint, None: any), checked
        against their commits' records at level `verify` with one listing of the store."""
        sizes: dict[str, int] | None = None
        if verify is not None and fingerprints:
            only = next(iter(fingerprints)) if len(fingerprints) == 1 else None
            sizes = list_sizes(self.location, "videos" if only is None else f"videos/{shard_name(only)}")
        return {i: self._one_status(i, fp, sizes, verify) for i, fp in fingerprints.items()}

    def _one_status(self, index: int, fingerprint: str | None, sizes: dict[str, int] | None,
                    verify: Level | None) -> ShardStatus:
        attrs = self._shard_attrs(index)
        if attrs is None:
            return ShardStatus(index, "missing")
        if "_unreadable" in attrs:
            return ShardStatus(index, "missing", note=f"unreadable metadata: {attrs['_unreadable']}")
        committed = attrs.get("committed")
        if committed:
            state = "committed" if fingerprint is None or committed.get("fingerprint") == fingerprint else "stale"
            problems = []
            if state == "committed" and verify is not None:
                problems = self._problems(attrs, f"videos/{shard_name(index)}", sizes or {}, verify)
            note = None
            if problems:
                state, note = "corrupt", f"{shard_name(index)} is damaged: " + "; ".join(problems[:5]) + (
                    f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            elif state == "committed" and verify is not None and not attrs.get("integrity"):
                note = "committed before integrity records were kept: not verifiable"
            return ShardStatus(index, state, committed_at=committed.get("at"), videos=len(attrs.get("video_ids", [])),
                               failed_videos=attrs.get("failed", {}), note=note, problems=problems)
        last_error = attrs.get("last_error")
        if last_error:
            return ShardStatus(index, "failed", error=last_error.get("error"), note=f"failed at {last_error.get('at')}")
        return ShardStatus(index, "missing", note=f"incomplete: started {attrs.get('started_at')} and never committed")

    def shards_beyond(self, first_unused: int) -> list[int]:
        """Shard groups at or past index `first_unused`: beyond the current sharding."""
        return [i for i in self.shard_indices() if i >= first_unused]

    def drop_shards_from(self, first_unused: int, prune: bool = False,
                         how_to_prune: str = "pass prune=True") -> list[int]:
        """Remove shard groups beyond the current sharding (the manifest shrank).

        Uncommitted ones (partial, failed) hold no finished work and go. Committed ones go only
        with `prune`; otherwise ShardsBeyondPlan names them and says `how_to_prune`, and nothing
        is removed.
        """
        beyond = self.shards_beyond(first_unused)
        committed = [i for i in beyond if (self._shard_attrs(i) or {}).get("committed")]
        if committed and not prune:
            raise ShardsBeyondPlan(self.location, committed, first_unused, how_to_prune)
        self._fence()
        videos = self._videos()
        for i in beyond:
            del videos[shard_name(i)]
        if beyond:
            self._index = None
        return beyond

    # ---- reading videos -----------------------------------------------------
    def committed_shards(self) -> list[int]:
        return [i for i in self.shard_indices() if (self._shard_attrs(i) or {}).get("committed")]

    def readable_shards(self) -> list[int]:
        """The committed shards, for readers: raises StoreError, naming them, when any of them is damaged
        (a missing chunk would otherwise read as zeros). Checks sizes: one listing of the store."""
        committed = self.committed_shards()
        damaged = [s for s in self.shard_statuses({i: None for i in committed}, "sizes").values()
                   if s.state == "corrupt"]
        if damaged:
            raise StoreError(f"{self.location}: " + " | ".join(s.note for s in damaged) + f". {DAMAGED_ADVICE}")
        return committed

    def video_index(self) -> dict[str, VideoLocation]:
        if self._index is None:
            index: dict[str, VideoLocation] = {}
            for i in self.readable_shards():
                group = self.root["videos"][shard_name(i)]
                attrs = group.attrs
                offsets = _read(group, "offsets", shard_name(i))
                for j, vid in enumerate(attrs["video_ids"]):
                    index[vid] = VideoLocation(i, int(offsets[j]), int(offsets[j + 1]), attrs["splits"][j],
                                               float(attrs["durations"][j]))
            self._index = index
        return self._index

    def feature_names(self) -> list[str]:
        shards = self.committed_shards()
        if not shards:
            return []
        group = self.root["videos"][shard_name(shards[0])]
        return sorted(k for k in group.array_keys() if k not in ("frame_time", "offsets"))

    def shard_array(self, shard: int, name: str) -> _NamedArray:
        """One array of a committed shard (rows = frames), read lazily."""
        return self._shard_array(shard, name)

    def _shard_array(self, shard: int, name: str) -> _NamedArray:
        group = self.root["videos"][shard_name(shard)]
        if name not in group:
            raise StoreError(f"feature {name!r} not in the store; present: {self.feature_names()}")
        return _NamedArray(group[name], f"{shard_name(shard)}, array {name!r} of {self.location}")

    def video_frames(self, video_id: str, feature: str) -> tuple[np.ndarray, np.ndarray]:
        """(frames (T, D) float16, times (T,) float32) of one video."""
        loc = self.video_index().get(video_id)
        if loc is None:
            raise StoreError(f"video {video_id!r} is not in any committed shard of {self.location}")
        frames = self._shard_array(loc.shard, feature)[loc.start:loc.stop]
        times = self._shard_array(loc.shard, "frame_time")[loc.start:loc.stop]
        return frames, times

    def split_video_ids(self, split: str) -> list[str]:
        split = self.resolve_split(split)
        return [vid for vid, loc in self.video_index().items() if loc.split == split]

    def iter_split(self, split: str, feature: str) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        """(video_id, frames, times) for every stored video of a split, reading each shard once."""
        split = self.resolve_split(split)
        by_shard: dict[int, list[tuple[str, VideoLocation]]] = {}
        for vid, loc in self.video_index().items():
            if loc.split == split:
                by_shard.setdefault(loc.shard, []).append((vid, loc))
        for shard in sorted(by_shard):
            frames = self._shard_array(shard, feature)[...]
            times = self._shard_array(shard, "frame_time")[...]
            for vid, loc in by_shard[shard]:
                yield vid, frames[loc.start:loc.stop], times[loc.start:loc.stop]

    def padded(self, split: str, feature: str, max_frames: int | None = None,
               dtype: np.dtype | type = np.float32) -> PaddedSplit:
        """A split as padded arrays with a mask; videos longer than max_frames are uniformly resampled."""
        items = list(self.iter_split(split, feature))
        if not items:
            raise StoreError(f"no videos of split {split!r} in {self.location}")
        longest = max(len(t) for _, _, t in items)
        t_max = min(longest, max_frames) if max_frames else longest
        dim = items[0][1].shape[1]
        feats = np.zeros((len(items), t_max, dim), dtype=dtype)
        mask = np.zeros((len(items), t_max), dtype=bool)
        times = np.zeros((len(items), t_max), dtype=np.float32)
        for i, (_, f, t) in enumerate(items):
            if len(t) > t_max:
                keep = resampled_rows(len(t), t_max)
                f, t = f[keep], t[keep]
            feats[i, : len(t)] = f
            mask[i, : len(t)] = True
            times[i, : len(t)] = t
        return PaddedSplit([vid for vid, _, _ in items], feats, mask, times)

    def dask_frames(self, feature: str):
        """All committed frames of a feature as one dask array (rows = frames), with per-video offsets.

        Returns (array (F, D), offsets (V+1,), video_ids, splits); blocks follow the Zarr chunks.
        """
        import dask.array as da

        parts, video_ids, splits, offsets = [], [], [], [0]
        for i in self.readable_shards():
            group = self.root["videos"][shard_name(i)]
            arr = self._shard_array(i, feature)
            parts.append(da.from_array(arr, chunks=arr.chunks))
            shard_offsets = _read(group, "offsets", shard_name(i))
            offsets.extend((shard_offsets[1:] + offsets[-1]).tolist())
            video_ids.extend(group.attrs["video_ids"])
            splits.extend(group.attrs["splits"])
        if not parts:
            raise StoreError(f"no committed shards in {self.location}")
        return da.concatenate(parts, axis=0), np.asarray(offsets, dtype=np.int64), video_ids, splits

    def record_source(self, source: dict[str, Any]) -> None:
        """Where the store's data came from (kind, format, collection, ...), kept in the root's attributes."""
        self.root.attrs.update({"source": source})

    # ---- split aliases --------------------------------------------------------
    # Some releases evaluate on the same queries they validate on (MS-SL's TVR and Charades
    # caption files repeat `val` as `test`): the split is stored once and the other name points to it.
    def split_aliases(self) -> dict[str, str]:
        return dict(self.root.attrs.get("split_aliases") or {})

    def set_split_alias(self, alias: str, target: str | None) -> None:
        aliases = self.split_aliases()
        if target is None:
            aliases.pop(alias, None)
        else:
            aliases[alias] = target
        self.root.attrs.update({"split_aliases": aliases})

    def resolve_split(self, split: str) -> str:
        return self.split_aliases().get(split, split)

    def has_text_split(self, split: str) -> bool:
        """A committed text split under this name or an alias of it."""
        return self.text_status(split, None, verify=None) == "committed"

    # ---- text ---------------------------------------------------------------
    def _text_attrs(self, split: str) -> dict[str, Any] | None:
        """A text split's attributes; None when absent, {"_unreadable": why} when its metadata is torn."""
        if split not in self.text_splits():
            return None
        try:
            return dict(self.root["text"][split].attrs)
        except KeyError:
            return None
        except Exception as e:  # a torn zarr.json from a killed writer reads as "not committed"
            return {"_unreadable": f"{type(e).__name__}: {e}"}

    def text_report(self, split: str, fingerprint: str | None, verify: Level | None = "sizes") -> TextStatus:
        """A text split's state, and what is damaged when a committed split no longer matches its record."""
        split = self.resolve_split(split)
        attrs = self._text_attrs(split)
        if attrs is None:
            return TextStatus(split, "missing")
        if "_unreadable" in attrs:
            return TextStatus(split, "missing", note=f"unreadable metadata: {attrs['_unreadable']}")
        committed = attrs.get("committed")
        if not committed:
            return TextStatus(split, "missing", note="started and never committed")
        if fingerprint is not None and committed.get("fingerprint") != fingerprint:
            return TextStatus(split, "stale")
        if verify is not None:
            prefix = f"text/{split}"
            problems = self._problems(attrs, prefix, list_sizes(self.location, prefix), verify)
            if problems:
                return TextStatus(split, "corrupt", note=f"text split {split!r} is damaged: " + "; ".join(problems[:5]),
                                  problems=problems)
        return TextStatus(split, "committed")

    def text_status(self, split: str, fingerprint: str | None, verify: Level | None = "sizes") -> str:
        return self.text_report(split, fingerprint, verify).state

    def begin_text(self, split: str, query_ids: list[str], video_ids: list[str], texts: list[str],
                   moments: np.ndarray, arrays: dict[str, tuple[int, ...]]) -> TextWriter:
        self._fence()
        group = self.root.require_group("text").create_group(split, overwrite=True)
        group.attrs.update({"query_ids": query_ids, "video_ids": video_ids, "texts": texts, "committed": None})
        group.create_array("moment", data=np.asarray(moments, dtype=np.float32).reshape(len(query_ids), 2))
        return TextWriter(group, len(query_ids), arrays, record=self._record_group, fence=self._fence)

    def text(self, split: str) -> TextSplit:
        split = self.resolve_split(split)
        report = self.text_report(split, None, verify="sizes")
        if report.state == "corrupt":
            raise StoreError(f"{self.location}: {report.note}. {DAMAGED_ADVICE}")
        if report.state != "committed":
            raise StoreError(f"text of split {split!r} is not committed in {self.location}")
        group = self.root["text"][split]
        attrs = group.attrs
        return TextSplit(list(attrs["query_ids"]), list(attrs["video_ids"]), list(attrs["texts"]),
                         _read(group, "moment", f"text split {split!r}"), group)

    def text_splits(self) -> list[str]:
        # Names from the store itself: opening each split's metadata would fail on a torn one.
        return sorted(name for name in _list_dir(self.root.store, "text") if name != "zarr.json")

    def invalidate_consolidated(self) -> None:
        """Drop the root's consolidated snapshot before writing, so no reader sees stale metadata."""
        self.root.attrs.update({"modified_at": now()})

    def commit_fingerprints(self) -> dict[str, str]:
        """The fingerprint of every committed shard and text split: the identity of the store's data."""
        found = {}
        for i in self.committed_shards():
            found[shard_name(i)] = self._shard_attrs(i)["committed"]["fingerprint"]
        for split in self.text_splits():
            committed = (self._text_attrs(split) or {}).get("committed")
            if committed:
                found[f"text/{split}"] = committed["fingerprint"]
        return found

    # ---- finishing ----------------------------------------------------------
    def consolidate(self) -> None:
        """Snapshot all metadata in the root (one read for remote readers); call after a stage finished."""
        zarr.consolidate_metadata(self.root.store)

    # ---- committed identities and lazy sentences (for derived caches) --------
    def committed_shard_fingerprint(self, index: int) -> str | None:
        """The fingerprint in a shard's commit marker; None while it is not committed."""
        committed = (self._shard_attrs(index) or {}).get("committed")
        return committed.get("fingerprint") if committed else None

    def committed_text_fingerprint(self, split: str) -> str | None:
        """The fingerprint in a text split's commit marker; None while it is not committed."""
        committed = (self._text_attrs(self.resolve_split(split)) or {}).get("committed")
        return committed.get("fingerprint") if committed else None

    def dask_sentences(self, split: str, teacher: str, rows_per_block: int):
        """A split's teacher sentence embeddings (Q, D) as a dask array read lazily from Zarr."""
        import dask.array as da

        text = self.text(split)
        arr = _named(text.group, sentence_array(teacher), text.where)
        return da.from_array(arr, chunks=(max(1, rows_per_block), arr.shape[1]))
