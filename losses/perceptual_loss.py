"""Perceptual (VGG feature) loss, as in SRGAN/ESRGAN: distances between frozen ImageNet VGG features.

Layers are named as in BasicSR: ``conv<block>_<i>`` / ``relu<block>_<i>`` for the i-th convolution
of a block and its activation, ``pool<block>`` for the block's max-pool, e.g. for vgg19
``conv1_1, relu1_1, conv1_2, relu1_2, pool1, conv2_1, ..., conv5_4, relu5_4, pool5``
(convs per block: vgg11 1,1,2,2,2; vgg13 2,2,2,2,2; vgg16 2,2,3,3,3; vgg19 2,2,4,4,4).
A ``conv`` feature is taken before its ReLU, which is what ESRGAN uses (``conv5_4``).

Inputs are [0, 1] images (``range_norm: true`` for [-1, 1]) with 3 channels; other channel counts
need ``bands``, the three channels to feed the network, in the network's R, G, B order.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from utils.pretrained import load_backbone_weights
from utils.registry import LOSS_REGISTRY

VGG_TYPES = ("vgg11", "vgg13", "vgg16", "vgg19")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_bands(bands: list[int] | None, owner: str) -> list[int] | None:
    """Validate a ``bands`` option: None, or exactly 3 distinct non-negative ints."""
    if bands is None:
        return None
    ok = (
        isinstance(bands, (list, tuple))
        and len(bands) == 3
        and all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in bands)
        and len(set(bands)) == 3
    )
    if not ok:
        raise ValueError(
            f"{owner}: bands must be 3 distinct non-negative channel indices, e.g. [0, 1, 2]; got {bands!r}"
        )
    return list(bands)


def select_bands(x: Tensor, bands: list[int] | None, owner: str) -> Tensor:
    """The three channels of NCHW ``x`` the network sees: ``bands`` if set, else ``x`` if it is RGB."""
    if x.dim() != 4:
        raise ValueError(f"{owner} expects NCHW input, got shape {tuple(x.shape)}")
    c = x.shape[1]
    if bands is None:
        if c != 3:
            raise ValueError(
                f"{owner}: the input has {c} channel(s) but the network takes 3; set `bands` to the three "
                f"channels to use (e.g. bands: [0, 1, 2])"
            )
        return x
    if max(bands) >= c:
        raise ValueError(f"{owner}: bands {bands} index channel {max(bands)}, but the input has only {c} channel(s)")
    return x[:, bands]


def _vgg_template(vgg_type: str) -> nn.Sequential:
    """torchvision's ``features`` for ``vgg_type`` on the meta device (no memory, no init)."""
    if vgg_type not in VGG_TYPES:
        raise ValueError(f"vgg_type must be one of {', '.join(VGG_TYPES)}, got {vgg_type!r}")
    with torch.device("meta"):
        return getattr(torchvision.models, vgg_type)(weights=None).features


def vgg_layer_names(vgg_type: str = "vgg19") -> list[str]:
    """BasicSR-style names of the layers of torchvision's ``<vgg_type>().features``, in order."""
    names = []
    block, conv = 1, 0
    for layer in _vgg_template(vgg_type):
        if isinstance(layer, nn.Conv2d):
            conv += 1
            names.append(f"conv{block}_{conv}")
        elif isinstance(layer, nn.ReLU):
            names.append(f"relu{block}_{conv}")
        elif isinstance(layer, nn.MaxPool2d):
            names.append(f"pool{block}")
            block, conv = block + 1, 0
        else:  # the batch-norm variants are not offered
            raise TypeError(f"unexpected layer {layer!r} in torchvision's {vgg_type}")
    return names


class VGGFeatureExtractor(nn.Module):
    """Frozen torchvision VGG ``features``, cut after the last requested layer; returns name → feature.

    Always in eval mode and without gradients to its weights (gradients still reach the input).
    Random weights (``pretrained: false``) use torchvision's VGG scheme: Kaiming-normal
    (fan_out, relu) convolutions, zero biases.
    """

    def __init__(
        self,
        layer_names: Sequence[str],
        vgg_type: str = "vgg19",
        use_input_norm: bool = True,
        range_norm: bool = False,
        pretrained: bool = True,
        weights_path: str | None = None,
        owner: str = "VGGFeatureExtractor",
    ) -> None:
        super().__init__()
        names = vgg_layer_names(vgg_type)
        unknown = [n for n in layer_names if n not in names]
        if unknown or not layer_names:
            raise ValueError(
                f"{owner}: unknown {vgg_type} layer(s) {unknown or list(layer_names)}; valid names: {', '.join(names)}"
            )
        self.vgg_type = vgg_type
        self.layer_names = list(layer_names)
        self.use_input_norm = use_input_norm
        self.range_norm = range_norm
        last = max(names.index(n) for n in layer_names)

        # Build on meta, keep only what runs, then allocate: the unused classifier is never initialised.
        template = _vgg_template(vgg_type)
        layers = OrderedDict()
        for name, layer in zip(names[: last + 1], template[: last + 1]):
            # torchvision's ReLUs are in-place and would overwrite the conv output we want to keep.
            layers[name] = nn.ReLU(inplace=False) if isinstance(layer, nn.ReLU) else layer
        self.features = nn.Sequential(layers).to_empty(device="cpu")
        for layer in self.features:
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(layer.bias)
        # torchvision keys are features.<index>.<param>, with the index of the layer in features.
        key_map = {
            f"features.{name}.{param}": f"features.{i}.{param}"
            for i, (name, layer) in enumerate(self.features.named_children())
            for param, _ in layer.named_parameters()
        }
        load_backbone_weights(self, vgg_type, pretrained, weights_path, owner=owner, key_map=key_map)
        self.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> VGGFeatureExtractor:
        # A frozen feature network: the trainer's model.train() must not switch it to training mode.
        return super().train(False)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if self.range_norm:
            x = (x + 1.0) / 2.0
        if self.use_input_norm:
            x = (x - self.mean) / self.std
        wanted = set(self.layer_names)
        out = {}
        for name, layer in self.features.named_children():
            x = layer(x)
            if name in wanted:
                out[name] = x
        return out

    def extra_repr(self) -> str:
        return (
            f"vgg_type={self.vgg_type!r}, layer_names={self.layer_names}, "
            f"use_input_norm={self.use_input_norm}, range_norm={self.range_norm}"
        )


