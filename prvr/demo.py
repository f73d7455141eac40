"""`make demo`: the synthetic world, its teacher, the student's video backbone, the local Prefect
stack, and the pipeline run through the `prvr/full` deployment, offline. Steps already done are reused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from prvr.env import PROJECT_ROOT, apply_defaults

DEMO_CONFIG = PROJECT_ROOT / "configs" / "demo.yaml"
WORLD = PROJECT_ROOT / "data" / "demo"
BACKBONE = PROJECT_ROOT / "data" / "backbone"  # configs/demo.yaml's extract.visual_weights lives here
BIN = Path(sys.executable).parent
DEMO_TEACHER_STEPS = 150


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.perf_counter()


def _call(args: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(args, env=env, cwd=PROJECT_ROOT)
    if done.returncode != 0:
        sys.exit(f"demo failed at: {' '.join(args)}")


def main() -> None:
    apply_defaults()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from prvr import stack

    env = dict(os.environ)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    t = _step("synthetic world (prvr synth)")
    if not (WORLD / "videos.jsonl").exists():
        _call([str(BIN / "prvr"), "synth", str(WORLD), "--preset", "demo", "--seed", "0"], env)
    else:
        print(f"reusing {WORLD}")
    timings["world"] = time.perf_counter() - t

    t = _step("synthetic-domain teacher (prvr synth-teacher)")
    if not (WORLD / "teacher" / "prvr-synth.pt").exists():
        # 150 steps keep the demo within minutes; the teacher is weaker than at the default 400.
        _call([str(BIN / "prvr"), "synth-teacher", str(WORLD), "--seed", "0", "--steps", str(DEMO_TEACHER_STEPS)], env)
    else:
        print("reusing the trained teacher")
    timings["teacher"] = time.perf_counter() - t

    t = _step("student's motion-aware input (prvr synth-backbone, its own pretraining world)")
    if not (BACKBONE / "tiny_r2plus1d.pt").exists():
        _call([str(BIN / "prvr"), "synth-backbone", str(BACKBONE), "--seed", "0"], env)
    else:
        print("reusing the trained video backbone")
    timings["backbone"] = time.perf_counter() - t

    t = _step("local Prefect stack (prvr stack up)")
    where = stack.Stack.from_env()
    stack.up(where)
    timings["stack"] = time.perf_counter() - t

    deployment = stack.full_deployment()
    t = _step(f"prefect deployment run {deployment}")
    api_env = {**env, "PREFECT_API_URL": where.api_url}
    _call([str(BIN / "prefect"), "deployment", "run", deployment, "--param", f"config_path={DEMO_CONFIG}",
           "--watch", "--watch-timeout", "1800"], api_env)
    timings["pipeline"] = time.perf_counter() - t

    _step("result")
    _call([str(BIN / "prvr"), "status", str(DEMO_CONFIG)], env)
    from configs.schema import load_config
    from stages.report import markdown_table, metrics_table_rows
    from storage.runs import RunPaths

    cfg = load_config(DEMO_CONFIG)
    paths = RunPaths.of(cfg.runs_dir, cfg.name)
    metrics = json.loads(paths.metrics.read_text())
    print(f"\ntest split of the demo world ({metrics['queries']} queries, {metrics['videos']} videos):\n")
    print(markdown_table(metrics_table_rows(metrics)))
    print(f"report: {paths.report}")
    t = _step("screenshots of the run in the Prefect UI (prvr stack snapshot)")
    shot = subprocess.run([str(BIN / "prvr"), "stack", "snapshot", str(DEMO_CONFIG)], env=env, cwd=PROJECT_ROOT)
    if shot.returncode != 0:  # a missing browser must not fail the demo; the run itself is done
        print("no screenshots (see above); the run is complete and the UI shows it")
    timings["screenshots"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started
    print("\ntimings (s): " + json.dumps({k: round(v, 1) for k, v in timings.items()}))
    print(f"Prefect UI: {where.ui_url}  (the stack stays up; `make down` stops it)")


if __name__ == "__main__":
    main()
