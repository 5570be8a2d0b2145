"""A runner's list of weighted losses: each term gets the named tensors it declares it needs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

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


class LossSet:
    """Weighted sum of listed losses. A loss returns an unweighted value; the weight applied at
    step ``s`` is ``loss_weight(s) x multiplier``. Each unweighted term is logged as
    ``losses/<label>`` and the sum as ``losses/total``; a term whose weight is 0 is not computed.
    """

    def __init__(self, entries: list[dict[str, Any]], device: torch.device,
                 log: Callable[[str, torch.Tensor], None]) -> None:
        self.log = log
        self.terms: list[LossTerm] = []
        seen: dict[str, int] = {}
        for entry in entries:
            head, kwargs = head_and_kwargs(entry, LossEntry)
            label = head.get("name") or entry["type"].removesuffix("Loss").lower()
            seen[label] = seen.get(label, 0) + 1
            if seen[label] > 1:
                label = f"{label}_{seen[label]}"
            fn = LOSS_REGISTRY.get(entry["type"])(**kwargs).to(device)
            self.terms.append(LossTerm(label, fn, Schedule.parse(head.get("loss_weight", 1.0)), loss_inputs(entry)))

    @property
    def labels(self) -> list[str]:
        return [t.label for t in self.terms]

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
            weight = term.weight(step) * term.multiplier
            if weight == 0.0:
                continue
            args = [as_float.setdefault(k, tensors[k].float()) for k in term.inputs]
            value = term.fn(*args)
            self.log(f"losses/{term.label}", value)
            total = weight * value if total is None else total + weight * value
        if total is not None:
            self.log("losses/total", total)
        return total

    def state_dict(self) -> dict[str, float]:
        return {t.label: t.multiplier for t in self.terms}

    def load_state_dict(self, state: dict[str, float]) -> None:
        for label, value in state.items():
            self.term(label).multiplier = float(value)
