"""The paired super-resolution runner: one generator, a list of weighted pixel losses."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from models.base_model import BaseModel
from utils.ema import ModelEMA
from utils.options import Options
from utils.registry import LOSS_REGISTRY, MODEL_REGISTRY
from utils.steps import piecewise


class NonFiniteLossError(RuntimeError):
    """Training produced NaN or inf; raised at the next logging point."""


@MODEL_REGISTRY.register()
class SRModel(BaseModel):
    """Generator ``net_g`` trained with ``train.losses``; EMA copy used for validation when on."""

    def __init__(self, opt: Options, device: torch.device) -> None:
        super().__init__(opt, device)
        net_g = self.build_net(opt.network_g, "net_g")
        self.load_pretrained(net_g, opt.path.pretrain_network_g, opt.path.strict_load_g, opt.path.param_key_g,
                             "net_g")
        self.nets["net_g"] = net_g
        self.net_g = net_g
        self.train_net = net_g
        self.losses: list[tuple[str, nn.Module, Any]] = []
        t = opt.train
        if t is None:
            net_g.eval()
            return
        net_g.train()
        if t.ema_decay > 0:
            self.ema = ModelEMA(net_g, t.ema_decay, t.ema_update_after, t.ema_warmup)
        self.train_net = self.wrap(net_g, opt.compile)
        params = [p for p in net_g.parameters() if p.requires_grad]
        self.optimizers["g"] = self.build_optimizer(t.optim_g, params)
        self.schedulers["g"] = self.build_scheduler(t.scheduler, self.optimizers["g"])
        names: dict[str, int] = {}
        for entry in t.losses:
            kwargs = {k: v for k, v in entry.items() if k not in ("type", "loss_weight", "name")}
            label = entry.get("name") or entry["type"].removesuffix("Loss").lower()
            names[label] = names.get(label, 0) + 1
            if names[label] > 1:
                label = f"{label}_{names[label]}"
            fn = LOSS_REGISTRY.get(entry["type"])(**kwargs).to(device)
            self.losses.append((label, fn, entry["loss_weight"]))
        self.accumulate = t.accumulate_grad_batches
        self.grad_clip = t.grad_clip
        self._log_sums: dict[str, torch.Tensor] = {}
        self._log_counts: dict[str, int] = {}
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=device)

    def eval_net(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.net_g

    # ------------------------------------------------------------------ training

    def compute_losses(self, out: torch.Tensor, gt: torch.Tensor, iteration: int) -> torch.Tensor:
        """Weighted sum of the listed losses; each unweighted term is added to the log sums."""
        total = out.new_zeros((), dtype=torch.float32)
        out, gt = out.float(), gt.float()
        for label, fn, schedule in self.losses:
            weight = piecewise(schedule, iteration)
            if weight == 0.0:
                continue  # a loss switched off by its schedule costs nothing
            value = fn(out, gt)
            total = total + weight * value
            self._accumulate_log(f"losses/{label}", value)
        self._accumulate_log("losses/total", total)
        return total

    def _accumulate_log(self, key: str, value: torch.Tensor) -> None:
        value = value.detach().float()
        if key in self._log_sums:
            self._log_sums[key] += value
            self._log_counts[key] += 1
        else:
            self._log_sums[key] = value.clone()
            self._log_counts[key] = 1

    def train_step(self, batches: list[dict[str, torch.Tensor]], iteration: int) -> None:
        """One optimiser step over ``accumulate_grad_batches`` micro-batches (no host sync)."""
        optimizer = self.optimizers["g"]
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            sync = contextlib.nullcontext()
            if not last and isinstance(self.train_net, nn.parallel.DistributedDataParallel):
                sync = self.train_net.no_sync()
            with sync:
                with self.autocast():
                    out = self.train_net(batch["lq"])
                loss = self.compute_losses(out, batch["gt"], iteration)
                self._nonfinite |= ~torch.isfinite(loss)
                self.scaler.scale(loss / len(batches)).backward()
        if self.grad_clip is not None:
            self.scaler.unscale_(optimizer)
            params = [p for g in optimizer.param_groups for p in g["params"]]
            norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip, foreach=True)
            self._accumulate_log("grad_norm", norm)
        self.scaler.step(optimizer)
        self.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.net_g, iteration)
        if self.schedulers.get("g") is not None:
            self.schedulers["g"].step()

    def check_finite(self, iteration: int) -> None:
        """Raise if any loss since the start went NaN/inf (one host sync; call at log points)."""
        if bool(self._nonfinite):
            raise NonFiniteLossError(
                f"the training loss became NaN or inf before iteration {iteration}; nothing was saved after that "
                "and earlier checkpoints are untouched. Try a lower learning rate, train.grad_clip, amp: bf16 "
                "instead of fp16, or check the training images."
            )

    def pop_logs(self, iteration: int) -> dict[str, float]:
        """Mean of each logged term since the last call; raises if anything went non-finite."""
        self.check_finite(iteration)
        logs = {}
        if self._log_sums:
            keys = list(self._log_sums)
            values = torch.stack([self._log_sums[k] for k in keys]).cpu().tolist()
            logs = {k: v / self._log_counts[k] for k, v in zip(keys, values)}
        self._log_sums.clear()
        self._log_counts.clear()
        for key, optimizer in self.optimizers.items():
            groups = optimizer.param_groups
            for i, group in enumerate(groups):
                logs[f"lr/net_{key}" + (f"_{i}" if len(groups) > 1 else "")] = group["lr"]
        return logs
