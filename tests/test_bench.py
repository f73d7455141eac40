"""The benchmark scripts' pieces still run (their figures are printed by the scripts, never asserted)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_student_step_runs_the_training_step_on_cpu():
    gpu_check = load("gpu_check")
    assert gpu_check.measure_train_step("cpu", batch_videos=4, frames=8, dim=16, steps=1) > 0


def test_release_import_bench_writes_a_release_the_importer_accepts(tmp_path):
    from stages import release as rel

    bench = load("release_import")
    bench.write_release(tmp_path, videos=6, frames=6)
    plan = rel.open_release(rel.ImportSettings(root=tmp_path / "tvr", collection="tvr", feature="i3d_resnet"))
    assert plan.has_teacher and sum(len(s.videos) for s in plan.shards) == 6


def test_ablation_paired_interval_is_a_t_interval_over_seeds():
    ablation = load("ablation")
    mean, lo, hi = ablation.paired_interval([3.0, 5.0, 7.0], [1.0, 1.0, 1.0])  # diffs 2, 4, 6: sd 2
    assert mean == 4.0
    assert abs((hi - mean) - 4.303 * 2 / 3 ** 0.5) < 1e-9 and abs((mean - lo) - (hi - mean)) < 1e-9
    assert ablation.t_quantile(100) == 1.96
    table = ablation.summarise([
        {"variant": "dl-dkd", "seed": s, **{m: float(s) for m in ablation.METRICS},
         "teachers": {"teacher t": {m: 0.5 for m in ablation.METRICS}}} for s in (0, 1)], [0, 1])
    assert table["dl-dkd"]["SumR"] == [0.0, 1.0] and table[ablation.TEACHER]["SumR"] == [0.5, 0.5]

    # Variants finished on different seeds: each difference pairs only the seeds both sides have.
    runs = [{"variant": "dl-dkd", "seed": s, **{m: 10.0 + s for m in ablation.METRICS}, "teachers": {}}
            for s in (0, 1, 2)]
    runs += [{"variant": "exploration-only", "seed": s, **{m: 20.0 + 2 * s for m in ablation.METRICS}}
             for s in (2, 0)]
    table = ablation.summarise(runs, [0, 1, 2])
    assert table["exploration-only"]["seeds"] == [0, 2] and table["exploration-only"]["SumR"] == [20.0, 24.0]
    assert ablation.paired_values(table, "dl-dkd", "exploration-only", "SumR") == ([10.0, 12.0], [20.0, 24.0])
    lines = ablation.print_tables(table, [0, 1, 2], "t")
    assert "| exploration-only | 20.0 | - | 24.0 |" in lines
    row = next(line for line in lines if line.startswith("| dl-dkd - exploration-only |"))
    assert row.startswith("| dl-dkd - exploration-only | 2 | -11.0 [")  # diffs -10 and -12


def test_ablation_adds_earlier_runs_of_the_same_sampler_only(tmp_path):
    import json

    import pytest

    ablation = load("ablation")
    record = lambda variant, seed, sumr: {"variant": variant, "seed": seed, "SumR": sumr}  # noqa: E731
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({"dropout": "torch", "runs": [record("dl-dkd", 0, 1.0), record("dl-dkd", 1, 2.0)]}))
    # A run of this call replaces the recorded one of the same variant and seed.
    got = ablation.earlier_runs([str(earlier)], [record("dl-dkd", 1, 9.0)], "torch")
    assert got == [record("dl-dkd", 0, 1.0)]
    with pytest.raises(SystemExit, match="--dropout torch"):
        ablation.earlier_runs([str(earlier)], [], "lanes")
    unmarked = tmp_path / "unmarked.json"
    unmarked.write_text(json.dumps({"runs": [record("dl-dkd", 0, 1.0)]}))
    for sampler in ("lanes", "torch"):
        with pytest.raises(SystemExit, match="records no dropout sampler"):
            ablation.earlier_runs([str(unmarked)], [], sampler)

    class Named:
        name = "bench"

    assert ablation.runs_base_name(Named, "lanes") == "bench"
    assert ablation.runs_base_name(Named, "torch") == "bench-torchdrop"


def test_branch_agreement_is_spearman_per_query():
    import numpy as np

    def ranks(row):  # no ties in random normals
        order = sorted(range(len(row)), key=lambda i: row[i])
        return [order.index(i) for i in range(len(row))]

    agreement = load("branch_agreement")
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 9)), rng.normal(size=(5, 9))
    got = agreement.spearman_rows(a, b)
    assert np.allclose(got, [np.corrcoef(ranks(x), ranks(y))[0, 1] for x, y in zip(a, b)])
    assert np.allclose(agreement.spearman_rows(a, 2 * a + 1), 1.0) and np.allclose(agreement.spearman_rows(a, -a), -1.0)


def test_fusion_weight_sweeps_the_fused_score_and_chooses_on_validation():
    import numpy as np

    fusion = load("fusion_weight")
    # Two queries over three videos; positives 0 and 1. The inheritance branch ranks query 0 right,
    # the exploration branch query 1.
    inheritance = np.array([[0.9, 0.1, 0.0], [0.9, 0.2, 0.0]])
    exploration = np.array([[0.1, 0.5, 0.0], [0.0, 0.8, 0.0]])
    got = fusion.fused_metrics(inheritance, exploration, np.array([0, 1]), misses=0, weights=(0.0, 0.5, 1.0))
    assert got[1.0]["R@1"] == 50.0 and got[0.0]["R@1"] == 50.0  # each branch alone finds one
    assert got[0.5]["R@1"] == 100.0  # 0.5 / 0.3 and 0.45 / 0.5: both first
    assert fusion.chosen_weight(got) == 0.5
    # Among equal validation figures the paper's weight is kept.
    assert fusion.chosen_weight({0.0: {"SumR": 1.0}, 0.7: {"SumR": 1.0}, 1.0: {"SumR": 0.5}}) == 0.7


def test_distill_share_splits_the_loss_and_averages_the_runs_that_reached_an_epoch():
    share = load("distill_share")
    row = {"distill_weight": 0.1, "loss_distill": 30.0, "loss": 5.0}  # weighted 3.0 of a loss of 5.0
    terms = share.epoch_terms(row)
    assert abs(terms["weighted_kl"] - 3.0) < 1e-12 and abs(terms["task"] - 2.0) < 1e-12
    assert abs(terms["share"] - 0.6) < 1e-12
    short = [row]
    long = [row, {"distill_weight": 0.0, "loss_distill": 50.0, "loss": 2.0}]
    rows = share.variant_rows([short, long], [0, 1, 5])
    assert [(r["epoch"], r["runs"]) for r in rows] == [(0, 2), (1, 1)]
    assert rows[1]["share"] == 0.0 and rows[1]["task"] == 2.0 and rows[1]["kl"] == 50.0
