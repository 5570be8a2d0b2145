"""Spectral metrics for multi-band images: the spectral angle mapper (SAM)."""

from __future__ import annotations

import torch
from torch import Tensor

from utils.metrics.psnr_ssim import prepare_pair
from utils.registry import METRIC_REGISTRY


@METRIC_REGISTRY.register()
def calculate_sam(img: Tensor, img2: Tensor, crop_border: int = 0) -> Tensor:
    """Per-image mean spectral angle in radians; shape (N,), float64, lower is better.

    At each pixel, the angle arccos(<x, y> / (|x| |y|)) between the C-vectors of the two images
    (C >= 2), computed as 2 atan2(|u - v|, |u + v|) with u = x / |x|, v = y / |y|: the same angle,
    but accurate near 0 and π, where arccos of a rounded cosine is off by up to ~1e-8 rad.
    A zero vector gets u = 0, so a pixel where both vectors are zero counts as angle 0 (same, if
    empty, spectrum) and a zero vector against a non-zero one as π/2.

    Args:
        img: output images, float NCHW (or one CHW image) with C >= 2 channels; passed by the trainer.
        img2: reference (gt) images of the same shape; passed by the trainer.
        crop_border: pixels removed from each edge of both images before scoring (often the scale).
    """
    a, b = prepare_pair(img, img2, crop_border, False, "studio", "calculate_sam")
    if a.shape[1] < 2:
        raise ValueError(f"calculate_sam: the spectral angle needs at least 2 channels, got {a.shape[1]}")

    def unit(x: Tensor) -> Tensor:
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        return torch.where(norm > 0, x / norm.clamp_min(torch.finfo(x.dtype).tiny), 0.0)

    u, v = unit(a), unit(b)
    angle = 2.0 * torch.atan2(torch.linalg.vector_norm(u - v, dim=1), torch.linalg.vector_norm(u + v, dim=1))
    return angle.mean(dim=(1, 2))


calculate_sam.higher_is_better = False
