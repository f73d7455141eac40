"""How much does each branch of a trained run rank videos like its teacher? A diagnostic for the
ablation: per test query, Spearman's correlation between a branch's scores over the gallery and
the teacher's zero-shot scores (its cached query x video matrix), averaged over queries, beside
the branch's SumR. A branch that mostly copies its teacher's ranking sits near 1.

Usage: python bench/branch_agreement.py configs/bench.yaml --variants dl-dkd exploration-only --seeds 0 1
Reads the finished runs of bench/ablation.py (their best.pt) and the evaluated split's teacher cache.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from configs.schema import load_config  # noqa: E402


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Spearman correlation of two (Q, V) score matrices (ties broken by position)."""
    ra = a.argsort(1).argsort(1).astype(np.float64)
    rb = b.argsort(1).argsort(1).astype(np.float64)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    return (ra * rb).sum(1) / np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    sys.path.insert(0, str(ROOT / "bench"))
    from ablation import add_run_selection, selected_runs

    add_run_selection(parser)
    args = parser.parse_args()

    from stages.data import load_split
    from stages.evaluate import encode_split
    from stages.sources import stored_teachers
    from stages.trained import load_trained_student
    from storage.features import FeatureStore
    from storage.teacher_cache import TeacherCache

    base = load_config(args.config)
    store = FeatureStore(base.store)
    split = base.evaluate.split
    teacher = stored_teachers(base, store)[0]
    sim, query_ids, video_ids = TeacherCache(store).video_sim(teacher, split)
    row_of = {q: i for i, q in enumerate(query_ids)}
    column_of = {v: i for i, v in enumerate(video_ids)}
    for _, _, cfg in selected_runs(args, base):
        model, branch, _ = load_trained_student(cfg, "best", "cpu", store)
        data = load_split(cfg, split, (), store)
        rows = [row_of[q] for q in data.query_ids]
        cols = [column_of[v] for v in data.video_ids]
        teacher_scores = sim[np.ix_(rows, cols)].astype(np.float32)
        gallery, queries, mask = encode_split(model, data, "cpu", branch)
        result = {"run": cfg.name}
        for b in (["inheritance", "exploration", "fused"] if branch == "fused" else [branch]):
            with torch.inference_mode():
                scores = model.score_encoded(queries, gallery, mask, b).float().numpy()
            result[b] = round(float(spearman_rows(scores, teacher_scores).mean()), 3)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
