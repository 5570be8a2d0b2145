"""Normal-map loss: the angle between predicted and reference surface normals (PBR maps)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from utils.metrics.normal_metrics import normal_cosine
from utils.registry import LOSS_REGISTRY


@LOSS_REGISTRY.register()
class NormalAngularLoss(nn.Module):
    """Angular error between normal maps (NeuroPBR's normal loss), averaged over the pixels.

    ``cosine``: ``1 - cos(angle)``, smooth everywhere (0 when equal, 2 when opposite); ``angle``:
    the angle itself in radians, whose gradient stays large for small errors but is infinite at 0,
    so the cosine is clamped to ``1 - 1e-6`` first (angles below about 0.08° give no gradient).

    Args:
        mode: ``cosine`` (``1 - cos``) or ``angle`` (radians).
        encoded: the maps hold ``n * 0.5 + 0.5`` in [0, 1] as normal-map images do; false: the vectors.
    """

    inputs = ("sr", "gt")

    def __init__(self, mode: Literal["cosine", "angle"] = "cosine", encoded: bool = True) -> None:
        super().__init__()
        if mode not in ("cosine", "angle"):
            raise ValueError(f"NormalAngularLoss: mode must be 'cosine' or 'angle', got {mode!r}")
        self.mode = mode
        self.encoded = encoded

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        cos = normal_cosine(pred, target, self.encoded)
        if self.mode == "cosine":
            return (1.0 - cos).mean()
        return torch.acos(cos.clamp(-1.0 + 1e-6, 1.0 - 1e-6)).mean()
