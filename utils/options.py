"""Option files: load YAML, apply overrides, validate every key before anything is built.

Validation has two layers. The static schema below covers the trainer's own sections and
rejects unknown keys. Component sections (``network_g``, each ``train.losses`` entry, each
dataset, each metric, the optimiser and the scheduler) name a registered class by ``type``;
their remaining keys are checked against that class's constructor signature and type hints.
Every problem is reported at once, with the file, the key path and the closest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    StrictBool,
    StrictInt,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from typing_extensions import NotRequired, Required, TypedDict, is_typeddict

from utils.registry import (
    ARCH_REGISTRY,
    AUTOMATION_REGISTRY,
    DATASET_REGISTRY,
    LOSS_REGISTRY,
    METRIC_REGISTRY,
    MODEL_REGISTRY,
    OPTIMIZER_REGISTRY,
    SCHEDULER_REGISTRY,
    Registry,
    import_user_modules,
)
from utils.schedule import Schedule, Scheduled, integer_schedule
from utils.steps import Step, resolve_step
from utils.tiling import DEFAULT_TILE_OVERLAP


class OptionsError(ValueError):
    """One or more problems in an option file; ``problems`` holds (key path, message) pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"Invalid options in {source}:"]
        lines += [f"  - {path}: {msg}" if path else f"  - {msg}" for path, msg in problems]
        super().__init__("\n".join(lines))


# ------------------------------------------------------------------------- strict values
#
# pydantic's lax mode reads ``true`` as 1, ``1`` as true, ``2.0`` and ``"2"`` as 2: a switch
# written as a number, or a count written as a switch, would then run as something else without
# a word. Booleans and integers are therefore strict everywhere (the static sections below, the
# runners' sections and every component keyword), so each must be written as what it is. Floats
# stay lax, because YAML 1.1 reads ``1e-3`` (no dot) as a string and ``lr: 1`` as an int, and
# both have always meant a number; only a boolean is refused where a number belongs.


def _no_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got the boolean {str(value).lower()}")
    return value


Float = Annotated[float, Strict(False), BeforeValidator(_no_bool)]
"""A float that accepts ints and numeric strings (``1e-3``), but not booleans."""

ScaleValue = Literal[1, 2, 3, 4, 8]
SCALES: tuple[int, ...] = typing.get_args(ScaleValue)


def _whole_scale(value: Any) -> Any:
    """The top-level scale is injected into every network and dataset: refuse anything but a
    plain int, so ``2.0`` or ``"2"`` cannot turn into another value on the way."""
    if type(value) is not int:
        raise ValueError(f"scale must be a whole number, one of {', '.join(map(str, SCALES))}, written without "
                         f"quotes or decimals; got {value!r}")
    return value


Scale = Annotated[ScaleValue, BeforeValidator(_whole_scale)]


def _is_scale(value: Any) -> bool:
    return type(value) is int and value in SCALES


def _strict_type(hint: Any) -> Any:
    """``hint`` with ``bool`` and ``int`` made strict and ``float`` made to refuse booleans, at any
    depth (``list[int] | None``, ``tuple[float, float]``, a TypedDict's keys, ``Annotated``
    metadata kept); ``hint`` itself when nothing changes. Used for the types that come from
    outside this module: constructor hints of registered classes and the runners' own fields."""
    for plain, strict in ((bool, StrictBool), (int, StrictInt), (float, Float)):
        if hint is plain:
            return strict
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        inner = _strict_type(hint.__origin__)
        return hint if inner is hint.__origin__ else Annotated[(inner, *hint.__metadata__)]
    if is_typeddict(hint):
        return _strict_typeddict(hint)
    if origin is Literal or not args:
        return hint
    new = tuple(arg if arg is Ellipsis else _strict_type(arg) for arg in args)
    if all(a is b for a, b in zip(new, args)):
        return hint
    if origin in (Union, types.UnionType):
        return Union[new]  # noqa: UP007 - X | Y cannot be built from a tuple
    if origin in (typing.Required, typing.NotRequired, Required, NotRequired):
        return origin[new[0]]
    try:
        return origin[new]
    except TypeError:  # a generic that cannot be rebuilt keeps its lax reading
        return hint


_STRICT_TYPEDDICTS: dict[type, type] = {}


def _strict_typeddict(cls: type) -> type:
    """A copy of the TypedDict ``cls`` with strict keys (see :func:`_strict_type`); its pydantic
    config (e.g. ``extra="forbid"``) and docstring are kept."""
    if cls not in _STRICT_TYPEDDICTS:
        try:
            hints = typing.get_type_hints(cls, include_extras=True)
        except Exception:  # noqa: BLE001 - unresolvable annotations only lose strictness
            hints = {}
        fields = {key: _strict_type(hint) for key, hint in hints.items()}
        strict = cls
        if any(fields[key] is not hints[key] for key in hints):
            strict = TypedDict(cls.__name__, fields, total=getattr(cls, "__total__", True))
            strict.__doc__, strict.__module__ = cls.__doc__, cls.__module__
            if hasattr(cls, "__pydantic_config__"):
                strict.__pydantic_config__ = cls.__pydantic_config__
        _STRICT_TYPEDDICTS[cls] = strict
    return _STRICT_TYPEDDICTS[cls]


