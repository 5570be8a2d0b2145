"""Building blocks shared by several architectures (not registered; no ``_arch`` suffix)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn import functional as F


@torch.no_grad()
def scaled_kaiming_init(modules: nn.Module | Iterable[nn.Module], scale: float = 1.0) -> None:
    """Kaiming-normal init of conv/linear weights times ``scale``, zero biases.

    A small ``scale`` (0.1 in ESRGAN) keeps deep residual stacks close to identity at the start.
    """
    if isinstance(modules, nn.Module):
        modules = [modules]
    for root in modules:
        for m in root.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(m.weight)
                m.weight.mul_(scale)
                if m.bias is not None:
                    m.bias.zero_()


def conv3x3(in_ch: int, out_ch: int, bias: bool = True) -> nn.Conv2d:
    """3x3 convolution that keeps the spatial size."""
    return nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=bias)


def check_scale(arch: str, scale: int, valid: tuple[int, ...]) -> None:
    """Raise a ValueError naming the arch when ``scale`` is not supported."""
    if scale not in valid:
        raise ValueError(f"{arch}: scale {scale!r} is not supported; valid scales: {list(valid)}")


class PixelShuffleUpsampler(nn.Sequential):
    """Sub-pixel upsampling: ``log2(scale)`` (conv to 4C, shuffle x2) stages, or one x3 stage.

    Child indices follow BasicSR's ``Upsample`` (conv at 0, 2, ...; shuffle at 1, 3, ...), so
    state-dict keys read ``upsample.0.weight``, ``upsample.2.weight``. ``act`` (a factory) adds an
    activation after every shuffle, which shifts the indices (conv at 0, 3, ...).
    """

    def __init__(self, scale: int, num_feat: int, act: type[nn.Module] | None = None) -> None:
        layers: list[nn.Module] = []
        if scale == 3:
            stages = [3]
        elif scale >= 2 and scale & (scale - 1) == 0:
            stages = [2] * int(math.log2(scale))
        else:
            raise ValueError(f"sub-pixel upsampling supports scale 2^n or 3, got {scale}")
        for factor in stages:
            layers.append(conv3x3(num_feat, num_feat * factor * factor))
            layers.append(nn.PixelShuffle(factor))
            if act is not None:
                layers.append(act())
        super().__init__(*layers)


class ResidualDenseBlock(nn.Module):
    """Five densely connected convs; the output is scaled by 0.2 and added to the input."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        # conv_k sees the block input plus every earlier growth output.
        for k in range(1, 5):
            setattr(self, f"conv{k}", conv3x3(num_feat + (k - 1) * num_grow_ch, num_grow_ch))
        self.conv5 = conv3x3(num_feat + 4 * num_grow_ch, num_feat)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)
        scaled_kaiming_init(self, 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for k in range(1, 5):
            conv = getattr(self, f"conv{k}")
            feats.append(self.lrelu(conv(torch.cat(feats, 1))))
        return x + 0.2 * self.conv5(torch.cat(feats, 1))


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks, output scaled by 0.2 plus input."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32) -> None:
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.rdb3(self.rdb2(self.rdb1(x)))


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation channel attention (RCAN)."""

    def __init__(self, num_feat: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, num_feat // reduction)
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(num_feat, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_feat, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class RCAB(nn.Module):
    """Residual channel attention block: conv-ReLU-conv, channel attention, identity skip."""

    def __init__(self, num_feat: int, kernel_size: int = 3, reduction: int = 16) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.body = nn.Sequential(
            nn.Conv2d(num_feat, num_feat, kernel_size, padding=pad),
            nn.ReLU(inplace=True),
            nn.Conv2d(num_feat, num_feat, kernel_size, padding=pad),
            ChannelAttention(num_feat, reduction),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    """Reflect-pad the bottom/right of ``x`` so H and W divide by ``multiple``.

    Returns the padded tensor and the original height and width.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        # reflect needs pad < size; replicate works on any size.
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, h, w
