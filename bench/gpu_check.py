"""One prepared check for a GPU machine: extraction and training throughput, as one JSON line.

Makes a few hundred small test videos with the system ffmpeg, then measures on the chosen device
(CUDA with autocast when there is one; ViT-B-32 with random weights, which run as fast as trained ones):

  decode_fps   frames/s of the decoder pool alone (worker processes, decord), no model
  encode_fps   frames/s of the CLIP image encoder alone on frames decoded beforehand
  e2e_fps      frames/s of whole shards: decode pool + encoder + Zarr writes (stages.extract)
  train_step_ms  one DL-DKD student step (both branches, KL to a teacher, AdamW; fp16 autocast and
                 a grad scaler on CUDA) at `--train-batch` videos with two queries each

Usage:
  python bench/gpu_check.py                 # GPU machine: 300 videos x 20 s
  python bench/gpu_check.py --small         # a few videos, small training batch; runs on CPU in ~1 min
Needs ffmpeg on PATH (to make the videos). Prints progress to stderr and the JSON line to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from configs.schema import RunConfig  # noqa: E402
from stages import extract as ex  # noqa: E402
from stages.decode import DecodeFailure, DecodeRequest, get_decode_pool  # noqa: E402
from stages.manifest import load_manifest  # noqa: E402
from synth.test_cards import make_video  # noqa: E402


def say(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def make_dataset(root: Path, videos: int, seconds: float, jobs: int) -> None:
    """`videos` 320x240 25 fps h264 clips with moving test cards (content differs per seed)."""
    (root / "videos").mkdir(parents=True, exist_ok=True)

    def one(i: int) -> None:
        make_video(root / "videos" / f"g{i:04d}.mp4", seconds=seconds, fps=25, size=(320, 240),
                   pattern=("testsrc2", "testsrc")[i % 2], seed=i)

    with ThreadPoolExecutor(max_workers=jobs) as pool:  # each job is an ffmpeg process
        list(pool.map(one, range(videos)))
    rows = [{"video_id": f"g{i:04d}", "path": f"videos/g{i:04d}.mp4", "split": "train"} for i in range(videos)]
    queries = [{"query_id": f"q{i}", "video_id": f"g{i:04d}", "text": "a moving test pattern", "split": "train"}
               for i in range(videos)]
    (root / "videos.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))


def synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":  # CUDA calls return before the work is done
        torch.cuda.synchronize()


def measure_decode(cfg: RunConfig, short_side: int) -> tuple[float, int]:
    """Decode every video through the process pool the shards use; (frames/s, frames)."""
    manifest = load_manifest(cfg.dataset.root)
    ext = cfg.extract
    pool = get_decode_pool(ext.decode_workers, ext.decode_timeout_s)
    requests = [DecodeRequest(key=v.video_id, path=str(v.path), fps=ext.fps, max_frames=ext.max_frames,
                              short_side=short_side, window=None, stride=1) for v in manifest.videos]
    frames = 0
    started = time.perf_counter()
    for _, result in pool.imap(requests, prefetch=2 * ext.decode_workers):
        if isinstance(result, DecodeFailure):
            raise RuntimeError(result.error)
        frames += len(result.plan.times)
    return frames / (time.perf_counter() - started), frames


def measure_encode(cfg: RunConfig, encoder, max_frames: int, repeats: int) -> float:
    """Frames/s of the encoder alone (preprocessing on the device included), median of `repeats`."""
    manifest = load_manifest(cfg.dataset.root)
    pool = get_decode_pool(cfg.extract.decode_workers, cfg.extract.decode_timeout_s)
    requests = [DecodeRequest(key=v.video_id, path=str(v.path), fps=cfg.extract.fps, max_frames=cfg.extract.max_frames,
                              short_side=encoder.image_size, window=None, stride=1) for v in manifest.videos]
    parts, held = [], 0
    for _, result in pool.imap(requests, prefetch=4):
        if held >= max_frames:
            break
        parts.append(result.samples())
        held += len(parts[-1])
    frames = np.concatenate(parts)[:max_frames]
    batch = cfg.extract.batch_size
    encoder.encode_frames(frames[:batch])  # warm-up: kernels chosen, memory allocated
    times = []
    for _ in range(repeats):
        synchronize(encoder.device)
        started = time.perf_counter()
        encoder.encode_frames(frames, batch_size=batch)  # returns CPU tensors: includes the copy back
        synchronize(encoder.device)
        times.append(time.perf_counter() - started)
    return len(frames) / statistics.median(times)


def measure_end_to_end(cfg: RunConfig) -> tuple[float, int]:
    manifest = load_manifest(cfg.dataset.root)
    plans = ex.plan_shards(manifest, cfg.extract.shard_size)
    frames = 0
    started = time.perf_counter()
    for plan in plans:
        result = ex.extract_shard(plan, cfg, ex.shard_fingerprint(plan, cfg.extract, manifest.root))
        frames += result.frames
    return frames / (time.perf_counter() - started), frames


def measure_train_step(device: str, batch_videos: int, frames: int, dim: int, steps: int) -> float:
    """Milliseconds per student step: stages.train's own batch loss and optimizer step (median over `steps`)."""
    from configs.schema import TrainConfig
    from models.student import DLDKDStudent, StudentConfig
    from stages.data import Batch
    from stages.train import batch_loss, loss_weights, optimizer_step

    gen = torch.Generator().manual_seed(0)
    queries_per_video, tokens = 2, 32
    n_queries = batch_videos * queries_per_video
    lengths = torch.randint(frames // 4, frames + 1, (batch_videos,), generator=gen)
    video_mask = torch.arange(frames)[None, :] < lengths[:, None]
    token_lengths = torch.randint(4, tokens + 1, (n_queries,), generator=gen)
    query_video = torch.arange(batch_videos).repeat_interleave(queries_per_video)
    batch = Batch(
        video=torch.randn(batch_videos, frames, dim, generator=gen), video_mask=video_mask,
        tokens=torch.randn(n_queries, tokens, dim, generator=gen),
        token_mask=torch.arange(tokens)[None, :] < token_lengths[:, None], query_video=query_video,
        teacher_scores={"t": torch.randn(n_queries, frames, generator=gen)},
    ).map(lambda v: v.to(device))
    t = TrainConfig()  # the paper's settings: both branches, hidden 384, 4 heads
    model = DLDKDStudent(StudentConfig(video_dim=dim, text_dim=dim, hidden=t.hidden, heads=t.heads,
                                       max_frames=frames, max_tokens=tokens)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr)
    use_amp = device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    weights = loss_weights(t)
    negatives = torch.Generator().manual_seed(1)
    model.train()

    def step() -> None:
        autocast = torch.autocast("cuda", dtype=torch.float16) if use_amp else torch.autocast("cpu", enabled=False)
        with autocast:
            loss, _ = batch_loss(model, batch, t, ["t"], [], weights, 0.1, (t.soft_alpha, t.soft_beta), negatives)
        optimizer_step(loss, optimizer, scaler)

    for _ in range(3):  # warm-up: allocator, cuDNN/cuBLAS choices
        step()
    times = []
    for _ in range(steps):
        synchronize(device)
        started = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return 1000.0 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="few short videos and a small training batch (CPU)")
    parser.add_argument("--videos", type=int, help="default 300 (small: 6)")
    parser.add_argument("--seconds", type=float, help="length of each video, default 20 (small: 4)")
    parser.add_argument("--fps", type=float, default=2.0, help="frames sampled per second")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, help="frames per encoder forward, default 256 (small: 16)")
    parser.add_argument("--decode-workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--train-batch", type=int, help="videos per student step, default 128 (small: 16)")
    parser.add_argument("--train-frames", type=int, help="frames per video in the step, default 128 (small: 32)")
    parser.add_argument("--train-steps", type=int, help="timed steps, default 20 (small: 3)")
    parser.add_argument("--keep", type=Path, help="make the videos here and keep them (default: a temp folder)")
    args = parser.parse_args()
    small = args.small
    videos = args.videos or (6 if small else 300)
    seconds = args.seconds or (4.0 if small else 20.0)
    batch_size = args.batch_size or (16 if small else 256)
    train_batch = args.train_batch or (16 if small else 128)
    train_frames = args.train_frames or (32 if small else 128)
    train_steps = args.train_steps or (3 if small else 20)
    if shutil.which("ffmpeg") is None:
        sys.exit("gpu_check: ffmpeg is not on PATH; it makes the test videos")

    from models.clip import load_clip_encoder, resolve_device

    device = resolve_device(args.device)
    tmp = None if args.keep else tempfile.TemporaryDirectory()
    base = args.keep or Path(tmp.name)
    try:
        root = base / "ds"
        if not (root / "videos.jsonl").exists():
            say(f"making {videos} videos of {seconds:g} s with ffmpeg")
            started = time.perf_counter()
            make_dataset(root, videos, seconds, jobs=os.cpu_count() or 2)
            say(f"videos made in {time.perf_counter() - started:.0f} s")
        store = base / f"store-{time.time_ns()}.zarr"
        cfg = RunConfig.model_validate({
            "name": "gpu-check", "dataset": {"root": str(root)}, "store": str(store),
            "extract": {"shard_size": args.shard_size, "fps": args.fps, "max_frames": 128, "device": device,
                        "batch_size": batch_size, "decode_workers": args.decode_workers,
                        "prefetch_videos": 2 * args.decode_workers,
                        "teacher": {"model": args.model, "pretrained": None}, "visual": ["clip"]},
        })
        say(f"device {device}; loading {args.model} (random weights)")
        encoder = load_clip_encoder(args.model, None, device, 0)  # once, as a worker does
        say("decoding alone")
        decode_fps, frames = measure_decode(cfg, encoder.image_size)
        say("encoding alone")
        encode_fps = measure_encode(cfg, encoder, max_frames=min(frames, 4096 if not small else 256), repeats=3)
        say("end to end (shards into a Zarr store)")
        e2e_fps, e2e_frames = measure_end_to_end(cfg)
        say(f"student training step at batch {train_batch}")
        from models.student import Branch

        step_ms = {}
        for packed in (False, True, False, True):  # interleaved: the two settings side by side
            Branch.packed = packed
            step_ms.setdefault(packed, []).append(
                measure_train_step(device, train_batch, train_frames, encoder.embed_dim, train_steps))
        Branch.packed = True
        unpacked_ms, packed_ms = statistics.median(step_ms[False]), statistics.median(step_ms[True])
    finally:
        if tmp is not None:
            tmp.cleanup()
    report = {
        "device": device, "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
        "torch": torch.__version__, "model": args.model, "videos": videos, "seconds_per_video": seconds,
        "sample_fps": args.fps, "frames": frames, "decode_workers": args.decode_workers, "batch_size": batch_size,
        "decode_fps": round(decode_fps, 1), "encode_fps": round(encode_fps, 1), "e2e_fps": round(e2e_fps, 1),
        "e2e_frames": e2e_frames, "e2e_over_encode": round(e2e_fps / encode_fps, 3),
        "train_batch_videos": train_batch, "train_frames": train_frames, "train_step_ms": round(packed_ms, 2),
        # Only valid frames and tokens through the per-row layers (today's training) against all of them.
        "train_step_ms_unpacked": round(unpacked_ms, 2), "packed_speedup": round(unpacked_ms / packed_ms, 2),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
