"""Would a lower fusion weight make a trained DL-DKD student pay? A diagnostic for the ablation.

The fused score is `w * s_inheritance + (1 - w) * s_exploration` with the paper's w = 0.7. For each
finished run of bench/ablation.py (its best.pt, selected at w = 0.7), scores the validation and the
test split at every w of a grid from the two branches' encoded scores, picks w by validation SumR
(as model selection would), and reports the test figures at that w, at 0.7, and at 0 and 1 (each
branch of the same model alone). The checkpoint itself was selected at 0.7, so a w chosen here
has a small head start it would not have if selection ran at that w from the first epoch.

With --against FILE (an --out file of bench/ablation.py), also the paired difference, over the
seeds both have, of the test SumR at the validation-chosen w minus a variant of that file.

Usage: python bench/fusion_weight.py configs/bench.yaml --seeds 0 1 2 3 4 [--dropout torch]
       [--against bench/results/ablation-bench.json --against-variant exploration-only] [--out F]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from configs.schema import load_config  # noqa: E402

PAPER_WEIGHT = 0.7
GRID = tuple(round(0.1 * i, 1) for i in range(11))


def fused_metrics(inheritance: np.ndarray, exploration: np.ndarray, positive: np.ndarray, misses: int,
                  weights=GRID) -> dict[float, dict[str, float]]:
    """Recall figures of the fused score at each weight of the inheritance branch (pessimistic ties,
    as evaluation counts them)."""
    from stages.metrics import ranks_of_positives, recall_at_k

    return {w: recall_at_k(ranks_of_positives(w * inheritance + (1.0 - w) * exploration, positive,
                                              ties="pessimistic"), misses=misses)
            for w in weights}


def chosen_weight(by_weight: dict[float, dict[str, float]]) -> float:
    """The weight of the highest validation SumR; among equals, the one nearest the paper's."""
    best = max(m["SumR"] for m in by_weight.values())
    return min((w for w, m in by_weight.items() if m["SumR"] == best), key=lambda w: abs(w - PAPER_WEIGHT))


def branch_scores(model, data) -> tuple[np.ndarray, np.ndarray]:
    from stages.evaluate import encode_split

    gallery, queries, mask = encode_split(model, data, "cpu", "fused")
    with torch.inference_mode():
        return tuple(model.score_encoded(queries, gallery, mask, b).float().numpy()
                     for b in ("inheritance", "exploration"))


def main() -> None:
    from ablation import METRICS, add_run_selection, interval_cell, mean_std, paired_interval, selected_runs

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    add_run_selection(parser)
    parser.add_argument("--against", default=None, help="an --out file of bench/ablation.py")
    parser.add_argument("--against-variant", default="exploration-only")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from stages.data import load_split
    from stages.trained import load_trained_student
    from storage.features import FeatureStore

    base = load_config(args.config)
    store = FeatureStore(base.store)
    results = []
    for variant, seed, cfg in selected_runs(args, base):
        model, branch, _ = load_trained_student(cfg, "best", "cpu", store)
        if branch != "fused":
            sys.exit(f"{cfg.name} has one branch: nothing to fuse")
        by_split = {}
        for split in ("val", "test"):
            data = load_split(cfg, split, (), store)
            by_split[split] = fused_metrics(*branch_scores(model, data), data.query_video.numpy(),
                                            len(data.queries_without_video))
        w = chosen_weight(by_split["val"])
        test = by_split["test"]
        result = {"run": cfg.name, "variant": variant, "seed": seed, "chosen_weight": w,
                  "val_SumR": {str(k): round(v["SumR"], 2) for k, v in by_split["val"].items()},
                  "test_SumR": {str(k): round(v["SumR"], 2) for k, v in test.items()},
                  "test_at_chosen": test[w], "test_at_paper": test[PAPER_WEIGHT]}
        results.append(result)
        print(json.dumps(result), flush=True)

    lines = ["| variant | seeds | w chosen on val (per seed) | test SumR at w = 0.7 | at the chosen w | "
             "w = 0 (exploration branch) | w = 1 (inheritance branch) |", "|---|---|---|---|---|---|---|"]
    for variant in args.variants:
        rows = [r for r in results if r["variant"] == variant]
        cell = lambda key: "{:.1f} +- {:.1f}".format(*mean_std([float(r["test_SumR"][key]) for r in rows]))  # noqa: E731
        chosen = "{:.1f} +- {:.1f}".format(*mean_std([r["test_at_chosen"]["SumR"] for r in rows]))
        lines.append(f"| {variant} | {len(rows)} | {' / '.join(str(r['chosen_weight']) for r in rows)} | "
                     f"{cell(str(PAPER_WEIGHT))} | {chosen} | {cell('0.0')} | {cell('1.0')} |")
    if args.against:
        recorded = json.loads(Path(args.against).read_text())["runs"]
        other = {r["seed"]: r for r in recorded if r["variant"] == args.against_variant}
        lines += ["", f"paired, test at the validation-chosen w minus {args.against_variant} ({args.against}):",
                  "| variant | seeds | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
        for variant in args.variants:
            rows = [r for r in results if r["variant"] == variant and r["seed"] in other]
            if not rows:
                continue
            cells = [interval_cell(*paired_interval([r["test_at_chosen"][m] for r in rows],
                                                    [other[r["seed"]][m] for r in rows]), len(rows))
                     for m in METRICS]
            lines.append(f"| {variant} | {len(rows)} | " + " | ".join(cells) + " |")
    print("\n".join(lines), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"config": args.config, "dropout": args.dropout, "against": args.against,
                                              "runs": results, "lines": lines}, indent=2))


if __name__ == "__main__":
    main()
