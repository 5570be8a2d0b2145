"""PatchGAN discriminator (pix2pix's N-layer discriminator)."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import spectral_norm

from utils.registry import ARCH_REGISTRY

_NORMS = ("batch", "instance", "none")


@ARCH_REGISTRY.register()
class PatchGANDiscriminator(nn.Module):
    """pix2pix PatchGAN: a map of real/fake logits, one per overlapping input patch.

    ``n_layers`` 4x4 stride-2 convs (ndf, 2·ndf, 4·ndf, … capped at 8·ndf), one 4x4 stride-1
    conv, then a 4x4 stride-1 conv to one channel; padding 1, LeakyReLU 0.2, normalisation
    after every conv but the first and the last. Convs followed by BatchNorm have no bias;
    InstanceNorm is not affine (as in pix2pix). The receptive field is 70 px for
    ``n_layers`` 3, 142 for 4, 286 for 5, 574 for 6. ``use_spectral_norm`` wraps every conv
    (``weight_orig`` in the state dict). ``num_in_ch`` may be anything, e.g. 8 for
    concatenated PBR maps. Layers live in ``model`` (keys ``model.N.*``, as in pix2pix).

    Args:
        num_in_ch: channels of the images judged (any count, e.g. 8 for concatenated PBR maps).
        ndf: channels of the first conv; each further conv doubles them, up to 8 x ndf.
        n_layers: number of stride-2 convs (≥ 1): sets the receptive field (70 px for 3, 142 for 4) and the
            smallest input side, ``3 * 2**n_layers`` pixels.
        norm: normalisation after the inner convs: ``batch``, ``instance`` (not affine) or ``none``.
        use_spectral_norm: wrap every conv in spectral normalisation.
    """

    input_sizes: ClassVar[tuple[int, ...]] = (64, 128)
    test_kwargs: ClassVar[dict] = {"ndf": 8}

    def __init__(
        self,
        num_in_ch: int = 3,
        ndf: int = 64,
        n_layers: int = 3,
        norm: str = "batch",
        use_spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        if norm not in _NORMS:
            raise ValueError(f"PatchGANDiscriminator: unknown norm {norm!r}; valid: {list(_NORMS)}")
        if n_layers < 1:
            raise ValueError(f"PatchGANDiscriminator: n_layers must be ≥ 1, got {n_layers}")
        self.n_layers = n_layers
        wrap = spectral_norm if use_spectral_norm else (lambda m: m)
        use_bias = norm != "batch"

        def norm_layer(ch: int) -> list[nn.Module]:
            if norm == "batch":
                return [nn.BatchNorm2d(ch)]
            if norm == "instance":
                return [nn.InstanceNorm2d(ch, affine=False, track_running_stats=False)]
            return []

        layers: list[nn.Module] = [wrap(nn.Conv2d(num_in_ch, ndf, 4, 2, 1)), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers.append(wrap(nn.Conv2d(ndf * prev, ndf * mult, 4, stride, 1, bias=use_bias)))
            layers += norm_layer(ndf * mult)
            layers.append(nn.LeakyReLU(0.2, True))
        layers.append(wrap(nn.Conv2d(ndf * mult, 1, 4, 1, 1)))
        self.model = nn.Sequential(*layers)

    def output_size(self, size: int) -> int:
        """Side of the logit map for an input side of ``size``."""
        for _ in range(self.n_layers):
            size = size // 2  # 4x4, stride 2, padding 1
        return size - 2  # two 4x4 stride-1 convs with padding 1 remove one pixel each

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if self.output_size(min(h, w)) < 1:
            raise ValueError(
                f"PatchGANDiscriminator: input {h}x{w} is too small for n_layers={self.n_layers}; "
                f"each side needs at least {3 * 2**self.n_layers} pixels"
            )
        return self.model(x)
