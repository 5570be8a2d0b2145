"""U-Net discriminator with spectral normalisation (Real-ESRGAN key names)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import spectral_norm

from utils.registry import ARCH_REGISTRY


@ARCH_REGISTRY.register()
class UNetDiscriminatorSN(nn.Module):
    """Real-ESRGAN's U-Net discriminator: one real/fake logit per pixel.

    ``conv0`` (3x3), three stride-2 4x4 downsampling convs ``conv1..3`` (F→2F→4F→8F), three
    3x3 convs ``conv4..6`` each after a bilinear ×2 upsample (8F→4F→2F→F, with skips from the
    encoder when ``skip_connection``), two 3x3 convs ``conv7``, ``conv8`` and ``conv9`` → 1.
    LeakyReLU 0.2. ``conv1..conv8`` are spectrally normalised (``weight_orig`` / ``weight_u`` /
    ``weight_v`` in the state dict, as in Real-ESRGAN's checkpoints). H and W must divide by 8.

    Args:
        num_in_ch: channels of the images judged.
        num_feat: channels F of the first conv; the encoder widens them to 2F, 4F and 8F.
        skip_connection: add the encoder's features to the decoder's at each resolution (the U-Net skips).
    """

    input_sizes: ClassVar[tuple[int, ...]] = (64, 128)
    test_kwargs: ClassVar[dict] = {"num_feat": 16}

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, skip_connection: bool = True) -> None:
        super().__init__()
        self.skip_connection = skip_connection
        nf = num_feat
        self.conv0 = nn.Conv2d(num_in_ch, nf, 3, 1, 1)
        self.conv1 = spectral_norm(nn.Conv2d(nf, nf * 2, 4, 2, 1, bias=False))
        self.conv2 = spectral_norm(nn.Conv2d(nf * 2, nf * 4, 4, 2, 1, bias=False))
        self.conv3 = spectral_norm(nn.Conv2d(nf * 4, nf * 8, 4, 2, 1, bias=False))
        self.conv4 = spectral_norm(nn.Conv2d(nf * 8, nf * 4, 3, 1, 1, bias=False))
        self.conv5 = spectral_norm(nn.Conv2d(nf * 4, nf * 2, 3, 1, 1, bias=False))
        self.conv6 = spectral_norm(nn.Conv2d(nf * 2, nf, 3, 1, 1, bias=False))
        self.conv7 = spectral_norm(nn.Conv2d(nf, nf, 3, 1, 1, bias=False))
        self.conv8 = spectral_norm(nn.Conv2d(nf, nf, 3, 1, 1, bias=False))
        self.conv9 = nn.Conv2d(nf, 1, 3, 1, 1)

    @staticmethod
    def _act(x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, negative_slope=0.2)

    @staticmethod
    def _up(x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % 8 or w % 8:
            raise ValueError(f"UNetDiscriminatorSN: input height and width must divide by 8, got {h}x{w}")
        x0 = self._act(self.conv0(x))
        x1 = self._act(self.conv1(x0))
        x2 = self._act(self.conv2(x1))
        x3 = self._act(self.conv3(x2))

        x4 = self._act(self.conv4(self._up(x3)))
        if self.skip_connection:
            x4 = x4 + x2
        x5 = self._act(self.conv5(self._up(x4)))
        if self.skip_connection:
            x5 = x5 + x1
        x6 = self._act(self.conv6(self._up(x5)))
        if self.skip_connection:
            x6 = x6 + x0

        out = self._act(self.conv7(x6))
        out = self._act(self.conv8(out))
        return self.conv9(out)
