"""Adversarial losses for a generator and its discriminator, one class for every formulation.

``gan_type`` picks the formulation; the discriminator's outputs are raw scores (logits), any
shape (one per image, or a patch map): every formula averages over all of them.

=========  =============================================  =====================================================
gan_type   generator                                      discriminator
=========  =============================================  =====================================================
vanilla    BCE(f, 1)                                      BCE(r, real_label) + BCE(f, fake_label)
lsgan      mean((f - 1)^2)                                mean((r - real_label)^2) + mean((f - fake_label)^2)
hinge      -mean(f)                                       mean(relu(1 - r)) + mean(relu(1 + f))
ragan      (BCE(r - E[f], 0) + BCE(f - E[r], 1)) / 2      (BCE(r - E[f], real_label) + BCE(f - E[r], fake_label)) / 2
=========  =============================================  =====================================================

``r``/``f`` are the scores of real and generated images, BCE is binary cross-entropy on logits.
``ragan`` is ESRGAN's relativistic average GAN: each score is judged against the mean score of
the other kind. In its generator loss the real scores are constants (the discriminator is frozen
and its real scores carry no generator gradient); in its discriminator loss each term's
reference mean is detached, as in ESRGAN, so each term pushes only its own scores.

``real_label``/``fake_label`` are the discriminator's targets (one-sided label smoothing: 0.9
for real is common). The generator's targets stay 1 and 0: smoothing makes the discriminator
less confident; it must not tell the generator to aim for "90 % real". Hinge has no labels.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from utils.registry import LOSS_REGISTRY

GAN_TYPES = ("vanilla", "lsgan", "hinge", "ragan")


def _bce(logits: Tensor, target: float) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


@LOSS_REGISTRY.register()
class GANLoss(nn.Module):
    """The adversarial objective of ``gan_type`` for both players (see the module docstring).

    Args:
        gan_type: formulation: ``vanilla`` (BCE on logits), ``lsgan`` (least squares), ``hinge`` or ``ragan``
            (ESRGAN's relativistic average GAN).
        real_label: the discriminator's target for real images, in [0, 1] and above ``fake_label`` (0.9 is
            one-sided label smoothing); the generator's target stays 1. ``hinge`` has no labels: leave it at 1.
        fake_label: the discriminator's target for generated images, in [0, 1]; the generator's stays 0.
            ``hinge`` has no labels: leave it at 0.
    """

    def __init__(self, gan_type: Literal["vanilla", "lsgan", "hinge", "ragan"] = "vanilla",
                 real_label: float = 1.0, fake_label: float = 0.0) -> None:
        super().__init__()
        if gan_type not in GAN_TYPES:
            raise ValueError(f"GANLoss: gan_type must be one of {', '.join(GAN_TYPES)}, got {gan_type!r}")
        if gan_type == "hinge" and (real_label != 1.0 or fake_label != 0.0):
            raise ValueError("GANLoss: hinge has no target labels; remove real_label / fake_label "
                             f"(got {real_label}, {fake_label})")
        for name, value in (("real_label", real_label), ("fake_label", fake_label)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"GANLoss: {name} must be in [0, 1], got {value}")
        if real_label <= fake_label:
            raise ValueError(f"GANLoss: real_label ({real_label}) must be above fake_label ({fake_label})")
        self.gan_type = gan_type
        self.real_label = float(real_label)
        self.fake_label = float(fake_label)

    @property
    def needs_real_for_generator(self) -> bool:
        """Whether the generator loss needs the discriminator's scores of real images."""
        return self.gan_type == "ragan"

    def generator_loss(self, fake: Tensor, real: Tensor | None = None) -> Tensor:
        """The generator's adversarial loss from the scores of its outputs (and, for ragan, of reals)."""
        fake = fake.float()
        if self.gan_type == "vanilla":
            return _bce(fake, 1.0)
        if self.gan_type == "lsgan":
            return (fake - 1.0).pow(2).mean()
        if self.gan_type == "hinge":
            return -fake.mean()
        if real is None:
            raise ValueError("GANLoss (ragan): the generator loss needs the scores of real images")
        real = real.detach().float()
        return 0.5 * (_bce(real - fake.mean(), 0.0) + _bce(fake - real.mean(), 1.0))

    def discriminator_loss(self, real: Tensor, fake: Tensor) -> Tensor:
        """The discriminator's loss from its scores of real and (detached) generated images."""
        real, fake = real.float(), fake.float()
        if self.gan_type == "vanilla":
            return _bce(real, self.real_label) + _bce(fake, self.fake_label)
        if self.gan_type == "lsgan":
            return (real - self.real_label).pow(2).mean() + (fake - self.fake_label).pow(2).mean()
        if self.gan_type == "hinge":
            return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
        return 0.5 * (_bce(real - fake.detach().mean(), self.real_label)
                      + _bce(fake - real.detach().mean(), self.fake_label))

    def probability(self, scores: Tensor) -> Tensor:
        """Mean "this is real" belief behind ``scores``, for logging: the sigmoid of the logits
        (vanilla, ragan: the raw score, as the standard GAN reads it), the score clamped to [0, 1]
        (lsgan, whose targets are 0 and 1) or the share of positive scores (hinge)."""
        scores = scores.detach().float()
        if self.gan_type == "lsgan":
            return scores.clamp(0.0, 1.0).mean()
        if self.gan_type == "hinge":
            return (scores > 0).float().mean()
        return torch.sigmoid(scores).mean()

    def forward(self, fake: Tensor, real: Tensor | None = None) -> Tensor:
        return self.generator_loss(fake, real)

    def extra_repr(self) -> str:
        return f"gan_type={self.gan_type!r}, real_label={self.real_label}, fake_label={self.fake_label}"
