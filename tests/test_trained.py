"""A trained run as evaluation and search meet it, on real extracted stores and real checkpoints:
queries of failed videos, a model trained on another store, corrupt checkpoints and pruning."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from configs.schema import load_config
from stages import train as tr
from stages.data import load_split
from stages.evaluate import evaluate_run
from stages.metrics import ranks_of_positives
from stages.search import search
from stages.teacher import build_teacher_cache
from stages.trained import load_trained_student
from storage.checkpoints import (
    CheckpointError, best_checkpoint, epoch_checkpoint, epoch_checkpoints, load_checkpoint, newest_loadable,
    prune_epoch_checkpoints,
)
from storage.runs import RunPaths
from tests.store_fixtures import TEACHER_KEY, build_store, config
from tests.test_extract import run_all_shards, write_dataset

TRAIN = {"epochs": 3, "batch_videos": 4, "hidden": 32, "heads": 4, "device": "cpu", "lr": 1e-3, "seed": 0}


def write_run_config(folder: Path, dataset: Path, name: str = "run", fps: float = 1.0, **train) -> Path:
    body = {
        "name": name, "dataset": {"root": str(dataset)}, "store": str(folder / "s.zarr"),
        "runs_dir": str(folder / "runs"),
        "extract": {"shard_size": 3, "fps": fps, "max_frames": 128, "device": "cpu", "batch_size": 4,
                    "decode_workers": 1, "decode_timeout_s": 60, "shard_retries": 0,
                    "teacher": {"model": "prvr-tiny", "pretrained": None}, "visual": ["clip"]},
        "train": {**TRAIN, **train},
    }
    path = folder / f"{name}-fps{fps}.yaml"
    path.write_text(json.dumps(body))
    return path


def teacher_caches(cfg) -> None:
    for split in ("train", "test"):
        build_teacher_cache(cfg, cfg.extract.teacher[0].key, split)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> tuple[Path, Path]:
    """(folder with s.zarr and runs/run, dataset): 5 good videos (3 train, 2 test) and 3 broken test
    videos, extracted for real (the broken ones fail and are recorded), then trained for 3 epochs."""
    folder = tmp_path_factory.mktemp("trained")
    dataset = write_dataset(folder / "ds", broken=True)
    cfg = load_config(write_run_config(folder, dataset))
    results = run_all_shards(cfg)
    assert {v for r in results for v in r.failed} == {"bad_empty", "bad_trunc", "bad_text"}
    teacher_caches(cfg)
    tr.train(cfg)
    return folder, dataset


def copy_of(extracted, tmp_path: Path) -> Path:
    """A private copy of the fixture's store and run, for tests that change them."""
    folder, _ = extracted
    shutil.copytree(folder / "s.zarr", tmp_path / "s.zarr")
    shutil.copytree(folder / "runs", tmp_path / "runs")
    return tmp_path


def test_training_without_a_val_split_selects_on_the_training_loss(extracted):
    """The fixture has no val split: the best epoch is the one of the lowest loss, also when every
    loss is above 1 (the best metric started at -1, so no epoch counted and training failed)."""
    folder, _ = extracted
    _, state = newest_loadable(RunPaths.of(folder / "runs", "run"))
    history = state["history"]
    assert all(r["val_SumR"] == -r["loss"] for r in history)
    assert state["best"]["epoch"] == int(np.argmax([r["val_SumR"] for r in history]))
    assert load_checkpoint(best_checkpoint(RunPaths.of(folder / "runs", "run")))["epoch"] == state["best"]["epoch"]


# ---- item 2: queries whose video failed extraction ---------------------------------------
def test_queries_of_failed_videos_count_as_misses(extracted, tmp_path, caplog):
    folder, dataset = extracted
    cfg = load_config(write_run_config(copy_of(extracted, tmp_path), dataset))
    with caplog.at_level(logging.WARNING, logger="prvr.data"):
        summary = evaluate_run(cfg)
    assert "split test: 3 of 5 queries have no video in the store" in caplog.text
    assert (summary["queries"], summary["queries_without_video"], summary["videos"]) == (5, 3, 2)

    # The student's figures: the 2 ranked queries' hits over all 5 queries; a miss is found at no K,
    # not even at R@100 over a gallery of 2.
    model, branch, _ = load_trained_student(cfg)
    data = load_split(cfg, "test")
    assert sorted(data.queries_without_video) == ["q-bad_empty", "q-bad_text", "q-bad_trunc"]
    with torch.inference_mode():
        scores = model.scores(data.video.float(), data.video_mask, data.tokens.float(), data.token_mask, branch)
    ranks = ranks_of_positives(scores, data.query_video.numpy(), ties="pessimistic")
    fused = summary["methods"]["DL-DKD student (fused)"]
    for k in (1, 5, 10, 100):
        assert fused[f"R@{k}"] == pytest.approx(100.0 * (ranks <= k).sum() / 5)
    assert all(m["R@100"] == pytest.approx(40.0) for m in summary["methods"].values())  # teacher too

    run_dir = tmp_path / "runs" / "run"
    stored = json.loads((run_dir / "metrics.json").read_text())
    assert (stored["queries"], stored["queries_without_video"]) == (5, 3)
    assert "| queries | 5 (3 whose video is missing from the store, counted as misses) |" in \
        (run_dir / "report.md").read_text()


