"""Importing MS-SL / DL-DKD feature releases: formats, malformed inputs, resumption, and the
teacher / train / evaluate stages running unchanged on the imported store."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from configs.schema import load_config
from stages import release as rel
from stages.release_formats import BigFile, ReleaseFormatError, l2_normalise, mean_resample, read_captions, read_video2frames
from storage.features import FeatureStore
from tests.release_fixtures import make_release, write_bigfile, write_release_config

TEACHER = rel.RELEASE_TEACHER


def settings(tiny, **kw) -> rel.ImportSettings:
    base = dict(root=tiny.folder, collection=tiny.collection, feature="i3d_resnet", shard_size=5, max_frames=16,
                max_tokens=12)
    return rel.ImportSettings(**{**base, **kw})


@pytest.fixture
def tiny(tmp_path):
    return make_release(tmp_path / "release")


# ---- format readers ------------------------------------------------------------------
def test_bigfile_reads_rows_by_name_in_the_order_asked(tmp_path):
    rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    write_bigfile(tmp_path, ["a", "b", "c", "d"], rows)
    assert (tmp_path / "feature.bin").read_bytes() == rows.astype("<f4").tobytes()  # little-endian float32
    big = BigFile(tmp_path)
    assert (big.rows, big.dims) == (4, 3)
    np.testing.assert_array_equal(big.read(["c", "a"]), rows[[2, 0]])
    with pytest.raises(ReleaseFormatError, match="no row named 'zz'"):
        big.read(["zz"])


def test_bigfile_errors_name_the_file(tmp_path):
    rows = np.ones((4, 3), np.float32)
    write_bigfile(tmp_path, ["a", "b", "c", "d"], rows)
    (tmp_path / "id.txt").write_text("a b c")
    with pytest.raises(ReleaseFormatError, match=r"id.txt: 3 ids, but .*shape.txt says 4 rows"):
        BigFile(tmp_path)
    (tmp_path / "id.txt").write_text("a b c d")
    (tmp_path / "feature.bin").write_bytes(rows.astype("<f4").tobytes()[:-5])
    with pytest.raises(ReleaseFormatError, match=r"feature.bin: 43 bytes, truncated: .*4 x 3 float32 = 48 bytes"):
        BigFile(tmp_path)
    (tmp_path / "shape.txt").write_text("four 3")
    with pytest.raises(ReleaseFormatError, match=r"shape.txt:1: expected \"rows dims\""):
        BigFile(tmp_path)


def test_captions_bad_lines_are_listed_with_file_and_line(tmp_path):
    f = tmp_path / "xtrain.caption.txt"
    f.write_text("v1#enc#0 a person walks\nno_sentence_here\nv2_no_hash a dog\nv1#enc#0 repeated\n\nv3#enc#1 ok\n")
    with pytest.raises(ReleaseFormatError) as e:
        read_captions(f)
    msg = str(e.value)
    assert "xtrain.caption.txt:2: expected" in msg
    assert "xtrain.caption.txt:3: query id 'v2_no_hash' has no `<video_id>#` prefix" in msg
    assert "xtrain.caption.txt:4: query id 'v1#enc#0' repeats line 1" in msg
    f.write_text("v1#enc#0 a person walks\nv3#enc#1  ok then \n")
    assert [(c.query_id, c.video_id, c.text) for c in read_captions(f)] == [
        ("v1#enc#0", "v1", "a person walks"), ("v3#enc#1", "v3", "ok then")]


def test_video2frames_is_read_as_a_literal_never_executed(tmp_path):
    f = tmp_path / "video2frames.txt"
    marker = tmp_path / "executed"
    f.write_text(f"{{'v1': ['v1_0']}} if __import__('pathlib').Path({str(marker)!r}).touch() else 0")
    with pytest.raises(ReleaseFormatError, match="video2frames.txt.*not a dict literal"):
        read_video2frames(f)
    assert not marker.exists()
    f.write_text("{'v1': ['v1_0', 'v1_1'],\n 'v2': 'oops'}")
    with pytest.raises(ReleaseFormatError, match="not `video_id: \\[frame ids\\]`: v2"):
        read_video2frames(f)
    f.write_text("{'v1': ['v1_0', 'v1_1'],\n 'v2': [}")
    with pytest.raises(ReleaseFormatError, match=r"video2frames.txt:2"):
        read_video2frames(f)


def test_mean_resample_follows_the_reference_rule():
    x = np.arange(10, dtype=np.float32)[:, None]
    np.testing.assert_array_equal(mean_resample(x, 20), x)
    # bounds round(0, 2.5, 5, 7.5, 10) = 0, 2, 5, 8, 9(clipped): segment means, the last a single row
    np.testing.assert_allclose(mean_resample(x, 4)[:, 0], [0.5, 3.0, 6.0, 8.0])


# ---- planning and malformed releases -----------------------------------------------------
def test_plan_reads_splits_aliases_and_teacher(tiny):
    plan = rel.open_release(settings(tiny))
    assert plan.splits == ["train", "val"] and plan.aliases == {"test": "val"}
    assert plan.has_teacher
    assert [len(s.videos) for s in plan.shards] == [5, 5, 5, 5, 2]
    assert [v for s in plan.shards for v, _ in s.videos] == tiny.videos["train"] + tiny.videos["val"]


def test_collection_folder_accepts_either_root(tiny):
    assert rel.collection_folder(tiny.root, "tiny") == tiny.folder
    assert rel.collection_folder(tiny.folder, "tiny") == tiny.folder
    with pytest.raises(rel.ReleaseError, match="no MS-SL release of 'tvr'"):
        rel.collection_folder(tiny.root, "tvr")


@pytest.mark.parametrize("damage, message", [
    ("caption_video_without_frames", r"video2frames.txt: 1 video\(s\) of the caption files have no frames: ghost"),
    ("frame_not_in_features", r"id.txt: 1 frame id\(s\) listed in video2frames.txt are not in the features: "
                              r"train_vid000: nowhere"),
    ("query_without_tokens", r"roberta_tiny_query_feat.hdf5: 1 query id\(s\) of the caption files are missing: "
                             r"train_vid001#enc#0"),
    ("teacher_video_missing", r"new_clip_vit_32_tiny_vid_features.hdf5: 1 video\(s\) missing: val_vid002"),
    ("half_a_teacher", r"clip_ViT_B_32_tiny_query_feat.hdf5: missing while new_clip_vit_32_tiny_vid_features.hdf5 "
                       r"is present"),
    ("split_overlap", r"tinyval.caption.txt: videos also in another split's caption file \(train\): train_vid000"),
    ("truncated_features", r"feature.bin: \d+ bytes, truncated"),
    ("row_counts_disagree", r"shape.txt says \d+ rows"),
])
def test_malformed_releases_name_the_file_and_the_id(tiny, damage, message):
    text, feats = tiny.folder / "TextData", tiny.folder / "FeatureData"
    if damage == "caption_video_without_frames":
        with open(text / "tinytrain.caption.txt", "a") as f:
            f.write("ghost#enc#0 a query of a video nobody extracted\n")
    elif damage == "frame_not_in_features":
        v2f = read_video2frames(feats / "i3d_resnet" / "video2frames.txt")
        v2f["train_vid000"][0] = "nowhere"
        (feats / "i3d_resnet" / "video2frames.txt").write_text(repr(v2f))
    elif damage == "query_without_tokens":
        with h5py.File(text / "roberta_tiny_query_feat.hdf5", "a") as f:
            del f["train_vid001#enc#0"]
    elif damage == "teacher_video_missing":
        with h5py.File(feats / "new_clip_vit_32_tiny_vid_features.hdf5", "a") as f:
            del f["val_vid002"]
    elif damage == "half_a_teacher":
        (text / "clip_ViT_B_32_tiny_query_feat.hdf5").unlink()
    elif damage == "split_overlap":
        with open(text / "tinyval.caption.txt", "a") as f:
            f.write("train_vid000#enc#9 a train video again\n")
    elif damage == "truncated_features":
        bin_file = feats / "i3d_resnet" / "feature.bin"
        bin_file.write_bytes(bin_file.read_bytes()[:-100])
    elif damage == "row_counts_disagree":
        ids = feats / "i3d_resnet" / "id.txt"
        ids.write_text(ids.read_text() + " extra_row")
    with pytest.raises((rel.ReleaseError, ReleaseFormatError), match=message):
        rel.open_release(settings(tiny))


# ---- the import --------------------------------------------------------------------------
def test_import_writes_the_extraction_layout_with_the_reference_preprocessing(tiny, tmp_path):
    plan = rel.open_release(settings(tiny))
    summary = rel.run_import(plan, str(tmp_path / "store.zarr"))
    assert summary["complete"] and summary["teacher"] == TEACHER and summary["aliases"] == {"test": "val"}
    store = FeatureStore(str(tmp_path / "store.zarr"))
    assert store.feature_names() == [f"teacher.{TEACHER}", "visual.i3d_resnet"]
    for vid in ["train_vid000", "train_vid007", "val_vid003"]:
        student, teacher = tiny.frames[vid], tiny.clip_frames[vid]
        n = min(len(student), len(teacher))
        want_s = l2_normalise(mean_resample(mean_resample(student, n), 16))
        want_t = l2_normalise(mean_resample(mean_resample(teacher, n), 16))
        got_s, times = store.video_frames(vid, "visual.i3d_resnet")
        got_t, _ = store.video_frames(vid, f"teacher.{TEACHER}")
        np.testing.assert_allclose(got_s.astype(np.float32), want_s, atol=2e-3)
        np.testing.assert_allclose(got_t.astype(np.float32), want_t, atol=2e-3)
        assert len(times) == len(want_s) and np.all(np.diff(times) > 0) and times[-1] < len(student)
    # text: split aliases resolve, tokens truncated to max_tokens and L2-normalised per token
    assert store.split_video_ids("test") == tiny.videos["val"]
    val = store.text("test")
    assert val.query_ids == [q for q, _ in tiny.queries["val"]]
    assert np.isnan(val.moments).all()
    tokens, lengths = val.tokens("roberta")
    qid = val.query_ids[0]
    want = l2_normalise(tiny.tokens[qid][:12])
    assert lengths[0] == len(want)
    np.testing.assert_allclose(tokens[0, : len(want)].astype(np.float32), want, atol=2e-3)
    assert not tokens[0, len(want):].any()
    sentences = val.sentences(TEACHER)
    np.testing.assert_allclose(sentences[0].astype(np.float32), l2_normalise(tiny.clip_queries[qid][0]), atol=2e-3)


def test_an_interrupted_import_resumes_and_skips_committed_shards(tiny, tmp_path):
    plan = rel.open_release(settings(tiny))
    location = str(tmp_path / "store.zarr")
    seen = []

    def crash_in_shard_two(result):
        seen.append(result.index)
        if result.index == 1:
            raise KeyboardInterrupt  # the user pressed Ctrl-C after shard 1 committed

    with pytest.raises(KeyboardInterrupt):
        rel.run_import(plan, location, on_shard=crash_in_shard_two)
    store = FeatureStore(location)
    assert store.committed_shards() == [0, 1]
    first = {i: store.shard_status(i, None).committed_at for i in (0, 1)}
    status = rel.import_status(plan, store)
    assert not status.complete and status.text == {"train": "missing", "val": "missing"}
    summary = rel.run_import(plan, location)
    assert summary["imported"] == [2, 3, 4] and summary["complete"]
    store = FeatureStore(location)
    assert {i: store.shard_status(i, None).committed_at for i in (0, 1)} == first
    # same inputs, nothing to do
    assert rel.run_import(plan, location)["imported"] == []


def test_release_without_teacher_imports_and_says_what_to_do(tmp_path):
    tiny = make_release(tmp_path / "release", with_teacher=False)
    plan = rel.open_release(settings(tiny))
    assert not plan.has_teacher
    advice = rel.no_teacher_advice(plan.files)
    assert "train.branches=exploration" in advice and "prvr import tvr|activitynet|charades" in advice
    rel.run_import(plan, str(tmp_path / "store.zarr"))
    store = FeatureStore(str(tmp_path / "store.zarr"))
    assert store.feature_names() == ["visual.i3d_resnet"]


def test_cli_import_ms_sl(tiny, tmp_path):
    from prvr.cli import app

    store = tmp_path / "store.zarr"
    out = CliRunner().invoke(app, ["import", "ms-sl", str(tiny.root), "--collection", "tiny", "--store", str(store),
                                   "--feature", "i3d_resnet", "--max-frames", "16", "--shard-size", "5"])
    assert out.exit_code == 0, out.output
    summary = json.loads(out.output[out.output.index("\n{\n") + 1:])
    assert summary["complete"] and summary["imported"] == [0, 1, 2, 3, 4]
    again = CliRunner().invoke(app, ["import", "ms-sl", str(tiny.root), "--collection", "tiny", "--store", str(store),
                                     "--feature", "i3d_resnet", "--max-frames", "16", "--shard-size", "5"])
    assert again.exit_code == 0 and json.loads(again.output[again.output.index("\n{\n") + 1:])["imported"] == []
    bad = CliRunner().invoke(app, ["import", "ms-sl", str(tiny.root), "--collection", "tvr", "--store", str(store)])
    assert bad.exit_code == 2 and "no MS-SL release of 'tvr'" in bad.output
    unknown = CliRunner().invoke(app, ["import", "ms-sl", str(tiny.root), "--collection", "tiny", "--store", str(store)])
    assert unknown.exit_code == 2 and "pass --feature" in unknown.output


def test_release_config_validation(tiny, tmp_path):
    cfg_path = write_release_config(tmp_path / "tiny.yaml", tiny, tmp_path / "store.zarr", tmp_path / "runs")
    cfg = load_config(cfg_path)
    s = rel.ImportSettings.from_config(cfg)
    assert (s.root, s.feature, s.teacher, s.max_frames, s.max_tokens) == (tiny.folder, "i3d_resnet", TEACHER, 16, 12)
    from configs.schema import ConfigError

    with pytest.raises(ConfigError, match=r"train.visual must be \[i3d_resnet\]"):
        load_config(cfg_path, ["train.visual=[clip]"])


def test_a_release_source_reads_the_release_only_when_asked_about_it(tiny, tmp_path):
    # Training and search read only the store, wherever they run: a GPU worker without the
    # release's files must still learn which token features the student reads.
    import shutil

    from stages.sources import source_for

    copy = tmp_path / "release-copy"
    shutil.copytree(tiny.root, copy)
    cfg = load_config(write_release_config(tmp_path / "tiny.yaml", type(tiny)(**{**vars(tiny), "root": copy}),
                                           tmp_path / "store.zarr", tmp_path / "runs"))
    shutil.rmtree(copy)
    source = source_for(cfg)
    assert source.text_features() == cfg.dataset.release.text
    with pytest.raises(rel.ReleaseError, match="no MS-SL release"):
        source.splits()


# ---- teacher, train and evaluate, unchanged, on the imported store --------------------------
@pytest.mark.slow
def test_pipeline_on_a_release_imports_trains_and_evaluates(tiny, tmp_path):
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import prvr_flow
    from storage.runs import RunPaths

    cfg_path = write_release_config(tmp_path / "tiny.yaml", tiny, tmp_path / "store.zarr", tmp_path / "runs")
    with prefect_test_harness(server_startup_timeout=120):
        result = prvr_flow(str(cfg_path))
        assert result["extract"]["imported"] == 5 and result["extract"]["aliases"] == {"test": "val"}
        assert {(r["teacher"], r["split"]) for r in result["teacher"]} == {(TEACHER, "train"), (TEACHER, "val")}
        methods = result["evaluate"]["methods"]
        assert set(methods) == {"DL-DKD student (fused)", "inheritance branch", "exploration branch",
                                f"teacher {TEACHER} (zero-shot)"}
        # the fixture's teacher sees the topics: far above chance (R@1 of 6 videos by chance is ~17%)
        assert methods[f"teacher {TEACHER} (zero-shot)"]["R@1"] > 40
        assert result["evaluate"]["videos"] == 6
        metrics = json.loads(RunPaths.of(tmp_path / "runs", "tiny-run").metrics.read_text())
        assert metrics["split"] == "test"
        # a rerun imports nothing
        again = prvr_flow(str(cfg_path), stages=["extract"])
        assert again["extract"]["imported"] == 0


@pytest.mark.slow
def test_release_without_teacher_trains_the_exploration_branch_only(tmp_path):
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import prvr_flow
    from stages.train import train

    tiny = make_release(tmp_path / "release", with_teacher=False)
    cfg_path = write_release_config(tmp_path / "tiny.yaml", tiny, tmp_path / "store.zarr", tmp_path / "runs")
    with prefect_test_harness(server_startup_timeout=120):
        prvr_flow(str(cfg_path), stages=["extract", "teacher"])
    with pytest.raises(Exception, match=r"no frames of teacher\(s\) \['vit-b-32-quickgelu-openai'\].*"
                                        r"train.branches=exploration"):
        train(load_config(cfg_path))
    summary = train(load_config(cfg_path, ["train.branches=exploration"]))
    assert summary["best_epoch"] is not None


@pytest.mark.parametrize("text", [
    "{'a': ['a_0', 'a_1'], \"b\": [\"b_0\"]}",
    "{\n  'a': ['a_0',\n        'a_1',],\n  'b': ['b_0'],\n}\n",
    "{'a': ['a_0' 'a_1'], 'b': ['b_0']}",          # adjacent literals concatenate in Python
    "{'a\\'s': ['x'], 'b': ('b_0',)}",             # escapes and tuples: the full literal parser
])
def test_video2frames_fast_reader_agrees_with_the_python_literal(tmp_path, text):
    import ast

    f = tmp_path / "video2frames.txt"
    f.write_text(text)
    assert read_video2frames(f) == {k: list(v) for k, v in ast.literal_eval(text).items()}