class _Section(BaseModel):
    # strict: see above; float fields are written as Float, which stays lax
    model_config = ConfigDict(extra="forbid", strict=True)


@dataclasses.dataclass(frozen=True)
class Component:
    """Marks a schema field as registered component(s): ``{type: Name, **kwargs}``.

    The generic walker in :func:`parse_options` finds every field so marked (in the base schema
    and in the sections runners and automations contribute) and checks its keys against the
    registered object's signature. ``many``: one section, a list of them, or a name → section
    dict. ``head``: keys the runner handles itself (``loss_weight``, ``enabled``, ...), checked
    by that model. ``inject``: values the section may omit, from the context (``scale``,
    ``total_iter``, ``phase``). ``type_from_key``: the dict key names the type
    (``training_automations.early_stopping``); ``fixed_type``: the section is always that type.
    ``check``: called with the checked section (``type`` and the constructor's keywords) to find
    value conflicts before anything is built; it raises ValueError or TypeError, whose message is
    reported at the section, or an error with a ``problems`` list of (key, message) pairs, each
    reported at that key of the section.
    """

    registry: Registry
    many: Literal["one", "list", "dict"] = "one"
    skip: tuple[str, ...] = ()
    inject: tuple[str, ...] = ()
    head: type[BaseModel] | None = None
    type_from_key: bool = False
    fixed_type: str | None = None
    check: Callable[[dict[str, Any]], None] | None = None
    keys: str | None = None  # a regular expression every key of a ``many="dict"`` field must match
    keys_hint: str = ""


def _try_scheduler(section: dict[str, Any]) -> None:
    """Build the scheduler on a throw-away optimiser, so value conflicts (warm-up longer than the
    run, a start factor out of range) are reported by --check rather than at start-up."""
    import torch

    dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    SCHEDULER_REGISTRY.get(section["type"])(dummy, **{k: v for k, v in section.items() if k != "type"})


def _try_optimizer(section: dict[str, Any]) -> None:
    """Build the optimiser on a throw-away parameter, so values torch refuses (a negative lr,
    betas outside [0, 1), a negative eps) are reported by --check rather than at start-up."""
    import torch

    factory = OPTIMIZER_REGISTRY.get(section["type"])
    kwargs = {k: v for k, v in section.items() if k != "type"}
    if "fused" in signature_params(factory):
        # fused kernels need CUDA tensors, which the check does not have; the values are what it tests
        kwargs["fused"] = False
    factory([torch.zeros(1, requires_grad=True)], **kwargs)


def _check_dataset(section: dict[str, Any]) -> None:
    """Dataset checks that need the dataset classes (gt_size against the scale, a dataroot that is
    a file, ...); imported late: the data package imports this module."""
    from data.option_checks import check_dataset_section

    check_dataset_section(section)


class LossEntry(_Section):
    """The keys of a ``train.losses`` entry that the runner handles itself."""

    type: str = Field(description="registered loss class")
    loss_weight: Scheduled = Field(1.0, description="weight of this term in the summed loss (a number or a schedule)")
    name: str | None = Field(None, description="label the term is logged under (default: the type without 'Loss', "
                             "lower-cased)")
    inputs: list[str] | None = Field(None, description="named tensors passed to the loss, e.g. [sr, gt] (default: the "
                                     "loss class's own inputs, else [sr, gt])")


class GANEntry(_Section):
    """The keys of an adversarial-loss section that the runner handles itself."""

    type: str = Field(description="registered adversarial loss class (GANLoss)")
    loss_weight: Scheduled = Field(1.0, description="weight of the generator's adversarial term (a number or a "
                                   "schedule)")


def _try_gan_loss(section: dict[str, Any]) -> None:
    """Build the GAN loss, so conflicting values (labels with hinge) fail at --check, and make sure
    the class plays both sides."""
    cls = LOSS_REGISTRY.get(section["type"])
    missing = [m for m in ("generator_loss", "discriminator_loss", "probability") if not hasattr(cls, m)]
    if missing:
        raise ValueError(f"{section['type']} is not an adversarial loss (it has no {', '.join(missing)}); "
                         "use GANLoss")
    cls(**{k: v for k, v in section.items() if k not in ("type", "loss_weight")})


def _check_loss(section: dict[str, Any]) -> None:
    """A loss class may check its keywords before anything is built (a file it reads, a teacher's
    scale) with a ``check_keywords(**kwargs)`` classmethod that raises ValueError: --check and the
    start of a run then report the problem at the entry, before an earlier run is archived."""
    hook = getattr(LOSS_REGISTRY.get(section["type"]), "check_keywords", None)
    if hook is not None:
        hook(**{k: v for k, v in section.items() if k != "type"})


class MetricEntry(_Section):
    type: str = Field(description="registered metric function, e.g. calculate_psnr")
    better: Literal["higher", "lower"] | None = Field(None, description="whether higher or lower values are better "
                                                      "(default: the metric's registration)")
    output: str | None = Field(None, description="which runner output to score (default: its first)")


class AutomationEntry(_Section):
    type: str = Field(description="registered automation name (optional where the section's key names it)")
    enabled: bool = Field(True, description="false switches the automation off; its other keys are then not needed")


