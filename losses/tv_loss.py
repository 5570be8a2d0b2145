"""Total variation loss: a smoothness prior on the output alone (no ground truth)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from utils.registry import LOSS_REGISTRY


@LOSS_REGISTRY.register()
class TVLoss(nn.Module):
    """Anisotropic total variation mean(|x[i+1, j] - x[i, j]|) + mean(|x[i, j+1] - x[i, j]|).

    Each mean runs over all its differences (batch, channels, positions); the input is (..., H, W)
    with H, W >= 2. Half-precision input is computed in float32.
    """

    # Named tensors this loss consumes: only the network output.
    inputs: tuple[str, ...] = ("sr",)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[-2] < 2 or x.shape[-1] < 2:
            raise ValueError(f"TVLoss needs input (..., H, W) with H, W >= 2, got shape {tuple(x.shape)}")
        if x.dtype != torch.float64:
            x = x.float()
        with torch.autocast(device_type=x.device.type, enabled=False):
            dh = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
            dw = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
            return dh + dw
