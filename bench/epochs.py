"""What the epoch benchmarks share: their arguments, the training split's batches, and one timed
epoch of the real training step from the same initial model (bench/train_epoch.py, bench/streaming.py)."""

from __future__ import annotations

import argparse
import copy
import time
from typing import Iterable

import numpy as np
import torch


def epoch_arguments(doc: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--repeats", type=int, default=2, help="epoch passes per variant, interleaved")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--max-batches", type=int, default=None, help="only the first N batches of the epoch")
    return parser


def epoch_batches(n_videos: int, batch_videos: int, max_batches: int | None) -> list[np.ndarray]:
    """One epoch's video rows per batch, in a fixed shuffled order (lone videos left out, as training does)."""
    order = torch.randperm(n_videos, generator=torch.Generator().manual_seed(1)).numpy()
    batches = [b for b in (order[i:i + batch_videos] for i in range(0, n_videos, batch_videos)) if len(b) >= 2]
    return batches[:max_batches] if max_batches else batches


def timed_epoch(initial: torch.nn.Module, batches: Iterable[dict], t, teachers: list[str]) -> tuple[float, float]:
    """(seconds, summed loss) of training steps over `batches` from a copy of `initial`, with the
    random streams of every other variant: same model, same draws."""
    from stages.train import batch_loss, loss_weights, make_optimizer, optimizer_step

    model = copy.deepcopy(initial).train()
    optimizer, _ = make_optimizer(model, t, 1000)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    weights, negatives = loss_weights(t), torch.Generator().manual_seed(2)
    torch.manual_seed(3)
    started, total = time.perf_counter(), 0.0
    for batch in batches:  # made inside the timed loop: reading a batch is part of an epoch
        loss, _ = batch_loss(model, batch, t, teachers, [], weights, 0.1, (t.soft_alpha, t.soft_beta), negatives)
        optimizer_step(loss, optimizer, scaler)
        total += float(loss.detach())
    return time.perf_counter() - started, total
