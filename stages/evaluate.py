"""Evaluation: R@1/5/10/100 and SumR of the fused student, each branch, and each teacher
zero-shot; moments of the top videos; the run's metrics, report and plots.

Scores are computed chunk by chunk over queries against a gallery encoded once, so memory
stays bounded by (query chunk x videos x frames), whatever the number of queries.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from configs.schema import RunConfig
from stages.data import VIDEO_CHUNK, SplitData, load_split
from stages.prefetch import prefetched
from stages.progress import Progress, silent
from stages.sources import stored_teachers
from storage.features import FeatureStore
from storage.runs import RunPaths, read_history

log = logging.getLogger("prvr.evaluate")


@torch.inference_mode()
def encode_split(model, data: SplitData, device: torch.device | str = "cpu", branch: str = "fused"):
    """Normalised gallery frames and query vectors of every branch, encoded once."""
    model.eval()
    gallery: dict[str, list[torch.Tensor]] = {}
    # Chunk by chunk, read ahead in a thread: a streamed split is never whole in memory.
    video_chunks = [np.arange(i, min(i + VIDEO_CHUNK, len(data.video_ids)))
                    for i in range(0, len(data.video_ids), VIDEO_CHUNK)]
    for video, mask in prefetched(data.video_rows, video_chunks, 2, device):
        for k, v in model.encode_gallery(video, mask, branch).items():
            gallery.setdefault(k, []).append(v)
    queries: dict[str, list[torch.Tensor]] = {}
    query_chunks = [np.arange(i, min(i + VIDEO_CHUNK * 4, len(data.query_ids)))
                    for i in range(0, len(data.query_ids), VIDEO_CHUNK * 4)]
    for tokens, mask in prefetched(data.query_rows, query_chunks, 2, device):
        for k, v in model.encode_queries(tokens, mask, branch).items():
            queries.setdefault(k, []).append(v)
    return ({k: torch.cat(v) for k, v in gallery.items()}, {k: torch.cat(v) for k, v in queries.items()},
            data.video_mask.to(device))


def evaluate_student(model, data: SplitData, branch: str, device: torch.device | str = "cpu",
                     chunk: int = 1024, encoded=None,
                     progress: Progress | None = None) -> tuple[dict[str, float], np.ndarray]:
    from stages.metrics import evaluate_chunked

    gallery, queries, mask = encoded or encode_split(model, data, device, branch)

    @torch.inference_mode()
    def score_chunk(sl: slice) -> np.ndarray:
        q = {k: v[sl] for k, v in queries.items()}
        return model.score_encoded(q, gallery, mask, branch).float().cpu().numpy()

    # Pessimistic ties: a collapsed model that scores every video alike must not look perfect.
    # Queries whose video failed extraction are misses, not left out: they would inflate every figure.
    return evaluate_chunked(score_chunk, data.query_video.numpy(), chunk=chunk, progress=progress,
                            ties="pessimistic", misses=len(data.queries_without_video))


@torch.inference_mode()
def moments_of_top_videos(model, data: SplitData, branch: str, ranks: np.ndarray, encoded,
                          device: torch.device | str = "cpu") -> list[dict[str, Any]]:
    """Predicted moments on each query's own video, scored where that video came first and overall."""
    from stages.moments import moment_recall, predict_moment

    gallery, queries, mask = encoded
    with_gt = np.flatnonzero(~np.isnan(data.moments).any(1))
    if len(with_gt) == 0:
        return []
    predictions, truths, rank1 = [], [], []
    for start in range(0, len(with_gt), 1024):
        rows = with_gt[start:start + 1024]
        vids = data.query_video[rows]
        q = {k: v[rows] for k, v in queries.items()}
        frame_scores = model.paired_frame_scores(q, {k: v[vids] for k, v in gallery.items()}, branch)
        for j, r in enumerate(rows):
            v = int(data.query_video[r])
            n = int(mask[v].sum())
            predictions.append(predict_moment(frame_scores[j, :n].float().cpu().numpy(), data.times[v, :n].numpy(),
                                              float(data.durations[v])))
            truths.append(tuple(data.moments[r]))
            rank1.append(ranks[r] == 1)
    rank1 = np.asarray(rank1)
    top = moment_recall([p for p, k in zip(predictions, rank1) if k], [g for g, k in zip(truths, rank1) if k])
    own = moment_recall(predictions, truths)
    # Rows of one table: where the correct video came first, and on every query's own video.
    return [{"where": "correct video ranked first", **top}, {"where": "each query's own video", **own}]


