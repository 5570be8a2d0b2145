"""The multi-view PBR runner (NeuroPBR, seed 003): three rendered views in, four material maps out.

A sample's ``lq`` holds the views stacked on channels and its ``gt`` the maps stacked as
:data:`data.pbr_multiview_dataset.MAP_SLICES` lays them out (albedo, roughness, metallic, normal
encoded ``n * 0.5 + 0.5``). The generator (e.g. ``PBRFusionNet``) returns a dict of the four maps;
this runner stacks them the same way, so the discriminator, the metrics and the saved images all
see one layout. Everything else is ``SRGANModel``'s step, with the discriminator optional.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from data.pbr_multiview_dataset import MAP_SLICES, VIEW_CHANNELS
from models.base_model import quantize
from models.srgan_model import SRGANModel
from utils.options import GAN, NETWORK, OPTIMIZER, Options
from utils.registry import MODEL_REGISTRY
from utils.steps import Step

MAPS = tuple(MAP_SLICES)
#: the encoded flat normal (0, 0, 1): a trivial baseline's normal map
FLAT_NORMAL = (0.5, 0.5, 1.0)


def stack_maps(maps: dict[str, Tensor]) -> Tensor:
    """A generator's map dict as one (N, 8, H, W) tensor in the dataset's layout; unit normals
    are encoded ``n * 0.5 + 0.5`` as normal-map images store them."""
    missing = [name for name in MAPS if name not in maps]
    if missing:
        raise ValueError(f"the generator returned {sorted(maps)}; PBRModel needs {', '.join(MAPS)}")
    return torch.cat([maps[name] * 0.5 + 0.5 if name == "normal" else maps[name] for name in MAPS], dim=1)


class StackedMaps(nn.Module):
    """A map-dict generator as a module returning :func:`stack_maps` of its output, so inference
    (eval mode, autocast, tiles) treats it as an image-to-image network."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return stack_maps(self.net(x))


def map_network_problem(net: nn.Module) -> str | None:
    """Why ``net`` is not a multi-view map network (one that declares ``num_views``), or None."""
    if hasattr(net, "num_views"):
        return None
    return (f"it holds a {type(net).__name__}, an image-to-image network; PBR maps need a multi-view map network "
            "such as PBRFusionNet (weights from a PBRModel run)")


def split_maps(stacked: Tensor) -> dict[str, Tensor]:
    """The maps of a stacked (N, 8, H, W) tensor by name."""
    return {name: stacked[:, where] for name, where in MAP_SLICES.items()}


def named_outputs(stacked: Tensor) -> dict[str, Tensor]:
    """The runner's outputs: each map by name, and ``maps`` (all 8 channels) for overall scores."""
    return {**split_maps(stacked), "maps": stacked}


def _rgb(x: Tensor) -> Tensor:
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _heat(error: Tensor) -> Tensor:
    """|error| (N, C, H, W) as a black-red-yellow-white heat map (N, 3, H, W); 1/3 and above is white."""
    e = error.abs().mean(dim=1, keepdim=True) * 9.0
    return torch.cat([e.clamp(0, 1), (e - 1).clamp(0, 1), (e - 2).clamp(0, 1)], dim=1)


