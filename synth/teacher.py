"""A CLIP teacher for the synthetic world, with the gap CLIP has on real PRVR data: trained
contrastively on still frames captioned by appearance and position only, it knows what
things look like and where they are, and has never read a word about motion.

The weights are saved as a plain open_clip state_dict, so they load through the same path
as any CLIP checkpoint: `ClipEncoder("prvr-synth", pretrained=<path>)`.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.clip import ClipEncoder
from prvr.errors import UsageError
from synth.captions import still_caption
from synth.generate import read_world_info
from synth.language import corpus_vocabulary, language_corpus, next_token_loss
from synth.presets import Preset, get_preset
from synth.render import render_frame
from synth.report import TrainingReport
from synth.world import Still, grid_cell, plan_still

MODEL_NAME = "prvr-synth"
TEACHER_DIR = "teacher"
CHECKPOINT_NAME = f"{MODEL_NAME}.pt"


@dataclass
class TeacherReport(TrainingReport):
    checkpoint: Path
    model: str
    r1: float  # held-out text -> image recall@1, percent
    r5: float
    chance_r1: float  # percent: 1 / held-out stills
    heldout: int
    train_stills: int
    steps: int
    batch_size: int
    final_loss: float  # the contrastive image-text loss
    final_language_loss: float  # next-word loss on the world's sentences (nan when off)
    language_sentences: int
    seed: int
    seconds: float
    threads: int

    def lines(self) -> list[str]:
        return [
            f"synthetic teacher {self.model}: {self.checkpoint}",
            f"  held-out stills text->image R@1 {self.r1:.1f}% (chance {self.chance_r1:.2f}%), R@5 {self.r5:.1f}% "
            f"over {self.heldout} stills",
            f"  {self.steps} steps of {self.batch_size} on {self.train_stills} stills, final loss {self.final_loss:.3f}, "
            f"next-word loss {self.final_language_loss:.3f} on {self.language_sentences} sentences; "
            f"{self.seconds:.0f} s on {self.threads} CPU thread(s)",
            f"  use it as: teacher: {{model: {self.model}, pretrained: {self.checkpoint}}}",
        ]



@dataclass
class StillSet:
    frames: np.ndarray  # (N, H, W, 3) uint8, the frame size of the world's videos
    objects: list[list[tuple[str, str, str, str]]]  # per still: (colour, shape, size, cell) of named objects


def make_stills(count: int, preset: Preset, rng: np.random.Generator) -> StillSet:
    frames = np.empty((count, preset.height, preset.width, 3), dtype=np.uint8)
    objects = []
    for i in range(count):
        still: Still = plan_still(rng, preset)
        frames[i] = render_frame(still.scene, still.t)
        objects.append([(a.colour, a.shape, a.size, grid_cell(a.x, a.y)) for a in still.named])
    return StillSet(frames, objects)


def captions_for(stills: StillSet, rng: np.random.Generator) -> list[str]:
    """Fresh wordings each call: synonyms are learned, not one fixed string per image."""
    return [still_caption(named, rng) for named in stills.objects]


def _lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # Decay matrices only: biases, norms, embeddings and the logit scale keep their scale.
    decay, keep = [], []
    for name, param in model.named_parameters():
        if param.ndim >= 2 and "embedding" not in name:
            decay.append(param)
        else:
            keep.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


@torch.inference_mode()
def heldout_recall(encoder: ClipEncoder, stills: StillSet, captions: list[str]) -> tuple[float, float]:
    """Text -> image R@1 and R@5 (percent): each caption ranks every held-out still."""
    images, _ = encoder.encode_frames(stills.frames, batch_size=256)
    texts = encoder.encode_sentences(captions, batch_size=256)
    sims = texts @ images.T
    target = sims.diagonal().unsqueeze(1)
    rank = (sims >= target).sum(dim=1) - 1  # ties count against the caption
    return float((rank < 1).float().mean() * 100), float((rank < 5).float().mean() * 100)


def train_synth_teacher(
    world: Path, out: Path | None = None, seed: int = 0, steps: int = 400, batch_size: int = 64,
    train_stills: int = 5000, heldout_stills: int = 500, lr: float = 2e-3, weight_decay: float = 0.05,
    threads: int | None = None, log_every: int = 0, language_sentences: int = 5000, language_weight: float = 1.0,
) -> TeacherReport:
    """Train the prvr-synth CLIP on stills of the world generated in `world` (its preset
    sets frame size and palette) and save it to `out` (default WORLD/teacher/prvr-synth.pt)
    with a JSON report beside it. Deterministic per seed on a given machine and thread count.

    Each step also trains the text tower to predict the next word of sentences of the world's
    language (synth/language.py, weight `language_weight`; 0 turns it off): it reads the action
    words the stills never show."""
    if steps < 1 or batch_size < 2 or heldout_stills < 2:
        raise UsageError("need steps >= 1, batch_size >= 2 and heldout_stills >= 2")
    if batch_size > train_stills:
        raise UsageError(f"batch_size {batch_size} exceeds train_stills {train_stills}")
    started = time.perf_counter()
    world = Path(world)
    preset_data = read_world_info(world)["preset"]
    preset = get_preset(preset_data["name"], frame_size=preset_data["width"], fps=preset_data["fps"])
    out = Path(out) if out is not None else world / TEACHER_DIR / CHECKPOINT_NAME
    out.parent.mkdir(parents=True, exist_ok=True)

    train_set = make_stills(train_stills, preset, np.random.default_rng([seed, 10]))
    heldout_set = make_stills(heldout_stills, preset, np.random.default_rng([seed, 11]))
    heldout_captions = captions_for(heldout_set, np.random.default_rng([seed, 12]))
    caption_rng = np.random.default_rng([seed, 13])
    corpus = language_corpus(language_sentences, preset, seed) if language_weight > 0 else []

    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    if threads is not None:
        torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        # The production wrapper builds the model (seeded random init) and owns the exact
        # preprocessing and tokenizer that will later read the checkpoint.
        encoder = ClipEncoder(MODEL_NAME, pretrained=None, device="cpu", seed=seed)
        model = encoder.model
        model.train().requires_grad_(True)
        optimizer = torch.optim.AdamW(_param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
        order_gen = torch.Generator().manual_seed(seed)
        warmup = max(1, steps // 10)
        order = torch.randperm(train_stills, generator=order_gen)
        captions = captions_for(train_set, caption_rng)
        corpus_ids = encoder.tokenize(corpus) if corpus else None
        vocabulary = corpus_vocabulary(corpus_ids) if corpus else None
        corpus_gen = torch.Generator().manual_seed(seed + 1)
        cursor, loss_value, language_value = 0, float("nan"), float("nan")
        for step in range(steps):
            if cursor + batch_size > train_stills:  # next epoch: new order, new wordings
                order = torch.randperm(train_stills, generator=order_gen)
                captions = captions_for(train_set, caption_rng)
                cursor = 0
            index = order[cursor:cursor + batch_size]
            cursor += batch_size
            images = encoder.preprocess(torch.from_numpy(train_set.frames[index.numpy()]))
            tokens = encoder.tokenize([captions[i] for i in index.tolist()])
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, steps, lr, warmup)
            image_features, text_features, logit_scale = model(images, tokens)
            logits = logit_scale * image_features @ text_features.T
            labels = torch.arange(len(index))
            loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
            loss_value = float(loss.detach())
            if corpus_ids is not None:
                rows = torch.randint(len(corpus_ids), (batch_size,), generator=corpus_gen)
                language = next_token_loss(encoder.token_states(corpus_ids[rows]), corpus_ids[rows],
                                           encoder.token_embedding.weight, vocabulary)
                loss = loss + language_weight * language
                language_value = float(language.detach())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            if log_every and (step % log_every == 0 or step == steps - 1):
                print(f"teacher step {step + 1}/{steps} loss {loss_value:.3f} next-word loss {language_value:.3f}",
                      flush=True)

        model.eval().requires_grad_(False)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
        torch.save(model.state_dict(), tmp)
        tmp.replace(out)

        # Measured through the production loader, from the file just written.
        loaded = ClipEncoder(MODEL_NAME, pretrained=str(out), device="cpu", seed=seed)
        r1, r5 = heldout_recall(loaded, heldout_set, heldout_captions)
        used_threads = torch.get_num_threads()
    finally:
        torch.use_deterministic_algorithms(previous_deterministic)
        torch.set_num_threads(previous_threads)

    report = TeacherReport(
        checkpoint=out.resolve(), model=MODEL_NAME, r1=r1, r5=r5, chance_r1=100.0 / heldout_stills,
        heldout=heldout_stills, train_stills=train_stills, steps=steps, batch_size=batch_size,
        final_loss=loss_value, final_language_loss=language_value, language_sentences=len(corpus), seed=seed,
        seconds=time.perf_counter() - started, threads=used_threads,
    )
    (out.parent / out.with_suffix(".json").name).write_text(report.to_json(), encoding="utf-8")
    return report
