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
