"""Seconds per training epoch, side by side in one run, same model, same batches:
  split:  each batch padded to the split's longest video and query (prvr's first training);
  batch:  padded to the batch's own longest;
  packed: batch padding, and only valid frames and tokens through the per-row layers (input
          projection, positions, attention projections, output; models.student.Branch.packed);
  lanes:  packed, and dropout masks from 16-bit lanes of 64-bit random words instead of
          PyTorch's Bernoulli sampler on CPU (models.dropout.Dropout.lanes): prvr's training.
          A different random stream, so its loss differs by the dropout draws alone: with
          --set train.dropout=0 all four losses agree.

Usage: python bench/train_epoch.py configs/demo.yaml [--repeats 2]
Needs the config's store and teacher caches (run the pipeline's extract and teacher stages first).
Prints one JSON line: seconds of each epoch pass, the ratios of their medians and each variant's
summed epoch loss.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.epochs import epoch_arguments, epoch_batches, timed_epoch  # noqa: E402
from configs.schema import load_config  # noqa: E402


def main() -> None:
    args = epoch_arguments(__doc__).parse_args()

    from models.dropout import Dropout
    from models.student import Branch, DLDKDStudent
    from stages.data import load_split
    from stages.train import distilled_teachers, student_config
    from storage.features import FeatureStore

    cfg = load_config(args.config, args.overrides)
    t = cfg.train
    teachers = distilled_teachers(cfg)
    data = load_split(cfg, "train", teachers, FeatureStore(cfg.store))
    torch.manual_seed(t.seed)
    initial = DLDKDStudent(student_config(cfg, data))
    batches = epoch_batches(len(data.video_ids), t.batch_videos, args.max_batches)

    def epoch(variant: str) -> tuple[float, float]:
        Branch.packed = variant in ("packed", "lanes")
        Dropout.lanes = variant == "lanes"
        made = (data.batch(rows, pad_to_batch=variant != "split") for rows in batches)
        return timed_epoch(initial, made, t, teachers)

    variants = ("split", "batch", "packed", "lanes")
    seconds = {v: [] for v in variants}
    losses = {}
    for _ in range(args.repeats):
        for variant in variants:
            s, loss = epoch(variant)
            seconds[variant].append(round(s, 2))
            losses[variant] = loss
    Branch.packed = Dropout.lanes = True
    median = {v: statistics.median(seconds[v]) for v in variants}
    print(json.dumps({"config": cfg.name, "videos": len(data.video_ids), "batches": len(batches), "batch_videos": t.batch_videos,
                      "epoch_seconds": seconds,
                      "speedup_batch_vs_split": round(median["split"] / median["batch"], 2),
                      "speedup_packed_vs_batch": round(median["batch"] / median["packed"], 2),
                      "speedup_packed_vs_split": round(median["split"] / median["packed"], 2),
                      "speedup_lanes_vs_packed": round(median["packed"] / median["lanes"], 2),
                      "speedup_lanes_vs_split": round(median["split"] / median["lanes"], 2),
                      "epoch_loss_sum": {k: round(v, 4) for k, v in losses.items()},
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
