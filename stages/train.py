"""DL-DKD student training: two branches, dynamic distillation into the inheritance branch,
validation SumR for model selection and early stopping, resumable checkpoints every epoch.

On CPU the same config and data give the same model, also across a kill and resume: every
random stream (dropout, shuffling, hard-negative draws) is saved in the checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from configs.schema import RunConfig, TrainConfig
from stages.data import Batch, SplitData, as_float32, load_split
from stages.prefetch import prefetched
from stages.train_state import BestEpoch, TrainState
from storage.checkpoints import (
    CheckpointError, best_checkpoint, epoch_checkpoint, newest_loadable, prune_epoch_checkpoints, save_checkpoint,
)
from stages.run_identity import (  # noqa: F401  (re-exported: the training's identity, used here and by callers)
    active_branches, changed_train_keys, config_fingerprint, data_fingerprint, distilled_teachers, eval_branch,
    stopped_early,
)
from storage.features import FeatureStore, StoreError
from storage.runs import RunPaths, write_history, write_resolved_config

log = logging.getLogger("prvr.train")
CHECKPOINT_FORMAT = 1
EpochCallback = Callable[[dict[str, Any]], None]


def require_teachers(cfg: RunConfig, store: FeatureStore, teachers: list[str]) -> None:
    """Distillation needs the teacher's frames in the store; say what to do when they are not there."""
    from stages.sources import stored_teachers

    absent = [k for k in teachers if k not in stored_teachers(cfg, store)]
    if absent:
        raise StoreError(
            f"the store {cfg.store} holds no frames of teacher(s) {absent}, which the inheritance branch distils "
            f"from (a release imported without its CLIP teacher files?). Either train without distillation: "
            f"--set train.branches=exploration, or extract the teacher from the raw videos "
            f"(prvr import tvr|activitynet|charades ... then prvr run on the raw-video config).")


def teacher_batch_scores(batch: Batch, teachers: list[str], scale: float) -> torch.Tensor:
    """(Q, B) teachers' query-video scores in the batch: max over valid frames of the cosine, times
    `scale`, averaged over teachers."""
    mask = batch.video_mask  # (B, T)
    scores = []
    for key in teachers:
        cos = torch.einsum("qd,btd->qbt", batch.teacher_sentences[key], batch.teacher_frames[key])
        scores.append(cos.masked_fill(~mask.unsqueeze(0), float("-inf")).amax(-1) * scale)
    return torch.stack(scores).mean(0)


def batch_loss(model, batch: Batch, t: TrainConfig, teachers: list[str], soft_teachers: list[str],
               weights, distill_weight: float, soft_shares: tuple[float, float],
               negatives: torch.Generator | None) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
    """One batch's DL-DKD loss (call inside autocast): each active branch's triplet + InfoNCE (soft
    targets with train.soft_infonce), plus the weighted distillation KL of the inheritance branch.
    Returns (loss, {"triplet", "infonce", "distill": detached float64 sums for the epoch record}):
    tensors, not Python floats, so that a GPU step waits for no host copy; summing them in float64
    gives the very numbers that summing their Python floats gave."""
    from models.losses import branch_loss, gather_positive, multi_teacher_kl

    branches = active_branches(t)
    outputs = {name: model.branch(name)(batch.video, batch.video_mask, batch.tokens, batch.token_mask)
               for name in branches}
    loss = torch.zeros((), device=batch.video.device)
    sums: dict[str, torch.Tensor | float] = {"triplet": 0.0, "infonce": 0.0, "distill": 0.0}
    for name in branches:
        soft = None
        if t.soft_infonce:  # DL-DKD++: the teacher's in-batch scores, or the branch's own
            scores = (teacher_batch_scores(batch, soft_teachers, t.soft_teacher_scale)
                      if name == "inheritance" else outputs[name].video_dot)
            soft = (scores, *soft_shares)
        parts = branch_loss(outputs[name], batch.query_video, weights, negatives, soft)
        loss = loss + parts["total"]
        sums["triplet"] = sums["triplet"] + parts["triplet"].detach().double()
        sums["infonce"] = sums["infonce"] + parts["infonce"].detach().double()
    if teachers:
        student_pos = gather_positive(outputs["inheritance"].frame_cos, batch.query_video)
        mask = batch.video_mask[batch.query_video]
        kl = multi_teacher_kl(student_pos.float(), [batch.teacher_scores[k] for k in teachers], mask,
                              t.distill_temperature)
        loss = loss + distill_weight * kl
        sums["distill"] = sums["distill"] + kl.detach().double()
    return loss, sums


