"""Distillation from a frozen teacher network: ``criterion(sr, teacher(lq))``, with a weight ramp
over the run and a sampled fraction of steps.

The ramp and the sampling reach the runner as the loss's ``step_weight(step)``, a factor that
:class:`models.loss_set.LossSet` multiplies into the entry's ``loss_weight``: on a step where it is
0 (before the ramp, or a step that is not drawn) the term is skipped and the teacher does not run
at all. The logged ``losses/distillation`` is the unweighted criterion, as for every other term.

Which steps are drawn depends only on ``(seed, step)`` through a hash, never on an RNG state, so
every DDP rank draws the same steps and a resumed run continues the same sequence.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from losses.basic_loss import CharbonnierLoss, L1Loss, MSELoss
from utils.registry import ARCH_REGISTRY, LOSS_REGISTRY
from utils.weights import arch_from_metadata, infer_arch, load_network, read_metadata, read_weights, unwrap_state_dict

CRITERIA: dict[str, type[nn.Module]] = {"l1": L1Loss, "charbonnier": CharbonnierLoss, "mse": MSELoss}
_NAME = "DistillationLoss"


def ramp_weight(step: int, total_iter: int, weight_max: float, weight_final: float, start_frac: float,
                final_frac: float) -> float:
    """The distillation weight at ``step`` of a ``total_iter``-step run, with ``s = start_frac * T``
    and ``f = final_frac * T``::

        w(step) = 0                                  for step < s
                = weight_max * (step - s) / (f - s)  for s <= step < f   (a straight line from 0)
                = weight_final                       for step >= f       (the final phase)

    With ``weight_final == weight_max`` the weight ramps up and holds; with ``start_frac ==
    final_frac`` there is no ramp (0, then weight_final).
    """
    start, final = start_frac * total_iter, final_frac * total_iter
    if step >= final:
        return float(weight_final)
    if step < start:
        return 0.0
    return float(weight_max) * (step - start) / (final - start)


def step_draw(seed: int, step: int) -> float:
    """A number in [0, 1) fixed by ``(seed, step)`` alone (64 bits of BLAKE2b), the same on every
    process, machine and resume: the step is distilled when it is below ``sample_frac``."""
    digest = hashlib.blake2b(f"distillation:{seed}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def _check_values(*, scale: int, total_iter: int, weight_max: float, weight_final: float | None, start_frac: float,
                  final_frac: float, sample_frac: float, criterion: str, **_: Any) -> None:
    """Refuse impossible numbers with the keyword named (the other keywords are ignored)."""
    if criterion not in CRITERIA:
        raise ValueError(f"{_NAME}: criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    if not (isinstance(scale, int) and scale >= 1):
        raise ValueError(f"{_NAME}: scale must be a whole number >= 1, got {scale!r}")
    if not (isinstance(total_iter, int) and total_iter >= 1):
        raise ValueError(f"{_NAME}: total_iter must be a whole number >= 1, got {total_iter!r}")
    for key, value in (("weight_max", weight_max), ("weight_final", weight_final)):
        if value is not None and not (value >= 0.0 and value < float("inf")):
            raise ValueError(f"{_NAME}: {key} must be a finite number >= 0, got {value!r}")
    if not 0.0 <= start_frac <= final_frac <= 1.0:
        raise ValueError(f"{_NAME}: need 0 <= start_frac <= final_frac <= 1 (fractions of train.total_iter), "
                         f"got start_frac {start_frac!r} and final_frac {final_frac!r}")
    if not 0.0 < sample_frac <= 1.0:
        raise ValueError(f"{_NAME}: sample_frac (the fraction of steps distilled) must be in (0, 1], "
                         f"got {sample_frac!r}")


def teacher_section(path: Path, state: dict[str, Tensor], network: dict[str, Any] | None,
                    expected_scale: int) -> dict[str, Any]:
    """The teacher's ``{type, **kwargs}``: ``network`` (``scale`` defaults to the scale the run
    expects of the teacher), else the weights' own metadata, else inferred from the keys."""
    if network is not None:
        section = dict(network)
        if "type" not in section:
            raise ValueError(f"{_NAME}: teacher_network needs a 'type' (a registered arch)")
        if "scale" in inspect.signature(ARCH_REGISTRY.get(section["type"])).parameters:
            section.setdefault("scale", expected_scale)
        return section
    described = arch_from_metadata(read_metadata(path))  # every weight file upforge writes has it
    if described is not None:
        return described
    try:
        name, kwargs = infer_arch(state)
    except ValueError as err:
        raise ValueError(f"{_NAME}: {path} does not record its network and {err}; write teacher_network") from err
    return {"type": name, **kwargs}


