"""What a training continues from: the model, its optimizer, scheduler and grad scaler, every
random stream, and the record of the epochs done. Its `state_dict` is an epoch checkpoint's
content (with the run's identity beside it), and `load_state_dict` resumes from one.

On CPU a resumed run is the uninterrupted run: every random stream is in the state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class BestEpoch:
    """The epoch with the highest validation SumR so far (-inf before any: without a validation
    split the metric is minus the training loss, which may be below -1)."""

    metric: float = float("-inf")
    epoch: int = -1

    def as_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "epoch": self.epoch}


@dataclass
class TrainState:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    generators: dict[str, torch.Generator]  # shuffle, negatives
    epoch: int = 0  # epochs done
    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: BestEpoch = field(default_factory=BestEpoch)
    stale_epochs: int = 0  # epochs in a row without a gain

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng_state(self.generators), "best": self.best.as_dict(),
                "stale_epochs": self.stale_epochs, "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"], self.generators)
        self.epoch, self.step, self.history = state["epoch"], state["step"], list(state["history"])
        self.best = BestEpoch(**state["best"])
        self.stale_epochs = state["stale_epochs"]


def rng_state(generators: dict[str, torch.Generator]) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state(), **{k: g.get_state() for k, g in generators.items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def restore_rng(state: dict[str, torch.Tensor], generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    for k, g in generators.items():
        g.set_state(state[k])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))
