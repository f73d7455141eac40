"""How cost grows with the data: a TVR-shaped feature store of random features at fractions of
TVR's real counts, through store writing, teacher cache, a fixed number of training steps and one
full evaluation, each stage in its own process so that its peak RSS is its own.

TVR's shape: 17,435 train + 2,179 test videos, 5 queries per video, frames per video spread like
TVR's (mean about 45, at most 128), 3,072-d student rows (i3d_resnet), 30 x 768 token features
(roberta), CLIP 512-d teacher frames and sentences; the config is configs/tvr.yaml's. Random
features give meaningless recall: this measures cost only.

Usage: python bench/scale.py [--fractions 0.0625 0.25 1] [--steps 10] [--workdir DIR] [--keep]
Prints a table per fraction and stage (wall seconds, throughput, peak RSS) and the growth exponent
of time and memory from the smallest to the largest fraction (1: linear; 0: constant), then one
JSON line. Needs about 10 GB of disk at fraction 1 (it says how much before it starts); removes
what it wrote unless --keep.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

TVR = {"train": 17_435, "test": 2_179}
QUERIES_PER_VIDEO = 5
FRAME_MEAN, FRAME_MAX, FRAME_MIN = 45, 128, 8
VISUAL_DIM, TOKEN_LEN, TOKEN_DIM, CLIP_DIM = 3072, 30, 768, 512
SHARD_VIDEOS = 512
TEXT_BLOCK = 2048
STAGES = ("write", "teacher", "train", "evaluate")


def frame_counts(n: int, rng: np.random.Generator) -> np.ndarray:
    """Frames per video: log-normal around TVR's mean, cut to [8, 128] as the release import cuts."""
    sigma = 0.45
    mu = math.log(FRAME_MEAN) - sigma**2 / 2
    return np.clip(np.round(rng.lognormal(mu, sigma, n)), FRAME_MIN, FRAME_MAX).astype(int)


def bytes_needed(fraction: float) -> int:
    videos = sum(round(v * fraction) for v in TVR.values())
    frames = videos * FRAME_MEAN
    return 2 * (frames * (VISUAL_DIM + CLIP_DIM) + videos * QUERIES_PER_VIDEO * (TOKEN_LEN * TOKEN_DIM + CLIP_DIM))


def config(workdir: Path, overrides: dict | None = None):
    from configs.schema import load_config

    return load_config(ROOT / "configs" / "tvr.yaml", {
        "store": str(workdir / "store.zarr"), "runs_dir": str(workdir / "runs"), "dataset.root": str(workdir),
        "train.device": "cpu", "train.data": "stream", **(overrides or {})})


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float16)