def teacher_zero_shot(store: FeatureStore, teacher: str, split: str, data: SplitData) -> dict[str, float]:
    """Recall of the teacher alone, from its cached query x video matrix."""
    from stages.metrics import evaluate_chunked
    from storage.teacher_cache import TeacherCache

    sim, query_ids, video_ids = TeacherCache(store).video_sim(teacher, split)
    column = {vid: i for i, vid in enumerate(video_ids)}
    row = {qid: i for i, qid in enumerate(query_ids)}
    rows = np.array([row[q] for q in data.query_ids])
    positive = np.array([column[data.video_ids[v]] for v in data.query_video.numpy()])
    metrics, _ = evaluate_chunked(lambda sl: sim[rows[sl]].astype(np.float32), positive, ties="pessimistic",
                                  misses=len(data.queries_without_video))
    return metrics


def evaluate_run(cfg: RunConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Evaluate run `cfg.name` on `cfg.evaluate.split`; writes metrics.json, report.md and plots.
    `progress(fraction, message)` hears each step and each chunk of queries ranked."""
    from models.clip import resolve_device
    from stages.report import write_run_report
    from stages.trained import load_trained_student
    from storage.checkpoints import newest_loadable

    report = progress or silent

    device = torch.device(resolve_device(cfg.train.device))
    split = cfg.evaluate.split
    store = FeatureStore(cfg.store)
    report(0.0, f"loading the student and the {split} split")
    model, branch, state = load_trained_student(cfg, cfg.evaluate.checkpoint, str(device), store)
    data = load_split(cfg, split, (), store)
    report(0.1, f"encoding {len(data.video_ids)} videos and {len(data.query_ids)} queries")
    encoded = encode_split(model, data, device, branch)
    methods: dict[str, dict[str, float]] = {}
    names = {"fused": "DL-DKD student (fused)", "inheritance": "inheritance branch", "exploration": "exploration branch"}
    branches = ["fused", "inheritance", "exploration"] if branch == "fused" else [branch]
    ranks_by_branch = {}
    # Ranking the queries is 0.3 -> 0.8 of the progress, in equal parts per branch.
    edges = [0.3 + 0.5 * i / len(branches) for i in range(len(branches) + 1)]
    for i, b in enumerate(branches):
        lo, hi = edges[i], edges[i + 1]

        def ranked(fraction: float, message: str, lo: float = lo, hi: float = hi, b: str = b) -> None:
            report(lo + (hi - lo) * fraction, f"ranking {len(data.query_ids)} queries: {names[b]}")

        metrics, ranks = evaluate_student(model, data, b, device, cfg.evaluate.query_chunk, encoded, ranked)
        methods[names[b]] = metrics
        ranks_by_branch[b] = ranks
        report(hi, f"{names[b]}: SumR {metrics['SumR']:.1f}")
    for teacher in stored_teachers(cfg, store):  # a release may come without its teacher
        name = f"teacher {teacher} (zero-shot)"
        methods[name] = teacher_zero_shot(store, teacher, split, data)
        report(0.85, f"{name}: SumR {methods[name]['SumR']:.1f}")
    report(0.9, "moments of the top videos")
    moments = moments_of_top_videos(model, data, branch, ranks_by_branch[branch], encoded, device)
    paths = RunPaths.of(cfg.runs_dir, cfg.name)
    history = read_history(paths)
    if history is None:  # a run trained before history.json was written each epoch
        found = newest_loadable(paths)
        history = list(found[1]["history"]) if found else []
    missing = len(data.queries_without_video)
    summary = {"run": cfg.name, "split": split, "queries": len(data.query_ids) + missing,
               "queries_without_video": missing, "videos": len(data.video_ids),
               "best_epoch": state.get("epoch"), "methods": methods, "moments": moments}
    report(0.95, "writing metrics, report and plots")
    files = write_run_report(paths.root, summary, history, title=f"prvr run {cfg.name}")
    summary["files"] = {k: str(v) for k, v in files.items()}
    report(1.0, f"{names[branch]} on {split}: SumR {methods[names[branch]]['SumR']:.1f}")
    return summary
