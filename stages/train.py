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
from dataclasses import asdict
from typing import Any, Callable

import torch

from configs.schema import RunConfig, TrainConfig
from stages.data import SplitData, as_float32, load_split
from stages.prefetch import prefetched
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


def teacher_batch_scores(batch: dict[str, torch.Tensor], teachers: list[str], scale: float) -> torch.Tensor:
    """(Q, B) teachers' query-video scores in the batch: max over valid frames of the cosine, times
    `scale`, averaged over teachers."""
    mask = batch["video_mask"]  # (B, T)
    scores = []
    for key in teachers:
        cos = torch.einsum("qd,btd->qbt", batch[f"teacher_sentences:{key}"], batch[f"teacher_frames:{key}"])
        scores.append(cos.masked_fill(~mask.unsqueeze(0), float("-inf")).amax(-1) * scale)
    return torch.stack(scores).mean(0)


def batch_loss(model, batch: dict[str, torch.Tensor], t: TrainConfig, teachers: list[str], soft_teachers: list[str],
               weights, distill_weight: float, soft_shares: tuple[float, float],
               negatives: torch.Generator | None) -> tuple[torch.Tensor, dict[str, torch.Tensor | float]]:
    """One batch's DL-DKD loss (call inside autocast): each active branch's triplet + InfoNCE (soft
    targets with train.soft_infonce), plus the weighted distillation KL of the inheritance branch.
    Returns (loss, {"triplet", "infonce", "distill": detached float64 sums for the epoch record}):
    tensors, not Python floats, so that a GPU step waits for no host copy; summing them in float64
    gives the very numbers that summing their Python floats gave."""
    from models.losses import branch_loss, gather_positive, multi_teacher_kl

    branches = active_branches(t)
    outputs = {name: model.branch(name)(batch["video"], batch["video_mask"], batch["tokens"], batch["token_mask"])
               for name in branches}
    loss = torch.zeros((), device=batch["video"].device)
    sums: dict[str, torch.Tensor | float] = {"triplet": 0.0, "infonce": 0.0, "distill": 0.0}
    for name in branches:
        soft = None
        if t.soft_infonce:  # DL-DKD++: the teacher's in-batch scores, or the branch's own
            scores = (teacher_batch_scores(batch, soft_teachers, t.soft_teacher_scale)
                      if name == "inheritance" else outputs[name].video_dot)
            soft = (scores, *soft_shares)
        parts = branch_loss(outputs[name], batch["query_video"], weights, negatives, soft)
        loss = loss + parts["total"]
        sums["triplet"] = sums["triplet"] + parts["triplet"].detach().double()
        sums["infonce"] = sums["infonce"] + parts["infonce"].detach().double()
    if teachers:
        student_pos = gather_positive(outputs["inheritance"].frame_cos, batch["query_video"])
        mask = batch["video_mask"][batch["query_video"]]
        kl = multi_teacher_kl(student_pos.float(), [batch[f"teacher:{k}"] for k in teachers], mask,
                              t.distill_temperature)
        loss = loss + distill_weight * kl
        sums["distill"] = sums["distill"] + kl.detach().double()
    return loss, sums


def loss_weights(t: TrainConfig):
    """The task losses' settings of a train config (the one place that maps the config's names)."""
    from models.losses import LossWeights

    return LossWeights(infonce=t.infonce_weight, triplet_margin=t.margin, hard_pool=t.hard_pool)


def half_batch(data: SplitData) -> Callable[[Any], dict[str, torch.Tensor]]:
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


