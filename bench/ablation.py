"""Does distillation help? DL-DKD against its ablations on one feature store, over seeds.

Variants (all on the same store and teacher cache, same settings otherwise):
  dl-dkd            both branches, exponentially decaying distillation (the method)
  exploration-only  one branch, no teacher at all
  inheritance-only  one branch, distilled
  constant-weight   both branches, static distillation weight (no decay)
  dl-dkd-pp         dl-dkd plus the soft-target InfoNCE of the journal version (DL-DKD++)
and the teacher alone, zero-shot. Prints test SumR per seed and mean +- std.

Usage: python bench/ablation.py configs/demo.yaml [--seeds 0 1 2] [--set train.epochs=40 ...]
Needs an extracted store (run the pipeline's extract stage first); builds the teacher cache.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs.schema import load_config, parse_override  # noqa: E402
from stages.evaluate import evaluate_run  # noqa: E402
from stages.teacher import build_teacher_cache, teacher_keys  # noqa: E402
from stages.train import train  # noqa: E402

VARIANTS = {
    "dl-dkd": {},
    "exploration-only": {"train.branches": "exploration"},
    "inheritance-only": {"train.branches": "inheritance"},
    "constant-weight": {"train.schedule": "constant"},
    "dl-dkd-pp": {"train.soft_infonce": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default=None, help="write the table as JSON here")
    args = parser.parse_args()

    base = load_config(args.config, args.overrides)
    for key in teacher_keys(base):
        for split in ("train", "val", "test"):
            build_teacher_cache(base, key, split)
    results: dict[str, list[float]] = {v: [] for v in args.variants}
    teacher_sumr: dict[str, float] = {}
    detail = []
    for seed in args.seeds:
        for variant in args.variants:
            overrides = {**{".".join(k): v for k, v in map(parse_override, args.overrides)}, **VARIANTS[variant],
                         "train.seed": seed, "name": f"{base.name}-ablation-{variant}-s{seed}"}
            cfg = load_config(args.config, overrides)
            started = time.perf_counter()
            summary = train(cfg)
            metrics = evaluate_run(cfg)
            methods = metrics["methods"]
            main_method = ("DL-DKD student (fused)" if cfg.train.branches == "both"
                           else f"{cfg.train.branches} branch")
            sumr = methods[main_method]["SumR"]
            results[variant].append(sumr)
            teacher_sumr.update({k: m["SumR"] for k, m in methods.items() if k.startswith("teacher")})
            detail.append({"variant": variant, "seed": seed, "SumR": sumr, "best_epoch": summary["best_epoch"],
                           "epochs": summary["epochs_done"], "seconds": round(time.perf_counter() - started, 1),
                           **({"inheritance": methods["inheritance branch"]["SumR"],
                               "exploration": methods["exploration branch"]["SumR"]}
                              if "inheritance branch" in methods and "exploration branch" in methods else {})})
            print(json.dumps(detail[-1]), flush=True)

    print(f"\ntest SumR on {base.name}, seeds {args.seeds}")
    print(f"{'method':28s} " + " ".join(f"{'s' + str(s):>7s}" for s in args.seeds) + f" {'mean':>7s} {'std':>6s}")
    for name, value in teacher_sumr.items():
        print(f"{name:28s} " + " ".join(f"{value:7.1f}" for _ in args.seeds) + f" {value:7.1f} {0.0:6.1f}")
    for variant, values in results.items():
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        print(f"{variant:28s} " + " ".join(f"{v:7.1f}" for v in values) + f" {statistics.mean(values):7.1f} {std:6.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"teacher": teacher_sumr, "variants": results, "runs": detail}, indent=2))


if __name__ == "__main__":
    main()
