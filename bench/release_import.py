"""Importing a published feature release: throughput and memory, as ratios measured side by side.

Writes a synthetic release at TVR's widths (I3D+ResNet rows of 3072 floats, RoBERTa tokens of 768,
CLIP 512) and times, in one run:
1. import / raw read: the whole `prvr import ms-sl` work (validation, mean-pooling, float16 Zarr
   writes with zstd, text) divided by reading the same feature.bin rows once through numpy.
2. peak memory of the import process over the size of feature.bin: bounded means the import
   holds one shard, not the release.

Usage: python bench/release_import.py [--videos 400] [--frames 60] [--shard-size 100]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import h5py  # noqa: E402
import numpy as np  # noqa: E402


def write_release(folder: Path, videos: int, frames: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    text, feat = folder / "tvr" / "TextData", folder / "tvr" / "FeatureData" / "i3d_resnet"
    text.mkdir(parents=True)
    feat.mkdir(parents=True)
    names, v2f, lines = [], {}, {"train": [], "val": []}
    with open(feat / "feature.bin", "wb") as out:
        for v in range(videos):
            vid = f"show_s01e01_seg02_clip_{v:05d}"
            n = int(rng.integers(frames // 2, frames * 3 // 2))
            ids = [f"{vid}_{i}" for i in range(n)]
            v2f[vid] = ids
            names += ids
            rng.normal(size=(n, 3072)).astype("<f4").tofile(out)
            split = "val" if v % 10 == 0 else "train"
            lines[split] += [f"{vid}#enc#{k} someone does something {k}" for k in range(5)]
    (feat / "id.txt").write_text(" ".join(names))
    (feat / "shape.txt").write_text(f"{len(names)} 3072")
    (feat / "video2frames.txt").write_text(repr(v2f))
    for split, ls in lines.items():
        (text / f"tvr{split}.caption.txt").write_text("\n".join(ls) + "\n")
    queries = [line.split(" ", 1)[0] for ls in lines.values() for line in ls]
    with h5py.File(text / "roberta_tvr_query_feat.hdf5", "w") as f:
        for q in queries:
            f.create_dataset(q, data=rng.normal(size=(int(rng.integers(8, 30)), 768)).astype(np.float32))
    with h5py.File(text / "clip_ViT_B_32_tvr_query_feat.hdf5", "w") as f:
        for q in queries:
            f.create_dataset(q, data=rng.normal(size=(1, 512)).astype(np.float32))
    with h5py.File(folder / "tvr" / "FeatureData" / "new_clip_vit_32_tvr_vid_features.hdf5", "w") as f:
        for vid, ids in v2f.items():
            f.create_dataset(vid, data=rng.normal(size=(len(ids), 512)).astype(np.float32))
    return feat / "feature.bin"


def raw_read_seconds(feature_bin: Path) -> float:
    started = time.perf_counter()
    rows = np.memmap(feature_bin, dtype="<f4", mode="r").reshape(-1, 3072)
    for i in range(0, len(rows), 4096):
        np.asarray(rows[i:i + 4096], dtype=np.float32).sum()
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=400)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--shard-size", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        feature_bin = write_release(tmp / "release", args.videos, args.frames)
        size_mb = feature_bin.stat().st_size / 2**20
        # the import in a child process that reports its own peak memory
        args_list = ["import", "ms-sl", str(tmp / "release"), "--collection", "tvr", "--store", str(tmp / "store.zarr"),
                     "--shard-size", str(args.shard_size)]
        child = ("import json, resource, sys\nfrom prvr.cli import app\n"
                 "app(json.loads(sys.argv[1]), standalone_mode=False)\n"
                 "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
        started = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", child, json.dumps(args_list)], capture_output=True, text=True,
                              cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            sys.exit(done.stderr[-3000:])
        peak_mb = int(done.stdout.rsplit("PEAK_RSS_KB", 1)[1].split()[0]) / 1024
        # after the child: Linux keeps a forked child's peak RSS across exec, so the parent stays small until then
        raw = raw_read_seconds(feature_bin)
        print(json.dumps({
            "videos": args.videos, "feature_bin_MB": round(size_mb, 1), "shard_size": args.shard_size,
            "import_over_raw_read": round(seconds / raw, 2), "import_videos_per_s": round(args.videos / seconds, 1),
            "peak_rss_MB": round(peak_mb), "peak_rss_over_feature_bin": round(peak_mb / size_mb, 2),
        }))


if __name__ == "__main__":
    main()
