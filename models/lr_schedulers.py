"""Learning-rate schedules on torch's ``LRScheduler``: stepped once per optimiser step, with an optional
linear warm-up.

Every schedule here is closed form: at each step a group's LR is recomputed as
``schedule(initial_lr, step) * group.get("lr_scale", 1.0)`` instead of being multiplied from the previous
LR. That keeps long runs exact and lets outside code (training automations) rescale a group through
``lr_scale`` without the next ``step()`` undoing it.

Besides ``step()``, every scheduler has ``observe(value, higher_is_better, iteration)``, which the runner
calls after each validation with the monitored metric (``monitor``, or the first metric when it is None).
Only :class:`ReduceLROnPlateau` acts on it.
"""

from __future__ import annotations

import bisect
import math
from typing import Any, Literal

import torch
from torch.optim.lr_scheduler import LRScheduler

from utils.registry import SCHEDULER_REGISTRY
from utils.steps import Step


class _ClosedFormLR(LRScheduler):
    """Sets each group's LR to ``schedule_lr(initial_lr, step) * lr_scale``; ``last_epoch`` counts steps."""

    monitor: str | None = None  # the validation metric ``observe`` wants; None: the first one

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_iter: int, warmup_start_factor: float) -> None:
        if not 0.0 <= warmup_start_factor <= 1.0:
            raise ValueError(f"warmup_start_factor must be in [0, 1], got {warmup_start_factor}")
        self.warmup_iter = warmup_iter
        self.warmup_start_factor = warmup_start_factor
        # Sets group["initial_lr"] and performs the initial step, to step 0.
        super().__init__(optimizer)

    def decayed_lr(self, initial_lr: float, step: int) -> float:
        """The LR once warm-up is over."""
        raise NotImplementedError

    def schedule_lr(self, initial_lr: float, step: int) -> float:
        """The unscaled LR of a group starting at ``initial_lr``, at ``step``."""
        if step < self.warmup_iter:
            frac = step / self.warmup_iter
            return initial_lr * (self.warmup_start_factor + (1.0 - self.warmup_start_factor) * frac)
        return self.decayed_lr(initial_lr, step)

    def get_lr(self) -> list[float]:
        # Called by LRScheduler.step() after it has advanced last_epoch.
        return [
            self.schedule_lr(group["initial_lr"], self.last_epoch) * group.get("lr_scale", 1.0)
            for group in self.optimizer.param_groups
        ]

    def step(self, epoch: int | None = None) -> None:
        """Advance one iteration. The LR is a function of the step alone, so stepping while the
        optimiser skipped (a discriminator waiting out the generator's pre-training) is right, and
        torch's "step() before optimizer.step()" warning does not apply."""
        if epoch is not None:
            raise ValueError("closed-form schedulers count steps themselves; step() takes no epoch")
        self._step_count += 1
        self.last_epoch += 1
        self._apply()

    def _apply(self) -> None:
        """Set the groups' LRs for the current step without advancing it (after a load or a reduction)."""
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            group["lr"] = lr
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def observe(self, value: float, higher_is_better: bool, iteration: int) -> None:
        """A validation result of the monitored metric; fixed schedules ignore it."""

    @property
    def reductions(self) -> int:
        """How many times ``observe`` has lowered the LR (always 0 for fixed schedules)."""
        return 0

    def state_dict(self) -> dict[str, Any]:
        # Only progress is saved: on resume the hyper-parameters come from the option file, so an edited
        # schedule takes effect. "last_step" is the key older checkpoints were written with.
        return {"last_step": self.last_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.last_epoch = int(state_dict["last_step"])
        self._apply()


@SCHEDULER_REGISTRY.register()
class MultiStepLR(_ClosedFormLR):
    """Multiply the LR by ``gamma`` at each milestone.

    Args:
        optimizer: the optimiser whose LR is scheduled; passed by the trainer.
        milestones: iterations (e.g. ``[200000, 0.75T]``) at each of which the LR is multiplied by ``gamma``.
        gamma: factor applied to the LR at each milestone (0.5 halves it).
        warmup_iter: iterations of linear warm-up from ``warmup_start_factor`` x the LR up to the LR; 0: none.
        warmup_start_factor: share of the LR at iteration 0 of the warm-up, in [0, 1].
    """

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

    def decayed_lr(self, initial_lr: float, step: int) -> float:
        return initial_lr * self.gamma ** bisect.bisect_right(self.milestones, step)


@SCHEDULER_REGISTRY.register()
class CosineAnnealingLR(_ClosedFormLR):
    """Linear warm-up, a half cosine down to a floor, and optionally a final low-LR phase.

    LR of a group whose base LR is ``L`` (its ``initial_lr``: ``optim_g.lr``, or ``train.lr_trunk`` /
    ``lr_tail`` for a staged run's group), at step ``s``, with ``W = warmup_iter``,
    ``f0 = warmup_start_factor`` and ``E`` the step the cosine ends at (``final_phase_start`` when set,
    else ``total_iter``):

    - ``s < W``: ``L * (f0 + (1 - f0) * s / W)``;
    - ``W <= s < E`` (and after ``total_iter`` without a final phase):
      ``floor + (L - floor) * (1 + cos(pi * t)) / 2`` with ``t = min(s - W, E - W) / (E - W)``, where
      ``floor = L * eta_min_factor`` when that is set, else ``min(eta_min, L)`` (an absolute floor,
      never above the group's own LR);
    - ``s >= final_phase_start``: ``L * final_min_lr_factor``, to the end of the run;

    times ``group.get("lr_scale", 1.0)`` in every case. With ``eta_min_factor`` every group follows
    the same curve relative to its own base LR, so a trunk and a tail group keep their ratio.

    Args:
        optimizer: the optimiser whose LR is scheduled; passed by the trainer.
        total_iter: iteration at which the cosine reaches its floor (the LR stays there after it), when there is
            no final phase.
        eta_min: absolute LR floor of the cosine, shared by every parameter group (never above a group's own LR);
            null: 1e-7, unless ``eta_min_factor`` is set. Not with ``eta_min_factor``.
        eta_min_factor: floor of the cosine relative to each group's base LR (e.g. 0.01); null: ``eta_min``.
        warmup_iter: iterations of linear warm-up from ``warmup_start_factor`` x the LR up to the LR (below
            ``total_iter``); 0: none.
        warmup_start_factor: share of the LR at iteration 0 of the warm-up, in [0, 1].
        final_phase_start: iteration (e.g. ``0.9T``) from which the LR is the base LR times
            ``final_min_lr_factor``; the cosine then reaches its floor at this iteration instead of at
            ``total_iter``. Null: no final phase. Above ``warmup_iter``, at most ``total_iter``.
        final_min_lr_factor: the final phase's LR relative to each group's base LR, in [0, 1]; set together with
            ``final_phase_start``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_iter: Step,
        eta_min: float | None = None,
        eta_min_factor: float | None = None,
        warmup_iter: Step = 0,
        warmup_start_factor: float = 0.1,
        final_phase_start: Step | None = None,
        final_min_lr_factor: float | None = None,
    ) -> None:
        if warmup_iter >= total_iter:
            raise ValueError(f"warmup_iter ({warmup_iter}) must be below total_iter ({total_iter})")
        if eta_min is not None and eta_min_factor is not None:
            raise ValueError(f"set eta_min ({eta_min}, an absolute LR) or eta_min_factor ({eta_min_factor}, relative "
                             "to each group's LR), not both")
        if eta_min_factor is not None and not 0.0 <= eta_min_factor <= 1.0:
            raise ValueError(f"eta_min_factor must be in [0, 1], got {eta_min_factor}")
        _check_final_phase(final_phase_start, final_min_lr_factor, warmup_iter, total_iter)
        self.total_iter = total_iter
        self.eta_min = 1e-7 if eta_min is None and eta_min_factor is None else eta_min
        self.eta_min_factor = eta_min_factor
        self.final_phase_start = final_phase_start
        self.final_min_lr_factor = final_min_lr_factor
        super().__init__(optimizer, warmup_iter, warmup_start_factor)

    def floor(self, initial_lr: float) -> float:
        """The cosine's end value for a group starting at ``initial_lr``."""
        if self.eta_min_factor is not None:
            return initial_lr * self.eta_min_factor
        return min(self.eta_min, initial_lr)

    def decayed_lr(self, initial_lr: float, step: int) -> float:
        if self.final_phase_start is not None and step >= self.final_phase_start:
            return initial_lr * self.final_min_lr_factor
        end = self.total_iter if self.final_phase_start is None else self.final_phase_start
        span = end - self.warmup_iter
        t = min(max(step - self.warmup_iter, 0), span) / span
        floor = self.floor(initial_lr)
        return floor + (initial_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def _check_final_phase(start: int | None, factor: float | None, warmup_iter: int, total_iter: int) -> None:
    """Both final-phase keys or neither; the phase after the warm-up and within the run."""
    if (start is None) != (factor is None):
        given, missing = ("final_phase_start", "final_min_lr_factor") if factor is None else (
            "final_min_lr_factor", "final_phase_start")
        raise ValueError(f"{given} needs {missing} too (the final phase's start and its LR factor go together)")
    if start is None:
        return
    if not warmup_iter < start <= total_iter:
        raise ValueError(f"final_phase_start ({start}) must be after warmup_iter ({warmup_iter}) and at most "
                         f"total_iter ({total_iter})")
    if not 0.0 <= factor <= 1.0:
        raise ValueError(f"final_min_lr_factor must be in [0, 1], got {factor}")


@SCHEDULER_REGISTRY.register()
class ReduceLROnPlateau(_ClosedFormLR):
    """Linear warm-up, then lower the LR by ``factor`` whenever the monitored metric stops improving.

    LR of a group, at step ``s``:

    - ``s < warmup_iter``: ``initial_lr * (warmup_start_factor + (1 - warmup_start_factor) * s / warmup_iter)``;
    - after: ``max(initial_lr * factor ** reductions, min(min_lr, initial_lr))`` -- ``min_lr`` is an
      absolute floor per group that never raises a group above its own ``initial_lr``;

    times ``group.get("lr_scale", 1.0)`` in both cases.

    ``observe(value, higher_is_better, iteration)``, called after each validation:

    - an improvement on the best value so far records it and its iteration. With ``threshold_mode: rel``
      the value must beat ``best`` by more than ``threshold * |best|`` (so negative metrics work too),
      with ``abs`` by more than ``threshold``; the first observation always counts as an improvement;
    - otherwise, once ``iteration - best_iter >= patience`` and not in cooldown
      (``iteration - last_reduction < cooldown``), the LR is reduced once: ``reductions`` grows by one,
      the new LR applies to the groups at once (not only at the next ``step()``), and the patience
      clock restarts at this iteration, so the next reduction needs another full ``patience``;
    - during warm-up (``iteration < warmup_iter``) observations only update the best value, never reduce;
    - when every group already sits at its floor a reduction would change nothing, so none is counted.

    ``patience`` and ``cooldown`` count iterations, not validations, so they do not change meaning when
    ``val.val_freq`` does. The scheduler logs nothing; the runner can log when ``reductions`` changes.

    Args:
        optimizer: the optimiser whose LR is scheduled; passed by the trainer.
        monitor: the ``val.metrics`` name whose score on the first validation set is watched; null: the
            first metric.
        factor: multiplier of the LR at each reduction, in (0, 1).
        patience: iterations (not validations) without an improvement before the LR is reduced (≥ 1).
        threshold: margin an improvement must exceed (≥ 0): relative (``threshold * |best|``) or absolute,
            by ``threshold_mode``.
        threshold_mode: ``rel`` (the margin scales with the best value) or ``abs`` (a fixed margin).
        cooldown: iterations after a reduction during which no further reduction happens.
        min_lr: absolute LR floor per group (never above a group's own initial LR); at the floor no reduction
            is counted.
        warmup_iter: iterations of linear warm-up from ``warmup_start_factor`` x the LR up to the LR; 0: none.
        warmup_start_factor: share of the LR at iteration 0 of the warm-up, in [0, 1].
    """

    watches_metric = True  # the option check requires val.metrics for it

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        monitor: str | None = None,
        factor: float = 0.5,
        patience: Step = 5000,
        threshold: float = 1e-4,
        threshold_mode: Literal["rel", "abs"] = "rel",
        cooldown: Step = 0,
        min_lr: float = 0.0,
        warmup_iter: Step = 0,
        warmup_start_factor: float = 0.1,
    ) -> None:
        if not 0.0 < factor < 1.0:
            raise ValueError(f"factor must be between 0 and 1 (exclusive) so that the LR goes down, got {factor}")
        if patience < 1:
            raise ValueError(f"patience must be at least 1 iteration, got {patience}")
        if cooldown < 0:
            raise ValueError(f"cooldown must be 0 or more iterations, got {cooldown}")
        if min_lr < 0:
            raise ValueError(f"min_lr must be 0 or more, got {min_lr}")
        if threshold < 0:
            raise ValueError(f"threshold must be 0 or more, got {threshold}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.monitor = monitor
        self.factor = factor
        self.patience = patience
        self.threshold = threshold
        self.threshold_mode = threshold_mode
        self.cooldown = cooldown
        self.min_lr = min_lr
        # Progress, saved in state_dict; set before super().__init__, whose initial step reads n_reductions.
        self.best: float | None = None
        self.best_iter = 0
        self.n_reductions = 0
        self.last_reduction: int | None = None
        super().__init__(optimizer, warmup_iter, warmup_start_factor)

    @property
    def reductions(self) -> int:
        return self.n_reductions

    def _floor(self, initial_lr: float) -> float:
        return min(self.min_lr, initial_lr)

    def decayed_lr(self, initial_lr: float, step: int) -> float:
        return max(initial_lr * self.factor**self.n_reductions, self._floor(initial_lr))

    def _improves(self, value: float, higher_is_better: bool) -> bool:
        if self.best is None:
            return True
        margin = self.threshold * abs(self.best) if self.threshold_mode == "rel" else self.threshold
        return value > self.best + margin if higher_is_better else value < self.best - margin

    def _cooling_down(self, iteration: int) -> bool:
        return self.last_reduction is not None and iteration - self.last_reduction < self.cooldown

    def _can_reduce(self) -> bool:
        # At the floor a reduction changes no LR; not counting it keeps `reductions` honest for the log.
        return any(
            g["initial_lr"] * self.factor**self.n_reductions > self._floor(g["initial_lr"])
            for g in self.optimizer.param_groups
        )

    def observe(self, value: float, higher_is_better: bool, iteration: int) -> None:
        """Record a validation result; reduce the LR when it has not improved for ``patience`` iterations."""
        value = float(value)  # a plain float, so checkpoints hold no tensors
        if self._improves(value, higher_is_better):
            self.best, self.best_iter = value, iteration
            return
        if iteration < self.warmup_iter:
            return  # the LR is still rising: a slow start is no plateau
        if iteration - self.best_iter < self.patience or self._cooling_down(iteration) or not self._can_reduce():
            return
        self.n_reductions += 1
        self.last_reduction = iteration
        self.best_iter = iteration  # the next reduction needs another full patience
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "best": self.best,
            "best_iter": self.best_iter,
            "n_reductions": self.n_reductions,
            "last_reduction": self.last_reduction,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict["best"]
        self.best_iter = int(state_dict["best_iter"])
        self.n_reductions = int(state_dict["n_reductions"])
        self.last_reduction = state_dict["last_reduction"]
        super().load_state_dict(state_dict)  # applies the LRs, which depend on n_reductions
