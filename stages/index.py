"""The index stage: a trained student's encoded gallery, written once (layout: storage/index.py),
so that a search encodes only its sentence.

What an index is made from, its inputs, decides whether it is current: the checkpoint the
search reads (its weights, epoch and training fingerprint), the commits of the feature store,
the student's input features and the selection of videos (some splits, or all). A rebuild is
needed exactly when one of these changed; an unchanged index is skipped.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from configs.schema import RunConfig
from prvr.errors import UsageError
from stages.data import VIDEO_CHUNK
from stages.manifest import SPLITS
from stages.progress import Progress, silent
from storage.features import FeatureStore, StoreError
from storage.fingerprint import fingerprint
from storage.index import INDEX_FORMAT, IndexWriter, SearchIndexError, index_root, index_state, read_record
from storage.integrity import Level
from storage.runs import RunPaths

log = logging.getLogger("prvr.index")
# progress(fraction done in [0, 1], what is being done)
ALL = "all"  # the selection of every stored video


def search_unavailable(cfg: RunConfig) -> str | None:
    """Why free-text search (and so its index) cannot work for this run; None when it can."""
    if cfg.dataset.release is not None:
        return (f"free-text search needs the model that made the student's token features; the release ships "
                f"{cfg.dataset.release.text} features of its own queries only. Search works on stores extracted "
                f"from raw videos (prvr import tvr|activitynet|charades, then prvr run).")
    return None


def run_index_root(cfg: RunConfig) -> Path:
    return index_root(RunPaths.of(cfg.runs_dir, cfg.name))


def weights_fingerprint(model_state: dict[str, torch.Tensor]) -> str:
    """The identity of a model's weights: names, types, shapes and bytes of every tensor."""
    digest = hashlib.sha256()
    for name in sorted(model_state):
        tensor = model_state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


def stored_splits(store: FeatureStore) -> list[str]:
    """The splits that hold stored videos, in the manifest's order."""
    present = {loc.split for loc in store.video_index().values()}
    return [s for s in SPLITS if s in present] + sorted(present - set(SPLITS))


def resolve_selection(store: FeatureStore, splits: list[str] | None) -> list[str]:
    """The split names a selection stands for (None: all); ValueError naming a split without videos."""
    available = stored_splits(store)
    if not splits:
        if not available:
            raise StoreError(f"no committed videos in {store.location}")
        return available
    chosen = list(dict.fromkeys(store.resolve_split(s) for s in splits))
    unknown = [s for s in chosen if s not in available]
    if unknown:
        raise UsageError(f"split(s) {unknown} hold no videos in {store.location}; splits with videos: {available}")
    return chosen


def index_inputs(cfg: RunConfig, store: FeatureStore, state: dict[str, Any], branch: str,
                 splits: list[str] | None) -> dict[str, Any]:
    """Everything the index's content depends on; its fingerprint is the index's identity."""
    return {
        "format": INDEX_FORMAT,
        "checkpoint": {"which": cfg.evaluate.checkpoint, "epoch": state.get("epoch"),
                       "config_fingerprint": state.get("config_fingerprint"),
                       "weights": weights_fingerprint(state["model"])},
        "branch": branch,
        "store": store.commit_fingerprints(),
        "student_input": {"visual": list(cfg.train.visual),
                          "max_frames": cfg.train.max_frames or cfg.extract.max_frames},
        "selection": sorted(splits) if splits else ALL,
        "splits": resolve_selection(store, splits),
    }