def loss_weights(t: TrainConfig):
    """The task losses' settings of a train config (the one place that maps the config's names)."""
    from models.losses import LossWeights

    return LossWeights(infonce=t.infonce_weight, triplet_margin=t.margin, hard_pool=t.hard_pool)


def half_batch(data: SplitData) -> Callable[[Any], Batch]:
    """data.batch(rows) with the features left in float16."""
    return lambda rows: data.batch(rows, float32=False)


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def student_config(cfg: RunConfig, data: SplitData):
    from models.student import StudentConfig

    t = cfg.train
    return StudentConfig(video_dim=data.video_dim, text_dim=data.text_dim, hidden=t.hidden, heads=t.heads,
                         # Positions for every frame any split may hold, not just the longest training video.
                         dropout=t.dropout, max_frames=max(data.max_frames, t.max_frames or cfg.extract.max_frames),
                         max_tokens=data.max_tokens,
                         fusion=t.fusion)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    # BERT-style: no decay on biases, norms and embeddings-like 1-d parameters.
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_lambda(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor


def make_optimizer(model: torch.nn.Module, t: TrainConfig,
                   total_steps: int) -> tuple[torch.optim.Optimizer, Callable[[int], float]]:
    """The optimizer of train.optimizer and its learning-rate factor per step (for LambdaLR)."""
    groups = _param_groups(model, t.weight_decay)
    if t.optimizer == "bertadam":
        from models.bert_adam import BertAdam, reference_warmup_linear

        return BertAdam(groups, lr=t.lr), reference_warmup_linear(total_steps, t.warmup)
    return torch.optim.AdamW(groups, lr=t.lr), _lr_lambda(total_steps, int(t.warmup * total_steps))


@dataclass
class TrainingRun:
    """What stays fixed over one training: its config, device, data, teachers, run folder, and the
    identity every checkpoint carries (what evaluation checks the model against)."""

    cfg: RunConfig
    device: torch.device
    paths: RunPaths
    store: FeatureStore
    teachers: list[str]
    soft_teachers: list[str]  # DL-DKD++: the teachers whose in-batch scores are the soft InfoNCE targets
    train_data: SplitData
    val_data: SplitData | None
    identity: dict[str, Any]  # format, student_config, config_fingerprint, store_commits, teachers, ...
    steps_per_epoch: int

    @property
    def fingerprint(self) -> str:
        return self.identity["config_fingerprint"]

    @property
    def use_amp(self) -> bool:
        return self.cfg.train.amp and self.device.type == "cuda"


def setup(cfg: RunConfig) -> tuple[TrainingRun, TrainState]:
    """The run's data, model, optimizer and identity; a fresh state at epoch 0."""
    from models.clip import resolve_device
    from models.student import DLDKDStudent

    t = cfg.train
    device = torch.device(resolve_device(t.device))
    paths = RunPaths.of(cfg.runs_dir, cfg.name).make()
    write_resolved_config(paths, cfg.model_dump(mode="json"))
    store = FeatureStore(cfg.store)
    teachers = distilled_teachers(cfg)
    require_teachers(cfg, store, teachers)
    soft_teachers = teachers if t.soft_infonce else []
    train_data = load_split(cfg, "train", teachers, store, teacher_views=soft_teachers)
    val_data = load_split(cfg, "val", (), store) if store.has_text_split("val") else None
    model_cfg = student_config(cfg, train_data)
    identity = {
        "format": CHECKPOINT_FORMAT, "student_config": asdict(model_cfg),
        # The student's shapes too: a checkpoint of other shapes is refused with a reason, not a load error.
        "config_fingerprint": config_fingerprint(t, data_fingerprint(store, teachers), asdict(model_cfg)),
        # What the fingerprint is made of: evaluation names what changed since.
        "store_commits": store.commit_fingerprints(), "teachers": teachers, "train_config": t.model_dump(),
        "branch": eval_branch(t)}
    steps_per_epoch = math.ceil(len(train_data.video_ids) / t.batch_videos)
    run = TrainingRun(cfg, device, paths, store, teachers, soft_teachers, train_data, val_data, identity,
                      steps_per_epoch)

    torch.manual_seed(t.seed)
    generators = {"shuffle": torch.Generator().manual_seed(t.seed + 1),
                  "negatives": torch.Generator().manual_seed(t.seed + 2)}
    model = DLDKDStudent(model_cfg).to(device)
    optimizer, lr_factor = make_optimizer(model, t, steps_per_epoch * t.epochs)
    state = TrainState(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor),
                       torch.amp.GradScaler("cuda", enabled=run.use_amp), generators)
    return run, state


