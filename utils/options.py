"""Option files: load YAML, apply overrides, validate every key before anything is built.

Validation has two layers. The static schema below covers the trainer's own sections and
rejects unknown keys. Component sections (``network_g``, each ``train.losses`` entry, each
dataset, each metric, the optimiser and the scheduler) name a registered class by ``type``;
their remaining keys are checked against that class's constructor signature and type hints.
Every problem is reported at once, with the file, the key path and the closest valid key.
"""

from __future__ import annotations

import difflib
import inspect
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, create_model, field_validator

from utils.registry import (
    ARCH_REGISTRY,
    DATASET_REGISTRY,
    LOSS_REGISTRY,
    METRIC_REGISTRY,
    OPTIMIZER_REGISTRY,
    SCHEDULER_REGISTRY,
    Registry,
    import_user_modules,
)
from utils.steps import Step, resolve_step


class OptionsError(ValueError):
    """One or more problems in an option file; ``problems`` holds (key path, message) pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"Invalid options in {source}:"]
        lines += [f"  - {path}: {msg}" if path else f"  - {msg}" for path, msg in problems]
        super().__init__("\n".join(lines))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PathOptions(_Section):
    experiments_root: str = "experiments"
    results_root: str = "results"
    pretrain_network_g: str | None = None
    strict_load_g: bool = True
    param_key_g: str = "params"
    resume_state: str | None = None


class TrainOptions(_Section):
    total_iter: int = Field(gt=0)
    optim_g: dict[str, Any]
    scheduler: dict[str, Any] | None = None
    losses: list[dict[str, Any]] = []
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0)
    ema_update_after: Step = 0
    ema_warmup: bool = False
    grad_clip: float | None = Field(None, gt=0)
    accumulate_grad_batches: int = Field(1, ge=1)


class ValOptions(_Section):
    val_freq: Annotated[Step, Field(gt=0)] = 5000
    save_img: bool = False
    metrics: dict[str, dict[str, Any]] = {}
    tta: bool = False
    tile: int = Field(0, ge=0)
    tile_overlap: int = Field(16, ge=0)
    baselines: bool = False


class LoggerOptions(_Section):
    print_freq: int = Field(100, gt=0)
    save_checkpoint_freq: Annotated[Step, Field(gt=0)] = 5000
    use_tb_logger: bool = True
    keep_last: int = Field(3, ge=1)


class ModelEntry(_Section):
    """An extra model compared by test.py (``models:`` list)."""

    name: str
    path: str
    param_key: str = "params"
    strict_load: bool = True
    network_g: dict[str, Any] | None = None


class LoaderOptions(_Section):
    """Dataset keys that belong to the loader rather than to the dataset class."""

    name: str = ""
    type: str
    batch_size_per_gpu: int = Field(16, gt=0)
    num_worker_per_gpu: int = Field(4, ge=0)
    pin_memory: bool = True
    persistent_workers: bool = True
    prefetch_mode: Literal["cpu", "cuda"] | None = None
    dataset_enlarge_ratio: int = Field(1, ge=1)


class LossEntry(BaseModel):
    """The keys of a ``train.losses`` entry that the runner handles itself."""

    model_config = ConfigDict(extra="allow")
    type: str
    loss_weight: float | dict[Step, float] = 1.0
    name: str | None = None


class MetricEntry(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    better: Literal["higher", "lower"] | None = None


class Options(_Section):
    name: str
    model_type: str = "SRModel"
    scale: int = Field(4, ge=1, le=16)
    num_gpu: int | Literal["auto"] = "auto"
    manual_seed: int = 0
    imports: list[str] = []
    device: str = "auto"
    amp: Literal["none", "fp16", "bf16"] = "none"
    channels_last: bool = False
    compile: bool | Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = False
    tf32: bool = True
    datasets: dict[str, dict[str, Any]] = {}
    network_g: dict[str, Any]
    path: PathOptions = PathOptions()
    train: TrainOptions | None = None
    val: ValOptions | None = None
    logger: LoggerOptions = LoggerOptions()
    models: list[ModelEntry] = []

    _source: str = PrivateAttr("<options>")

    @field_validator("amp", mode="before")
    @classmethod
    def _amp_bool(cls, v: Any) -> Any:
        return "none" if v is False or v is None else v

    @field_validator("device")
    @classmethod
    def _device_name(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v):
            raise ValueError(f"device must be auto, cpu, mps, cuda or cuda:N, got {v!r}")
        return v

    @property
    def source(self) -> str:
        return self._source

    @property
    def experiment_dir(self) -> Path:
        return Path(self.path.experiments_root) / self.name

    def to_yaml(self) -> str:
        return yaml.safe_dump(_plain(self.model_dump(mode="json")), sort_keys=False)


# ----------------------------------------------------------------------------- helpers


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def format_path(loc: tuple | list) -> str:
    """``('train', 'losses', 1, 'w')`` → ``train.losses[1].w``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


