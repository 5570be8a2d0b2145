"""Colour conversions for losses and metrics (RGB in [0, 1], channel axis at -3)."""

from __future__ import annotations

import torch
from torch import Tensor

# BT.601 luma weights. The studio-swing variant is the one SR papers (and BasicSR's
# ``bgr2ycbcr(y_only=True)``) report: Y = (16 + 65.481 R + 128.553 G + 24.966 B) / 255.
_STUDIO_WEIGHTS = (65.481 / 255.0, 128.553 / 255.0, 24.966 / 255.0)
_STUDIO_OFFSET = 16.0 / 255.0
_FULL_WEIGHTS = (0.299, 0.587, 0.114)

Y_RANGES = ("studio", "full")


def check_y_range(y_range: str) -> None:
    """Raise ValueError for a y_range other than 'studio' or 'full'."""
    if y_range not in Y_RANGES:
        raise ValueError(f"y_range must be one of {', '.join(repr(v) for v in Y_RANGES)}, got {y_range!r}")


def rgb_to_y(img: Tensor, y_range: str = "studio") -> Tensor:
    """BT.601 luma of an RGB image (NCHW or CHW, values in [0, 1]).

    ``y_range="studio"``: Y in [16/255, 235/255] as papers compute PSNR/SSIM on Y;
    ``y_range="full"``: Y = 0.299 R + 0.587 G + 0.114 B in [0, 1].
    Returns a tensor with a single channel (the channel axis is kept).
    """
    check_y_range(y_range)
    if img.dim() not in (3, 4) or img.shape[-3] != 3:
        raise ValueError(
            f"rgb_to_y expects an RGB image shaped (N, 3, H, W) or (3, H, W), got shape {tuple(img.shape)}"
        )
    if not img.is_floating_point():
        raise TypeError(f"rgb_to_y expects a float tensor in [0, 1], got dtype {img.dtype}")
    weights = _STUDIO_WEIGHTS if y_range == "studio" else _FULL_WEIGHTS
    w = torch.tensor(weights, dtype=img.dtype, device=img.device).view(3, 1, 1)
    y = (img * w).sum(dim=-3, keepdim=True)
    if y_range == "studio":
        y = y + _STUDIO_OFFSET
    return y
