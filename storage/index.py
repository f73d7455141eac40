"""The search index of a trained run: its student's encoded gallery, laid out to be memory-mapped.

    <run folder>/index/
      index.json              the record, written last and atomically (the commit marker):
                              format, fingerprint, inputs (what it was made from), built_at,
                              folder, branches, hidden, frames, videos {ids, splits, durations},
                              files {name: [bytes, crc32]}
      build-<id>/             the files of one build; a rebuild writes a new folder and then
                              switches the record to it, so a reader never sees half a build
                              and one that mapped the old files keeps reading whole ones
        offsets.npy           (V + 1,) int64: video v's frames are rows offsets[v]:offsets[v + 1]
        times.npy             (F,) float32 seconds of each frame from its video's start
        frames.<branch>.npy   (F, H) float16 L2-normalised frame vectors of one student branch

Only valid frames are stored (no padding), in the order of the record's video ids. The files
are plain .npy, written chunk by chunk into preallocated files (memory stays at one chunk) and
read with numpy's memory mapping: a query touches pages the OS keeps cached, and opening an
index of any size costs no reading.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prvr.errors import UserError
from storage.integrity import Level
from storage.runs import RunPaths, write_atomic
from storage.store_layout import now

INDEX_FORMAT = 1
RECORD_FILE = "index.json"
_BUILD_PREFIX = "build-"
_READ_BLOCK = 16 << 20  # bytes read at a time when checksumming a file


class SearchIndexError(UserError, RuntimeError):
    """No usable index: missing, damaged, or not the one asked for."""


def index_root(paths: RunPaths) -> Path:
    return paths.root / "index"


def frames_file(branch: str) -> str:
    return f"frames.{branch}.npy"


def _file_checksum(path: Path) -> int:
    """crc32 of a file, as storage.integrity records objects, read a block at a time."""
    value = 0
    with path.open("rb") as handle:
        while block := handle.read(_READ_BLOCK):
            value = zlib.crc32(block, value)
    return value & 0xFFFFFFFF


@dataclass(frozen=True)
class IndexState:
    state: str  # missing | current | stale | corrupt
    record: dict[str, Any] | None
    note: str = ""


def read_record(root: Path) -> dict[str, Any] | None:
    """The committed record; None when there is none. Raises SearchIndexError when it is unreadable."""
    path = Path(root) / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SearchIndexError(f"{path} is unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(record, dict) or record.get("format") != INDEX_FORMAT:
        raise SearchIndexError(f"{path} is not a search index record of format {INDEX_FORMAT}")
    return record


def find_problems(root: Path, record: dict[str, Any], level: Level = "sizes") -> list[str]:
    """What differs between the record and the files now: [] when the build is intact."""
    folder = Path(root) / record["folder"]
    problems = []
    for name, (size, crc) in sorted(record["files"].items()):
        path = folder / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != size:
            problems.append(f"{name} has {path.stat().st_size} bytes, {size} were written")
        elif level == "checksums" and _file_checksum(path) != crc:
            problems.append(f"{name}: checksum differs from the one recorded at commit")
    return problems


def index_state(root: Path, fingerprint: str | None, level: Level = "sizes") -> IndexState:
    """missing, corrupt, stale (made from other inputs than `fingerprint`) or current."""
    try:
        record = read_record(root)
    except SearchIndexError as e:
        return IndexState("corrupt", None, str(e))
    if record is None:
        return IndexState("missing", None, f"no search index in {root}")
    problems = find_problems(root, record, level)
    if problems:
        return IndexState("corrupt", record, f"the search index in {root} is damaged: " + "; ".join(problems[:5]))
    if fingerprint is not None and record["fingerprint"] != fingerprint:
        return IndexState("stale", record, "made from other inputs")
    return IndexState("current", record)


class IndexWriter:
    """Writes one build: `add` the encoded videos in order, then `commit`. Used as a context manager,
    an exception leaves the previous index as it was and removes the unfinished build."""

    def __init__(self, root: Path, branches: list[str], hidden: int, frames: int, videos: int):
        self.root = Path(root)
        self.folder = f"{_BUILD_PREFIX}{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        self.path = self.root / self.folder
        self.path.mkdir(parents=True)
        self.branches, self.hidden, self.frames, self.videos = list(branches), hidden, frames, videos
        self._vectors = {b: np.lib.format.open_memmap(self.path / frames_file(b), mode="w+", dtype=np.float16,
                                                      shape=(frames, hidden)) for b in self.branches}
        self._times = np.lib.format.open_memmap(self.path / "times.npy", mode="w+", dtype=np.float32,
                                                shape=(frames,))
        self._offsets = np.zeros(videos + 1, dtype=np.int64)
        self._rows = 0
        self._added = 0

    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            self.abort()

    def add(self, vectors: dict[str, np.ndarray], times: np.ndarray, lengths: np.ndarray) -> None:
        """The next videos: `lengths[i]` frames each, their rows concatenated in `vectors[branch]` and `times`."""
        lengths = np.asarray(lengths, dtype=np.int64)
        rows = int(lengths.sum())
        if set(vectors) != set(self.branches):
            raise ValueError(f"vectors of branches {sorted(vectors)}, expected {self.branches}")
        if any(v.shape != (rows, self.hidden) for v in vectors.values()) or len(times) != rows:
            raise ValueError(f"{len(lengths)} videos of {rows} frames need ({rows}, {self.hidden}) vectors and "
                             f"{rows} times")
        if self._rows + rows > self.frames or self._added + len(lengths) > self.videos:
            raise ValueError(f"more than the {self.videos} videos / {self.frames} frames this build was sized for")
        for branch, array in vectors.items():
            self._vectors[branch][self._rows:self._rows + rows] = array
        self._times[self._rows:self._rows + rows] = times
        self._offsets[self._added + 1:self._added + 1 + len(lengths)] = self._rows + np.cumsum(lengths)
        self._rows += rows
        self._added += len(lengths)

    def commit(self, fingerprint: str, inputs: dict[str, Any], video_ids: list[str], splits: list[str],
               durations: np.ndarray) -> dict[str, Any]:
        if (self._added, self._rows) != (self.videos, self.frames):
            raise ValueError(f"{self._added} of {self.videos} videos and {self._rows} of {self.frames} frames added")
        if not len(video_ids) == len(splits) == len(durations) == self.videos:
            raise ValueError("video ids, splits and durations must list every video once")
        for array in (*self._vectors.values(), self._times):
            array.flush()
        np.save(self.path / "offsets.npy", self._offsets)
        del self._vectors, self._times  # close the maps before the files are read back
        files = {}
        for path in sorted(self.path.iterdir()):
            _fsync(path)
            files[path.name] = [path.stat().st_size, _file_checksum(path)]
        record = {
            "format": INDEX_FORMAT, "fingerprint": fingerprint, "inputs": inputs, "built_at": now(),
            "folder": self.folder, "branches": self.branches, "hidden": self.hidden, "frames": self.frames,
            "videos": {"ids": list(video_ids), "splits": list(splits),
                       "durations": [float(d) for d in durations]},
            "files": files,
        }
        write_atomic(self.root / RECORD_FILE, json.dumps(record).encode())
        remove_other_builds(self.root, keep=self.folder)
        return record

    def abort(self) -> None:
        self.__dict__.pop("_vectors", None)
        self.__dict__.pop("_times", None)
        shutil.rmtree(self.path, ignore_errors=True)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def remove_other_builds(root: Path, keep: str) -> None:
    """Builds the record no longer names (replaced ones, and any a killed writer left)."""
    for path in Path(root).glob(f"{_BUILD_PREFIX}*"):
        if path.name != keep and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


@dataclass
class SearchIndex:
    """A committed index, opened: the arrays are memory-mapped (read-only) unless loaded."""

    root: Path
    record: dict[str, Any]
    offsets: np.ndarray  # (V + 1,) int64
    times: np.ndarray  # (F,) float32
    frames: dict[str, np.ndarray]  # branch -> (F, H) float16

    @property
    def video_ids(self) -> list[str]:
        return self.record["videos"]["ids"]

    @property
    def splits(self) -> list[str]:
        return self.record["videos"]["splits"]

    @property
    def durations(self) -> list[float]:
        return self.record["videos"]["durations"]

    @property
    def branches(self) -> list[str]:
        return list(self.record["branches"])

    @property
    def nbytes(self) -> int:
        return sum(size for size, _ in self.record["files"].values())

    def rows(self, video: int) -> slice:
        return slice(int(self.offsets[video]), int(self.offsets[video + 1]))


def open_index(root: Path, mmap: bool = True) -> SearchIndex:
    """The committed index under `root`, its sizes checked against the record. Raises SearchIndexError."""
    root = Path(root)
    record = read_record(root)
    if record is None:
        raise SearchIndexError(f"no search index in {root}")
    problems = find_problems(root, record, "sizes")
    if problems:
        raise SearchIndexError(f"the search index in {root} is damaged: " + "; ".join(problems[:5]))
    folder = root / record["folder"]
    # Copy-on-write maps are writable views for torch.from_numpy without copying; nothing is written back.
    mode = "c" if mmap else None

    def load(name: str) -> np.ndarray:
        try:
            return np.load(folder / name, mmap_mode=mode, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise SearchIndexError(f"{folder / name} is unreadable ({type(e).__name__}: {e})") from None

    offsets = np.asarray(load("offsets.npy"))
    index = SearchIndex(root, record, offsets, load("times.npy"), {b: load(frames_file(b)) for b in record["branches"]})
    frames, hidden = record["frames"], record["hidden"]
    if len(offsets) != len(index.video_ids) + 1 or offsets[-1] != frames or index.times.shape != (frames,) or any(
            a.shape != (frames, hidden) or a.dtype != np.float16 for a in index.frames.values()):
        raise SearchIndexError(f"the search index in {root} does not match its record (shapes or types)")
    return index
