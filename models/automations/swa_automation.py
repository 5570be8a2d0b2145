"""Stochastic weight averaging: an equal-weight average of the generator's weights late in training."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from models.automations.base import Automation
from utils.registry import AUTOMATION_REGISTRY
from utils.steps import Step

if TYPE_CHECKING:
    from models.context import TrainingContext


def _tensors(net: nn.Module) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(float tensors, other tensors) of ``net``'s state, in a fixed order: parameters, then buffers."""
    floats, others = [], []
    for t in [*net.parameters(), *net.buffers()]:
        (floats if t.is_floating_point() else others).append(t.detach())
    return floats, others


@AUTOMATION_REGISTRY.register("swa")
class SWA(Automation):
    """Average the generator's weights with equal weights, from iteration ``start`` on.

    Written as ``train.swa: {start: 0.8T, update_every: 10, average: ema}``. At every iteration
    ``it >= start`` with ``(it - start) % update_every == 0`` the snapshot (the EMA weights with
    ``average: ema``, the live weights with ``live``; without EMA, ``ema`` falls back to the live
    weights and says so) is added to the running mean: after ``n`` snapshots the average is
    ``(w_1 + ... + w_n) / n`` for float parameters and buffers (computed as
    ``avg += (w_n - avg) / n`` on the device), while integer buffers hold the last snapshot's.

    At each validation once the average holds a snapshot, it is validated too, reported beside the
    EMA (``automation/swa/<metric>``, ``automation/swa/<metric>_vs_ema``) and proposed as the best
    weights: ``net_g_best`` becomes the average (metadata ``swa_promoted: true``) only when it beats
    the best value so far. At the end the average is written as ``net_g_swa_final`` (metadata: the
    snapshot count, first and last snapshot iterations, the source, the options).

    Args:
        start: iteration of the first snapshot, e.g. ``0.8T`` for the last fifth of the run.
        update_every: iterations between two snapshots, counted from ``start`` (≥ 1).
        average: which weights are averaged: ``ema`` (the EMA weights; the live ones when the run has no
            EMA) or ``live`` (the trained weights).
    """

    section: ClassVar[str | None] = "swa"

    def __init__(self, start: Step, update_every: Annotated[int, Field(ge=1)] = 1,
                 average: Literal["ema", "live"] = "ema") -> None:
        self.start, self.update_every, self.average = start, update_every, average
        self.net: nn.Module | None = None
        self._floats: list[torch.Tensor] = []
        self._others: list[torch.Tensor] = []
        self.source = average  # what is actually averaged ("live" when there is no EMA)
        self.has_ema = True  # whether the validated network (compared with) is an EMA
        # progress (the state)
        self.count = 0
        self.first: int | None = None
        self.last: int | None = None
        self._pending: dict[str, torch.Tensor] | None = None  # averaged weights loaded before the net exists
        self.compared: dict[str, dict[str, tuple[float, float]]] = {}  # last validation: (swa, ema)

    def _snapshot_net(self, ctx: TrainingContext) -> nn.Module:
        return ctx.eval_net() if self.source == "ema" else ctx.nets["net_g"]

    # ----------------------------------------------------------------- hooks

    def on_train_start(self, ctx: TrainingContext) -> None:
        self.has_ema = ctx.eval_net() is not ctx.nets["net_g"]
        if self.average == "ema" and not self.has_ema:
            self.source = "live"
            ctx.report(self.name, "average: ema, but the run has no EMA (train.ema_decay is 0): "
                       "averaging the live weights")
        # the average lives in a copy of the network on the training device
        self.net = copy.deepcopy(self._snapshot_net(ctx)).eval().requires_grad_(False)
        self._floats, self._others = _tensors(self.net)
        if self._pending is not None:
            self.net.load_state_dict(self._pending)
            self._pending = None
        ctx.report(self.name, f"averaging the {self.source} weights every {self.update_every} iterations from "
                   f"iteration {self.start} ({self.count} snapshots so far)")

    @torch.no_grad()
    def on_step_end(self, ctx: TrainingContext, logs: dict[str, float] | None) -> None:
        it = ctx.iteration
        if it < self.start or (it - self.start) % self.update_every:
            return
        floats, others = _tensors(self._snapshot_net(ctx))
        self.count += 1
        if self.count == 1:
            torch._foreach_copy_(self._floats, floats)  # exact copy (a lerp by 1 may round)
        else:
            torch._foreach_lerp_(self._floats, floats, 1.0 / self.count)
        if others:
            torch._foreach_copy_(self._others, others)
        self.first = it if self.first is None else self.first
        self.last = it
        if self.count == 1:
            ctx.report(self.name, f"first snapshot of the {self.source} weights added to the average")

    def on_validation_end(self, ctx: TrainingContext, metrics: dict[str, dict[str, float]]) -> None:
        if self.count == 0 or self.net is None:
            return
        swa_metrics = ctx.validate(self.net)
        self.compared = {ds: {k: (v, metrics.get(ds, {}).get(k, float("nan"))) for k, v in means.items()}
                         for ds, means in swa_metrics.items()}
        ctx.report(self.name, f"{self.count} snapshots: " + self._comparison(), self._scalars())
        ctx.propose_best(self.net, swa_metrics, "swa")

    def on_train_end(self, ctx: TrainingContext) -> None:
        if self.count == 0 or self.net is None:
            ctx.report(self.name, f"no snapshot was taken (start {self.start} not reached): no SWA weights written")
            return
        meta = {"iter": str(ctx.iteration), "swa_count": str(self.count), "swa_first": str(self.first),
                "swa_last": str(self.last), "swa_source": self.source, "swa_start": str(self.start),
                "swa_update_every": str(self.update_every)}
        ctx.save_weights("net_g_swa_final", self.net, meta)
        final = self._comparison() if self.compared else "not validated (no validation configured)"
        ctx.report(self.name, f"final average of {self.count} snapshots (iterations {self.first}..{self.last}) "
                   f"saved as net_g_swa_final: {final}")

    # --------------------------------------------------------------- helpers

    def _comparison(self) -> str:
        label = "EMA" if self.has_ema else "live"
        return "; ".join(f"{ds} {k}: SWA {s:.4f} vs {label} {e:.4f} ({s - e:+.4f})"
                         for ds, pairs in self.compared.items() for k, (s, e) in pairs.items())

    def _scalars(self) -> dict[str, float]:
        single = len(self.compared) == 1
        out = {f"automation/{self.name}/count": float(self.count)}
        for ds, pairs in self.compared.items():
            prefix = f"automation/{self.name}" + ("" if single else f"/{ds}")
            for k, (s, e) in pairs.items():
                out[f"{prefix}/{k}"] = s
                out[f"{prefix}/{k}_vs_ema"] = s - e
        return out

    # ----------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        weights = None
        if self.count and self.net is not None:
            weights = {k: v.detach().to("cpu", copy=True) for k, v in self.net.state_dict().items()}
        return {"count": self.count, "first": self.first, "last": self.last, "weights": weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count, self.first, self.last = int(state["count"]), state["first"], state["last"]
        self._pending = state.get("weights")
        if self._pending is not None and self.net is not None:
            self.net.load_state_dict(self._pending)
            self._pending = None
