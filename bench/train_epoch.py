"""Seconds per training epoch with each batch padded to the split's longest video and query (as
before) against padded to the batch's own longest, side by side in one run, same model, same batches.

Usage: python bench/train_epoch.py configs/demo.yaml [--repeats 2]
Needs the config's store and teacher caches (run the pipeline's extract and teacher stages first).
Prints one JSON line: seconds of each epoch pass and the ratio of their medians.
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
    args = parser.parse_args()

    from models.losses import LossWeights
    from models.student import DLDKDStudent
    from stages.data import load_split
    from stages.train import batch_loss, distilled_teachers, make_optimizer, optimizer_step, student_config
    from storage.features import FeatureStore

    cfg = load_config(args.config, args.overrides)
    t = cfg.train
    teachers = distilled_teachers(cfg)
    data = load_split(cfg, "train", teachers, FeatureStore(cfg.store))
    torch.manual_seed(t.seed)
    initial = DLDKDStudent(student_config(cfg, data))
    weights = LossWeights(infonce=t.infonce_weight, triplet_margin=t.margin, hard_pool=t.hard_pool,
                          distill_temperature=t.distill_temperature)
    order = torch.randperm(len(data.video_ids), generator=torch.Generator().manual_seed(1)).numpy()
    scaler = torch.amp.GradScaler("cuda", enabled=False)

    def epoch(pad_to_batch: bool) -> tuple[float, float]:
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

    seconds = {"split": [], "batch": []}
    losses = {}
    for _ in range(args.repeats):
        for mode in ("split", "batch"):
            s, loss = epoch(mode == "batch")
            seconds[mode].append(round(s, 2))
            losses[mode] = loss
    ratio = statistics.median(seconds["split"]) / statistics.median(seconds["batch"])
    print(json.dumps({"config": cfg.name, "videos": len(data.video_ids), "batch_videos": t.batch_videos,
                      "seconds_split_padding": seconds["split"], "seconds_batch_padding": seconds["batch"],
                      "speedup": round(ratio, 2),
                      "epoch_loss_sum": {k: round(v, 4) for k, v in losses.items()},
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
