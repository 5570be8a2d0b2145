"""LPIPS (Zhang et al. 2018) as a loss, through the ``lpips`` package, without any download by that package.

The package is built with ``pnet_rand=True`` (a randomly initialised AlexNet/VGG16 backbone: it
would otherwise fetch torchvision's ImageNet weights itself) and ``pretrained=True`` (its small
linear calibration layers, which ship inside the package as ``lpips/weights/v0.1/<net>.pth``).
The ImageNet backbone is then loaded by :func:`utils.pretrained.load_backbone_weights`, so it comes
from ``weights_path``, the torch hub cache, or a download with a clear offline message.

lpips keeps torchvision's ``features.<i>`` layers in slices (``slice1.0``, ``slice2.3``, ...,
``slice5.10`` for AlexNet), keeping the index, so torchvision key ``features.<i>.<param>`` maps
onto ``slice<k>.<i>.<param>``.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from losses.perceptual_loss import check_bands, select_bands
from utils.pretrained import load_backbone_weights
from utils.registry import LOSS_REGISTRY

# lpips's net name → the torchvision arch of its backbone.
_ARCHS = {"alex": "alexnet", "vgg": "vgg16"}
_LPIPS_VERSION = "0.1"


@LOSS_REGISTRY.register()
class LPIPSLoss(nn.Module):
    """Batch mean LPIPS distance between sr and gt (0 for identical images).

    Inputs are [0, 1] images (``range_norm: true`` for [-1, 1]); 3 channels, or ``bands`` to pick
    three. ``pretrained``/``weights_path`` concern the backbone's torchvision ImageNet file
    (``alexnet-owt-7be5be79.pth`` or ``vgg16-397923af.pth``); with ``pretrained: false`` the backbone
    is random (tests only) while the calibration layers stay as shipped. Frozen, always in eval mode.

    Args:
        net: backbone: ``alex`` (AlexNet, the usual LPIPS) or ``vgg`` (VGG16).
        pretrained: load the backbone's torchvision ImageNet weights (hub cache or download); false leaves
            it random (tests only). Ignored when ``weights_path`` is set.
        weights_path: local ``.pth``/``.pt``/``.safetensors`` file with the backbone's weights (torchvision's
            file or the backbone's own state dict); wins over ``pretrained``.
        bands: three distinct channel indices fed to the network as R, G, B, needed for inputs that do not
            have exactly 3 channels; null: the input must be RGB.
        range_norm: the inputs are in [-1, 1] rather than [0, 1].
    """

    def __init__(
        self,
        net: Literal["alex", "vgg"] = "alex",
        pretrained: bool = True,
        weights_path: str | None = None,
        bands: list[int] | None = None,
        range_norm: bool = False,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        try:
            import lpips
        except ImportError as err:
            raise ImportError(f"{name} needs the lpips package: pip install lpips") from err
        if net not in _ARCHS:
            raise ValueError(f"{name}: net must be 'alex' or 'vgg', got {net!r}")
        self.net = net
        self.range_norm = range_norm
        self.bands = check_bands(bands, name)

        # lpips loads these with strict=False, i.e. silently nothing if the file had other keys.
        lin_file = Path(lpips.__file__).parent / "weights" / f"v{_LPIPS_VERSION}" / f"{net}.pth"
        if not lin_file.is_file():
            raise FileNotFoundError(
                f"{name}: the lpips package lacks its calibration weights {lin_file}; reinstall it (pip install lpips)"
            )
        with warnings.catch_warnings():
            # lpips still calls torchvision's deprecated `pretrained=` argument.
            warnings.filterwarnings("ignore", message=r".*('pretrained'|weight enum)", category=UserWarning)
            self.model = lpips.LPIPS(
                net=net, version=_LPIPS_VERSION, pretrained=True, pnet_rand=True, verbose=False
            )
        lin_state = torch.load(lin_file, map_location="cpu", weights_only=True)
        model_state = self.model.state_dict()
        lin_keys = {k for k in model_state if re.match(r"lin\d+\.", k)}
        if not lin_keys or not lin_keys <= set(lin_state) or any(
            not torch.equal(model_state[k], lin_state[k]) for k in lin_keys
        ):
            raise RuntimeError(f"{name}: lpips did not load its calibration weights from {lin_file}")

        backbone = self.model.net
        key_map = {k: re.sub(r"^slice\d+\.", "features.", k) for k in backbone.state_dict()}
        load_backbone_weights(backbone, _ARCHS[net], pretrained, weights_path, owner=name, key_map=key_map)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPSLoss:
        # lpips's linear layers have dropout: the trainer's model.train() must not switch it on.
        return super().train(False)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        name = type(self).__name__
        if pred.shape != target.shape:
            raise ValueError(f"{name}: pred and target differ in shape: {tuple(pred.shape)} vs {tuple(target.shape)}")
        pred = select_bands(pred, self.bands, name).float()
        target = select_bands(target, self.bands, name).float().detach()
        if not self.range_norm:  # lpips takes [-1, 1]
            pred, target = pred * 2.0 - 1.0, target * 2.0 - 1.0
        with torch.autocast(device_type=pred.device.type, enabled=False):
            return self.model(pred, target).mean()

    def extra_repr(self) -> str:
        return f"net={self.net!r}, bands={self.bands}, range_norm={self.range_norm}"
