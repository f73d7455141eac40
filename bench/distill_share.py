"""How much of the training loss is the distillation term, epoch by epoch? A diagnostic for the
ablation's weight schedules: from each finished run's history.json, the batch-mean KL (summed over a
batch's queries, as the method has it), its weight, the weighted term, the rest of the loss (both
branches' triplet and InfoNCE) and the weighted term's share of the whole, averaged over the seeds
of each variant. Reads only the run folders of bench/ablation.py; trains nothing.

Usage: python bench/distill_share.py configs/bench.yaml --variants dl-dkd increasing-weight --seeds 0 1 2
       [--epochs 0 1 2 5 10 20 39] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ablation import add_run_selection, selected_runs  # noqa: E402
from configs.schema import load_config  # noqa: E402
from storage.runs import RunPaths, read_history  # noqa: E402


def epoch_terms(record: dict) -> dict:
    """One history row's loss split into the weighted distillation term and the rest."""
    weighted = record["distill_weight"] * record["loss_distill"]
    return {"kl": record["loss_distill"], "weight": record["distill_weight"], "weighted_kl": weighted,
            "task": record["loss"] - weighted, "share": weighted / record["loss"] if record["loss"] else 0.0}


def variant_rows(histories: list[list[dict]], epochs: list[int]) -> list[dict]:
    """Per asked epoch, each term's mean over the runs that reached it."""
    rows = []
    for e in epochs:
        reached = [epoch_terms(h[e]) for h in histories if e < len(h)]
        if reached:
            rows.append({"epoch": e, "runs": len(reached),
                         **{k: sum(r[k] for r in reached) / len(reached) for k in reached[0]}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    add_run_selection(parser)
    parser.add_argument("--epochs", type=int, nargs="+", default=[0, 1, 2, 5, 10, 20, 30, 39])
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args()

    base = load_config(args.config)
    histories: dict[str, list[list[dict]]] = {}
    for variant, _, cfg in selected_runs(args, base):
        history = read_history(RunPaths.of(cfg.runs_dir, cfg.name))
        if history and "loss_distill" in history[0]:
            histories.setdefault(variant, []).append(history)
    if not histories:
        sys.exit("no finished run with a distillation term among the selected ones")
    table = {v: variant_rows(h, args.epochs) for v, h in histories.items()}
    print("| variant | epoch | runs | KL (sum over queries) | weight | weight x KL | rest of the loss | KL share |")
    print("|---|---|---|---|---|---|---|---|")
    for variant, rows in table.items():
        for r in rows:
            print(f"| {variant} | {r['epoch']} | {r['runs']} | {r['kl']:.1f} | {r['weight']:.3f} | "
                  f"{r['weighted_kl']:.2f} | {r['task']:.2f} | {r['share']:.0%} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"config": args.config, "seeds": args.seeds, "table": table}, indent=1))


if __name__ == "__main__":
    main()