@MODEL_REGISTRY.register()
class PBRModel(SRGANModel):
    """Maps from multi-view renders: ``train.losses`` over the named maps, with an optional
    discriminator (``network_d``, e.g. a PatchGAN over the 8 stacked map channels).

    Losses may ask for ``albedo``, ``roughness``, ``metallic``, ``normal`` (the prediction,
    normal encoded), ``<map>_gt`` and ``views``; e.g. the seed's per-map weighted L1 is one
    ``L1Loss`` entry per map with ``inputs: [albedo, albedo_gt]``. Validation outputs are the four
    maps, and ``maps`` (all 8 channels, for overall scores);
    metrics choose one with ``output:``. The adversarial phase starts after ``gan_start``
    iterations, with ``d_steps_per_g_step`` discriminator steps per generator step.
    """

    loss_tensors: ClassVar[frozenset[str]] = frozenset({*MAPS, *(f"{m}_gt" for m in MAPS), "views"})
    outputs: ClassVar[tuple[str, ...]] = (*MAPS, "maps")
    baseline_names: ClassVar[tuple[str, ...]] = ("mean maps", "view 0 + flat normal")
    no_tta_reason: ClassVar[str | None] = "flipping the views does not flip the normals they imply"
    loss_log_names: ClassVar[tuple[str, str]] = ("losses", "losses/total")
    option_fields: ClassVar[dict[str, tuple[Any, Any]]] = {
        "network_d": (NETWORK | None, Field(None, description="the discriminator over the stacked maps "
                                            "(num_in_ch 8); none: no adversarial loss")),
        "path": SRGANModel.option_fields["path"],
    }
    train_option_fields: ClassVar[dict[str, tuple[Any, Any]]] = {
        "optim_d": (OPTIMIZER | None, Field(None, description="optimiser of network_d (required with it)")),
        "scheduler_d": SRGANModel.train_option_fields["scheduler_d"],
        "gan": (GAN | None, Field(None, description="the adversarial loss (gan_type hinge or vanilla = BCE) and "
                                  "its weight (required with network_d)")),
        "grad_clip_d": SRGANModel.train_option_fields["grad_clip_d"],
        "gan_start": (Step, Field(0, description="generator-only iterations before the adversarial phase")),
        "d_steps_per_g_step": (Annotated[int, Field(ge=1)],
                               Field(1, description="discriminator steps per generator step")),
    }

    @classmethod
    def check_options(cls, opt: Options) -> list[tuple[str, str]]:
        problems = super().check_options(opt)
        t = opt.train
        if opt.network_d is not None and t is not None:
            for key in ("optim_d", "gan"):
                if getattr(t, key) is None:
                    problems.append((f"train.{key}", "required with network_d"))
        if opt.network_d is None and t is not None and t.gan is not None:
            problems.append(("train.gan", "an adversarial loss needs network_d (the discriminator)"))
        return problems

    def gan_schedule(self) -> tuple[int, int, int]:
        t = self.opt.train
        return t.gan_start, t.d_steps_per_g_step, 0

    def generate(self, net: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        with self.autocast():
            stacked = stack_maps(net(batch["lq"]))
        tensors = {"views": batch["lq"], **split_maps(stacked),
                   **{f"{name}_gt": t for name, t in split_maps(batch["gt"]).items()}}
        return stacked, tensors

    # --------------------------------------------------------------- validation

    def run_sample(self, sample: dict[str, Any], net: Any = None, *, scale: int | None = None,
                   tta: bool | None = None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        net = self.eval_net() if net is None else net
        if isinstance(net, nn.Module):
            net = StackedMaps(net)
        stacked = quantize(self.inference(sample["lq"].to(self.device), net, scale=scale, tta=tta))  # as saved
        return named_outputs(stacked), named_outputs(sample["gt"].to(self.device))

    def network_problem(self, net: nn.Module) -> str | None:
        return map_network_problem(net)

    def save_outputs(self, outputs: dict[str, Tensor], folder: Path, stem: str) -> None:
        """``<stem>_<map>.png`` for the four maps (roughness and metallic gray, normal encoded)."""
        from data.image_io import tensor2img, write_image

        for name in MAPS:
            value = outputs[name]
            write_image(folder / f"{stem}_{name}.png", tensor2img(value[0]))

    def panel(self, sample: dict[str, Any], outputs: dict[str, Tensor], targets: dict[str, Tensor]) -> Tensor:
        """Rows: the input views; the predicted maps; the reference maps; |error| heat maps."""
        views = sample["lq"].to(outputs["albedo"].device).float()[:1]
        if views.max() > 1.0:  # uint8 values
            views = views / 255.0
        size = outputs["albedo"].shape[-2:]
        count = views.shape[1] // VIEW_CHANNELS
        tiles = [F.interpolate(views[:, VIEW_CHANNELS * v:VIEW_CHANNELS * (v + 1)], size=size, mode="nearest")
                 for v in range(count)]
        blank = torch.zeros_like(tiles[0])
        rows = [tiles + [blank] * max(0, len(MAPS) - count),
                [_rgb(outputs[m][:1]) for m in MAPS],
                [_rgb(targets[m][:1]) for m in MAPS],
                [_heat(outputs[m][:1] - targets[m][:1]) for m in MAPS]]
        width = max(len(row) for row in rows)
        rows = [row + [blank] * (width - len(row)) for row in rows]
        return torch.cat([torch.cat(row, dim=-1) for row in rows], dim=-2)[0].clamp(0, 1)

    def baseline_methods(self, loader: Any) -> dict[str, Callable[[Tensor], Tensor]]:
        """The trivial references: every map the set's mean (``mean maps``), and the first view
        as albedo with a flat normal and the mean roughness and metallic (``view 0 + flat normal``).
        The mean is the scored set's own, which flatters the baseline."""
        total, count = None, 0
        for sample in loader:
            gt = sample["gt"].to(self.device, torch.float64)
            total = gt.sum(dim=(0, 2, 3)) if total is None else total + gt.sum(dim=(0, 2, 3))
            count += gt.shape[0] * gt.shape[2] * gt.shape[3]
        if total is None:
            raise ValueError("val.baselines: the set has no samples to take the mean maps from")
        mean = (total / count).float().view(1, -1, 1, 1)
        return {label: functools.partial(fn, mean=mean, scale=self.opt.scale)
                for label, fn in zip(self.baseline_names, (constant_maps, first_view_flat_normal), strict=True)}


def constant_maps(lq: Tensor, mean: Tensor, scale: int) -> Tensor:
    """Baseline: ``mean`` (1, 8, 1, 1) everywhere, at ``scale`` times the views' size."""
    return mean.expand(lq.shape[0], -1, lq.shape[-2] * scale, lq.shape[-1] * scale)


def first_view_flat_normal(lq: Tensor, mean: Tensor, scale: int) -> Tensor:
    """Baseline: the first view as albedo, the flat normal (0, 0, 1), roughness and metallic from ``mean``."""
    maps = constant_maps(lq, mean, scale).clone()
    first = lq[:, :VIEW_CHANNELS].float()
    if scale != 1:
        first = F.interpolate(first, scale_factor=scale, mode="bilinear", align_corners=False)
    maps[:, MAP_SLICES["albedo"]] = first
    maps[:, MAP_SLICES["normal"]] = torch.tensor(FLAT_NORMAL, device=lq.device).view(1, 3, 1, 1)
    return maps
