"""The dataset manifest: videos.jsonl and queries.jsonl under the dataset root.

Validated whole before any work starts; every problem is reported at once with its
file and line, so a user fixes a manifest in one pass.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

VIDEOS_FILE = "videos.jsonl"
QUERIES_FILE = "queries.jsonl"
SPLITS = ("train", "val", "test")


class ManifestError(ValueError):
    """A manifest that cannot be used; the message lists every offending line."""


@dataclass(frozen=True)
class Video:
    video_id: str
    path: Path  # absolute, checked to lie inside the dataset root
    split: str


@dataclass(frozen=True)
class Query:
    query_id: str
    video_id: str
    text: str
    split: str
    moment: tuple[float, float] | None = None


@dataclass
class Manifest:
    root: Path
    videos: list[Video]
    queries: list[Query]
    _by_id: dict[str, Video] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_id = {v.video_id: v for v in self.videos}

    def video(self, video_id: str) -> Video:
        return self._by_id[video_id]

    def splits(self) -> list[str]:
        seen = {v.split for v in self.videos} | {q.split for q in self.queries}
        return [s for s in SPLITS if s in seen] + sorted(seen - set(SPLITS))

    def queries_of(self, split: str) -> list[Query]:
        return [q for q in self.queries if q.split == split]

    def videos_of(self, split: str) -> list[Video]:
        return [v for v in self.videos if v.split == split]


def iter_jsonl(path: Path, problems: list[str], every: int = 0,
               on_progress: Callable[[int], None] | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, object) per JSON-object line; bad lines go to `problems` as `file:line: why`.
    `on_progress(lines read)` is called every `every` lines and at the end."""
    n = 0
    with path.open(encoding="utf-8-sig") as f:  # tolerate a byte-order mark
        for n, line in enumerate(f, 1):
            if on_progress is not None and every and n % every == 0:
                on_progress(n)
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(f"{path.name}:{n}: not valid JSON ({e.msg})")
                continue
            if not isinstance(obj, dict):
                problems.append(f"{path.name}:{n}: expected a JSON object")
                continue
            yield n, obj
    if on_progress is not None:
        on_progress(n)


def _read_jsonl(path: Path, problems: list[str]) -> list[tuple[int, dict]]:
    return list(iter_jsonl(path, problems))


def _need_str(obj: dict, key: str, where: str, problems: list[str]) -> str | None:
    v = obj.get(key)
    if not isinstance(v, str) or not v.strip():
        problems.append(f"{where}: `{key}` must be a non-empty string")
        return None
    return v


def _inside(root: Path, rel: str) -> Path | None:
    """The path a manifest line names, when its text stays inside the root.

    The check is on the text (no absolute paths, no `..` out of the root): that is what a manifest
    or annotation file controls. Links inside the root are the owner's choice and are followed,
    e.g. `videos -> /data/tvr/videos` made by `prvr import` for a video folder kept elsewhere.
    """
    p = Path(rel)
    if p.is_absolute():
        return None
    full = Path(os.path.normpath(root / p))
    return full if full.is_relative_to(root) else None


def load_manifest(root: str | Path, check_files: bool = True, max_listed: int = 50) -> Manifest:
    """Read and validate the manifest under `root`. Raises ManifestError listing every problem."""
    root = Path(root).resolve()
    problems: list[str] = []
    if not root.is_dir():
        raise ManifestError(f"dataset root {root} is not a folder")
    for name in (VIDEOS_FILE, QUERIES_FILE):
        if not (root / name).is_file():
            problems.append(f"{name}: missing from {root}")
    if problems:
        raise ManifestError("manifest problems:\n  - " + "\n  - ".join(problems))

    videos: list[Video] = []
    first_line: dict[str, int] = {}
    for n, obj in _read_jsonl(root / VIDEOS_FILE, problems):
        where = f"{VIDEOS_FILE}:{n}"
        vid = _need_str(obj, "video_id", where, problems)
        rel = _need_str(obj, "path", where, problems)
        split = _need_str(obj, "split", where, problems)
        unknown = set(obj) - {"video_id", "path", "split", "duration"}
        if unknown:
            problems.append(f"{where}: unknown key(s) {sorted(unknown)}")
        if vid is None or rel is None or split is None:
            continue
        if vid in first_line:
            problems.append(f"{where}: duplicate video_id {vid!r} (first on line {first_line[vid]})")
            continue
        first_line[vid] = n
        full = _inside(root, rel)
        if full is None:
            problems.append(f"{where}: path {rel!r} escapes the dataset root")
            continue
        if check_files and not full.exists():
            problems.append(f"{where}: file {rel!r} does not exist")
            continue
        videos.append(Video(vid, full, split))

    known = {v.video_id: v for v in videos}
    queries: list[Query] = []
    seen_q: dict[str, int] = {}
    for n, obj in _read_jsonl(root / QUERIES_FILE, problems):
        where = f"{QUERIES_FILE}:{n}"
        qid = _need_str(obj, "query_id", where, problems)
        vid = _need_str(obj, "video_id", where, problems)
        text = _need_str(obj, "text", where, problems)
        split = _need_str(obj, "split", where, problems)
        unknown = set(obj) - {"query_id", "video_id", "text", "split", "moment"}
        if unknown:
            problems.append(f"{where}: unknown key(s) {sorted(unknown)}")
        if None in (qid, vid, text, split):
            continue
        if qid in seen_q:
            problems.append(f"{where}: duplicate query_id {qid!r} (first on line {seen_q[qid]})")
            continue
        seen_q[qid] = n
        if vid not in first_line:
            problems.append(f"{where}: unknown video_id {vid!r}")
            continue
        if vid in known and known[vid].split != split:
            problems.append(f"{where}: split {split!r} differs from its video's split {known[vid].split!r}")
        moment = None
        if obj.get("moment") is not None:
            m = obj["moment"]
            ok = (
                isinstance(m, list) and len(m) == 2
                and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in m)
                and 0 <= m[0] <= m[1]
            )
            if not ok:
                problems.append(f"{where}: moment must be [start_s, end_s] with 0 <= start <= end, got {m!r}")
                continue
            moment = (float(m[0]), float(m[1]))
        queries.append(Query(qid, vid, text, split, moment))

    if problems:
        shown = problems[:max_listed]
        more = f"\n  ... and {len(problems) - max_listed} more" if len(problems) > max_listed else ""
        raise ManifestError(f"manifest problems in {root}:\n  - " + "\n  - ".join(shown) + more)
    return Manifest(root, videos, queries)
