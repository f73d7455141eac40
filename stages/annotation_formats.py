"""Raw annotation files of the published datasets (TVR, ActivityNet Captions, Charades-STA):
which files a folder holds, and each dataset's parser into one shape (`Parsed`).

Every problem in the annotations is collected and reported at once, naming the file and line
(JSONL / text) or the video id (JSON), like stages/manifest.py. stages/annotations.py turns a
`Parsed` into a native manifest.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from prvr.errors import MAX_LISTED, UserError, problem_list
from stages.manifest import SPLITS, iter_jsonl, iter_lines, read_text
from stages.progress import Progress, counting

DATASETS = ("tvr", "activitynet", "charades")
PROGRESS_EVERY = 10_000  # lines between progress callbacks (TVR train has ~87k)

# Annotation file name -> our split before the val hold-out.
ANNOTATION_FILES: dict[str, dict[str, str]] = {
    "tvr": {"tvr_train_release.jsonl": "train", "tvr_val_release.jsonl": "test"},  # papers report on TVR val
    "activitynet": {"train.json": "train", "val_1.json": "test"},
    "charades": {"charades_sta_train.txt": "train", "charades_sta_test.txt": "test"},
}
# Annotation files recognised but not imported, and why (said in the report).
SKIPPED_FILES: dict[str, dict[str, str]] = {
    "tvr": {"tvr_test_public_release.jsonl": "it has no moments and the PRVR papers do not use it"},
    "activitynet": {"val_2.json": "it annotates the videos of val_1.json a second time; a video sits in one split only"},
    "charades": {},
}



class AnnotationError(UserError, ValueError):
    """Annotations (or an import request) that cannot be converted; lists every problem."""


def problems_error(title: str, problems: list[str], max_listed: int = MAX_LISTED) -> AnnotationError:
    return AnnotationError(problem_list(title, problems, max_listed))


# ---------------------------------------------------------------------------- annotation files


@dataclass(frozen=True)
class AnnotationFile:
    path: Path
    split: str  # our split, before the val hold-out


def annotation_files(dataset: str, annotations: Path) -> tuple[list[AnnotationFile], list[str]]:
    """The release files to read from `annotations` (a folder, or one release file).

    Returns the files in split order and notes about recognised files that are skipped.
    In a folder, files with other names are ignored (releases ship extra files).
    """
    if dataset not in ANNOTATION_FILES:
        raise AnnotationError(f"unknown dataset {dataset!r}; one of {list(DATASETS)}")
    known = {**ANNOTATION_FILES[dataset], **dict.fromkeys(SKIPPED_FILES[dataset], "")}
    if annotations.is_file():
        if annotations.name not in known:
            raise AnnotationError(f"{annotations}: unknown file name {annotations.name!r} for {dataset}; "
                                  f"expected one of {sorted(known)}")
        candidates = [annotations]
    elif annotations.is_dir():
        candidates = [annotations / name for name in known if (annotations / name).is_file()]
        if not candidates:
            raise AnnotationError(f"{annotations}: none of the {dataset} release files is there; "
                                  f"expected one or more of {sorted(known)}")
    else:
        raise AnnotationError(f"{annotations}: no such file or folder")
    files, notes = [], []
    for path in candidates:
        if path.name in SKIPPED_FILES[dataset]:
            notes.append(f"{path.name} skipped: {SKIPPED_FILES[dataset][path.name]}")
        else:
            files.append(AnnotationFile(path, ANNOTATION_FILES[dataset][path.name]))
    files.sort(key=lambda f: SPLITS.index(f.split))
    if not files:
        raise AnnotationError(f"{annotations}: nothing to import ({'; '.join(notes)})")
    return files, notes


# ---------------------------------------------------------------------------- parsing


@dataclass
class RawVideo:
    video_id: str
    split: str
    duration: float | None
    source: str  # release file name, to name the other file when a video is in two


@dataclass(frozen=True)
class RawQuery:
    query_id: str
    video_id: str
    text: str
    moment: tuple[float, float] | None
    clamped: bool = False  # the moment ran past [0, duration] and was clamped into it


@dataclass
class Parsed:
    videos: dict[str, RawVideo] = field(default_factory=dict)  # in order of first appearance
    queries: list[RawQuery] = field(default_factory=list)
    sources: list[dict] = field(default_factory=list)  # per file: name, path, split, records
    problems: list[str] = field(default_factory=list)
    _query_where: dict[str, str] = field(default_factory=dict, repr=False)

    def add_video(self, video_id: str, split: str, duration: float | None, source: str, where: str) -> bool:
        """Register a video (repeats within one file are normal); False if it is in another file too."""
        seen = self.videos.get(video_id)
        if seen is None:
            self.videos[video_id] = RawVideo(video_id, split, duration, source)
            return True
        if seen.source != source:
            # A video in two files would sit in two splits; the manifest forbids that.
            self.problems.append(f"{where}: video {video_id!r} is also in {seen.source}")
            return False
        if seen.duration is None:
            seen.duration = duration
        return True

    def add_query(self, query: RawQuery, where: str) -> None:
        first = self._query_where.get(query.query_id)
        if first is not None:
            self.problems.append(f"{where}: duplicate query id {query.query_id!r} (first at {first})")
            return
        self._query_where[query.query_id] = where
        self.queries.append(query)


def _number(value: object) -> float | None:
    """A finite float from a JSON number; None for anything else (strings, bools, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _text_number(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _moment(start: float, end: float, duration: float | None, where: str,
            problems: list[str]) -> tuple[tuple[float, float], bool] | None:
    """Check a [start, end] moment and clamp it into [0, duration] when the duration is known.

    Real releases have a few ends slightly past the duration (rounding in the
    annotation tool): those are clamped and counted. A start after its end, or a
    negative time, is an annotation error and is reported.
    """
    if start < 0 or end < 0:
        problems.append(f"{where}: negative time in moment [{start:g}, {end:g}]")
        return None
    if start > end:
        problems.append(f"{where}: moment start {start:g} is after its end {end:g}")
        return None
    if duration is None:
        return (start, end), False
    clamped = (min(start, duration), min(end, duration))
    return clamped, clamped != (start, end)


def _text(value: object) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def _jsonl_lines(path: Path, problems: list[str], progress: Progress | None) -> Iterator[tuple[int, dict]]:
    return iter_jsonl(path, problems, PROGRESS_EVERY, counting(progress, None, path.name))


def _parse_tvr(rf: AnnotationFile, parsed: Parsed, progress: Progress | None) -> int:
    records = 0
    for n, obj in _jsonl_lines(rf.path, parsed.problems, progress):
        where = f"{rf.path.name}:{n}"
        missing = [k for k in ("desc_id", "desc", "vid_name", "ts") if k not in obj]
        if missing:
            parsed.problems.append(f"{where}: missing key(s) {missing}")
            continue
        desc_id, text, vid = obj["desc_id"], _text(obj["desc"]), _text(obj["vid_name"])
        if isinstance(desc_id, bool) or not isinstance(desc_id, int):
            parsed.problems.append(f"{where}: `desc_id` must be an integer, got {desc_id!r}")
            continue
        if text is None or vid is None:
            parsed.problems.append(f"{where}: `desc` and `vid_name` must be non-empty strings")
            continue
        duration = None
        if obj.get("duration") is not None:
            duration = _number(obj["duration"])
            if duration is None or duration <= 0:
                parsed.problems.append(f"{where}: `duration` must be a positive number, got {obj['duration']!r}")
                continue
        ts = obj["ts"]
        times = [_number(t) for t in ts] if isinstance(ts, list) and len(ts) == 2 else [None]
        if None in times:
            parsed.problems.append(f"{where}: `ts` must be [start, end] in seconds, got {ts!r}")
            continue
        checked = _moment(times[0], times[1], duration, where, parsed.problems)
        if checked is None or not parsed.add_video(vid, rf.split, duration, rf.path.name, where):
            continue
        parsed.add_query(RawQuery(str(desc_id), vid, text, checked[0], checked[1]), where)
        records += 1
    return records


def _parse_activitynet(rf: AnnotationFile, parsed: Parsed, progress: Progress | None) -> int:
    name = rf.path.name
    text = read_text(rf.path, parsed.problems)
    if text is None:
        return 0
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        parsed.problems.append(f"{name}:{e.lineno}: not valid JSON ({e.msg})")
        return 0
    if not isinstance(data, dict):
        parsed.problems.append(f"{name}: expected a JSON object mapping video ids to annotations")
        return 0
    records = 0
    read = counting(progress, None, name)
    for i, (vid, entry) in enumerate(data.items(), 1):
        if i % PROGRESS_EVERY == 0:
            read(i)
        where = f"{name}: video {vid!r}"
        records += _activitynet_video(rf, vid, entry, where, parsed)
    read(len(data))
    return records


def _activitynet_video(rf: AnnotationFile, vid: str, entry: object, where: str, parsed: Parsed) -> int:
    if not isinstance(entry, dict):
        parsed.problems.append(f"{where}: expected an object with duration, timestamps, sentences")
        return 0
    missing = [k for k in ("duration", "timestamps", "sentences") if k not in entry]
    if missing:
        parsed.problems.append(f"{where}: missing key(s) {missing}")
        return 0
    duration, stamps, sentences = _number(entry["duration"]), entry["timestamps"], entry["sentences"]
    if duration is None or duration <= 0:
        parsed.problems.append(f"{where}: `duration` must be a positive number, got {entry['duration']!r}")
        return 0
    if not isinstance(stamps, list) or not isinstance(sentences, list) or len(stamps) != len(sentences):
        parsed.problems.append(f"{where}: `timestamps` and `sentences` must be lists of the same length")
        return 0
    if not vid.strip() or not parsed.add_video(vid, rf.split, duration, rf.path.name, where):
        return 0
    records = 0
    for k, (stamp, sentence) in enumerate(zip(stamps, sentences)):
        here = f"{where} sentence {k}"
        times = [_number(t) for t in stamp] if isinstance(stamp, list) and len(stamp) == 2 else [None]
        text = _text(sentence)
        if None in times or text is None:
            parsed.problems.append(f"{here}: need a [start, end] pair of numbers and a non-empty sentence, "
                                   f"got {stamp!r}, {sentence!r}")
            continue
        checked = _moment(times[0], times[1], duration, here, parsed.problems)
        if checked is not None:
            parsed.add_query(RawQuery(f"{vid}#{k}", vid, text, checked[0], checked[1]), here)
            records += 1
    return records


def _parse_charades(rf: AnnotationFile, parsed: Parsed, progress: Progress | None) -> int:
    per_video: Counter[str] = Counter()  # k in "{vid}#{k}": the video's sentences in file order
    records = 0
    for n, line in iter_lines(rf.path, parsed.problems, PROGRESS_EVERY, counting(progress, None, rf.path.name)):
        if not line.strip():
            continue
        where = f"{rf.path.name}:{n}"
        head, sep, sentence = line.partition("##")
        fields, text = head.split(), _text(sentence)
        if not sep or len(fields) != 3 or text is None:
            parsed.problems.append(f"{where}: expected `<video_id> <start> <end>##<sentence>`, got {line.strip()!r}")
            continue
        vid, start, end = fields[0], _text_number(fields[1]), _text_number(fields[2])
        if start is None or end is None:
            parsed.problems.append(f"{where}: start and end must be numbers, got {fields[1]!r} {fields[2]!r}")
            continue
        checked = _moment(start, end, None, where, parsed.problems)
        if checked is None or not parsed.add_video(vid, rf.split, None, rf.path.name, where):
            continue
        parsed.add_query(RawQuery(f"{vid}#{per_video[vid]}", vid, text, checked[0], checked[1]), where)
        per_video[vid] += 1
        records += 1
    return records


_PARSERS: dict[str, Callable[[AnnotationFile, Parsed, Progress | None], int]] = {
    "tvr": _parse_tvr, "activitynet": _parse_activitynet, "charades": _parse_charades,
}


def parse_annotations(dataset: str, files: list[AnnotationFile], progress: Progress | None = None) -> Parsed:
    """Read every release file; raise AnnotationError listing all problems in all files."""
    parsed = Parsed()
    for rf in files:
        # The parsers skip a byte-order mark left by an editor (it must not glue itself to
        # the first video id) and report lines that are not UTF-8 with their line number.
        try:
            records = _PARSERS[dataset](rf, parsed, progress)
        except OSError as e:
            parsed.problems.append(f"{rf.path.name}: cannot be read ({e})")
            continue
        parsed.sources.append({"file": rf.path.name, "path": str(rf.path.resolve()), "split": rf.split,
                               "queries": records})
    if parsed.problems:
        names = ", ".join(rf.path.name for rf in files)
        raise problems_error(f"{len(parsed.problems)} problem(s) in the {dataset} annotations ({names})",
                              parsed.problems)
    return parsed
