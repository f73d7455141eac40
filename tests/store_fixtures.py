"""A small feature store written through the storage API, for training and evaluation tests.

Each query's tokens carry a trace of its video's features, so a student can learn the task and
tests can tell a trained model from an untrained one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from configs.schema import RunConfig, load_config
from stages.extract import teacher_feature, visual_feature
from storage.features import FeatureStore

TEACHER = {"model": "prvr-tiny", "pretrained": None}
TEACHER_KEY = "prvr-tiny-random"


def build_store(root: Path, videos_per_split: dict[str, int] | None = None, queries_per_video: int = 2,
                dim: int = 16, tokens: int = 6, seed: int = 0, shard_size: int = 5) -> Path:
    """Writes root/features.zarr (committed shards, text of every split) and root/run.yaml."""
    videos_per_split = videos_per_split or {"train": 12, "val": 4, "test": 6}
    rng = np.random.default_rng(seed)
    store = FeatureStore(str(root / "features.zarr"), mode="a")
    all_videos = [(f"{split}-{i:03d}", split) for split, n in videos_per_split.items() for i in range(n)]
    feats: dict[str, np.ndarray] = {}
    for s, start in enumerate(range(0, len(all_videos), shard_size)):
        writer = store.begin_shard(s, {teacher_feature_name(): dim, visual_feature("clip"): dim})
        for vid, split in all_videos[start:start + shard_size]:
            n = int(rng.integers(4, 12))
            f = rng.standard_normal((n, dim)).astype(np.float32)
            feats[vid] = f
            unit = f / np.linalg.norm(f, axis=1, keepdims=True)
            writer.add_video(vid, split, float(n), np.arange(n, dtype=np.float32) + 0.5,
                             {teacher_feature_name(): unit, visual_feature("clip"): f})
        writer.commit(f"fp-{s}")
    for split in videos_per_split:
        vids = [v for v, sp in all_videos if sp == split]
        qids, qvids, texts, moments, tok_rows, sentences = [], [], [], [], [], []
        for v in vids:
            n = len(feats[v])
            for k in range(queries_per_video):
                frame = int(rng.integers(0, n))
                target = feats[v][frame]
                qids.append(f"{v}#{k}")
                qvids.append(v)
                texts.append(f"query {k} about {v}")
                moments.append([max(0.0, frame - 1.0), frame + 2.0])
                tok = rng.standard_normal((tokens, dim)).astype(np.float32) * 0.5
                tok[1] += target  # the query "mentions" one frame of its video
                tok_rows.append(tok)
                sentences.append(target / np.linalg.norm(target) + rng.standard_normal(dim) * 0.3)
        sent = np.asarray(sentences, dtype=np.float32)
        sent /= np.linalg.norm(sent, axis=1, keepdims=True)
        writer = store.begin_text(split, qids, qvids, texts, np.asarray(moments, dtype=np.float32),
                                  {f"sentence.{TEACHER_KEY}": (dim,), f"tokens.{TEACHER_KEY}": (tokens, dim),
                                   f"token_lengths.{TEACHER_KEY}": ()})
        writer.write(f"sentence.{TEACHER_KEY}", 0, sent)
        writer.write(f"tokens.{TEACHER_KEY}", 0, np.asarray(tok_rows))
        lengths = rng.integers(3, tokens + 1, size=len(qids)).astype(np.int32)
        writer.write(f"token_lengths.{TEACHER_KEY}", 0, lengths)
        writer.commit(f"text-{split}")
    (root / "data").mkdir(exist_ok=True)
    return root


def teacher_feature_name() -> str:
    from configs.schema import TeacherSpec

    return teacher_feature(TeacherSpec(**TEACHER))


def write_run_config(root: Path, name: str = "t", **train) -> Path:
    body = {
        "name": name, "dataset": {"root": str(root / "data")}, "store": str(root / "features.zarr"),
        "runs_dir": str(root / "runs"),
        "extract": {"teacher": TEACHER, "visual": ["clip"], "device": "cpu"},
        "train": {"epochs": 4, "batch_videos": 4, "hidden": 32, "heads": 4, "device": "cpu", "lr": 1e-3,
                  "early_stop": 10, "seed": 0, **train},
        "evaluate": {"query_chunk": 5},
    }
    path = root / f"{name}.yaml"
    path.write_text(json.dumps(body))
    return path


def config(root: Path, name: str = "t", **train) -> RunConfig:
    return load_config(write_run_config(root, name, **train))
