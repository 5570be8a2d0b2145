"""VGG-style discriminator of ESRGAN (BasicSR key names)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from utils.registry import ARCH_REGISTRY

# Input size → number of stride-2 stages; the last feature map is 4x4 (128, 256) or 3x3 (192).
_STAGES = {128: 5, 192: 6, 256: 6}


@ARCH_REGISTRY.register()
class VGGStyleDiscriminator(nn.Module):
    """ESRGAN's VGG-style discriminator: one real/fake logit per image.

    Stage ``i`` is ``conv{i}_0`` (3x3, stride 1) and ``conv{i}_1`` (4x4, stride 2), each followed
    by BatchNorm (``bn{i}_0``, ``bn{i}_1``; ``conv0_0`` has a bias and no BN) and LeakyReLU 0.2;
    then ``linear1`` (→100) and ``linear2`` (→1). Features: F, 2F, 4F, 8F, 8F (, 8F).
    ``input_size`` 128 uses five stages; 192 and 256 add ``conv5_*`` as in the original
    ESRGAN 192/256 discriminators. The input must be exactly ``input_size`` square.

    Args:
        num_in_ch: channels of the images judged.
        num_feat: channels F of the first stage; the later stages have 2F, 4F, 8F, 8F (, 8F).
        input_size: side in pixels of the square input, which must match it exactly: 128 (five stages), 192 or
            256 (six stages).
    """

    # Sizes the default configuration accepts; 192 and 256 need ``input_size`` set to match.
    input_sizes: ClassVar[tuple[int, ...]] = (128,)
    supported_input_sizes: ClassVar[tuple[int, ...]] = tuple(_STAGES)
    test_kwargs: ClassVar[dict] = {"num_feat": 8}

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, input_size: int = 128) -> None:
        super().__init__()
        if input_size not in _STAGES:
            raise ValueError(
                f"VGGStyleDiscriminator: input_size {input_size!r} is not supported; "
                f"valid sizes: {list(_STAGES)}"
            )
        self.input_size = input_size
        self.num_stages = _STAGES[input_size]
        widths = [num_feat * m for m in (1, 2, 4, 8, 8, 8)][: self.num_stages]

        self.conv0_0 = nn.Conv2d(num_in_ch, num_feat, 3, 1, 1, bias=True)
        self.conv0_1 = nn.Conv2d(num_feat, num_feat, 4, 2, 1, bias=False)
        self.bn0_1 = nn.BatchNorm2d(num_feat, affine=True)
        for i in range(1, self.num_stages):
            setattr(self, f"conv{i}_0", nn.Conv2d(widths[i - 1], widths[i], 3, 1, 1, bias=False))
            setattr(self, f"bn{i}_0", nn.BatchNorm2d(widths[i], affine=True))
            setattr(self, f"conv{i}_1", nn.Conv2d(widths[i], widths[i], 4, 2, 1, bias=False))
            setattr(self, f"bn{i}_1", nn.BatchNorm2d(widths[i], affine=True))

        side = input_size // 2**self.num_stages
        self.linear1 = nn.Linear(widths[-1] * side * side, 100)
        self.linear2 = nn.Linear(100, 1)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h != self.input_size or w != self.input_size:
            raise ValueError(
                f"VGGStyleDiscriminator: input must be {self.input_size}x{self.input_size} "
                f"(input_size), got {h}x{w}; crop the images or set input_size"
            )
        feat = self.lrelu(self.conv0_0(x))
        feat = self.lrelu(self.bn0_1(self.conv0_1(feat)))
        for i in range(1, self.num_stages):
            feat = self.lrelu(getattr(self, f"bn{i}_0")(getattr(self, f"conv{i}_0")(feat)))
            feat = self.lrelu(getattr(self, f"bn{i}_1")(getattr(self, f"conv{i}_1")(feat)))
        feat = self.lrelu(self.linear1(feat.flatten(1)))
        return self.linear2(feat)
