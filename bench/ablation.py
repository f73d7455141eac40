"""Does distillation help, and which part? DL-DKD against its ablations on one feature store, over seeds.

Variants (same store, teacher cache and settings otherwise; each seed trains every variant):
  dl-dkd              both branches, exponentially decaying distillation weight (the method)
  exploration-only    one branch, no teacher at all
  inheritance-only    one branch, distilled
  constant-weight     both branches, static distillation weight (no decay)
  increasing-weight   both branches, weight rising as 1 - w(e) (the paper's own ablation)
  dl-dkd-pp           dl-dkd plus the soft-target InfoNCE of the journal version (DL-DKD++)
  bertadam            dl-dkd trained with the reference code's BertAdam
  clip-input          dl-dkd with the teacher's own frame embedding as the only student input
  frame-diff-input    dl-dkd with [clip, frame_diff]: a parameter-free motion descriptor instead
                      of the learned video network (needs frame_diff in extract.visual)
  motion-input        dl-dkd whose student reads the video network's feature alone, without the
                      teacher's frame embedding (as the papers' I3D student does not read CLIP)
  exploration-motion-input  exploration-only with that input: what motion-input is paired with
and the teacher alone, zero-shot (deterministic: the same on every seed).

Prints, per variant, mean +- std over seeds of R@1, R@5, R@10, R@100 and SumR, and paired
differences (same seed) with 95% t-intervals for the comparisons the method's claims rest on.
With --out, writes every run (metrics, best epoch, the distillation weight at the best epoch) as
JSON and a plot of the best epoch against the decaying weight beside it.

Usage: python bench/ablation.py configs/bench.yaml --seeds 0 1 2 3 4 [--variants ...] [--set k=v ...]
Needs an extracted store (run the pipeline's extract stage first); builds the teacher cache.
Runs are named <config name>-ablation-<variant>-s<seed>: a rerun resumes or reuses finished runs.
--dropout torch trains with PyTorch's Bernoulli dropout instead of the CPU lane masks (runs named
<config name>-torchdrop-ablation-...), to pair with runs measured before the lanes existed.
--also FILE adds the runs recorded in an earlier --out file (a run of this call replaces the
recorded one of the same variant and seed).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from configs.schema import load_config, parse_override  # noqa: E402

METRICS = ("R@1", "R@5", "R@10", "R@100", "SumR")
TEACHER = "teacher alone"
VARIANTS: dict[str, dict] = {
    "dl-dkd": {},
    "exploration-only": {"train.branches": "exploration"},
    "inheritance-only": {"train.branches": "inheritance"},
    "constant-weight": {"train.schedule": "constant"},
    "increasing-weight": {"train.increasing": True},
    "dl-dkd-pp": {"train.soft_infonce": True},
    "bertadam": {"train.optimizer": "bertadam"},
    "clip-input": {"train.visual": ["clip"]},
    "frame-diff-input": {"train.visual": ["clip", "frame_diff"]},
    "motion-input": {"train.visual": ["tiny_r2plus1d"]},
    "exploration-motion-input": {"train.visual": ["tiny_r2plus1d"], "train.branches": "exploration"},
}
DEFAULT_VARIANTS = ["dl-dkd", "exploration-only", "inheritance-only", "constant-weight", "increasing-weight",
                    "dl-dkd-pp"]
# (a, b): the paired difference a - b, per seed.
COMPARISONS = [
    ("dl-dkd", TEACHER), ("dl-dkd", "exploration-only"), ("dl-dkd", "inheritance-only"),
    ("dl-dkd", "constant-weight"), ("dl-dkd", "increasing-weight"), ("dl-dkd-pp", "dl-dkd"),
    ("bertadam", "dl-dkd"), ("dl-dkd", "clip-input"), ("dl-dkd", "frame-diff-input"),
    ("motion-input", TEACHER), ("motion-input", "exploration-motion-input"), ("dl-dkd", "motion-input"),
]
# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_quantile(df: int) -> float:
    return _T975[df - 1] if df <= len(_T975) else 1.96


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired_interval(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean of a - b over paired seeds and its 95% t-interval (lo, hi); a single pair has no interval."""
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    mean, std = mean_std(diffs)
    if len(diffs) < 2:
        return mean, math.nan, math.nan
    half = t_quantile(len(diffs) - 1) * std / math.sqrt(len(diffs))
    return mean, mean - half, mean + half


def main_method(cfg) -> str:
    return "DL-DKD student (fused)" if cfg.train.branches == "both" else f"{cfg.train.branches} branch"


DROPOUTS = ("lanes", "torch")


def runs_base_name(cfg, dropout: str) -> str:
    """Runs of one dropout sampler never resume or stand in for the other's."""
    return cfg.name if dropout == "lanes" else f"{cfg.name}-torchdrop"


def use_dropout(dropout: str) -> None:
    from models.dropout import Dropout

    Dropout.lanes = dropout == "lanes"


