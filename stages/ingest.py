"""The contract every data source meets: how the pipeline fills the feature store from it.

A source (raw videos listed by a manifest: stages/extract.py; a published feature release:
stages/release.py) plans its work in units (shards of videos, and one text unit per split),
skips what the store holds committed under the unit's fingerprint, runs one unit at a time
wherever the runner puts it, and reports every unit's state. `stages.sources.source_for(cfg)`
picks the source; the ingest flow (flows/ingest.py) runs any of them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from stages.progress import Progress
from storage.features import FeatureStore, ShardStatus
from storage.integrity import Level


@dataclass(frozen=True)
class ShardUnit:
    """One shard to run: its index, the fingerprint it commits under, its videos (the source's own plan)."""

    index: int
    fingerprint: str
    videos: int
    plan: Any  # stages.extract.ShardPlan or stages.release.ImportShard: what run_shard reads


@dataclass(frozen=True)
class TextUnit:
    """One split's queries to run (sentence embeddings, token features)."""

    split: str
    fingerprint: str


@dataclass(frozen=True)
class IngestWork:
    """What a run has to do: the units not committed (intact) under their fingerprints."""

    planned: int  # shards in the plan
    shards: tuple[ShardUnit, ...]  # to run
    texts: tuple[TextUnit, ...]  # to run
    dropped: tuple[int, ...] = ()  # shard groups beyond the plan, removed
    damaged: dict[int, list[str]] = field(default_factory=dict)  # committed shards redone: data damaged


@dataclass(frozen=True)
class ShardOutcome:
    """What running one shard committed."""

    index: int
    videos: int
    frames: int
    failed: dict[str, str] = field(default_factory=dict)  # video id -> why it was left out


@dataclass(frozen=True)
class PlannedShard:
    """One planned shard's state under its current fingerprint, beside what the plan puts in it."""

    stored: ShardStatus
    videos_in_plan: int
    first_video: str
    last_video: str

    @property
    def index(self) -> int:
        return self.stored.index

    @property
    def committed(self) -> bool:
        return self.stored.state == "committed"

    def as_dict(self) -> dict[str, Any]:
        return {**self.stored.as_dict(), "videos_in_manifest": self.videos_in_plan,
                "first_video": self.first_video, "last_video": self.last_video}


@dataclass(frozen=True)
class SourceStatus:
    """Every planned shard's and text split's state; `complete` when the store holds all of the
    source (and nothing committed beyond it)."""

    store: str | None
    shards: tuple[PlannedShard, ...]
    text: dict[str, str]  # split -> committed | stale | missing | corrupt
    text_notes: dict[str, str]
    beyond_plan: tuple[int, ...]  # committed shards beyond the plan (it shrank)
    details: dict[str, Any] = field(default_factory=dict)  # what only this source reports (release: aliases)
    aliases_ok: bool = True

    @property
    def missing_shards(self) -> list[int]:
        return [s.index for s in self.shards if not s.committed]

    @property
    def missing_text(self) -> list[str]:
        return [split for split, state in self.text.items() if state != "committed"]

    @property
    def complete(self) -> bool:
        return self.aliases_ok and not self.missing_shards and not self.missing_text and not self.beyond_plan

    def left_out(self) -> dict[str, str]:
        """Videos that committed shards left out, and why."""
        return {vid: err for s in self.shards for vid, err in s.stored.failed_videos.items()}

    def as_dict(self) -> dict[str, Any]:
        """The report `prvr status` prints (and its JSON form)."""
        return {"store": self.store, **self.details, "shards": [s.as_dict() for s in self.shards],
                "text": dict(self.text), "text_notes": dict(self.text_notes),
                "beyond_manifest": list(self.beyond_plan), "complete": self.complete}


def planned_status(store: FeatureStore | None, fingerprints: dict[int, str], plan: dict[int, tuple[str, ...]],
                   text_fingerprints: dict[str, str], verify: Level | None, location: str | None,
                   details: dict[str, Any] | None = None, aliases: dict[str, str] | None = None) -> SourceStatus:
    """A source's status read from the store: `plan` gives each shard's video ids, in order."""
    if store is None:
        shards = tuple(PlannedShard(ShardStatus(i, "missing", note="no store yet"), len(v), v[0], v[-1])
                       for i, v in plan.items())
        return SourceStatus(location, shards, {s: "missing" for s in text_fingerprints}, {}, (), details or {},
                            aliases_ok=not aliases)
    states = store.shard_statuses(fingerprints, verify)
    shards = tuple(PlannedShard(states[i], len(v), v[0], v[-1]) for i, v in plan.items())
    reports = {split: store.text_report(split, fp, verify) for split, fp in text_fingerprints.items()}
    beyond = tuple(i for i in store.shards_beyond(len(plan)) if store.committed_shard_fingerprint(i) is not None)
    aliases_ok = all(store.resolve_split(a) == t for a, t in (aliases or {}).items())
    return SourceStatus(store.location, shards, {s: r.state for s, r in reports.items()},
                        {s: r.note for s, r in reports.items() if r.note}, beyond, details or {}, aliases_ok)


# The plan shrinks when the source holds fewer videos, or the shard size grew.
PRUNE_ADVICE = "rerun with --set extract.prune_shards=true (or `prune_shards: true` under `extract:` in the config)"


def begin_work(store: FeatureStore, units: list[ShardUnit], text_fingerprints: dict[str, str], verify: Level,
               prune: bool, how_to_prune: str = PRUNE_ADVICE) -> IngestWork:
    """Prepare the store for a run (consolidated metadata invalidated; shards beyond the plan dropped
    when they hold no committed work or `prune` says so) and list the units not committed intact."""
    store.invalidate_consolidated()
    dropped = store.drop_shards_from(len(units), prune=prune, how_to_prune=how_to_prune)
    states = store.shard_statuses({u.index: u.fingerprint for u in units}, verify)
    todo = tuple(u for u in units if states[u.index].state != "committed")
    texts = tuple(TextUnit(split, fp) for split, fp in text_fingerprints.items()
                  if store.text_status(split, fp, verify) != "committed")
    damaged = {i: s.problems for i, s in states.items() if s.state == "corrupt"}
    return IngestWork(len(units), todo, texts, tuple(dropped), damaged)


class Source(Protocol):
    """A place the pipeline's data comes from. Implementations: ManifestSource, ReleaseSource."""

    kind: str  # "extract" | "import": names the stage's flow, tasks and artifacts
    needs_gpu: bool  # whether its shard tasks hold a GPU on a Dask cluster

    def check(self) -> None:
        """Validate the source at the door, before any work (raises a UserError listing every problem)."""

    def splits(self) -> list[str]:
        """The splits stored under their own name (aliases resolve to these)."""

    def text_features(self) -> str:
        """Key of the token features the student reads."""

    def notices(self) -> list[str]:
        """Warnings a run should log before it starts (e.g. a release without its teacher files)."""

    def verify(self) -> None:
        """The deeper check a run makes before it takes the store (e.g. every feature file cross-checked)."""

    def begin(self, store: FeatureStore) -> IngestWork:
        """Prepare the store (it holds the run's lease) and list the units to run."""

    def prepare(self, work: IngestWork) -> None:
        """Once per run, before any unit: what every unit would otherwise fail on alike (weights offline)."""

    def run_shard(self, unit: ShardUnit, store: FeatureStore, progress: Progress | None = None) -> ShardOutcome:
        """Run one shard and commit it, only when complete."""

    def run_text(self, unit: TextUnit, store: FeatureStore, progress: Progress | None = None) -> int:
        """Run one split's queries and commit them; returns how many."""

    def status(self, store: FeatureStore | None, verify: Level | None = "sizes") -> SourceStatus:
        """Every unit's state under the current fingerprints, read from the store (None: no store yet)."""

    def summary(self, work: IngestWork, status: SourceStatus) -> dict[str, Any]:
        """The stage's result once every unit is committed."""
