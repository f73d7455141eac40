"""Import a published MS-SL / DL-DKD feature release into the feature store.

The import writes the layout extraction writes, so the teacher, train and evaluate stages run
unchanged: the release's visual features (e.g. I3D+ResNet) become `visual.<feature>`, the
student's input; its RoBERTa token features become `tokens.<text>`; DL-DKD's CLIP frames and
sentences become `teacher.<key>` / `sentence.<key>`. Videos are imported shard by shard with the
same commit markers as extraction, so an interrupted import resumes where it stopped and memory
stays bounded by one shard.

Frames follow the reference data loader: the student's rows are mean-pooled down to the
teacher's frame count (so both views describe the same segments), then both are mean-pooled to
at most `max_frames` rows and L2-normalised. Frame times are in feature steps (the release has
no timestamps): row i of a video with n steps sits at its segment's centre.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from configs.schema import RunConfig, default_teacher
from prvr.errors import UserError
from stages.ingest import (
    PRUNE_ADVICE, IngestWork, ShardOutcome, ShardUnit, SourceStatus, TextUnit, begin_work, planned_status,
)
from stages.manifest import SPLITS
from stages.progress import Progress, counting, scaled
from stages.release_formats import (
    BigFile, Caption, Hdf5Rows, ReleaseFormatError, _listed, l2_normalise, mean_resample, read_captions,
    read_video2frames,
)
from storage.features import FeatureStore, sentence_array, teacher_array, token_arrays, visual_array
from storage.fingerprint import file_sha256, fingerprint
from storage.integrity import Level

log = logging.getLogger("prvr.release")

IMPORT_VERSION = 1
# The feature folders the MS-SL release ships per collection (its run scripts name them).
DEFAULT_FEATURES = {"tvr": "i3d_resnet", "activitynet": "i3d", "charades": "i3d_rgb_lgi"}
# DL-DKD's teacher files come from OpenAI's CLIP ViT-B/32: the key the default teacher has when
# extracted from raw videos, so both routes fill the same store arrays.
RELEASE_TEACHER = default_teacher().key
TEXT_BATCH = 1024


class ReleaseError(UserError, ValueError):
    """The release cannot be imported as asked; the message says why and what to do."""


@dataclass(frozen=True)
class ImportSettings:
    root: Path  # the collection folder, holding TextData/ and FeatureData/
    collection: str
    feature: str
    text: str = "roberta"
    teacher: str = RELEASE_TEACHER
    shard_size: int = 500
    max_frames: int = 128
    max_tokens: int = 30

    @classmethod
    def from_config(cls, cfg: RunConfig) -> ImportSettings:
        release = cfg.dataset.release
        if release is None:
            raise ReleaseError(f"config {cfg.name} has no dataset.release")
        return cls(root=collection_folder(cfg.dataset.root, release.collection), collection=release.collection,
                   feature=release.feature, text=release.text, teacher=cfg.extract.teacher[0].key,
                   shard_size=release.shard_size, max_frames=cfg.extract.max_frames,
                   max_tokens=cfg.extract.max_tokens)


def collection_folder(root: Path, collection: str) -> Path:
    """Accept the release root (holding `<collection>/`) or the collection folder itself."""
    root = Path(root).expanduser().resolve()
    for candidate in (root / collection, root):
        if (candidate / "TextData").is_dir() and (candidate / "FeatureData").is_dir():
            return candidate
    raise ReleaseError(f"no MS-SL release of {collection!r} at {root}: expected {root / collection}/TextData and "
                       f"FeatureData (or TextData and FeatureData directly in {root})")


@dataclass(frozen=True)
class ReleaseFiles:
    captions: dict[str, Path]  # split -> caption file, for the splits present
    features: Path  # FeatureData/<feature>/
    video2frames: Path
    tokens: Path
    teacher_videos: Path
    teacher_queries: Path

    @property
    def has_teacher(self) -> bool:
        return self.teacher_videos.is_file() and self.teacher_queries.is_file()


def release_files(s: ImportSettings) -> ReleaseFiles:
    text_dir, feat_dir = s.root / "TextData", s.root / "FeatureData"
    captions = {split: text_dir / f"{s.collection}{split}.caption.txt" for split in SPLITS}
    return ReleaseFiles(
        captions={k: v for k, v in captions.items() if v.is_file()},
        features=feat_dir / s.feature,
        video2frames=feat_dir / s.feature / "video2frames.txt",
        tokens=text_dir / f"{s.text}_{s.collection}_query_feat.hdf5",
        teacher_videos=feat_dir / f"new_clip_vit_32_{s.collection}_vid_features.hdf5",
        teacher_queries=text_dir / f"clip_ViT_B_32_{s.collection}_query_feat.hdf5",
    )


def no_teacher_advice(files: ReleaseFiles, config_hint: str = "CONFIG") -> str:
    return (f"the release has no CLIP teacher files ({files.teacher_videos.name} in FeatureData/, "
            f"{files.teacher_queries.name} in TextData/). Two ways forward:\n"
            f"  1. train without distillation (exploration branch only): "
            f"prvr run {config_hint} --set train.branches=exploration\n"
            f"  2. extract the teacher from your copies of the raw videos: convert the raw annotations with "
            f"`prvr import tvr|activitynet|charades ANNOTATIONS --videos DIR --out DATASET_ROOT` and run "
            f"`prvr run` on a config for that dataset root (configs/<collection>.yaml, raw-video route)")


@dataclass(frozen=True)
class ImportShard:
    index: int
    videos: tuple[tuple[str, str], ...]  # (video_id, split)


@dataclass
class ReleasePlan:
    settings: ImportSettings
    files: ReleaseFiles
    captions: dict[str, list[Caption]]  # stored splits only
    aliases: dict[str, str]  # split -> stored split with the same captions
    shards: list[ImportShard]
    frames_of: dict[str, list[str]] = field(repr=False)
    has_teacher: bool = False

    @property
    def splits(self) -> list[str]:
        return list(self.captions)


def open_release(s: ImportSettings, check_features: bool = True) -> ReleasePlan:
    """Read and cross-check the release before any work: every problem names its file and id."""
    plan = read_plan(s)
    if check_features:
        verify_features(plan)
    return plan


def read_plan(s: ImportSettings) -> ReleasePlan:
    """Captions, split aliases, video2frames and the shard plan; the feature files are only located."""
    files = release_files(s)
    if not files.captions:
        raise ReleaseError(f"no caption files in {s.root / 'TextData'}: expected "
                           f"{', '.join(f'{s.collection}{x}.caption.txt' for x in SPLITS)}")
    captions: dict[str, list[Caption]] = {}
    aliases: dict[str, str] = {}
    owner: dict[str, str] = {}  # video -> split
    for split, path in files.captions.items():
        caps = read_captions(path)
        same = next((other for other, c in captions.items() if c == caps), None)
        if same is not None:
            aliases[split] = same  # e.g. MS-SL's TVR and Charades: test repeats val
            continue
        clash = sorted({c.video_id for c in caps if owner.get(c.video_id, split) != split})
        if clash:
            raise ReleaseError(f"{path}: videos also in another split's caption file "
                               f"({owner[clash[0]]}): {_listed(clash)}; a video belongs to one split")
        for c in caps:
            owner.setdefault(c.video_id, split)
        captions[split] = caps

    frames_of = read_video2frames(files.video2frames)
    videos = list(dict.fromkeys(c.video_id for caps in captions.values() for c in caps))
    missing = [v for v in videos if v not in frames_of]
    if missing:
        raise ReleaseError(f"{files.video2frames}: {len(missing)} video(s) of the caption files have no frames: "
                           f"{_listed(missing)}")
    if files.teacher_videos.is_file() != files.teacher_queries.is_file():
        present, absent = ((files.teacher_videos, files.teacher_queries) if files.teacher_videos.is_file()
                           else (files.teacher_queries, files.teacher_videos))
        raise ReleaseError(f"{absent}: missing while {present.name} is present; the teacher needs both")
    ordered = [(v, split) for split, caps in captions.items() for v in dict.fromkeys(c.video_id for c in caps)]
    shards = [ImportShard(i // s.shard_size, tuple(ordered[i:i + s.shard_size]))
              for i in range(0, len(ordered), s.shard_size)]
    return ReleasePlan(s, files, captions, aliases, shards, frames_of, files.has_teacher)


def verify_features(plan: ReleasePlan) -> None:
    """Every frame id in feature.bin's id.txt, every query in the token file, and every video and
    query in the teacher files when present; the first file with gaps is named with its ids."""
    files = plan.files
    videos = [v for shard in plan.shards for v, _ in shard.videos]
    queries = [c.query_id for caps in plan.captions.values() for c in caps]
    big = BigFile(files.features)
    unknown = [f"{v}: {fid}" for v in videos for fid in plan.frames_of[v] if fid not in big.index]
    if unknown:
        raise ReleaseError(f"{files.features / 'id.txt'}: {len(unknown)} frame id(s) listed in "
                           f"video2frames.txt are not in the features: {_listed(unknown)}")
    if not files.tokens.is_file():
        raise ReleaseError(f"{files.tokens}: missing (the student's token features)")
    checks = [(Hdf5Rows(files.tokens), queries, "query id(s) of the caption files are missing")]
    if plan.has_teacher:
        checks += [(Hdf5Rows(files.teacher_videos), videos, "video(s) missing"),
                   (Hdf5Rows(files.teacher_queries, alternate_ids=True), queries, "query id(s) missing")]
    try:
        for rows, ids, what in checks:
            absent = rows.missing(ids)
            if absent:
                raise ReleaseError(f"{rows.path}: {len(absent)} {what}: {_listed(absent)}")
    finally:
        for rows, _, _ in checks:
            rows.close()


_PLANS: dict[tuple, ReleasePlan] = {}


def cached_plan(s: ImportSettings) -> ReleasePlan:
    """The plan, read once per process while the plan's files are unchanged (shard tasks reuse it)."""
    files = release_files(s)
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in [*files.captions.values(), files.video2frames] if p.is_file())
    key = (s, stamp)
    if key not in _PLANS:
        _PLANS.clear()
        _PLANS[key] = read_plan(s)
    return _PLANS[key]