def resume(run: TrainingRun, state: TrainState) -> None:
    """Continue from the newest checkpoint that loads, if any; refuse one of another config."""
    found = newest_loadable(run.paths)
    if found is None:
        return
    path, saved = found
    if saved.get("config_fingerprint") != run.fingerprint:
        from stages.trained import stale_reasons

        t = run.cfg.train
        changed = changed_train_keys(saved.get("train_config", {}), t.model_dump())
        raise CheckpointError(
            f"{path} was written by an incompatible config "
            f"(changed: {changed or '; '.join(stale_reasons(run.cfg, run.store, saved))}); "
            f"use another run name, or --set train.resume=false to start over")
    state.load_state_dict(saved)
    log.info("resuming %s from %s (epoch %d done)", run.cfg.name, path.name, state.epoch)


def run_epoch(run: TrainingRun, state: TrainState) -> dict[str, Any]:
    """One pass over the training split, in the shuffle stream's order; the epoch's record (losses
    per step, weights, learning rate), validation not yet in it."""
    from models.schedules import distillation_weight, soft_label_weights

    t, epoch = run.cfg.train, state.epoch
    state.model.train()
    w = distillation_weight(t.schedule, epoch, total_epochs=t.epochs, base=t.schedule_base, increasing=t.increasing)
    alpha, beta = soft_label_weights(t.soft_schedule, epoch, t.epochs, t.soft_alpha, t.soft_beta)
    n_videos = len(run.train_data.video_ids)
    order = torch.randperm(n_videos, generator=state.generators["shuffle"]).numpy()
    weights = loss_weights(t)
    sums: dict[str, torch.Tensor | float] = {"loss": 0.0, "triplet": 0.0, "infonce": 0.0, "distill": 0.0}
    # A lone video has no negatives.
    batches = [b for b in (order[i:i + t.batch_videos] for i in range(0, n_videos, t.batch_videos)) if len(b) >= 2]
    # float16 in the queue and on the way to the device; float32 where the model reads it. A batch held in
    # memory is a few index operations: a thread to prepare it ahead only competes with the step for the CPU
    # (measured on the demo, 2 cores: 18% slower), so only streamed batches are read ahead.
    depth = t.prefetch if run.train_data.streamed else 0
    for batch in map(as_float32, prefetched(half_batch(run.train_data), batches, depth, run.device)):
        autocast = torch.autocast("cuda", dtype=torch.float16) if run.use_amp else contextlib.nullcontext()
        with autocast:
            loss, parts = batch_loss(state.model, batch, t, run.teachers, run.soft_teachers, weights, w, (alpha, beta),
                                     state.generators["negatives"])
        for k, v in parts.items():
            sums[k] = sums[k] + v
        optimizer_step(loss, state.optimizer, state.scaler)
        state.scheduler.step()
        state.step += 1
        sums["loss"] = sums["loss"] + loss.detach().double()  # read once per epoch: no sync per step
    return {"epoch": epoch, "step": state.step, "distill_weight": w if run.teachers else 0.0,
            **({"soft_alpha": alpha, "soft_beta": beta} if t.soft_infonce else {}),
            "lr": state.optimizer.param_groups[0]["lr"],
            **{("loss" if k == "loss" else f"loss_{k}"): float(v) / run.steps_per_epoch for k, v in sums.items()}}