# ---- item 3: a model trained on another store, or with other settings --------------------
def test_evaluation_and_search_refuse_a_model_of_another_store(extracted, tmp_path):
    _, dataset = extracted
    here = copy_of(extracted, tmp_path)
    evaluate_run(load_config(write_run_config(here, dataset)))
    metrics_before = (here / "runs" / "run" / "metrics.json").read_bytes()

    faster_path = write_run_config(here, dataset, fps=2.0)  # re-extract with another fps, skip training
    faster = load_config(faster_path)
    run_all_shards(faster)
    with pytest.raises(CheckpointError) as refused:
        evaluate_run(faster)
    message = str(refused.value)
    assert "best.pt was trained on other inputs" in message
    assert "store commits changed since training (re-extracted or re-imported): shard-00000, shard-00001, " \
           "shard-00002" in message
    assert "prvr run CONFIG --stages teacher --stages train --stages evaluate --set train.resume=false" in message
    assert (here / "runs" / "run" / "metrics.json").read_bytes() == metrics_before  # not overwritten
    with pytest.raises(CheckpointError, match="store commits changed since training"):
        search(faster, "a pattern in video v3")
    from prvr.cli import app

    out = CliRunner().invoke(app, ["search", str(faster_path), "a pattern in video v3"])
    assert out.exit_code == 2 and "store commits changed since training" in out.output
    assert out.exception is None or isinstance(out.exception, SystemExit)

    # Training refused this state already; now it names the commits too.
    with pytest.raises(CheckpointError, match="incompatible config .*store commits changed since training"):
        tr.train(faster)
    # The command the message gives (here as its stages) makes evaluation work again.
    teacher_caches(faster)
    tr.train(load_config(write_run_config(here, dataset, fps=2.0, resume=False)))
    assert evaluate_run(faster)["queries"] == 5


def test_evaluation_refuses_other_train_settings_naming_the_keys(extracted, tmp_path):
    _, dataset = extracted
    here = copy_of(extracted, tmp_path)
    other = load_config(write_run_config(here, dataset, lr=5e-4))
    with pytest.raises(CheckpointError, match=r"train config keys changed: lr \(trained with 0\.001, now 0\.0005\)"):
        evaluate_run(other)
    # Settings that do not change the model may differ.
    assert evaluate_run(load_config(write_run_config(here, dataset, amp=False)))["queries"] == 5


# ---- item 5: a corrupt best.pt ----------------------------------------------------------------
def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def test_corrupt_best_is_rebuilt_from_the_best_epoch(extracted, tmp_path, caplog):
    _, dataset = extracted
    here = copy_of(extracted, tmp_path)
    cfg = load_config(write_run_config(here, dataset))
    expected = evaluate_run(cfg)["methods"]
    best = best_checkpoint(RunPaths.of(cfg.runs_dir, cfg.name))
    original = load_checkpoint(best)
    truncate(best)
    with caplog.at_level(logging.WARNING, logger="prvr.trained"):
        summary = evaluate_run(cfg)
    assert f"{best} is corrupt" in caplog.text
    assert f"rebuilt it from epoch-{original['epoch'] + 1:04d}.pt (best epoch {original['epoch']})" in caplog.text
    assert summary["methods"] == expected and summary["best_epoch"] == original["epoch"]
    rebuilt = load_checkpoint(best)  # written back: the next command loads it directly
    assert set(rebuilt) == set(original)
    assert all(torch.equal(rebuilt["model"][k], original["model"][k]) for k in original["model"])
    assert {k: v for k, v in rebuilt.items() if k != "model"} == {k: v for k, v in original.items() if k != "model"}


@pytest.fixture(scope="module")
def early_best(tmp_path_factory) -> Path:
    """A run on the small fixture store whose best epoch (0) is older than its last two epochs."""
    root = build_store(tmp_path_factory.mktemp("early"))
    cfg = config(root, "early", epochs=5)
    for split in ("train", "val", "test"):
        build_teacher_cache(cfg, TEACHER_KEY, split)
    summary = tr.train(cfg)
    assert summary["best_epoch"] < 5 - 2  # what these tests need of this (deterministic) run
    return root