# Keys of BasicSR option files that upforge spells differently.
_MIGRATION_HINTS = {
    "pixel_opt": "write it as an entry of train.losses: [{type: L1Loss, loss_weight: 1.0}]",
    "perceptual_opt": "write it as an entry of train.losses",
    "warmup_iter": "it belongs to train.scheduler (warmup_iter, warmup_start_factor)",
    "upscale": "write scale once at the top level; it is injected into the network",
    "io_backend": "not needed: images are read from disk folders",
    "dist_params": "not needed: launch with torchrun",
}


def _closest(key: str, valid: typing.Iterable[str]) -> str:
    if key in _MIGRATION_HINTS:
        return f"; {_MIGRATION_HINTS[key]} (see docs/migrating_from_basicsr.md)"
    valid = list(valid)
    match = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
    if match:
        return f"; did you mean '{match[0]}'?"
    return f"; valid keys: {', '.join(sorted(valid))}" if valid else ""


def _unwrap_model_type(ann: Any) -> Any:
    """The BaseModel class inside ``X | None`` / ``list[X]`` / ``dict[str, X]``, if any."""
    origin = typing.get_origin(ann)
    if origin in (Union, types.UnionType, list, dict):
        for arg in typing.get_args(ann):
            found = _unwrap_model_type(arg)
            if found is not None:
                return found
        return None
    return ann if inspect.isclass(ann) and issubclass(ann, BaseModel) else None


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Valid field names of the schema model found by walking ``loc``."""
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None:
            return []
        if isinstance(part, int) or part not in current.model_fields:
            continue
        current = _unwrap_model_type(current.model_fields[part].annotation)
    return list(current.model_fields) if current is not None else []


def _pydantic_problems(
    err: ValidationError, model: type[BaseModel], prefix: tuple = (), extra_valid: list[str] | None = None
) -> list[tuple[str, str]]:
    problems = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if p not in ("function-before[_validate(), int]",))
        # pydantic reports the union branch it tried as part of loc; drop those labels.
        loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in ("int", "str", "float"))))
        path = format_path(prefix + loc)
        if e["type"] == "extra_forbidden":
            valid = _fields_at(model, loc[:-1]) + (extra_valid or [])
            problems.append((path, "unknown key" + _closest(str(loc[-1]), valid)))
        elif e["type"] == "missing":
            problems.append((path, "required key is missing"))
        else:
            msg = e["msg"]
            if "input" in e and not isinstance(e["input"], dict | list):
                msg += f" (got {e['input']!r})"
            problems.append((path, msg))
    return problems


# ------------------------------------------------------------------ component signatures

_SIGNATURE_MODELS: dict[tuple[int, frozenset], type[BaseModel]] = {}


def signature_model(obj: Any, skip: typing.Collection[str] = ()) -> type[BaseModel] | None:
    """A pydantic model of ``obj``'s keyword arguments; None when it takes ``**kwargs``."""
    key = (id(obj), frozenset(skip))
    if key in _SIGNATURE_MODELS:
        return _SIGNATURE_MODELS[key]
    func = obj.__init__ if inspect.isclass(obj) else obj
    sig = inspect.signature(func)
    try:
        hints = typing.get_type_hints(func, include_extras=True)
    except Exception:  # noqa: BLE001 - unresolvable annotations only lose type checking
        hints = {}
    fields: dict[str, Any] = {}
    for name, param in sig.parameters.items():
        if name == "self" or name in skip or param.kind == param.VAR_POSITIONAL:
            continue
        if param.kind == param.VAR_KEYWORD:
            _SIGNATURE_MODELS[key] = None
            return None
        default = ... if param.default is param.empty else param.default
        fields[name] = (hints.get(name, Any), default)
    config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    model = create_model(f"{getattr(obj, '__name__', 'component')}Options", __config__=config, **fields)
    _SIGNATURE_MODELS[key] = model
    return model


def signature_params(obj: Any) -> list[str]:
    func = obj.__init__ if inspect.isclass(obj) else obj
    return [n for n in inspect.signature(func).parameters if n != "self"]


