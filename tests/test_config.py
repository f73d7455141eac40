from pathlib import Path

import pytest

from configs.schema import ConfigError, RunConfig, load_config, parse_override

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "run.yaml"
    p.write_text(text)
    return p


BASE = """
name: t
dataset: {root: data}
store: data/features.zarr
extract:
  shard_size: 4
  teacher: {model: prvr-tiny, pretrained: null}
"""


def test_defaults_and_relative_paths_anchor_to_the_config_file(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.extract.fps == 1.0 and cfg.extract.max_frames == 128
    assert cfg.extract.visual == ["clip"] and cfg.extract.device == "auto" and cfg.extract.strict is False
    assert cfg.dataset.root == (tmp_path / "data").resolve()
    assert cfg.store == str((tmp_path / "data/features.zarr").resolve())
    assert len(cfg.extract.teacher) == 1 and cfg.extract.teacher[0].pretrained is None


def test_teacher_list_and_keys(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["extract.teacher=[{model: prvr-tiny}, {model: ViT-B-32, pretrained: openai}]"])
    assert [t.key for t in cfg.extract.teacher] == ["prvr-tiny-random", "vit-b-32-openai"]


def test_overrides_are_typed(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["extract.fps=2", "extract.strict=true", "store=memory://x"])
    assert cfg.extract.fps == 2.0 and cfg.extract.strict is True and cfg.store == "memory://x"


@pytest.mark.parametrize(
    "override, needle",
    [
        ("extract.fps=0", "extract.fps"),
        ("extract.shard_size=-1", "extract.shard_size"),
        ("extract.device=tpu", "extract.device"),
        ("extract.visual=[nope]", "unknown visual feature"),
        ("extract.fsp=2", "extract.fsp"),  # a typo is an error, not ignored
        ("extract.teacher=[{model: a}, {model: a}]", "repeat"),
    ],
)
def test_bad_values_name_the_key(tmp_path, override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, BASE), [override])
    assert needle in str(e.value)


def test_every_problem_is_listed_at_once(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, "name: t\nextract: {fps: -1, max_frames: 0}\n"))
    msg = str(e.value)
    for key in ("dataset", "store", "extract.fps", "extract.max_frames"):
        assert key in msg


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "name: [unclosed"))
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("extract.fps")


def test_schema_is_json_schema_for_the_prefect_form():
    schema = RunConfig.model_json_schema()
    assert "extract" in schema["properties"]


def test_checkpoint_paths_anchor_to_the_config_file_but_tags_do_not(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["extract.teacher=[{model: prvr-tiny, pretrained: ckpt/t.pt}, {model: ViT-B-32, pretrained: openai}]"])
    assert cfg.extract.teacher[0].pretrained == str((tmp_path / "ckpt/t.pt").resolve())
    assert cfg.extract.teacher[1].pretrained == "openai"


def test_window_must_fit_the_video_backbone(tmp_path):
    with pytest.raises(ConfigError, match="s3d"):
        load_config(write(tmp_path, BASE), ["extract.visual=[clip, s3d]", "extract.window=8"])
    assert load_config(write(tmp_path, BASE), ["extract.visual=[clip, s3d]", "extract.window=16"]).extract.window == 16


def test_demo_and_example_configs_validate():
    from tests.conftest import ROOT

    for name in ("demo.yaml", "example.yaml", "bench.yaml"):
        load_config(ROOT / "configs" / name)
    demo = load_config(ROOT / "configs" / "demo.yaml")
    assert demo.train.visual == ["clip", "tiny_r2plus1d"]  # the student sees motion the teacher cannot
    assert demo.extract.visual_weights["tiny_r2plus1d"] == str((ROOT / "data/backbone/tiny_r2plus1d.pt").resolve())


def test_visual_weights_files_anchor_to_the_config_file_and_names_do_not(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["extract.visual=[clip, tiny_r2plus1d, r2plus1d_18]",
                                              "extract.visual_weights={tiny_r2plus1d: w/tiny.pt, "
                                              "r2plus1d_18: KINETICS400_V1}"])
    assert cfg.extract.visual_weights == {"tiny_r2plus1d": str((tmp_path / "w/tiny.pt").resolve()),
                                          "r2plus1d_18": "KINETICS400_V1"}
    with pytest.raises(ConfigError, match=r"visual_weights names \['s3d'\], which extract.visual"):
        load_config(write(tmp_path, BASE), ["extract.visual_weights={s3d: KINETICS400_V1}"])


