"""The dataset manifest: videos.jsonl and queries.jsonl under the dataset root.

Validated whole before any work starts; every problem is reported at once with its
file and line, so a user fixes a manifest in one pass.

Video paths stay inside the root, as written and after following links: a link in
the root may lead to a folder elsewhere only when the root's `allowed_outside.json`
lists that folder (`prvr import` writes it for the `videos` link it makes).
"""

from __future__ import annotations

import codecs
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from prvr.errors import MAX_LISTED, UserError, problem_list

VIDEOS_FILE = "videos.jsonl"
QUERIES_FILE = "queries.jsonl"
# {"folders": ["/abs/folder", ...]}: folders outside the root that links in the root may lead to.
OUTSIDE_FILE = "allowed_outside.json"
SPLITS = ("train", "val", "test")


class ManifestError(UserError, ValueError):
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
        return [s for s in SPLITS if s in seen]

    def queries_of(self, split: str) -> list[Query]:
        return [q for q in self.queries if q.split == split]

    def videos_of(self, split: str) -> list[Video]:
        return [v for v in self.videos if v.split == split]


def _not_utf8(where: str, byte: int, column: int) -> str:
    return f"{where}: not UTF-8 (byte 0x{byte:02x} in column {column})"


def iter_lines(path: Path, problems: list[str], every: int = 0,
               on_progress: Callable[[int], None] | None = None) -> Iterator[tuple[int, str]]:
    """(line number, text) per line of a UTF-8 file (a leading byte-order mark is skipped); a line
    that is not UTF-8 goes to `problems` as `file:line: not UTF-8 (...)`. `on_progress(lines read)`
    is called every `every` lines and at the end."""
    n = 0
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            if on_progress is not None and every and n % every == 0:
                on_progress(n)
            if n == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            try:
                yield n, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                problems.append(_not_utf8(f"{path.name}:{n}", raw[e.start], e.start + 1))
    if on_progress is not None:
        on_progress(n)


def read_text(path: Path, problems: list[str]) -> str | None:
    """A whole UTF-8 file (byte-order mark skipped); None, with `file:line: not UTF-8` in `problems`, if it is not."""
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line, column = data.count(b"\n", 0, e.start) + 1, e.start - data.rfind(b"\n", 0, e.start)
        problems.append(_not_utf8(f"{path.name}:{line}", data[e.start], column))
        return None


def iter_jsonl(path: Path, problems: list[str], every: int = 0,
               on_progress: Callable[[int], None] | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, object) per JSON-object line; bad lines go to `problems` as `file:line: why`.
    `on_progress(lines read)` is called every `every` lines and at the end."""
    for n, line in iter_lines(path, problems, every, on_progress):
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


def _read_jsonl(path: Path, problems: list[str]) -> list[tuple[int, dict]]:
    return list(iter_jsonl(path, problems))


def _need_str(obj: dict, key: str, where: str, problems: list[str]) -> str | None:
    v = obj.get(key)
    if not isinstance(v, str) or not v.strip():
        problems.append(f"{where}: `{key}` must be a non-empty string")
        return None
    return v


def _need_split(obj: dict, where: str, problems: list[str]) -> str | None:
    split = _need_str(obj, "split", where, problems)
    if split is not None and split not in SPLITS:
        problems.append(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
    return split


def _inside(root: Path, rel: str) -> Path | None:
    """The path a manifest line names, when its text stays inside the root (no absolute
    paths, no `..` out of it). Where links lead is checked by `_link_problem`."""
    p = Path(rel)
    if p.is_absolute():
        return None
    full = Path(os.path.normpath(root / p))
    return full if full.is_relative_to(root) else None


def _link_problem(root: Path, full: Path, allowed: list[Path]) -> str | None:
    """Why `full` (inside the root as written) is refused once links are followed, or None."""
    real = full.resolve()
    if real.is_relative_to(root) or any(real.is_relative_to(folder) for folder in allowed):
        return None
    return f"leads outside the dataset root through a link (to {real}); list its folder in {OUTSIDE_FILE} to allow it"


def outside_folders(root: Path, problems: list[str]) -> list[Path]:
    """The folders the root's OUTSIDE_FILE allows links to lead to ([] without the file)."""
    path = root / OUTSIDE_FILE
    if not path.exists():
        return []
    text = read_text(path, problems)
    if text is None:
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        problems.append(f"{OUTSIDE_FILE}:{e.lineno}: not valid JSON ({e.msg})")
        return []
    folders = data.get("folders") if isinstance(data, dict) else None
    if (not isinstance(folders, list) or set(data) != {"folders"}
            or not all(isinstance(f, str) and Path(f).is_absolute() for f in folders)):
        problems.append(f'{OUTSIDE_FILE}: expected {{"folders": ["/absolute/folder", ...]}}')
        return []
    return [Path(f).resolve() for f in folders]


def load_manifest(root: str | Path, check_files: bool = True, max_listed: int = MAX_LISTED) -> Manifest:
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

    allowed = outside_folders(root, problems)
    videos: list[Video] = []
    first_line: dict[str, int] = {}
    before = len(problems)
    video_rows = _read_jsonl(root / VIDEOS_FILE, problems)
    # An empty file is a mistake (a failed export, the wrong folder) that would surface
    # only much later, as an empty store or a training run without data.
    if not video_rows and len(problems) == before:
        problems.append(f"{VIDEOS_FILE}: lists no videos")
    for n, obj in video_rows:
        where = f"{VIDEOS_FILE}:{n}"
        vid = _need_str(obj, "video_id", where, problems)
        rel = _need_str(obj, "path", where, problems)
        split = _need_split(obj, where, problems)
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
        escape = _link_problem(root, full, allowed)
        if escape is not None:
            problems.append(f"{where}: path {rel!r} {escape}")
            continue
        if check_files and not full.exists():
            problems.append(f"{where}: file {rel!r} does not exist")
            continue
        if check_files and not full.is_file():
            what = "a folder" if full.is_dir() else "not a regular file"
            problems.append(f"{where}: path {rel!r} is {what}, not a video file")
            continue
        videos.append(Video(vid, full, split))

    known = {v.video_id: v for v in videos}
    queries: list[Query] = []
    seen_q: dict[str, int] = {}
    before = len(problems)
    query_rows = _read_jsonl(root / QUERIES_FILE, problems)
    if not query_rows and len(problems) == before:
        problems.append(f"{QUERIES_FILE}: lists no queries")
    for n, obj in query_rows:
        where = f"{QUERIES_FILE}:{n}"
        qid = _need_str(obj, "query_id", where, problems)
        vid = _need_str(obj, "video_id", where, problems)
        text = _need_str(obj, "text", where, problems)
        split = _need_split(obj, where, problems)
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
        raise ManifestError(problem_list(f"manifest problems in {root}", problems, max_listed))
    return Manifest(root, videos, queries)