def _batch_size(value: Any) -> Schedule:
    return integer_schedule(value, "batch_size_per_gpu")


class LoaderOptions(_Section):
    """Dataset keys that belong to the loader rather than to the dataset class."""

    name: str = Field("", description="name of the set in logs, metrics and result folders (default: its key)")
    type: str = Field(description="registered dataset class")
    batch_size_per_gpu: Annotated[Scheduled, AfterValidator(_batch_size)] = Field(
        16, description="training batch size per process: a whole number or a {step: size} schedule (validation "
        "uses 1)")
    num_worker_per_gpu: int = Field(4, ge=0, description="data-loading worker processes per process (0: load in "
                                    "the main process)")
    pin_memory: bool = Field(True, description="pin host memory of training batches for faster copies to CUDA")
    persistent_workers: bool = Field(True, description="keep training loader workers alive between epochs")
    prefetch_mode: Literal["cpu", "cuda"] | None = Field(
        None, description="how training batches reach the device: cuda (side-stream prefetch, the default on CUDA) "
        "or cpu (synchronous copies)")
    dataset_enlarge_ratio: int = Field(1, ge=1, description="repeat the training set this many times per epoch")


def _component(registry: Registry, **kw: Any) -> Any:
    """A component field: a mapping checked by :class:`Component`."""
    many = kw.get("many", "one")
    base = {"one": dict[str, Any], "list": list[dict[str, Any]], "dict": dict[str, dict[str, Any]]}[many]
    return Annotated[base, Component(registry, **kw)]


NETWORK = _component(ARCH_REGISTRY, inject=("scale",))
OPTIMIZER = _component(OPTIMIZER_REGISTRY, skip=("params",), check=_try_optimizer)
SCHEDULER = _component(SCHEDULER_REGISTRY, skip=("optimizer",), inject=("total_iter",), check=_try_scheduler)
LOSSES = _component(LOSS_REGISTRY, many="list", head=LossEntry, inject=("scale", "total_iter"), check=_check_loss)
GAN = _component(LOSS_REGISTRY, head=GANEntry, check=_try_gan_loss)


class PathOptions(_Section):
    experiments_root: str = Field("experiments", description="folder holding each training run's folder "
                                  "(<experiments_root>/<name>)")
    results_root: str = Field("results", description="folder test.py writes to (<results_root>/<name>)")
    pretrain_network_g: str | None = Field(None, description="weights loaded into network_g before training or "
                                           "testing")
    strict_load_g: bool = Field(True, description="fail on missing, unexpected or mis-shaped keys of "
                                "pretrain_network_g (false: load what matches)")
    param_key_g: str = Field("params", description="key of the weights inside pretrain_network_g (params, "
                             "params_ema)")
    resume_state: str | None = Field(None, description="training state (.state) to resume from (--auto_resume "
                                     "finds the latest instead)")


class TrainOptions(_Section):
    total_iter: int = Field(gt=0, description="number of training iterations (the T of steps written as 0.8T)")
    optim_g: OPTIMIZER = Field(description="optimiser of network_g")
    scheduler: SCHEDULER | None = Field(None, description="learning-rate scheduler of optim_g (none: a constant "
                                        "learning rate)")
    losses: LOSSES = Field([], description="the generator's training losses; their weighted sum is minimised")
    ema_decay: Float = Field(0.0, ge=0.0, lt=1.0, description="decay of the EMA copy of network_g that is validated "
                             "and saved as net_g_ema (0: no EMA)")
    ema_update_after: Step = Field(0, description="until this step the EMA copies the live weights")
    ema_warmup: bool = Field(False, description="grow the EMA decay as min(ema_decay, (1 + n) / (10 + n)) over the "
                             "first n updates")
    grad_clip: Float | None = Field(None, gt=0, description="clip the generator's gradient norm to this value "
                                    "(logged as grad_norm; none: no clipping)")
    tail_only: bool = Field(False, description="train only the arch's tail (e.g. EDSR's upsample and conv_last): "
                            "the trunk is frozen, outside the optimiser and held in eval mode")
    lr_trunk: Float | None = Field(None, ge=0, description="learning rate of the trunk's param group instead of "
                                   "optim_g.lr (the scheduler scales it like the base LR); not with tail_only")
    lr_tail: Float | None = Field(None, ge=0, description="learning rate of the tail's param group instead of "
                                  "optim_g.lr (the scheduler scales it like the base LR)")
    accumulate_grad_batches: int = Field(1, ge=1, description="micro-batches whose gradients are summed per "
                                         "optimiser step")
    # metrics of the training batch, logged as train_metrics/<name> at each logging step
    train_metrics: _component(METRIC_REGISTRY, many="dict", skip=("img", "img2"), head=MetricEntry) = Field(
        {}, description="metrics of the training batch by name, logged as train_metrics/<name> at logging steps")
    training_automations: _component(AUTOMATION_REGISTRY, many="dict", head=AutomationEntry,
                                     type_from_key=True) = Field(
        {}, description="automations the loop calls through hooks, keyed by registered name")

    @model_validator(mode="after")
    def _frozen_trunk_has_no_lr(self) -> TrainOptions:
        # the arch half of the check (an arch that names no tail) needs network_g: see
        # models.param_groups.check_stage_options
        if self.tail_only and self.lr_trunk is not None:
            raise ValueError("tail_only: true freezes the trunk, so it takes no learning rate; remove lr_trunk, or "
                             "set tail_only: false to train the trunk at lr_trunk")
        return self


