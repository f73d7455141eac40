"""`prvr import tvr|activitynet|charades`: raw annotation releases to the native manifest.

Fixtures are written in each release's exact format; the videos are tiny real mp4
files (one made by ffmpeg, copied under every video id), so `load_manifest` checks
real files.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stages import annotations as an
from stages.manifest import ManifestError, load_manifest
from synth.test_cards import has_ffmpeg, make_video

pytestmark = pytest.mark.skipif(not has_ffmpeg(), reason="needs the system ffmpeg")

TVR_TRAIN = [f"friends_s01e01_seg02_clip_{i:02d}" for i in range(10)]
TVR_VAL = ["met_s02e03_seg01_clip_00", "house_s01e01_seg02_clip_05"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return make_video(tmp_path_factory.mktemp("clip") / "clip.mp4", seconds=1, fps=5, size=(64, 48))


def put_videos(folder: Path, ids: list[str], clip: Path, ext: str = ".mp4") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for vid in ids:
        shutil.copyfile(clip, folder / f"{vid}{ext}")
    return folder


def jsonl(path: Path, rows: list[dict | str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def tvr_release(folder: Path, test_public: bool = True) -> Path:
    train = [{"desc_id": 1000 + 2 * i + k, "desc": f"Ross says line {k} in clip {i}.", "vid_name": vid,
              "ts": [1.5 * k, 1.5 * k + 2.0], "duration": 60.0 + i}
             for i, vid in enumerate(TVR_TRAIN) for k in range(2)]
    val = [{"desc_id": 9000, "desc": "Ted points at the map.", "vid_name": TVR_VAL[0], "ts": [3.0, 7.5], "duration": 70.0},
           # the end runs past the duration: clamped
           {"desc_id": 9001, "desc": "House bounces a ball.", "vid_name": TVR_VAL[1], "ts": [10.0, 80.5], "duration": 80.0}]
    jsonl(folder / "tvr_train_release.jsonl", train)
    jsonl(folder / "tvr_val_release.jsonl", val)
    if test_public:
        jsonl(folder / "tvr_test_public_release.jsonl",
              [{"desc_id": 5, "desc": "no moment here", "vid_name": "castle_s01e01_seg01_clip_00", "duration": 50.0}])
    return folder


ANET = {
    "train.json": {"v_train0": {"duration": 100.0, "timestamps": [[0, 20.5], [30, 100.4]], "sentences": [" A man runs.", "He stops. "]},
                   "v_train1": {"duration": 50.0, "timestamps": [[5, 10]], "sentences": ["A dog jumps."]}},
    "val_1.json": {"v_val0": {"duration": 40.0, "timestamps": [[0, 40.2], [3, 4]], "sentences": ["A", "B"]}},
    # As in the real release: val_2 annotates val_1's videos a second time.
    "val_2.json": {"v_val0": {"duration": 40.0, "timestamps": [[1, 2]], "sentences": ["Someone waves."]}},
}


def anet_release(folder: Path, files: dict[str, dict] = ANET) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_text(json.dumps(data))
    return folder


CHARADES_TRAIN = ["3MSZA 24.3 30.4##person turn a light on.", "3MSZA 0.0 6.9##person flipped the light switch near the door.",
                  "AO8RW 0 4##a person is putting a book on a shelf.", "Y6R7T 1 5.5##person opens the door.",
                  "KS1ZE 2 8##a person is laughing.", "0Q3GT 0 3##the person eats a sandwich."]
CHARADES_TEST = ["BW4QG 12.2 17.5##person sits down on a chair.", "BW4QG 0 3##a person walks in."]


def charades_release(folder: Path) -> Path:
    jsonl(folder / "charades_sta_train.txt", CHARADES_TRAIN)
    jsonl(folder / "charades_sta_test.txt", CHARADES_TEST)
    return folder


def import_(dataset: str, ann: Path, videos: Path, out: Path, **kw) -> an.ImportPlan:
    force = kw.get("force", False)
    plan = an.plan_import(dataset, ann, videos, out, **kw)
    an.write_import(plan, force=force)
    return plan


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------- the three formats


def test_tvr_splits_ids_moments_and_durations(tmp_path, clip):
    out = tmp_path / "ds"
    videos = put_videos(out / "videos", TVR_TRAIN + TVR_VAL, clip)
    plan = import_("tvr", tvr_release(tmp_path / "ann"), videos, out, val_fraction=0.2, seed=3)
    m = load_manifest(out)

    splits = {v.video_id: v.split for v in m.videos}
    assert {splits[v] for v in TVR_VAL} == {"test"}  # TVR val is the papers' test set
    assert sorted(splits[v] for v in TVR_TRAIN).count("val") == 2  # 20% of 10 train videos
    assert "castle_s01e01_seg01_clip_00" not in splits  # test_public skipped ...
    assert any("tvr_test_public_release.jsonl skipped" in n for n in plan.report["notes"])  # ... and said so
    q = {x.query_id: x for x in m.queries}
    assert len(q) == 22 and q["1003"].video_id == TVR_TRAIN[1] and q["1003"].moment == (1.5, 3.5)
    assert q["9001"].moment == (10.0, 80.0)  # clamped to the duration
    assert all(x.split == splits[x.video_id] for x in m.queries)
    rows = {r["video_id"]: r for r in read_rows(out / "videos.jsonl")}
    assert rows[TVR_TRAIN[3]] == {"video_id": TVR_TRAIN[3], "path": f"videos/{TVR_TRAIN[3]}.mp4",
                                  "split": splits[TVR_TRAIN[3]], "duration": 63.0}
    assert not (out / "videos").is_symlink()  # videos already inside the root: no link
    report = json.loads((out / an.REPORT_FILE).read_text())
    assert report["splits"]["test"] == {"videos": 2, "queries": 2, "dropped_videos": 0, "dropped_queries": 0, "clamped": 1}
    assert report["splits"]["train"]["videos"] == 8 and report["splits"]["val"]["queries"] == 4
    assert [s["file"] for s in report["sources"]] == ["tvr_train_release.jsonl", "tvr_val_release.jsonl"]


def test_activitynet_splits_clamping_and_v_prefix(tmp_path, clip):
    out = tmp_path / "ds"
    videos = out / "raw"
    put_videos(videos, ["v_train0"], clip)
    put_videos(videos / "nested", ["train1"], clip, ".mkv")  # downloads often drop "v_"; any depth
    put_videos(videos, ["val0"], clip, ".webm")
    plan = import_("activitynet", anet_release(tmp_path / "ann"), videos, out, val_fraction=0.0)
    m = load_manifest(out)

    # val_1 is the test set; val_2 (the same videos again) is skipped, and said so.
    assert {v.video_id: v.split for v in m.videos} == {"v_train0": "train", "v_train1": "train", "v_val0": "test"}
    assert any(n.startswith("val_2.json skipped") for n in plan.report["notes"])
    assert m.video("v_train1").path == (videos / "nested" / "train1.mkv").resolve()
    q = {x.query_id: x for x in m.queries}
    assert len(q) == 5 and q["v_train0#0"].text == "A man runs." and q["v_train0#1"].text == "He stops."
    assert q["v_train0#1"].moment == (30.0, 100.0) and q["v_val0#0"].moment == (0.0, 40.0)
    assert {s: c["clamped"] for s, c in plan.report["splits"].items()} == {"train": 1, "test": 1}
    assert m.video("v_val0").split == "test" and read_rows(out / "videos.jsonl")[0]["duration"] == 100.0


def test_activitynet_val_is_held_out_of_train(tmp_path, clip):
    videos = put_videos(tmp_path / "videos", ["v_train0", "v_train1", "v_val0"], clip)
    plan = an.plan_import("activitynet", anet_release(tmp_path / "ann"), videos, tmp_path / "ds", val_fraction=0.5)
    assert sorted(r["split"] for r in plan.videos) == ["test", "train", "val"]


def test_charades_ids_count_per_video_and_no_durations(tmp_path, clip):
    out = tmp_path / "ds"
    videos = put_videos(out / "videos", ["3MSZA", "AO8RW", "Y6R7T", "KS1ZE", "0Q3GT", "BW4QG"], clip)
    import_("charades", charades_release(tmp_path / "ann"), videos, out, val_fraction=0.2, seed=0)
    m = load_manifest(out)

    q = {x.query_id: x for x in m.queries}
    assert q["3MSZA#0"].moment == (24.3, 30.4) and q["3MSZA#1"].text == "person flipped the light switch near the door."
    assert q["BW4QG#1"].moment == (0.0, 3.0) and q["BW4QG#1"].split == "test"
    assert [v.split for v in m.videos].count("val") == 1 and [v.split for v in m.videos].count("train") == 4
    assert all("duration" not in r for r in read_rows(out / "videos.jsonl"))


def test_a_single_release_file_imports_just_its_split(tmp_path, clip):
    out = tmp_path / "ds"
    videos = put_videos(out / "videos", ["BW4QG"], clip)
    ann = charades_release(tmp_path / "ann") / "charades_sta_test.txt"
    import_("charades", ann, videos, out)
    assert {v.split for v in load_manifest(out).videos} == {"test"}


# ---------------------------------------------------------------------------- val hold-out


def test_val_hold_out_is_seeded_whole_video_and_order_free():
    ids = [f"vid{i:03d}" for i in range(200)]
    a = an.hold_out_val(ids, 0.05, seed=0)
    assert len(a) == 10 and a <= set(ids)
    assert a == an.hold_out_val(list(reversed(ids)), 0.05, seed=0)  # independent of file order
    assert a != an.hold_out_val(ids, 0.05, seed=1)
    assert an.hold_out_val(ids, 0.0, seed=0) == set()
    assert an.hold_out_val(["only"], 0.5, seed=0) == set()  # never empties train
    assert len(an.hold_out_val(ids[:3], 0.01, seed=0)) == 1  # a positive fraction gives at least one
    with pytest.raises(an.AnnotationError, match="val-fraction"):
        an.hold_out_val(ids, 1.0, seed=0)


def test_val_hold_out_is_reproducible_through_the_import(tmp_path, clip):
    ann = tvr_release(tmp_path / "ann")
    videos = put_videos(tmp_path / "videos", TVR_TRAIN + TVR_VAL, clip)
    # Missing videos do not move the draw: it is made on the release, before dropping.
    partial = put_videos(tmp_path / "partial", TVR_TRAIN[:5] + TVR_VAL, clip)

    def val_ids(folder: Path, seed: int) -> set[str]:
        plan = an.plan_import("tvr", ann, folder, tmp_path / "ds", val_fraction=0.3, seed=seed)
        split_of = {r["video_id"]: r["split"] for r in plan.videos}
        for q in plan.queries:  # whole videos: every query follows its video
            assert q["split"] == split_of[q["video_id"]]
        return {v for v, s in split_of.items() if s == "val"}

    first = val_ids(videos, 0)
    assert len(first) == 3 and first == val_ids(videos, 0) and first != val_ids(videos, 5)
    assert val_ids(partial, 0) == first & set(TVR_TRAIN[:5])
    assert "val" not in {r["split"] for r in an.plan_import("tvr", ann, videos, tmp_path / "ds", val_fraction=0).videos}


# ---------------------------------------------------------------------------- the videos folder


def test_videos_outside_the_root_are_linked_not_copied(tmp_path, clip):
    videos = put_videos(tmp_path / "my videos", ["3MSZA", "AO8RW", "Y6R7T", "KS1ZE", "0Q3GT", "BW4QG"], clip)
    out = tmp_path / "ds"
    import_("charades", charades_release(tmp_path / "ann"), videos, out)

    link = out / "videos"
    assert link.is_symlink() and Path(os.readlink(link)) == videos.resolve() and Path(os.readlink(link)).is_absolute()
    assert {r["path"] for r in read_rows(out / "videos.jsonl")} == {f"videos/{v}.mp4" for v in
                                                                    ["3MSZA", "AO8RW", "Y6R7T", "KS1ZE", "0Q3GT", "BW4QG"]}
    assert not any(p.suffix == ".mp4" for p in out.rglob("*") if not p.is_symlink() and link not in p.parents)
    # Re-running with the same folder reuses the link; another folder needs --force.
    import_("charades", tmp_path / "ann", videos, out, force=True)
    other = put_videos(tmp_path / "other", ["3MSZA", "BW4QG"], clip)
    plan = an.plan_import("charades", tmp_path / "ann", other, out, force=True)
    for name in ("videos.jsonl", "queries.jsonl"):  # only the link is left in the way
        (out / name).unlink()
    with pytest.raises(an.AnnotationError, match="already links to"):
        an.write_import(plan, force=False)
    an.write_import(plan, force=True)
    assert Path(os.readlink(link)) == other.resolve()


def test_a_real_folder_named_videos_is_never_replaced_by_the_link(tmp_path, clip):
    videos = put_videos(tmp_path / "elsewhere", ["BW4QG"], clip)
    out = tmp_path / "ds"
    (out / "videos").mkdir(parents=True)
    with pytest.raises(an.AnnotationError, match="not a link"):
        import_("charades", charades_release(tmp_path / "ann") / "charades_sta_test.txt", videos, out, force=True)
    assert (out / "videos").is_dir() and not (out / "videos").is_symlink()


def test_a_linked_videos_folder_loads(tmp_path, clip):
    videos = put_videos(tmp_path / "elsewhere", ["BW4QG"], clip)
    out = tmp_path / "ds"
    import_("charades", charades_release(tmp_path / "ann") / "charades_sta_test.txt", videos, out)
    assert [v.video_id for v in load_manifest(out).videos] == ["BW4QG"]
    # The link leads outside the root; what lets it through is the folder the import allowed.
    assert json.loads((out / "allowed_outside.json").read_text()) == {"folders": [str(videos.resolve())]}
    (out / "allowed_outside.json").unlink()
    with pytest.raises(ManifestError, match="leads outside the dataset root through a link"):
        load_manifest(out)


def test_a_new_videos_folder_is_allowed_beside_those_already_listed(tmp_path, clip):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "allowed_outside.json").write_text(json.dumps({"folders": ["/srv/other-videos"]}))
    videos = put_videos(tmp_path / "elsewhere", ["BW4QG"], clip)
    import_("charades", charades_release(tmp_path / "ann") / "charades_sta_test.txt", videos, out)
    assert json.loads((out / "allowed_outside.json").read_text()) == {
        "folders": ["/srv/other-videos", str(videos.resolve())]}


def test_missing_videos_are_dropped_with_their_queries_and_reported(tmp_path, clip):
    out = tmp_path / "ds"
    videos = put_videos(out / "videos", TVR_TRAIN[2:] + TVR_VAL[:1], clip)
    plan = import_("tvr", tvr_release(tmp_path / "ann"), videos, out, val_fraction=0)
    m = load_manifest(out)

    assert len(m.videos) == 9 and len(m.queries) == 17
    assert plan.missing == TVR_TRAIN[:2] + TVR_VAL[1:]
    report = json.loads((out / an.REPORT_FILE).read_text())
    assert report["missing_videos"] == plan.missing
    assert report["splits"]["train"] == {"videos": 8, "queries": 16, "dropped_videos": 2, "dropped_queries": 4, "clamped": 0}
    assert report["splits"]["test"]["dropped_videos"] == 1 and report["splits"]["test"]["clamped"] == 0


def test_strict_makes_a_missing_video_an_error(tmp_path, clip):
    out = tmp_path / "ds"
    videos = put_videos(out / "videos", TVR_TRAIN + TVR_VAL[:1], clip)
    with pytest.raises(an.AnnotationError) as e:
        import_("tvr", tvr_release(tmp_path / "ann"), videos, out, strict=True)
    assert "--strict" in str(e.value) and TVR_VAL[1] in str(e.value) and "tvr_val_release.jsonl" in str(e.value)
    assert not (out / "videos.jsonl").exists()


def test_no_video_found_at_all_is_an_error_even_without_strict(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(an.AnnotationError, match="no video was found at all"):
        an.plan_import("charades", charades_release(tmp_path / "ann"), tmp_path / "empty", tmp_path / "ds")


def test_frame_folders_are_named_as_out_of_scope(tmp_path, clip):
    videos = put_videos(tmp_path / "videos", TVR_TRAIN + TVR_VAL[:1], clip)
    frames = videos / TVR_VAL[1]
    frames.mkdir()
    (frames / "00001.jpg").write_bytes(b"")
    plan = an.plan_import("tvr", tvr_release(tmp_path / "ann"), videos, tmp_path / "ds")
    assert any("folders" in n and "frames" in n and TVR_VAL[1] in n for n in plan.report["notes"])
    with pytest.raises(an.AnnotationError, match="frame folders are not supported"):
        an.plan_import("tvr", tmp_path / "ann", videos, tmp_path / "ds", strict=True)


def test_several_files_for_one_video_take_the_preferred_extension(tmp_path, clip):
    videos = put_videos(tmp_path / "videos", ["BW4QG"], clip, ".webm")
    put_videos(videos, ["BW4QG"], clip, ".mp4")
    plan = an.plan_import("charades", charades_release(tmp_path / "ann") / "charades_sta_test.txt", videos, tmp_path / "ds")
    assert plan.videos[0]["path"] == "videos/BW4QG.mp4"
    assert plan.report["ambiguous"] == {"BW4QG": ["BW4QG.mp4", "BW4QG.webm"]}


# ---------------------------------------------------------------------------- malformed inputs


def test_tvr_problems_are_collected_with_file_and_line(tmp_path):
    ann = tmp_path / "ann"
    jsonl(ann / "tvr_train_release.jsonl", [
        {"desc_id": 1, "desc": "fine", "vid_name": "a", "ts": [0, 1], "duration": 5},
        "{not json",
        {"desc_id": 2, "vid_name": "a", "ts": [0, 1], "duration": 5},  # no desc
        {"desc_id": 3, "desc": "x", "vid_name": "a", "ts": ["0", 1], "duration": 5},  # a string time
        {"desc_id": 4, "desc": "x", "vid_name": "a", "ts": [4, 2], "duration": 5},  # start > end
        {"desc_id": 1, "desc": "again", "vid_name": "b", "ts": [0, 1], "duration": 5},  # duplicate id
    ])
    jsonl(ann / "tvr_val_release.jsonl", [{"desc_id": 7, "desc": "x", "vid_name": "a", "ts": [0, 1], "duration": 5}])
    with pytest.raises(an.AnnotationError) as e:
        an.parse_annotations("tvr", an.annotation_files("tvr", ann)[0])
    msg = str(e.value)
    assert "6 problem(s)" in msg
    for expected in ("tvr_train_release.jsonl:2: not valid JSON", "tvr_train_release.jsonl:3: missing key(s) ['desc']",
                     "tvr_train_release.jsonl:4: `ts` must be [start, end]", "tvr_train_release.jsonl:5: moment start 4 is after its end 2",
                     "tvr_train_release.jsonl:6: duplicate query id '1' (first at tvr_train_release.jsonl:1)",
                     "tvr_val_release.jsonl:1: video 'a' is also in tvr_train_release.jsonl"):
        assert expected in msg


def test_activitynet_problems_name_the_file_and_video(tmp_path):
    ann = anet_release(tmp_path / "ann", {
        "train.json": {"v_ok": {"duration": 10, "timestamps": [[0, 1]], "sentences": ["fine"]},
                       "v_backwards": {"duration": 10, "timestamps": [[0, 1], [6, 2]], "sentences": ["a", "b"]},
                       "v_nodur": {"timestamps": [[0, 1]], "sentences": ["a"]},
                       "v_uneven": {"duration": 10, "timestamps": [[0, 1]], "sentences": ["a", "b"]}},
    })
    (ann / "val_1.json").write_text('{"v_x": {"duration": 3,\n "timestamps": [[0, 1]] "sentences": ["a"]}}')
    with pytest.raises(an.AnnotationError) as e:
        an.parse_annotations("activitynet", an.annotation_files("activitynet", ann)[0])
    msg = str(e.value)
    assert "train.json: video 'v_backwards' sentence 1: moment start 6 is after its end 2" in msg
    assert "train.json: video 'v_nodur': missing key(s) ['duration']" in msg
    assert "train.json: video 'v_uneven': `timestamps` and `sentences` must be lists of the same length" in msg
    assert "val_1.json:2: not valid JSON" in msg


def test_charades_problems_name_the_file_and_line(tmp_path):
    ann = tmp_path / "ann"
    jsonl(ann / "charades_sta_train.txt", ["3MSZA 24.3 30.4##fine", "3MSZA 24.3 30.4 person without hashes",
                                           "3MSZA 1.0 abc##a time that is no number", "3MSZA 5 2##backwards",
                                           "3MSZA 1 2##", ""])
    with pytest.raises(an.AnnotationError) as e:
        an.parse_annotations("charades", an.annotation_files("charades", ann)[0])
    msg = str(e.value)
    assert "4 problem(s)" in msg
    assert "charades_sta_train.txt:2: expected `<video_id> <start> <end>##<sentence>`" in msg
    assert "charades_sta_train.txt:3: start and end must be numbers" in msg
    assert "charades_sta_train.txt:4: moment start 5 is after its end 2" in msg
    assert "charades_sta_train.txt:5: expected" in msg


def test_byte_order_marks_are_ignored_and_binary_files_reported(tmp_path):
    ann = tmp_path / "ann"
    ann.mkdir()
    (ann / "charades_sta_test.txt").write_bytes("BW4QG 1 2##a sentence\n".encode("utf-8-sig"))
    assert an.parse_annotations("charades", an.annotation_files("charades", ann)[0]).queries[0].query_id == "BW4QG#0"
    (ann / "charades_sta_train.txt").write_bytes(bytes(range(128, 256)))
    with pytest.raises(an.AnnotationError, match=r"charades_sta_train.txt:1: not UTF-8 \(byte 0x80 in column 1\)"):
        an.parse_annotations("charades", an.annotation_files("charades", ann)[0])


def test_lines_that_are_not_utf8_are_reported_with_their_line(tmp_path):
    ann = tmp_path / "ann"
    tvr_release(ann, test_public=False)
    with open(ann / "tvr_val_release.jsonl", "ab") as f:
        f.write('{"desc_id": 9100, "desc": "Zoë waves.", "vid_name": "x", "ts": [1, 2]}\n'.encode("latin-1"))
    anet = tmp_path / "anet"
    anet.mkdir()
    text = json.dumps(ANET["train.json"], indent=1).replace("He stops.", "Il s'arr\u00eate.")
    line = text[:text.index("arr")].count("\n") + 1
    (anet / "train.json").write_bytes(text.encode("latin-1"))
    for dataset, folder, where in [("tvr", ann, "tvr_val_release.jsonl:3"), ("activitynet", anet, f"train.json:{line}")]:
        with pytest.raises(an.AnnotationError, match=rf"{where}: not UTF-8 \(byte 0x") as e:
            an.parse_annotations(dataset, an.annotation_files(dataset, folder)[0])
        assert "Traceback" not in str(e.value)


def test_the_problem_list_is_capped(tmp_path):
    ann = tmp_path / "ann"
    jsonl(ann / "charades_sta_train.txt", [f"V{i} x 1##bad" for i in range(80)])
    with pytest.raises(an.AnnotationError) as e:
        an.parse_annotations("charades", an.annotation_files("charades", ann)[0])
    assert "80 problem(s)" in str(e.value) and "... and 30 more" in str(e.value)
    assert str(e.value).count("\n  - ") == an.MAX_LISTED


def test_unknown_or_absent_release_files(tmp_path):
    (tmp_path / "val.json").write_text("{}")
    with pytest.raises(an.AnnotationError, match="unknown file name 'val.json' for activitynet"):
        an.annotation_files("activitynet", tmp_path / "val.json")
    with pytest.raises(an.AnnotationError, match="none of the tvr release files"):
        an.annotation_files("tvr", tmp_path)
    with pytest.raises(an.AnnotationError, match="no such file or folder"):
        an.annotation_files("tvr", tmp_path / "nope")
    jsonl(tmp_path / "tvr" / "tvr_test_public_release.jsonl", [{"desc_id": 1}])
    with pytest.raises(an.AnnotationError, match="nothing to import"):
        an.annotation_files("tvr", tmp_path / "tvr")
    files, notes = an.annotation_files("activitynet", anet_release(tmp_path / "anet"))
    assert [(f.path.name, f.split) for f in files] == [("train.json", "train"), ("val_1.json", "test")]
    assert len(notes) == 1 and "val_2.json" in notes[0]


# ---------------------------------------------------------------------------- writing


def test_an_existing_manifest_needs_force(tmp_path, clip):
    out = tmp_path / "ds"
    videos = put_videos(out / "videos", ["BW4QG"], clip)
    ann = charades_release(tmp_path / "ann") / "charades_sta_test.txt"
    import_("charades", ann, videos, out)
    before = (out / "queries.jsonl").read_text()
    jsonl(ann, ["BW4QG 1 2##a new sentence"])
    with pytest.raises(an.AnnotationError, match="--force"):
        import_("charades", ann, videos, out)
    assert (out / "queries.jsonl").read_text() == before
    import_("charades", ann, videos, out, force=True)
    assert [q.text for q in load_manifest(out).queries] == ["a new sentence"]


def test_an_interrupted_write_leaves_no_half_manifest(tmp_path, clip, monkeypatch):
    out = tmp_path / "ds"
    videos = put_videos(out / "videos", ["BW4QG"], clip)
    ann = charades_release(tmp_path / "ann") / "charades_sta_test.txt"
    import_("charades", ann, videos, out)
    plan = an.plan_import("charades", ann, videos, out, force=True)
    real_replace = os.replace

    def interrupted(src, dst):
        if Path(dst).name == "videos.jsonl":
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(an.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        an.write_import(plan, force=True)
    # The commit point never came: no videos.jsonl (so no manifest loads), no temp files left.
    assert not (out / "videos.jsonl").exists()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".partial")]
    with pytest.raises(ManifestError, match="videos.jsonl: missing"):
        load_manifest(out)
    monkeypatch.undo()
    an.write_import(plan, force=True)
    assert len(load_manifest(out).videos) == 1
    assert oct((out / "videos.jsonl").stat().st_mode & 0o044) == oct(0o044 & ~_umask())  # not a 0600 temp file


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------- the CLI


def cli(*args: str):
    from prvr.cli import app

    return CliRunner().invoke(app, ["import", *map(str, args)])


def test_cli_tvr_writes_the_manifest_and_a_summary(tmp_path, clip):
    out = tmp_path / "ds"
    videos = put_videos(out / "videos", TVR_TRAIN + TVR_VAL[:1], clip)
    result = cli("tvr", tvr_release(tmp_path / "ann"), "--videos", videos, "--out", out, "--val-fraction", "0.1", "--seed", "1")
    assert result.exit_code == 0, result.output
    assert "tvr_train_release.jsonl: 20 read" in result.output
    assert "dropped 1 video(s)" in result.output and TVR_VAL[1] in result.output
    assert "wrote 11 videos and 21 queries" in result.output
    m = load_manifest(out)
    assert {v.split for v in m.videos} == {"train", "val", "test"}

    again = cli("tvr", tmp_path / "ann", "--videos", videos, "--out", out)
    assert again.exit_code == 2 and "--force" in again.output
    assert cli("tvr", tmp_path / "ann", "--videos", videos, "--out", out, "--force").exit_code == 0
    strict = cli("tvr", tmp_path / "ann", "--videos", videos, "--out", out, "--force", "--strict")
    assert strict.exit_code == 2 and TVR_VAL[1] in strict.output


def test_cli_reports_malformed_input_with_exit_code_2(tmp_path, clip):
    ann = tmp_path / "ann"
    jsonl(ann / "charades_sta_test.txt", ["BW4QG 1 2 no hashes here"])
    result = cli("charades", ann, "--videos", tmp_path, "--out", tmp_path / "ds")
    assert result.exit_code == 2
    assert "charades_sta_test.txt:1: expected `<video_id> <start> <end>##<sentence>`" in result.output
    bad = cli("charades", ann, "--videos", tmp_path, "--out", tmp_path / "ds", "--val-fraction", "1.5")
    assert bad.exit_code == 2 and "[0, 1)" in bad.output


def test_cli_activitynet(tmp_path, clip):
    out = tmp_path / "ds"
    videos = put_videos(out / "videos", ["v_train0", "v_train1", "v_val0"], clip)
    result = cli("activitynet", anet_release(tmp_path / "ann"), "--videos", videos, "--out", out, "--val-fraction", "0.5")
    assert result.exit_code == 0, result.output
    assert {q.split for q in load_manifest(out).queries} == {"train", "val", "test"}
    assert "val_2.json" in cli("activitynet", "--help").output


def test_cli_says_which_outside_folder_it_linked_and_allowed(tmp_path, clip):
    videos = put_videos(tmp_path / "elsewhere", ["BW4QG"], clip)
    out = tmp_path / "ds"
    result = cli("charades", charades_release(tmp_path / "ann") / "charades_sta_test.txt", "--videos", videos,
                 "--out", out)
    assert result.exit_code == 0, result.output
    assert f"linked {out.resolve()}/videos -> {videos.resolve()} (a folder outside the dataset root, allowed by " \
           f"{out.resolve() / 'allowed_outside.json'})" in result.output.replace("\n", " ")
    assert [v.video_id for v in load_manifest(out).videos] == ["BW4QG"]


# ---------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_an_imported_charades_dataset_goes_through_extraction(tmp_path):
    """Import, then the project's own extraction: every video and every split's text is stored."""
    from configs.schema import load_config
    from stages import extract as ex
    from storage.features import FeatureStore

    out = tmp_path / "ds"
    ids = {"3MSZA": 4.0, "AO8RW": 3.0, "Y6R7T": 3.0, "BW4QG": 5.0}
    for seed, (vid, seconds) in enumerate(ids.items()):
        make_video(out / "videos" / f"{vid}.mp4", seconds=seconds, fps=5, size=(64, 48), seed=seed)
    ann = tmp_path / "ann"
    jsonl(ann / "charades_sta_train.txt", ["3MSZA 0.5 2.5##person turn a light on.", "AO8RW 0 2##a person holds a book.",
                                           "Y6R7T 1 3##person opens the door.", "3MSZA 2 4##the light goes off."])
    jsonl(ann / "charades_sta_test.txt", ["BW4QG 1 4.5##person sits down on a chair."])
    import_("charades", ann, out / "videos", out, val_fraction=0.34, seed=0)
    manifest = load_manifest(out)
    assert manifest.splits() == ["train", "val", "test"]

    config = tmp_path / "cfg.yaml"
    config.write_text(json.dumps({
        "name": "imported", "dataset": {"root": str(out)}, "store": str(tmp_path / "s.zarr"),
        "extract": {"shard_size": 2, "fps": 1.0, "max_frames": 16, "device": "cpu", "batch_size": 4,
                    "decode_workers": 1, "decode_timeout_s": 60, "shard_retries": 0,
                    "teacher": {"model": "prvr-tiny", "pretrained": None}, "visual": ["clip"]},
    }))
    cfg = load_config(config)
    for plan in ex.plan_shards(manifest, cfg.extract.shard_size):
        result = ex.extract_shard(plan, cfg, ex.shard_fingerprint(plan, cfg.extract, manifest.root))
        assert not result.failed
    for split in manifest.splits():
        ex.extract_text(manifest, split, cfg, ex.text_fingerprint(manifest, split, cfg.extract))

    store = FeatureStore(cfg.store)
    key = cfg.extract.teacher[0].key
    for vid, seconds in ids.items():
        _, times = store.video_frames(vid, f"teacher.{key}")
        assert len(times) == int(seconds * cfg.extract.fps)
    test = store.text("test")
    assert test.video_ids == ["BW4QG"] and test.texts == ["person sits down on a chair."]
    assert [list(m) for m in test.moments] == [[1.0, 4.5]]