# ---- stages, each run in a child process ------------------------------------------------
def stage_write(workdir: Path, fraction: float, steps: int) -> dict:
    from stages.extract import visual_feature
    from storage.features import FeatureStore, sentence_array, teacher_array, token_arrays

    cfg = config(workdir)
    teacher = cfg.extract.teacher[0].key
    visual, clip = visual_feature(cfg.train.visual[0]), teacher_array(teacher)
    tokens_name, lengths_name = token_arrays(cfg.dataset.release.text)
    rng = np.random.default_rng(0)
    store = FeatureStore(cfg.store, mode="a")
    shard, frames_written, queries_written = 0, 0, 0
    for split, total in TVR.items():
        n = round(total * fraction)
        counts = frame_counts(n, rng)
        ids = [f"{split}-{i:06d}" for i in range(n)]
        for start in range(0, n, SHARD_VIDEOS):
            writer = store.begin_shard(shard, {visual: VISUAL_DIM, clip: CLIP_DIM})
            for vid, m in zip(ids[start:start + SHARD_VIDEOS], counts[start:start + SHARD_VIDEOS]):
                times = (np.arange(m, dtype=np.float32) + 0.5) * 1.5
                writer.add_video(vid, split, float(m) * 1.5, times, {
                    visual: unit(rng.standard_normal((m, VISUAL_DIM), dtype=np.float32)),
                    clip: unit(rng.standard_normal((m, CLIP_DIM), dtype=np.float32))})
                frames_written += int(m)
            writer.commit(f"scale-{fraction}-{shard}")
            shard += 1
        query_video = [v for v in ids for _ in range(QUERIES_PER_VIDEO)]
        query_ids = [f"{v}#{k}" for v in ids for k in range(QUERIES_PER_VIDEO)]
        texts = [f"query {q}" for q in query_ids]
        moments = np.full((len(query_ids), 2), np.nan, dtype=np.float32)
        writer = store.begin_text(split, query_ids, query_video, texts, moments, {
            tokens_name: (TOKEN_LEN, TOKEN_DIM), lengths_name: (), sentence_array(teacher): (CLIP_DIM,)})
        for start in range(0, len(query_ids), TEXT_BLOCK):
            q = min(TEXT_BLOCK, len(query_ids) - start)
            lengths = rng.integers(8, TOKEN_LEN + 1, q).astype(np.int32)
            block = unit(rng.standard_normal((q, TOKEN_LEN, TOKEN_DIM), dtype=np.float32))
            block[np.arange(TOKEN_LEN)[None, :] >= lengths[:, None]] = 0
            writer.write(tokens_name, start, block)
            writer.write(lengths_name, start, lengths)
            writer.write(sentence_array(teacher), start, unit(rng.standard_normal((q, CLIP_DIM), dtype=np.float32)))
        writer.commit(f"scale-text-{fraction}-{split}")
        queries_written += len(query_ids)
    store.consolidate()
    return {"units": frames_written, "unit": "frames", "videos": sum(round(v * fraction) for v in TVR.values()),
            "queries": queries_written}


def stage_teacher(workdir: Path, fraction: float, steps: int) -> dict:
    from stages.teacher import build_teacher_cache

    cfg = config(workdir)
    key = cfg.extract.teacher[0].key
    results = [build_teacher_cache(cfg, key, split) for split in TVR]
    return {"units": sum(r["queries"] for r in results), "unit": "queries",
            "detail": {r["split"]: round(r["seconds"], 1) for r in results}}


def stage_train(workdir: Path, fraction: float, steps: int) -> dict:
    import torch

    from models.student import DLDKDStudent
    from stages.data import load_split
    from stages.prefetch import prefetched
    from stages.train import (batch_loss, distilled_teachers, loss_weights, make_optimizer, optimizer_step,
                              student_config)

    cfg = config(workdir)
    t = cfg.train
    teachers = distilled_teachers(cfg)
    loaded = time.perf_counter()
    data = load_split(cfg, "train", teachers)
    load_seconds = time.perf_counter() - loaded
    torch.manual_seed(t.seed)
    model = DLDKDStudent(student_config(cfg, data)).train()
    optimizer, _ = make_optimizer(model, t, steps)
    weights = loss_weights(t)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    shuffle = torch.Generator().manual_seed(1)  # each step's videos drawn anew: small fractions have few batches
    batches = [torch.randperm(len(data.video_ids), generator=shuffle)[:t.batch_videos].numpy() for _ in range(steps)]
    negatives = torch.Generator().manual_seed(2)
    started = time.perf_counter()
    for batch in prefetched(data.batch, batches, t.prefetch):
        loss, _ = batch_loss(model, batch, t, teachers, [], weights, 0.1, (t.soft_alpha, t.soft_beta), negatives)
        optimizer_step(loss, optimizer, scaler)
        float(loss.detach())
    seconds = time.perf_counter() - started
    return {"units": len(batches), "unit": "steps", "seconds_per_step": round(seconds / len(batches), 3),
            "load_seconds": round(load_seconds, 1), "streamed": data.streamed}


def stage_evaluate(workdir: Path, fraction: float, steps: int) -> dict:
    import torch

    from models.student import DLDKDStudent
    from stages.data import load_split
    from stages.evaluate import encode_split, evaluate_student
    from stages.train import student_config

    cfg = config(workdir)
    data = load_split(cfg, "test")
    torch.manual_seed(0)
    model = DLDKDStudent(student_config(cfg, data)).eval()
    encoded = encode_split(model, data, "cpu", "fused")
    metrics, _ = evaluate_student(model, data, "fused", "cpu", cfg.evaluate.query_chunk, encoded)
    return {"units": len(data.query_ids), "unit": "queries", "videos": len(data.video_ids),
            "SumR_random_model": round(metrics["SumR"], 1)}