# ---- fingerprints ---------------------------------------------------------------
def _source_identity(plan: ReleasePlan) -> dict:
    f = plan.files
    size = lambda p: p.stat().st_size if p.is_file() else None  # noqa: E731
    return {"version": IMPORT_VERSION, "feature": plan.settings.feature,
            "feature_bin": size(f.features / "feature.bin"), "video2frames": size(f.video2frames),
            "teacher": plan.settings.teacher if plan.has_teacher else None,
            "teacher_videos": size(f.teacher_videos), "teacher_queries": size(f.teacher_queries)}


def shard_fingerprint(plan: ReleasePlan, shard: ImportShard) -> str:
    return fingerprint({"source": _source_identity(plan), "max_frames": plan.settings.max_frames,
                        "videos": [[v, split, len(plan.frames_of[v])] for v, split in shard.videos]})


def text_fingerprint(plan: ReleasePlan, split: str) -> str:
    return fingerprint({"source": _source_identity(plan), "captions": file_sha256(plan.files.captions[split])[:32],
                        "tokens": plan.files.tokens.stat().st_size, "text": plan.settings.text,
                        "max_tokens": plan.settings.max_tokens})


# ---- the work ---------------------------------------------------------------------
def feature_dims(plan: ReleasePlan) -> dict[str, int]:
    dims = {visual_array(plan.settings.feature): BigFile(plan.files.features).dims}
    if plan.has_teacher:
        tv = Hdf5Rows(plan.files.teacher_videos)
        try:
            first = plan.shards[0].videos[0][0]
            dims[teacher_array(plan.settings.teacher)] = tv.read(first).shape[-1]
        finally:
            tv.close()
    return dims


