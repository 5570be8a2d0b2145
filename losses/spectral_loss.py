"""Spectral angle mapper (SAM) loss: the mean angle between the channel vectors of sr and gt.

At each pixel the C channel values form a vector; SAM is arccos(<x, y> / (|x| |y|)) in radians,
0 for vectors pointing the same way whatever their length, so it penalises colour / spectral
shape errors and ignores brightness. Meant for multi-band images, works for any C >= 2.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from utils.registry import LOSS_REGISTRY

# arccos' derivative is infinite at ±1, which pred == gt reaches; clamping just inside keeps it finite.
_COS_LIMIT = 1.0 - 1e-7


def spectral_angle_map(pred: Tensor, target: Tensor, eps: float) -> Tensor:
    """Per-pixel angle (radians) between the channel vectors of two NCHW tensors; shape (N, H, W).

    ``eps`` is added to each norm, so a zero vector against a non-zero one gives π/2. A pixel where
    both are exactly zero counts as 0, as in ``calculate_sam``. Because of the clamp, equal vectors
    give arccos(1 - 1e-7), about 5e-4 rad in float32, not 0: a constant floor without gradient.
    """
    dot = (pred * target).sum(dim=1)
    norms = (torch.linalg.vector_norm(pred, dim=1) + eps) * (torch.linalg.vector_norm(target, dim=1) + eps)
    angle = torch.arccos((dot / norms).clamp(-_COS_LIMIT, _COS_LIMIT))
    both_zero = (pred == 0).all(dim=1) & (target == 0).all(dim=1)
    return angle.masked_fill(both_zero, 0.0)


@LOSS_REGISTRY.register()
class SAMLoss(nn.Module):
    """Mean spectral angle (radians) over all pixels of the batch; NCHW input with C >= 2.

    Half-precision input is computed in float32 (float64 stays float64).

    Args:
        eps: added to each channel vector's norm before the cosine (> 0), so zero vectors stay finite: a zero
            vector against a non-zero one gives π/2.
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        if not eps > 0:
            raise ValueError(f"SAMLoss: eps must be > 0, got {eps!r}")
        self.eps = float(eps)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"SAMLoss: pred and target differ in shape: {tuple(pred.shape)} vs {tuple(target.shape)}")
        if pred.dim() != 4:
            raise ValueError(f"SAMLoss expects NCHW input, got shape {tuple(pred.shape)}")
        if pred.shape[1] < 2:
            raise ValueError(f"SAMLoss: the spectral angle needs at least 2 channels, got {pred.shape[1]}")
        if pred.dtype != torch.float64:
            pred, target = pred.float(), target.float()
        with torch.autocast(device_type=pred.device.type, enabled=False):
            return spectral_angle_map(pred, target, self.eps).mean()

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
