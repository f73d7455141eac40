"""Where a run stands, stage by stage, read from what is on disk (for `prvr status`).

Each stage's entry has `state` and `complete`: complete means its outputs exist and were made
from the current config and the current upstream outputs, so a rerun of it would do nothing.
Plain functions; no Prefect here, and nothing is written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from configs.schema import RunConfig
from stages.sources import source_for, stored_teachers
from storage.features import FeatureStore, StoreError
from storage.integrity import Level
from storage.lease import EXPIRE_S, current_lease
from storage.location import store_exists

STAGES = ["extract", "teacher", "train", "evaluate", "index"]


def _store(cfg: RunConfig) -> FeatureStore | None:
    try:
        return FeatureStore(cfg.store, mode="r")
    except StoreError:
        return None


def lease_status(cfg: RunConfig) -> dict[str, Any] | None:
    """The writer holding the store's lease now, and whether it still counts as alive."""
    if not store_exists(cfg.store):
        return None
    lease = current_lease(cfg.store)
    if lease is None:
        return None
    dead = lease.dead_because(EXPIRE_S)
    return {**lease.as_dict(), "age_s": round(lease.age_s(), 1), "alive": dead is None, "dead_because": dead}


def extract_status(cfg: RunConfig, store: FeatureStore | None, verify: Level) -> dict[str, Any]:
    report = source_for(cfg).status(store, verify).as_dict()
    shards = report["shards"]
    done = sum(r["state"] == "committed" for r in shards)
    return {**report, "state": "complete" if report["complete"] else "incomplete",
            "summary": f"{done} of {len(shards)} shards committed"}


def teacher_status(cfg: RunConfig, store: FeatureStore | None, extract_complete: bool) -> dict[str, Any]:
    """Every (teacher, split) cache the teacher stage would build, and its state under the current inputs."""
    from stages.teacher import teacher_cache_fingerprint, teacher_keys
    from storage.teacher_cache import TeacherCache

    if store is None:
        return {"state": "missing", "complete": False, "caches": [], "summary": "no feature store yet"}
    cache = TeacherCache(store)
    teachers = stored_teachers(cfg, store)
    caches = []
    splits = source_for(cfg).splits()
    for key in teachers:
        for split in splits:
            try:
                state = cache.status(key, split, teacher_cache_fingerprint(cfg, store, key, split))
            except StoreError as e:  # its inputs are not in the store yet
                state, note = "missing", str(e)
            else:
                note = None
            committed_at = cache.committed_at(key, split) if state != "missing" else None
            caches.append({"teacher": key, "split": split, "state": state, "committed_at": committed_at,
                           "note": note})
    absent = [k for k in teacher_keys(cfg) if k not in teachers]
    complete = extract_complete and all(c["state"] == "committed" for c in caches)
    done = sum(c["state"] == "committed" for c in caches)
    summary = f"{done} of {len(caches)} caches current"
    if absent:
        summary += f"; the store holds no frames of teacher(s) {absent}: no cache for them"
    if not extract_complete:
        summary += "; waits for the extract stage"
    return {"state": "complete" if complete else "incomplete", "complete": complete, "caches": caches,
            "summary": summary}