class ValOptions(_Section):
    val_freq: Annotated[Step, Field(gt=0)] = Field(5000, description="validate every this many iterations (and "
                                                   "after the last)")
    save_img: bool = Field(False, description="write the validation outputs as images")
    metrics: _component(METRIC_REGISTRY, many="dict", skip=("img", "img2"), head=MetricEntry) = Field(
        {}, description="validation metrics by name; the first set's first metric picks net_g_best")
    tta: bool = Field(False, description="8-way flip/rotation test-time augmentation at validation")
    tile: int = Field(0, ge=0, description="validate in overlapping LR tiles of this size (0: whole images)")
    tile_overlap: int = Field(DEFAULT_TILE_OVERLAP, ge=0, description="LR context pixels discarded at each inner "
                              "tile edge (neighbouring tiles also cross-fade over a band half as wide)")
    tile_batch: int = Field(1, ge=1, description="tiles stacked into one forward pass (more is faster on a GPU, "
                            "uses more memory)")
    baselines: bool = Field(False, description="also score the runner's reference methods (SR: nearest and bicubic "
                            "upscaling; PBR: the mean maps, and view 0 with a flat normal)")
    strips: int = Field(0, ge=0, description="test.py: save LR | each model | HR strips of the first K images of each "
                        "test set")


class KeepBest(_Section):
    """Keep the ``k`` checkpoints with the best ``metric`` (of ``dataset``, default the first
    validation set) beside the ``keep_last`` newest."""

    metric: str = Field(description="val.metrics name the checkpoints are ranked by")
    k: int = Field(2, ge=1, description="how many of the best checkpoints are kept")
    dataset: str | None = Field(None, description="validation set whose score counts (default: the first)")


class WandbOptions(_Section):
    """Weights & Biases logging (``logger.wandb``); needs the optional ``wandb`` package."""

    project: str = Field(..., description="W&B project the run is logged to")
    name: str | None = Field(None, description="display name of the W&B run (default: the option file's name)")
    entity: str | None = Field(None, description="W&B user or team (default: the account's default entity)")
    resume_id: str | None = Field(None, description="id of an earlier W&B run to continue logging into")
    mode: Literal["online", "offline", "disabled"] | None = Field(
        None, description="online, offline or disabled (default: wandb's own, e.g. the WANDB_MODE variable)")


class LoggerOptions(_Section):
    print_freq: int = Field(100, gt=0, description="log the training values every this many iterations")
    save_checkpoint_freq: Annotated[Step, Field(gt=0)] = Field(5000, description="save weights and a training "
                                                               "state every this many iterations")
    use_tb_logger: bool = Field(True, description="write TensorBoard logs to <experiment>/tb_logger")
    keep_last: int = Field(3, ge=1, description="how many of the newest checkpoints are kept")
    keep_best: KeepBest | None = Field(None, description="also keep the checkpoints with the best validation metric")
    wandb: WandbOptions | None = Field(None, description="log scalars and validation images to Weights & Biases")


class ModelEntry(_Section):
    """An extra model compared by test.py (``models:`` list)."""

    name: str = Field(description="name of the model in the results table and folder")
    path: str = Field(description="weights file or training-run folder to evaluate; may start with ema:, swa:, "
                      "twopass:, tta: (docs/evaluation.md)")
    param_key: str = Field("params", description="key of the weights inside the file (params, params_ema)")
    strict_load: bool = Field(True, description="fail on missing, unexpected or mis-shaped keys")
    network_g: NETWORK | None = Field(None, description="its network (default: what the weight file records, else "
                                      "the file's network_g)")


class Options(_Section):
    name: str = Field(description="experiment name: the run's folder under path.experiments_root (results_root "
                      "for test.py)")
    model_type: str = Field("SRModel", description="registered runner that trains the networks")
    scale: Scale = Field(4, description="upscaling factor, injected into the networks and datasets (a whole "
                         "number: 1, 2, 3, 4 or 8)")
    num_gpu: int | Literal["auto"] = Field("auto", description="accepted for BasicSR files and not used: torchrun "
                                           "sets the number of processes")
    manual_seed: int = Field(0, description="seed of torch and of the data order")
    imports: list[str] = Field([], description="modules to import first, so their registered classes can be named "
                               "(dotted names, or .py paths relative to this file)")
    device: str = Field("auto", description="auto, cpu, mps, cuda or cuda:N")
    amp: Literal["none", "fp16", "bf16"] = Field("none", description="mixed precision: none, fp16 (with gradient "
                                                 "scaling) or bf16")
    channels_last: bool = Field(False, description="channels-last memory format for the networks and batches")
    compile: bool | Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        False, description="torch.compile the trained networks: true (torch's default mode) or a mode name")
    cuda_graph: bool = Field(False, description="capture the whole training step (forward, losses, backward, "
                             "optimiser) as a CUDA graph and replay it: the host's cost of a step becomes one "
                             "launch (CUDA; SRModel; amp none or bf16; Adam or AdamW)")
    tf32: bool = Field(True, description="allow TF32 matrix multiplications and convolutions on CUDA")
    datasets: _component(DATASET_REGISTRY, many="dict", inject=("scale", "phase"), head=LoaderOptions,
                         check=_check_dataset, keys=r"train$|val|test",
                         keys_hint="dataset keys must be 'train' or start with 'val' or "
                         "'test'") = Field({}, description="datasets by key: train for training, keys starting with "
                                           "val or test for validation and testing")
    network_g: NETWORK | None = Field(None, description="the generator network; may be left out when "
                                      "path.pretrain_network_g names weights that record their network")
    path: PathOptions = Field(PathOptions(), description="where weights are loaded from and runs are written")
    train: TrainOptions | None = Field(None, description="training settings (absent in test files)")
    val: ValOptions | None = Field(None, description="validation settings")
    logger: LoggerOptions = Field(LoggerOptions(), description="logging and checkpointing")
    models: list[ModelEntry] = Field([], description="further models compared by test.py")

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
        return yaml.safe_dump(_plain(self.model_dump()), sort_keys=False)


