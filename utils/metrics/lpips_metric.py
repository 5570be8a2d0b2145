"""LPIPS as a test metric: the training loss :class:`~losses.lpips_loss.LPIPSLoss`, scored per image.

The loss module already loads the backbone offline (``weights_path``, the torch hub cache, or
``pretrained: false`` for a random backbone) and keeps lpips's calibration layers as shipped; this
metric only builds it once per setting and device and scores each image of a batch on its own.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from utils.metrics.psnr_ssim import ImageTooSmallError, prepare_pair
from utils.registry import METRIC_REGISTRY

# Smallest image side each backbone accepts: below it a pooling layer gets an empty input
# (measured: AlexNet's strided first conv and three max-pools, VGG16's four max-pools before its
# last LPIPS layer).
_MIN_SIDE = {"alex": 31, "vgg": 16}
# Modules built so far, by (net, pretrained, weights_path, device): building one reads weights.
_MODULES: dict[tuple[str, bool, str | None, str], torch.nn.Module] = {}


def lpips_module(net: str, pretrained: bool, weights_path: str | None, device: torch.device) -> torch.nn.Module:
    """The frozen :class:`LPIPSLoss` for these settings on ``device``, built on first use.

    A random backbone (``pretrained: false`` without ``weights_path``) is drawn from a fixed seed,
    without touching the caller's random state, so its scores are the same in every run.
    """
    from losses.lpips_loss import LPIPSLoss

    key = (net, pretrained, weights_path, str(device))
    if key not in _MODULES:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            module = LPIPSLoss(net=net, pretrained=pretrained, weights_path=weights_path)
        _MODULES[key] = module.to(device)
    return _MODULES[key]


@METRIC_REGISTRY.register()
def calculate_lpips(
    img: Tensor,
    img2: Tensor,
    crop_border: int = 0,
    net: Literal["alex", "vgg"] = "alex",
    pretrained: bool = True,
    weights_path: str | None = None,
) -> Tensor:
    """Per-image LPIPS distance (Zhang et al. 2018) on RGB; shape (N,), float64, lower is better.

    Always on the RGB images, also when the other metrics score Y. The network runs in float32;
    images must keep at least 31 (``alex``) or 16 (``vgg``) pixels per side after cropping.

    Args:
        img: output images, float NCHW (or one CHW image) in [0, 1], 3 channels; passed by the trainer.
        img2: reference (gt) images of the same shape; passed by the trainer.
        crop_border: pixels removed from each edge of both images before scoring (often the scale).
        net: backbone: ``alex`` (AlexNet, the usual LPIPS) or ``vgg`` (VGG16).
        pretrained: load the backbone's torchvision ImageNet weights from the torch hub cache (or download
            them); false leaves it random from a fixed seed (tests only). Ignored when ``weights_path`` is
            set.
        weights_path: local ``.pth``/``.pt``/``.safetensors`` file with the backbone's weights (torchvision's
            file, e.g. ``alexnet-owt-7be5be79.pth``), so that the metric runs offline.
    """
    name = "calculate_lpips"
    a, b = prepare_pair(img, img2, crop_border, False, "studio", name)
    if a.shape[1] != 3:
        raise ValueError(f"{name}: LPIPS needs RGB images (3 channels), got {a.shape[1]}")
    if net not in _MIN_SIDE:
        raise ValueError(f"{name}: net must be 'alex' or 'vgg', got {net!r}")
    h, w = a.shape[-2:]
    if min(h, w) < _MIN_SIDE[net]:
        raise ImageTooSmallError(f"{name}: the {net} backbone needs at least {_MIN_SIDE[net]} pixels per side "
                                 f"after cropping, got {h}x{w}")
    module = lpips_module(net, pretrained, weights_path, a.device)
    with torch.no_grad():
        values = [module(a[i:i + 1].float(), b[i:i + 1].float()) for i in range(a.shape[0])]
    return torch.stack(values).to(torch.float64)


calculate_lpips.higher_is_better = False