def test_the_best_epochs_checkpoint_is_kept_from_pruning(early_best):
    cfg = config(early_best, "early", epochs=5)
    paths = RunPaths.of(cfg.runs_dir, cfg.name)
    best_epoch = load_checkpoint(best_checkpoint(paths))["epoch"]
    assert [e for e, _ in epoch_checkpoints(paths)] == [best_epoch + 1, 4, 5]


def test_corrupt_best_without_its_epoch_checkpoint_says_what_to_run(early_best, tmp_path):
    shutil.copytree(early_best / "runs", tmp_path / "runs")
    shutil.copytree(early_best / "features.zarr", tmp_path / "features.zarr")
    (tmp_path / "data").mkdir()
    cfg = config(tmp_path, "early", epochs=5)
    paths = RunPaths.of(cfg.runs_dir, cfg.name)
    best_epoch = load_checkpoint(best_checkpoint(paths))["epoch"]
    truncate(best_checkpoint(paths))
    epoch_checkpoint(paths, best_epoch + 1).unlink()  # as a pruning before this fix left it
    with pytest.raises(CheckpointError) as refused:
        load_trained_student(cfg)
    message = str(refused.value)
    assert f"{best_checkpoint(paths)} is corrupt" in message
    assert f"the checkpoint of its best epoch {best_epoch}, epoch-{best_epoch + 1:04d}.pt, is gone" in message
    assert "Retrain: prvr run CONFIG --stages teacher --stages train --stages evaluate --set train.resume=false" \
        in message and "--set evaluate.checkpoint=last" in message
    # and the way out it names works
    model, _, state = load_trained_student(config(tmp_path, "early", epochs=5), "last")
    assert state["epoch"] == 5


# ---- item 4: pruning never keeps corrupt files over valid ones --------------------------------
def test_corrupt_higher_checkpoints_do_not_push_out_valid_ones(tmp_path):
    root = build_store(tmp_path)
    for split in ("train", "val", "test"):
        build_teacher_cache(config(root, "p"), TEACHER_KEY, split)
    tr.train(config(root, "p", epochs=4), stop_after_epochs=2)  # like a stop after epoch 2
    paths = RunPaths.of(root / "runs", "p")
    real = epoch_checkpoint(paths, 2).read_bytes()
    for epoch in (30, 31):  # left behind torn, e.g. by a disk that filled up
        epoch_checkpoint(paths, epoch).write_bytes(real[: len(real) // 2])
    resumed = tr.train(config(root, "p", epochs=4))  # resumes from epoch 2, past the torn files
    assert resumed["epochs_done"] == 4
    assert not epoch_checkpoint(paths, 30).exists() and not epoch_checkpoint(paths, 31).exists()
    path, state = newest_loadable(paths)
    assert path.name == "epoch-0004.pt" and state["epoch"] == 4
    # A restart finds the finished training, not an empty folder: no epoch runs again.
    epochs_run = []
    tr.train(config(root, "p", epochs=4), on_epoch=epochs_run.append)
    assert epochs_run == []


def test_pruning_by_validity_and_recency_on_real_checkpoints(tmp_path):
    root = build_store(tmp_path)
    for split in ("train", "val", "test"):
        build_teacher_cache(config(root, "q"), TEACHER_KEY, split)
    tr.train(config(root, "q", epochs=1))
    paths = RunPaths.of(root / "runs", "q")
    real = epoch_checkpoint(paths, 1).read_bytes()
    fingerprint = load_checkpoint(epoch_checkpoint(paths, 1))["config_fingerprint"]
    for epoch in (2, 3, 4, 6):
        epoch_checkpoint(paths, epoch).write_bytes(real)
    epoch_checkpoint(paths, 5).write_bytes(real[:100])  # torn, between good ones
    other = load_checkpoint(epoch_checkpoint(paths, 1))
    torch.save({**other, "config_fingerprint": "another-training"}, epoch_checkpoint(paths, 7))
    prune_epoch_checkpoints(paths, keep=2, protect=2, fingerprint=fingerprint)
    # newest two that load and belong to this training (6, 4), the protected one (2); 5 torn, 7 foreign
    assert [e for e, _ in epoch_checkpoints(paths)] == [2, 4, 6]
    assert np.all([load_checkpoint(p)["config_fingerprint"] == fingerprint for _, p in epoch_checkpoints(paths)])
