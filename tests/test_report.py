"""Run report: files written, JSON round-trip, markdown tables, valid deterministic PNGs."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest

from stages.report import PLOT_NAMES, markdown_table, metrics_table_rows, write_run_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def sample_metrics() -> dict:
    return {
        "methods": {
            "DL-DKD (fused)": {"R@1": 8.04, "R@5": 25.0, "R@10": 37.46, "R@100": 77.1, "SumR": 147.6},
            "inheritance branch": {"R@1": 7.5, "R@5": 24.0, "R@10": 36.1, "R@100": 76.0, "SumR": 143.6},
            "exploration branch": {"R@1": 6.9, "R@5": 22.1, "R@10": 34.0, "R@100": 74.3, "SumR": 137.3},
            "teacher clip-b32 (zero-shot)": {"R@1": 4.2, "R@5": 13.0, "R@10": 20.1, "R@100": 55.0, "SumR": 92.3},
        },
        "moments": {"IoU@0.3": 40.12, "IoU@0.5": 20.55, "n": 1000},
        "config": "demo",
        "seeds": [0, 1],
        "timings": {"train_s": 123.4, "eval_s": 5.5},
    }


def sample_history(epochs: int = 6) -> list[dict]:
    return [
        {
            "epoch": e,
            "loss": 3.0 * math.exp(-e / 4) + 0.5,
            "loss_triplet": 0.4 * math.exp(-e / 5) + 0.05,
            "loss_infonce": 2.5 * math.exp(-e / 4) + 0.3,
            "loss_distill": 0.02 * math.exp(-e / 3) + 0.001,
            "distill_weight": 0.1 * 0.95**e,
            "val_SumR": [10.0, 60.0, 90.0, 120.5, 118.0, 119.0][e % 6],
            "lr": 2.5e-4,
        }
        for e in range(epochs)
    ]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_real_png(path: Path) -> None:
    import matplotlib.image

    width, height = png_size(path)
    assert width > 300 and height > 200
    assert path.stat().st_size > 5000
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[:2] == (height, width)
    assert float(pixels[..., :3].std()) > 0.01  # something is drawn, not a blank canvas


def test_writes_all_files(tmp_path: Path) -> None:
    paths = write_run_report(tmp_path / "run", sample_metrics(), sample_history(), "Demo run")
    assert set(paths) == {"metrics", "history", "report", *PLOT_NAMES}
    assert paths["metrics"] == tmp_path / "run" / "metrics.json"
    assert paths["report"] == tmp_path / "run" / "report.md"
    for name in PLOT_NAMES:
        assert paths[name] == tmp_path / "run" / "plots" / f"{name}.png"
        assert_real_png(paths[name])
    assert not list((tmp_path / "run").rglob("*.tmp"))


def test_metrics_json_round_trips(tmp_path: Path) -> None:
    metrics = sample_metrics()
    history = sample_history()
    paths = write_run_report(tmp_path, metrics, history, "t")
    assert json.loads(paths["metrics"].read_text()) == metrics
    assert json.loads(paths["history"].read_text()) == history


def test_json_converts_numpy_and_non_finite_values(tmp_path: Path) -> None:
    metrics = sample_metrics()
    metrics["methods"]["DL-DKD (fused)"]["R@1"] = np.float32(8.5)
    metrics["n_queries"] = np.int64(12)
    metrics["ranks_head"] = np.array([1, 2, 3])
    metrics["broken"] = float("nan")
    metrics["where"] = tmp_path
    loaded = json.loads(write_run_report(tmp_path, metrics, [], "t")["metrics"].read_text())
    assert loaded["methods"]["DL-DKD (fused)"]["R@1"] == 8.5
    assert loaded["n_queries"] == 12 and loaded["ranks_head"] == [1, 2, 3]
    assert loaded["broken"] is None
    assert loaded["where"] == str(tmp_path)


def test_report_markdown_has_the_tables(tmp_path: Path) -> None:
    text = write_run_report(tmp_path, sample_metrics(), sample_history(), "Demo run")["report"].read_text()
    assert text.startswith("# Demo run\n")
    assert "| method | R@1 | R@5 | R@10 | R@100 | SumR |" in text
    assert "| DL-DKD (fused) | 8.0 | 25.0 | 37.5 | 77.1 | 147.6 |" in text
    assert "| inheritance branch | 7.5 | 24.0 | 36.1 | 76.0 | 143.6 |" in text
    assert "| exploration branch | 6.9 | 22.1 | 34.0 | 74.3 | 137.3 |" in text
    assert "| teacher clip-b32 (zero-shot) | 4.2 | 13.0 | 20.1 | 55.0 | 92.3 |" in text
    assert "| IoU@0.3 | IoU@0.5 | n |" in text and "| 40.1 | 20.6 | 1000 |" in text
    assert "| config | demo |" in text and '"train_s": 123.4' in text
    assert "| epoch | loss | loss_triplet | loss_infonce | loss_distill | distill_weight | val_SumR | lr |" in text
    assert "| 3 | 1.917 |" in text  # epoch 3: 3 * exp(-3/4) + 0.5
    assert "Best validation SumR 120.5 at epoch 3." in text
    for name in PLOT_NAMES:
        assert f"(plots/{name}.png)" in text


def test_report_without_moments_or_history(tmp_path: Path) -> None:
    metrics = sample_metrics()
    metrics["moments"] = None
    paths = write_run_report(tmp_path, metrics, [], "Eval only")
    text = paths["report"].read_text()
    assert "No moment annotations evaluated." in text
    assert "No training history." in text
    for name in PLOT_NAMES:  # "no data" panels are still valid images
        assert png_size(paths[name])[0] > 0


def test_second_call_overwrites_cleanly(tmp_path: Path) -> None:
    first = write_run_report(tmp_path, sample_metrics(), sample_history(), "first")
    old_png = first["recall"].read_bytes()
    metrics = {"methods": {"only method": {"R@1": 1.0, "R@5": 2.0, "R@10": 3.0, "R@100": 4.0, "SumR": 10.0}}}
    second = write_run_report(tmp_path, metrics, sample_history(2), "second")
    assert second == first
    assert json.loads(second["metrics"].read_text()) == metrics
    assert len(json.loads(second["history"].read_text())) == 2
    text = second["report"].read_text()
    assert text.startswith("# second\n") and "DL-DKD (fused)" not in text
    assert "| only method | 1.0 | 2.0 | 3.0 | 4.0 | 10.0 |" in text
    assert second["recall"].read_bytes() != old_png
    for name in PLOT_NAMES:
        assert_real_png(second[name])
    leftovers = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert leftovers == sorted(["metrics.json", "history.json", "report.md", *(f"{n}.png" for n in PLOT_NAMES)])


def test_same_inputs_give_identical_files(tmp_path: Path) -> None:
    a = write_run_report(tmp_path / "a", sample_metrics(), sample_history(), "same")
    b = write_run_report(tmp_path / "b", sample_metrics(), sample_history(), "same")
    for key in a:
        assert a[key].read_bytes() == b[key].read_bytes(), key
    assert b"tEXt" not in a["losses"].read_bytes() and b"tIME" not in a["losses"].read_bytes()


def test_metrics_table_rows() -> None:
    rows = metrics_table_rows(sample_metrics())
    assert [r["method"] for r in rows] == list(sample_metrics()["methods"])
    assert rows[0] == {"method": "DL-DKD (fused)", "R@1": 8.0, "R@5": 25.0, "R@10": 37.5, "R@100": 77.1, "SumR": 147.6}
    partial = metrics_table_rows({"methods": {"m": {"R@1": 1.26, "R@20": 5.0, "SumR": 6.26}}})
    assert partial == [{"method": "m", "R@1": 1.3, "R@20": 5.0, "SumR": 6.3}]
    assert metrics_table_rows({"methods": {}}) == [] and metrics_table_rows({}) == []


def test_markdown_table() -> None:
    table = markdown_table([{"a": 1, "b": "x|y"}, {"a": 0.123456, "c": None, "b": 2.5e-5}, {"a": 123456.7}])
    assert table.splitlines() == [
        "| a | b | c |",
        "|---|---|---|",
        "| 1 | x\\|y |  |",
        "| 0.1235 | 2.5e-05 |  |",
        "| 123457 |  |  |",
    ]
    assert markdown_table([]) == ""


def test_json_rejects_unknown_objects(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        write_run_report(tmp_path, {"methods": {}, "bad": object()}, [], "t")


def test_report_without_images_names_the_plot_files(tmp_path):
    from stages.report import report_without_images

    text = "## Plots\n\n![losses](plots/losses.png)\n\n![recall](plots/recall.png)\nno image ![x] here\n"
    out = report_without_images(text, tmp_path)
    assert "![" not in out.replace("![x] here", "")
    assert f"plot *losses*: `{tmp_path.resolve() / 'plots' / 'losses.png'}`" in out
    assert "no image ![x] here" in out