_SCHEMAS: dict[type, type[Options]] = {}


def _strict_fields(fields: dict[str, tuple[Any, Any]]) -> dict[str, tuple[Any, Any]]:
    """A runner's own fields (name → (annotation, default)) with strict types, like the base
    sections (their annotations are plain Python types; the sections they name are strict)."""
    return {name: (_strict_type(annotation), default) for name, (annotation, default) in fields.items()}


def schema_for(runner: type) -> type[Options]:
    """The option schema of a runner: the base sections, the runner's own (``option_fields``,
    ``train_option_fields``: name → (annotation, default)) and every automation's section."""
    if runner in _SCHEMAS:
        return _SCHEMAS[runner]
    train_fields = _strict_fields(getattr(runner, "train_option_fields", {}))
    for name, cls in AUTOMATION_REGISTRY.items():
        if getattr(cls, "section", None):
            spec = _component(AUTOMATION_REGISTRY, head=AutomationEntry, fixed_type=name)
            about = f"the {name} automation (the keys of train.training_automations.{name})"
            train_fields[cls.section] = (spec | None, Field(None, description=about))
    train = create_model(f"{runner.__name__}TrainOptions", __base__=TrainOptions, **train_fields)
    about = Options.model_fields["train"].description
    schema = create_model(f"{runner.__name__}Options", __base__=Options,
                          train=(train | None, Field(None, description=about)),
                          **_strict_fields(getattr(runner, "option_fields", {})))
    _SCHEMAS[runner] = schema
    return schema


# ----------------------------------------------------------------------------- helpers


def _plain(obj: Any) -> Any:
    if isinstance(obj, Schedule):
        return obj.to_spec()
    if isinstance(obj, Path):
        return str(obj)
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
        loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in ("int", "str", "float", "bool"))))
        path = format_path(prefix + loc)
        if e["type"] == "extra_forbidden":
            valid = _fields_at(model, loc[:-1]) + (extra_valid or [])
            problems.append((path, "unknown key" + _closest(str(loc[-1]), valid)))
        elif e["type"] == "missing":
            problems.append((path, "required key is missing"))
        else:
            problems.append((path, _value_message(e)))
    return problems


def _value_message(error: Any) -> str:
    """One pydantic error in the option file's terms: a strict bool or int refusing a value says
    what was written and how to write it instead."""
    value, kind = error.get("input"), error["type"]
    if kind == "int_type" and isinstance(value, bool):
        return f"expected a whole number, got the boolean {str(value).lower()}"
    if kind == "int_type" and isinstance(value, float):
        return f"expected a whole number, got {value!r} (write it without a decimal point)"
    if kind == "int_type" and isinstance(value, str):
        return f"expected a whole number, got the string {value!r} (write it without quotes)"
    if kind == "bool_type" and not isinstance(value, dict | list):
        return f"expected true or false, got {value!r}"
    msg = error["msg"]
    if kind == "value_error":  # our validators' own words, without pydantic's prefix
        msg = str(error.get("ctx", {}).get("error", msg.removeprefix("Value error, ")))
    if "input" in error and not isinstance(value, dict | list) and repr(value) not in msg:
        msg += f" (got {value!r})"
    return msg


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
        fields[name] = (_strict_type(hints.get(name, Any)), default)
    config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    model = create_model(f"{getattr(obj, '__name__', 'component')}Options", __config__=config, **fields)
    _SIGNATURE_MODELS[key] = model
    return model


def _nested_keys(obj: Any, loc: tuple) -> list[str] | None:
    """The keys of the TypedDict that holds the key at ``loc`` (keyword, then mapping keys or list
    indices), following Optional, dict values and list items; None when it is not one."""
    func = obj.__init__ if inspect.isclass(obj) else obj
    try:
        hint: Any = typing.get_type_hints(func).get(str(loc[0]))
    except (NameError, TypeError):
        return None
    for step in loc[1:-1]:
        hint = _unwrap_optional(hint)
        if is_typeddict(hint):
            hint = typing.get_type_hints(hint).get(str(step))
        elif typing.get_origin(hint) in (dict, list, tuple):
            hint = typing.get_args(hint)[-1] if typing.get_args(hint) else None
        else:
            return None
    hint = _unwrap_optional(hint)
    return list(typing.get_type_hints(hint)) if is_typeddict(hint) else None


