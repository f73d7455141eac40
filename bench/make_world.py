"""Build the benchmark world of configs/bench.yaml and say what each step cost.

Steps (each skipped when its output exists): the world (`prvr synth --preset bench --seed 1`),
its teacher (`prvr synth-teacher`, 400 steps), the video backbone (`prvr synth-backbone`, shared
with the demo), then extraction and the teacher caches (`prvr run configs/bench.yaml --stages
extract --stages teacher`). Prints seconds per step and in all as one JSON line.

Usage: python bench/make_world.py [--config configs/bench.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WORLD_SEED = 1
TEACHER_STEPS = 400


def timed(args: list[str], skip_if: Path | None, timings: dict, key: str) -> None:
    if skip_if is not None and skip_if.exists():
        print(f"{key}: reusing {skip_if}", flush=True)
        return
    started = time.perf_counter()
    print(f"\n== {key}: {' '.join(args)}", flush=True)
    done = subprocess.run(args, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")})
    if done.returncode != 0:
        sys.exit(f"{key} failed")
    timings[key] = round(time.perf_counter() - started, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "bench.yaml"))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from configs.schema import load_config

    cfg = load_config(args.config)
    world = cfg.dataset.root
    teacher = Path(cfg.extract.teacher[0].pretrained)
    backbone = Path(cfg.extract.visual_weights["tiny_r2plus1d"])
    prvr = str(BIN / "prvr")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    timed([prvr, "synth", str(world), "--preset", "bench", "--seed", str(WORLD_SEED)], world / "videos.jsonl",
          timings, "world")
    timed([prvr, "synth-teacher", str(world), "--seed", str(WORLD_SEED), "--steps", str(TEACHER_STEPS),
           "--out", str(teacher)], teacher, timings, "teacher")
    timed([prvr, "synth-backbone", str(backbone.parent), "--seed", "0"], backbone, timings, "backbone")
    timed([prvr, "run", args.config, "--stages", "extract", "--stages", "teacher"], None, timings,
          "extract+teacher-cache")
    timings["total"] = round(time.perf_counter() - started, 1)
    print(json.dumps({"timings_s": timings, "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
