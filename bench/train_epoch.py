"""Seconds per training epoch, side by side in one run, same model, same batches:
  split:  each batch padded to the split's longest video and query (prvr before 2026-12-01);
  batch:  padded to the batch's own longest (2026-12-01);
  packed: batch padding, and only valid frames and tokens through the input projection
          (models.student.InputProjection.packed, 2026-12-02: today's training).

Usage: python bench/train_epoch.py configs/demo.yaml [--repeats 2]
Needs the config's store and teacher caches (run the pipeline's extract and teacher stages first).
Prints one JSON line: seconds of each epoch pass, the ratios of their medians and each variant's
summed epoch loss.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from configs.schema import load_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--repeats", type=int, default=2, help="epoch passes per padding, interleaved")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--max-batches", type=int, default=None, help="only the first N batches of the epoch")
    args = parser.parse_args()

    from models.student import DLDKDStudent, InputProjection
    from stages.data import load_split
    from stages.train import (batch_loss, distilled_teachers, loss_weights, make_optimizer, optimizer_step,
                              student_config)
    from storage.features import FeatureStore

    cfg = load_config(args.config, args.overrides)
    t = cfg.train
    teachers = distilled_teachers(cfg)
    data = load_split(cfg, "train", teachers, FeatureStore(cfg.store))
    torch.manual_seed(t.seed)
    initial = DLDKDStudent(student_config(cfg, data))
    weights = loss_weights(t)
    order = torch.randperm(len(data.video_ids), generator=torch.Generator().manual_seed(1)).numpy()
    if args.max_batches:
        order = order[: args.max_batches * t.batch_videos]
    scaler = torch.amp.GradScaler("cuda", enabled=False)

    def epoch(variant: str) -> tuple[float, float]:
        pad_to_batch = variant != "split"
        InputProjection.packed = variant == "packed"
        model = copy.deepcopy(initial).train()
        optimizer, _ = make_optimizer(model, t, 1000)
        negatives = torch.Generator().manual_seed(2)
        torch.manual_seed(3)
        started, total = time.perf_counter(), 0.0
        for start in range(0, len(order), t.batch_videos):
            rows = order[start:start + t.batch_videos]
            if len(rows) < 2:
                continue
            batch = data.batch(rows, pad_to_batch=pad_to_batch)
            with contextlib.nullcontext():
                loss, _ = batch_loss(model, batch, t, teachers, [], weights, 0.1, (t.soft_alpha, t.soft_beta),
                                     negatives)
            optimizer_step(loss, optimizer, scaler)
            total += float(loss.detach())
        return time.perf_counter() - started, total

    variants = ("split", "batch", "packed")
    seconds = {v: [] for v in variants}
    losses = {}
    for _ in range(args.repeats):
        for variant in variants:
            s, loss = epoch(variant)
            seconds[variant].append(round(s, 2))
            losses[variant] = loss
    InputProjection.packed = True
    median = {v: statistics.median(seconds[v]) for v in variants}
    print(json.dumps({"config": cfg.name, "videos": len(data.video_ids), "batch_videos": t.batch_videos,
                      "epoch_seconds": seconds,
                      "speedup_batch_vs_split": round(median["split"] / median["batch"], 2),
                      "speedup_packed_vs_batch": round(median["batch"] / median["packed"], 2),
                      "speedup_packed_vs_split": round(median["split"] / median["packed"], 2),
                      "epoch_loss_sum": {k: round(v, 4) for k, v in losses.items()},
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
