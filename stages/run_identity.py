"""What identifies a training run, without training: its branches and teachers, the fingerprints a
checkpoint is checked against, and the early-stop rule. Shared by training, by the trained student's
loader (stages/trained.py) and by `prvr status`, so none of them imports another.
"""

from __future__ import annotations

from configs.schema import RunConfig, TrainConfig
from storage.features import FeatureStore
from storage.fingerprint import fingerprint

# Settings that may change between a run and its resumption without changing the trajectory.
_RESUMABLE_KEYS = {"resume", "device", "amp", "data", "memory_limit_gb", "prefetch"}


def active_branches(train: TrainConfig) -> list[str]:
    return ["inheritance", "exploration"] if train.branches == "both" else [train.branches]


def eval_branch(train: TrainConfig) -> str:
    return "fused" if train.branches == "both" else train.branches


def distilled_teachers(cfg: RunConfig) -> list[str]:
    if "inheritance" not in active_branches(cfg.train):
        return []
    return cfg.train.teachers or [t.key for t in cfg.extract.teacher]


def data_fingerprint(store: FeatureStore, teachers: list[str]) -> str:
    return fingerprint({"store": store.commit_fingerprints(), "teachers": teachers})


def config_fingerprint(train: TrainConfig, data_fp: str, student: dict | None = None) -> str:
    settings = {k: v for k, v in train.model_dump().items() if k not in _RESUMABLE_KEYS}
    return fingerprint({"train": settings, "data": data_fp, "student": student})


def stopped_early(stale_epochs: int, t: TrainConfig) -> bool:
    """The early-stop rule (the reference code's): more than train.early_stop epochs without a gain."""
    return stale_epochs > t.early_stop


def changed_train_keys(old: dict, new: dict) -> list[str]:
    """Train settings that differ and change the trajectory."""
    return sorted(k for k in set(old) | set(new) if k not in _RESUMABLE_KEYS and old.get(k) != new.get(k))
