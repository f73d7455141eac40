"""Raw annotation files (TVR, ActivityNet Captions, Charades-STA) to the native manifest.

The user holds the annotation files and their own copies of the videos. `plan_import`
reads and validates the annotations (stages/annotation_formats.py), finds every video in
the user's folder and builds the manifest rows (no writes); `write_import` writes them
under the dataset root, atomically. Every problem in the annotations is collected and reported at once,
naming the file and line (JSONL / text) or the video id (JSON), like stages/manifest.py.

Split conventions follow the PRVR papers (MS-SL, DL-DKD), which train on the release's
train set and report on one held-out set; our val split (model selection) is a seeded
`val_fraction` of the train videos in every dataset:
  * TVR: train -> train, val -> test (2,179 videos / 10,895 queries); test_public skipped.
  * ActivityNet Captions: train.json -> train, val_1.json -> test; val_2.json skipped:
    it annotates the same videos as val_1.json a second time, and a video can sit in
    one split only (using it as val would also select models on the test videos).
  * Charades-STA: train -> train, test -> test.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prvr.errors import MAX_LISTED  # noqa: F401 (how many problems an AnnotationError lists)
from stages.annotation_formats import AnnotationError, Parsed, annotation_files, parse_annotations, problems_error
from stages.manifest import OUTSIDE_FILE, QUERIES_FILE, SPLITS, VIDEOS_FILE, outside_folders
from stages.progress import Progress
from storage.runs import sync_folder, write_temp

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")  # preference order when a stem has several
REPORT_FILE = "import_report.json"
VIDEOS_LINK = "videos"


# ---------------------------------------------------------------------------- val hold-out


def _check_fraction(fraction: float) -> None:
    if not 0 <= fraction < 1:
        raise AnnotationError(f"--val-fraction must be in [0, 1), got {fraction}")


def hold_out_val(train_ids: list[str], fraction: float, seed: int) -> set[str]:
    """The train video ids to move to val: a seeded `fraction` of whole videos.

    Drawn from the sorted ids, so the result depends only on the set of train videos
    in the release, the fraction and the seed (not on file order, nor on which videos
    the user happens to have: the hold-out is drawn before missing videos are dropped).
    """
    _check_fraction(fraction)
    ids = sorted(train_ids)
    if fraction == 0 or len(ids) < 2:
        return set()
    count = min(max(1, round(fraction * len(ids))), len(ids) - 1)  # keep at least one train video
    order = np.random.default_rng(seed).permutation(len(ids))
    return {ids[i] for i in order[:count]}


# ---------------------------------------------------------------------------- video files


@dataclass
class VideoIndex:
    folder: Path  # resolved
    files: dict[str, Path]  # stem -> path relative to `folder` (the preferred one if several)
    ambiguous: dict[str, list[str]]  # stem -> every candidate, when there were several
    folders: set[str]  # names of subfolders: TVR often ships frame folders named by video id


def index_videos(folder: Path) -> VideoIndex:
    """Every video file under `folder` (recursively), by file stem."""
    folder = folder.resolve()
    if not folder.is_dir():
        raise AnnotationError(f"--videos {folder}: not a folder")
    found: dict[str, list[Path]] = {}
    folders: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        folders.update(dirnames)
        base = Path(dirpath).relative_to(folder)
        for name in filenames:
            path = base / name
            if path.suffix.lower() in VIDEO_EXTENSIONS:
                found.setdefault(path.stem, []).append(path)
    files, ambiguous = {}, {}
    for stem, paths in found.items():
        paths.sort(key=lambda p: (VIDEO_EXTENSIONS.index(p.suffix.lower()), str(p)))
        files[stem] = paths[0]
        if len(paths) > 1:
            ambiguous[stem] = [p.as_posix() for p in paths]
    return VideoIndex(folder, files, ambiguous, folders)


def _aliases(dataset: str, video_id: str) -> list[str]:
    """File stems a video may have; ActivityNet downloads often drop the "v_" prefix."""
    if dataset == "activitynet" and video_id.startswith("v_"):
        return [video_id, video_id[2:]]
    return [video_id]


def _find(dataset: str, video_id: str, index: VideoIndex) -> Path | None:
    return next((index.files[s] for s in _aliases(dataset, video_id) if s in index.files), None)


# ---------------------------------------------------------------------------- the plan


@dataclass
class ImportPlan:
    out: Path  # the dataset root, resolved
    link_target: Path | None  # make out/videos -> this when the videos lie outside `out`
    videos: list[dict]  # videos.jsonl rows
    queries: list[dict]  # queries.jsonl rows
    report: dict  # import_report.json
    missing: list[str] = field(default_factory=list)  # video ids not found (dropped)


def check_out(out: Path, force: bool) -> None:
    """Refuse to overwrite a manifest already in `out` unless `force`."""
    if out.exists() and not out.is_dir():
        raise AnnotationError(f"--out {out}: exists and is not a folder")
    present = [name for name in (VIDEOS_FILE, QUERIES_FILE) if (out / name).exists()]
    if present and not force:
        raise AnnotationError(f"--out {out} already holds {', '.join(present)}; pass --force to replace it")


def _video_prefix(videos_dir: Path, out: Path) -> tuple[str, Path | None]:
    """Path prefix of video files inside the dataset root, and the link to make if any."""
    if videos_dir == out or videos_dir.is_relative_to(out):
        rel = videos_dir.relative_to(out).as_posix()
        return ("" if rel == "." else rel + "/"), None
    return VIDEOS_LINK + "/", videos_dir


def _frames_note(dataset: str, missing: list[str], index: VideoIndex) -> str | None:
    frames = [v for v in missing if v in index.folders]
    if not frames:
        return None
    fps = 3 if dataset == "tvr" else "FPS"  # TVR's released frames are 3 fps; others: the user knows
    return (f"{len(frames)} missing video(s) are folders (e.g. {frames[0]!r}), probably frames: frame folders "
            f"are not supported; encode each into a video first, e.g. `ffmpeg -framerate {fps} -pattern_type glob "
            f"-i '{frames[0]}/*.jpg' -c:v libx264 -pix_fmt yuv420p {frames[0]}.mp4`")


def plan_import(dataset: str, annotations: Path, videos_dir: Path, out: Path, *, val_fraction: float = 0.05,
                seed: int = 0, strict: bool = False, force: bool = False,
                progress: Progress | None = None) -> ImportPlan:
    """Read the release, hold out val, find the videos and build the manifest rows (no writes)."""
    out = out.resolve()
    check_out(out, force)  # before the (long) parse, so a refusal comes at once
    _check_fraction(val_fraction)
    files, notes = annotation_files(dataset, annotations)
    parsed = parse_annotations(dataset, files, progress)
    val = hold_out_val([v.video_id for v in parsed.videos.values() if v.split == "train"], val_fraction, seed)
    for vid in val:
        parsed.videos[vid].split = "val"

    index = index_videos(videos_dir)
    missing = [vid for vid in parsed.videos if _find(dataset, vid, index) is None]
    frames_note = _frames_note(dataset, missing, index)
    if missing and (strict or len(missing) == len(parsed.videos)):
        listed = [f"video {vid!r} ({parsed.videos[vid].source}): no {'/'.join(VIDEO_EXTENSIONS)} file "
                  f"named {' or '.join(_aliases(dataset, vid))} under {index.folder}" for vid in missing]
        why = "--strict" if strict else "no video was found at all"
        raise problems_error(f"{len(missing)} of {len(parsed.videos)} videos missing ({why})"
                              + (f"; {frames_note}" if frames_note else ""), listed)
    if frames_note:
        notes.append(frames_note)

    prefix, link_target = _video_prefix(index.folder, out)
    videos, queries = _rows(dataset, parsed, index, prefix, set(missing))
    chosen = {Path(row["path"]).stem for row in videos}
    ambiguous = {stem: paths for stem, paths in index.ambiguous.items() if stem in chosen}
    if ambiguous:
        notes.append(f"{len(ambiguous)} video(s) have several files; took the first of "
                     f"{'/'.join(VIDEO_EXTENSIONS)} (see `ambiguous` in {REPORT_FILE})")
    report = _report(dataset, annotations, index, out, link_target, parsed, videos, queries, missing,
                     val_fraction, seed, notes, ambiguous)
    return ImportPlan(out, link_target, videos, queries, report, missing)


def _rows(dataset: str, parsed: Parsed, index: VideoIndex, prefix: str,
          missing: set[str]) -> tuple[list[dict], list[dict]]:
    videos = []
    order = sorted(parsed.videos.values(), key=lambda v: SPLITS.index(v.split))  # stable: file order within
    for v in order:
        if v.video_id in missing:
            continue
        row = {"video_id": v.video_id, "path": prefix + _find(dataset, v.video_id, index).as_posix(),
               "split": v.split}
        if v.duration is not None:
            row["duration"] = v.duration
        videos.append(row)
    queries = [{"query_id": q.query_id, "video_id": q.video_id, "text": q.text,
                "split": parsed.videos[q.video_id].split,
                "moment": list(q.moment) if q.moment is not None else None}
               for q in parsed.queries if q.video_id not in missing]
    return videos, queries


def _report(dataset: str, annotations: Path, index: VideoIndex, out: Path, link_target: Path | None,
            parsed: Parsed, videos: list[dict], queries: list[dict], missing: list[str],
            val_fraction: float, seed: int, notes: list[str], ambiguous: dict[str, list[str]]) -> dict:
    missing_set = set(missing)
    clamped = {q.query_id for q in parsed.queries if q.clamped and q.video_id not in missing_set}
    splits: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        all_videos = [v for v in parsed.videos.values() if v.split == split]
        if not all_videos:
            continue
        dropped = {v.video_id for v in all_videos if v.video_id in missing_set}
        splits[split] = {
            "videos": sum(r["split"] == split for r in videos),
            "queries": sum(r["split"] == split for r in queries),
            "dropped_videos": len(dropped),
            "dropped_queries": sum(q.video_id in dropped for q in parsed.queries),
            "clamped": sum(r["split"] == split and r["query_id"] in clamped for r in queries),
        }
    return {
        "dataset": dataset,
        "annotations": str(annotations.resolve()),
        "sources": parsed.sources,
        "videos_dir": str(index.folder),
        "videos_link": f"{VIDEOS_LINK} -> {link_target}" if link_target is not None else None,
        "dataset_root": str(out),
        "val_fraction": val_fraction,
        "seed": seed if val_fraction else None,
        "splits": splits,
        "missing_videos": missing,
        "ambiguous": ambiguous,
        "notes": notes,
    }


# ---------------------------------------------------------------------------- writing


def _link_videos(out: Path, target: Path, force: bool) -> None:
    """Make out/videos -> target (absolute); reuse a link that already points there."""
    link = out / VIDEOS_LINK
    if link.is_symlink():
        if Path(os.readlink(link)) == target:
            return
        if not force:
            raise AnnotationError(f"{link} already links to {os.readlink(link)}; pass --force to point it at {target}")
    elif link.exists():
        raise AnnotationError(f"{link} exists and is not a link; the videos in {target} lie outside --out and "
                              f"need that name: pick another --out, or pass --videos {link} if they are the same")
    tmp = out / f".{VIDEOS_LINK}.{os.getpid()}.partial"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target, target_is_directory=True)
    os.replace(tmp, link)  # atomic, also when replacing an old link


def _outside_folders_text(out: Path, target: Path, force: bool) -> str:
    """OUTSIDE_FILE allowing the videos link's target, beside the folders it already allows."""
    problems: list[str] = []
    folders = outside_folders(out, problems)
    if problems and not force:
        raise problems_error(f"{out / OUTSIDE_FILE} is unreadable; fix it, or pass --force to replace it", problems)
    listed = [str(f) for f in (folders if not problems else [])]
    if str(target) not in listed:
        listed.append(str(target))
    return json.dumps({"folders": listed}, indent=2, ensure_ascii=False) + "\n"


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_import(plan: ImportPlan, force: bool = False) -> None:
    """Write the manifest, the report and the videos link under the dataset root; with the
    link, OUTSIDE_FILE names its target, so the manifest's rule on links lets it through.

    Every file is written under a temporary name first. videos.jsonl is the commit
    point: an old one is removed before the other files are renamed into place and
    the new one comes last, so an interrupted import leaves either the old manifest,
    a manifest without videos.jsonl (which load_manifest refuses), or the new one;
    never a half-written file nor new queries beside old videos.
    """
    check_out(plan.out, force)
    plan.out.mkdir(parents=True, exist_ok=True)
    texts = {QUERIES_FILE: _jsonl(plan.queries),
             REPORT_FILE: json.dumps(plan.report, indent=2, ensure_ascii=False) + "\n"}
    if plan.link_target is not None:
        texts[OUTSIDE_FILE] = _outside_folders_text(plan.out, plan.link_target, force)
        _link_videos(plan.out, plan.link_target, force)
    texts[VIDEOS_FILE] = _jsonl(plan.videos)  # last: the commit point
    temps: dict[str, Path] = {}
    try:
        for name, text in texts.items():
            temps[name] = write_temp(plan.out / name, text.encode("utf-8"), suffix=".partial")
        (plan.out / VIDEOS_FILE).unlink(missing_ok=True)
        for name, tmp in temps.items():
            os.replace(tmp, plan.out / name)
        sync_folder(plan.out)
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
