"""The paired super-resolution runner: one generator, a list of weighted losses."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from models.base_model import BaseModel, NonFiniteLossError, quantize
from models.loss_set import LossSet
from models.param_groups import check_stage_options, describe_groups, stage_param_groups
from utils.ema import ModelEMA
from utils.options import Options, component_keyword
from utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, MODEL_REGISTRY

__all__ = ["NonFiniteLossError", "SRModel"]


@MODEL_REGISTRY.register()
class SRModel(BaseModel):
    """Generator ``net_g`` trained with ``train.losses``; EMA copy used for validation when on.

    Losses may ask for ``sr`` (the output), ``gt`` and ``lq``.
    """

    loss_tensors: ClassVar[frozenset[str]] = frozenset({"sr", "gt", "lq"})
    outputs: ClassVar[tuple[str, ...]] = ("sr",)
    baseline_names: ClassVar[tuple[str, ...]] = ("nearest", "bicubic")
    #: where the loss terms and their weighted total are logged
    loss_log_names: ClassVar[tuple[str, str]] = ("losses", "losses/total")

    @classmethod
    def check_options(cls, opt: Options) -> list[tuple[str, str]]:
        """Besides the base checks: every dataset's ``channels`` matches the generator's input and
        output channel counts (a 4-band set and an RGB network would otherwise fail mid-run)."""
        problems = super().check_options(opt)
        for key in ("num_in_ch", "num_out_ch"):
            want = component_keyword(ARCH_REGISTRY, opt.network_g, key)
            for name, ds in opt.datasets.items():
                have = component_keyword(DATASET_REGISTRY, ds, "channels")
                if want is not None and have is not None and have != want:
                    problems.append((f"datasets.{name}.channels", f"{have}, but network_g.{key} is {want}"))
        problems.extend(check_stage_options(opt))  # tail_only / lr_trunk / lr_tail on an arch with a tail
        return problems

    def __init__(self, opt: Options, device: torch.device) -> None:
        super().__init__(opt, device)
        net_g = self.build_net(opt.network_g, "net_g")
        self.load_pretrained(net_g, opt.path.pretrain_network_g, opt.path.strict_load_g, opt.path.param_key_g,
                             "net_g")
        self.nets["net_g"] = net_g
        t = opt.train
        if t is None:
            net_g.eval()
            return
        if t.ema_decay > 0:
            self.ema = ModelEMA(net_g, t.ema_decay, t.ema_update_after, t.ema_warmup)
        # train.tail_only / lr_trunk / lr_tail: the trunk frozen (before the optimiser is built) or
        # its own param group; None: one group of every parameter
        groups = stage_param_groups(net_g, t.tail_only, t.lr_trunk, t.lr_tail, "net_g")
        self.add_trained("net_g", net_g, "g", t.optim_g, t.scheduler, t.grad_clip, params=groups)
        if groups is not None:
            self.log.info(describe_groups(self.optimizers["g"], net_g, "net_g", t.tail_only))
        prefix, total = self.loss_log_names
        self.losses = LossSet(t.losses, device, self.log_value, prefix=prefix, total_key=total,
                              autocast=self.autocast, memory_format=self.memory_format)

    @property
    def net_g(self) -> nn.Module:
        return self.nets["net_g"]

    def generate(self, net: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The generator's output for ``batch`` (what a discriminator sees and ``batch["gt"]`` is
        compared with) and the named tensors the losses may ask for (``loss_tensors``)."""
        with self.autocast():
            sr = net(batch["lq"])
        return sr, {"sr": sr, "gt": batch["gt"], "lq": batch["lq"]}

    def update(self, batches: list[dict[str, torch.Tensor]], iteration: int) -> None:
        """Forward, losses and backward over ``accumulate_grad_batches`` micro-batches, then the
        optimiser (no host sync)."""
        net = self.train_nets["net_g"]
        for batch in batches:
            sr, tensors = self.generate(net, batch)
            loss = self.losses(tensors, iteration)
            self.backward(loss, "g", len(batches))
        self.log_train_metrics(sr, batch["gt"], iteration)
        self.optimizer_step("g")

    def step_signature(self, batches: list[dict[str, torch.Tensor]], iteration: int) -> tuple:
        """Besides the base's: each loss term's weight at ``iteration`` (a weight of 0 skips the term)."""
        weights = tuple(term.weight_at(iteration) * term.multiplier for term in self.losses.terms)
        return (*super().step_signature(batches, iteration), weights)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if hasattr(self, "losses"):
            state["loss_multipliers"] = self.losses.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if hasattr(self, "losses"):
            self.losses.load_state_dict(state.get("loss_multipliers", {}))

    # --------------------------------------------------------------- validation

    def run_sample(self, sample: dict[str, Any], net: Any = None, *, scale: int | None = None,
                   tta: bool | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        sr = self.inference(sample["lq"].to(self.device), net, scale=scale, tta=tta)
        # Images (1 or 3 channels) are scored as the 8-bit PNG they are saved as; other band
        # counts are saved as float .npy, so they are scored unrounded.
        sr = quantize(sr) if sr.shape[1] in (1, 3) else sr.clamp(0, 1)
        return {"sr": sr}, {"sr": sample["gt"].to(self.device)}

    def save_outputs(self, outputs: dict[str, torch.Tensor], folder: Path, stem: str) -> None:
        """An 8-bit PNG for 1 or 3 channels; otherwise every band as float32 HWC ``.npy`` and a
        PNG preview of the first three bands (``<stem>_rgb.png``)."""
        from data.image_io import tensor2img, write_image

        img = tensor2img(outputs["sr"][0])
        if img.shape[2] in (1, 3):
            write_image(folder / f"{stem}.png", img)
            return
        write_image(folder / f"{stem}.npy", img)
        write_image(folder / f"{stem}_rgb.png", img[:, :, :3] if img.shape[2] >= 3 else img[:, :, :1])

    def panel(self, sample: dict[str, Any], outputs: dict[str, torch.Tensor],
              targets: dict[str, torch.Tensor]) -> torch.Tensor:
        gt, sr = targets["sr"][0], outputs["sr"][0]
        up = F.interpolate(sample["lq"].float(), size=gt.shape[-2:], mode="nearest")[0].to(sr.device)
        panel = torch.cat([up.clamp(0, 1), sr, gt], dim=-1)
        return panel[:3] if panel.shape[0] > 3 else panel  # N-band data: the first three bands

    def baseline_methods(self, loader: Any) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        """Nearest and MATLAB-bicubic upscaling of the LR images, scored like the model."""
        from data.imresize import imresize_tensor

        scale = self.opt.scale
        return {"nearest": lambda x: F.interpolate(x.float(), scale_factor=scale, mode="nearest"),
                "bicubic": lambda x: imresize_tensor(x.float(), scale)}
