"""The student's motion-aware input, as I3D trained on Kinetics is in the papers: a small (2+1)D
network (models.tiny_video) trained to classify the generator's actions on short clips of a
pretraining world of its own (its own random streams: no video of the demo or any evaluation
world), then used frozen by extraction through the general weights-file path
(`extract.visual_weights: {tiny_r2plus1d: <file>}`).

Clips are windows of `window` frames spaced `stride` frames apart at the world's own frame rate,
exactly the windows extraction cuts around each sampled time, and go through the same
preprocessing (models.visual.VideoBackbone) as extraction's.
"""

from __future__ import annotations

import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from prvr.errors import UsageError
from synth.report import TrainingReport
from synth.presets import Preset, get_preset
from synth.render import render_frame
from synth.world import Scene, plan_scene

ARCHITECTURE = "tiny_r2plus1d"
WEIGHTS_NAME = f"{ARCHITECTURE}.pt"
REST = "none"  # the label of a window in which no event happens
# Random-stream namespaces of the pretraining world (the evaluation worlds use 0-2, the teacher 10-13).
_TRAIN_STREAM, _HELDOUT_STREAM, _ORDER_STREAM = 20, 21, 22
CLIPS_PER_SCENE = 6


@dataclass
class BackboneReport(TrainingReport):
    weights: Path
    architecture: str
    accuracy: float  # held-out clips, percent
    chance: float  # percent: the most frequent held-out label
    per_label: dict[str, float]  # held-out accuracy per label, percent
    heldout_clips: int
    train_clips: int
    epochs: int
    window: int
    stride: int
    fps: int
    frame_size: int
    final_loss: float
    seed: int
    seconds: float
    threads: int

    def lines(self) -> list[str]:
        worst = sorted(self.per_label.items(), key=lambda kv: kv[1])[:3]
        return [
            f"synthetic video backbone {self.architecture}: {self.weights}",
            f"  held-out action accuracy {self.accuracy:.1f}% (chance {self.chance:.1f}%) over {self.heldout_clips} "
            f"clips; weakest: " + ", ".join(f"{k} {v:.0f}%" for k, v in worst),
            f"  {self.epochs} epochs on {self.train_clips} clips of {self.window} frames (stride {self.stride}) at "
            f"{self.fps} fps, final loss {self.final_loss:.3f}; {self.seconds:.0f} s on {self.threads} CPU thread(s)",
            f"  use it as: extract: {{visual: [clip, {self.architecture}], window: {self.window}, "
            f"window_stride: {self.stride}, visual_weights: {{{self.architecture}: {self.weights}}}}}",
        ]



def labels_of(preset: Preset) -> tuple[str, ...]:
    return (*preset.actions, REST)


