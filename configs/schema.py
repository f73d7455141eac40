"""Typed run configuration: one pydantic model validated before any work starts.

The same models type the Prefect flow parameters. Key names under `extract`,
`dataset.root`, `store` and `name` are relied upon by outside scripts: keep them.
"""

from __future__ import annotations

import codecs
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator,
                      model_validator)

from prvr.errors import UserError

_SLUG = re.compile(r"[^a-z0-9]+")


class ConfigError(UserError, ValueError):
    """A configuration that cannot be used; the message lists every problem."""


class _Strict(BaseModel):
    # Typos in YAML keys must be an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TeacherSpec(_Strict):
    """An open_clip model: a registered name plus a pretrained tag, a local checkpoint, or None."""

    model: str = Field(min_length=1)
    pretrained: str | None = None
    name: str | None = Field(default=None, description="short key used in the store; derived if absent")

    @property
    def key(self) -> str:
        if self.name:
            return self.name
        tag = "random" if self.pretrained is None else Path(self.pretrained).stem
        return _SLUG.sub("-", f"{self.model}-{tag}".lower()).strip("-")

    @field_validator("name")
    @classmethod
    def _name_is_slug(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[a-z0-9][a-z0-9-]*", v):
            raise ValueError("teacher name must be lowercase letters, digits and dashes")
        return v



def default_teacher() -> TeacherSpec:
    """OpenAI's CLIP ViT-B/32, DL-DKD's teacher (and the one its feature releases ship)."""
    return TeacherSpec(model="ViT-B-32-quickgelu", pretrained="openai")

class ReleaseSource(_Strict):
    """A published feature release (MS-SL / DL-DKD / GMMFormer layout) used instead of raw videos.

    The extract stage then imports the release into the store (`prvr import ms-sl` does the same).
    """

    format: Literal["ms-sl"] = "ms-sl"
    collection: str = Field(pattern=r"^[a-z0-9_-]+$", description="tvr, activitynet, charades, ...")
    feature: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="FeatureData/<feature>, e.g. i3d_resnet")
    text: str = Field(default="roberta", pattern=r"^[a-z0-9_-]+$", description="token features for the student")
    shard_size: int = Field(default=500, ge=1, description="videos per imported shard")


class DatasetConfig(_Strict):
    root: Path = Field(description="folder holding videos.jsonl, queries.jsonl and the video files; "
                                   "with `release`, the folder holding the release")
    release: ReleaseSource | None = None


class ExtractConfig(_Strict):
    shard_size: int = Field(default=64, ge=1)
    fps: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    max_frames: int = Field(default=128, ge=1)
    teacher: list[TeacherSpec] = Field(default_factory=lambda: [default_teacher()])
    visual: list[str] = Field(default_factory=lambda: ["clip"])
    device: Literal["auto", "cpu", "cuda"] = "auto"
    strict: bool = False
    batch_size: int = Field(default=64, ge=1, description="frames per encoder forward")
    text_batch_size: int = Field(default=256, ge=1)
    decode_workers: int = Field(default=2, ge=1)
    decode_timeout_s: float = Field(default=300.0, gt=0)
    prefetch_videos: int = Field(default=4, ge=1, description="decoded videos queued ahead of the encoder")
    shard_retries: int = Field(default=2, ge=0, description="Prefect retries of a failed shard or text task")
    max_tokens: int = Field(default=32, ge=2, description="token features kept per query (incl. start/end tokens)")
    window: int = Field(default=8, ge=1, description="frames per clip for video backbones")
    window_stride: int = Field(default=2, ge=1)
    visual_weights: dict[str, str | None] = Field(
        default_factory=dict, description="weights per video backbone: a torchvision weights name "
        "(e.g. {r2plus1d_18: KINETICS400_V1}, downloaded once) or a local weights file (a path; "
        "offline), e.g. {tiny_r2plus1d: data/backbone/tiny_r2plus1d.pt}; absent = random init"
    )
    seed: int = 0
    prune_shards: bool = Field(
        default=False, description="delete committed shards beyond the current manifest (it shrank); "
                                   "without it such shards stop the run and are named")
    verify: Literal["sizes", "checksums"] = Field(
        default="sizes", description="how committed shards are checked before they are skipped: sizes (one "
                                     "listing) or checksums (reads the whole store); damaged ones are redone")

    @model_validator(mode="after")
    def _window_fits_backbones(self) -> ExtractConfig:
        from models.visual import VISUAL_FEATURES

        for name in self.visual:
            need = VISUAL_FEATURES[name].min_frames
            if self.window < need:
                raise ValueError(f"visual feature {name!r} needs extract.window >= {need}, got {self.window}")
        unused = sorted(set(self.visual_weights) - set(self.visual))
        if unused:
            raise ValueError(f"extract.visual_weights names {unused}, which extract.visual {self.visual} does not use")
        return self

    @field_validator("teacher", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, dict) else v

    @field_validator("teacher")
    @classmethod
    def _unique_teachers(cls, v: list[TeacherSpec]) -> list[TeacherSpec]:
        if not v:
            raise ValueError("at least one teacher is needed")
        keys = [t.key for t in v]
        if len(set(keys)) != len(keys):
            raise ValueError(f"teacher keys repeat: {keys}; give each a distinct `name`")
        return v

    @field_validator("visual")
    @classmethod
    def _known_visual(cls, v: list[str]) -> list[str]:
        from models.visual import VISUAL_FEATURES  # registry of names; no I/O

        unknown = [x for x in v if x not in VISUAL_FEATURES]
        if unknown:
            raise ValueError(f"unknown visual feature(s) {unknown}; known: {sorted(VISUAL_FEATURES)}")
        if len(set(v)) != len(v):
            raise ValueError(f"visual features repeat: {v}")
        return v