def video_rows(student: np.ndarray, teacher: np.ndarray | None, max_frames: int) -> dict[str, np.ndarray]:
    """Aligned rows of one video: both views cut into the same segments (see the module docstring)."""
    if teacher is None:
        return {"student": l2_normalise(mean_resample(student, max_frames))}
    if teacher.ndim != 2 or len(teacher) == 0:
        raise ReleaseFormatError(f"teacher frames have shape {teacher.shape}, expected (frames, dims)")
    n = min(len(student), len(teacher))
    student, teacher = mean_resample(student, n), mean_resample(teacher, n)
    return {"student": l2_normalise(mean_resample(student, max_frames)),
            "teacher": l2_normalise(mean_resample(teacher, max_frames))}


def import_shard(plan: ReleasePlan, shard: ImportShard, fp: str, store: FeatureStore,
                 progress: Progress | None = None) -> ShardOutcome:
    s = plan.settings
    big = BigFile(plan.files.features)
    tv = Hdf5Rows(plan.files.teacher_videos) if plan.has_teacher else None
    visual, teacher = visual_array(s.feature), teacher_array(s.teacher)
    writer = store.begin_shard(shard.index, feature_dims(plan))
    frames = 0
    imported = counting(progress, len(shard.videos), f"videos of shard {shard.index}")
    try:
        for n, (video_id, split) in enumerate(shard.videos, 1):
            steps = plan.frames_of[video_id]
            rows = video_rows(big.read(steps), tv.read(video_id) if tv else None, s.max_frames)
            m = len(rows["student"])
            times = ((np.arange(m, dtype=np.float32) + 0.5) * len(steps) / m).astype(np.float32)
            features = {visual: rows["student"]}
            if tv:
                features[teacher] = rows["teacher"]
            writer.add_video(video_id, split, float(len(steps)), times, features)
            frames += m
            imported(n)
    finally:
        if tv:
            tv.close()
    writer.commit(fp, {"frames": frames, "source": "ms-sl release", "time_unit": "feature step"})
    return ShardOutcome(shard.index, len(shard.videos), frames)


