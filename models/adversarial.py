"""The adversarial half of a GAN runner, held by composition: a discriminator, its optimiser and
scheduler, the GAN loss with its scheduled weight, and the discriminator's step.

A runner builds one ``Adversary`` and, in its ``train_step``:

1. ``adversary.freeze()``, then adds ``adversary.generator_loss(fake, real, step)`` to the
   generator's loss and backwards it (the discriminator's parameters take no gradient);
2. ``adversary.step(reals, fakes)`` on the detached outputs: the discriminator's loss, its backward
   over the micro-batches, its optimiser step. ``step`` unfreezes it.

Any runner with an image output can hold one (the SR runner does, a PBR runner can).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from utils.options import GANEntry, head_and_kwargs
from utils.registry import LOSS_REGISTRY
from utils.schedule import Schedule

if TYPE_CHECKING:
    from models.base_model import BaseModel


class Adversary:
    """Discriminator ``name`` trained by optimiser ``key`` against a runner's generator.

    Logged per step: ``discriminator/adversarial_loss`` (its loss), ``discriminator/D(y)_prob`` and
    ``discriminator/D(G(x))_prob`` (its mean belief that real and generated images are real, see
    :meth:`~losses.gan_loss.GANLoss.probability`), and ``generator/adversarial_loss`` (unweighted).
    """

    def __init__(self, model: BaseModel, network: dict[str, Any], gan: dict[str, Any], optim: dict[str, Any],
                 scheduler: dict[str, Any] | None = None, grad_clip: float | None = None,
                 pretrained: str | None = None, strict_load: bool = True, param_key: str = "params",
                 name: str = "net_d", key: str = "d") -> None:
        self.model = model
        self.name, self.key = name, key
        net = model.build_net(network, name)
        model.load_pretrained(net, pretrained, strict_load, param_key, name)
        model.add_trained(name, net, key, optim, scheduler, grad_clip)
        # The generator's pass has its own compiled instance: it sees the parameters frozen, the
        # discriminator's step sees them trainable, and one instance for both would recompile.
        self.frozen_net = model.compiled(net, model.opt.compile)
        head, kwargs = head_and_kwargs(gan, GANEntry)
        self.loss = LOSS_REGISTRY.get(gan["type"])(**kwargs).to(model.device)
        self.weight = Schedule.parse(head.get("loss_weight", 1.0))
        self.params = list(net.parameters())

    def freeze(self, frozen: bool = True) -> None:
        """Stop (or restart) gradients into the discriminator's parameters."""
        for p in self.params:
            p.requires_grad_(not frozen)

    def generator_loss(self, fake: Tensor, real: Tensor, step: int) -> Tensor | None:
        """The weighted adversarial term of the generator's loss; None while the weight is 0.
        Call between :meth:`freeze` and the generator's backward."""
        weight = self.weight(step)
        if weight == 0.0:
            return None
        with self.model.autocast():
            fake_scores = self.frozen_net(fake)
            real_scores = None
            if self.loss.needs_real_for_generator:
                with torch.no_grad():
                    real_scores = self.frozen_net(real)
        value = self.loss.generator_loss(fake_scores, real_scores)
        self.model.log_value("generator/adversarial_loss", value)
        return weight * value

    def step(self, reals: list[Tensor], fakes: list[Tensor]) -> None:
        """One discriminator update over the micro-batches ``(reals[i], fakes[i])``."""
        self.freeze(False)
        net = self.model.train_nets[self.name]
        n = len(reals)
        for real, fake in zip(reals, fakes, strict=True):
            with self.model.autocast():
                real_scores = net(real)
                fake_scores = net(fake.detach())
            loss = self.loss.discriminator_loss(real_scores, fake_scores)
            self.model.log_value("discriminator/adversarial_loss", loss)
            self.model.log_value("discriminator/D(y)_prob", self.loss.probability(real_scores))
            self.model.log_value("discriminator/D(G(x))_prob", self.loss.probability(fake_scores))
            self.model.backward(loss, self.key, n)
        self.model.optimizer_step(self.key)
