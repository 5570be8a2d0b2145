"""PBRFusionNet (NeuroPBR): three rendered views in, four PBR maps out, with cross-view ViT fusion.

Data flow: every view runs through one shared encoder (views folded into the batch); the deepest
features become tokens (1x1 projection to ``fusion_dim``, a learned view embedding, a learned 2D
position embedding resized to the token grid); a pre-norm Transformer encoder attends across the
tokens of all views at once; the fused tokens and the encoder's skip features are merged over the
views (``view_merge``) and a UNet decoder brings them back to the input resolution; an optional
sub-pixel upsampler applies the SR ``scale``; four heads give the maps.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar, Literal
from urllib.parse import urlparse

import torch
import torchvision
from torch import Tensor, nn
from torch.nn import functional as F

from archs.arch_blocks import PixelShuffleUpsampler, check_scale, conv3x3, scaled_kaiming_init
from utils.pretrained import load_backbone_weights
from utils.registry import ARCH_REGISTRY

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
ENCODERS = (*RESNETS, "unet")
RESNET_STRIDES = (4, 8, 16, 32)
MAP_CHANNELS = {"albedo": 3, "roughness": 1, "metallic": 1, "normal": 3}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
POS_GRID = 16  # side of the learned position-embedding grid, resized to the token grid of any input
IMAGE_SKIP_CH = 32  # channels of the full-resolution skip that ResNet encoders (first level at /2) get
_NAME = "PBRFusionNet"


def stack_views(views: Sequence[Tensor], num_views: int = 3) -> Tensor:
    """Stack ``num_views`` RGB views, each (3, H, W) or (B, 3, H, W), on the channel axis.

    Returns (3·V, H, W) or (B, 3·V, H, W), the input :class:`PBRFusionNet` takes. Raises
    ``ValueError`` for a wrong number of views or views whose shapes differ.
    """
    views = list(views)
    if len(views) != num_views:
        raise ValueError(f"{_NAME}: expected {num_views} views, got {len(views)}")
    shapes = [tuple(v.shape) for v in views]
    for i, (v, shape) in enumerate(zip(views, shapes)):
        if v.dim() not in (3, 4) or shape[-3] != 3:
            raise ValueError(f"{_NAME}: view {i} has shape {shape}; each view must be (3, H, W) or (B, 3, H, W)")
    if len(set(shapes)) != 1:
        listed = ", ".join(f"view {i}: {s}" for i, s in enumerate(shapes))
        raise ValueError(f"{_NAME}: the views differ in size ({listed}); resize or crop them to one size")
    return torch.cat(views, dim=-3)


def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm)


class ResNetEncoder(nn.Module):
    """torchvision ResNet trunk, cut after the stage that reaches ``stride``; keys are torchvision's.

    Returns the features after the stem (stride 2) and after each kept stage (4, 8, 16, 32).
    """

    def __init__(self, arch: str, stride: int) -> None:
        super().__init__()
        net = torchvision.models.get_model(arch, weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.num_stages = int(math.log2(stride)) - 1
        expansion = 1 if arch in ("resnet18", "resnet34") else 4
        self.channels = [64] + [64 * 2**i * expansion for i in range(self.num_stages)]
        for i in range(1, self.num_stages + 1):
            setattr(self, f"layer{i}", getattr(net, f"layer{i}"))

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        feats = [x]
        x = self.maxpool(x)
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
            feats.append(x)
        return feats


def _double_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True),
    )


class UNetEncoder(nn.Module):
    """UNet contracting path: (conv-BN-ReLU) x 2 per level, 2x2 max-pool between levels."""

    def __init__(self, channels: Sequence[int]) -> None:
        super().__init__()
        self.channels = list(channels)
        ins = [3, *self.channels[:-1]]
        self.levels = nn.ModuleList(_double_conv(i, o) for i, o in zip(ins, self.channels))

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for i, level in enumerate(self.levels):
            x = level(x if i == 0 else F.max_pool2d(x, 2))
            feats.append(x)
        return feats


class DecoderBlock(nn.Module):
    """x2 bilinear upsampling, concatenation with the skip, conv-ReLU-conv-ReLU."""

    def __init__(self, in_ch: int, skip_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_ch + skip_ch, out_ch)
        self.conv2 = conv3x3(out_ch, out_ch)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        x = F.relu(self.conv1(torch.cat([x, skip], 1)), inplace=True)
        return F.relu(self.conv2(x), inplace=True)


class ViewMerge(nn.Module):
    """(B, V, C, H, W) → (B, C, H, W): the mean over views, or a learned 1x1 conv of the concatenation."""

    def __init__(self, mode: str, num_views: int, channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(num_views * channels, channels, 1) if mode == "concat" else None

    def forward(self, x: Tensor) -> Tensor:
        if self.proj is None:
            return x.mean(1)
        return self.proj(x.flatten(1, 2))


def _imagenet_state_dict(arch: str) -> dict[str, Tensor]:
    """torchvision's IMAGENET1K_V1 weights for ``arch`` (hub cache or download), or an error saying
    how to supply the file offline."""
    weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=False)
    except Exception as err:  # offline, proxy, TLS, a damaged cached file: the user's remedy is the same
        file = os.path.basename(urlparse(weights.url).path)
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise RuntimeError(
            f"{_NAME}: pretrained: true, but torchvision's ImageNet weights for {arch} could not be loaded "
            f"({type(err).__name__}: {err}).\n"
            f"Download {weights.url} on a machine with internet access, then either\n"
            f"  - set `weights_path: /path/to/{file}` in the network's options (network_g), or\n"
            f"  - copy it into the torch hub cache folder {cache}{os.sep} (used from there without a download);\n"
            f"or set `pretrained: false` to start the encoder from random weights."
        ) from err


@ARCH_REGISTRY.register()
class PBRFusionNet(nn.Module):
    """Multi-view PBR reconstruction (NeuroPBR): shared encoder, ViT cross-view fusion, UNet decoder, four heads.

    Input: ``num_views`` RGB views in [0, 1], either stacked on the channels, (B, 3·V, H, W) (view
    ``i`` is channels ``3i..3i+2``; :func:`stack_views` builds it), or as (B, V, 3, H, W). H and W
    must be multiples of the encoder stride. Output: a dict of (B, C, H·scale, W·scale) maps:
    ``albedo`` (3, sigmoid), ``roughness`` (1, sigmoid), ``metallic`` (1, sigmoid), ``normal``
    (3, unit length per pixel).

    Encoder strides (the downsampling of the deepest features, where the tokens are taken):
    ResNets 4, 8, 16 or 32 (the trunk is cut after layer1, 2, 3 or 4); the UNet encoder
    2^(len(unet_channels) - 1), one level per entry. Skips: the ResNet stem (/2) and every stage
    above the deepest, plus a full-resolution conv on the image; the UNet's every level above the
    deepest. The view embedding makes the output depend on the order of the views (the renders
    come from fixed setups); without it and with ``view_merge: mean`` the network is invariant to
    view order. BatchNorm runs in the encoder only; the decoder and heads have no normalisation.

    Args:
        num_views: views per sample (3 in NeuroPBR); the input has 3·num_views channels.
        scale: SR factor of the maps over the views: 1 (same size), 2, 3, 4 or 8 (sub-pixel upsampling
            after the decoder).
        encoder: shared per-view encoder: ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``,
            ``resnet152`` (torchvision) or ``unet`` (channels from ``unet_channels``).
        unet_channels: channels of the UNet encoder's levels, full resolution first; each further level
            halves the size, so n entries give stride 2^(n-1). Needs at least 2 entries.
        encoder_stride: downsampling of the deepest encoder features, where the tokens are taken (H and W
            must be multiples of it): 4, 8, 16 or 32 for ResNets; for ``unet`` 2^(len(unet_channels)-1);
            null for the encoder's deepest (32 for ResNets).
        decoder_channels: channels of the decoder blocks, full resolution first, one per skip level
            (log2(encoder_stride) entries); null for the encoder's channels at each level (ResNets: 32 at
            full resolution).
        fusion_dim: token width of the cross-view Transformer; divisible by fusion_heads.
        fusion_heads: attention heads of the cross-view Transformer.
        fusion_depth: Transformer encoder layers (pre-norm, GELU, no dropout).
        mlp_ratio: hidden width of the Transformer MLP as a multiple of fusion_dim.
        view_embedding: add a learned embedding per view index to its tokens (order-aware fusion); false
            (with ``view_merge: mean``) makes the network invariant to the order of the views.
        view_merge: how fused tokens and skip features are merged over the views: ``mean`` or ``concat``
            (concatenation and a learned 1x1 conv).
        input_norm: normalise the [0, 1] views with the ImageNet mean and std before the encoder; false
            when the dataset already normalises them.
        pretrained: start a ResNet encoder from torchvision's ImageNet weights (IMAGENET1K_V1, downloaded or
            from the torch hub cache); offline, use weights_path.
        weights_path: local torchvision ResNet state-dict file for the encoder (the full model's keys, e.g.
            resnet50-0676ba61.pth, or the encoder's own); loaded whatever ``pretrained`` says.
        freeze_backbone: the encoder's parameters get no gradients (requires_grad false).
        freeze_bn: the encoder's BatchNorm layers stay in eval mode (running statistics fixed) in training;
            their scale and shift still train unless freeze_backbone.
    """

    #: SR factors of the maps. Not ``valid_scales``: that marks single-image generators (ONNX export,
    #: the four-band test); the arch test reads this and ``test_input_channels`` instead
    map_scales: ClassVar[tuple[int, ...]] = (1, 2, 3, 4, 8)
    test_input_channels: ClassVar[int] = 9
    test_kwargs: ClassVar[dict] = {
        "encoder": "unet", "unet_channels": [8, 16, 32], "fusion_dim": 16, "fusion_heads": 2, "fusion_depth": 1,
    }
    #: the scale-specific end, renewed by a warm start from another scale
    tail_prefixes: ClassVar[tuple[str, ...]] = ("upsampler.",)

    def __init__(
        self,
        num_views: int = 3,
        scale: int = 1,
        encoder: Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "unet"] = "resnet50",
        unet_channels: Sequence[int] = (64, 128, 256, 512, 1024, 2048),
        encoder_stride: int | None = None,
        decoder_channels: Sequence[int] | None = None,
        fusion_dim: int = 2048,
        fusion_heads: int = 32,
        fusion_depth: int = 4,
        mlp_ratio: float = 4.0,
        view_embedding: bool = True,
        view_merge: Literal["mean", "concat"] = "mean",
        input_norm: bool = True,
        pretrained: bool = False,
        weights_path: str | None = None,
        freeze_backbone: bool = False,
        freeze_bn: bool = False,
    ) -> None:
        super().__init__()
        check_scale(_NAME, scale, self.map_scales)
        stride = self._check_options(num_views, encoder, unet_channels, encoder_stride, fusion_dim, fusion_heads,
                                     fusion_depth, mlp_ratio, view_merge, pretrained, weights_path)
        self.num_views, self.scale, self.encoder_stride = num_views, scale, stride
        self.freeze_bn = freeze_bn
        self.input_norm = input_norm
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

        # encoder and skip levels (strides 1, 2, ..., stride / 2)
        if encoder == "unet":
            self.encoder: nn.Module = UNetEncoder(unet_channels)
            self.image_skip = None
            skip_ch = self.encoder.channels[:-1]
        else:
            self.encoder = ResNetEncoder(encoder, stride)
            self.image_skip = nn.Sequential(conv3x3(3, IMAGE_SKIP_CH), nn.ReLU(inplace=True))
            skip_ch = [IMAGE_SKIP_CH, *self.encoder.channels[:-1]]
        deep_ch = self.encoder.channels[-1]
        if decoder_channels is None:
            decoder_channels = skip_ch
        decoder_channels = list(decoder_channels)
        if len(decoder_channels) != len(skip_ch) or any(c < 1 for c in decoder_channels):
            raise ValueError(
                f"{_NAME}: decoder_channels needs {len(skip_ch)} positive entries (one per skip level, "
                f"log2(encoder_stride {stride})), got {decoder_channels}"
            )

        # cross-view fusion
        self.token_proj = nn.Conv2d(deep_ch, fusion_dim, 1)
        self.pos_embed = nn.Parameter(torch.zeros(1, fusion_dim, POS_GRID, POS_GRID))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if view_embedding:
            self.view_embed = nn.Parameter(torch.zeros(num_views, fusion_dim))
            nn.init.trunc_normal_(self.view_embed, std=0.02)
        else:
            self.view_embed = None
        layer = nn.TransformerEncoderLayer(
            fusion_dim, fusion_heads, dim_feedforward=max(1, round(fusion_dim * mlp_ratio)), dropout=0.0,
            activation="gelu", batch_first=True, norm_first=True,
        )
        self.fusion = nn.TransformerEncoder(layer, fusion_depth, norm=nn.LayerNorm(fusion_dim),
                                            enable_nested_tensor=False)

        # merging over views, decoder, SR upsampler, heads
        self.merge_tokens = ViewMerge(view_merge, num_views, fusion_dim)
        self.merge_skips = nn.ModuleList(ViewMerge(view_merge, num_views, c) for c in skip_ch)
        ins = [*decoder_channels[1:], fusion_dim]
        self.decoder = nn.ModuleList(DecoderBlock(i, s, o) for i, s, o in zip(ins, skip_ch, decoder_channels))
        width = decoder_channels[0]
        self.upsampler = PixelShuffleUpsampler(scale, width, act=nn.ReLU) if scale > 1 else None
        self.heads = nn.ModuleDict({
            name: nn.Sequential(conv3x3(width, width), nn.ReLU(inplace=True), conv3x3(width, ch))
            for name, ch in MAP_CHANNELS.items()
        })
        # Kaiming (fan_in, ReLU) init keeps the signal's scale through the decoder; PyTorch's default
        # conv init shrinks it at each layer, leaving random-init maps nearly constant
        new_convs = [self.image_skip, self.merge_tokens, self.merge_skips, self.decoder, self.upsampler, self.heads]
        scaled_kaiming_init([m for m in new_convs if m is not None])

        if encoder != "unet":
            self._load_encoder_weights(encoder, pretrained, weights_path)
        if freeze_backbone:
            self.encoder.requires_grad_(False)
        self.train(self.training)

    @staticmethod
    def _check_options(num_views: int, encoder: str, unet_channels: Sequence[int], encoder_stride: int | None,
                       fusion_dim: int, fusion_heads: int, fusion_depth: int, mlp_ratio: float, view_merge: str,
                       pretrained: bool, weights_path: str | None) -> int:
        """Validate the options; returns the encoder stride."""
        if num_views < 1:
            raise ValueError(f"{_NAME}: num_views must be ≥ 1, got {num_views}")
        if encoder not in ENCODERS:
            raise ValueError(f"{_NAME}: unknown encoder {encoder!r}; valid: {', '.join(ENCODERS)}")
        if view_merge not in ("mean", "concat"):
            raise ValueError(f"{_NAME}: unknown view_merge {view_merge!r}; valid: mean, concat")
        for key, value in (("fusion_dim", fusion_dim), ("fusion_heads", fusion_heads), ("fusion_depth", fusion_depth)):
            if value < 1:
                raise ValueError(f"{_NAME}: {key} must be ≥ 1, got {value}")
        if fusion_dim % fusion_heads:
            raise ValueError(f"{_NAME}: fusion_dim {fusion_dim} is not divisible by fusion_heads {fusion_heads}")
        if not mlp_ratio > 0:
            raise ValueError(f"{_NAME}: mlp_ratio must be > 0, got {mlp_ratio}")
        if encoder == "unet":
            channels = list(unet_channels)
            if len(channels) < 2 or any(c < 1 for c in channels):
                raise ValueError(
                    f"{_NAME}: unet_channels needs at least 2 positive entries (full resolution first), got {channels}"
                )
            stride = 2 ** (len(channels) - 1)
            if encoder_stride is not None and encoder_stride != stride:
                raise ValueError(
                    f"{_NAME}: encoder_stride {encoder_stride} is not supported with encoder unet and "
                    f"{len(channels)} unet_channels, whose deepest level is at stride {stride}; set encoder_stride "
                    f"to {stride} or null, or give unet_channels log2(stride) + 1 entries"
                )
            if pretrained or weights_path is not None:
                raise ValueError(f"{_NAME}: pretrained / weights_path need a ResNet encoder, not encoder unet")
            return stride
        if encoder_stride is None:
            return RESNET_STRIDES[-1]
        if encoder_stride not in RESNET_STRIDES:
            raise ValueError(
                f"{_NAME}: encoder_stride {encoder_stride} is not supported with encoder {encoder}; "
                f"valid: {', '.join(map(str, RESNET_STRIDES))} (or null for 32)"
            )
        return encoder_stride

    def _load_encoder_weights(self, arch: str, pretrained: bool, weights_path: str | None) -> None:
        if weights_path is not None:  # file layouts, missing keys and shape errors are reported there
            load_backbone_weights(self.encoder, arch, False, weights_path, owner=f"{_NAME} ({arch} encoder)")
        elif pretrained:
            state = _imagenet_state_dict(arch)
            self.encoder.load_state_dict({k: state[k] for k in self.encoder.state_dict()}, strict=True)

    def train(self, mode: bool = True) -> PBRFusionNet:
        """Set the training mode; with ``freeze_bn`` the encoder's BatchNorm layers stay in eval mode."""
        super().train(mode)
        if self.freeze_bn:
            for m in self.encoder.modules():
                if _is_bn(m):
                    m.eval()
        return self

    def _views(self, x: Tensor) -> Tensor:
        """The input as (B·V, 3, H, W), after checking the number of views and the size."""
        v = self.num_views
        if x.dim() == 5:
            if x.shape[1] != v or x.shape[2] != 3:
                raise ValueError(f"{_NAME}: expected input (B, {v}, 3, H, W) ({v} RGB views), got {tuple(x.shape)}")
        elif x.dim() == 4:
            if x.shape[1] != 3 * v:
                got = f"{x.shape[1]} channels" + (f" ({x.shape[1] // 3} views)" if x.shape[1] % 3 == 0 else "")
                raise ValueError(
                    f"{_NAME}: expected {v} RGB views stacked on the channels ({3 * v} channels), got {got}"
                )
        else:
            raise ValueError(f"{_NAME}: expected input (B, {3 * v}, H, W) or (B, {v}, 3, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        s = self.encoder_stride
        if h % s or w % s:
            raise ValueError(
                f"{_NAME}: the views are {h}x{w}, but height and width must be multiples of {s} (encoder_stride); "
                "pad or crop them"
            )
        return x.reshape(-1, 3, h, w)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        views = self._views(x)
        b, v = views.shape[0] // self.num_views, self.num_views
        if self.input_norm:
            views = (views - self.mean) / self.std
        feats = self.encoder(views)
        skips = feats[:-1] if self.image_skip is None else [self.image_skip(views), *feats[:-1]]

        tokens = self.token_proj(feats[-1])  # (B·V, D, h, w)
        d, h, w = tokens.shape[1:]
        pos = self.pos_embed
        if (h, w) != pos.shape[-2:]:
            pos = F.interpolate(pos, size=(h, w), mode="bicubic", align_corners=False)
        tokens = tokens.reshape(b, v, d, h, w) + pos.unsqueeze(1)
        if self.view_embed is not None:
            tokens = tokens + self.view_embed.view(1, v, d, 1, 1)
        tokens = tokens.permute(0, 1, 3, 4, 2).reshape(b, v * h * w, d)
        fused = self.fusion(tokens).reshape(b, v, h, w, d).permute(0, 1, 4, 2, 3)

        out = self.merge_tokens(fused)
        for level in reversed(range(len(self.decoder))):
            skip = skips[level]
            skip = self.merge_skips[level](skip.reshape(b, v, *skip.shape[1:]))
            out = self.decoder[level](out, skip)
        if self.upsampler is not None:
            out = self.upsampler(out)
        maps = {name: head(out) for name, head in self.heads.items()}
        for name in ("albedo", "roughness", "metallic"):
            maps[name] = torch.sigmoid(maps[name])
        maps["normal"] = F.normalize(maps["normal"], dim=1, eps=1e-6)
        return maps

    @classmethod
    def adapt_state_dict(cls, sd: dict[str, Tensor]) -> dict[str, Tensor]:
        """Pass a PBRFusionNet checkpoint through; refuse one of another network with a clear message."""
        own = ("encoder.", "token_proj.", "fusion.", "decoder.", "heads.")
        if not sd or any(k.startswith(own) for k in sd):
            return sd
        keys = sorted(sd)
        example = ", ".join(keys[:3])
        if "layer1.0.conv1.weight" in sd and "conv1.weight" in sd:
            raise ValueError(
                f"{_NAME}: these weights are a torchvision ResNet's (keys {example}, ...), not a {_NAME} "
                "checkpoint; give the file as the network's `weights_path` to initialise the encoder"
            )
        raise ValueError(
            f"{_NAME}: these weights are not a {_NAME} checkpoint (keys {example}, ...; a {_NAME} has keys "
            "such as encoder.*, fusion.*, decoder.*, heads.*); they belong to another network"
        )