def import_text(plan: ReleasePlan, split: str, fp: str, store: FeatureStore, progress: Progress | None = None) -> int:
    s = plan.settings
    caps = plan.captions[split]
    imported = counting(progress, len(caps), f"queries of {split}")
    tokens = Hdf5Rows(plan.files.tokens)
    tq = Hdf5Rows(plan.files.teacher_queries, alternate_ids=True) if plan.has_teacher else None
    try:
        token_dim = tokens.read(caps[0].query_id).shape[-1]
        tokens_name, lengths_name = token_arrays(s.text)
        arrays: dict[str, tuple[int, ...]] = {tokens_name: (s.max_tokens, token_dim), lengths_name: ()}
        if tq:
            arrays[sentence_array(s.teacher)] = (tq.read(caps[0].query_id).size,)
        moments = np.full((len(caps), 2), np.nan, dtype=np.float32)  # the release carries no moments
        writer = store.begin_text(split, [c.query_id for c in caps], [c.video_id for c in caps],
                                  [c.text for c in caps], moments, arrays)
        for start in range(0, len(caps), TEXT_BATCH):
            batch = caps[start:start + TEXT_BATCH]
            block = np.zeros((len(batch), s.max_tokens, token_dim), dtype=np.float32)
            lengths = np.zeros(len(batch), dtype=np.int32)
            for j, c in enumerate(batch):
                t = tokens.read(c.query_id).reshape(-1, token_dim)[: s.max_tokens]
                if len(t) == 0:
                    raise ReleaseFormatError(f"{plan.files.tokens}: query {c.query_id!r} has no tokens")
                block[j, : len(t)] = l2_normalise(t)
                lengths[j] = len(t)
            writer.write(tokens_name, start, block)
            writer.write(lengths_name, start, lengths)
            if tq:
                sentences = np.stack([tq.read(c.query_id).reshape(-1) for c in batch])
                writer.write(sentence_array(s.teacher), start, l2_normalise(sentences))
            imported(min(start + TEXT_BATCH, len(caps)))
    finally:
        tokens.close()
        if tq:
            tq.close()
    writer.commit(fp)
    return len(caps)


def record_source(plan: ReleasePlan, store: FeatureStore) -> None:
    """The store remembers where it came from, and which split names repeat others."""
    s = plan.settings
    store.record_source({
        "kind": "release", "format": "ms-sl", "collection": s.collection, "feature": s.feature, "root": str(s.root),
        "text": s.text, "teacher": s.teacher if plan.has_teacher else None})
    for alias in set(SPLITS) - set(plan.captions):
        store.set_split_alias(alias, plan.aliases.get(alias))