def add_run_selection(parser) -> None:
    """--variants, --seeds and --dropout: which finished runs of this script a diagnostic reads."""
    parser.add_argument("--variants", nargs="+", default=["dl-dkd"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--dropout", choices=DROPOUTS, default="lanes",
                        help="which runs: those of bench/ablation.py --dropout lanes or torch")


def selected_runs(args, base) -> list[tuple[str, int, object]]:
    """(variant, seed, run config) of every run that add_run_selection's arguments name."""
    return [(v, s, variant_config(args.config, {}, v, s, runs_base_name(base, args.dropout)))
            for v in args.variants for s in args.seeds]


def interval_cell(mean: float, lo: float, hi: float, n: int) -> str:
    return f"{mean:+.1f} [{lo:+.1f}, {hi:+.1f}]" if n > 1 else f"{mean:+.1f} (one seed, no interval)"


def variant_config(config: str, base_overrides: dict, variant: str, seed: int, base_name: str):
    return load_config(config, {**base_overrides, **VARIANTS[variant], "train.seed": seed,
                                "name": f"{base_name}-ablation-{variant}-s{seed}"})


def run_variant(config: str, base_overrides: dict, variant: str, seed: int, base_name: str) -> dict:
    from stages.evaluate import evaluate_run
    from stages.train import train

    cfg = variant_config(config, base_overrides, variant, seed, base_name)
    started = time.perf_counter()
    summary = train(cfg)
    metrics = evaluate_run(cfg)
    return make_record(cfg, variant, seed, metrics["methods"], summary["best_epoch"], summary["epochs_done"],
                       time.perf_counter() - started)


def recorded_run(config: str, base_overrides: dict, variant: str, seed: int, base_name: str) -> dict | None:
    """A finished run's record from its run folder (metrics.json, history.json), without training or
    evaluating again; None when the run has no metrics yet."""
    from storage.runs import RunPaths, read_history

    cfg = variant_config(config, base_overrides, variant, seed, base_name)
    paths = RunPaths.of(cfg.runs_dir, cfg.name)
    epochs = read_history(paths)
    if not paths.metrics.is_file() or epochs is None:
        return None
    metrics = json.loads(paths.metrics.read_text())
    seconds = sum(r.get("seconds", 0.0) for r in epochs)
    return make_record(cfg, variant, seed, metrics["methods"], metrics["best_epoch"], len(epochs), seconds)


def make_record(cfg, variant: str, seed: int, methods: dict, best: int, epochs: int, seconds: float) -> dict:
    from models.schedules import distillation_weight

    t = cfg.train
    weight = (distillation_weight(t.schedule, best, total_epochs=t.epochs, base=t.schedule_base, increasing=t.increasing)
              if t.branches != "exploration" else 0.0)
    record = {"variant": variant, "seed": seed, **{m: methods[main_method(cfg)][m] for m in METRICS},
              "best_epoch": best, "epochs": epochs, "weight_at_best": weight, "seconds": round(seconds, 1),
              "teachers": {k: {m: v[m] for m in METRICS} for k, v in methods.items() if k.startswith("teacher")}}
    if "inheritance branch" in methods and "exploration branch" in methods:
        record["branches"] = {b: methods[f"{b} branch"]["SumR"] for b in ("inheritance", "exploration")}
    return record


def summarise(runs: list[dict], seeds: list[int]) -> dict:
    """{variant: {"seeds": [...], metric: [value per seed]}}, seeds ascending; the teacher alone (the
    same on every seed) from the runs' zero-shot rows, on every seed of `seeds` that has a run."""
    table: dict[str, dict[str, list]] = {}
    for r in sorted(runs, key=lambda r: r["seed"]):
        row = table.setdefault(r["variant"], {"seeds": [], **{m: [] for m in METRICS}})
        row["seeds"].append(r["seed"])
        for m in METRICS:
            row[m].append(r[m])
    zero_shot = {r["seed"]: next(iter(r["teachers"].values())) for r in runs if r.get("teachers")}
    teacher_seeds = [s for s in seeds if s in zero_shot]
    if teacher_seeds:
        table[TEACHER] = {"seeds": teacher_seeds, **{m: [zero_shot[s][m] for s in teacher_seeds] for m in METRICS}}
    return table


def paired_values(table: dict, a: str, b: str, metric: str) -> tuple[list[float], list[float]]:
    """Values of a and b on the seeds both have, in seed order."""
    common = sorted(set(table[a]["seeds"]) & set(table[b]["seeds"]))
    pick = lambda name: [table[name][metric][table[name]["seeds"].index(s)] for s in common]  # noqa: E731
    return pick(a), pick(b)


def print_tables(table: dict, seeds: list[int], title: str) -> list[str]:
    lines = [f"test metrics on {title}, seeds {seeds} (mean +- std over each variant's seeds)", "",
             "| method | seeds | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for name, values in table.items():
        cells = []
        for m in METRICS:
            mean, std = mean_std(values[m])
            cells.append(f"{mean:.1f} +- {std:.1f}")
        lines.append(f"| {name} | {len(values['seeds'])} | " + " | ".join(cells) + " |")
    lines += ["", "per seed, SumR:", "| method | " + " | ".join(f"s{s}" for s in seeds) + " |",
              "|---|" + "---|" * len(seeds)]
    for name, values in table.items():
        by_seed = dict(zip(values["seeds"], values["SumR"]))
        lines.append(f"| {name} | " + " | ".join(f"{by_seed[s]:.1f}" if s in by_seed else "-" for s in seeds) + " |")
    lines += ["", "paired differences (same seed, over the seeds both have), mean [95% t-interval]:",
              "| a - b | seeds | " + " | ".join(METRICS) + " |", "|---|---|" + "---|" * len(METRICS)]
    for a, b in COMPARISONS:
        if a not in table or b not in table:
            continue
        n = len(paired_values(table, a, b, "SumR")[0])
        if not n:
            continue
        cells = []
        for m in METRICS:
            cells.append(interval_cell(*paired_interval(*paired_values(table, a, b, m)), n))
        lines.append(f"| {a} - {b} | {n} | " + " | ".join(cells) + " |")
    print("\n".join(lines), flush=True)
    return lines


def plot_best_epochs(runs: list[dict], cfg, out: Path) -> None:
    """The decaying weight over epochs, with each run's best (selected) epoch marked on it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from models.schedules import distillation_weight

    t = cfg.train
    epochs = list(range(t.epochs))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for increasing, style in ((False, "-"), (True, "--")):
        ax.plot(epochs, [distillation_weight(t.schedule, e, total_epochs=t.epochs, base=t.schedule_base,
                                             increasing=increasing) for e in epochs], style, color="grey",
                label=f"{'increasing' if increasing else 'decaying'} weight ({t.schedule})")
    for variant, marker in (("dl-dkd", "o"), ("increasing-weight", "x"), ("constant-weight", "s")):
        pts = [(r["best_epoch"], r["weight_at_best"]) for r in runs if r["variant"] == variant]
        if pts:
            ax.scatter(*zip(*pts), marker=marker, label=f"best epoch, {variant}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("distillation weight")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def earlier_runs(files: list[str], runs: list[dict], dropout: str) -> list[dict]:
    """The runs recorded in earlier --out files, less those of a variant and seed that `runs` has.
    A file that names another dropout sampler, or none, is refused: its runs would not pair with these
    (files written before the sampler was recorded hold either)."""
    have = {(r["variant"], r["seed"]) for r in runs}
    found: dict[tuple[str, int], dict] = {}
    for name in files:
        recorded = json.loads(Path(name).read_text())
        if "dropout" not in recorded:
            sys.exit(f"{name} records no dropout sampler: add \"dropout\": \"lanes\" or \"torch\" if you know it")
        if recorded["dropout"] != dropout:
            sys.exit(f"{name} was measured with --dropout {recorded['dropout']}, not {dropout}")
        for r in recorded["runs"]:
            found[(r["variant"], r["seed"])] = r
    return [r for key, r in found.items() if key not in have]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", default=None, help="write every run and the tables as JSON here (and a plot)")
    parser.add_argument("--dropout", choices=DROPOUTS, default="lanes",
                        help="the CPU dropout sampler: lanes (prvr's default) or torch (Bernoulli)")
    parser.add_argument("--also", action="append", default=[], metavar="FILE",
                        help="also tabulate the runs recorded in this earlier --out file")
    parser.add_argument("--from-runs", action="store_true", help="only tabulate the runs already finished "
                        "(their metrics.json), training and evaluating nothing; a variant may have fewer seeds, "
                        "and each difference is paired over the seeds both sides have")
    args = parser.parse_args()

    from stages.teacher import build_teacher_cache, teacher_keys

    base = load_config(args.config, args.overrides)
    base_overrides = {".".join(k): v for k, v in map(parse_override, args.overrides)}
    base_name = runs_base_name(base, args.dropout)
    use_dropout(args.dropout)
    runs = []
    if args.from_runs:
        found = {(v, s): recorded_run(args.config, base_overrides, v, s, base_name)
                 for s in args.seeds for v in args.variants}
        runs = [r for r in found.values() if r]
        args.seeds = sorted({r["seed"] for r in runs})
        for v in args.variants:
            print(f"{v}: finished runs for seeds {[s for s in args.seeds if found[(v, s)]]}", flush=True)
    else:
        for key in teacher_keys(base):
            for split in ("train", "val", "test"):
                build_teacher_cache(base, key, split)
        for seed in args.seeds:
            for variant in args.variants:
                runs.append(run_variant(args.config, base_overrides, variant, seed, base_name))
                print(json.dumps(runs[-1]), flush=True)
    runs = earlier_runs(args.also, runs, args.dropout) + runs
    if not runs:
        sys.exit("no finished run of these variants and seeds")
    args.seeds = sorted({r["seed"] for r in runs})
    table = summarise(runs, args.seeds)
    lines = print_tables(table, args.seeds, base.name)
    if args.out:
        out = Path(args.out)
        out.write_text(json.dumps({"config": args.config, "overrides": args.overrides, "dropout": args.dropout,
                                   "also": args.also, "seeds": args.seeds,
                                   "table": table, "runs": runs, "lines": lines}, indent=2))
        plot_best_epochs(runs, base, out.with_suffix(".png"))


if __name__ == "__main__":
    main()
