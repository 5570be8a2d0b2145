"""Validation owned by the runner: inference (tiles, TTA), the metric loop over a runner's own
``run_sample`` outputs, best-value bookkeeping and metric-fed LR schedulers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from utils import dist
from utils.options import MetricEntry, head_and_kwargs
from utils.registry import METRIC_REGISTRY
from utils.tiling import DEFAULT_TILE_OVERLAP, tile_forward
from utils.tta import tta_forward


class ValidationMixin:
    """The validation half of :class:`~models.base_model.BaseModel`; a runner implements
    ``run_sample``, ``save_outputs`` and ``panel`` and lists its ``outputs``; ``baseline_methods``
    gives the simple references ``val.baselines`` scores beside the network (train.py and test.py)."""

    #: the names :meth:`baseline_methods` returns, known before any data is read (test.py checks
    #: that no model takes one of them)
    baseline_names: ClassVar[tuple[str, ...]] = ()
    #: why 8-way flip/rotation TTA is not valid for the runner's outputs (None: it is); train.py
    #: refuses val.tta and test.py a tta: model with this reason
    no_tta_reason: ClassVar[str | None] = None

    # --------------------------------------------------------------- inference

    def eval_net(self) -> nn.Module:
        """The network validated, exported and kept as best: the EMA copy when EMA is on."""
        return self.ema.module if self.ema is not None else self.nets[self.ema_of]

    @torch.no_grad()
    def inference(self, lq: torch.Tensor, net: nn.Module | Any | None = None, *, scale: int | None = None,
                  tta: bool | None = None) -> torch.Tensor:
        """``net`` (default: :meth:`eval_net`) on ``lq`` in eval mode under the runner's autocast, in
        ``val.tile`` tiles (``val.tile_batch`` per forward) and with ``val.tta``; float32 out.
        ``scale`` and ``tta`` override the run's (test.py: an x2 model run twice, TTA per model)."""
        net = net if net is not None else self.eval_net()
        val = self.opt.val
        tile, overlap, batch, val_tta = ((val.tile, val.tile_overlap, val.tile_batch, val.tta) if val is not None
                                         else (0, DEFAULT_TILE_OVERLAP, 1, False))
        tta = val_tta if tta is None else tta
        scale = self.opt.scale if scale is None else scale

        def forward(x: torch.Tensor) -> torch.Tensor:
            with self.autocast():
                # float32 at once, so the tile blend and the TTA mean are not rounded to the AMP dtype
                return net(x.contiguous(memory_format=self.memory_format)).float()

        def tiled(x: torch.Tensor) -> torch.Tensor:
            return tile_forward(forward, x, scale, tile, overlap, batch) if tile > 0 else forward(x)

        if not isinstance(net, nn.Module):  # a plain function (a baseline): whole images, as tiles would only
            return tta_forward(forward, lq) if tta else forward(lq)  # change its borders, never save memory
        was_training = net.training
        net.eval()
        try:
            return tta_forward(tiled, lq) if tta else tiled(lq)
        finally:
            net.train(was_training)

    # --------------------------------------------------------------- validation

    def run_sample(self, sample: dict[str, Any], net: Any = None, *, scale: int | None = None,
                   tta: bool | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Run one sample: ``(outputs, targets)``, both keyed by output name, the outputs as they
        are scored (as saved). ``net``: a module or a plain function of the input batch (default
        :meth:`eval_net`); ``scale`` and ``tta`` as :meth:`inference` takes them."""
        raise NotImplementedError

    def save_outputs(self, outputs: dict[str, torch.Tensor], folder: Path, stem: str) -> None:
        """Write one sample's outputs as images under ``folder``."""
        raise NotImplementedError

    def panel(self, sample: dict[str, Any], outputs: dict[str, torch.Tensor],
              targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """A CHW image for TensorBoard showing input, outputs and targets side by side."""
        raise NotImplementedError

    def network_problem(self, net: nn.Module) -> str | None:
        """Why ``net`` cannot produce this runner's outputs (test.py asks before scoring a loaded
        model), or None; any image-to-image network suits the SR runners."""
        return None

    def baseline_methods(self, loader: Any) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
        """The reference methods of one set, by the names in :attr:`baseline_names`: functions of
        an input batch that :meth:`run_sample` runs in place of a network (``loader`` for methods
        that need the set, e.g. its mean)."""
        return {}

    def baselines(self, loaders: dict[str, Any]) -> dict[str, dict[str, float]]:
        """Scores of the reference methods on each set (``val.baselines``): ``{"<set> (<method>)": means}``."""
        out = {}
        for name, loader in loaders.items():
            for label, fn in self.baseline_methods(loader).items():
                out[f"{name} ({label})"] = self.validate(loader, name, 0, net=fn)[0]
        return out

    @torch.no_grad()
    def validate(
        self,
        loader: Any,
        dataset_name: str,
        iteration: int,
        save_dir: Path | None = None,
        tb: Any = None,
        net: Any = None,
        tb_images: int = 3,
    ) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """Metrics over a validation loader (batch 1); each rank runs its share, results are gathered."""
        metrics = self.opt.val.metrics if self.opt.val is not None else {}
        rows: list[dict[str, Any]] = []
        for index, sample in enumerate(loader):
            outputs, targets = self.run_sample(sample, net)
            stem = Path(sample.get("lq_path", sample.get("gt_path", [f"{index:05d}"]))[0]).stem
            row: dict[str, Any] = {"name": stem}
            for name, mopt in metrics.items():
                head, kwargs = head_and_kwargs(mopt, MetricEntry)
                out = head.get("output") or self.outputs[0]
                row[name] = float(METRIC_REGISTRY.get(mopt["type"])(outputs[out], targets[out], **kwargs)[0])
            rows.append(row)
            if save_dir is not None:
                # during training the iteration tells the images apart; test runs save plain names
                self.save_outputs(outputs, save_dir, f"{stem}_{iteration}" if iteration else stem)
            if tb is not None and index < tb_images and dist.is_main():
                tb.image(f"val_images/{dataset_name}/{stem}", self.panel(sample, outputs, targets).cpu(), iteration)
        gathered = dist.all_gather_objects(rows)
        rows = sorted((r for part in gathered for r in part), key=lambda r: r["name"])
        means = {name: sum(r[name] for r in rows) / max(len(rows), 1) for name in metrics}
        return means, rows

    def metric_better(self, name: str) -> str:
        mopt = self.opt.val.metrics[name]
        if mopt.get("better"):
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

    def observe_validation(self, means: dict[str, float], iteration: int) -> None:
        """Feed schedulers that watch a metric (e.g. ReduceLROnPlateau) the first set's scores."""
        for key, scheduler in self.schedulers.items():
            observe = getattr(scheduler, "observe", None)
            if observe is None or not means:
                continue
            name = getattr(scheduler, "monitor", None) or next(iter(means))
            before = getattr(scheduler, "reductions", None)
            observe(means[name], self.metric_better(name) == "higher", iteration)
            if before is not None and scheduler.reductions != before:
                self.log.info(f"scheduler {key}: {name} has not improved; LR reduced to "
                              f"{self.optimizers[key].param_groups[0]['lr']:.3g} at iteration {iteration}")