def build_teacher(path: Path, state: dict[str, Any], section: dict[str, Any], param_key: str) -> nn.Module:
    """The arch of ``section`` with the weights of ``state`` loaded strictly, frozen, in eval mode.

    Built under a forked RNG: the random initialisation it overwrites must not move the run's
    random stream (a run with distillation draws the same numbers as one without)."""
    cls = ARCH_REGISTRY.get(section["type"])
    params = inspect.signature(cls).parameters
    kwargs = {k: v for k, v in section.items() if k != "type"}
    unknown = sorted(k for k in kwargs if k not in params)
    if unknown:
        raise ValueError(f"{_NAME}: the teacher arch {section['type']} has no option(s) {', '.join(unknown)}; "
                         f"it takes {', '.join(p for p in params if p != 'self')}")
    with torch.random.fork_rng(devices=[]):
        net = cls(**kwargs)
    try:
        load_network(net, state, strict=True, param_key=param_key)
    except RuntimeError as err:
        raise ValueError(f"{_NAME}: the weights of {path} do not fit the teacher {section}: {err}") from err
    return net.requires_grad_(False).eval()


def teacher_scale(section: dict[str, Any], net: nn.Module) -> int:
    scale = section.get("scale", getattr(net, "scale", None))
    if not isinstance(scale, int):
        raise ValueError(f"{_NAME}: cannot tell the scale of the teacher {section['type']}; give teacher_network "
                         "with a scale")
    return scale


def check_teacher_scale(path: Path, found: int, scale: int, twopass: bool) -> None:
    """The teacher (run twice with ``twopass``) must upscale by the run's scale."""
    if twopass and found != 2:
        raise ValueError(f"{_NAME}: teacher_twopass runs an x2 teacher twice, but the teacher {path} upscales "
                         f"x{found}; use an x2 teacher or teacher_twopass: false")
    effective = found * 2 if twopass else found
    if effective != scale:
        how = f"x{found} run twice = x{effective}" if twopass else f"x{found}"
        hint = " (or an x2 teacher with teacher_twopass: true)" if scale == 4 and found == 2 else ""
        raise ValueError(f"{_NAME}: a teacher of the wrong scale: {path} upscales {how}, but the run's scale is "
                         f"{scale}; use an x{scale} teacher{hint}")


def load_teacher(teacher_path: str, scale: int, teacher_network: dict[str, Any] | None, param_key: str,
                 teacher_twopass: bool) -> nn.Module:
    """Read, build, load and check the teacher; every failure is a ValueError (a missing file a
    FileNotFoundError) naming the file."""
    path = Path(teacher_path)
    if not path.is_file():
        what = "is a folder, not a weights file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"{_NAME}: teacher_path {path} {what}")
    try:
        raw = read_weights(path)
    except RuntimeError as err:
        raise ValueError(f"{_NAME}: {err}") from err
    state = unwrap_state_dict(raw, param_key)
    section = teacher_section(path, state, teacher_network, 2 if teacher_twopass else scale)
    net = build_teacher(path, raw, section, param_key)
    check_teacher_scale(path, teacher_scale(section, net), scale, teacher_twopass)
    return net


