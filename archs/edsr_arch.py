"""EDSR (Lim et al., 2017) with BasicSR state-dict key names."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from archs.arch_blocks import PixelShuffleUpsampler, check_scale, conv3x3
from utils.registry import ARCH_REGISTRY

if TYPE_CHECKING:
    from utils.weights import LoadReport


class ResidualBlockNoBN(nn.Module):
    """conv-ReLU-conv with the branch scaled by ``res_scale`` before the skip."""

    def __init__(self, num_feat: int, res_scale: float = 1.0) -> None:
        super().__init__()
        self.conv1 = conv3x3(num_feat, num_feat)
        self.conv2 = conv3x3(num_feat, num_feat)
        self.relu = nn.ReLU(inplace=True)
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res_scale * self.conv2(self.relu(self.conv1(x)))


def _band_mean(rgb_mean: Sequence[float], num_ch: int, what: str) -> torch.Tensor:
    """The per-band mean as a (1, C, 1, 1) tensor.

    ``rgb_mean`` must have one value per band, or exactly three (the RGB default): then bands
    past the third get mean 0 (e.g. NIR in RGB-NIR) and 1- or 2-band images use the first values.
    """
    values = [float(v) for v in rgb_mean]
    if len(values) != num_ch:
        if len(values) != 3:
            raise ValueError(
                f"EDSR: rgb_mean has {len(values)} values but {what}={num_ch}; give one value per "
                "band or the 3-value RGB mean"
            )
        values = (values + [0.0] * num_ch)[:num_ch]
    return torch.tensor(values, dtype=torch.float32).view(1, num_ch, 1, 1)


@ARCH_REGISTRY.register()
class EDSR(nn.Module):
    """Enhanced Deep Residual network for SR.

    Input is shifted by the dataset mean and multiplied by ``img_range`` (BasicSR convention);
    the mean lives in non-persistent buffers so checkpoints carry only BasicSR's keys. With other
    than 3 bands, ``rgb_mean`` either has one value per band or stays the 3-value RGB mean, whose
    bands past the third get mean 0.
    ``residual_output`` adds the nearest-upsampled input outside the network (no parameters) in
    place of the mean, so the network predicts the residual over nearest upscaling and weights
    trained without it load unchanged (their output offset is then relearnt).
    Baseline: 16x64; EDSR-L: 32x256, res_scale 0.1.

    Args:
        num_in_ch: channels (bands) of the input image.
        num_out_ch: channels (bands) of the output image.
        num_feat: feature channels of every conv between the first and the last (64 baseline, 256 EDSR-L).
        num_block: number of residual blocks in the body (16 baseline, 32 EDSR-L).
        scale: upscaling factor: 2, 3 or 4 (sub-pixel upsampling).
        res_scale: factor on each residual block's branch before its skip (1.0 baseline; 0.1 keeps the wide
            EDSR-L stable).
        img_range: factor on the mean-shifted input before the first conv, divided out again at the output;
            255 matches BasicSR's EDSR weights for [0, 1] images.
        rgb_mean: per-band mean on the [0, 1] scale, subtracted from the input and added back to the output:
            one value per band, or the 3-value RGB mean (bands past the third then get 0).
        residual_output: add the nearest-upsampled input to the output instead of the mean (no parameters): the
            network predicts the residual over nearest upscaling; needs ``num_in_ch == num_out_ch``.
    """

    valid_scales: ClassVar[tuple[int, ...]] = (2, 3, 4)
    test_kwargs: ClassVar[dict] = {"num_feat": 8, "num_block": 2}
    #: the scale-specific end (sub-pixel upsampler and the conv after it): what ``train.tail_only``
    #: trains, what ``train.lr_tail`` applies to, and what a warm start from another scale renews;
    #: everything else (conv_first, body, conv_after_body) is the trunk, identical at every scale
    tail_prefixes: ClassVar[tuple[str, ...]] = ("upsample.", "conv_last.")

    def __init__(
        self,
        num_in_ch: int = 3,
        num_out_ch: int = 3,
        num_feat: int = 64,
        num_block: int = 16,
        scale: int = 4,
        res_scale: float = 1.0,
        img_range: float = 255.0,
        rgb_mean: Sequence[float] = (0.4488, 0.4371, 0.4040),
        residual_output: bool = False,
    ) -> None:
        super().__init__()
        check_scale("EDSR", scale, self.valid_scales)
        if residual_output and num_in_ch != num_out_ch:
            raise ValueError(
                f"EDSR: residual_output needs num_in_ch == num_out_ch (got {num_in_ch} and {num_out_ch})"
            )
        self.scale = scale
        self.img_range = img_range
        self.residual_output = residual_output
        self.register_buffer("mean_in", _band_mean(rgb_mean, num_in_ch, "num_in_ch"), persistent=False)
        self.register_buffer("mean_out", _band_mean(rgb_mean, num_out_ch, "num_out_ch"), persistent=False)

        self.conv_first = conv3x3(num_in_ch, num_feat)
        self.body = nn.Sequential(*[ResidualBlockNoBN(num_feat, res_scale) for _ in range(num_block)])
        self.conv_after_body = conv3x3(num_feat, num_feat)
        self.upsample = PixelShuffleUpsampler(scale, num_feat)
        self.conv_last = conv3x3(num_feat, num_out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.conv_first((x - self.mean_in) * self.img_range)
        feat = feat + self.conv_after_body(self.body(feat))
        out = self.conv_last(self.upsample(feat)) / self.img_range
        if self.residual_output:
            # the network predicts the residual over the nearest-upsampled input: it starts at the
            # nearest baseline, and the mean shift is not added back (a residual has no offset)
            return out + F.interpolate(x, scale_factor=self.scale, mode="nearest")
        return out + self.mean_out

    def after_warm_start(self, source: dict | None, report: LoadReport) -> str | None:
        """Adjust a warm-started network for where its weights came from (``source``: the file's
        recorded network options, or None).

        - Residual blocks the file did not have (a deeper network, e.g. 16 -> 32 blocks) start
          as the identity, their ``conv2`` zeroed: the grown network computes exactly what the
          loaded one did. Left random they would add noise to every feature, and a stage that
          freezes the trunk (``tail_only``) would keep that noise for good.
        - A residual network (``residual_output``) whose ``conv_last`` did not come from a
          residual network of this scale starts it at zero, so it starts at the nearest
          baseline. Loaded from a non-residual network, ``conv_last`` paints the whole image,
          which added to the nearest upscale doubles it; renewed across scales, it adds noise.
        """
        notes, zeroed = [], []
        missing = set(report.missing)
        new_blocks = [i for i in range(len(self.body))
                      if f"body.{i}.conv1.weight" in missing and f"body.{i}.conv2.weight" in missing]
        if new_blocks and report.loaded:
            zeroed += [self.body[i].conv2 for i in new_blocks]
            span = f"{new_blocks[0]}-{new_blocks[-1]}" if len(new_blocks) > 1 else str(new_blocks[0])
            notes.append(f"new residual blocks body.{span} start as the identity (conv2 zeroed)")
        why = None
        if self.residual_output:
            if "conv_last.weight" in report.renewed:
                why = "it is new at this scale"
            elif source is not None and not source.get("residual_output", False):
                why = "the weights come from a network without residual_output"
        if why:
            zeroed.append(self.conv_last)
            notes.append(f"conv_last zeroed ({why}): the network starts at the nearest-neighbour upscale")
        with torch.no_grad():
            for conv in zeroed:
                conv.weight.zero_()
                conv.bias.zero_()
        return "; ".join(notes) or None

    @classmethod
    def adapt_state_dict(cls, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename original EDSR-PyTorch keys to BasicSR's; drop MeanShift weights and buffers.

        EDSR-PyTorch: ``head.0`` → ``conv_first``, ``body.N.body.0/2`` → ``body.N.conv1/conv2``,
        the plain conv closing ``body`` (``body.{num_block}``) → ``conv_after_body``,
        ``tail.0.K`` → ``upsample.K``, ``tail.1`` → ``conv_last``. BasicSR names pass unchanged.
        """
        out = {}
        for key, value in sd.items():
            if key.split(".")[0] in ("sub_mean", "add_mean", "mean", "mean_in", "mean_out"):
                continue
            new = key
            if key.startswith("head.0."):
                new = "conv_first." + key[len("head.0."):]
            elif m := re.fullmatch(r"body\.(\d+)\.body\.([02])\.(weight|bias)", key):
                new = f"body.{m[1]}.conv{1 if m[2] == '0' else 2}.{m[3]}"
            elif m := re.fullmatch(r"body\.(\d+)\.(weight|bias)", key):
                new = f"conv_after_body.{m[2]}"
            elif m := re.fullmatch(r"tail\.0\.(\d+)\.(weight|bias)", key):
                new = f"upsample.{m[1]}.{m[2]}"
            elif key.startswith("tail.1."):
                new = "conv_last." + key[len("tail.1."):]
            out[new] = value
        return out
