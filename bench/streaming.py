"""Seconds per training epoch with the training split held in memory against streamed from the
Zarr store, each with and without the prefetch thread, side by side in one run: same model,
same batches, same loss. Also the memory each way of loading takes.

Usage: python bench/streaming.py configs/demo.yaml [--repeats 2] [--set key=value ...]
Needs the config's store and teacher caches (run the pipeline's extract and teacher stages first).
Prints one JSON line: seconds of each epoch pass, load seconds and RSS growth, the ratio of medians
to the in-memory epoch without prefetch (today's training before streaming), and whether every
variant's summed loss is the same.
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.epochs import epoch_arguments, epoch_batches, timed_epoch  # noqa: E402
from configs.schema import load_config  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def main() -> None:
    args = epoch_arguments(__doc__).parse_args()

    from models.student import DLDKDStudent
    from stages.data import load_split
    from stages.prefetch import prefetched
    from stages.train import distilled_teachers, student_config
    from storage.features import FeatureStore

    cfg = load_config(args.config, args.overrides)
    t = cfg.train
    teachers = distilled_teachers(cfg)
    store = FeatureStore(cfg.store)
    splits, loading = {}, {}
    for mode in ("stream", "memory"):  # streamed first: its RSS growth is not hidden by the freed memory
        before, started = rss_mb(), time.perf_counter()
        splits[mode] = load_split(cfg, "train", teachers, store, stream=(mode == "stream"))
        loading[mode] = {"seconds": round(time.perf_counter() - started, 2), "rss_growth_mb": round(rss_mb() - before)}
    torch.manual_seed(t.seed)
    initial = DLDKDStudent(student_config(cfg, splits["memory"]))
    batches = epoch_batches(len(splits["memory"].video_ids), t.batch_videos, args.max_batches)

    def epoch(mode: str, depth: int) -> tuple[float, float]:
        return timed_epoch(initial, prefetched(splits[mode].batch, batches, depth), t, teachers)

    variants = [("memory", 0), ("memory", t.prefetch), ("stream", 0), ("stream", t.prefetch)]
    seconds = {f"{m}/prefetch{d}": [] for m, d in variants}
    losses = {}
    for _ in range(args.repeats):
        for mode, depth in variants:
            s, loss = epoch(mode, depth)
            seconds[f"{mode}/prefetch{depth}"].append(round(s, 2))
            losses[f"{mode}/prefetch{depth}"] = loss
    base = statistics.median(seconds["memory/prefetch0"])
    print(json.dumps({
        "config": cfg.name, "videos": len(splits["memory"].video_ids), "batches": len(batches), "queries": len(splits["memory"].query_ids),
        "batch_videos": t.batch_videos, "torch_threads": torch.get_num_threads(), "load": loading,
        "epoch_seconds": seconds,
        "speedup_vs_memory_prefetch0": {k: round(base / statistics.median(v), 2) for k, v in seconds.items()},
        "same_loss": len(set(losses.values())) == 1}))


if __name__ == "__main__":
    main()
