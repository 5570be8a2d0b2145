"""Structural losses: 1 - SSIM and 1 - MS-SSIM, computed with the ``pytorch-msssim`` package.

Inputs are NCHW float images in [0, 1] (``data_range=1.0``). With the defaults (Gaussian
window 11, sigma 1.5, K = (0.01, 0.03), 'valid' filtering, per-channel maps averaged) SSIMLoss
is 1 - ``utils.metrics.psnr_ssim.calculate_ssim(sr, gt, crop_border=0, test_y_channel=False)``
up to float32 rounding (at most 1.1e-6 measured on Set5); with ``y_only=True`` it matches
``test_y_channel=True`` with the same ``y_range``.

MS-SSIM downsamples by 2 between scales, so with L scales the coarsest one is
ceil(side / 2**(L-1)) pixels and needs at least ``win_size`` of them: the smaller side of a
patch must be more than (win_size - 1) * 2**(L-1) pixels (160 for the default 5 scales and
window 11). A smaller training patch raises a ValueError at the first forward that names the
minimum and the options to change.

Both losses compute in float32 with autocast switched off, so mixed-precision training does
not run the variance terms (E[x^2] - E[x]^2, prone to cancellation) in half precision.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from utils.color import check_y_range, rgb_to_y
from utils.registry import LOSS_REGISTRY

# pytorch-msssim's (and Wang et al. 2003's) weights for the five scales, finest first.
DEFAULT_MS_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim_min_side(win_size: int, num_scales: int) -> int:
    """Smallest patch side (pixels) that MS-SSIM with ``num_scales`` scales accepts.

    The coarsest scale is ceil(side / 2**(L-1)) pixels and must hold one full window, which is
    exactly side > (win_size - 1) * 2**(L-1).
    """
    return (win_size - 1) * 2 ** (num_scales - 1) + 1


def gaussian_window(win_size: int, win_sigma: float, channels: int) -> Tensor:
    """1-D Gaussian in pytorch-msssim's layout (channels, 1, 1, win_size), float32, sum 1.

    pytorch-msssim builds its default window with float32 exp and normalisation (weights off by
    up to ~3e-7 relative, sum off by ~3e-8), which alone moves SSIM by up to ~1e-5 against the
    float64 metric ``calculate_ssim``; computing it in float64 and rounding once removes that.
    """
    r = torch.arange(win_size, dtype=torch.float64) - win_size // 2
    g = torch.exp(-(r**2) / (2.0 * win_sigma**2))
    g = (g / g.sum()).to(torch.float32)
    return g.view(1, 1, 1, win_size).repeat(channels, 1, 1, 1)


def _msssim_module() -> ModuleType:
    """``pytorch_msssim.ssim`` (ssim, ms_ssim, _ssim): an optional extra, imported when a loss is built."""
    try:
        return importlib.import_module("pytorch_msssim.ssim")
    except ImportError as err:
        raise ImportError("SSIMLoss and MSSSIMLoss need the pytorch-msssim package: pip install pytorch-msssim "
                          "(or pip install upforge[msssim])") from err


def _check_window(name: str, win_size: int, win_sigma: float, data_range: float) -> None:
    if isinstance(win_size, bool) or not isinstance(win_size, int) or win_size < 3 or win_size % 2 == 0:
        raise ValueError(f"{name}: win_size must be an odd int >= 3, got {win_size!r}")
    if not win_sigma > 0:
        raise ValueError(f"{name}: win_sigma must be > 0, got {win_sigma!r}")
    if not data_range > 0:
        raise ValueError(f"{name}: data_range must be > 0, got {data_range!r}")


class _StructuralLoss(nn.Module):
    """Shared option handling and input preparation (shape checks, float32, optional Y)."""

    # Named tensors this loss consumes, in forward's argument order.
    inputs: tuple[str, ...] = ("sr", "gt")

    def __init__(
        self,
        win_size: int = 11,
        win_sigma: float = 1.5,
        data_range: float = 1.0,
        y_only: bool = False,
        y_range: str = "studio",
    ) -> None:
        super().__init__()
        _check_window(type(self).__name__, win_size, win_sigma, data_range)
        check_y_range(y_range)
        self.win_size = win_size
        self.win_sigma = float(win_sigma)
        self.data_range = float(data_range)
        self.y_only = y_only
        self.y_range = y_range
        _msssim_module()  # fail at build time, not at the first step, when the package is missing

    def _prepare(self, sr: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
        name = type(self).__name__
        if sr.shape != gt.shape:
            raise ValueError(f"{name}: sr and gt differ in shape: {tuple(sr.shape)} vs {tuple(gt.shape)}")
        if sr.dim() != 4:
            raise ValueError(f"{name} expects NCHW input, got shape {tuple(sr.shape)}")
        sr, gt = sr.float(), gt.float()
        if self.y_only:
            if sr.shape[1] != 3:
                raise ValueError(f"{name}: y_only=True needs RGB input (3 channels), got shape {tuple(sr.shape)}")
            sr, gt = rgb_to_y(sr, self.y_range), rgb_to_y(gt, self.y_range)
        return sr, gt

    def forward(self, sr: Tensor, gt: Tensor) -> Tensor:
        sr, gt = self._prepare(sr, gt)
        # .float() alone is not enough: inside an autocast region conv2d would still run in fp16.
        with torch.autocast(device_type=sr.device.type, enabled=False):
            return 1.0 - self.similarity(sr, gt)

    def similarity(self, sr: Tensor, gt: Tensor) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (
            f"win_size={self.win_size}, win_sigma={self.win_sigma}, data_range={self.data_range}, "
            f"y_only={self.y_only}, y_range={self.y_range!r}"
        )


@LOSS_REGISTRY.register()
class SSIMLoss(_StructuralLoss):
    """1 - SSIM(sr, gt), SSIM averaged over batch and channels (pytorch_msssim.ssim).

    Args:
        win_size: side in pixels of the Gaussian window, an odd int ≥ 3; patches must be at least that large.
        win_sigma: standard deviation of the Gaussian window in pixels (> 0).
        data_range: value range of the inputs (1.0 for [0, 1] images; > 0); sets SSIM's stabilising constants
            C1 = (0.01 * data_range)^2 and C2 = (0.03 * data_range)^2.
        y_only: compare only the BT.601 luma (Y) of the images; needs RGB (3-channel) input.
        y_range: luma used with ``y_only``: ``studio`` (Y in [16/255, 235/255], as SR papers report) or
            ``full`` (Y in [0, 1]).
    """

    def similarity(self, sr: Tensor, gt: Tensor) -> Tensor:
        h, w = sr.shape[-2:]
        if min(h, w) < self.win_size:
            # pytorch-msssim would silently skip the blur along a short side (with a warning only).
            raise ValueError(
                f"SSIMLoss: patches must be at least win_size={self.win_size} pixels on each side, got {h}x{w}; "
                "raise gt_size or lower win_size"
            )
        win = gaussian_window(self.win_size, self.win_sigma, sr.shape[1])
        return _msssim_module().ssim(sr, gt, data_range=self.data_range, size_average=True, win=win)


@LOSS_REGISTRY.register()
class MSSSIMLoss(_StructuralLoss):
    """1 - MS-SSIM(sr, gt) over ``len(weights)`` scales (default 5, pytorch-msssim's weights).

    ``weights`` are the per-scale exponents, finest scale first, used as given (not
    renormalised). Fewer weights mean fewer scales and a smaller minimum patch size, see
    :func:`ms_ssim_min_side`.

    Args:
        win_size: side in pixels of the Gaussian window, an odd int ≥ 3; the smaller patch side must exceed
            ``(win_size - 1) * 2**(scales - 1)``.
        win_sigma: standard deviation of the Gaussian window in pixels (> 0).
        data_range: value range of the inputs (1.0 for [0, 1] images; > 0); sets SSIM's stabilising constants
            C1 = (0.01 * data_range)^2 and C2 = (0.03 * data_range)^2.
        weights: per-scale exponents (≥ 0), finest scale first, used as given; their count is the number of
            scales; null: pytorch-msssim's 5 weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333).
        y_only: compare only the BT.601 luma (Y) of the images; needs RGB (3-channel) input.
        y_range: luma used with ``y_only``: ``studio`` (Y in [16/255, 235/255], as SR papers report) or
            ``full`` (Y in [0, 1]).
    """

    def __init__(
        self,
        win_size: int = 11,
        win_sigma: float = 1.5,
        data_range: float = 1.0,
        weights: list[float] | None = None,
        y_only: bool = False,
        y_range: str = "studio",
    ) -> None:
        super().__init__(win_size=win_size, win_sigma=win_sigma, data_range=data_range, y_only=y_only, y_range=y_range)
        weights = list(DEFAULT_MS_WEIGHTS if weights is None else weights)
        if not weights or any(not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 for v in weights):
            raise ValueError(f"MSSSIMLoss: weights must be a non-empty list of numbers >= 0, got {weights!r}")
        self.weights = [float(v) for v in weights]
        self.min_side = ms_ssim_min_side(win_size, len(self.weights))

    def similarity(self, sr: Tensor, gt: Tensor) -> Tensor:
        h, w = sr.shape[-2:]
        if min(h, w) < self.min_side:
            raise ValueError(self._too_small_message(h, w))
        win = gaussian_window(self.win_size, self.win_sigma, sr.shape[1])
        if min(h, w) > (self.win_size - 1) * 2**4:
            # pytorch-msssim asserts this 5-scale size whatever len(weights) is; when it holds, use it as is.
            return _msssim_module().ms_ssim(sr, gt, data_range=self.data_range, size_average=True, win=win,
                                            weights=self.weights)
        return self._few_scale_ms_ssim(sr, gt, win)

    def _few_scale_ms_ssim(self, x: Tensor, y: Tensor, win: Tensor) -> Tensor:
        """pytorch_msssim.ms_ssim's computation without its fixed 5-scale size assert.

        Only reached with fewer than 5 scales on patches that are large enough for them; the
        tests check it equals ms_ssim where both apply.
        """
        levels = len(self.weights)
        mcs = []
        for i in range(levels):
            ssim_per_channel, cs = _msssim_module()._ssim(x, y, data_range=self.data_range, win=win, size_average=False)
            if i < levels - 1:
                mcs.append(torch.relu(cs))
                padding = [s % 2 for s in x.shape[2:]]
                x = F.avg_pool2d(x, kernel_size=2, padding=padding)
                y = F.avg_pool2d(y, kernel_size=2, padding=padding)
        stacked = torch.stack([*mcs, torch.relu(ssim_per_channel)], dim=0)  # (level, batch, channel)
        weights = x.new_tensor(self.weights).view(-1, 1, 1)
        return torch.prod(stacked**weights, dim=0).mean()

    def _too_small_message(self, h: int, w: int) -> str:
        levels = len(self.weights)
        side = min(h, w)
        # The most scales this patch would allow with the current window (0 if not even one).
        fit = max((n for n in range(1, 6) if side >= ms_ssim_min_side(self.win_size, n)), default=0)
        hint = ""
        if fit >= 1:
            head = DEFAULT_MS_WEIGHTS[:fit]
            suggestion = ", ".join(f"{v / sum(head):.4f}" for v in head)
            hint = f" (a {side}px patch allows at most {fit} scale(s), e.g. weights: [{suggestion}])"
        return (
            f"MSSSIMLoss: MS-SSIM with {levels} scales and win_size={self.win_size} needs patches whose smaller "
            f"side is at least {self.min_side} pixels (more than (win_size - 1) * 2**{levels - 1}), got {h}x{w}. "
            f"Raise the dataset's gt_size to >= {self.min_side}, or use fewer scales with a shorter weights "
            f"list{hint}, or a smaller win_size."
        )

    def extra_repr(self) -> str:
        return f"weights={self.weights}, " + super().extra_repr()
