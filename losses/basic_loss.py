"""Pixel losses: L1, MSE, Charbonnier and Sobel-gradient L1.

Every loss returns the unweighted value; the runner multiplies it by the (scheduled)
``loss_weight`` from the options.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from utils.color import check_y_range, rgb_to_y
from utils.metrics.pixel_metrics import gradient_l1_map
from utils.registry import LOSS_REGISTRY

REDUCTIONS = ("mean", "sum", "none")


class _PixelLoss(nn.Module):
    """Shared handling of ``reduction`` and ``y_only``; subclasses define ``elementwise``.

    Args:
        reduction: how the per-element loss is reduced: ``mean``, ``sum`` or ``none`` (the element map).
        y_only: compare only the BT.601 luma (Y) of the images; needs RGB (3-channel) input.
        y_range: luma used with ``y_only``: ``studio`` (Y in [16/255, 235/255], as SR papers report) or
            ``full`` (Y in [0, 1]).
    """

    def __init__(self, reduction: str = "mean", y_only: bool = False, y_range: str = "studio") -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(
                f"{type(self).__name__}: reduction must be one of "
                f"{', '.join(repr(r) for r in REDUCTIONS)}, got {reduction!r}"
            )
        check_y_range(y_range)
        self.reduction = reduction
        self.y_only = y_only
        self.y_range = y_range

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        if pred.shape != target.shape:
            raise ValueError(
                f"{type(self).__name__}: pred and target differ in shape: "
                f"{tuple(pred.shape)} vs {tuple(target.shape)}"
            )
        if self.y_only:
            if pred.dim() < 3 or pred.shape[-3] != 3:
                raise ValueError(
                    f"{type(self).__name__}: y_only=True needs RGB input (3 channels), "
                    f"got shape {tuple(pred.shape)}"
                )
            pred, target = rgb_to_y(pred, self.y_range), rgb_to_y(target, self.y_range)
        loss = self.elementwise(pred, target)
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, y_only={self.y_only}, y_range={self.y_range!r}"


@LOSS_REGISTRY.register()
class L1Loss(_PixelLoss):
    """Mean absolute error |pred - target|.
    """

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        return (pred - target).abs()


@LOSS_REGISTRY.register()
class MSELoss(_PixelLoss):
    """Mean squared error (pred - target)^2.
    """

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        return (pred - target).pow(2)


@LOSS_REGISTRY.register()
class CharbonnierLoss(_PixelLoss):
    """Charbonnier loss sqrt((pred - target)^2 + eps), eps inside the root (BasicSR's form).

    The default eps = 1e-12 makes it a smooth L1 that stays differentiable at zero.

    Args:
        eps: constant added to the squared difference inside the root (> 0); the loss at zero error is
            ``sqrt(eps)`` and larger values smooth the L1 kink more.
    """

    def __init__(
        self, eps: float = 1e-12, reduction: str = "mean", y_only: bool = False, y_range: str = "studio"
    ) -> None:
        super().__init__(reduction=reduction, y_only=y_only, y_range=y_range)
        if eps <= 0:
            raise ValueError(f"CharbonnierLoss: eps must be > 0, got {eps!r}")
        self.eps = float(eps)

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        return torch.sqrt((pred - target).pow(2) + self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}, " + super().extra_repr()


@LOSS_REGISTRY.register()
class GradientLoss(_PixelLoss):
    """L1 between Sobel gradients, x and y compared separately (not gradient magnitudes).

    Per pixel: 0.5 * (|dx(pred) - dx(target)| + |dy(pred) - dy(target)|), with Sobel
    kernels scaled by 1/8 and replicate padding, so ``reduction="none"`` keeps the input
    shape. Comparing signed components keeps edge direction, which a magnitude loss ignores.
    Input must be NCHW.
    """

    def elementwise(self, pred: Tensor, target: Tensor) -> Tensor:
        if pred.dim() != 4:
            raise ValueError(f"GradientLoss expects NCHW input, got shape {tuple(pred.shape)}")
        return gradient_l1_map(pred, target)
