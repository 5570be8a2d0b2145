"""Learning-rate schedules, stepped once per optimiser step, with an optional linear warm-up."""

from __future__ import annotations

import bisect
import math

import torch

from utils.registry import SCHEDULER_REGISTRY
from utils.steps import Step


class _FactorSchedule:
    """Sets each group's LR to ``initial_lr * factor(step)``; only the step count is state."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_iter: int, warmup_start_factor: float) -> None:
        if not 0.0 <= warmup_start_factor <= 1.0:
            raise ValueError(f"warmup_start_factor must be in [0, 1], got {warmup_start_factor}")
        self.optimizer = optimizer
        self.warmup_iter = warmup_iter
        self.warmup_start_factor = warmup_start_factor
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.last_step = 0
        self._apply()

    def decay_factor(self, step: int) -> float:
        raise NotImplementedError

    def factor(self, step: int) -> float:
        if step < self.warmup_iter:
            frac = step / self.warmup_iter
            return self.warmup_start_factor + (1.0 - self.warmup_start_factor) * frac
        return self.decay_factor(step)

    def lr_at(self, initial_lr: float, step: int) -> float:
        return initial_lr * self.factor(step)

    def _apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(group["initial_lr"], self.last_step)

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        self.last_step = int(state["last_step"])
        self._apply()


@SCHEDULER_REGISTRY.register()
class MultiStepLR(_FactorSchedule):
    """Multiply the LR by ``gamma`` at each milestone."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        milestones: list[Step],
        gamma: float = 0.5,
        warmup_iter: Step = 0,
        warmup_start_factor: float = 0.1,
    ) -> None:
        self.milestones = sorted(milestones)
        self.gamma = gamma
        super().__init__(optimizer, warmup_iter, warmup_start_factor)

    def decay_factor(self, step: int) -> float:
        return self.gamma ** bisect.bisect_right(self.milestones, step)


@SCHEDULER_REGISTRY.register()
class CosineAnnealingLR(_FactorSchedule):
    """Linear warm-up, then a half cosine from the base LR down to ``eta_min`` at ``total_iter``."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_iter: Step,
        eta_min: float = 1e-7,
        warmup_iter: Step = 0,
        warmup_start_factor: float = 0.1,
    ) -> None:
        if warmup_iter >= total_iter:
            raise ValueError(f"warmup_iter ({warmup_iter}) must be below total_iter ({total_iter})")
        self.total_iter = total_iter
        self.eta_min = eta_min
        super().__init__(optimizer, warmup_iter, warmup_start_factor)

    def decay_factor(self, step: int) -> float:
        span = self.total_iter - self.warmup_iter
        t = min(max(step - self.warmup_iter, 0), span) / span
        return 0.5 * (1.0 + math.cos(math.pi * t))

    def lr_at(self, initial_lr: float, step: int) -> float:
        if step < self.warmup_iter:
            return initial_lr * self.factor(step)
        # eta_min is an absolute LR floor, the same for every parameter group.
        floor = min(self.eta_min, initial_lr)
        return floor + (initial_lr - floor) * self.decay_factor(step)
