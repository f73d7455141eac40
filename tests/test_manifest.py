import json
from pathlib import Path

import pytest

from stages.manifest import ManifestError, load_manifest


def dataset(tmp_path: Path, videos: list[dict], queries: list[dict]) -> Path:
    (tmp_path / "videos").mkdir(exist_ok=True)
    for v in videos:
        p = tmp_path / v.get("path", "")
        if v.get("path", "").startswith("videos/") and not v.get("_missing"):
            p.write_bytes(b"x")
    (tmp_path / "videos.jsonl").write_text("".join(json.dumps({k: x for k, x in v.items() if k != "_missing"}) + "\n" for v in videos))
    (tmp_path / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    return tmp_path


def test_valid_manifest(tmp_path):
    root = dataset(tmp_path, [{"video_id": "a", "path": "videos/a.mp4", "split": "train"},
                              {"video_id": "b", "path": "videos/b.mp4", "split": "test"}],
                   [{"query_id": "q1", "video_id": "a", "text": "x", "split": "train", "moment": [1, 2.5]},
                    {"query_id": "q2", "video_id": "b", "text": "y", "split": "test"}])
    m = load_manifest(root)
    assert [v.video_id for v in m.videos] == ["a", "b"]
    assert m.videos[0].path == root.resolve() / "videos/a.mp4"
    assert m.queries[0].moment == (1.0, 2.5) and m.queries[1].moment is None
    assert m.splits() == ["train", "test"]


def test_every_problem_listed_with_its_line(tmp_path):
    root = dataset(
        tmp_path,
        [{"video_id": "a", "path": "videos/a.mp4", "split": "train"},
         {"video_id": "a", "path": "videos/a2.mp4", "split": "train"},
         {"video_id": "c", "path": "../outside.mp4", "split": "train"},
         {"video_id": "d", "path": "/etc/passwd", "split": "train"},
         {"video_id": "e", "path": "videos/e.mp4", "split": "train", "_missing": True},
         {"video_id": "f", "split": "train"}],
        [{"query_id": "q1", "video_id": "a", "text": "x", "split": "train"},
         {"query_id": "q1", "video_id": "a", "text": "x", "split": "train"},
         {"query_id": "q3", "video_id": "zzz", "text": "x", "split": "train"},
         {"query_id": "q4", "video_id": "a", "text": "x", "split": "train", "moment": [3, 1]},
         {"query_id": "q5", "video_id": "a", "text": "", "split": "train"}],
    )
    with open(root / "queries.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(ManifestError) as e:
        load_manifest(root)
    msg = str(e.value)
    for needle in [
        "videos.jsonl:2: duplicate video_id 'a'",
        "videos.jsonl:3: path '../outside.mp4' escapes the dataset root",
        "videos.jsonl:4: path '/etc/passwd' escapes the dataset root",
        "videos.jsonl:5: file 'videos/e.mp4' does not exist",
        "videos.jsonl:6: `path` must be a non-empty string",
        "queries.jsonl:2: duplicate query_id 'q1'",
        "queries.jsonl:3: unknown video_id 'zzz'",
        "queries.jsonl:4: moment must be",
        "queries.jsonl:5: `text` must be",
        "queries.jsonl:6: not valid JSON",
    ]:
        assert needle in msg, (needle, msg)


def test_paths_are_checked_as_written_and_links_inside_the_root_are_followed(tmp_path):
    """`..` cannot leave the root, even through a link; a link the owner placed in the root is followed."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "a.mp4").write_bytes(b"x")
    root = tmp_path / "ds"
    root.mkdir()
    (root / "videos").symlink_to(outside)
    (root / "videos.jsonl").write_text(json.dumps({"video_id": "a", "path": "videos/a.mp4", "split": "train"}) + "\n"
                                       + json.dumps({"video_id": "b", "path": "videos/../../elsewhere/a.mp4",
                                                     "split": "train"}) + "\n")
    (root / "queries.jsonl").write_text("")
    with pytest.raises(ManifestError, match=r"videos.jsonl:2: path 'videos/../../elsewhere/a.mp4' escapes"):
        load_manifest(root)
    (root / "videos.jsonl").write_text(json.dumps({"video_id": "a", "path": "videos/a.mp4", "split": "train"}) + "\n")
    m = load_manifest(root)
    assert m.videos[0].path == root.resolve() / "videos" / "a.mp4" and m.videos[0].path.read_bytes() == b"x"


def test_missing_manifest_files(tmp_path):
    with pytest.raises(ManifestError, match="videos.jsonl: missing"):
        load_manifest(tmp_path)