def _check_component(
    section: dict[str, Any],
    path: tuple,
    registry: Registry,
    problems: list[tuple[str, str]],
    context: dict,
    skip: typing.Collection[str] = (),
    inject: dict[str, Any] | None = None,
    extra_valid: typing.Collection[str] = (),
) -> dict[str, Any]:
    """Validate ``{type: Name, **kwargs}`` against the registered object's signature.

    Returns the section with coerced values and injected defaults (e.g. ``scale``).
    """
    if not isinstance(section, dict):
        problems.append((format_path(path), f"expected a mapping with a 'type' key, got {section!r}"))
        return section
    if "type" not in section:
        problems.append((format_path(path + ("type",)), "required key is missing"))
        return section
    try:
        obj = registry.get(section["type"])
    except KeyError as err:
        problems.append((format_path(path + ("type",)), str(err)))
        return section
    kwargs = {k: v for k, v in section.items() if k != "type" and k not in extra_valid}
    params = signature_params(obj)
    for name, value in (inject or {}).items():
        if name not in params:
            continue
        if name in kwargs and name == "scale" and kwargs[name] != value:
            problems.append(
                (format_path(path + (name,)), f"{kwargs[name]} differs from the top-level scale {value}")
            )
        kwargs.setdefault(name, value)
    model = signature_model(obj, skip)
    if model is None:
        return {"type": section["type"], **kwargs, **{k: section[k] for k in extra_valid if k in section}}
    try:
        validated = model.model_validate(kwargs, context=context)
    except ValidationError as err:
        for e in err.errors():
            loc = tuple(e["loc"])
            sub = format_path(path + loc)
            if e["type"] == "extra_forbidden":
                valid = [p for p in params if p not in skip] + list(extra_valid)
                problems.append((sub, f"unknown key for {section['type']}" + _closest(str(loc[-1]), valid)))
            elif e["type"] == "missing":
                problems.append((sub, f"required by {section['type']} but missing"))
            else:
                problems.append((sub, f"{e['msg']} (got {e.get('input')!r})"))
        return section
    out = {"type": section["type"]}
    for k in kwargs:
        out[k] = getattr(validated, k)
    out.update({k: section[k] for k in extra_valid if k in section})
    return out


# ------------------------------------------------------------------------------ loading


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"option file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise OptionsError(str(path), [("", f"YAML syntax error: {err}")]) from err
    if not isinstance(data, dict):
        raise OptionsError(str(path), [("", "the file must hold a mapping of option keys")])
    return data


