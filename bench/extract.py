"""Extraction throughput, as ratios measured side by side in one run.

1. end to end / encoder alone: frames/s of a whole shard (decode workers + encoder +
   Zarr writes) divided by frames/s of the encoder's forward on the same, pre-decoded
   frames, same model and batch size. Near 1 means decoding and writing hide behind
   the encoder.
2. decord / ffmpeg: frames/s of decord's sampled decode divided by the ffmpeg CLI
   decoding the same frame indices at the same output size.

Absolute times on shared machines are noise; the ratios are what to compare.
Usage: python bench/extract.py [--videos 8] [--seconds 40] [--model ViT-B-32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from configs.schema import RunConfig  # noqa: E402
from models.clip import load_clip_encoder  # noqa: E402
from stages import extract as ex  # noqa: E402
from stages.decode import decode_video, get_decode_pool  # noqa: E402
from stages.manifest import load_manifest  # noqa: E402
from synth.test_cards import make_video  # noqa: E402


def make_dataset(root: Path, videos: int, seconds: float) -> None:
    (root / "videos").mkdir(parents=True, exist_ok=True)
    rows, queries = [], []
    for i in range(videos):
        make_video(root / "videos" / f"b{i:03d}.mp4", seconds=seconds, fps=25, size=(320, 240),
                   pattern=("testsrc2", "testsrc")[i % 2])
        rows.append({"video_id": f"b{i:03d}", "path": f"videos/b{i:03d}.mp4", "split": "train"})
        queries.append({"query_id": f"q{i}", "video_id": f"b{i:03d}", "text": "a test pattern", "split": "train"})
    (root / "videos.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=40.0)
    parser.add_argument("--fps", type=float, default=1.0)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        make_dataset(root, args.videos, args.seconds)
        cfg = RunConfig.model_validate({
            "name": "bench", "dataset": {"root": str(root)}, "store": str(Path(tmp) / "s.zarr"),
            "extract": {"shard_size": args.videos, "fps": args.fps, "device": "cpu", "batch_size": args.batch_size,
                        "decode_workers": args.workers, "teacher": {"model": args.model, "pretrained": None},
                        "visual": ["clip"]},
        })
        manifest = load_manifest(root)
        plan = ex.plan_shards(manifest, args.videos)[0]
        encoder = load_clip_encoder(args.model, None, "cpu", 0)  # loaded once, as in a worker
        get_decode_pool(args.workers, cfg.extract.decode_timeout_s)  # started once, as in a worker
        paths = [v.path for v in plan.videos]
        decoded = [decode_video(p, args.fps, 128, short_side=encoder.image_size) for p in paths]
        frames = np.concatenate([d.samples() for d in decoded])
        n_frames = len(frames)

        def encoder_only() -> None:
            for i in range(0, n_frames, args.batch_size):
                encoder.encode_frames(frames[i:i + args.batch_size])

        def end_to_end() -> None:
            ex.extract_shard(plan, cfg, "bench")

        def decode_with(backend: str):
            return lambda: [decode_video(p, args.fps, 128, short_side=encoder.image_size, backend=backend) for p in paths]

        end_to_end()  # warm-up: first-touch costs (store creation, allocator) out of the figures
        runs: dict[str, list[float]] = {"e2e": [], "encoder": [], "decord": [], "ffmpeg": []}
        for _ in range(args.repeats):  # interleaved, so drifts in machine load hit both sides alike
            runs["e2e"].append(timed(end_to_end))
            runs["encoder"].append(timed(encoder_only))
            runs["decord"].append(timed(decode_with("decord")))
            runs["ffmpeg"].append(timed(decode_with("ffmpeg")))

    med = {k: statistics.median(v) for k, v in runs.items()}
    fps = {k: n_frames / v for k, v in med.items()}
    print(f"videos {args.videos} x {args.seconds:.0f} s (320x240, 25 fps), sampled at {args.fps} fps -> "
          f"{n_frames} frames; model {args.model} (random weights), batch {args.batch_size}, "
          f"{args.workers} decode workers, median of {args.repeats}")
    for k in ("e2e", "encoder", "decord", "ffmpeg"):
        print(f"  {k:8s} {fps[k]:8.1f} frames/s   (runs: {', '.join(f'{t:.2f}s' for t in runs[k])})")
    print(f"ratio end-to-end / encoder-alone : {fps['e2e'] / fps['encoder']:.2f}")
    print(f"ratio decord / ffmpeg CLI decode : {fps['decord'] / fps['ffmpeg']:.2f}")


if __name__ == "__main__":
    main()
