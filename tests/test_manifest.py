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
    """`..` cannot leave the root, even through a link; a link whose target is inside the root is followed."""
    root = tmp_path / "ds"
    (root / "store" / "clips").mkdir(parents=True)
    (root / "store" / "clips" / "a.mp4").write_bytes(b"x")
    (root / "videos").symlink_to(root / "store" / "clips")
    (root / "videos.jsonl").write_text(json.dumps({"video_id": "a", "path": "videos/a.mp4", "split": "train"}) + "\n"
                                       + json.dumps({"video_id": "b", "path": "videos/../../elsewhere/a.mp4",
                                                     "split": "train"}) + "\n")
    (root / "queries.jsonl").write_text(json.dumps({"query_id": "q", "video_id": "a", "text": "x", "split": "train"}))
    with pytest.raises(ManifestError, match=r"videos.jsonl:2: path 'videos/../../elsewhere/a.mp4' escapes"):
        load_manifest(root)
    (root / "videos.jsonl").write_text(json.dumps({"video_id": "a", "path": "videos/a.mp4", "split": "train"}) + "\n")
    m = load_manifest(root)
    assert m.videos[0].path == root.resolve() / "videos" / "a.mp4" and m.videos[0].path.read_bytes() == b"x"


def linked_outside(tmp_path: Path) -> tuple[Path, Path]:
    """A root whose `videos` link (and a second link, to a file) lead to a folder outside it."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "a.mp4").write_bytes(b"x")
    root = tmp_path / "ds"
    root.mkdir()
    (root / "videos").symlink_to(outside)
    (root / "b.mp4").symlink_to(outside / "a.mp4")
    (root / "videos.jsonl").write_text(json.dumps({"video_id": "a", "path": "videos/a.mp4", "split": "train"}) + "\n"
                                       + json.dumps({"video_id": "b", "path": "b.mp4", "split": "train"}) + "\n")
    (root / "queries.jsonl").write_text(json.dumps({"query_id": "q", "video_id": "a", "text": "x", "split": "train"}))
    return root, outside


def test_links_leading_outside_the_root_are_refused(tmp_path):
    root, outside = linked_outside(tmp_path)
    with pytest.raises(ManifestError) as e:
        load_manifest(root)
    for line, rel in [(1, "videos/a.mp4"), (2, "b.mp4")]:
        assert (f"videos.jsonl:{line}: path '{rel}' leads outside the dataset root through a link "
                f"(to {outside.resolve() / 'a.mp4'}); list its folder in allowed_outside.json") in str(e.value)


def test_a_folder_listed_in_allowed_outside_may_be_linked(tmp_path):
    root, outside = linked_outside(tmp_path)
    (root / "allowed_outside.json").write_text(json.dumps({"folders": [str(outside)]}))
    m = load_manifest(root)
    assert [v.path for v in m.videos] == [root.resolve() / "videos" / "a.mp4", root.resolve() / "b.mp4"]
    (root / "allowed_outside.json").write_text(json.dumps({"folders": ["elsewhere"]}))
    with pytest.raises(ManifestError, match=r'allowed_outside.json: expected \{"folders": \["/absolute/folder"'):
        load_manifest(root)


def test_missing_manifest_files(tmp_path):
    with pytest.raises(ManifestError, match="videos.jsonl: missing"):
        load_manifest(tmp_path)


def two_line_dataset(tmp_path: Path, split: str = "train") -> Path:
    return dataset(tmp_path, [{"video_id": "a", "path": "videos/a.mp4", "split": split}],
                   [{"query_id": "q1", "video_id": "a", "text": "x", "split": split}])


def test_bytes_that_are_not_utf8_are_reported_with_their_line(tmp_path):
    root = two_line_dataset(tmp_path)
    latin1 = '{"query_id": "q2", "video_id": "a", "text": "café", "split": "train"}\n'.encode("latin-1")
    with open(root / "queries.jsonl", "ab") as f:
        f.write(latin1)
    with pytest.raises(ManifestError) as e:
        load_manifest(root)
    assert f"queries.jsonl:2: not UTF-8 (byte 0xe9 in column {latin1.index(0xe9) + 1})" in str(e.value)
    assert "Traceback" not in str(e.value) and len(str(e.value).splitlines()) == 2


@pytest.mark.parametrize("split", ["Test", "validation", "dev"])
def test_splits_other_than_train_val_test_are_refused(tmp_path, split):
    root = two_line_dataset(tmp_path, split)
    with pytest.raises(ManifestError) as e:
        load_manifest(root)
    for where in ("videos.jsonl:1", "queries.jsonl:1"):
        assert f"{where}: split {split!r} is not one of train, val, test" in str(e.value)


def test_an_empty_manifest_is_refused(tmp_path):
    root = dataset(tmp_path, [], [])
    (root / "videos.jsonl").write_text("\n")  # blank lines are no videos either
    with pytest.raises(ManifestError) as e:
        load_manifest(root)
    assert "videos.jsonl: lists no videos" in str(e.value) and "queries.jsonl: lists no queries" in str(e.value)
    (tmp_path / "no-queries").mkdir()
    root = two_line_dataset(tmp_path / "no-queries")
    (root / "queries.jsonl").write_text("")
    with pytest.raises(ManifestError, match="queries.jsonl: lists no queries"):
        load_manifest(root)


def test_a_path_naming_a_folder_is_refused(tmp_path):
    root = two_line_dataset(tmp_path)
    (root / "videos" / "clips").mkdir()
    (root / "videos.jsonl").write_text(json.dumps({"video_id": "a", "path": "videos/clips", "split": "train"}) + "\n")
    with pytest.raises(ManifestError, match="videos.jsonl:1: path 'videos/clips' is a folder, not a video file"):
        load_manifest(root)
