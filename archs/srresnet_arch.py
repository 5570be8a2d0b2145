"""SRResNet generator of SRGAN (Ledig et al., 2017) with the block choice of ESA OpenSR SRGAN."""

from __future__ import annotations

from typing import ClassVar, Literal, get_args

import torch
from torch import nn

from archs.arch_blocks import RCAB, RRDB, PixelShuffleUpsampler, check_scale
from utils.registry import ARCH_REGISTRY

BlockType = Literal["standard", "res", "rcab", "rrdb"]
BLOCK_TYPES: tuple[str, ...] = get_args(BlockType)


class _ResBlock(nn.Module):
    """conv-(BN)-PReLU-conv-(BN) with an identity skip; ``batch_norm=False`` is the "res" block."""

    def __init__(self, n_channels: int, kernel_size: int, batch_norm: bool) -> None:
        super().__init__()
        pad = kernel_size // 2
        layers: list[nn.Module] = [nn.Conv2d(n_channels, n_channels, kernel_size, padding=pad)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(n_channels))
        layers += [nn.PReLU(), nn.Conv2d(n_channels, n_channels, kernel_size, padding=pad)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(n_channels))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _make_block(block_type: str, n_channels: int, kernel_size: int) -> nn.Module:
    if block_type == "standard":
        return _ResBlock(n_channels, kernel_size, batch_norm=True)
    if block_type == "res":
        return _ResBlock(n_channels, kernel_size, batch_norm=False)
    if block_type == "rcab":
        return RCAB(n_channels, kernel_size)
    # "rrdb": growth of half the width, as 32 for 64 features in ESRGAN.
    return RRDB(n_channels, max(1, n_channels // 2))


@ARCH_REGISTRY.register()
class SRResNet(nn.Module):
    """SRResNet: large-kernel head conv + PReLU, ``n_blocks`` residual blocks, conv + BN with a
    global skip, ``log2(scale)`` sub-pixel x2 stages with PReLU, large-kernel tail conv.

    ``block_type``: "standard" (conv-BN-PReLU-conv-BN + skip), "res" (the same without BN),
    "rcab" (residual channel attention block), "rrdb" (an RRDB with growth ``n_channels // 2``).
    PReLUs have one shared slope, as in SRGAN. The output is linear (no tanh), so targets in
    [0, 1] and N-band reflectances both fit.

    Args:
        num_in_ch: channels (bands) of the input image.
        num_out_ch: channels (bands) of the output image.
        scale: upscaling factor: 2, 4 or 8 (``log2(scale)`` sub-pixel x2 stages).
        n_channels: feature channels of the head, the body and the upsampler.
        n_blocks: number of residual blocks in the body.
        block_type: residual block kind: ``standard``, ``res``, ``rcab`` or ``rrdb`` (see above).
        large_kernel_size: kernel side of the head and tail convs; a positive odd number.
        small_kernel_size: kernel side of the body's convs (the blocks, except ``rrdb`` whose convs are
            3x3, and the conv closing the body); a positive odd number.
    """

    valid_scales: ClassVar[tuple[int, ...]] = (2, 4, 8)
    test_kwargs: ClassVar[dict] = {"n_channels": 8, "n_blocks": 2}
    #: the parts that change with the scale (train.tail_only / lr_tail; renewed by a warm start
    #: from another scale); head and body are the trunk
    tail_prefixes: ClassVar[tuple[str, ...]] = ("upsample.", "tail.")

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        scale: int = 4,
        n_channels: int = 64,
        n_blocks: int = 16,
        block_type: BlockType = "standard",
        large_kernel_size: int = 9,
        small_kernel_size: int = 3,
    ) -> None:
        super().__init__()
        check_scale("SRResNet", scale, self.valid_scales)
        if block_type not in BLOCK_TYPES:
            raise ValueError(f"SRResNet: unknown block_type {block_type!r}; valid: {', '.join(BLOCK_TYPES)}")
        for name, k in (("large_kernel_size", large_kernel_size), ("small_kernel_size", small_kernel_size)):
            if k < 1 or k % 2 == 0:
                raise ValueError(f"SRResNet: {name} must be a positive odd number, got {k}")
        large_pad, small_pad = large_kernel_size // 2, small_kernel_size // 2
        self.head = nn.Sequential(
            nn.Conv2d(num_in_ch, n_channels, large_kernel_size, padding=large_pad), nn.PReLU()
        )
        self.body = nn.Sequential(
            *[_make_block(block_type, n_channels, small_kernel_size) for _ in range(n_blocks)]
        )
        self.body_tail = nn.Sequential(
            nn.Conv2d(n_channels, n_channels, small_kernel_size, padding=small_pad),
            nn.BatchNorm2d(n_channels),
        )
        self.upsample = PixelShuffleUpsampler(scale, n_channels, act=nn.PReLU)
        self.tail = nn.Conv2d(n_channels, num_out_ch, large_kernel_size, padding=large_pad)
        self.scale = scale  # what a warm start from another scale compares with the file's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.head(x)
        feat = feat + self.body_tail(self.body(feat))
        return self.tail(self.upsample(feat))
