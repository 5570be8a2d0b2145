"""Evaluate one or more trained models on one or more test sets.

    python test.py -opt options/test/X.yml [-o key.path=value ...] [--models NAME=[PREFIX:]PATH ...]
        [--tta] [--baselines] [--strips K] [--no-labels] [--no-lpips] [--out DIR] [--device DEV] [--check]

Every model is scored on every test set with the file's ``val.metrics``; the scores go to one
table on the console and to ``metrics.json`` (model → set → metric → ``{mean, per_image}``) in
``<results_root>/<name>/`` (or ``--out``), with the upscaled images (``val.save_img``) and, with
``--strips K``, one PNG per image for the first K images of each set: LR (nearest) | each model |
HR. ``--check`` validates the file as a test run reads it and prints the resolved options,
evaluating nothing. docs/evaluation.md describes it all.

Models come from ``path.pretrain_network_g`` (named after its arch), the file's ``models:`` list
and ``--models``. A model's path may start with prefixes, as the original tool wrote them:
``ema:`` (the EMA weights), ``swa:`` (the SWA average), ``twopass:`` (an x2 model run twice for
x4) and ``tta:`` (8-way test-time augmentation for this model alone); e.g.
``--models x2=ema:experiments/X/models/net_g_best.safetensors x4_2pass=twopass:ema:experiments/X/models``.
``val.baselines: true`` (or ``--baselines``) adds the runner's references to the table (nearest and
bicubic upscaling for SR).

The file's ``model_type`` runs every sample (``run_sample``), so a runner of several outputs (PBR
maps) is scored per output (``output:`` in a metric) exactly as its validation scores it.

From Python: ``from models.evaluation import evaluate; evaluate("options/test/X.yml")``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from utils import dist
from utils.cli import run_reporting_errors
from utils.device import select_device
from utils.logger import setup_logger
from utils.options import MetricEntry, Options, OptionsError, head_and_kwargs, load_options

# ------------------------------------------------------------------------------ model specs

#: path prefixes of a model entry, as the original tool wrote them (``name=ema:path``)
PREFIXES = ("ema", "swa", "twopass", "tta")
#: the checkpoint key holding each copy in a container file (BasicSR's ``{params, params_ema}``)
COPY_KEYS = {"ema": "params_ema", "swa": "params_swa"}
#: the ``copy`` an upforge weight file records (its metadata) that each prefix accepts
COPY_RECORDED = {"ema": ("ema",), "swa": ("swa", "swa_final")}
SWA_FILE = "net_g_swa_final.safetensors"  # written by the SWA automation at the end of training
BEST_FILE = "net_g_best.safetensors"
_EMA_FILE = re.compile(r"^net_g_ema_(\d+)\.safetensors$")


@dataclass(frozen=True)
class ModelSpec:
    """One model to evaluate, as written in the option file's ``models:`` or on the command line.

    ``copy``: which weights of the checkpoint (``ema``, ``swa``; None: ``param_key``'s);
    ``twopass``: an x2 model run twice for x4; ``tta``: True for 8-way TTA for this model, None
    for the file's ``val.tta``; ``where``: how the entry was written, named in every message.
    """

    name: str
    path: str
    copy: Literal["ema", "swa"] | None = None
    twopass: bool = False
    tta: bool | None = None
    param_key: str = "params"
    strict_load: bool = True
    network_g: dict[str, Any] | None = None
    where: str = ""


def split_prefixes(text: str, where: str) -> tuple[dict[str, Any], str]:
    """``"twopass:ema:runs/x.pth"`` → ``({"copy": "ema", "twopass": True, "tta": None}, "runs/x.pth")``.

    Known prefixes are taken off the front in any order (case-insensitive); the first token that is
    not one starts the path, so a path may hold ``:`` after them.
    """
    flags: dict[str, Any] = {"copy": None, "twopass": False, "tta": None}
    rest = text
    while True:
        head, sep, tail = rest.partition(":")
        prefix = head.strip().lower()
        if not sep or prefix not in PREFIXES:
            break
        if prefix in COPY_KEYS:
            if flags["copy"] not in (None, prefix):
                raise ValueError(f"{where}: ema: and swa: exclude each other (one checkpoint copy per entry)")
            flags["copy"] = prefix
        elif prefix == "twopass":
            flags["twopass"] = True
        else:
            flags["tta"] = True
        rest = tail
    if not rest.strip():
        raise ValueError(f"{where}: no weights path after the prefixes")
    return flags, rest.strip()


def parse_model_arg(text: str) -> ModelSpec:
    """One ``--models`` item: ``NAME=[ema:|swa:][twopass:][tta:]PATH``."""
    where = f"--models '{text}'"
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not name or any(c in name for c in "/\\:"):
        raise ValueError(f"{where}: write each model as NAME=[ema:|swa:|twopass:|tta:]PATH, e.g. "
                         "x2_ema=ema:experiments/X/models/net_g_best.safetensors (the name labels the table)")
    flags, path = split_prefixes(rest, where)
    return ModelSpec(name=name, path=path, where=where, **flags)


def spec_from_entry(entry: Any, index: int) -> ModelSpec:
    """A ``models:`` entry of the option file; its ``path`` takes the same prefixes as ``--models``."""
    where = f"models[{index}] ('{entry.name}')"
    flags, path = split_prefixes(entry.path, where)
    copy = flags["copy"]
    if copy is not None and entry.param_key not in ("params", COPY_KEYS[copy]):
        raise ValueError(f"{where}: the {copy}: prefix reads '{COPY_KEYS[copy]}', but param_key is "
                         f"'{entry.param_key}'; keep one of the two")
    return ModelSpec(name=entry.name, path=path, param_key=entry.param_key, strict_load=entry.strict_load,
                     network_g=entry.network_g, where=where, **flags)


def model_specs(opt: Options, cli_models: Sequence[str] = ()) -> list[ModelSpec]:
    """The option file's ``models:`` followed by the ``--models`` items, in that order."""
    specs = [spec_from_entry(entry, i) for i, entry in enumerate(opt.models)]
    return specs + [parse_model_arg(text) for text in cli_models]


# ------------------------------------------------------------------------------ checks


def _set_scales(opt: Options) -> dict[str, int]:
    """Each test set's name → its scale (the file's ``scale`` unless the set writes its own)."""
    return {ds.get("name") or key: int(ds.get("scale", opt.scale)) for key, ds in opt.datasets.items()
            if key != "train"}


def check_test_options(opt: Options, specs: Sequence[ModelSpec] = ()) -> list[tuple[str, str]]:
    """What a test run needs beyond a valid file: something to evaluate, a set to evaluate it on,
    a metric, and distinct, path-safe model names (they name the result folders). ``specs``: the
    models of the file and of ``--models`` (default: the file's)."""
    specs = list(specs) if specs else [spec_from_entry(e, i) for i, e in enumerate(opt.models)]
    problems = []
    from utils.registry import MODEL_REGISTRY

    runner_cls = MODEL_REGISTRY.get(opt.model_type)
    if not opt.path.pretrain_network_g and not specs:
        problems.append(("path.pretrain_network_g", "a test file needs weights to evaluate (or a models: list, "
                                                    "or --models)"))
    if not any(k != "train" for k in opt.datasets):
        problems.append(("datasets", "a test file needs at least one test_* or val_* dataset"))
    named = ([(opt.network_g["type"], "path.pretrain_network_g")] if opt.path.pretrain_network_g else [])
    named += [(s.name, s.where) for s in specs]
    if opt.val is not None and opt.val.baselines:
        named += [(b, "val.baselines") for b in runner_cls.baseline_names]
    for i, (name, where) in enumerate(named):
        if name in [n for n, _ in named[:i]]:
            problems.append(("models", f"two models are named '{name}' ({where}); give each model its own name"))
        if name in (".", "..") or any(c in name for c in "/\\"):
            problems.append(("models", f"{where}: the name '{name}' names a folder; use no / or \\"))
    if runner_cls.no_tta_reason:
        problems += [(s.where, f"tta: {opt.model_type}'s outputs cannot be scored with TTA: {runner_cls.no_tta_reason}")
                     for s in specs if s.tta]
    if opt.val is None or not opt.val.metrics:
        problems.append(("val.metrics", "name at least one metric, e.g. psnr: {type: calculate_psnr}"))
    return problems


def check_scale(spec: ModelSpec, model_scale: int | None, set_scales: dict[str, int]) -> None:
    """Raise ValueError naming the entry when its model cannot serve every set's scale: a
    ``twopass:`` model that is not x2, or a model (or two passes) of another scale than a set's."""
    if model_scale is None:
        return  # unknown until it runs: the output size is checked on the first image
    if spec.twopass and model_scale != 2:
        raise ValueError(f"{spec.where}: twopass: runs an x2 model twice for x4, but {spec.path} is an "
                         f"x{model_scale} model")
    total = model_scale**2 if spec.twopass else model_scale
    how = f"x{total} (two passes of x2)" if spec.twopass else f"x{total}"
    for ds, scale in set_scales.items():
        if total != scale:
            hint = "; twopass: runs an x2 model twice for x4 sets" if model_scale**2 == scale else ""
            raise ValueError(f"{spec.where}: the model upscales {how}, but the test set '{ds}' is x{scale} "
                             f"(the option file's scale); evaluate it with an x{total} test file{hint}")


# ------------------------------------------------------------------------------ loading


def _folder_listing(folder: Path) -> str:
    names = sorted(p.name for p in folder.glob("*") if p.suffix in (".safetensors", ".pth", ".pt"))
    if not names:
        return ""
    return f" (the folder holds: {', '.join(names[:6])}{' ...' if len(names) > 6 else ''})"


def _newest_ema(models: Path) -> Path | None:
    found = [(int(m[1]), p) for p in models.glob("net_g_ema_*.safetensors") if (m := _EMA_FILE.match(p.name))]
    return max(found)[1] if found else None


def _pick_in_folder(spec: ModelSpec, folder: Path) -> Path:
    """A folder stands for a training run's weights: the run folder or its ``models/``.

    ``swa:`` → the final SWA average; ``ema:`` → ``net_g_best`` when it holds the EMA weights, else
    the newest ``net_g_ema_<iter>``; no prefix → ``net_g_best``.
    """
    from utils.weights import read_metadata

    models = folder / "models" if (folder / "models").is_dir() else folder
    best = models / BEST_FILE
    if spec.copy == "swa":
        chosen, what = models / SWA_FILE, SWA_FILE
    elif spec.copy == "ema":
        ema_best = best.is_file() and read_metadata(best).get("copy") == "ema"
        chosen = best if ema_best else _newest_ema(models)
        what = f"{BEST_FILE} holding EMA weights or net_g_ema_<iter>"
    else:
        chosen, what = best, BEST_FILE
    if chosen is None or not chosen.is_file():
        raise FileNotFoundError(f"{spec.where}: weights file not found: no {what} in {models}{_folder_listing(models)}")
    return chosen


def resolve_weights(spec: ModelSpec) -> Path:
    """The weights file of ``spec`` (a folder picks its file); FileNotFoundError naming the entry."""
    path = Path(spec.path).expanduser()
    if path.is_dir():
        return _pick_in_folder(spec, path)
    if path.is_file():
        return path
    hint = ""
    if re.match(r"^[A-Za-z_]\w*:", spec.path) and not re.match(r"^[A-Za-z]:[\\/]", spec.path):
        hint = f"; '{spec.path.split(':')[0]}:' is not a known prefix ({', '.join(p + ':' for p in PREFIXES)})"
    elif path.parent.is_dir():
        hint = _folder_listing(path.parent)
    raise FileNotFoundError(f"{spec.where}: weights file not found: {path}{hint}")


def _is_flat(raw: dict) -> bool:
    return all(isinstance(v, Tensor) for v in raw.values())


def select_weights(spec: ModelSpec, path: Path, raw: dict, log: Any) -> dict[str, Tensor]:
    """The state dict ``spec`` asks for out of the checkpoint ``raw`` read from ``path``.

    Without a copy prefix: ``param_key`` (with the usual fallbacks). ``ema:`` / ``swa:`` in a
    container file: its ``params_ema`` / ``params_swa``, which must be there. In a flat file (every
    upforge weight file): the copy its metadata records must be the one asked for, so that an
    SWA-promoted ``net_g_best`` is not scored as "EMA" (a file without metadata is taken as it is).
    """
    from utils.weights import read_metadata, unwrap_state_dict

    if spec.copy is None:
        return unwrap_state_dict(raw, spec.param_key)
    label = spec.copy.upper()
    if not _is_flat(raw):
        key = COPY_KEYS[spec.copy]
        if not isinstance(raw.get(key), dict):
            raise ValueError(f"{spec.where}: {spec.copy}: asks for the {label} weights, but {path} holds no "
                             f"'{key}' (its keys: {', '.join(map(str, raw))})")
        sd = unwrap_state_dict(raw[key], None)
    else:
        recorded = read_metadata(path).get("copy")
        if recorded is None:
            log.info(f"{spec.name}: {path} does not record which copy it holds; taken as the {label} weights")
        elif recorded not in COPY_RECORDED[spec.copy]:
            raise ValueError(_wrong_copy(spec, path, recorded))
        sd = unwrap_state_dict(raw, None)
    if spec.copy == "swa":
        sd.pop("n_averaged", None)  # torch.optim.swa_utils.AveragedModel's snapshot counter
    return sd


def _wrong_copy(spec: ModelSpec, path: Path, recorded: str) -> str:
    """The message for a flat weight file holding another copy than the prefix asks for."""
    held = {"live": "the live (not averaged) weights", "swa": "the SWA average (promoted to best)",
            "swa_final": "the SWA average", "ema": "the EMA weights"}.get(recorded, f"the '{recorded}' weights")
    if spec.copy == "swa":
        beside = path.parent / SWA_FILE
        hint = (f"; the SWA average is {beside}" if beside.is_file()
                else f"; training writes the SWA average as {SWA_FILE} when train.swa is on")
    else:
        hint = f"; give the folder {path.parent} to take the newest net_g_ema_<iter> file"
        if recorded.startswith("swa"):
            hint += ", or write swa: to score this file"
    return (f"{spec.where}: {spec.copy}: asks for the {spec.copy.upper()} weights, but {path} holds {held} "
            f"(its metadata: copy={recorded}){hint}")


def network_for(spec: ModelSpec, path: Path, sd: dict[str, Tensor], opt: Options, log: Any) -> dict[str, Any]:
    """The network section ``spec``'s weights are loaded into: the entry's own ``network_g``, else
    what the weight file records, else the test file's ``network_g`` with the structure read off
    the weights where they are recognisable (EDSR, RRDBNet: width, depth, scale), so a foreign x2
    file in an x4 test file is built as x2."""
    from utils.weights import arch_from_metadata, infer_arch, read_metadata

    if spec.network_g:
        return dict(spec.network_g)
    meta = read_metadata(path)
    section = arch_from_metadata(meta)
    if section is not None:
        if "scale" not in section and meta.get("scale", "").isdigit():
            section["scale"] = int(meta["scale"])
        return section
    fallback = dict(opt.network_g or {})
    try:
        arch, inferred = infer_arch(sd)
    except ValueError:
        return fallback
    if fallback.get("type", "").lower() != arch.lower():
        log.info(f"{spec.name}: {path} holds {arch} weights; built as {arch} {inferred}")
        return {"type": arch, **inferred}
    merged = {**fallback, **inferred}
    if any(fallback.get(k) != v for k, v in inferred.items() if k in fallback):
        log.info(f"{spec.name}: {path} records no network; {arch} {inferred} read off the weights, the other "
                 "options from the test file's network_g (give the entry a network_g to set them)")
    return merged


def load_model(spec: ModelSpec, opt: Options, device: torch.device, log: Any) -> tuple[nn.Module, int | None]:
    """Build and load ``spec``'s network (eval mode, on ``device``); returns it and its scale."""
    from models.base_model import build_network, count_parameters
    from utils.weights import load_network, read_weights

    path = resolve_weights(spec)
    sd = select_weights(spec, path, read_weights(path), log)
    net_opt = network_for(spec, path, sd, opt, log)
    try:
        net = build_network(net_opt)
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(f"{spec.where}: cannot build {net_opt.get('type')} for {path}: {err}") from err
    try:
        report = load_network(net, sd, strict=spec.strict_load, param_key=None)
    except RuntimeError as err:
        raise ValueError(f"{spec.where}: the weights in {path} do not fit {net_opt.get('type')} "
                         f"{ {k: v for k, v in net_opt.items() if k != 'type'} }: {err}") from err
    flags = ", ".join(f for f, on in ((f"{spec.copy} weights", spec.copy), ("two passes", spec.twopass),
                                       ("TTA", spec.tta)) if on)
    log.info(f"model {spec.name}: {path}{f' ({flags})' if flags else ''}: {net_opt.get('type')} with "
             f"{count_parameters(net):,} parameters; {report.summary()}")
    scale = net_opt.get("scale")
    return net.to(device).eval(), int(scale) if isinstance(scale, int) else None


# ------------------------------------------------------------------------------ inference


@dataclass
class Candidate:
    """A model of the table: ``net`` (a module, or a plain function for a baseline) runs through
    the runner's :meth:`~models.validation.ValidationMixin.run_sample` at ``scale`` with or without
    8-way TTA, chosen per model rather than for the whole file."""

    name: str
    net: nn.Module | Callable[[Tensor], Tensor]
    scale: int | None
    tta: bool
    where: str


class TwoPass(nn.Module):
    """An x2 network run twice for x4: ``net(net(x))``, the first output neither clamped nor
    rounded; a module so the runner's eval mode, autocast and tiles apply to it as to any network."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(self.net(x))


def build_candidates(opt: Options, specs: Sequence[ModelSpec], runner: Any, device: torch.device,
                     log: Any) -> list[Candidate]:
    """Every model of the run, loaded and checked against the sets' scales before anything runs:
    ``path.pretrain_network_g``, then ``specs`` (the baselines are made per set, see :func:`evaluate`)."""
    scales = _set_scales(opt)
    global_tta = bool(opt.val.tta)
    out: list[Candidate] = []
    if opt.path.pretrain_network_g:
        spec = ModelSpec(name=opt.network_g["type"], path=opt.path.pretrain_network_g,
                         where="path.pretrain_network_g")
        check_scale(spec, opt.network_g.get("scale"), scales)
        out.append(Candidate(spec.name, runner.net_g, opt.scale, global_tta, spec.where))
    for spec in specs:
        net, scale = load_model(spec, opt, device, log)
        problem = runner.network_problem(net)
        if problem:
            raise ValueError(f"{spec.where}: {spec.path}: {problem}")
        net = net.to(memory_format=runner.memory_format)
        check_scale(spec, scale, scales)
        tta = global_tta if spec.tta is None else spec.tta
        if spec.twopass:
            out.append(Candidate(spec.name, TwoPass(net), 4, tta, spec.where))
        else:
            out.append(Candidate(spec.name, net, scale or opt.scale, tta, spec.where))
    return out


# ------------------------------------------------------------------------------ strips

STRIP_MIN_HEIGHT = 96  # panels of smaller images are enlarged by a whole factor up to this height
STRIP_MAX_ZOOM = 8
LABEL_BAND = 14  # pixels of the label band above the panels


def strip_zoom(height: int) -> int:
    """Whole-number enlargement of each panel: tiny sprites are shown at least ~96 px tall."""
    return max(1, min(STRIP_MAX_ZOOM, math.ceil(STRIP_MIN_HEIGHT / max(height, 1))))


def _panel_u8(img: Tensor) -> np.ndarray:
    """One 1CHW/CHW image in [0, 1] → HWC RGB uint8 (gray repeated, bands past the third dropped),
    rounded as a PNG of it would be."""
    from data.image_io import tensor2img

    arr = tensor2img(img[0] if img.dim() == 4 else img)
    arr = np.repeat(arr[..., :1], 3, axis=2) if arr.shape[2] < 3 else arr[..., :3]
    return np.round(np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)


def _label(text: str, width: int) -> np.ndarray:
    """A white band ``LABEL_BAND`` tall with ``text`` in black, cut at ``width``."""
    import cv2

    band = np.full((LABEL_BAND, width, 3), 255, np.uint8)
    cv2.putText(band, text, (2, LABEL_BAND - 4), cv2.FONT_HERSHEY_PLAIN, 0.8, (0, 0, 0), 1, cv2.LINE_AA)
    return band


def make_strip(lq: Tensor, outputs: Sequence[tuple[str, Tensor]], gt: Tensor, labels: bool = True) -> np.ndarray:
    """LR (nearest-upscaled to the HR size) | each model's output | HR, side by side, as an HWC RGB
    uint8 image; every panel enlarged by :func:`strip_zoom` (nearest), with a label band on top."""
    h, w = gt.shape[-2:]
    lr_up = F.interpolate(lq.float().reshape(1, *lq.shape[-3:]), size=(h, w), mode="nearest")
    panels = [("LR (nearest)", lr_up), *outputs, ("HR", gt)]
    zoom = strip_zoom(h)
    columns = []
    for name, img in panels:
        arr = _panel_u8(img.detach().float().cpu())
        if arr.shape[:2] != (h, w):
            raise ValueError(f"strip panel '{name}' is {arr.shape[0]}x{arr.shape[1]}, the HR image {h}x{w}")
        arr = np.repeat(np.repeat(arr, zoom, axis=0), zoom, axis=1)
        columns.append(np.concatenate([_label(name, arr.shape[1]), arr]) if labels else arr)
    return np.concatenate(columns, axis=1)


def save_strip(path: Path, strip: np.ndarray) -> None:
    from data.image_io import write_image

    write_image(path, strip.astype(np.float64) / 255.0)


# ------------------------------------------------------------------------------ evaluation


@dataclass
class SetScores:
    """Per-image scores of one set: ``rows[model]`` is a list of ``{name, metric: value | None}``;
    ``skipped[(image, metric)]`` says why an image was too small for a metric."""

    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    skipped: dict[tuple[str, str], str] = field(default_factory=dict)


def _score(outputs: dict[str, Tensor], targets: dict[str, Tensor], metrics: dict[str, dict[str, Any]],
           first: str, stem: str, scores: SetScores) -> dict:
    """One sample's metrics, each on its ``output`` (default ``first``); a metric the image is too
    small for gives None and is recorded."""
    from utils.metrics.psnr_ssim import ImageTooSmallError
    from utils.registry import METRIC_REGISTRY

    row: dict[str, Any] = {"name": stem}
    for name, mopt in metrics.items():
        head, kwargs = head_and_kwargs(mopt, MetricEntry)
        out = head.get("output") or first
        try:
            row[name] = float(METRIC_REGISTRY.get(mopt["type"])(outputs[out], targets[out], **kwargs)[0])
        except ImageTooSmallError as err:
            row[name] = None
            scores.skipped[(stem, name)] = str(err)
    return row


def evaluate_set(ds_name: str, loader: Any, candidates: Sequence[Candidate], metrics: dict[str, dict[str, Any]],
                 runner: Any, out_dir: Path, save_img: bool, strips: int, labels: bool) -> SetScores:
    """Every candidate on every sample of one set (samples outside, models inside, so a strip has
    all the models' outputs of its image at hand). A one-output runner (SR) gets LR | models | HR
    strips; a runner of several outputs (PBR maps) its validation panel per model instead."""
    from data.image_io import tensor2img, write_image

    scores = SetScores(rows={c.name: [] for c in candidates})
    first = runner.outputs[0]
    one_image = len(runner.outputs) == 1
    for index, sample in enumerate(loader):
        stem = Path(sample.get("lq_path", sample.get("gt_path", [f"{index:05d}"]))[0]).stem
        shown: list[tuple[str, Tensor]] = []
        for cand in candidates:
            outputs, targets = runner.run_sample(sample, cand.net, scale=cand.scale, tta=cand.tta)
            got, want = outputs[first].shape[-2:], targets[first].shape[-2:]
            if got != want:
                lq = sample["lq"].shape[-2:]
                raise ValueError(f"{cand.where}: model '{cand.name}' turns the {lq[0]}x{lq[1]} input of '{stem}' "
                                 f"({ds_name}) into {got[0]}x{got[1]}, but its reference is {want[0]}x{want[1]}: "
                                 "the model's scale is not the set's")
            scores.rows[cand.name].append(_score(outputs, targets, metrics, first, stem, scores))
            if save_img:
                runner.save_outputs(outputs, out_dir / cand.name / ds_name, stem)
            if index < strips and dist.is_main():
                if one_image:
                    shown.append((cand.name, outputs[first]))
                else:
                    panel = runner.panel(sample, outputs, targets)
                    write_image(out_dir / "strips" / ds_name / f"{stem}_{cand.name}.png", tensor2img(panel))
        if shown:
            lq, gt = sample["lq"].to(runner.device), sample["gt"].to(runner.device)
            save_strip(out_dir / "strips" / ds_name / f"{stem}.png", make_strip(lq, shown, gt, labels))
    return scores


def _mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def summarise(scores: SetScores, metrics: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{model: {metric: {"mean", "per_image"}}}`` of one set; the mean leaves out skipped images."""
    out = {}
    for model, rows in scores.rows.items():
        rows = sorted(rows, key=lambda r: r["name"])
        out[model] = {m: {"mean": _mean([r[m] for r in rows]), "per_image": {r["name"]: r[m] for r in rows}}
                      for m in metrics}
    return out


def _report_skipped(ds_name: str, scores: SetScores, log: Any) -> None:
    """One warning per group of images skipped for the same metrics, with the first reason."""
    by_image: dict[str, list[str]] = {}
    for stem, metric in sorted(scores.skipped):
        by_image.setdefault(stem, []).append(metric)
    groups: dict[tuple[str, ...], list[str]] = {}
    for stem, skipped in by_image.items():
        groups.setdefault(tuple(skipped), []).append(stem)
    for skipped, stems in groups.items():
        shown = ", ".join(stems[:8]) + (f" ... ({len(stems)} in all)" if len(stems) > 8 else "")
        reason = scores.skipped[(stems[0], skipped[0])]
        log.warning(f"{ds_name}: {len(stems)} image(s) too small for {', '.join(skipped)}, left out of their means "
                    f"({shown}); e.g. {reason}")


def results_table(title: str, results: dict[str, dict[str, Any]], metrics: Sequence[str]) -> Any:
    """One table: a row per set and model (the sets' rows together), a column per metric."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("set")
    table.add_column("model")
    for name in metrics:
        table.add_column(name, justify="right")
    sets = list(next(iter(results.values()), {}))
    for ds in sets:
        for model, per_set in results.items():
            values = [per_set[ds][m]["mean"] for m in metrics]
            table.add_row(ds, model, *["-" if v is None else f"{v:.4f}" for v in values])
        table.add_section()
    return table


def _metrics_in_use(opt: Options, lpips: bool) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in opt.val.metrics.items() if lpips or v["type"] != "calculate_lpips"}


def evaluate(
    opt_path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    models: Sequence[str] = (),
    strips: int | None = None,
    labels: bool = True,
    out_dir: str | Path | None = None,
    lpips: bool = True,
) -> dict[str, Any]:
    """Score every model on every test set; returns ``{model: {set: {metric: {"mean", "per_image"}}}}``.

    ``models``: ``--models`` items (``NAME=[ema:|swa:|twopass:|tta:]PATH``) added after the file's;
    ``strips``: strips for the first K images of each set (default: ``val.strips`` where the option
    schema has it, else none; ``labels``: with a band of model names);
    ``out_dir``: where results go (default ``<results_root>/<name>``); ``lpips=False`` drops the
    ``calculate_lpips`` metrics. A per-image value is None (null) where the image is too small for
    that metric, and the mean leaves it out.
    """
    from data.data_loader import build_val_loader
    from utils.registry import MODEL_REGISTRY

    opt = load_options(opt_path, overrides)
    strips = int(getattr(opt.val, "strips", 0) or 0) if strips is None else strips
    if strips < 0:
        raise ValueError(f"--strips must be >= 0, got {strips}")
    specs = model_specs(opt, models)
    problems = check_test_options(opt, specs)
    if problems:
        raise OptionsError(opt.source, problems)
    metrics = _metrics_in_use(opt, lpips)
    if not metrics:
        raise OptionsError(opt.source, [("val.metrics", "--no-lpips leaves no metric to compute")])

    device = select_device(opt.device)
    out = Path(out_dir) if out_dir is not None else Path(opt.path.results_root) / opt.name
    log = setup_logger(out / "test.log")
    runner = MODEL_REGISTRY.get(opt.model_type)(opt, device)
    candidates = build_candidates(opt, specs, runner, device, log)
    loaders = {ds_opt.get("name") or key: build_val_loader(ds_opt)
               for key, ds_opt in opt.datasets.items() if key != "train"}

    baseline_names = list(runner.baseline_names) if opt.val.baselines else []
    results: dict[str, Any] = {name: {} for name in baseline_names + [c.name for c in candidates]}
    with torch.no_grad():
        for ds_name, loader in loaders.items():
            baselines = [Candidate(name, fn, None, False, "val.baselines")
                         for name, fn in runner.baseline_methods(loader).items()] if baseline_names else []
            scores = evaluate_set(ds_name, loader, baselines + candidates, metrics, runner, out, opt.val.save_img,
                                  strips, labels)
            _report_skipped(ds_name, scores, log)
            for model, per_metric in summarise(scores, list(metrics)).items():
                results[model][ds_name] = per_metric
                log.info(f"{model} on {ds_name}: " + ", ".join(
                    f"{k} {v['mean']:.4f}" for k, v in per_metric.items() if v["mean"] is not None))
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
        from utils.logger import print_table

        print_table(results_table(opt.name, results, list(metrics)))
        log.info(f"results in {out}")
    return results


# ------------------------------------------------------------------------------ --check


def _network_lines(opt: Options, label: str, where: str, net_opt: dict[str, Any]) -> list[str]:
    """The network built as a test run builds it (its constructor's own checks run), counted; a
    constructor that refuses its keywords is reported at ``where``."""
    from models.base_model import build_network, count_parameters

    try:
        net = build_network(net_opt)
    except (TypeError, ValueError, KeyError) as err:  # e.g. a network section recorded in a weight file
        raise OptionsError(opt.source, [(where, f"cannot build {net_opt.get('type')}: {err}")]) from err
    return [f"# {label} ({net_opt['type']}): {count_parameters(net):,} trainable parameters"]


def _model_entry_lines(opt: Options, specs: Sequence[ModelSpec]) -> list[str]:
    """Each model's network as evaluate() resolves it without reading the weights: its own
    section, else what its weight file records, else the file's network_g; a weight file not there
    yet is a note, a recorded scale that cannot serve the sets an error."""
    from utils.weights import arch_from_metadata, read_metadata

    lines: list[str] = []
    scales = _set_scales(opt)
    for spec in specs:
        flags = [f for f, on in ((spec.copy, spec.copy), ("twopass", spec.twopass), ("tta", spec.tta)) if on]
        try:
            path: Path | None = resolve_weights(spec)
        except FileNotFoundError:
            lines.append(f"# note: {spec.where}: {spec.path} does not exist yet")
            path = None
        try:
            recorded = arch_from_metadata(read_metadata(path)) if path is not None else None
        except (OSError, ValueError) as err:
            raise OptionsError(opt.source, [(spec.where, f"cannot read its network: {err}")]) from err
        net_opt = spec.network_g or recorded or opt.network_g
        if spec.network_g or recorded:
            scale = net_opt.get("scale")
            try:
                check_scale(spec, scale if isinstance(scale, int) else None, scales)
            except ValueError as err:
                raise OptionsError(opt.source, [(spec.where, str(err))]) from err
        label = f"models[{spec.name}]" + (f" ({', '.join(flags)})" if flags else "")
        if spec.twopass and net_opt is opt.network_g:
            net_opt = {**net_opt, "scale": 2}
        if net_opt:
            lines += _network_lines(opt, label, spec.where, net_opt)
    return lines


def describe_test(opt: Options, specs: Sequence[ModelSpec] | None = None) -> str:
    """The resolved options of a test file, its networks' sizes and notes on paths not there yet,
    as ``test.py --check`` prints them."""
    specs = model_specs(opt) if specs is None else specs
    lines = [f"# {opt.source}: valid test file", opt.to_yaml().rstrip()]
    weights = opt.path.pretrain_network_g
    if weights:
        lines += _network_lines(opt, "network_g", "network_g", opt.network_g)
        if not Path(weights).is_file():
            lines.append(f"# note: path.pretrain_network_g = {weights} does not exist yet")
    lines += _model_entry_lines(opt, specs)
    for key, ds in opt.datasets.items():
        for field_name in ("dataroot_gt", "dataroot_lq"):
            if ds.get(field_name) and not Path(ds[field_name]).exists():
                lines.append(f"# note: datasets.{key}.{field_name} = {ds[field_name]} does not exist yet")
    return "\n".join(lines)


def check(opt_path: str | Path, overrides: list[str] | tuple[str, ...] = (), models: Sequence[str] = ()) -> str:
    """Validate a test file (and ``--models`` items) as :func:`evaluate` reads them, without
    evaluating; returns the description :func:`describe_test` prints."""
    opt = load_options(opt_path, overrides)
    specs = model_specs(opt, models)
    problems = check_test_options(opt, specs)
    if problems:
        raise OptionsError(opt.source, problems)
    return describe_test(opt, specs)


# ------------------------------------------------------------------------------ command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Evaluate trained models (SR, PBR maps) from an option file.")
    parser.add_argument("-opt", "--opt", required=True, help="path to the test option YAML file")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY.PATH=VALUE",
                        help="override an option (repeatable)")
    parser.add_argument("--models", nargs="+", default=[], metavar="NAME=[PREFIX:]PATH",
                        help="more models, after the file's models: list; prefixes ema: (EMA weights), swa: "
                             "(SWA average), twopass: (an x2 model run twice for x4), tta: (8-way TTA for this model); "
                             "a path may be a training run's folder")
    parser.add_argument("--tta", action="store_true", help="8-way TTA for every model (val.tta=true)")
    parser.add_argument("--baselines", action="store_true",
                        help="add the runner's references to the table, e.g. nearest and bicubic for SR "
                             "(val.baselines=true)")
    parser.add_argument("--strips", "--dump", type=int, default=None, metavar="K",
                        help="save LR | models | HR strips of the first K images of each set under strips/")
    parser.add_argument("--no-labels", action="store_true", help="strips without the band of model names")
    parser.add_argument("--no-lpips", action="store_true", help="skip the calculate_lpips metrics")
    parser.add_argument("--out", default=None, metavar="DIR", help="results folder (default <results_root>/<name>)")
    parser.add_argument("--device", default=None, help="auto, cpu, mps, cuda or cuda:N (the file's device)")
    parser.add_argument("--check", action="store_true",
                        help="validate the options as a test run reads them, print them and exit")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = list(args.override) + (["val.tta=true"] if args.tta else []) + (
        ["val.baselines=true"] if args.baselines else []) + ([f"device={args.device}"] if args.device else [])

    def run() -> int:
        if args.check:
            print(check(args.opt, overrides, args.models))
            return 0
        with torch.inference_mode():
            evaluate(args.opt, overrides, models=args.models, strips=args.strips, labels=not args.no_labels,
                     out_dir=args.out, lpips=not args.no_lpips)
        return 0

    return run_reporting_errors(run)


__all__ = ["ModelSpec", "build_candidates", "check", "check_scale", "check_test_options", "describe_test",
           "evaluate", "main", "make_strip", "model_specs", "parse_model_arg", "split_prefixes",
           "strip_zoom"]