def _unwrap_optional(hint: Any) -> Any:
    """``X | None`` (or ``Optional[X]``, ``NotRequired[X]``) as ``X``."""
    while typing.get_origin(hint) in (Union, types.UnionType, NotRequired, Required):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            return hint
        hint = args[0]
    return hint


def signature_params(obj: Any) -> list[str]:
    func = obj.__init__ if inspect.isclass(obj) else obj
    return [n for n in inspect.signature(func).parameters if n != "self"]


def component_keyword(registry: Registry, section: dict[str, Any], key: str) -> Any:
    """The value ``key`` takes in a component section: written, else the constructor's default;
    None when the class has no such keyword (for checks that span sections)."""
    params = inspect.signature(registry.get(section["type"]).__init__).parameters
    if key not in params:
        return None
    default = params[key].default
    return section.get(key, None if default is inspect.Parameter.empty else default)


def _check_signature(
    section: dict[str, Any],
    kwargs: dict[str, Any],
    path: tuple,
    obj: Any,
    comp: Component,
    problems: list[tuple[str, str]],
    context: dict,
    head_keys: typing.Collection[str],
) -> dict[str, Any] | None:
    """Validate ``kwargs`` against ``obj``'s signature; None when there were problems."""
    model = signature_model(obj, comp.skip)
    if model is None:  # the object takes **kwargs: nothing to check
        return dict(kwargs)
    try:
        validated = model.model_validate(kwargs, context=context)
    except ValidationError as err:
        params = signature_params(obj)
        for e in err.errors():
            loc = tuple(e["loc"])
            sub = format_path(path + loc)
            if e["type"] == "extra_forbidden":
                nested = _nested_keys(obj, loc) if len(loc) > 1 else None
                if nested is not None:  # a key inside a keyword's own mapping (a TypedDict): name its keys
                    problems.append((sub, f"unknown key in {section['type']}'s {loc[0]} (keys: {', '.join(nested)})"
                                     + _closest(str(loc[-1]), nested)))
                    continue
                valid = [p for p in params if p not in comp.skip] + list(head_keys)
                problems.append((sub, f"unknown key for {section['type']}" + _closest(str(loc[-1]), valid)))
            elif e["type"] == "missing":
                problems.append((sub, f"required by {section['type']} but missing"))
            else:
                problems.append((sub, _value_message(e)))
        return None
    return {k: getattr(validated, k) for k in kwargs}


def _check_one(section: Any, path: tuple, comp: Component, problems: list[tuple[str, str]], context: dict,
               key: Any = None) -> Any:
    """Check one ``{type: Name, **kwargs}`` section; returns it with values coerced and injected."""
    if section is None and (comp.type_from_key or comp.fixed_type):
        section = {}
    if not isinstance(section, dict):
        problems.append((format_path(path), f"expected a mapping of option keys, got {section!r}"))
        return section
    forced = key if comp.type_from_key else comp.fixed_type
    if forced is not None:
        if "type" in section and str(section["type"]).lower() != str(forced).lower():
            problems.append((format_path(path + ("type",)), f"this section is always {forced!r}; remove 'type'"))
            return section
        section = {**section, "type": forced}
    if "type" not in section:
        problems.append((format_path(path + ("type",)), "required key is missing"))
        return section
    try:
        obj = comp.registry.get(section["type"])
    except KeyError as err:
        problems.append((format_path(path if forced is not None else path + ("type",)), str(err)))
        return section
    head_keys = [k for k in (comp.head.model_fields if comp.head else ()) if k != "type"]
    head_values: dict[str, Any] = {}
    if comp.head is not None:
        try:
            head = comp.head.model_validate({k: v for k, v in section.items() if k in head_keys or k == "type"},
                                            context=context)
            head_values = {k: getattr(head, k) for k in head_keys if k in section or getattr(head, k) is not None}
        except ValidationError as err:
            problems.extend(_pydantic_problems(err, comp.head, path))
            return section
    kwargs = {k: v for k, v in section.items() if k != "type" and k not in head_keys}
    if head_values.get("enabled") is False:  # a switched-off section needs none of its required keys
        return {"type": section["type"], **head_values, **kwargs}
    params = signature_params(obj)
    for name in comp.inject:
        value = context.get(name)
        value = value(key) if callable(value) else value
        if name not in params or value is None:
            continue
        if name in kwargs and name == "scale" and kwargs[name] != value:
            problems.append((format_path(path + (name,)), f"{kwargs[name]} differs from the top-level scale {value}"))
        kwargs.setdefault(name, value)
    checked = _check_signature(section, kwargs, path, obj, comp, problems, context, head_keys)
    if checked is None:
        return section
    out = {"type": section["type"], **head_values, **checked}
    if comp.check is not None:
        try:
            comp.check({"type": out["type"], **checked})
        except (ValueError, TypeError) as err:
            keyed = getattr(err, "problems", None)
            if keyed:
                problems.extend((format_path(path + ((key,) if key else ())), msg) for key, msg in keyed)
            else:
                problems.append((format_path(path), str(err)))
    return out