def _rng_state(gens: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state(), **{k: g.get_state() for k, g in gens.items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def _restore_rng(state: dict[str, torch.Tensor], gens: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    for k, g in gens.items():
        g.set_state(state[k])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def train(cfg: RunConfig, on_epoch: EpochCallback | None = None, stop_after_epochs: int | None = None) -> dict[str, Any]:
    """Train (or resume) the student of run `cfg.name`; returns the summary of the best epoch."""
    from models.clip import resolve_device
    from models.schedules import distillation_weight, soft_label_weights
    from models.student import DLDKDStudent
    from stages.evaluate import evaluate_student

    t = cfg.train
    device = torch.device(resolve_device(t.device))
    paths = RunPaths.of(cfg.runs_dir, cfg.name).make()
    write_resolved_config(paths, cfg.model_dump(mode="json"))
    store = FeatureStore(cfg.store)
    teachers = distilled_teachers(cfg)
    require_teachers(cfg, store, teachers)
    # DL-DKD++: the inheritance branch's soft InfoNCE targets come from the teachers' in-batch scores.
    soft_teachers = teachers if t.soft_infonce else []
    train_data = load_split(cfg, "train", teachers, store, teacher_views=soft_teachers)
    val_data = load_split(cfg, "val", (), store) if store.has_text_split("val") else None
    data_fp = data_fingerprint(store, teachers)
    model_cfg = student_config(cfg, train_data)
    # The student's shapes too: a checkpoint of other shapes is refused with a reason, not a load error.
    config_fp = config_fingerprint(t, data_fp, asdict(model_cfg))
    # What the fingerprint is made of, kept in every checkpoint: evaluation names what changed since.
    trained_on = {"store_commits": store.commit_fingerprints(), "teachers": teachers, "train_config": t.model_dump(),
                  "branch": eval_branch(t)}

    torch.manual_seed(t.seed)
    gens = {"shuffle": torch.Generator().manual_seed(t.seed + 1), "negatives": torch.Generator().manual_seed(t.seed + 2)}
    model = DLDKDStudent(model_cfg).to(device)
    steps_per_epoch = math.ceil(len(train_data.video_ids) / t.batch_videos)
    total_steps = steps_per_epoch * t.epochs
    optimizer, lr_factor = make_optimizer(model, t, total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    use_amp = t.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    weights = loss_weights(t)

    start_epoch, step, history = 0, 0, []
    # -inf, not -1: without a validation split the metric is minus the training loss, which may be below -1.
    best = {"metric": float("-inf"), "epoch": -1}
    stale_epochs = 0
    if t.resume:
        found = newest_loadable(paths)
        if found is not None:
            path, state = found
            if state.get("config_fingerprint") != config_fp:
                from stages.trained import stale_reasons

                changed = changed_train_keys(state.get("train_config", {}), t.model_dump())
                raise CheckpointError(
                    f"{path} was written by an incompatible config "
                    f"(changed: {changed or '; '.join(stale_reasons(cfg, store, state))}); "
                    f"use another run name, or --set train.resume=false to start over")
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            _restore_rng(state["rng"], gens)
            start_epoch, step, history = state["epoch"], state["step"], list(state["history"])
            best, stale_epochs = dict(state["best"]), state["stale_epochs"]
            log.info("resuming %s from %s (epoch %d done)", cfg.name, path.name, start_epoch)
    done_early = stopped_early(stale_epochs, t)
    n_videos = len(train_data.video_ids)
    epochs_run = 0
    for epoch in range(start_epoch, t.epochs):
        if done_early or (stop_after_epochs is not None and epochs_run >= stop_after_epochs):
            break
        started = time.perf_counter()
        model.train()
        w = distillation_weight(t.schedule, epoch, total_epochs=t.epochs, base=t.schedule_base, increasing=t.increasing)
        alpha, beta = soft_label_weights(t.soft_schedule, epoch, t.epochs, t.soft_alpha, t.soft_beta)
        order = torch.randperm(n_videos, generator=gens["shuffle"]).numpy()
        sums = {"loss": 0.0, "triplet": 0.0, "infonce": 0.0, "distill": 0.0}
        # A lone video has no negatives.
        batches = [b for b in (order[i:i + t.batch_videos] for i in range(0, n_videos, t.batch_videos)) if len(b) >= 2]
        # float16 in the queue and on the way to the device; float32 where the model reads it.
        for batch in map(as_float32, prefetched(half_batch(train_data), batches, t.prefetch, device)):
            autocast = torch.autocast("cuda", dtype=torch.float16) if use_amp else contextlib.nullcontext()
            with autocast:
                loss, parts = batch_loss(model, batch, t, teachers, soft_teachers, weights, w, (alpha, beta),
                                         gens["negatives"])
            for k, v in parts.items():
                sums[k] = sums[k] + v
            optimizer_step(loss, optimizer, scaler)
            scheduler.step()
            step += 1
            sums["loss"] = sums["loss"] + loss.detach().double()  # read once per epoch: no sync per step
        record: dict[str, Any] = {"epoch": epoch, "step": step, "distill_weight": w if teachers else 0.0,
                                  **({"soft_alpha": alpha, "soft_beta": beta} if t.soft_infonce else {}),
                                  "lr": optimizer.param_groups[0]["lr"],
                                  **{("loss" if k == "loss" else f"loss_{k}"): float(v) / steps_per_epoch
                                     for k, v in sums.items()}}
        if val_data is not None:
            val_metrics, _ = evaluate_student(model, val_data, eval_branch(t), device=device)
            record["val_SumR"] = val_metrics["SumR"]
        else:  # no validation split: select on the training loss instead
            record["val_SumR"] = -record["loss"]
        improved = record["val_SumR"] > best["metric"]
        if improved:
            best = {"metric": record["val_SumR"], "epoch": epoch}
            stale_epochs = 0
        else:
            stale_epochs += 1
        done_early = stopped_early(stale_epochs, t)
        record["seconds"] = time.perf_counter() - started
        history.append(record)
        if improved:
            save_checkpoint(best_checkpoint(paths), {
                "format": CHECKPOINT_FORMAT, "model": model.state_dict(), "epoch": epoch, "metric": best["metric"],
                "student_config": asdict(model_cfg), "config_fingerprint": config_fp, **trained_on})
        save_checkpoint(epoch_checkpoint(paths, epoch + 1), {
            "format": CHECKPOINT_FORMAT, "epoch": epoch + 1, "step": step, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "rng": _rng_state(gens), "best": best, "stale_epochs": stale_epochs, "history": history,
            "config_fingerprint": config_fp, **trained_on, "student_config": asdict(model_cfg)})
        # The best epoch's checkpoint stays: best.pt can always be rebuilt from it.
        prune_epoch_checkpoints(paths, protect=best["epoch"] + 1, fingerprint=config_fp)
        write_history(paths, history)
        epochs_run += 1
        log.info("epoch %d: loss %.4f, distill weight %.4f, val SumR %.2f%s", epoch, record["loss"],
                 record["distill_weight"], record["val_SumR"], " (best)" if improved else "")
        if on_epoch:
            on_epoch({**record, "epochs": t.epochs, "best_epoch": best["epoch"], "early_stopped": done_early})
    if best["epoch"] < 0:
        raise CheckpointError(f"run {cfg.name}: no epoch was trained")
    return {"run": cfg.name, "best_epoch": best["epoch"], "best_val_SumR": best["metric"], "epochs_done": len(history),
            "early_stopped": done_early, "history": history, "checkpoint": str(best_checkpoint(paths))}
