"""Where a run's data comes from: raw videos listed by a manifest, or a published feature release.

The stages downstream of the store ask here, so they run unchanged on either.
"""

from __future__ import annotations

from configs.schema import RunConfig
from storage.features import FeatureStore, teacher_array
from storage.integrity import Level


def is_release(cfg: RunConfig) -> bool:
    return cfg.dataset.release is not None


def check_source(cfg: RunConfig) -> None:
    """Validate the dataset at the door (ManifestError / ReleaseError / ReleaseFormatError)."""
    if is_release(cfg):
        from stages.release import ImportSettings, cached_plan

        cached_plan(ImportSettings.from_config(cfg))
    else:
        from stages.manifest import load_manifest

        load_manifest(cfg.dataset.root)


def source_splits(cfg: RunConfig) -> list[str]:
    """The splits whose data is stored under their own name (aliases resolve to these)."""
    if is_release(cfg):
        from stages.release import ImportSettings, cached_plan

        return cached_plan(ImportSettings.from_config(cfg)).splits
    from stages.manifest import load_manifest

    return load_manifest(cfg.dataset.root).splits()


def source_status(cfg: RunConfig, store: FeatureStore | None, verify: Level | None = "sizes") -> dict:
    """Every shard's and text split's state; `complete` when the store holds all of the source, intact
    at level `verify` (see storage/integrity.py)."""
    if is_release(cfg):
        from stages.release import ImportSettings, cached_plan, import_status

        return import_status(cached_plan(ImportSettings.from_config(cfg)), store, verify)
    from stages.extract import extraction_status, plan_shards
    from stages.manifest import load_manifest

    manifest = load_manifest(cfg.dataset.root)
    if store is None:
        return {"store": cfg.store, "complete": False, "text": {s: "missing" for s in manifest.splits()},
                "text_notes": {}, "beyond_manifest": [],
                "shards": [{"shard": p.index, "state": "missing", "committed_at": None, "videos": 0,
                            "videos_in_manifest": len(p.videos), "failed_videos": {}, "error": None,
                            "note": "no store yet", "problems": []}
                           for p in plan_shards(manifest, cfg.extract.shard_size)]}
    return extraction_status(cfg, manifest, store, verify)


def student_text_features(cfg: RunConfig) -> str:
    """Key of the token features the student reads: the release's (e.g. roberta) or the first teacher's."""
    if is_release(cfg):
        return cfg.dataset.release.text
    from stages.extract import token_model

    return token_model(cfg.extract)


def stored_teachers(cfg: RunConfig, store: FeatureStore) -> list[str]:
    """The configured teachers whose frames the store holds (a release may come without its teacher)."""
    names = set(store.feature_names())
    return [t.key for t in cfg.extract.teacher if teacher_array(t.key) in names]