def _check_field(comp: Component, value: Any, path: tuple, problems: list[tuple[str, str]], context: dict) -> Any:
    if comp.many == "one":
        return _check_one(value, path, comp, problems, context)
    if comp.many == "list":
        if not isinstance(value, list):
            problems.append((format_path(path), f"expected a list, got {value!r}"))
            return value
        return [_check_one(v, path + (i,), comp, problems, context) for i, v in enumerate(value)]
    if not isinstance(value, dict):
        problems.append((format_path(path), f"expected a mapping, got {value!r}"))
        return value
    out = {}
    for k, v in value.items():
        if comp.keys and not re.match(comp.keys, str(k)):
            problems.append((format_path(path + (k,)), comp.keys_hint or f"key must match {comp.keys}"))
            continue
        out[k] = _check_one(v, path + (k,), comp, problems, context, key=k)
    return out


def _find_component(ann: Any, metadata: typing.Iterable = ()) -> Component | None:
    for meta in metadata:
        if isinstance(meta, Component):
            return meta
    if typing.get_origin(ann) is Annotated:
        found = _find_component(None, ann.__metadata__)
        if found is not None:
            return found
    for arg in typing.get_args(ann):
        found = _find_component(arg)
        if found is not None:
            return found
    return None


def _walk_components(schema: type[BaseModel], raw: Any, instance: Any, path: tuple,
                     problems: list[tuple[str, str]], context: dict) -> None:
    """Check every component field of ``schema`` found in ``raw``; store the results on ``instance``
    (the validated model, or None when static validation failed: problems are still collected)."""
    if not isinstance(raw, dict):
        return
    for name, field in schema.model_fields.items():
        value = raw.get(name)
        if value is None:
            continue
        comp = _find_component(field.annotation, field.metadata)
        if comp is not None:
            checked = _check_field(comp, value, path + (name,), problems, context)
            if instance is not None:
                setattr(instance, name, checked)
            continue
        sub = _unwrap_model_type(field.annotation)
        if sub is None:
            continue
        child = getattr(instance, name, None) if instance is not None else None
        if isinstance(value, dict):
            _walk_components(sub, value, child, path + (name,), problems, context)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                node = child[i] if isinstance(child, list) and i < len(child) else None
                _walk_components(sub, item, node, path + (name, i), problems, context)


