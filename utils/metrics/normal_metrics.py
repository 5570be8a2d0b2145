"""Normal-map error: the angle between predicted and reference surface normals (PBR maps)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from utils.metrics.psnr_ssim import prepare_pair
from utils.registry import METRIC_REGISTRY

#: vectors shorter than this are treated as length 1e-8 when normalised (a black pixel of a map)
_EPS = 1e-8


def normal_cosine(pred: Tensor, target: Tensor, encoded: bool = True) -> Tensor:
    """Per-pixel cosine of the angle between two normal maps (N, 3, H, W) -> (N, H, W).

    ``encoded``: the maps hold ``n * 0.5 + 0.5`` in [0, 1], as normal-map images do (decoded
    here as ``2 x - 1``); else they hold the vectors. Both are normalised first, so a network's
    unnormalised output and an 8-bit map's rounding do not count as error."""
    if pred.shape[-3] != 3 or target.shape[-3] != 3:
        raise ValueError(f"normal maps have 3 channels, got {pred.shape[-3]} and {target.shape[-3]}")
    if encoded:
        pred, target = 2.0 * pred - 1.0, 2.0 * target - 1.0
    pred = pred / pred.norm(dim=-3, keepdim=True).clamp_min(_EPS)
    target = target / target.norm(dim=-3, keepdim=True).clamp_min(_EPS)
    return (pred * target).sum(dim=-3).clamp(-1.0, 1.0)


@METRIC_REGISTRY.register()
def calculate_normal_angle(img: Tensor, img2: Tensor, crop_border: int = 0,
                           statistic: Literal["mean", "median"] = "mean", encoded: bool = True) -> Tensor:
    """Per-image angle between output and reference normals in degrees; shape (N,), float64.

    Args:
        img: output normal maps, float N3HW (or one 3HW map); passed by the trainer.
        img2: reference normal maps of the same shape; passed by the trainer.
        crop_border: pixels removed from each edge of both maps before scoring.
        statistic: ``mean`` or ``median`` of the per-pixel angles (the median ignores a few wild pixels).
        encoded: the maps hold ``n * 0.5 + 0.5`` (normal-map images); false: the vectors themselves.
    """
    if statistic not in ("mean", "median"):
        raise ValueError(f"calculate_normal_angle: statistic must be 'mean' or 'median', got {statistic!r}")
    a, b = prepare_pair(img, img2, crop_border, False, "studio", "calculate_normal_angle")
    angles = torch.rad2deg(torch.acos(normal_cosine(a, b, encoded))).flatten(1)
    return angles.mean(dim=1) if statistic == "mean" else angles.median(dim=1).values


calculate_normal_angle.higher_is_better = False