def train_status(cfg: RunConfig, store: FeatureStore | None) -> dict[str, Any]:
    """The newest checkpoint that loads: made under the current config and store, and finished?"""
    from stages.run_identity import config_fingerprint, data_fingerprint, distilled_teachers, stopped_early
    from storage.checkpoints import best_checkpoint, newest_loadable
    from storage.runs import RunPaths

    paths = RunPaths.of(cfg.runs_dir, cfg.name)
    found = newest_loadable(paths)
    if found is None:
        return {"state": "missing", "complete": False, "summary": f"no checkpoint in {paths.checkpoints}"}
    path, checkpoint = found
    epochs, best = int(checkpoint.get("epoch", 0)), checkpoint.get("best") or {}
    info = {"checkpoint": str(path), "epochs_done": epochs, "epochs": cfg.train.epochs,
            "best_epoch": best.get("epoch"), "best_val_SumR": best.get("metric")}
    if store is None:
        return {**info, "state": "stale", "complete": False, "summary": f"{path.name}: no feature store to train on"}
    expected = config_fingerprint(cfg.train, data_fingerprint(store, distilled_teachers(cfg)),
                                  checkpoint.get("student_config"))
    if checkpoint.get("config_fingerprint") != expected:
        return {**info, "state": "stale", "complete": False,
                "summary": f"{path.name} was trained under another config or other data in the store"}
    finished = epochs >= cfg.train.epochs or stopped_early(int(checkpoint.get("stale_epochs", 0)), cfg.train)
    if not best_checkpoint(paths).is_file():
        return {**info, "state": "incomplete", "complete": False, "summary": f"no {best_checkpoint(paths).name}"}
    summary = f"epoch {epochs} of {cfg.train.epochs}" + ("" if epochs >= cfg.train.epochs else
                                                          " (stopped early)" if finished else ", training unfinished")
    if best.get("metric") is not None:
        summary += f"; best epoch {best.get('epoch')}, val SumR {best['metric']:.1f}"
    return {**info, "state": "complete" if finished else "incomplete", "complete": finished, "summary": summary}


def evaluate_status(cfg: RunConfig, train: dict[str, Any]) -> dict[str, Any]:
    """metrics.json of the checkpoint that evaluation reads now, on the configured split?"""
    from storage.checkpoints import best_checkpoint, load_checkpoint
    from storage.runs import RunPaths

    paths = RunPaths.of(cfg.runs_dir, cfg.name)
    if not paths.metrics.is_file():
        return {"state": "missing", "complete": False, "summary": f"no {paths.metrics}"}
    try:
        metrics = json.loads(paths.metrics.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return {"state": "missing", "complete": False, "summary": f"{paths.metrics} unreadable: {e}"}
    methods = metrics.get("methods") or {}
    headline = next(iter(methods.items()), None)
    info = {"metrics": str(paths.metrics), "split": metrics.get("split"),
            "SumR": headline[1].get("SumR") if headline else None}
    stale = None
    if metrics.get("split") != cfg.evaluate.split:
        stale = f"evaluated on split {metrics.get('split')!r}, the config asks for {cfg.evaluate.split!r}"
    elif not train["complete"]:
        stale = "the train stage is not complete"
    else:
        model = best_checkpoint(paths) if cfg.evaluate.checkpoint == "best" else Path(train["checkpoint"])
        evaluated = load_checkpoint(model).get("epoch")
        if metrics.get("best_epoch") != evaluated or model.stat().st_mtime > paths.metrics.stat().st_mtime:
            stale = f"{model.name} changed after {paths.metrics.name} was written"
    if stale:
        return {**info, "state": "stale", "complete": False, "summary": stale}
    summary = f"{headline[0]} on {metrics.get('split')}: SumR {info['SumR']:.1f}" if headline else "no methods"
    return {**info, "state": "complete", "complete": True, "summary": summary}


def pipeline_status(cfg: RunConfig, stages: list[str] | None = None, verify: Level = "sizes") -> dict[str, Any]:
    """Every stage's state; `complete` when each of `stages` (default: all) is complete and current."""
    checked = [s for s in STAGES if s in (stages or STAGES)]
    store = _store(cfg)
    extract = extract_status(cfg, store, verify)
    teacher = teacher_status(cfg, store, extract["complete"])
    train = train_status(cfg, store)
    evaluate = evaluate_status(cfg, train)
    from stages.index import index_status  # torch: only when a report is made

    index = index_status(cfg, store, train["complete"], verify)
    by_stage = {"extract": extract, "teacher": teacher, "train": train, "evaluate": evaluate, "index": index}
    # The extraction's own keys stay at the top (store, shards, text) for readers of the older report.
    return {**extract, "run": cfg.name, "lease": lease_status(cfg), "verified": verify, "checked": checked,
            "stages": {name: {k: v for k, v in entry.items() if k not in ("shards",)} if name == "extract" else entry
                       for name, entry in by_stage.items()},
            "complete": all(by_stage[s]["complete"] for s in checked)}
