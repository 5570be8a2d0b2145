"""Debug mode: ``train.py --debug`` (or a ``name`` starting with ``debug_``, as in BasicSR) turns
an option file into a short run that logs every step, validates and saves, in
``experiments/debug_<name>``, to try the file quickly."""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Union

from pydantic import BaseModel, BeforeValidator

from utils.options import (
    Component,
    Options,
    OptionsError,
    apply_override,
    dataset_phase,
    load_options,
    load_yaml,
    parse_options,
    signature_model,
    signature_params,
)
from utils.registry import DATASET_REGISTRY
from utils.schedule import Scheduled
from utils.steps import Step, resolve_step

DEBUG_PREFIX = "debug_"
DEBUG_TOTAL_ITER = 8
DEBUG_EVERY = 4  # val_freq and save_checkpoint_freq: once inside the short run and again at its end

# Step and Scheduled fields are recognised in a schema by their pydantic validators
_STEP_CHECK = Step.__metadata__[0].func
_SCHEDULE_CHECK = Scheduled.__metadata__[0].func


def _join(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


class StepScaler:
    """Rescales the absolute iteration counts of a raw option mapping from the file's run length
    to a debug run's: a 1000-step warm-up of a 300k-step run becomes 1 step of 8. So the phases
    the file plans (EMA start, GAN pre-training, LR milestones, schedule keys) still happen in the
    short run, in order, and none outlasts it (CosineAnnealingLR refuses warmup_iter >= total_iter).
    A positive count stays at least 1; fractions (``0.8T``) are left alone, they follow the short
    total by themselves. Fields are found through the schema (Step and Scheduled types), so runner
    and automation sections and component keywords are covered without naming any."""

    def __init__(self, total: int, short: int) -> None:
        self.total, self.short = total, short
        self.changes: list[tuple[str, int, int]] = []  # (key path, file value, debug value)

    def step(self, value: Any, path: str) -> Any:
        try:
            count = resolve_step(value, None)  # absolute counts only: a fraction needs a total
        except ValueError:
            return value
        if count <= 0:
            return value
        scaled = max(1, round(count * self.short / self.total))
        if scaled != count:
            self.changes.append((path, count, scaled))
        return scaled

    def schedule(self, spec: Any, path: str) -> Any:
        if not isinstance(spec, dict):  # a constant
            return spec
        if "type" in spec:  # a ramp: its end stays after its start however close the two land
            out = {**spec, "from": self.step(spec["from"], f"{path}.from"), "to": self.step(spec["to"], f"{path}.to")}
            first, last = resolve_step(out["from"], self.short), resolve_step(out["to"], self.short)
            return {**out, "to": max(last, first + 1)}
        # the keys in run order: where two land on one short step, the later value (in force after it) wins
        ordered = sorted(spec.items(), key=lambda item: resolve_step(item[0], self.total))
        return {resolve_step(self.step(key, f"{path}[{key}]"), self.short): value for key, value in ordered}

    def value(self, value: Any, annotation: Any, metadata: typing.Iterable[Any], path: str) -> Any:
        """``value`` rescaled as its annotation (and the field's metadata) says."""
        meta = list(metadata)
        while typing.get_origin(annotation) is Annotated:
            meta += list(annotation.__metadata__)
            annotation = annotation.__origin__
        for marker in meta:
            if isinstance(marker, Component):
                return self.component(marker, value, path)
            if isinstance(marker, BeforeValidator) and marker.func is _STEP_CHECK:
                return self.step(value, path)
            if isinstance(marker, BeforeValidator) and marker.func is _SCHEDULE_CHECK:
                return self.schedule(value, path)
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
        if origin in (Union, types.UnionType):
            for arg in (a for a in args if a is not type(None)):
                new = self.value(value, arg, (), path)
                if new is not value:
                    return new
        elif origin is list and isinstance(value, list):
            return [self.value(v, args[0], (), _join(path, i)) for i, v in enumerate(value)]
        elif origin is dict and isinstance(value, dict) and len(args) == 2:
            return {k: self.value(v, args[1], (), _join(path, k)) for k, v in value.items()}
        elif inspect.isclass(annotation) and issubclass(annotation, BaseModel) and isinstance(value, dict):
            self.section(annotation, value, path)
        return value

    def section(self, model: type[BaseModel], raw: dict[str, Any], path: str = "") -> None:
        """Rescale, in place, the keys of ``raw`` that ``model`` declares."""
        for name, field in model.model_fields.items():
            if raw.get(name) is not None:
                raw[name] = self.value(raw[name], field.annotation, field.metadata, _join(path, name))

    def component(self, comp: Component, value: Any, path: str) -> Any:
        if comp.many == "list" and isinstance(value, list):
            return [self.component_section(comp, v, _join(path, i)) for i, v in enumerate(value)]
        if comp.many == "dict" and isinstance(value, dict):
            return {k: self.component_section(comp, v, _join(path, k), key=k) for k, v in value.items()}
        return self.component_section(comp, value, path)

    def component_section(self, comp: Component, section: Any, path: str, key: Any = None) -> Any:
        """A ``{type: Name, **kwargs}`` section: the runner's own keys (``comp.head``) and the
        registered class's keywords, read as the option check reads them."""
        if not isinstance(section, dict):
            return section
        name = key if comp.type_from_key else comp.fixed_type or section.get("type")
        for model in (comp.head, signature_model(comp.registry.get(name), comp.skip)):
            if model is not None:  # None: the class takes **kwargs, no types to go by
                self.section(model, section, path)
        return section


def _limit_val_images(data: dict[str, Any]) -> list[str]:
    """Validate on the first image of each set, through the datasets' own ``indices`` option
    where the class has one. A set with a ``meta_info_file`` stays whole: that filter applies
    after ``indices`` and might leave nothing."""
    limited = []
    for key, section in (data.get("datasets") or {}).items():
        if dataset_phase(key) == "train" or not isinstance(section, dict) or section.get("meta_info_file"):
            continue
        if "indices" in signature_params(DATASET_REGISTRY.get(section["type"])):
            section["indices"] = (section.get("indices") or [0])[:1]
            limited.append(key)
    return limited


def _describe_scaled(changes: list[tuple[str, int, int]]) -> str:
    """``a.b 1000 -> 1, c.milestones [50000, 100000] -> [1, 2]``: items of one list or schedule together."""
    groups: dict[str, list[tuple[str, int, int]]] = {}
    for change in changes:
        match = re.fullmatch(r"(.*)\[[^\[\]]+\]", change[0])
        groups.setdefault(match.group(1) if match else change[0], []).append(change)
    out = []
    for base, items in groups.items():
        if len(items) == 1:
            out.append(f"{items[0][0]} {items[0][1]} -> {items[0][2]}")
        else:
            out.append(f"{base} {[old for _, old, _ in items]} -> {[new for _, _, new in items]}")
    return ", ".join(out)


def apply_debug_mode(data: dict[str, Any], opt: Options) -> str:
    """Turn ``data`` (the raw file with the user's overrides; ``opt``, its validated form) into a
    short debug run, in place; returns the one-line notice of what changed."""
    total = opt.train.total_iter
    short = min(DEBUG_TOTAL_ITER, total)
    scaler = StepScaler(total, short)
    scaler.section(type(opt), data)
    name = opt.name if opt.name.startswith(DEBUG_PREFIX) else DEBUG_PREFIX + opt.name
    forced: dict[str, Any] = {"name": name, "train.total_iter": short, "logger.print_freq": 1,
                              "logger.save_checkpoint_freq": DEBUG_EVERY}
    if opt.val is not None:
        forced["val.val_freq"] = DEBUG_EVERY
    if opt.logger.wandb is not None and opt.logger.wandb.mode != "disabled":
        forced["logger.wandb.mode"] = "offline"  # try the logging, but keep debug runs out of the W&B project
    for key, value in forced.items():
        apply_override(data, f"{key}={json.dumps(value)}")  # JSON is YAML: any name survives the parser
    parts = [f"name {name}", f"total_iter {total} -> {short}", "print_freq 1",
             f"validation and checkpoints every {DEBUG_EVERY} iterations and at the end"]
    scaled = _describe_scaled([change for change in scaler.changes if change[0] not in forced])
    if scaled:
        parts.append(f"absolute steps scaled by {short}/{total}: {scaled}")
    limited = _limit_val_images(data)
    if limited:
        parts.append(f"validation on the first image of {', '.join(limited)}")
    if "logger.wandb.mode" in forced:
        parts.append("W&B offline")
    return "debug mode: " + "; ".join(parts)


def load_run_options(opt_path: str | Path, overrides: typing.Sequence[str],
                     debug: bool, check: bool = False) -> tuple[Options, str | None]:
    """The run's options and, for a debug run, the notice of what debug mode changed.

    The file is validated as written first, so its own mistakes read as such. A debug run is then
    derived from the raw file and validated again, so that fractions (``0.8T``) resolve against
    the short total. With ``check`` (``train.py --check``) a test file, which has no ``train:``
    section, is validated as test.py reads it, and the notice says so."""
    opt = load_options(opt_path, overrides)
    if opt.train is None:
        if not check:
            raise OptionsError(str(opt_path), [("train", "a training option file needs a train: section (for a "
                                                         "test file, run python test.py -opt FILE)")])
        from models.evaluation import check_test_options

        problems = check_test_options(opt)
        if problems:
            raise OptionsError(opt.source, problems)
        return opt, "a test option file (no train: section), checked as test.py reads it"
    if not (debug or opt.name.startswith(DEBUG_PREFIX)):
        return opt, None
    data = load_yaml(opt_path)
    for expr in overrides:
        apply_override(data, expr)  # these applied cleanly above
    notice = apply_debug_mode(data, opt)
    try:
        return parse_options(data, source=opt.source, base_dir=Path(opt_path).parent), notice
    except OptionsError as err:
        raise OptionsError(f"{opt.source} (in {notice})", err.problems) from err
