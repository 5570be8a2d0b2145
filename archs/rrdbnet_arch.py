"""RRDBNet, the ESRGAN / Real-ESRGAN generator, with Real-ESRGAN state-dict key names."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from archs.arch_blocks import RRDB, check_scale, conv3x3, pad_to_multiple
from utils.registry import ARCH_REGISTRY


@ARCH_REGISTRY.register()
class RRDBNet(nn.Module):
    """Residual-in-residual dense block network (Wang et al., 2018).

    The trunk always upsamples x4 (two nearest x2 + conv stages); scale 2 and 1 first fold the
    input with pixel-unshuffle (factor 2 / 4), as Real-ESRGAN does, so ``conv_first`` sees
    ``num_in_ch * 4`` / ``* 16`` channels. Inputs whose sides do not divide by the unshuffle factor
    are reflect-padded and the output cropped back to ``scale`` x the input size.

    Args:
        num_in_ch: channels (bands) of the input image.
        num_out_ch: channels (bands) of the output image.
        scale: upscaling factor: 1, 2 or 4 (1 and 2 pixel-unshuffle the input by 4 and 2 first).
        num_feat: feature channels of the trunk and of the upsampling convs (64 in ESRGAN).
        num_block: number of RRDBs in the trunk (23 in ESRGAN; fewer for a lighter network).
        num_grow_ch: growth channels: feature maps each conv of a dense block adds (32 in ESRGAN).
    """

    valid_scales: ClassVar[tuple[int, ...]] = (1, 2, 4)
    test_kwargs: ClassVar[dict] = {"num_feat": 8, "num_block": 1, "num_grow_ch": 4}

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        scale: int = 4,
        num_feat: int = 64,
        num_block: int = 23,
        num_grow_ch: int = 32,
    ) -> None:
        super().__init__()
        check_scale("RRDBNet", scale, self.valid_scales)
        self.scale = scale
        self.unshuffle = 4 // scale
        self.conv_first = conv3x3(num_in_ch * self.unshuffle**2, num_feat)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = conv3x3(num_feat, num_feat)
        self.conv_up1 = conv3x3(num_feat, num_feat)
        self.conv_up2 = conv3x3(num_feat, num_feat)
        self.conv_hr = conv3x3(num_feat, num_feat)
        self.conv_last = conv3x3(num_feat, num_out_ch)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = w = None
        if self.unshuffle > 1:
            x, h, w = pad_to_multiple(x, self.unshuffle)
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        feat = self.lrelu(self.conv_up1(F.interpolate(feat, scale_factor=2, mode="nearest")))
        feat = self.lrelu(self.conv_up2(F.interpolate(feat, scale_factor=2, mode="nearest")))
        out = self.conv_last(self.lrelu(self.conv_hr(feat)))
        if h is not None:
            out = out[..., : h * self.scale, : w * self.scale]
        return out
