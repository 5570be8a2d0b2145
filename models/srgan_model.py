"""The paired SR runner with a discriminator: SRGAN, ESRGAN, OpenSR and their kin are option files."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field

from models.adversarial import Adversary
from models.sr_model import SRModel
from utils.options import GAN, NETWORK, OPTIMIZER, SCHEDULER, Options, PathOptions, component_keyword
from utils.registry import ARCH_REGISTRY, MODEL_REGISTRY
from utils.schedule import Schedule
from utils.steps import Step


class GANPathOptions(PathOptions):
    pretrain_network_d: str | None = Field(None, description="weights loaded into network_d before training")
    strict_load_d: bool = Field(True, description="fail on missing, unexpected or mis-shaped keys of "
                                "pretrain_network_d (false: load what matches)")
    param_key_d: str = Field("params", description="key of the weights inside pretrain_network_d")


@MODEL_REGISTRY.register()
class SRGANModel(SRModel):
    """Generator ``net_g`` with its content losses (``train.losses``) against discriminator
    ``net_d`` (``network_d``, ``train.optim_d``, ``train.scheduler_d``, ``train.gan``).

    A step at iteration ``i``, with ``a = i - g_pretrain_steps`` the adversarial-phase iteration:

    - ``i <= g_pretrain_steps``: the generator-only phase (content losses, no discriminator);
    - otherwise the generator steps when ``a > net_d_init_iters`` and ``a % net_d_iters == 0``
      (so ``net_d_iters`` discriminator steps per generator step, and ``net_d_init_iters``
      discriminator-only steps first), with the discriminator frozen and the loss
      ``content + gan.loss_weight(i) * adversarial``; then the discriminator steps on the real
      images and the detached outputs.

    Logged: ``train_metrics/<loss>``, ``generator/content_loss``, ``generator/total_loss``,
    ``generator/adversarial_loss``, ``discriminator/*``, ``training/pretrain_phase``,
    ``training/adv_loss_weight``, ``lr_net_g``, ``lr_net_d`` and ``EMA/*``.
    """

    no_step_graph_reason: ClassVar[str | None] = ("which networks step, and with which losses, changes with the GAN "
                                                  "phase, and the discriminator's step reads the generator's")
    option_fields: ClassVar[dict[str, tuple[Any, Any]]] = {
        "network_d": (NETWORK, Field(..., description="the discriminator network")),
        "path": (GANPathOptions, Field(GANPathOptions(), description="where weights are loaded from and runs are "
                                       "written, with the discriminator's pretrained weights")),
    }
    train_option_fields: ClassVar[dict[str, tuple[Any, Any]]] = {
        "optim_d": (OPTIMIZER, Field(..., description="optimiser of network_d")),
        "scheduler_d": (SCHEDULER | None, Field(None, description="learning-rate scheduler of optim_d")),
        "gan": (GAN, Field(..., description="the adversarial loss and its weight in the generator's loss")),
        "grad_clip_d": (Annotated[float, Field(gt=0)] | None,
                        Field(None, description="clip the discriminator's gradient norm to this value")),
        "net_d_iters": (Annotated[int, Field(ge=1)], Field(1, description="discriminator steps per generator step")),
        "net_d_init_iters": (Annotated[int, Field(ge=0)],
                             Field(0, description="discriminator-only steps at the start of the adversarial phase")),
        "g_pretrain_steps": (Step, Field(0, description="generator-only iterations (content losses) before the "
                                         "adversarial phase")),
    }
    # OpenSR's names: unweighted terms as train_metrics/*, their weighted sum as the content loss
    loss_log_names: ClassVar[tuple[str, str]] = ("train_metrics", "generator/content_loss")

    @classmethod
    def check_options(cls, opt: Options) -> list[tuple[str, str]]:
        problems = super().check_options(opt)
        g, d = opt.network_g, opt.network_d
        if d is None:
            return problems
        out_ch = component_keyword(ARCH_REGISTRY, g, "num_out_ch")
        in_ch = component_keyword(ARCH_REGISTRY, d, "num_in_ch")
        if out_ch is not None and in_ch is not None and out_ch != in_ch:
            problems.append(("network_d.num_in_ch", f"{in_ch}, but network_g writes {out_ch} channels"))
        size = component_keyword(ARCH_REGISTRY, d, "input_size")
        train = opt.datasets.get("train")
        if size is not None and train is not None and train.get("gt_size") is not None:
            sizes = sorted({int(v) for v in Schedule.parse(train["gt_size"]).values()})
            if sizes != [size]:
                problems.append(("network_d.input_size", f"{d['type']} takes {size}x{size} images only, but "
                                 f"datasets.train.gt_size gives {', '.join(map(str, sizes))}"))
        return problems

    def __init__(self, opt: Options, device: torch.device) -> None:
        super().__init__(opt, device)
        self.adversary: Adversary | None = None  # none for test runs, or without network_d
        t = opt.train
        if t is None:
            return
        p = opt.path
        if opt.network_d is not None:  # optional in runners that declare network_d so (PBRModel)
            self.adversary = Adversary(self, opt.network_d, t.gan, t.optim_d, t.scheduler_d, t.grad_clip_d,
                                       p.pretrain_network_d, p.strict_load_d, p.param_key_d)

    def gan_schedule(self) -> tuple[int, int, int]:
        """``(g_pretrain_steps, net_d_iters, net_d_init_iters)``; a runner with other option names
        for them (PBRModel: ``gan_start``, ``d_steps_per_g_step``) maps its own here."""
        t = self.opt.train
        return t.g_pretrain_steps, t.net_d_iters, t.net_d_init_iters

    def phase(self, iteration: int) -> tuple[bool, bool, bool]:
        """(generator-only pre-training, generator steps, discriminator steps) at ``iteration``;
        always the first without a discriminator."""
        pretrain_steps, d_iters, d_init_iters = self.gan_schedule()
        if self.adversary is None or iteration <= pretrain_steps:
            return True, True, False
        a = iteration - pretrain_steps
        return False, a > d_init_iters and a % d_iters == 0, True

    def adversarial_weight(self, iteration: int) -> float:
        return 0.0 if self.phase(iteration)[0] else self.adversary.weight(iteration)

    def train_step(self, batches: list[dict[str, torch.Tensor]], iteration: int) -> None:
        pretrain, train_g, train_d = self.phase(iteration)
        net = self.train_nets["net_g"]
        fakes: list[torch.Tensor] = []
        if train_g:
            if self.adversary is not None:
                self.adversary.freeze()
            for batch in batches:
                sr, tensors = self.generate(net, batch)
                if train_d:
                    # A copy for the discriminator: under compile: reduce-overhead the output lives in
                    # CUDA-graph memory that a later graph replay may reuse before the D step reads it.
                    fakes.append(sr.detach().clone())
                loss = self.losses(tensors, iteration)
                if not pretrain:
                    adversarial = self.adversary.generator_loss(sr, batch["gt"], iteration)
                    if adversarial is not None:
                        loss = adversarial if loss is None else loss + adversarial
                if loss is not None:
                    self.log_value("generator/total_loss", loss)
                self.backward(loss, "g", len(batches))
            self.log_train_metrics(sr, batch["gt"], iteration)
            self.optimizer_step("g")
        if train_d:
            if not train_g:  # a discriminator-only step still needs the generator's current outputs
                with torch.no_grad():
                    fakes = [self.generate(net, batch)[0].clone() for batch in batches]
            self.adversary.step([batch["gt"] for batch in batches], fakes)
        self.end_step(iteration)

    def status_scalars(self, iteration: int) -> dict[str, float]:
        out = super().status_scalars(iteration)
        if self.adversary is not None:
            out["training/pretrain_phase"] = float(self.phase(iteration)[0])
            out["training/adv_loss_weight"] = self.adversarial_weight(iteration)
        return out