def _window_frames(scene: Scene, centre: float, window: int, stride: int) -> np.ndarray:
    """Frame indices of the window extraction would cut around time `centre` (decode.plan_samples)."""
    index = min(math.floor(centre * scene.fps + 1e-6), scene.frames - 1)
    offsets = (np.arange(window) - window // 2) * stride
    return np.clip(index + offsets, 0, scene.frames - 1)


def _clip_centres(scene: Scene, rng: np.random.Generator, count: int, window: int, stride: int,
                  labels: tuple[str, ...]) -> list[tuple[float, int]]:
    """(centre time, label index): windows inside an event (its action) or clear of every event (rest)."""
    half = window * stride / scene.fps / 2
    events = [a.event for a in scene.events() if a.event is not None]
    out = []
    for _ in range(count):
        if events and rng.random() < 1 - 1 / len(labels):
            event = events[int(rng.integers(len(events)))]
            # The window's centre well inside the event: most of the window shows the action.
            lo, hi = event.start + min(half / 2, (event.end - event.start) / 2), event.end - min(half / 2, (event.end - event.start) / 2)
            out.append((float(rng.uniform(lo, hi)), labels.index(event.action)))
            continue
        for _ in range(50):  # a rest window: no event overlaps it
            t = float(rng.uniform(half, scene.duration - half))
            if all(t + half <= e.start or t - half >= e.end for e in events):
                out.append((t, labels.index(REST)))
                break
    return out


def _render_clips(job: tuple[Scene, list[tuple[float, int]], int, int]) -> tuple[np.ndarray, list[int]]:
    scene, centres, window, stride = job
    clips = np.empty((len(centres), window, scene.height, scene.width, 3), dtype=np.uint8)
    for c, (t, _) in enumerate(centres):
        for k, index in enumerate(_window_frames(scene, t, window, stride)):
            clips[c, k] = render_frame(scene, index / scene.fps)
    return clips, [label for _, label in centres]


def make_clips(scenes: int, stream: int, seed: int, preset: Preset, window: int, stride: int,
               workers: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(N, window, H, W, 3) uint8 clips and (N,) labels from `scenes` fresh scenes of the pretraining world.
    The same arguments give the same clips, whatever `workers` is."""
    labels = labels_of(preset)
    jobs = []
    for i in range(scenes):
        scene = plan_scene(f"pretrain{i:05d}", "pretrain", preset, np.random.default_rng([seed, stream, i]))
        centres = _clip_centres(scene, np.random.default_rng([seed, stream, i, 1]), CLIPS_PER_SCENE, window, stride,
                                labels)
        jobs.append((scene, centres, window, stride))
    if workers <= 1:
        parts = list(map(_render_clips, jobs))
    else:  # spawn, not fork: torch's threads hold locks a fork would copy
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            parts = list(pool.map(_render_clips, jobs, chunksize=8))
    clips = np.concatenate([p[0] for p in parts])
    return clips, np.array([label for p in parts for label in p[1]], dtype=np.int64)


def _lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def _fitted(backbone, clips: np.ndarray, batch: int = 256) -> np.ndarray:
    parts = [backbone.fit_clips(clips[start:start + batch]).numpy() for start in range(0, len(clips), batch)]
    return np.concatenate(parts)


@torch.inference_mode()
def _predict(backbone, clips: np.ndarray, batch: int = 256) -> np.ndarray:
    out = []
    for start in range(0, len(clips), batch):
        x = backbone.preprocess(torch.from_numpy(clips[start:start + batch]))
        out.append(backbone.model.classify(x).argmax(1).numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def train_synth_backbone(
    out: Path, seed: int = 0, preset: str = "demo", frame_size: int | None = None, fps: int | None = None,
    window: int = 8, stride: int = 2, train_scenes: int = 600, heldout_scenes: int = 100, epochs: int = 8,
    batch_size: int = 64, lr: float = 3e-3, weight_decay: float = 1e-4, workers: int = 2, threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> BackboneReport:
    """Train the tiny (2+1)D network on action clips of a pretraining world and save it to
    `out` (a folder: OUT/tiny_r2plus1d.pt, with a JSON report beside it). Deterministic per seed on a
    given machine and thread count."""
    from models.tiny_video import TinyVideoConfig, TinyVideoWeights, save_tiny_video_weights
    from models.visual import VideoBackbone

    if window < 2 or stride < 1 or epochs < 1 or batch_size < 2 or train_scenes < 1 or heldout_scenes < 1:
        raise UsageError("need window >= 2, stride >= 1, epochs >= 1, batch_size >= 2 and at least one scene each")
    started = time.perf_counter()
    spec = get_preset(preset, frame_size=frame_size, fps=fps)
    labels = labels_of(spec)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    weights_path = out / WEIGHTS_NAME
    say = log or (lambda message: None)

    train_clips, train_labels = make_clips(train_scenes, _TRAIN_STREAM, seed, spec, window, stride, workers)
    held_clips, held_labels = make_clips(heldout_scenes, _HELDOUT_STREAM, seed, spec, window, stride, workers)
    say(f"rendered {len(train_clips)} training and {len(held_clips)} held-out clips")

    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    if threads is not None:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        # The production wrapper builds the network (seeded init) and owns the preprocessing that
        # extraction will apply to the saved weights.
        backbone = VideoBackbone(ARCHITECTURE, None, device="cpu", seed=seed)
        model = backbone.model
        if model.config != TinyVideoConfig(classes=len(labels)):
            raise ValueError(f"{len(labels)} labels for a head of {model.config.classes} classes")
        # Fitted once to the network's input size (lossless geometry, as extraction fits decoded
        # windows), so each epoch only normalises.
        train_clips, held_clips = _fitted(backbone, train_clips), _fitted(backbone, held_clips)
        model.train().requires_grad_(True)
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
        keep = [p for n, p in model.named_parameters() if p.ndim < 2]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                       {"params": keep, "weight_decay": 0.0}], lr=lr)
        order_gen = torch.Generator().manual_seed(int(np.random.default_rng([seed, _ORDER_STREAM]).integers(2**31)))
        steps_per_epoch = len(train_clips) // batch_size
        steps, step, loss_value = steps_per_epoch * epochs, 0, float("nan")
        warmup = max(1, steps // 20)
        for epoch in range(epochs):
            order = torch.randperm(len(train_clips), generator=order_gen).numpy()
            total = 0.0
            for b in range(steps_per_epoch):
                index = np.sort(order[b * batch_size:(b + 1) * batch_size])
                x = backbone.preprocess(torch.from_numpy(train_clips[index]))
                y = torch.from_numpy(train_labels[index])
                for group in optimizer.param_groups:
                    group["lr"] = _lr_at(step, steps, lr, warmup)
                loss = F.cross_entropy(model.classify(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                total += float(loss.detach())
            loss_value = total / max(1, steps_per_epoch)
            say(f"backbone epoch {epoch + 1}/{epochs} loss {loss_value:.3f}")
        model.eval().requires_grad_(False)
        accuracy_before_save = _predict(backbone, held_clips)
        save_tiny_video_weights(weights_path, TinyVideoWeights(
            config=model.config, state_dict=model.state_dict(), labels=labels,
            about={"world": "pretraining", "preset": spec.name, "seed": seed, "window": window, "stride": stride,
                   "fps": spec.fps, "train_clips": len(train_clips)}))
        # Measured through the production loader, from the file just written.
        loaded = VideoBackbone(ARCHITECTURE, str(weights_path), device="cpu")
        predicted = _predict(loaded, held_clips)
        if not np.array_equal(predicted, accuracy_before_save):
            raise RuntimeError(f"{weights_path} does not reproduce the trained network's predictions")
        used_threads = torch.get_num_threads()
    finally:
        torch.use_deterministic_algorithms(previous_deterministic)
        torch.set_num_threads(previous_threads)

    correct = predicted == held_labels
    per_label = {name: float(correct[held_labels == i].mean() * 100) for i, name in enumerate(labels)
                 if (held_labels == i).any()}
    counts = np.bincount(held_labels, minlength=len(labels))
    report = BackboneReport(
        weights=weights_path.resolve(), architecture=ARCHITECTURE, accuracy=float(correct.mean() * 100),
        chance=float(counts.max() / counts.sum() * 100), per_label=per_label, heldout_clips=len(held_clips),
        train_clips=len(train_clips), epochs=epochs, window=window, stride=stride, fps=spec.fps,
        frame_size=spec.width, final_loss=loss_value, seed=seed, seconds=time.perf_counter() - started,
        threads=used_threads,
    )
    (out / "tiny_r2plus1d.json").write_text(report.to_json(), encoding="utf-8")
    return report