class ReleaseSource:
    """A published MS-SL / DL-DKD feature release: shards of videos copied from its feature files."""

    kind = "import"
    needs_gpu = False

    def __init__(self, text: str, read_plan: Callable[[], ReleasePlan], location: str | None = None,
                 prune: bool = False, verify: Level = "sizes", how_to_prune: str = PRUNE_ADVICE):
        self.text = text
        self._read_plan = read_plan
        self.location = location
        self.prune, self.verify_level, self.how_to_prune = prune, verify, how_to_prune

    @classmethod
    def from_config(cls, cfg: RunConfig) -> ReleaseSource:
        # The plan is read when first needed (training and search read only the store, wherever they
        # run) and once per process while its files are unchanged.
        return cls(cfg.dataset.release.text, lambda: cached_plan(ImportSettings.from_config(cfg)), cfg.store,
                   prune=cfg.extract.prune_shards, verify=cfg.extract.verify)

    @classmethod
    def of_plan(cls, plan: ReleasePlan, location: str | None = None, **options) -> ReleaseSource:
        return cls(plan.settings.text, lambda: plan, location, **options)

    @property
    def plan(self) -> ReleasePlan:
        return self._read_plan()

    def check(self) -> None:
        self.plan  # noqa: B018 (reading the plan validates the release: ReleaseError / ReleaseFormatError)

    def splits(self) -> list[str]:
        return self.plan.splits

    def text_features(self) -> str:
        return self.text

    def notices(self) -> list[str]:
        return [] if self.plan.has_teacher else [no_teacher_advice(self.plan.files)]

    def verify(self) -> None:
        verify_features(self.plan)

    def _units(self) -> list[ShardUnit]:
        return [ShardUnit(sh.index, shard_fingerprint(self.plan, sh), len(sh.videos), sh) for sh in self.plan.shards]

    def _text_fingerprints(self) -> dict[str, str]:
        return {split: text_fingerprint(self.plan, split) for split in self.plan.splits}

    def begin(self, store: FeatureStore) -> IngestWork:
        """Also records the source and which split names repeat others."""
        work = begin_work(store, self._units(), self._text_fingerprints(), self.verify_level, self.prune,
                          self.how_to_prune)
        record_source(self.plan, store)
        return work

    def prepare(self, work: IngestWork) -> None:
        return None

    def run_shard(self, unit: ShardUnit, store: FeatureStore, progress: Progress | None = None) -> ShardOutcome:
        return import_shard(self.plan, unit.plan, unit.fingerprint, store, progress)

    def run_text(self, unit: TextUnit, store: FeatureStore, progress: Progress | None = None) -> int:
        return import_text(self.plan, unit.split, unit.fingerprint, store, progress)

    def status(self, store: FeatureStore | None, verify: Level | None = "sizes") -> SourceStatus:
        units = self._units()
        details = {"source": "ms-sl release", "aliases": self.plan.aliases,
                   "teacher": self.plan.settings.teacher if self.plan.has_teacher else None}
        return planned_status(store, {u.index: u.fingerprint for u in units},
                              {u.index: tuple(v for v, _ in u.plan.videos) for u in units},
                              self._text_fingerprints(), verify, self.location, details, self.plan.aliases)

    def summary(self, work: IngestWork, status: SourceStatus) -> dict:
        return {"shards": work.planned, "imported": len(work.shards), "text_imported": [t.split for t in work.texts],
                "teacher": status.details["teacher"], "aliases": self.plan.aliases}


def import_status(plan: ReleasePlan, store: FeatureStore | None, verify: Level | None = "sizes") -> SourceStatus:
    return ReleaseSource.of_plan(plan).status(store, verify)


def run_import(plan: ReleasePlan, location: str, on_shard: Callable[[ShardOutcome], None] | None = None,
               progress: Progress | None = None, prune: bool = False, verify: Level = "sizes") -> dict:
    """Import everything not yet committed, in this process (the CLI route; the flow runs tasks),
    holding the store's writer lease throughout."""
    from storage.lease import StoreLease

    source = ReleaseSource.of_plan(plan, location, prune=prune, verify=verify, how_to_prune="rerun with --prune-shards")
    with StoreLease(location, purpose=f"prvr import ms-sl {plan.settings.collection}") as lease:
        store = FeatureStore(location, mode="a", lease_token=lease.token)
        work = source.begin(store)
        # One progress over every shard to import, each its share by videos.
        total, before = max(1, sum(u.videos for u in work.shards)), 0
        for unit in work.shards:
            outcome = source.run_shard(unit, store, scaled(progress, before / total, (before + unit.videos) / total))
            before += unit.videos
            if on_shard:
                on_shard(outcome)
        for text in work.texts:
            source.run_text(text, store)
        store.consolidate()
        status = source.status(store)
    return {"shards": work.planned, "imported": [u.index for u in work.shards], "dropped": list(work.dropped),
            "text_imported": [t.split for t in work.texts], "complete": status.complete,
            "teacher": status.details["teacher"], "aliases": plan.aliases}
