"""A runner's list of weighted losses: each term gets the named tensors it declares it needs."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from utils.logger import get_logger
from utils.options import LossEntry, head_and_kwargs
from utils.registry import LOSS_REGISTRY
from utils.schedule import Schedule

DEFAULT_INPUTS = ("sr", "gt")


def loss_inputs(entry: dict[str, Any]) -> tuple[str, ...]:
    """The named tensors a ``train.losses`` entry consumes: its ``inputs`` key, else the loss
    class's own ``inputs`` attribute, else ``(sr, gt)``."""
    if entry.get("inputs"):
        return tuple(entry["inputs"])
    return tuple(getattr(LOSS_REGISTRY.get(entry["type"]), "inputs", DEFAULT_INPUTS))


class LossTerm:
    def __init__(self, label: str, fn: nn.Module, weight: Schedule, inputs: tuple[str, ...]) -> None:
        self.label = label
        self.fn = fn
        self.weight = weight
        self.inputs = inputs
        self.multiplier = 1.0  # set by automations (dynamic loss weights); saved in the state
        # a loss whose weight depends on the step by its own rule (a ramp, sampled steps) defines
        # ``step_weight(step) -> float``; the same on every rank and on resume, as it sees only the step
        self.step_weight: Callable[[int], float] | None = getattr(fn, "step_weight", None)

    def weight_at(self, step: int) -> float:
        """The scheduled weight at ``step`` times the loss's own ``step_weight`` (without the multiplier)."""
        weight = self.weight(step)
        return weight * self.step_weight(step) if self.step_weight is not None and weight else weight


class LossSet:
    """Weighted sum of listed losses. A loss returns an unweighted value; the weight applied at
    step ``s`` is ``loss_weight(s) x multiplier``, times ``fn.step_weight(s)`` for a loss that
    defines it (DistillationLoss: its ramp, 0 on the steps it does not draw). Each unweighted term
    is logged as ``<prefix>/<label>`` and the weighted sum as ``total_key`` (``losses/...`` and
    ``losses/total`` unless the runner names them otherwise); a term whose weight is 0 is not
    computed.
    """

    def __init__(self, entries: list[dict[str, Any]], device: torch.device,
                 log: Callable[[str, torch.Tensor], None], prefix: str = "losses",
                 total_key: str = "losses/total",
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 memory_format: torch.memory_format = torch.contiguous_format) -> None:
        self.log = log
        self.autocast = autocast
        self.prefix = prefix
        self.total_key = total_key
        self.terms: list[LossTerm] = []
        seen: dict[str, int] = {}
        for entry in entries:
            head, kwargs = head_and_kwargs(entry, LossEntry)
            label = head.get("name") or entry["type"].removesuffix("Loss").lower()
            seen[label] = seen.get(label, 0) + 1
            if seen[label] > 1:
                label = f"{label}_{seen[label]}"
            fn = LOSS_REGISTRY.get(entry["type"])(**kwargs).to(device, memory_format=memory_format)
            self.terms.append(LossTerm(label, fn, Schedule.parse(head.get("loss_weight", 1.0)), loss_inputs(entry)))

    @property
    def labels(self) -> list[str]:
        return [t.label for t in self.terms]

    def log_key(self, label: str | None = None) -> str:
        """The logged name of term ``label``, or of the weighted total when None."""
        return self.total_key if label is None else f"{self.prefix}/{label}"

    def term(self, label: str) -> LossTerm:
        for t in self.terms:
            if t.label == label:
                return t
        raise KeyError(f"no loss labelled '{label}'; losses: {', '.join(self.labels)}")

    def __call__(self, tensors: dict[str, torch.Tensor], step: int) -> torch.Tensor | None:
        """The weighted total, or None when every weight is 0 at this step (nothing to backward)."""
        total: torch.Tensor | None = None
        as_float: dict[str, torch.Tensor] = {}  # losses are computed in float32, also under autocast
        for term in self.terms:
            weight = term.weight_at(step) * term.multiplier
            if weight == 0.0:
                continue
            args = [as_float.setdefault(k, tensors[k].float()) for k in term.inputs]
            # a loss with a network inside (``amp_ok``) runs in the runner's precision; the others
            # in float32, whatever the precision of the step
            with self.autocast() if getattr(term.fn, "amp_ok", False) else contextlib.nullcontext():
                value = term.fn(*args)
            self.log(self.log_key(term.label), value)
            total = weight * value if total is None else total + weight * value
        if total is not None:
            self.log(self.total_key, total)
        return total

    def state_dict(self) -> dict[str, float]:
        return {t.label: t.multiplier for t in self.terms}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Restore the multipliers. A term of the saved run that this run does not have (a loss
        dropped before resuming, e.g. distillation) is skipped with a warning; a term the saved run
        did not have keeps 1.0."""
        for label, value in state.items():
            if label not in self.labels:
                get_logger().warning(f"the training state has a multiplier for the loss '{label}', which this run "
                                     f"does not have (losses: {', '.join(self.labels)}); ignored")
                continue
            self.term(label).multiplier = float(value)
