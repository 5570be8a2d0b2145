"""ParagonSR2 (Nano and S): a fixed Magic-Kernel-Sharp upsample plus a learned LR-space detail."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from archs.paragonsr2_blocks import MagicKernelSharpUpsampler, ParagonBlock, ResidualGroup, icnr_
from utils.registry import ARCH_REGISTRY

# Values a variant supplies for every option left unset (None) by the user.
VARIANTS: dict[str, dict[str, int | float | bool]] = {
    "nano": {
        "num_feat": 12,
        "num_groups": 1,
        "num_blocks": 1,
        "ffn_expansion": 1.2,
        "band_kernel_size": 7,
        "upsampler_alpha": 0.4,
        "detail_gain": 0.05,
        "use_norm": False,
        "use_channel_mod": False,
    },
    "s": {
        "num_feat": 48,
        "num_groups": 3,
        "num_blocks": 4,
        "ffn_expansion": 2.0,
        "band_kernel_size": 11,
        "upsampler_alpha": 0.5,
        "detail_gain": 0.1,
        "use_norm": True,
        "use_channel_mod": True,
    },
}


@ARCH_REGISTRY.register()
class ParagonSR2(nn.Module):
    """ParagonSR2: ``out = base(x) + detail(x)``.

    ``base`` is a frozen Magic Kernel Sharp upsample (no parameters); ``detail`` runs entirely
    at LR resolution: conv_in → G residual groups of B blocks → conv_fuse (+ skip) → ICNR
    conv + PixelShuffle → conv_out (initial weights and bias × ``detail_gain``).

    ``variant`` (``nano`` or ``s``, case-insensitive) fills every option left unset; options
    written explicitly override it. ``fast_body`` halves the number of groups and of blocks
    (at least 1 each). When ``num_out_ch != num_in_ch`` the base path maps bands with a fixed
    matrix (see ``paragonsr2_blocks.base_channel_map``). The base path always runs in float32.

    YAML: ``network_g: {type: ParagonSR2, variant: nano}`` (``scale`` comes from the top level);
    ``{type: ParagonSR2, variant: s, fast_body: true}`` for the 1x2-block S.

    Args:
        num_in_ch: channels (bands) of the input image (≥ 1).
        num_out_ch: channels (bands) of the output image (≥ 1); when it differs from ``num_in_ch`` the base
            path maps bands with a fixed matrix.
        scale: upscaling factor: 2, 3, 4 or 8.
        variant: preset filling every option left null: ``nano`` or ``s`` (case-insensitive).
        num_feat: feature channels of the LR detail path (≥ 4); null: the variant's (nano 12, s 48).
        num_groups: residual groups in the body (≥ 1); null: the variant's (nano 1, s 3).
        num_blocks: blocks per residual group (≥ 1); null: the variant's (nano 1, s 4).
        ffn_expansion: hidden-channel ratio of each block's FFN (``int(num_feat * ffn_expansion)`` channels);
            null: the variant's (nano 1.2, s 2.0).
        band_kernel_size: length of the token mixer's 1xk and kx1 depthwise convs; a positive odd number;
            null: the variant's (nano 7, s 11).
        upsampler_alpha: pre-sharpening strength of the fixed base upsampler, clamped to [0, 1] (0: none);
            null: the variant's (nano 0.4, s 0.5).
        detail_gain: factor on the initial weights and bias of the detail path's last conv, so the base
            dominates early training; null: the variant's (nano 0.05, s 0.1).
        use_norm: channel RMSNorm after every block; null: the variant's (nano false, s true).
        use_channel_mod: squeeze-excitation channel gate inside every block's FFN; null: the variant's
            (nano false, s true).
        fast_body: halve ``num_groups`` and ``num_blocks`` (at least 1 each) after the variant is applied.
    """

    valid_scales: ClassVar[tuple[int, ...]] = (2, 3, 4, 8)
    #: the parts that change with the scale (train.tail_only / lr_tail; renewed, with their special
    #: initialisation, by a warm start from another scale); the fixed base upsampler has no weights
    tail_prefixes: ClassVar[tuple[str, ...]] = ("upsampler.", "conv_out.")
    test_kwargs: ClassVar[dict] = {"variant": "s", "num_feat": 16, "num_groups": 1, "num_blocks": 2}

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        scale: int = 2,
        variant: str = "s",
        num_feat: int | None = None,
        num_groups: int | None = None,
        num_blocks: int | None = None,
        ffn_expansion: float | None = None,
        band_kernel_size: int | None = None,
        upsampler_alpha: float | None = None,
        detail_gain: float | None = None,
        use_norm: bool | None = None,
        use_channel_mod: bool | None = None,
        fast_body: bool = False,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if scale not in self.valid_scales:
            raise ValueError(
                f"{name}: scale {scale!r} is not supported; valid scales: {list(self.valid_scales)}"
            )
        key = str(variant).lower()
        if key not in VARIANTS:
            raise ValueError(f"{name}: unknown variant {variant!r}; valid variants: {sorted(VARIANTS)}")
        given = {
            "num_feat": num_feat,
            "num_groups": num_groups,
            "num_blocks": num_blocks,
            "ffn_expansion": ffn_expansion,
            "band_kernel_size": band_kernel_size,
            "upsampler_alpha": upsampler_alpha,
            "detail_gain": detail_gain,
            "use_norm": use_norm,
            "use_channel_mod": use_channel_mod,
        }
        cfg = {k: (VARIANTS[key][k] if v is None else v) for k, v in given.items()}
        _check_options(name, num_in_ch, num_out_ch, cfg)
        if fast_body:
            cfg["num_groups"] = max(1, cfg["num_groups"] // 2)
            cfg["num_blocks"] = max(1, cfg["num_blocks"] // 2)

        self.scale = scale
        self.variant = key
        self.config = dict(cfg)  # resolved options, for logs and --check
        nf = cfg["num_feat"]

        self.base = MagicKernelSharpUpsampler(scale, cfg["upsampler_alpha"], num_in_ch, num_out_ch)
        self.conv_in = nn.Conv2d(num_in_ch, nf, 3, 1, 1)
        self.body = nn.Sequential(
            *(
                ResidualGroup(
                    [
                        ParagonBlock(
                            nf,
                            cfg["ffn_expansion"],
                            cfg["band_kernel_size"],
                            cfg["use_norm"],
                            cfg["use_channel_mod"],
                        )
                        for _ in range(cfg["num_blocks"])
                    ]
                )
                for _ in range(cfg["num_groups"])
            )
        )
        self.conv_fuse = nn.Conv2d(nf, nf, 3, 1, 1)
        self.upsampler = nn.Sequential(nn.Conv2d(nf, nf * scale * scale, 3, 1, 1), nn.PixelShuffle(scale))
        self.conv_out = nn.Conv2d(nf, num_out_ch, 3, 1, 1)
        self._init_detail_head(float(cfg["detail_gain"]))

    @torch.no_grad()
    def _init_detail_head(self, detail_gain: float) -> None:
        icnr_(self.upsampler[0].weight, self.scale)
        self.upsampler[0].bias.zero_()
        # Scaling bias too makes the whole initial detail output exactly detail_gain times the
        # unscaled one, so the frozen base dominates early training.
        self.conv_out.weight.mul_(detail_gain)
        self.conv_out.bias.mul_(detail_gain)

    def forward_detail(self, x: torch.Tensor) -> torch.Tensor:
        """The learned residual alone (HR, ``num_out_ch`` channels)."""
        h = self.body(self.conv_in(x))
        # Each group is residual, so h already carries conv_in's features: this is the global skip.
        h = self.conv_fuse(h) + h
        return self.conv_out(self.upsampler(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.forward_detail(x)


def _check_options(name: str, num_in_ch: int, num_out_ch: int, cfg: dict) -> None:
    """Raise a ValueError naming the option for values the network cannot be built with."""
    if num_in_ch < 1 or num_out_ch < 1:
        raise ValueError(f"{name}: num_in_ch and num_out_ch must be ≥ 1, got {num_in_ch}, {num_out_ch}")
    if cfg["num_feat"] < 4:
        raise ValueError(f"{name}: num_feat must be ≥ 4, got {cfg['num_feat']}")
    for key in ("num_groups", "num_blocks"):
        if cfg[key] < 1:
            raise ValueError(f"{name}: {key} must be ≥ 1, got {cfg[key]}")
    k = cfg["band_kernel_size"]
    if k < 1 or k % 2 == 0:
        raise ValueError(f"{name}: band_kernel_size must be a positive odd number, got {k}")
    if int(cfg["num_feat"] * cfg["ffn_expansion"]) < 1:
        raise ValueError(f"{name}: ffn_expansion {cfg['ffn_expansion']} leaves the FFN without channels")