@LOSS_REGISTRY.register()
class DistillationLoss(nn.Module):
    """criterion(sr, teacher(lq)) against a frozen teacher network read from a weights file.

    The teacher sees the step's LR batch (inputs ``sr`` and ``lq``); with ``teacher_twopass`` an x2
    teacher runs twice, teacher(teacher(lq)), to teach an x4 student. It never trains (no gradient,
    eval mode, run under ``torch.no_grad``), follows the student's device, memory format and
    autocast, and is no part of any weight file or training state. Its weight is the entry's
    ``loss_weight`` times the ramp ``w(step)`` below, on the drawn steps only, 0 elsewhere; with
    ``s = start_frac * T``, ``f = final_frac * T`` (T = train.total_iter):
    ``w = 0`` before s, ``weight_max * (step - s) / (f - s)`` from s to f, ``weight_final`` from f on.

    Args:
        teacher_path: weights file of the teacher (``.safetensors`` or ``.pth``), e.g. an earlier stage's
            ``models/net_g_best.safetensors``.
        scale: the run's upscaling factor; the teacher's (doubled with teacher_twopass) must equal it.
        total_iter: the run's length T, against which start_frac and final_frac are read.
        teacher_network: the teacher's network section ``{type: ..., ...}`` (its scale defaults to the run's,
            or 2 with teacher_twopass); null: read from the file's metadata, else inferred from its keys.
        param_key: key of the weights inside a ``.pth`` holding several (params_ema, else params, ... as
            pretrain_network_g falls back).
        teacher_twopass: run an x2 teacher twice, teacher(teacher(lq)), for an x4 run.
        criterion: distance between sr and the teacher's output: ``l1``, ``charbonnier`` or ``mse``.
        weight_max: the weight the ramp reaches at final_frac (it rises linearly from 0 at start_frac).
        weight_final: the weight from final_frac to the end of the run (null: weight_max).
        start_frac: fraction of the run where the ramp starts (the weight is 0 before it).
        final_frac: fraction of the run where the final phase starts (weight_final from there on).
        sample_frac: fraction of the steps distilled, drawn per step from (seed, step); the others skip
            the teacher entirely.
        seed: seed of the per-step draw; the same seed draws the same steps on every rank and on resume.
    """

    inputs = ("sr", "lq")
    amp_ok = True  # the teacher runs in the step's precision (autocast), the criterion in float32

    def __init__(
        self,
        teacher_path: str,
        scale: int,
        total_iter: int,
        teacher_network: dict[str, Any] | None = None,
        param_key: str = "params_ema",
        teacher_twopass: bool = False,
        criterion: Literal["l1", "charbonnier", "mse"] = "l1",
        weight_max: float = 1.0,
        weight_final: float | None = None,
        start_frac: float = 0.0,
        final_frac: float = 0.0,
        sample_frac: float = 1.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_values(scale=scale, total_iter=total_iter, weight_max=weight_max, weight_final=weight_final,
                      start_frac=start_frac, final_frac=final_frac, sample_frac=sample_frac, criterion=criterion)
        weight_final = weight_max if weight_final is None else weight_final
        self.teacher = load_teacher(teacher_path, scale, teacher_network, param_key, teacher_twopass)
        self.criterion = CRITERIA[criterion]()
        self.teacher_path, self.twopass = str(teacher_path), teacher_twopass
        self.total_iter, self.seed, self.sample_frac = total_iter, seed, sample_frac
        self.ramp = (float(weight_max), float(weight_final), float(start_frac), float(final_frac))

    @classmethod
    def check_keywords(cls, **kwargs: Any) -> None:
        """Called when the option file is loaded (``--check`` and the start of a run, before anything
        is written): impossible values, and, when the teacher file exists, the whole teacher (its arch,
        weights that fit it, its scale) by building the loss once on the CPU. Every failure is a
        ValueError. A teacher file that does not exist yet passes here, as a missing
        ``path.pretrain_network_g`` does: the option file of a later stage can be checked before the
        stage that writes its teacher has run; the run itself stops at start-up, naming the file."""
        bound = inspect.signature(cls).bind(**kwargs)
        bound.apply_defaults()
        _check_values(**bound.arguments)
        if not Path(bound.arguments["teacher_path"]).exists():
            return
        try:
            cls(**kwargs)
        except (OSError, RuntimeError, KeyError) as err:  # an unreadable file, an unknown arch name
            raise ValueError(str(err)) from err

    def step_weight(self, step: int) -> float:
        """The factor of this term's weight at ``step``: the ramp on drawn steps, else 0."""
        if self.sample_frac < 1.0 and step_draw(self.seed, step) >= self.sample_frac:
            return 0.0
        return ramp_weight(step, self.total_iter, *self.ramp)

    def train(self, mode: bool = True) -> DistillationLoss:
        # the teacher stays in eval mode whatever the runner switches (batch norm, dropout)
        super().train(mode)
        self.teacher.eval()
        return self

    @torch.no_grad()
    def teacher_output(self, lq: Tensor) -> Tensor:
        """teacher(lq), or teacher(teacher(lq)) with teacher_twopass, as float32 without a graph."""
        out = self.teacher(lq)
        if self.twopass:
            out = self.teacher(out)
        return out.float()

    def forward(self, sr: Tensor, lq: Tensor) -> Tensor:
        target = self.teacher_output(lq)
        with torch.autocast(device_type=sr.device.type, enabled=False):
            return self.criterion(sr.float(), target)

    def extra_repr(self) -> str:
        weight_max, weight_final, start, final = self.ramp
        return (f"teacher_path={self.teacher_path!r}, twopass={self.twopass}, weight_max={weight_max}, "
                f"weight_final={weight_final}, start_frac={start}, final_frac={final}, "
                f"sample_frac={self.sample_frac}, seed={self.seed}")
