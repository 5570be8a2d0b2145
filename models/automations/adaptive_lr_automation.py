"""An LR multiplier on top of the configured scheduler, driven by the training-loss curve."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import Field

from models.automations.base import Automation
from utils.options import OptionsError
from utils.registry import AUTOMATION_REGISTRY
from utils.steps import Step

if TYPE_CHECKING:
    from models.context import TrainingContext

Strategy = Literal["cosine", "exponential", "plateau"]
_CODES = {"cosine": 0.0, "exponential": 1.0, "plateau": 2.0}  # the strategy as a TensorBoard scalar


def fit_curve(points: list[tuple[int, float]]) -> tuple[float, float]:
    """``(drop, noise)`` of logged losses ``(iteration, loss)``: a least-squares line through them;
    ``drop`` = how much the line falls from the first to the last point, relative to the mean loss
    (0.1 = 10 %); ``noise`` = the root-mean-square distance of the points from the line, relative
    to the mean loss."""
    n = len(points)
    mi = sum(i for i, _ in points) / n
    mx = sum(x for _, x in points) / n
    sii = sum((i - mi) ** 2 for i, _ in points)
    slope = sum((i - mi) * (x - mx) for i, x in points) / sii if sii > 0 else 0.0
    rms = math.sqrt(sum((x - (mx + slope * (i - mi))) ** 2 for i, x in points) / n)
    scale = abs(mx) if mx != 0 else math.inf  # a zero loss has nothing left to improve
    # + 0.0 turns the -0.0 of a flat line into 0.0 for the log
    return -slope * (points[-1][0] - points[0][0]) / scale + 0.0, rms / scale


@AUTOMATION_REGISTRY.register("intelligent_learning_rate_scheduler")
class AdaptiveLR(Automation):
    """Scale optimiser ``optimizer``'s LR by a multiplier ``m`` on top of ``train.scheduler``.

    The LR of a step is the scheduled LR (warm-up, milestones, ...) times ``m``; ``m`` never leaves
    ``[min_lr_factor, max_lr_factor]`` and no strategy ever raises it (so ``max_lr_factor`` above 1
    changes nothing; below 1 it caps the LR from the decision start).

    **When.** Decisions are taken only at logging steps (``logger.print_freq``, where the loop hands
    over ``logs``), from the first of those at or after ``max(start, train.scheduler.warmup_iter)``:
    the *decision start* ``t0``, where ``m`` = ``clamp(1)``. ``m`` changes at most once per
    ``cooldown`` iterations (counted from ``t0`` and from each change). ``T`` = ``train.total_iter``.

    **Loss.** Each logging step's ``losses/total`` (already the mean over the steps since the last
    log) is an observation ``x``; observations before ``t0`` are ignored. The smoothed loss is
    ``s = x`` at the first observation, then ``s += smoothing * (x - s)``.

    **Strategies**, each a *segment* starting at iteration ``ts`` with multiplier ``ms``
    (``ts = t0``, ``ms = clamp(1)`` for a fixed strategy; the iteration and the current ``m`` of a
    switch for ``adaptive``); with ``f = min(1, (it - ts) / (T - ts))``, ``lo = min_lr_factor``:

    - ``cosine``: ``m = lo + (ms - lo) * (1 + cos(pi * f)) / 2``, a half cosine down to ``lo`` at ``T``;
    - ``exponential``: ``m = ms * (lo / ms) ** f``, a geometric decay reaching ``lo`` at ``T``;
    - ``plateau``: ``m`` stays; when ``s`` has not fallen below ``best - threshold * |best|`` for
      ``patience`` iterations (``best``: the lowest ``s`` counted as an improvement, from the segment
      start), ``m = max(m * factor, lo)`` and the patience clock restarts.

    The decaying strategies are sampled at the allowed decision steps, so ``m`` is a staircase.

    **adaptive** measures the curve over the last ``window`` iterations: the raw observations
    ``(it, x)`` with ``it > now - window`` are fitted by a least-squares line; ``drop`` is the line's
    fall across those points relative to their mean loss, ``noise`` the RMS residual relative to the
    mean loss (see :func:`fit_curve`). Once ``window`` iterations have passed since ``t0`` (and at
    least 3 points exist), and then at most every ``cooldown`` iterations, it picks:

    - ``plateau`` when ``drop <= threshold`` or ``drop <= noise`` (stalled, or the fall is within the noise);
    - else ``cosine`` when ``drop >= fast_threshold`` (still improving fast: keep the LR high longer);
    - else ``exponential`` (improving slowly but steadily).

    Until the first pick ``m`` stays ``clamp(1)``. Each switch is logged with ``drop`` and ``noise``
    and starts a new segment from the current ``m``, so the LR never jumps up.

    TensorBoard: ``automation/<name>/lr_multiplier`` at each change; ``.../drop``, ``.../noise`` and
    ``.../strategy`` (0 cosine, 1 exponential, 2 plateau) at each switch.

    Args:
        strategy: ``adaptive`` (picks one of the others from the loss curve, switching as it changes) or a
            fixed ``cosine``, ``exponential`` or ``plateau``.
        optimizer: key of the optimiser whose LR is scaled: ``g`` (generator) or ``d`` (discriminator).
        max_lr_factor: upper bound of ``m`` (> 0); ``m`` starts at 1 and never rises, so only a value below 1
            has an effect: it caps the LR from the decision start.
        min_lr_factor: lower bound of ``m`` (> 0, ≤ ``max_lr_factor``); ``cosine`` and ``exponential`` reach it
            at ``train.total_iter``.
        cooldown: least iterations between two changes of ``m`` (and between two of ``adaptive``'s picks).
        patience: ``plateau``: iterations without the smoothed loss improving by ``threshold`` before ``m``
            is multiplied by ``factor``.
        factor: ``plateau``: multiplier of ``m`` at each reduction, in (0, 1).
        threshold: relative loss improvement that counts (≥ 0; 0.01 = 1 %): ``plateau``'s margin
            ``threshold * |best|``; ``adaptive`` picks ``plateau`` when the fitted drop is at most this (or at
            most the noise).
        start: no decision before this iteration (nor before ``train.scheduler.warmup_iter``).
        smoothing: weight of a new observation in the smoothed loss ``s += smoothing * (x - s)``, in (0, 1]
            (1: no smoothing).
        window: ``adaptive``: iterations of loss history fitted by a line, and the wait after the decision
            start before the first pick (≥ 1).
        fast_threshold: ``adaptive``: a relative drop over ``window`` at or above this picks ``cosine``
            (still improving fast); below it (but above ``threshold`` and the noise) ``exponential``.
    """

    def __init__(
        self,
        strategy: Literal["adaptive", "cosine", "exponential", "plateau"] = "adaptive",
        optimizer: str = "g",
        max_lr_factor: Annotated[float, Field(gt=0)] = 1.0,
        min_lr_factor: Annotated[float, Field(gt=0)] = 0.01,
        cooldown: Annotated[Step, Field(ge=0)] = 1000,
        patience: Annotated[Step, Field(ge=1)] = 2000,
        factor: Annotated[float, Field(gt=0, lt=1)] = 0.5,
        threshold: Annotated[float, Field(ge=0)] = 0.01,
        start: Annotated[Step, Field(ge=0)] = 0,
        smoothing: Annotated[float, Field(gt=0, le=1)] = 0.3,
        window: Annotated[Step, Field(ge=1)] = 2000,
        fast_threshold: Annotated[float, Field(gt=0)] = 0.1,
    ) -> None:
        if min_lr_factor > max_lr_factor:
            raise ValueError(f"min_lr_factor ({min_lr_factor}) must not exceed max_lr_factor ({max_lr_factor})")
        self.strategy, self.optimizer = strategy, optimizer
        self.lo, self.hi = min_lr_factor, max_lr_factor
        self.cooldown, self.patience, self.factor, self.threshold = cooldown, patience, factor, threshold
        self.start, self.smoothing, self.window, self.fast_threshold = start, smoothing, window, fast_threshold
        self.warmup_iter, self.total = 0, 0
        # progress (the state): None until the decision start
        self.t0: int | None = None
        self.m = 1.0
        self.active: Strategy | None = None
        self.seg_start, self.seg_m = 0, 1.0
        self.last_change, self.last_eval = 0, 0
        self.smoothed: float | None = None
        self.best: float | None = None
        self.best_iter = 0
        self.history: list[tuple[int, float]] = []
        self._since = 0  # for the log: where the patience clock of the last reduction started

    def clamp(self, m: float) -> float:
        return min(max(m, self.lo), self.hi)

    # ----------------------------------------------------------------- hooks

    def on_train_start(self, ctx: TrainingContext) -> None:
        if self.optimizer not in ctx.optimizers:
            raise OptionsError(ctx.opt.source, [(f"train.training_automations.{self.name}.optimizer",
                                                 f"no optimiser '{self.optimizer}'; the runner has: "
                                                 f"{', '.join(ctx.optimizers)}")])
        sched = ctx.opt.train.scheduler or {}
        self.warmup_iter = int(sched.get("warmup_iter", 0) or 0)
        self.total = ctx.total_iter

    def on_step_end(self, ctx: TrainingContext, logs: dict[str, float] | None) -> None:
        it = ctx.iteration
        if logs is None or it < max(self.start, self.warmup_iter):
            return  # only logging steps decide; none before warm-up ends or before `start`
        self._observe(it, logs.get(ctx.loss_log_key()))
        if self.t0 is None:
            self._begin(ctx, it)
        if self.strategy == "adaptive" and it - self.last_eval >= self.cooldown and it - self.t0 >= self.window:
            self._choose(ctx, it)
        target = self.clamp(self._target(it))
        if not math.isclose(target, self.m, rel_tol=1e-9) and it - self.last_change >= self.cooldown:
            self._set(ctx, it, target, self._why(it))

    # -------------------------------------------------------------- the rule

    def _observe(self, it: int, x: float | None) -> None:
        if x is None or not math.isfinite(x):
            return
        self.smoothed = x if self.smoothed is None else self.smoothed + self.smoothing * (x - self.smoothed)
        self.history = [(i, v) for i, v in self.history if i > it - self.window] + [(it, float(x))]

    def _begin(self, ctx: TrainingContext, it: int) -> None:
        self.t0 = self.last_change = self.last_eval = it
        if self.strategy == "adaptive":
            ctx.report(self.name, f"decisions start; measuring the loss curve for {self.window} iterations")
        else:
            self._segment(it, self.strategy, self.clamp(1.0))
            ctx.report(self.name, f"decisions start with strategy {self.strategy}")
        m = self.clamp(1.0)
        if m != self.m:
            self._set(ctx, it, m, f"clamped into [{self.lo:g}, {self.hi:g}]")

    def _segment(self, it: int, strategy: Strategy, m: float) -> None:
        self.active, self.seg_start, self.seg_m = strategy, it, m
        self.best, self.best_iter = self.smoothed, it  # plateau's patience counts from the segment start

    def _choose(self, ctx: TrainingContext, it: int) -> None:
        if len(self.history) < 3:
            return
        self.last_eval = it
        drop, noise = fit_curve(self.history)
        if drop <= self.threshold or drop <= noise:
            pick: Strategy = "plateau"
            why = f"stalled: drop {drop:.2%} <= max(threshold {self.threshold:.2%}, noise {noise:.2%})"
        elif drop >= self.fast_threshold:
            pick, why = "cosine", f"improving fast: drop {drop:.2%} >= fast_threshold {self.fast_threshold:.2%}"
        else:
            pick, why = "exponential", f"improving steadily: drop {drop:.2%} above the noise {noise:.2%}"
        if pick == self.active:
            return
        old = self.active or "none"
        self._segment(it, pick, self.m)
        span = self.history[-1][0] - self.history[0][0]
        ctx.report(self.name, f"strategy {old} -> {pick} ({why}; loss fitted over {len(self.history)} logs, "
                   f"{span} iterations; multiplier {self.m:.4g})",
                   {f"automation/{self.name}/drop": drop, f"automation/{self.name}/noise": noise,
                    f"automation/{self.name}/strategy": _CODES[pick]})

    def _target(self, it: int) -> float:
        if self.active is None:
            return self.m
        span = self.total - self.seg_start
        f = 1.0 if span <= 0 else min(1.0, (it - self.seg_start) / span)
        if self.active == "cosine":
            return self.lo + (self.seg_m - self.lo) * 0.5 * (1.0 + math.cos(math.pi * f))
        if self.active == "exponential":
            return self.seg_m * (self.lo / self.seg_m) ** f if self.seg_m > self.lo else self.seg_m
        return self._plateau(it)

    def _plateau(self, it: int) -> float:
        s = self.smoothed
        if s is None:
            return self.m
        if self.best is None or s < self.best - self.threshold * abs(self.best):
            self.best, self.best_iter = s, it
            return self.m
        if it - self.best_iter >= self.patience and it - self.last_change >= self.cooldown and self.m > self.lo:
            self._since, self.best_iter = self.best_iter, it  # the next reduction needs another full patience
            return self.m * self.factor
        return self.m

    def _why(self, it: int) -> str:
        if self.active == "plateau":
            return (f"plateau: smoothed loss {self.smoothed:.4g} has not fallen {self.threshold:.2%} below "
                    f"{self.best:.4g} since iteration {self._since} (patience {self.patience})")
        return f"{self.active} from {self.seg_m:.4g} at iteration {self.seg_start} to {self.lo:g} at {self.total}"

    def _set(self, ctx: TrainingContext, it: int, m: float, why: str) -> None:
        old, self.m, self.last_change = self.m, m, it
        ctx.set_lr_multiplier(self.optimizer, m)
        ctx.report(self.name, f"LR multiplier {old:.4g} -> {m:.4g} ({why})",
                   {f"automation/{self.name}/lr_multiplier": m})

    # ----------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        return {"t0": self.t0, "m": self.m, "active": self.active, "seg_start": self.seg_start,
                "seg_m": self.seg_m, "last_change": self.last_change, "last_eval": self.last_eval,
                "smoothed": self.smoothed, "best": self.best, "best_iter": self.best_iter,
                "history": [list(p) for p in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.t0, self.m, self.active = state["t0"], float(state["m"]), state["active"]
        self.seg_start, self.seg_m = int(state["seg_start"]), float(state["seg_m"])
        self.last_change, self.last_eval = int(state["last_change"]), int(state["last_eval"])
        self.smoothed, self.best, self.best_iter = state["smoothed"], state["best"], int(state["best_iter"])
        self.history = [(int(i), float(x)) for i, x in state["history"]]