def select_and_save(run: TrainingRun, state: TrainState, record: dict[str, Any], started: float) -> bool:
    """Validate, keep the best epoch (best.pt), write the epoch's checkpoint and the history;
    whether this epoch is the new best. `started`: perf_counter() when the epoch began."""
    from stages.evaluate import evaluate_student

    t, epoch = run.cfg.train, record["epoch"]
    if run.val_data is not None:
        val_metrics, _ = evaluate_student(state.model, run.val_data, eval_branch(t), device=run.device)
        record["val_SumR"] = val_metrics["SumR"]
    else:  # no validation split: select on the training loss instead
        record["val_SumR"] = -record["loss"]
    improved = record["val_SumR"] > state.best.metric
    if improved:
        state.best, state.stale_epochs = BestEpoch(record["val_SumR"], epoch), 0
    else:
        state.stale_epochs += 1
    record["seconds"] = time.perf_counter() - started
    state.history.append(record)
    state.epoch = epoch + 1
    if improved:
        save_checkpoint(best_checkpoint(run.paths), {**run.identity, "model": state.model.state_dict(), "epoch": epoch,
                                                     "metric": state.best.metric})
    save_checkpoint(epoch_checkpoint(run.paths, state.epoch), {**state.state_dict(), **run.identity})
    # The best epoch's checkpoint stays: best.pt can always be rebuilt from it.
    prune_epoch_checkpoints(run.paths, protect=state.best.epoch + 1, fingerprint=run.fingerprint)
    write_history(run.paths, state.history)
    return improved


def train(cfg: RunConfig, on_epoch: EpochCallback | None = None, stop_after_epochs: int | None = None) -> dict[str, Any]:
    """Train (or resume) the student of run `cfg.name`; returns the summary of the best epoch."""
    t = cfg.train
    run, state = setup(cfg)
    if t.resume:
        resume(run, state)
    epochs_run = 0
    while state.epoch < t.epochs and not stopped_early(state.stale_epochs, t):
        if stop_after_epochs is not None and epochs_run >= stop_after_epochs:
            break
        started = time.perf_counter()
        record = run_epoch(run, state)
        improved = select_and_save(run, state, record, started)  # completes the record: val_SumR, seconds
        epochs_run += 1
        log.info("epoch %d: loss %.4f, distill weight %.4f, val SumR %.2f%s", record["epoch"], record["loss"],
                 record["distill_weight"], record["val_SumR"], " (best)" if improved else "")
        if on_epoch:
            on_epoch({**record, "epochs": t.epochs, "best_epoch": state.best.epoch,
                      "early_stopped": stopped_early(state.stale_epochs, t)})
    if state.best.epoch < 0:
        raise CheckpointError(f"run {cfg.name}: no epoch was trained")
    return {"run": cfg.name, "best_epoch": state.best.epoch, "best_val_SumR": state.best.metric,
            "epochs_done": len(state.history), "early_stopped": stopped_early(state.stale_epochs, t),
            "history": state.history, "checkpoint": str(best_checkpoint(run.paths))}