# ---- profiles and the shipped benchmark configs ------------------------------------------
@pytest.mark.parametrize("name", ["tvr", "activitynet", "charades"])
def test_benchmark_configs_validate_in_both_routes(name):
    from configs.schema import load_config

    path = ROOT / "configs" / f"{name}.yaml"
    release = load_config(path)
    assert release.dataset.release is not None and release.dataset.release.collection == name
    assert release.train.visual == [release.dataset.release.feature]
    assert release.extract.teacher[0].key == "vit-b-32-quickgelu-openai"  # the release importer's key
    assert (release.train.lr, release.train.hidden, release.train.fusion) == (2.5e-4, 384, 0.7)
    assert release.train.optimizer == "bertadam"  # the reference code's
    assert release.train.margin == (0.1 if name == "tvr" else 0.2)
    videos = load_config(path, profile="videos")
    assert videos.dataset.release is None and videos.name == f"{name}-videos"
    assert videos.dataset.root == (ROOT / "data" / name).resolve()
    assert videos.extract.teacher[0].model == "ViT-B-32-quickgelu" and videos.extract.teacher[0].pretrained == "openai"
    assert videos.train.margin == release.train.margin  # the profile changes the route, not the method


def test_profiles_merge_over_the_file_and_overrides_come_last(tmp_path):
    from configs.schema import ConfigError, load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: base\ndataset: {root: data}\nstore: s.zarr\ntrain: {epochs: 5, lr: 0.001}\n"
                   "profiles:\n  quick: {name: quick, train: {epochs: 1}}\n")
    assert load_config(cfg).train.epochs == 5
    quick = load_config(cfg, profile="quick")
    assert (quick.name, quick.train.epochs, quick.train.lr) == ("quick", 1, 0.001)
    assert load_config(cfg, ["train.epochs=2"], profile="quick").train.epochs == 2
    with pytest.raises(ConfigError, match=r"has no profile 'slow'; profiles: \['quick'\]"):
        load_config(cfg, profile="slow")


# ---- bad input at the door: each refused with its line ------------------------------------
def test_bytes_that_are_not_utf8_name_the_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_bytes(BASE.encode() + "# réglages\n".encode("latin-1"))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    line = BASE.count("\n") + 1
    assert str(e.value) == f"{path}:{line}: not UTF-8 (byte 0xe9 in column 4)"


def test_a_repeated_key_names_both_lines(tmp_path):
    path = write(tmp_path, BASE + "  fps: 2\n  max_frames: 8\n  fps: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    first = BASE.count("\n") + 1
    assert str(e.value) == f"{path}:{first + 2}: duplicate key 'extract.fps' (first on line {first})"
    # The same key in different mappings, and a key beside a YAML merge that brings it, are fine.
    load_config(write(tmp_path, BASE + "  visual: [clip]\ntrain: {visual: [clip]}\n"))
    merged = BASE + "profiles:\n  one: &one {name: one, train: {epochs: 1}}\n  two: {<<: *one, name: two}\n"
    assert load_config(write(tmp_path, merged), profile="two").name == "two"


@pytest.mark.parametrize("fps", [".inf", "-.inf", ".nan"])
def test_fps_must_be_a_finite_number(tmp_path, fps):
    with pytest.raises(ConfigError, match="extract.fps") as e:
        load_config(write(tmp_path, BASE + f"  fps: {fps}\n"))
    assert f"run.yaml:{BASE.count(chr(10)) + 1}: extract.fps:" in str(e.value)
    with pytest.raises(ConfigError, match=r"--set: extract.fps:"):
        load_config(write(tmp_path, BASE), [f"extract.fps={fps}"])


@pytest.mark.parametrize("store", ["data", "./data/", "{root}"])
def test_the_store_cannot_be_the_dataset_root(tmp_path, store):
    text = BASE.replace("store: data/features.zarr", f"store: {store.format(root=tmp_path / 'data')}")
    with pytest.raises(ConfigError, match="the store must not be the dataset root itself") as e:
        load_config(write(tmp_path, text))
    assert "run.yaml:4: store:" in str(e.value)
