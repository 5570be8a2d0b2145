"""Pixel losses and the colour conversion they use, against hand-computed values."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch

from losses.basic_loss import CharbonnierLoss, GradientLoss, L1Loss, MSELoss
from utils.color import rgb_to_y
from utils.registry import LOSS_REGISTRY

ALL_LOSSES = (L1Loss, MSELoss, CharbonnierLoss, GradientLoss)


def _pair() -> tuple[torch.Tensor, torch.Tensor]:
    pred = torch.tensor([[[[0.0, 0.5], [1.0, 0.25]]]])
    target = torch.tensor([[[[0.5, 0.5], [0.0, 0.75]]]])
    return pred, target  # differences: -0.5, 0, 1, -0.5


# ---- colour ---------------------------------------------------------------------------------


def test_rgb_to_y_matches_bt601_formulas():
    rgb = torch.tensor([0.2, 0.6, 0.9]).view(3, 1, 1)
    studio = (16 + 65.481 * 0.2 + 128.553 * 0.6 + 24.966 * 0.9) / 255
    full = 0.299 * 0.2 + 0.587 * 0.6 + 0.114 * 0.9
    assert rgb_to_y(rgb).shape == (1, 1, 1)
    assert rgb_to_y(rgb).item() == pytest.approx(studio, abs=1e-6)
    assert rgb_to_y(rgb, "full").item() == pytest.approx(full, abs=1e-6)
    batch = torch.zeros(2, 3, 4, 5)
    batch[:, :] = 1.0
    y = rgb_to_y(batch)
    assert y.shape == (2, 1, 4, 5)
    assert torch.allclose(y, torch.full_like(y, 235 / 255), atol=1e-6)
    assert torch.allclose(rgb_to_y(torch.zeros(3, 2, 2)), torch.full((1, 2, 2), 16 / 255))


def test_rgb_to_y_rejects_bad_input():
    with pytest.raises(ValueError, match="'studio', 'full'"):
        rgb_to_y(torch.zeros(1, 3, 2, 2), "pc")
    with pytest.raises(ValueError, match="RGB"):
        rgb_to_y(torch.zeros(1, 4, 2, 2))


# ---- values ---------------------------------------------------------------------------------


def test_l1_and_mse_values_and_reductions():
    pred, target = _pair()
    assert L1Loss()(pred, target).item() == pytest.approx(2.0 / 4)
    assert L1Loss(reduction="sum")(pred, target).item() == pytest.approx(2.0)
    none = L1Loss(reduction="none")(pred, target)
    assert torch.equal(none, torch.tensor([[[[0.5, 0.0], [1.0, 0.5]]]]))
    assert MSELoss()(pred, target).item() == pytest.approx(1.5 / 4)
    assert MSELoss(reduction="sum")(pred, target).item() == pytest.approx(1.5)


def test_charbonnier_value_eps_inside_root():
    pred, target = _pair()
    loss = CharbonnierLoss(eps=0.01)(pred, target).item()
    expected = (2 * math.sqrt(0.25 + 0.01) + math.sqrt(0.01) + math.sqrt(1.01)) / 4
    assert loss == pytest.approx(expected, rel=1e-6)
    # The default eps is tiny: it is L1 for all practical purposes, and its gradient is finite at 0.
    p = pred.clone().requires_grad_(True)
    val = CharbonnierLoss()(p, target)
    assert val.item() == pytest.approx(0.5, abs=1e-6)
    val.backward()
    assert torch.isfinite(p.grad).all()
    assert p.grad[0, 0, 0, 1].item() == 0.0  # zero difference → zero gradient


def test_gradient_loss_on_a_ramp():
    # pred is a horizontal ramp rising 0.1 per pixel, target is flat. Normalised Sobel x is 0.1
    # inside, 0.05 on the left/right columns (replicate padding); Sobel y is 0 everywhere.
    pred = (torch.arange(5, dtype=torch.float32) * 0.1).expand(1, 1, 5, 5).clone()
    target = torch.zeros_like(pred)
    per_col = np.array([0.05, 0.1, 0.1, 0.1, 0.05])
    none = GradientLoss(reduction="none")(pred, target)
    assert none.shape == pred.shape
    assert np.allclose(none[0, 0].numpy(), np.tile(0.5 * per_col, (5, 1)), atol=1e-7)
    assert GradientLoss()(pred, target).item() == pytest.approx(0.5 * per_col.mean(), abs=1e-7)
    # Transposed ramp: the same value through dy.
    assert GradientLoss()(pred.transpose(-1, -2), target).item() == pytest.approx(0.04, abs=1e-7)


def test_gradient_loss_ignores_offset_but_l1_does_not():
    torch.manual_seed(0)
    img = torch.rand(2, 3, 8, 9)
    assert GradientLoss()(img, img + 0.2).item() == pytest.approx(0.0, abs=1e-6)
    assert L1Loss()(img, img + 0.2).item() == pytest.approx(0.2, abs=1e-6)
    assert GradientLoss()(img, img.flip(-1)).item() > 0.01


# ---- y_only, channels, options --------------------------------------------------------------


@pytest.mark.parametrize("y_range", ["studio", "full"])
def test_y_only_compares_luma(y_range):
    torch.manual_seed(1)
    pred, target = torch.rand(2, 3, 6, 6), torch.rand(2, 3, 6, 6)
    w = {"studio": (65.481 / 255, 128.553 / 255, 24.966 / 255), "full": (0.299, 0.587, 0.114)}[y_range]

    def y(t):
        return w[0] * t[:, 0] + w[1] * t[:, 1] + w[2] * t[:, 2]  # the offset cancels in differences

    expected = (y(pred) - y(target)).abs().mean().item()
    got = L1Loss(y_only=True, y_range=y_range)(pred, target).item()
    assert got == pytest.approx(expected, rel=1e-5)
    assert got != pytest.approx(L1Loss()(pred, target).item(), rel=1e-3)
    assert L1Loss(y_only=True, reduction="none")(pred, target).shape == (2, 1, 6, 6)
    # A change of chroma only (Y kept constant) is invisible to y_only.
    shift = torch.tensor([w[1], -w[0], 0.0]).view(1, 3, 1, 1) * 0.1
    assert MSELoss(y_only=True, y_range=y_range)(pred, pred + shift).item() == pytest.approx(0, abs=1e-10)


@pytest.mark.parametrize("cls", ALL_LOSSES)
def test_any_channel_count_and_backward(cls):
    torch.manual_seed(2)
    pred = torch.rand(2, 4, 7, 5, requires_grad=True)
    target = torch.rand(2, 4, 7, 5)
    loss = cls()(pred, target)
    assert loss.dim() == 0 and loss.item() > 0
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    assert cls(reduction="none")(pred, target).shape == (2, 4, 7, 5)
    with pytest.raises(ValueError, match="RGB"):
        cls(y_only=True)(pred, target)


@pytest.mark.parametrize("cls", ALL_LOSSES)
def test_bad_options_and_shapes(cls):
    with pytest.raises(ValueError, match="reduction"):
        cls(reduction="avg")
    with pytest.raises(ValueError, match="y_range"):
        cls(y_range="bt709")
    with pytest.raises(ValueError, match=r"\(1, 3, 4, 4\) vs \(1, 3, 4, 5\)"):
        cls()(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 4, 5))


def test_registered_and_no_loss_weight():
    for cls in ALL_LOSSES:
        assert LOSS_REGISTRY.get(cls.__name__.lower()) is cls
        params = inspect.signature(cls).parameters
        assert "loss_weight" not in params
        assert {"reduction", "y_only"} <= set(params)
        assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params.values())
    assert inspect.signature(CharbonnierLoss).parameters["eps"].default == 1e-12
