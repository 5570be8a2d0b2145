"""Pixel-space error metrics on the [0, 1] scale (L1 and Sobel-gradient L1), plus the Sobel helper."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from utils.metrics.psnr_ssim import prepare_pair
from utils.registry import METRIC_REGISTRY

# Sobel kernels divided by 8, so a ramp rising by 1 per pixel has gradient 1.
_SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))


def sobel_gradients(img: Tensor) -> tuple[Tensor, Tensor]:
    """Horizontal and vertical Sobel derivatives of every channel of an NCHW image.

    The kernels are normalised by 1/8 (units: value change per pixel). Borders are
    replicate-padded so the outputs keep the input size and the image edge is not
    mistaken for a step down to zero.
    """
    if img.dim() != 4:
        raise ValueError(f"sobel_gradients expects NCHW, got shape {tuple(img.shape)}")
    c = img.shape[1]
    kx = torch.tensor(_SOBEL_X, dtype=img.dtype, device=img.device) / 8.0
    kernels = torch.stack([kx, kx.t()]).unsqueeze(1).repeat(c, 1, 1, 1)  # (2C, 1, 3, 3)
    padded = F.pad(img, (1, 1, 1, 1), mode="replicate")
    grads = F.conv2d(padded, kernels, groups=c)  # channel 2i = d/dx of channel i, 2i+1 = d/dy
    return grads[:, 0::2], grads[:, 1::2]


def gradient_l1_map(pred: Tensor, target: Tensor) -> Tensor:
    """Per-pixel 0.5 * (|dx(pred) - dx(target)| + |dy(pred) - dy(target)|), shape of the input."""
    px, py = sobel_gradients(pred)
    tx, ty = sobel_gradients(target)
    return 0.5 * ((px - tx).abs() + (py - ty).abs())


@METRIC_REGISTRY.register()
def calculate_l1(
    img: Tensor, img2: Tensor, crop_border: int = 0, test_y_channel: bool = True, y_range: str = "studio"
) -> Tensor:
    """Per-image mean absolute error on the [0, 1] scale; shape (N,), float64.

    Args:
        img: output images, float NCHW (or one CHW image) in [0, 1]; passed by the trainer.
        img2: reference (gt) images of the same shape; passed by the trainer.
        crop_border: pixels removed from each edge of both images before scoring (often the scale).
        test_y_channel: score only the BT.601 luma (Y) of RGB images, as SR papers report; false for other
            channel counts.
        y_range: luma used with ``test_y_channel``: ``studio`` (Y in [16/255, 235/255], BasicSR's) or
            ``full`` (Y in [0, 1]).
    """
    a, b = prepare_pair(img, img2, crop_border, test_y_channel, y_range, "calculate_l1")
    return (a - b).abs().mean(dim=(1, 2, 3))


calculate_l1.higher_is_better = False


@METRIC_REGISTRY.register()
def calculate_gradient_l1(
    img: Tensor, img2: Tensor, crop_border: int = 0, test_y_channel: bool = True, y_range: str = "studio"
) -> Tensor:
    """Per-image mean of 0.5 * (|Δdx| + |Δdy|) of Sobel gradients on the [0, 1] scale; shape (N,).

    Cropping happens before the gradients, so the crop's edge is replicate-padded.

    Args:
        img: output images, float NCHW (or one CHW image) in [0, 1]; passed by the trainer.
        img2: reference (gt) images of the same shape; passed by the trainer.
        crop_border: pixels removed from each edge of both images before scoring (often the scale).
        test_y_channel: score only the BT.601 luma (Y) of RGB images, as SR papers report; false for other
            channel counts.
        y_range: luma used with ``test_y_channel``: ``studio`` (Y in [16/255, 235/255], BasicSR's) or
            ``full`` (Y in [0, 1]).
    """
    a, b = prepare_pair(img, img2, crop_border, test_y_channel, y_range, "calculate_gradient_l1")
    return gradient_l1_map(a, b).mean(dim=(1, 2, 3))


calculate_gradient_l1.higher_is_better = False