# The decay shapes of models.schedules (distillation weight, DL-DKD++ soft shares).
Schedule = Literal["exponential", "linear", "sigmoid", "cosine", "constant"]


class TrainConfig(_Strict):
    visual: list[str] = Field(default_factory=lambda: ["clip"], description="student inputs (extract.visual), concatenated")
    teachers: list[str] | None = Field(default=None, description="teacher keys to distil from (default: all)")
    branches: Literal["both", "inheritance", "exploration"] = Field(
        default="both", description="both = DL-DKD; one branch alone for ablations")
    epochs: int = Field(default=100, ge=1)
    batch_videos: int = Field(default=128, ge=2, description="videos per batch, each with all of its queries")
    optimizer: Literal["adamw", "bertadam"] = Field(
        default="adamw", description="adamw: torch's AdamW, bias-corrected, warm-up then linear decay; bertadam: the "
        "reference code's BertAdam (no bias correction, eps 1e-6, each parameter's gradient clipped to norm 1)")
    lr: float = Field(default=2.5e-4, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    warmup: float = Field(default=0.01, ge=0, lt=1, description="fraction of steps with linear warm-up")
    hidden: int = Field(default=384, ge=8)
    heads: int = Field(default=4, ge=1)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    max_frames: int | None = Field(default=None, ge=1, description="default: extract.max_frames")
    margin: float = Field(default=0.2, ge=0)
    hard_pool: int = Field(default=20, ge=1)
    infonce_weight: float = Field(default=0.04, ge=0)
    schedule: Schedule = "exponential"
    schedule_base: float = Field(default=0.1, ge=0)
    increasing: bool = False
    distill_temperature: float = Field(default=0.2, gt=0)
    soft_infonce: bool = Field(default=False, description="DL-DKD++ soft targets in InfoNCE")
    soft_alpha: float = Field(default=0.8, ge=0, le=1, description="share of each batch kept on one-hot targets")
    soft_beta: float = Field(default=0.8, ge=0, le=1, description="weight of the one-hot part in a soft target")
    soft_schedule: Schedule = Field(
        default="sigmoid", description="decay of soft_alpha and soft_beta over epochs")
    soft_teacher_scale: float = Field(default=100.0, gt=0, description="teacher cosine -> logits for its "
                                      "soft targets (CLIP's logit scale; the reference uses raw CLIP dot products)")
    fusion: float = Field(default=0.7, ge=0, le=1, description="weight of the inheritance branch at inference")
    early_stop: int = Field(default=10, ge=1, description="stop once more than this many epochs in a row bring no "
                            "validation SumR gain (as the reference code: 10 -> stops after the 11th)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data: Literal["auto", "memory", "stream"] = Field(
        default="auto", description="memory: each split's frames and tokens loaded whole; stream: batches read "
        "from the store as training goes (memory bounded by the prefetch queue); auto: stream a split larger than "
        "memory_limit_gb. The same batches, hence the same model, either way")
    memory_limit_gb: float = Field(default=2.0, gt=0, description="train.data auto: the largest split held in memory")
    prefetch: int = Field(default=2, ge=0, description="streamed batches read ahead in a background thread (0: none)")
    amp: bool = Field(default=True, description="mixed precision on CUDA")
    resume: bool = True
    seed: int = 0

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> TrainConfig:
        if self.hidden % self.heads:
            raise ValueError(f"train.hidden ({self.hidden}) must be divisible by train.heads ({self.heads})")
        return self


class EvaluateConfig(_Strict):
    split: str = "test"
    query_chunk: int = Field(default=256, ge=1, description="queries scored at once: memory ~ chunk x videos x frames")
    checkpoint: Literal["best", "last"] = "best"


class RunnerConfig(_Strict):
    """Where the shard tasks run: threads in the flow's process, or a Dask cluster."""

    kind: Literal["threads", "dask", "local-dask"] = "threads"
    address: str | None = Field(default=None, description="dask scheduler address, e.g. tcp://10.0.0.5:8786 (kind dask)")
    workers: int = Field(default=2, ge=1, description="worker processes of a local Dask cluster (kind local-dask)")
    threads_per_worker: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _address_for_dask(self) -> RunnerConfig:
        if self.kind == "dask" and not self.address:
            raise ValueError("runner.kind dask needs runner.address (the scheduler, e.g. tcp://host:8786)")
        if self.kind != "dask" and self.address:
            raise ValueError(f"runner.address is only used with runner.kind dask, not {self.kind}")
        return self


class RunConfig(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    dataset: DatasetConfig
    store: str = Field(min_length=1, description="path or fsspec URL of the Zarr feature store")
    runs_dir: Path = Path("runs")
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    runner: RunnerConfig = Field(default_factory=RunnerConfig)

    @field_validator("store")
    @classmethod
    def _store_is_not_the_dataset_root(cls, v: str, info: ValidationInfo) -> str:
        dataset = info.data.get("dataset")  # validated before `store` (field order)
        if dataset is not None and "://" not in v and _same_path(Path(v), dataset.root):
            raise ValueError(f"the store must not be the dataset root itself ({v}); e.g. {v.rstrip('/')}/features.zarr")
        return v

    @model_validator(mode="after")
    def _train_inputs_are_extracted(self) -> RunConfig:
        release = self.dataset.release
        if release is not None:
            if self.train.visual != [release.feature]:
                raise ValueError(f"train.visual must be [{release.feature}] (the release's feature), "
                                 f"got {self.train.visual}")
        else:
            missing = [v for v in self.train.visual if v not in self.extract.visual]
            if missing:
                raise ValueError(f"train.visual {missing} not in extract.visual {self.extract.visual}")
        keys = [t.key for t in self.extract.teacher]
        unknown = [t for t in (self.train.teachers or []) if t not in keys]
        if unknown:
            raise ValueError(f"train.teachers {unknown} not among the extracted teachers {keys}")
        return self

    def resolve_paths(self, base: Path) -> RunConfig:
        """Relative paths in a config file are relative to that file's folder."""
        data = self.model_dump()
        data["dataset"]["root"] = _anchor(Path(data["dataset"]["root"]), base)
        data["runs_dir"] = _anchor(Path(data["runs_dir"]), base)
        if "://" not in self.store:
            data["store"] = str(_anchor(Path(self.store), base))
        from models.visual import is_weights_file

        for name, weights in data["extract"]["visual_weights"].items():
            if is_weights_file(weights):  # a local file, not a torchvision weights name
                data["extract"]["visual_weights"][name] = str(_anchor(Path(weights), base))
        for teacher in data["extract"]["teacher"]:
            # A checkpoint path (not a registry tag) is relative to the config file too.
            p = teacher["pretrained"]
            if p and ("/" in p or Path(p).suffix in {".pt", ".pth", ".bin", ".safetensors", ".ckpt"}):
                teacher["pretrained"] = str(_anchor(Path(p), base))
        return RunConfig.model_validate(data)


def _same_path(a: Path, b: Path) -> bool:
    return os.path.normpath(a.expanduser()) == os.path.normpath(b.expanduser())


def _anchor(p: Path, base: Path) -> Path:
    p = p.expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a","b","c"], value parsed as YAML, so 2 is int and [x] a list)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {e}") from None
    return parts, value


def apply_overrides(data: dict, overrides: list[str] | dict[str, Any]) -> dict:
    items = overrides.items() if isinstance(overrides, dict) else [
        (".".join(k), v) for k, v in map(parse_override, overrides)
    ]
    for dotted, value in items:
        node = data
        parts = dotted.split(".")
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {dotted}: {p!r} is not a mapping")
            node = child
        node[parts[-1]] = value
    return data


KeyLines = dict[tuple, int]  # key path (("extract", "fps"), ("extract", "teacher", 0, "model")) -> YAML line


def format_validation_error(err: ValidationError, source: str, key_lines: KeyLines | None = None,
                            overridden: frozenset[tuple] = frozenset()) -> str:
    """Every problem on its own line, led by `file:line:` of its key (or `--set`) where known."""
    out = [f"invalid config {source}:"]
    name = Path(source).name
    for e in err.errors():
        loc = tuple(e["loc"])
        where = ".".join(str(x) for x in loc) or "<top>"
        origin = ""
        for end in range(len(loc), 0, -1):  # the nearest key written somewhere
            if loc[:end] in overridden:
                origin = "--set: "
                break
            if key_lines and loc[:end] in key_lines:
                origin = f"{name}:{key_lines[loc[:end]]}: "
                break
        out.append(f"  - {origin}{where}: {e['msg']}")
    return "\n".join(out)


def _read_yaml(path: Path) -> tuple[Any, KeyLines]:
    """The YAML document of `path` and the line of every mapping key in it. Raises ConfigError
    for bytes that are not UTF-8, invalid YAML and a key repeated in one mapping (YAML would
    silently keep the last), each with its line."""
    data = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line, column = data.count(b"\n", 0, e.start) + 1, e.start - data.rfind(b"\n", 0, e.start)
        raise ConfigError(f"{path}:{line}: not UTF-8 (byte 0x{data[e.start]:02x} in column {column})") from None
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        key_lines: KeyLines = {}
        if root is not None:
            _check_keys(root, (), key_lines, path)
        return (loader.construct_document(root) if root is not None else None), key_lines
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {e}") from None
    finally:
        loader.dispose()


def _check_keys(node: yaml.Node, at: tuple, key_lines: KeyLines, path: Path) -> None:
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` keys may be overridden
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                continue  # not a config key (pydantic refuses it)
            key, line = key_node.value, key_node.start_mark.line + 1
            if key in first:
                raise ConfigError(f"{path}:{line}: duplicate key {'.'.join(map(str, at + (key,)))!r} "
                                  f"(first on line {first[key]})")
            first[key] = line
            key_lines[at + (key,)] = line
            _check_keys(value_node, at + (key,), key_lines, path)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _check_keys(item, at + (index,), key_lines, path)


def _profile_lines(key_lines: KeyLines, profile: str | None) -> KeyLines:
    """Key lines after merging `profile`: its keys are where the merged values come from."""
    if profile is None:
        return key_lines
    prefix = ("profiles", profile)
    merged = {k: v for k, v in key_lines.items() if k[0] != "profiles"}
    merged.update({k[2:]: v for k, v in key_lines.items() if k[:2] == prefix and len(k) > 2})
    return merged


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_profile(data: dict, profile: str | None, source: str) -> dict:
    """A config file may hold `profiles: {name: {...}}`, partial configs merged over the rest on request
    (e.g. configs/tvr.yaml: the released-features route by default, `--profile videos` for raw videos)."""
    profiles = data.pop("profiles", None) or {}
    if not isinstance(profiles, dict) or not all(isinstance(v, dict) for v in profiles.values()):
        raise ConfigError(f"config {source}: `profiles` must map names to partial configs")
    if profile is None:
        return data
    if profile not in profiles:
        raise ConfigError(f"config {source} has no profile {profile!r}; profiles: {sorted(profiles) or 'none'}")
    return _merge(data, profiles[profile])


def load_config(path: str | Path, overrides: list[str] | dict[str, Any] | None = None,
                profile: str | None = None) -> RunConfig:
    """Read YAML, merge a profile, apply `--set` overrides, validate, anchor relative paths. Raises ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    data, key_lines = _read_yaml(path)
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    data = apply_profile(data, profile, str(path))
    key_lines = _profile_lines(key_lines, profile)
    overrides = overrides or []
    data = apply_overrides(data, overrides)
    keys = overrides if isinstance(overrides, dict) else [".".join(parse_override(o)[0]) for o in overrides]
    overridden = frozenset(tuple(k.split(".")) for k in keys)
    try:
        # Validated as written, then again with paths anchored to the config file.
        return RunConfig.model_validate(data).resolve_paths(path.resolve().parent)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, str(path), key_lines, overridden)) from None