@LOSS_REGISTRY.register()
class PerceptualLoss(nn.Module):
    """Σ_l w_l · criterion(φ_l(sr), φ_l(gt)) over VGG layers l (divided by Σ_l w_l if ``normalize_weights``).

    ``layer_weights`` maps layer names (see the module docstring) to weights; None means
    ``{conv5_4: 1.0}``. ``criterion`` is the mean absolute (``l1``) or mean squared (``l2`` = ``mse``)
    difference. ``pretrained``/``weights_path``: see :func:`utils.pretrained.load_backbone_weights`.
    gt features carry no gradient. Under ``amp: bf16 | fp16`` the VGG runs in that precision
    (``amp_ok``: the runner calls it inside autocast), which is most of the loss's cost; the
    feature distances are always computed in float32.

    Args:
        layer_weights: VGG layer name → weight (≥ 0, at least one > 0), e.g. ``{conv2_2: 0.1, conv5_4: 1.0}``;
            null: ``{conv5_4: 1.0}`` (ESRGAN's).
        vgg_type: VGG depth: ``vgg11``, ``vgg13``, ``vgg16`` or ``vgg19``; the valid layer names depend on it.
        criterion: feature distance: ``l1`` (mean absolute) or ``l2`` / ``mse`` (mean squared).
        use_input_norm: normalise the inputs with the ImageNet mean and std before the VGG (as it was trained).
        range_norm: the inputs are in [-1, 1] and are mapped to [0, 1] first.
        normalize_weights: divide the weighted sum by the sum of the layer weights.
        bands: three distinct channel indices fed to the VGG as R, G, B, needed for inputs that do not have
            exactly 3 channels; null: the input must be RGB.
        pretrained: load torchvision's ImageNet VGG weights (hub cache or download); false leaves the VGG
            random (tests only). Ignored when ``weights_path`` is set.
        weights_path: local ``.pth``/``.pt``/``.safetensors`` file with the VGG weights (torchvision's file
            or the extractor's own state dict); wins over ``pretrained``.
    """

    amp_ok = True

    def __init__(
        self,
        layer_weights: dict[str, float] | None = None,
        vgg_type: Literal["vgg11", "vgg13", "vgg16", "vgg19"] = "vgg19",
        criterion: Literal["l1", "l2", "mse"] = "l1",
        use_input_norm: bool = True,
        range_norm: bool = False,
        normalize_weights: bool = False,
        bands: list[int] | None = None,
        pretrained: bool = True,
        weights_path: str | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if vgg_type not in VGG_TYPES:
            raise ValueError(f"{name}: vgg_type must be one of {', '.join(VGG_TYPES)}, got {vgg_type!r}")
        if criterion not in ("l1", "l2", "mse"):
            raise ValueError(f"{name}: criterion must be 'l1', 'l2' or 'mse', got {criterion!r}")
        layer_weights = {"conv5_4": 1.0} if layer_weights is None else dict(layer_weights)
        bad = [v for v in layer_weights.values() if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0]
        if not layer_weights or bad or sum(layer_weights.values()) <= 0:
            raise ValueError(
                f"{name}: layer_weights must map layer names to weights >= 0, at least one > 0; got {layer_weights!r}"
            )
        self.layer_weights = {k: float(v) for k, v in layer_weights.items()}
        self.vgg_type = vgg_type
        self.criterion = criterion
        self.normalize_weights = normalize_weights
        self.bands = check_bands(bands, name)
        self.vgg = VGGFeatureExtractor(
            list(self.layer_weights),
            vgg_type=vgg_type,
            use_input_norm=use_input_norm,
            range_norm=range_norm,
            pretrained=pretrained,
            weights_path=weights_path,
            owner=name,
        )

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        name = type(self).__name__
        if pred.shape != target.shape:
            raise ValueError(f"{name}: pred and target differ in shape: {tuple(pred.shape)} vs {tuple(target.shape)}")
        pred = select_bands(pred, self.bands, name).float()
        target = select_bands(target, self.bands, name).float()
        distance = F.l1_loss if self.criterion == "l1" else F.mse_loss
        # The network runs in the runner's precision (see ``amp_ok``); distances are float32.
        pred_feats = self.vgg(pred)
        with torch.no_grad():
            target_feats = self.vgg(target.detach())
        loss = sum(w * distance(pred_feats[k].float(), target_feats[k].float()) for k, w in self.layer_weights.items())
        if self.normalize_weights:
            loss = loss / sum(self.layer_weights.values())
        return loss

    def extra_repr(self) -> str:
        return (
            f"layer_weights={self.layer_weights}, criterion={self.criterion!r}, "
            f"normalize_weights={self.normalize_weights}, bands={self.bands}"
        )