def head_and_kwargs(section: dict[str, Any], head: type[BaseModel]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a checked component section into the runner's keys and the constructor's keywords."""
    keys = set(head.model_fields) | {"type"}
    return ({k: v for k, v in section.items() if k in keys},
            {k: v for k, v in section.items() if k not in keys})


# ------------------------------------------------------------------------------ loading


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _duplicate_keys(loader: yaml.SafeLoader, node: yaml.Node, path: tuple = (),
                    visited: set[int] | None = None) -> list[tuple[str, str]]:
    """Every key written twice in one mapping of the composed document ``node``, with both lines.
    YAML itself keeps the last one silently, so a second ``train:`` block would replace the first."""
    visited = set() if visited is None else visited
    if id(node) in visited:  # an alias: its node was walked where its anchor is
        return []
    visited.add(id(node))
    problems: list[tuple[str, str]] = []
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += _duplicate_keys(loader, item, path + (i,), visited)
    elif isinstance(node, yaml.MappingNode):
        marks: dict[Any, yaml.Mark] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                key: Any = "?"  # ``<<: *base`` may be overridden by design; complex keys are not option keys
            else:
                key = loader.construct_object(key_node)  # the value, so that 1 and 0x1 are one key
                if key in marks:
                    problems.append((format_path(path + (key,)), f"written twice, {_where(marks[key], key_node)}; "
                                     "YAML would keep only the last, so remove or merge one"))
                else:
                    marks[key] = key_node.start_mark
            problems += _duplicate_keys(loader, value_node, path + (key,), visited)
    return problems


def _where(first: yaml.Mark, second: yaml.Node) -> str:
    """``at lines 3 and 17``, or ``at line 5 (columns 10 and 22)`` for a one-line mapping."""
    a, b = first, second.start_mark
    if a.line == b.line:
        return f"at line {a.line + 1} (columns {a.column + 1} and {b.column + 1})"
    return f"at lines {a.line + 1} and {b.line + 1}"


def load_unique_yaml(text: str) -> tuple[Any, list[tuple[str, str]]]:
    """Parse ``text`` with the safe loader (no tags that build objects); returns the data and the
    keys written twice (then the data is None). Raises :class:`yaml.YAMLError` on bad syntax."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, []
        problems = _duplicate_keys(loader, node)
        return (None, problems) if problems else (loader.construct_document(node), [])
    finally:
        loader.dispose()


def _tag_refused(err: yaml.constructor.ConstructorError) -> str:
    """The safe loader builds no objects from tags (``!!python/object/apply:...``): say so, rather
    than calling it a syntax error."""
    mark = err.problem_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return (f"YAML tag refused{where} ({err.problem}): option files hold plain values, and nothing is built or "
            "run from a tag")


def _read_text(path: Path) -> str:
    """The option file's text; a file that is not UTF-8 text (an image, a checkpoint picked by
    mistake) is named as such rather than as a decoding error without the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise OptionsError(str(path), [("", f"not a text/YAML file: {path} (byte {err.start} is not UTF-8 "
                                            "text)")]) from err
    except OSError as err:
        raise OptionsError(str(path), [("", f"cannot read {path}: {err.strerror or err}")]) from err
    if "\x00" in text:  # valid UTF-8 can still be binary; YAML would name only an offending character
        raise OptionsError(str(path), [("", f"not a text/YAML file: {path} (it holds NUL bytes)")])
    return text


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise OptionsError(str(path), [("", f"{path} is a folder; give the option file (.yml) inside it")])
    if not path.is_file():
        raise FileNotFoundError(f"option file not found: {path}")
    try:
        data, duplicates = load_unique_yaml(_read_text(path))
    except yaml.constructor.ConstructorError as err:
        raise OptionsError(str(path), [("", _tag_refused(err))]) from err
    except yaml.YAMLError as err:
        raise OptionsError(str(path), [("", f"YAML syntax error: {err}")]) from err
    if duplicates:
        raise OptionsError(str(path), duplicates)
    if not isinstance(data, dict):
        raise OptionsError(str(path), [("", "the file must hold a mapping of option keys")])
    return data


def _override_value(expr: str, raw: str) -> Any:
    """The value of an override, parsed as YAML (never evaluated); a ValueError naming the
    override when it is not valid YAML or writes a key twice."""
    if not raw.strip():
        return None
    try:
        value, duplicates = load_unique_yaml(raw)
    except yaml.constructor.ConstructorError as err:
        raise ValueError(f"override '{expr}': {_tag_refused(err)}") from err
    except yaml.YAMLError as err:
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"override '{expr}': the value is not valid YAML ({problem}); quote the whole "
                         "-o argument for the shell, and write strings with ':' or '#' in quotes") from err
    if duplicates:
        raise ValueError(f"override '{expr}': the value writes the key '{duplicates[0][0]}' twice")
    return value


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
    value = _override_value(expr, raw)
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


def _as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _network_from_weights(data: dict, problems: list[tuple[str, str]]) -> None:
    """Fill a left-out ``network_g`` from the metadata of ``path.pretrain_network_g`` (every weight
    file upforge writes records its network), so a warm start or a test needs no arch section."""
    if data.get("network_g") is not None:
        return
    weights = _as_dict(data.get("path")).get("pretrain_network_g")
    if not weights:
        problems.append(("network_g", "required key is missing (or set path.pretrain_network_g to weights that "
                                      "record their network)"))
        return
    from utils.weights import arch_from_metadata, read_metadata

    try:
        section = arch_from_metadata(read_metadata(weights))
    except (OSError, ValueError) as err:
        problems.append(("path.pretrain_network_g", f"cannot read the network from {weights}: {err}"))
        return
    if section is None:
        reason = "does not exist" if not Path(weights).is_file() else "does not record its network"
        problems.append(("network_g", f"required key is missing: {weights} {reason}, so write network_g"))
        return
    scale = data.get("scale")
    if (_as_dict(data.get("path")).get("strict_load_g") is False and isinstance(scale, int)
            and not isinstance(scale, bool) and section.get("scale") not in (None, scale)):
        # a warm start across scales (an x2 stage into an x4 run): the run's scale; the loader
        # keeps the trunk and renews the tail, and says so. A strict load keeps the scale error.
        section = {**section, "scale": scale}
    data["network_g"] = section


def parse_options(data: dict, source: str = "<options>", base_dir: str | Path | None = None) -> Options:
    """Validate a raw option mapping; raise :class:`OptionsError` listing every problem.

    The runner named by ``model_type`` decides the schema (its own sections, the automations'),
    and every component section is checked against its registered signature, so one run of
    ``--check`` shows every mistake in the file. The runner's ``check_options`` then checks what
    spans sections (e.g. that every loss gets the tensors it needs).
    """
    problems: list[tuple[str, str]] = []
    imports = data.get("imports") or []
    if imports:
        try:
            import_user_modules(list(imports), base_dir)
        except Exception as err:  # noqa: BLE001 - any import failure is a user error here
            raise OptionsError(source, [("imports", f"{type(err).__name__}: {err}")]) from err
    try:
        runner = MODEL_REGISTRY.get(data.get("model_type", "SRModel"))
    except KeyError as err:
        raise OptionsError(source, [("model_type", str(err))]) from err
    schema = schema_for(runner)
    _network_from_weights(data, problems)

    train_raw = _as_dict(data.get("train"))
    try:
        total_iter = resolve_step(train_raw["total_iter"], None) if "total_iter" in train_raw else None
    except ValueError:
        total_iter = None
    # only a valid scale is injected: an invalid one is reported at ``scale`` and nothing runs, so
    # no network or dataset is checked against a value other than the one written
    scale = data.get("scale", Options.model_fields["scale"].default)
    context = {"total_iter": total_iter, "scale": scale if _is_scale(scale) else None, "phase": dataset_phase}
    opt: Options | None = None
    try:
        opt = schema.model_validate(data, context=context)
    except ValidationError as err:
        problems.extend(_pydantic_problems(err, schema))
    _walk_components(schema, data, opt, (), problems, context)
    if not problems and opt is not None:
        problems.extend(runner.check_options(opt))
    if problems or opt is None:
        raise OptionsError(source, problems)
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
