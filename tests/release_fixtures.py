"""A tiny MS-SL / DL-DKD release written byte for byte in the release formats.

Each video has a hidden topic; its frames and its queries' tokens and CLIP vectors carry that
topic plus noise, so a student can learn and a teacher can rank.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

VISUAL_DIM, TOKEN_DIM, CLIP_DIM = 24, 16, 12


@dataclass
class TinyRelease:
    root: Path  # the release root: <root>/<collection>/...
    collection: str
    videos: dict[str, list[str]]  # split -> video ids
    frames: dict[str, np.ndarray]  # video id -> raw student rows (float32)
    clip_frames: dict[str, np.ndarray]
    queries: dict[str, list[tuple[str, str]]]  # split -> (query id, sentence)
    tokens: dict[str, np.ndarray]
    clip_queries: dict[str, np.ndarray]

    @property
    def folder(self) -> Path:
        return self.root / self.collection


def write_bigfile(folder: Path, names: list[str], rows: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows.astype("<f4").tofile(folder / "feature.bin")
    (folder / "id.txt").write_text(" ".join(names))
    (folder / "shape.txt").write_text(f"{rows.shape[0]} {rows.shape[1]}")


def make_release(root: Path, collection: str = "tiny", videos_per_split: dict[str, int] | None = None,
                 test_repeats_val: bool = True, with_teacher: bool = True, seed: int = 0,
                 feature: str = "i3d_resnet") -> TinyRelease:
    rng = np.random.default_rng(seed)
    videos_per_split = videos_per_split or {"train": 16, "val": 6}
    topics = rng.normal(size=(8, VISUAL_DIM)).astype(np.float32)
    token_map = rng.normal(size=(VISUAL_DIM, TOKEN_DIM)).astype(np.float32)
    clip_map = rng.normal(size=(VISUAL_DIM, CLIP_DIM)).astype(np.float32)
    folder = root / collection
    (folder / "TextData").mkdir(parents=True, exist_ok=True)
    rel = TinyRelease(root, collection, {}, {}, {}, {}, {}, {})
    names, rows, video2frames = [], [], {}
    for split, n_videos in videos_per_split.items():
        rel.videos[split], rel.queries[split] = [], []
        lines = []
        for v in range(n_videos):
            vid = f"{split}_vid{v:03d}"
            rel.videos[split].append(vid)
            n_frames = int(rng.integers(5, 40))  # some longer than the tests' max_frames
            topic = topics[rng.integers(len(topics), size=n_frames)]
            frames = topic + 0.3 * rng.normal(size=(n_frames, VISUAL_DIM)).astype(np.float32)
            rel.frames[vid] = frames * 7.0  # unnormalised, as the releases' features are
            n_clip = max(3, n_frames - int(rng.integers(0, 4)))  # the teacher's count may differ
            idx = np.linspace(0, n_frames - 1, n_clip).round().astype(int)
            rel.clip_frames[vid] = frames[idx] @ clip_map + 0.2 * rng.normal(size=(n_clip, CLIP_DIM)).astype(np.float32)
            frame_ids = [f"{vid}_{i}" for i in range(n_frames)]
            video2frames[vid] = frame_ids
            names += frame_ids
            rows.append(rel.frames[vid])
            for k in range(int(rng.integers(1, 4))):
                qid = f"{vid}#enc#{k}"
                moment = frames[rng.integers(n_frames)]
                n_tok = int(rng.integers(3, 40))  # some longer than max_tokens
                tok = moment @ token_map + 0.5 * rng.normal(size=(n_tok, TOKEN_DIM)).astype(np.float32)
                rel.tokens[qid] = tok
                rel.clip_queries[qid] = (moment @ clip_map)[None, :]  # (1, D) as DL-DKD stores it
                sentence = f"someone does thing {k} in {vid}"
                rel.queries[split].append((qid, sentence))
                lines.append(f"{qid} {sentence}")
        (folder / "TextData" / f"{collection}{split}.caption.txt").write_text("\n".join(lines) + "\n")
    if test_repeats_val and "val" in videos_per_split:
        (folder / "TextData" / f"{collection}test.caption.txt").write_text(
            (folder / "TextData" / f"{collection}val.caption.txt").read_text())
    feat_dir = folder / "FeatureData" / feature
    write_bigfile(feat_dir, names, np.concatenate(rows))
    (feat_dir / "video2frames.txt").write_text(repr(video2frames))
    with h5py.File(folder / "TextData" / f"roberta_{collection}_query_feat.hdf5", "w") as f:
        for qid, tok in rel.tokens.items():
            f.create_dataset(qid, data=tok)
    if with_teacher:
        with h5py.File(folder / "FeatureData" / f"new_clip_vit_32_{collection}_vid_features.hdf5", "w") as f:
            for vid, clip in rel.clip_frames.items():
                f.create_dataset(vid, data=clip)
        with h5py.File(folder / "TextData" / f"clip_ViT_B_32_{collection}_query_feat.hdf5", "w") as f:
            for i, (qid, vec) in enumerate(rel.clip_queries.items()):
                # DL-DKD's files name some queries `<vid>#<k>`: the importer must find both.
                f.create_dataset(qid if i % 2 else qid.replace("#enc#", "#"), data=vec)
    return rel


def write_release_config(path: Path, rel: TinyRelease, store: Path, runs: Path, extra: str = "") -> Path:
    path.write_text(f"""
name: {rel.collection}-run
dataset:
  root: {rel.root}
  release: {{format: ms-sl, collection: {rel.collection}, feature: i3d_resnet, shard_size: 5}}
store: {store}
runs_dir: {runs}
extract:
  max_frames: 16
  max_tokens: 12
train:
  visual: [i3d_resnet]
  epochs: 3
  batch_videos: 8
  hidden: 32
  heads: 2
  early_stop: 3
  device: cpu
evaluate:
  split: test
{extra}""")
    return path
