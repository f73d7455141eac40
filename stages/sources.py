"""Where a run's data comes from: raw videos listed by a manifest, or a published feature release.

The one dispatch on the config's dataset; everything downstream asks the source it returns
(stages/ingest.py is the contract), so the stages run unchanged on either.
"""

from __future__ import annotations

from configs.schema import RunConfig
from stages.extract import ManifestSource
from stages.ingest import Source
from stages.release import ReleaseSource
from storage.features import FeatureStore, teacher_array


def source_for(cfg: RunConfig) -> Source:
    """The run's data source; reading it validates it (ManifestError / ReleaseError / ReleaseFormatError
    come from `check()` or, for a release, already from here)."""
    if cfg.dataset.release is not None:
        return ReleaseSource.from_config(cfg)
    return ManifestSource(cfg)


def check_source(cfg: RunConfig) -> Source:
    """Validate the dataset at the door, before any work; returns the source."""
    source = source_for(cfg)
    source.check()
    return source


def stored_teachers(cfg: RunConfig, store: FeatureStore) -> list[str]:
    """The configured teachers whose frames the store holds (a release may come without its teacher)."""
    names = set(store.feature_names())
    return [t.key for t in cfg.extract.teacher if teacher_array(t.key) in names]