def changed_inputs(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between the inputs an index was made from and the current ones, in words."""
    words = {"checkpoint": "the checkpoint (retrained?)", "store": "the feature store's commits",
             "branch": "the scored branch", "student_input": "the student's input features",
             "selection": "the selection of videos", "splits": "the splits of the selection", "format": "the format"}
    return [f"{words.get(k, k)} changed" for k in sorted(set(recorded) | set(now)) if recorded.get(k) != now.get(k)]


def _selection_of(splits: list[str] | None) -> list[str] | None:
    return None if not splits or list(splits) == [ALL] else list(splits)


def build_index(cfg: RunConfig, splits: list[str] | None = None, progress: Progress | None = None,
                trained=None, store: FeatureStore | None = None) -> dict[str, Any]:
    """Write the index of run `cfg.name` over the videos of `splits` (None: all), unless the one there
    is current. `trained`: (model, branch, checkpoint state) already loaded. A summary dict."""
    from models.clip import resolve_device
    from stages.data import load_videos
    from stages.trained import load_trained_student

    report = progress or silent

    unavailable = search_unavailable(cfg)
    if unavailable:
        raise UsageError(unavailable)
    started = time.perf_counter()
    splits = _selection_of(splits)
    store = store or FeatureStore(cfg.store)
    device = resolve_device(cfg.train.device)
    report(0.0, "loading the student")
    model, branch, state = trained or load_trained_student(cfg, cfg.evaluate.checkpoint, device, store)
    inputs = index_inputs(cfg, store, state, branch, splits)
    key = fingerprint(inputs)
    root = run_index_root(cfg)
    found = index_state(root, key)
    if found.state == "current":
        report(1.0, f"index of {len(found.record['videos']['ids'])} videos unchanged, skipped")
        return summary_of(found.record, root, skipped=True, seconds=time.perf_counter() - started)
    if found.state == "corrupt":
        log.warning("%s; rebuilding it", found.note)
    elif found.state == "stale":
        log.info("the search index in %s is stale (%s); rebuilding it", root,
                 ", ".join(changed_inputs(found.record.get("inputs", {}), inputs)))
    report(0.05, f"loading the videos of {', '.join(inputs['splits'])}")
    gallery = load_videos(cfg, inputs["splits"], store)
    locations = store.video_index()
    with _encoded(root, model, branch, gallery, device, report) as writer:  # removed again if the commit fails
        record = writer.commit(key, inputs, gallery.video_ids, [locations[v].split for v in gallery.video_ids],
                               gallery.durations)
    report(1.0, f"index of {len(gallery.video_ids)} videos written")
    return summary_of(record, root, skipped=False, seconds=time.perf_counter() - started)


@torch.inference_mode()
def _encoded(root: Path, model, branch: str, gallery, device: str, report: Progress) -> IndexWriter:
    """A new build with the gallery encoded into it chunk by chunk, ready to commit."""
    model.eval()
    lengths = gallery.video_mask.sum(1).numpy()
    if (lengths < 1).any():  # extraction samples at least one frame per video
        raise StoreError(f"videos without frames: {[v for v, n in zip(gallery.video_ids, lengths) if n < 1][:5]}")
    writer = None
    count = len(gallery.video_ids)
    try:
        for start in range(0, count, VIDEO_CHUNK):
            rows = slice(start, start + VIDEO_CHUNK)
            mask = gallery.video_mask[rows]
            encoded = model.encode_gallery(gallery.video[rows].float().to(device), mask.to(device), branch)
            if writer is None:
                hidden = next(iter(encoded.values())).shape[-1]
                writer = IndexWriter(root, list(encoded), hidden, int(lengths.sum()), count)
            writer.add({b: v[mask.to(v.device)].float().cpu().numpy().astype(np.float16) for b, v in encoded.items()},
                       gallery.times[rows][mask].numpy(), lengths[rows])
            done = min(count, start + VIDEO_CHUNK)
            report(0.1 + 0.85 * done / count, f"encoded {done} of {count} videos")
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return writer


def summary_of(record: dict[str, Any], root: Path, skipped: bool, seconds: float) -> dict[str, Any]:
    return {"skipped": skipped, "index": str(root), "videos": len(record["videos"]["ids"]),
            "frames": record["frames"], "branches": record["branches"], "splits": record["inputs"]["splits"],
            "selection": record["inputs"]["selection"], "built_at": record["built_at"],
            "bytes": sum(size for size, _ in record["files"].values()), "seconds": round(seconds, 2)}


def recorded_selection(record: dict[str, Any]) -> list[str] | None:
    """The selection an index was built for (None: all videos)."""
    selection = record["inputs"]["selection"]
    return None if selection == ALL else list(selection)


def current_selection(cfg: RunConfig) -> list[str] | None:
    """The selection of the index there is (None: all videos, also when there is no readable index)."""
    try:
        record = read_record(run_index_root(cfg))
    except SearchIndexError:
        return None
    return recorded_selection(record) if record is not None else None


def index_status(cfg: RunConfig, store: FeatureStore | None, train_complete: bool,
                 verify: Level = "sizes") -> dict[str, Any]:
    """The index's state under the current checkpoint and store, for `prvr status`. Reads, never writes."""
    from stages.run_identity import eval_branch
    from storage.checkpoints import best_checkpoint, load_checkpoint, newest_loadable

    unavailable = search_unavailable(cfg)
    if unavailable:
        return {"state": "not applicable", "complete": True, "summary": "no search index for a release: "
                "its store has no text model to encode a sentence with"}
    root = run_index_root(cfg)
    found = index_state(root, None, verify)
    if found.state in ("missing", "corrupt"):
        return {"state": found.state, "complete": False, "summary": found.note, "index": str(root)}
    record = found.record
    info = {"index": str(root), "videos": len(record["videos"]["ids"]), "splits": record["inputs"]["splits"],
            "built_at": record["built_at"]}
    described = (f"{info['videos']} videos ({', '.join(info['splits'])}), {record['frames']} frames, "
                 f"built {record['built_at']}")
    paths = RunPaths.of(cfg.runs_dir, cfg.name)
    try:
        if cfg.evaluate.checkpoint == "best":
            state = load_checkpoint(best_checkpoint(paths))
        else:
            state = (newest_loadable(paths) or (None, None))[1]
        if store is None or state is None:
            raise StoreError("no checkpoint or no store")
        now = index_inputs(cfg, store, state, state.get("branch", eval_branch(cfg.train)), recorded_selection(record))
    except Exception as e:  # a checkpoint that does not load, a store without these splits
        return {**info, "state": "stale", "complete": False,
                "summary": f"{described}; its inputs cannot be checked now ({type(e).__name__}: {str(e)[:200]})"}
    if fingerprint(now) != record["fingerprint"]:
        return {**info, "state": "stale", "complete": False,
                "summary": f"{described}; " + ", ".join(changed_inputs(record["inputs"], now))}
    if not train_complete:
        return {**info, "state": "stale", "complete": False, "summary": f"{described}; the train stage is not complete"}
    return {**info, "state": "complete", "complete": True, "summary": described}
