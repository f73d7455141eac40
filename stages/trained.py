"""A trained student as evaluation and search use it: its checkpoint loaded, checked against the
current store and train config, and best.pt rebuilt from the epoch checkpoints when it is corrupt.

A model trained on other data or settings is refused, naming what changed: its numbers would
describe another model than the one the config asks for.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from configs.schema import RunConfig
from stages.run_identity import changed_train_keys, config_fingerprint, data_fingerprint, distilled_teachers, eval_branch
from storage.checkpoints import (
    CheckpointError, best_checkpoint, epoch_checkpoint, load_checkpoint, newest_loadable, save_checkpoint,
)
from storage.features import FeatureStore
from storage.runs import RunPaths

log = logging.getLogger("prvr.trained")
RETRAIN = "prvr run CONFIG --stages teacher --stages train --stages evaluate --set train.resume=false"
# What best.pt holds besides the weights, all of it in every epoch checkpoint too.
_BEST_KEYS = ("format", "student_config", "config_fingerprint", "store_commits", "teachers", "train_config", "branch")


def load_trained_student(cfg: RunConfig, which: str = "best", device: str = "cpu", store: FeatureStore | None = None):
    """(model in eval mode, the branch to score with, its checkpoint state) of run `cfg.name`.
    Raises CheckpointError when there is no usable model or it was trained on other data or settings."""
    from models.student import DLDKDStudent, StudentConfig

    store = store or FeatureStore(cfg.store)
    paths = RunPaths.of(cfg.runs_dir, cfg.name)
    path, state = best_state(cfg, paths) if which == "best" else last_state(paths)
    require_current(cfg, store, path, state)
    model = DLDKDStudent(StudentConfig(**state["student_config"]))
    model.load_state_dict(state["model"])
    model.to(device).eval()
    return model, state.get("branch", eval_branch(cfg.train)), state


def last_state(paths: RunPaths) -> tuple[Path, dict[str, Any]]:
    found = newest_loadable(paths)
    if found is None:
        raise CheckpointError(f"no loadable checkpoint in {paths.checkpoints}; run the train stage first")
    return found


def best_state(cfg: RunConfig, paths: RunPaths) -> tuple[Path, dict[str, Any]]:
    """best.pt; when it is corrupt or missing, rebuilt from the best epoch's checkpoint (and saved)."""
    path = best_checkpoint(paths)
    problem = f"{path} is missing"
    if path.exists():
        try:
            return path, load_checkpoint(path)
        except Exception as e:  # truncated zip, bad pickle, wrong format
            problem = f"{path} is corrupt ({type(e).__name__}: {str(e)[:200]})"
    found = newest_loadable(paths)
    if found is None:
        if not path.exists():
            raise CheckpointError(f"no trained model in {paths.root}; run the train stage first")
        raise CheckpointError(f"{problem}, and {paths.checkpoints} holds no epoch checkpoint that loads to rebuild "
                              f"it from. Retrain: {RETRAIN}")
    rebuilt, source = _rebuilt_best(cfg, paths, *found)
    if rebuilt is None:
        raise CheckpointError(f"{problem}, and it cannot be rebuilt: {source}. Retrain: {RETRAIN}; or use the last "
                              f"epoch's model instead of the best: --set evaluate.checkpoint=last")
    save_checkpoint(path, rebuilt)
    log.warning("%s; rebuilt it from %s (best epoch %d)", problem, source, rebuilt["epoch"])
    return path, rebuilt


def _rebuilt_best(cfg: RunConfig, paths: RunPaths, newest: Path,
                  state: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """(best.pt's content, the file it came from), or (None, why it cannot be made)."""
    epoch = state["best"]["epoch"]
    source = epoch_checkpoint(paths, epoch + 1)  # written at the end of the best epoch, with the same weights
    if source == newest:
        origin = state
    elif not source.exists():
        return None, f"the checkpoint of its best epoch {epoch}, {source.name}, is gone"
    else:
        try:
            origin = load_checkpoint(source)
        except Exception as e:
            return None, f"the checkpoint of its best epoch {epoch}, {source.name}, is corrupt too ({type(e).__name__})"
    if origin.get("config_fingerprint") != state.get("config_fingerprint"):
        return None, f"{source.name} was written by another training than {newest.name}"
    best = {k: origin[k] for k in _BEST_KEYS if k in origin}
    best.setdefault("branch", eval_branch(cfg.train))
    return {**best, "model": origin["model"], "epoch": epoch, "metric": state["best"]["metric"]}, source.name


def require_current(cfg: RunConfig, store: FeatureStore, path: Path, state: dict[str, Any]) -> None:
    """Refuse a model trained on another store or with other train settings, naming what changed."""
    changes = stale_reasons(cfg, store, state)
    if changes:
        raise CheckpointError(
            f"{path} was trained on other inputs than the current config and store: {'; '.join(changes)}. Its "
            f"numbers would describe another model. Retrain on the current store: {RETRAIN} (CONFIG: the config "
            f"of run {cfg.name!r}, with the same --set overrides)")


def stale_reasons(cfg: RunConfig, store: FeatureStore, state: dict[str, Any]) -> list[str]:
    """What differs between the checkpoint's training and the current store and config; [] when nothing."""
    teachers = distilled_teachers(cfg)
    current = config_fingerprint(cfg.train, data_fingerprint(store, teachers), state.get("student_config"))
    if state.get("config_fingerprint") == current:
        return []
    reasons = []
    if "store_commits" in state:
        reasons += _store_changes(state["store_commits"], store.commit_fingerprints())
    if "teachers" in state and list(state["teachers"]) != teachers:
        reasons.append(f"distilled teachers: trained with {list(state['teachers'])}, now {teachers}")
    if "train_config" in state:
        now = cfg.train.model_dump()
        keys = changed_train_keys(state["train_config"], now)
        if keys:
            reasons.append("train config keys changed: " + ", ".join(
                f"{k} (trained with {state['train_config'].get(k)!r}, now {now.get(k)!r})" for k in keys))
    return reasons or ["the store or the train config changed since training (the checkpoint does not record which)"]


def _store_changes(trained: dict[str, str], now: dict[str, str]) -> list[str]:
    changed = sorted(k for k in trained.keys() & now.keys() if trained[k] != now[k])
    added, gone = sorted(now.keys() - trained.keys()), sorted(trained.keys() - now.keys())
    reasons = []
    if changed:
        reasons.append(f"store commits changed since training (re-extracted or re-imported): {', '.join(changed)}")
    if added:
        reasons.append(f"store commits added since training: {', '.join(added)}")
    if gone:
        reasons.append(f"store commits gone since training: {', '.join(gone)}")
    return reasons