def child(stage: str, workdir: Path, fraction: float, steps: int) -> None:
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    started = time.perf_counter()
    result = globals()[f"stage_{stage}"](workdir, fraction, steps)
    result["seconds"] = round(time.perf_counter() - started, 2)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print("RESULT " + json.dumps(result), flush=True)


def run_stage(stage: str, workdir: Path, fraction: float, steps: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", stage, "--workdir", str(workdir),
                           "--fractions", str(fraction), "--steps", str(steps)],
                          capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"stage {stage} at fraction {fraction} failed:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def exponent(small: float, large: float, f_small: float, f_large: float) -> float:
    return math.log(large / small) / math.log(f_large / f_small) if small > 0 and large > 0 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fractions", type=float, nargs="+", default=[1 / 16, 1 / 4, 1.0])
    parser.add_argument("--steps", type=int, default=10, help="training steps per fraction (TVR's batch: 128 videos)")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a new folder in the system temp")
    parser.add_argument("--keep", action="store_true", help="keep the stores written")
    parser.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.workdir, args.fractions[0], args.steps)

    fractions = sorted(args.fractions)
    base = args.workdir or Path(tempfile.mkdtemp(prefix="prvr-scale-"))
    base.mkdir(parents=True, exist_ok=True)
    need = max(bytes_needed(f) for f in fractions)  # one fraction on disk at a time
    free = shutil.disk_usage(base).free
    print(f"scale benchmark in {base}: needs about {need / 2**30:.1f} GB of disk at fraction {fractions[-1]:g} "
          f"({free / 2**30:.0f} GB free)", flush=True)
    if need > free:
        raise SystemExit("not enough disk: pass --workdir on a larger disk, or smaller --fractions")
    table: dict[float, dict[str, dict]] = {}
    try:
        for fraction in fractions:
            workdir = base / f"fraction-{fraction:g}"
            shutil.rmtree(workdir, ignore_errors=True)
            workdir.mkdir()
            table[fraction] = {}
            for stage in STAGES:
                result = run_stage(stage, workdir, fraction, args.steps)
                table[fraction][stage] = result
                rate = result["units"] / result["seconds"] if result["seconds"] else float("nan")
                print(f"fraction {fraction:<7g} {stage:<9} {result['seconds']:8.1f} s  {rate:10.1f} "
                      f"{result['unit']}/s  peak RSS {result['peak_rss_mb']:6d} MB  "
                      f"{ {k: v for k, v in result.items() if k not in ('units', 'unit', 'seconds', 'peak_rss_mb')} }",
                      flush=True)
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(base, ignore_errors=True)
    lo, hi = fractions[0], fractions[-1]
    growth = {}
    for stage in STAGES if hi > lo else ():
        a, b = table[lo][stage], table[hi][stage]
        per_unit = (b["seconds"] / b["units"]) / (a["seconds"] / a["units"])
        growth[stage] = {"time_exponent": round(exponent(a["seconds"], b["seconds"], lo, hi), 2),
                         "rss_exponent": round(exponent(a["peak_rss_mb"], b["peak_rss_mb"], lo, hi), 2),
                         "seconds_per_unit_ratio": round(per_unit, 2)}
        print(f"growth {lo:g} -> {hi:g}, {stage:<9}: time ~ fraction^{growth[stage]['time_exponent']}, "
              f"peak RSS ~ fraction^{growth[stage]['rss_exponent']}, time per {a['unit'][:-1]} x{per_unit:.2f}")
    print(json.dumps({"fractions": fractions, "steps": args.steps, "stages": {str(k): v for k, v in table.items()},
                      "growth": growth, "cpus": os.cpu_count(), "peak_rss_mb_max": max(
                          r["peak_rss_mb"] for stages in table.values() for r in stages.values())}))


if __name__ == "__main__":
    main()