_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def apply_override(data: dict, expr: str) -> None:
    """Apply ``key.path[0].sub=value``; the value is parsed as YAML (never evaluated)."""
    if "=" not in expr:
        raise ValueError(f"override '{expr}' must look like key.path=value")
    key, raw = expr.split("=", 1)
    parts: list[str | int] = []
    for name, index in _TOKEN.findall(key.strip()):
        parts.append(int(index) if index else name)
    if not parts:
        raise ValueError(f"override '{expr}' has no key")
    value = yaml.safe_load(raw) if raw.strip() else None
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise ValueError(f"override '{expr}': {format_path(parts[: i + 1])} is out of range")
            node = node[part]
            continue
        if not isinstance(node, dict):
            raise ValueError(f"override '{expr}': {format_path(parts[:i])} is not a mapping")
        if node.get(part) is None:
            node[part] = [] if isinstance(nxt, int) else {}
        node = node[part]
    last = parts[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            raise ValueError(f"override '{expr}': index {last} is out of range")
    elif not isinstance(node, dict):
        raise ValueError(f"override '{expr}': {format_path(parts[:-1])} is not a mapping")
    node[last] = value


def dataset_phase(key: str) -> str:
    return "train" if key == "train" else "val"


def _try_scheduler(section: dict | None, problems: list[tuple[str, str]]) -> None:
    """Build the scheduler on a throw-away optimiser, so value conflicts (warm-up longer than the
    run, a start factor out of range) are reported by --check rather than at start-up."""
    if not section or any(p[0].startswith("train.scheduler") for p in problems):
        return
    import torch

    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    try:
        SCHEDULER_REGISTRY.get(section["type"])(dummy, **{k: v for k, v in section.items() if k != "type"})
    except (ValueError, TypeError) as err:
        problems.append(("train.scheduler", str(err)))


def _as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def parse_options(data: dict, source: str = "<options>", base_dir: str | Path | None = None) -> Options:
    """Validate a raw option mapping; raise :class:`OptionsError` listing every problem.

    The static schema and the component signatures are both checked before reporting, so one run
    of ``--check`` shows every mistake in the file.
    """
    problems: list[tuple[str, str]] = []
    imports = data.get("imports") or []
    if imports:
        try:
            import_user_modules(list(imports), base_dir)
        except Exception as err:  # noqa: BLE001 - any import failure is a user error here
            raise OptionsError(source, [("imports", f"{type(err).__name__}: {err}")]) from err

    train_raw, val_raw = _as_dict(data.get("train")), _as_dict(data.get("val"))
    try:
        total_iter = resolve_step(train_raw["total_iter"], None) if "total_iter" in train_raw else None
    except ValueError:
        total_iter = None
    context = {"total_iter": total_iter}
    opt: Options | None = None
    try:
        opt = Options.model_validate(data, context=context)
    except ValidationError as err:
        problems.extend(_pydantic_problems(err, Options))
    scale = data.get("scale", 4) if isinstance(data.get("scale", 4), int) else 4

    def component(section: Any, path: tuple, registry: Registry, **kw: Any) -> Any:
        return _check_component(section, path, registry, problems, context, **kw) if section is not None else None

    network_g = component(data.get("network_g"), ("network_g",), ARCH_REGISTRY, inject={"scale": scale})
    model_nets = []
    for i, entry in enumerate(data.get("models") or []):
        net = _as_dict(entry).get("network_g")
        model_nets.append(component(net, ("models", i, "network_g"), ARCH_REGISTRY, inject={"scale": scale}))

    datasets = {}
    loader_keys = set(LoaderOptions.model_fields)
    for key, ds in _as_dict(data.get("datasets")).items():
        path = ("datasets", key)
        if key != "train" and not re.match(r"(val|test)", key):
            problems.append((format_path(path), "dataset keys must be 'train' or start with 'val' or 'test'"))
            continue
        ds = _as_dict(ds)
        loader_part = {k: v for k, v in ds.items() if k in loader_keys}
        try:
            loader = LoaderOptions.model_validate(loader_part)
        except ValidationError as err:
            problems.extend(p for p in _pydantic_problems(err, LoaderOptions, path) if not p[0].endswith(".type"))
            loader = None
        checked = component(ds, path, DATASET_REGISTRY, inject={"scale": scale, "phase": dataset_phase(key)},
                            extra_valid=[k for k in loader_keys if k != "type"])
        if loader is not None:
            checked.update({k: getattr(loader, k) for k in loader_part if k != "type"})
        datasets[key] = checked

    optim_g = scheduler = None
    losses: list[dict] = []
    if train_raw:
        optim_g = component(train_raw.get("optim_g"), ("train", "optim_g"), OPTIMIZER_REGISTRY, skip=("params",))
        scheduler = component(train_raw.get("scheduler"), ("train", "scheduler"), SCHEDULER_REGISTRY,
                              skip=("optimizer",), inject={"total_iter": total_iter})
        _try_scheduler(scheduler, problems)
        if not train_raw.get("losses"):
            problems.append(("train.losses", "at least one loss is needed"))
        for i, entry in enumerate(train_raw.get("losses") or []):
            path = ("train", "losses", i)
            try:
                head = LossEntry.model_validate(entry, context=context)
            except ValidationError as err:
                problems.extend(_pydantic_problems(err, LossEntry, path))
                continue
            checked = component(entry, path, LOSS_REGISTRY, extra_valid=("loss_weight", "name"))
            checked["loss_weight"] = head.loss_weight
            losses.append(checked)
        if "train" not in _as_dict(data.get("datasets")):
            problems.append(("datasets.train", "a training dataset is required when train: is given"))

    metrics = {}
    for name, metric in _as_dict(val_raw.get("metrics")).items():
        path = ("val", "metrics", name)
        try:
            head = MetricEntry.model_validate(metric)
        except ValidationError as err:
            problems.extend(_pydantic_problems(err, MetricEntry, path))
            continue
        checked = component(metric, path, METRIC_REGISTRY, skip=("img", "img2"), extra_valid=("better",))
        if head.better is not None:
            checked["better"] = head.better
        metrics[name] = checked

    if problems or opt is None:
        raise OptionsError(source, problems)
    opt.network_g = network_g
    for entry, net in zip(opt.models, model_nets):
        entry.network_g = net
    opt.datasets = datasets
    if opt.train is not None:
        opt.train.optim_g, opt.train.scheduler, opt.train.losses = optim_g, scheduler, losses
    if opt.val is not None:
        opt.val.metrics = metrics
    opt._source = source
    return opt


def load_options(path: str | Path, overrides: typing.Iterable[str] = ()) -> Options:
    """Load, override and validate an option file."""
    data = load_yaml(path)
    for expr in overrides:
        try:
            apply_override(data, expr)
        except ValueError as err:
            raise OptionsError(str(path), [("-o", str(err))]) from err
    return parse_options(data, source=str(path), base_dir=Path(path).parent)
