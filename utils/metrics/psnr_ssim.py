"""PSNR and SSIM as BasicSR reports them (images on the [0, 255] scale, optional BT.601 Y)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from utils.color import check_y_range, rgb_to_y
from utils.registry import METRIC_REGISTRY

_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5


class ImageTooSmallError(ValueError):
    """An image too small for a metric's settings (``crop_border`` leaves nothing, SSIM's window
    does not fit). A ValueError like the metrics' other input errors; test.py catches exactly this
    one, so that a tiny sprite in a test set is skipped for that metric (and listed) instead of
    stopping the whole evaluation."""


def prepare_pair(
    img: Tensor, img2: Tensor, crop_border: int, test_y_channel: bool, y_range: str, name: str
) -> tuple[Tensor, Tensor]:
    """Validate a metric's inputs; return float64 NCHW copies, border-cropped, Y-converted if asked.

    Accepts NCHW or a single CHW image (treated as a batch of one). Values stay on [0, 1].
    """
    check_y_range(y_range)
    for label, t in (("img", img), ("img2", img2)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}: {label} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name}: {label} must be a float tensor in [0, 1], got dtype {t.dtype}")
        if t.dim() not in (3, 4):
            raise ValueError(f"{name}: {label} must be NCHW (or CHW), got shape {tuple(t.shape)}")
    if img.shape != img2.shape:
        raise ValueError(f"{name}: images differ in shape: {tuple(img.shape)} vs {tuple(img2.shape)}")
    if isinstance(crop_border, bool) or not isinstance(crop_border, int) or crop_border < 0:
        raise ValueError(f"{name}: crop_border must be a non-negative int, got {crop_border!r}")
    if img.dim() == 3:
        img, img2 = img.unsqueeze(0), img2.unsqueeze(0)
    h, w = img.shape[-2:]
    if 2 * crop_border >= min(h, w):
        raise ImageTooSmallError(f"{name}: crop_border={crop_border} leaves nothing of a {h}x{w} image")
    img = img.to(torch.float64)
    img2 = img2.to(img.device, torch.float64)
    if crop_border:
        img = img[..., crop_border:-crop_border, crop_border:-crop_border]
        img2 = img2[..., crop_border:-crop_border, crop_border:-crop_border]
    if test_y_channel:
        if img.shape[1] != 3:
            raise ValueError(
                f"{name}: test_y_channel=True needs RGB images (3 channels), got {img.shape[1]}; "
                "set test_y_channel: false for other channel counts"
            )
        img, img2 = rgb_to_y(img, y_range), rgb_to_y(img2, y_range)
    return img, img2


@METRIC_REGISTRY.register()
def calculate_psnr(
    img: Tensor, img2: Tensor, crop_border: int = 0, test_y_channel: bool = True, y_range: str = "studio"
) -> Tensor:
    """Per-image PSNR in dB on the [0, 255] scale: 10 log10(255^2 / MSE); shape (N,), float64.

    Identical images give ``inf`` (as BasicSR). Inputs are float in [0, 1] and are not
    quantised to 8 bit here; round them first for numbers comparable to papers.

    Args:
        img: output images, float NCHW (or one CHW image) in [0, 1]; passed by the trainer.
        img2: reference (gt) images of the same shape; passed by the trainer.
        crop_border: pixels removed from each edge of both images before scoring (often the scale).
        test_y_channel: score only the BT.601 luma (Y) of RGB images, as SR papers report; false for other
            channel counts.
        y_range: luma used with ``test_y_channel``: ``studio`` (Y in [16/255, 235/255], BasicSR's) or
            ``full`` (Y in [0, 1]).
    """
    a, b = prepare_pair(img, img2, crop_border, test_y_channel, y_range, "calculate_psnr")
    mse = ((a - b) * 255.0).pow(2).mean(dim=(1, 2, 3))
    return 10.0 * torch.log10(255.0**2 / mse)


calculate_psnr.higher_is_better = True


def _gaussian_window(dtype: torch.dtype, device: torch.device, size: int = _SSIM_WINDOW) -> Tensor:
    """``size`` x ``size`` Gaussian normalised to sum 1: 11x11 with sigma 1.5 is what
    cv2.getGaussianKernel gives; smaller windows keep the same shape (sigma = 1.5 * size / 11)."""
    r = size // 2
    sigma = _SSIM_SIGMA * size / _SSIM_WINDOW
    x = torch.arange(-r, r + 1, dtype=dtype, device=device)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def _ssim_window_size(h: int, w: int, small_window: bool) -> int:
    """The SSIM window side for an ``h`` x ``w`` image: 11, or with ``small_window`` the largest odd
    side that fits a smaller image (a 1x1 window leaves SSIM's luminance term alone)."""
    if min(h, w) >= _SSIM_WINDOW:
        return _SSIM_WINDOW
    if not small_window:
        raise ImageTooSmallError(
            f"calculate_ssim: images must be at least {_SSIM_WINDOW}x{_SSIM_WINDOW} after cropping, got {h}x{w} "
            "(small_window: true scores smaller images with a smaller window)"
        )
    side = min(h, w)
    return side if side % 2 else side - 1


@METRIC_REGISTRY.register()
def calculate_ssim(
    img: Tensor,
    img2: Tensor,
    crop_border: int = 0,
    test_y_channel: bool = True,
    y_range: str = "studio",
    small_window: bool = False,
) -> Tensor:
    """Per-image SSIM (Wang et al. 2004, as BasicSR computes it); shape (N,), float64.

    Images are scaled to [0, 255]; C1 = (0.01*255)^2, C2 = (0.03*255)^2; the 11x11 Gaussian
    window (sigma 1.5) is applied without padding (valid region only); the SSIM map is
    averaged per channel and the channel means are averaged.

    Args:
        img: output images, float NCHW (or one CHW image) in [0, 1]; passed by the trainer.
        img2: reference (gt) images of the same shape; passed by the trainer.
        crop_border: pixels removed from each edge of both images before scoring (often the scale); at least
            11x11 pixels must remain.
        test_y_channel: score only the BT.601 luma (Y) of RGB images, as SR papers report; false for other
            channel counts.
        y_range: luma used with ``test_y_channel``: ``studio`` (Y in [16/255, 235/255], BasicSR's) or
            ``full`` (Y in [0, 1]).
        small_window: images smaller than 11x11 after cropping (pixel-art tiles and sprites) use the largest
            odd window that fits, its Gaussian sigma scaled by size/11, instead of raising; images that fit
            the 11x11 window are unaffected.
    """
    a, b = prepare_pair(img, img2, crop_border, test_y_channel, y_range, "calculate_ssim")
    n, c, h, w = a.shape
    size = _ssim_window_size(h, w, small_window)
    a = a * 255.0
    b = b * 255.0
    c1 = (0.01 * 255.0) ** 2
    c2 = (0.03 * 255.0) ** 2
    window = _gaussian_window(a.dtype, a.device, size).expand(c, 1, size, size)

    def blur(x: Tensor) -> Tensor:
        return F.conv2d(x, window, groups=c)

    mu1, mu2 = blur(a), blur(b)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma1_sq = blur(a * a) - mu1_sq
    sigma2_sq = blur(b * b) - mu2_sq
    sigma12 = blur(a * b) - mu12
    numerator = (2 * mu12 + c1) * (2 * sigma12 + c2)
    ssim_map = numerator / ((mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2))
    # Every channel has the same valid area, so the mean of channel means is the overall mean.
    return ssim_map.mean(dim=(2, 3)).mean(dim=1)


calculate_ssim.higher_is_better = True
