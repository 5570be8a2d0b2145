"""Shared machinery of every runner: devices, precision, networks, EMA, state, validation."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils import dist
from utils.checkpoint import rng_state, set_rng_state
from utils.ema import ModelEMA
from utils.logger import get_logger
from utils.options import Options
from utils.registry import ARCH_REGISTRY, METRIC_REGISTRY, OPTIMIZER_REGISTRY, SCHEDULER_REGISTRY
from utils.tiling import tile_forward
from utils.tta import tta_forward
from utils.weights import load_network, unwrap_model

_AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def build_network(net_opt: dict[str, Any]) -> nn.Module:
    """Instantiate ``{type: Name, **kwargs}`` from the arch registry."""
    kwargs = {k: v for k, v in net_opt.items() if k != "type"}
    return ARCH_REGISTRY.get(net_opt["type"])(**kwargs)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def quantize(img: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to 8-bit levels, as a saved PNG would be."""
    return (img.clamp(0, 1) * 255.0).round() / 255.0


class BaseModel:
    """Builds and owns the networks, optimisers, schedulers and EMA of one run."""

    def __init__(self, opt: Options, device: torch.device) -> None:
        self.opt = opt
        self.device = device
        self.log = get_logger()
        self.amp_dtype = _AMP_DTYPES.get(opt.amp)
        if self.amp_dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise RuntimeError("amp: bf16 was requested but this GPU does not support bfloat16; use amp: fp16")
        self.memory_format = torch.channels_last if opt.channels_last else torch.contiguous_format
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = opt.tf32
            torch.backends.cudnn.allow_tf32 = opt.tf32
            torch.backends.cudnn.benchmark = True
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype is torch.float16)
        self.nets: dict[str, nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}
        self.ema: ModelEMA | None = None
        self.best: dict[str, dict[str, dict[str, float]]] = {}

    # ------------------------------------------------------------------ building

    def build_net(self, net_opt: dict[str, Any], label: str) -> nn.Module:
        net = build_network(net_opt).to(self.device, memory_format=self.memory_format)
        self.log.info(f"{label}: {net_opt['type']} with {count_parameters(net):,} trainable parameters")
        return net

    def load_pretrained(self, net: nn.Module, path: str | None, strict: bool, param_key: str, label: str) -> None:
        if not path:
            return
        report = load_network(net, path, strict=strict, param_key=param_key)
        self.log.info(f"{label}: loaded {path}: {report.summary()}")

    def wrap(self, net: nn.Module, compile_net: bool | str) -> nn.Module:
        """DDP and torch.compile wrappers for the training forward; saving always unwraps.

        ``compile_net`` is False, True (torch's default mode) or a torch.compile mode name;
        ``reduce-overhead`` replays CUDA graphs, which pays off for small networks whose step
        time is dominated by kernel launches.
        """
        if dist.is_dist():
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(net, device_ids=ids)
        if compile_net:
            mode = None if compile_net is True or compile_net == "default" else compile_net
            net = torch.compile(net, mode=mode)
        return net

    def build_optimizer(self, optim_opt: dict[str, Any], params: list) -> torch.optim.Optimizer:
        kwargs = {k: v for k, v in optim_opt.items() if k != "type"}
        return OPTIMIZER_REGISTRY.get(optim_opt["type"])(params, **kwargs)

    def build_scheduler(self, sched_opt: dict[str, Any] | None, optimizer: torch.optim.Optimizer) -> Any:
        if sched_opt is None:
            return None
        kwargs = {k: v for k, v in sched_opt.items() if k != "type"}
        return SCHEDULER_REGISTRY.get(sched_opt["type"])(optimizer, **kwargs)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # -------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        return {
            "nets": {k: unwrap_model(v).state_dict() for k, v in self.nets.items()},
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
            "schedulers": {k: v.state_dict() for k, v in self.schedulers.items() if v is not None},
            "scaler": self.scaler.state_dict(),
            "best": self.best,
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, sd in state["nets"].items():
            unwrap_model(self.nets[k]).load_state_dict(sd)
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        for k, sd in state["optimizers"].items():
            self.optimizers[k].load_state_dict(sd)
        for k, sd in state["schedulers"].items():
            if self.schedulers.get(k) is not None:
                self.schedulers[k].load_state_dict(sd)
        self.scaler.load_state_dict(state["scaler"])
        self.best = state.get("best", {})
        set_rng_state(state["rng"])

    # --------------------------------------------------------------- inference

    def eval_net(self) -> nn.Module:
        """The network used for validation and export: the EMA copy when EMA is on."""
        raise NotImplementedError

    @torch.no_grad()
    def inference(self, lq: torch.Tensor, net: nn.Module | None = None) -> torch.Tensor:
        net = net if net is not None else self.eval_net()
        val = self.opt.val
        tile, overlap, tta = (val.tile, val.tile_overlap, val.tta) if val is not None else (0, 16, False)

        def forward(x: torch.Tensor) -> torch.Tensor:
            with self.autocast():
                return net(x.contiguous(memory_format=self.memory_format)).float()

        def tiled(x: torch.Tensor) -> torch.Tensor:
            return tile_forward(forward, x, self.opt.scale, tile, overlap) if tile > 0 else forward(x)

        if not isinstance(net, nn.Module):  # a plain function, e.g. a bicubic baseline
            return tta_forward(tiled, lq) if tta else tiled(lq)
        was_training = net.training
        net.eval()
        try:
            return tta_forward(tiled, lq) if tta else tiled(lq)
        finally:
            net.train(was_training)

    # --------------------------------------------------------------- validation

    @torch.no_grad()
    def validate(
        self,
        loader: Any,
        dataset_name: str,
        iteration: int,
        save_dir: Path | None = None,
        tb: Any = None,
        net: nn.Module | None = None,
        tb_images: int = 3,
    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """Metrics on whole images from a validation loader (batch 1); results are gathered from all ranks."""
        from data.image_io import tensor2img, write_image

        metrics = self.opt.val.metrics if self.opt.val is not None else {}
        rows: list[dict[str, Any]] = []
        # The loader's ShardSampler gives each rank its own images, one per batch.
        for index, sample in enumerate(loader):
            lq = sample["lq"].to(self.device)
            gt = sample["gt"].to(self.device)
            sr = quantize(self.inference(lq, net))
            stem = Path(sample["lq_path"][0]).stem
            row: dict[str, Any] = {"name": stem}
            for name, mopt in metrics.items():
                fn = METRIC_REGISTRY.get(mopt["type"])
                kwargs = {k: v for k, v in mopt.items() if k not in ("type", "better")}
                row[name] = float(fn(sr, gt, **kwargs)[0])
            rows.append(row)
            if save_dir is not None:
                # during training the iteration tells the images apart; test runs save plain names
                write_image(save_dir / (f"{stem}_{iteration}.png" if iteration else f"{stem}.png"), tensor2img(sr[0]))
            if tb is not None and index < tb_images and dist.is_main():
                up = torch.nn.functional.interpolate(lq.float(), size=gt.shape[-2:], mode="nearest")
                panel = torch.cat([up[0].clamp(0, 1), sr[0], gt[0]], dim=-1)
                tb.image(f"val_images/{dataset_name}/{stem}", panel.cpu(), iteration)
        gathered = dist.all_gather_objects(rows)
        rows = sorted((r for part in gathered for r in part), key=lambda r: r["name"])
        means = {name: sum(r[name] for r in rows) / max(len(rows), 1) for name in metrics}
        return means, rows

    def metric_better(self, name: str) -> str:
        mopt = self.opt.val.metrics[name]
        if "better" in mopt:
            return mopt["better"]
        return "higher" if getattr(METRIC_REGISTRY.get(mopt["type"]), "higher_is_better", True) else "lower"

    def update_best(self, dataset_name: str, means: dict[str, float], iteration: int) -> dict[str, bool]:
        """Record best values; returns which metrics improved."""
        improved = {}
        table = self.best.setdefault(dataset_name, {})
        for name, value in means.items():
            higher = self.metric_better(name) == "higher"
            old = table.get(name)
            better = old is None or (value > old["value"] if higher else value < old["value"])
            if better:
                table[name] = {"value": value, "iter": iteration}
            improved[name] = better
        return improved
