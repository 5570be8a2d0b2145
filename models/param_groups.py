"""Trunk and tail of a network, for staged training: ``train.tail_only`` and ``train.lr_trunk`` /
``train.lr_tail``.

An arch names its tail with a class attribute ``tail_prefixes`` (state-dict key prefixes, e.g. EDSR's
``("upsample.", "conv_last.")``): the part that changes with the scale. Every other parameter is the
trunk. A stage either trains the tail alone (the trunk frozen: ``requires_grad`` off, outside the
optimiser, its normalisation and dropout layers held in eval mode) or trains both with a learning
rate per group. The groups are plain optimiser param groups, ``[trunk, tail]`` in that order, each
with a ``name`` key, so the LR schedulers (closed form in each group's ``initial_lr``) scale both by
the same factor and a training state saves and restores them like any other.
"""

from __future__ import annotations

import types
from typing import Any

from torch import nn

from utils.weights import unwrap_model

#: the ``train:`` keys that split a network into trunk and tail
STAGE_KEYS = ("tail_only", "lr_trunk", "lr_tail")

# layers whose forward differs between train and eval mode: a frozen trunk must not update batch
# statistics or drop activations, or "frozen" weights would still change what the trunk computes
_MODE_DEPENDENT = (nn.modules.batchnorm._NormBase, nn.modules.dropout._DropoutNd)


def tail_prefixes(net: nn.Module | type) -> tuple[str, ...]:
    """The state-dict key prefixes the arch of ``net`` (a network or an arch class) names as its
    tail; () when it names none."""
    cls = net if isinstance(net, type) else type(unwrap_model(net))
    return tuple(getattr(cls, "tail_prefixes", ()) or ())


def in_tail(key: str, prefixes: tuple[str, ...]) -> bool:
    """Whether state-dict key (or module name) ``key`` belongs to the tail."""
    return bool(prefixes) and (key.startswith(prefixes) or f"{key}.".startswith(prefixes))


def archs_with_tail() -> list[str]:
    """Registered arch names that name a tail (for error messages)."""
    from utils.registry import ARCH_REGISTRY

    return sorted(name for name, cls in ARCH_REGISTRY.items() if isinstance(cls, type) and tail_prefixes(cls))


def stage_problems(arch: type | None, arch_name: str, tail_only: bool, lr_trunk: float | None,
                   lr_tail: float | None) -> list[tuple[str, str]]:
    """(option key, message) for stage settings that cannot work: the trunk frozen and given an LR,
    or any stage key with an arch that names no tail. ``arch`` None (unknown) skips the arch check."""
    problems = []
    if tail_only and lr_trunk is not None:
        problems.append(("train.lr_trunk", "tail_only: true freezes the trunk, so it takes no learning rate; remove "
                         "lr_trunk, or set tail_only: false to train the trunk at lr_trunk"))
    # lr_trunk: 0 is set (0.0 == False, hence the identity tests)
    values = (tail_only, lr_trunk, lr_tail)
    used = [k for k, v in zip(STAGE_KEYS, values, strict=True) if v is not None and v is not False]
    if used and arch is not None and not tail_prefixes(arch):
        problems.append((f"train.{used[0]}", f"{arch_name} names no tail (no tail_prefixes), so "
                         f"{' / '.join(used)} cannot split it into trunk and tail; archs that name one: "
                         f"{', '.join(archs_with_tail()) or 'none'}"))
    return problems


def check_stage_options(opt: Any) -> list[tuple[str, str]]:
    """:func:`stage_problems` for an option tree (``opt.train``, ``opt.network_g``), for a runner's
    ``check_options``."""
    t = opt.train
    if t is None:
        return []
    arch_name = (opt.network_g or {}).get("type", "?")
    from utils.registry import ARCH_REGISTRY

    try:
        arch = ARCH_REGISTRY.get(arch_name)
    except KeyError:
        arch = None  # reported at network_g.type already
    return stage_problems(arch if isinstance(arch, type) else None, arch_name, t.tail_only, t.lr_trunk, t.lr_tail)


def _train_as_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    # bound to a frozen trunk layer: the runner's net.train() (and validation's train(was_training))
    # reaches it through the parent, and it stays in eval mode
    return nn.Module.train(self, False)


def hold_eval(module: nn.Module) -> None:
    """Keep ``module`` in eval mode whatever ``train()`` its parents are given (no hook in the
    forward, so torch.compile sees a plain module)."""
    module.train = types.MethodType(_train_as_eval, module)
    module.eval()


def freeze_trunk(net: nn.Module) -> list[str]:
    """Switch ``requires_grad`` off for every trunk parameter and hold the trunk's normalisation and
    dropout layers in eval mode; returns the names of the layers so held."""
    prefixes = tail_prefixes(net)
    net = unwrap_model(net)
    for key, p in net.named_parameters():
        if not in_tail(key, prefixes):
            p.requires_grad_(False)
    held = []
    for name, module in net.named_modules():
        if name and not in_tail(name, prefixes) and isinstance(module, _MODE_DEPENDENT):
            hold_eval(module)
            held.append(name)
    return held


def split_parameters(net: nn.Module, label: str = "net_g") -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(trunk, tail) parameters of ``net`` that require gradients, in module order."""
    prefixes = tail_prefixes(net)
    bare = unwrap_model(net)
    if not prefixes:
        raise ValueError(f"{label}: {type(bare).__name__} names no tail (no tail_prefixes); archs that name one: "
                         f"{', '.join(archs_with_tail()) or 'none'}")
    trunk, tail = [], []
    for key, p in bare.named_parameters():
        (tail if in_tail(key, prefixes) else trunk).append(p)
    if not tail:
        raise ValueError(f"{label}: {type(bare).__name__}.tail_prefixes {prefixes} match no parameter")
    return [p for p in trunk if p.requires_grad], [p for p in tail if p.requires_grad]


def stage_param_groups(net: nn.Module, tail_only: bool = False, lr_trunk: float | None = None,
                       lr_tail: float | None = None, label: str = "net_g") -> list[dict[str, Any]] | None:
    """The optimiser's param groups for a staged run, or None when no stage key is set (the runner's
    default: one group of every trainable parameter).

    ``tail_only``: the trunk is frozen (:func:`freeze_trunk`) and the one group is the tail; frozen
    parameters have no gradient to average across ranks.
    Otherwise ``[trunk, tail]``; ``lr_trunk`` / ``lr_tail`` (None: the optimiser's ``lr``) set a
    group's LR, which the scheduler then scales like the optimiser's base LR.
    """
    problems = stage_problems(type(unwrap_model(net)), type(unwrap_model(net)).__name__, tail_only, lr_trunk,
                              lr_tail)
    if problems:
        raise ValueError("; ".join(f"{key}: {msg}" for key, msg in problems))
    if not tail_only and lr_trunk is None and lr_tail is None:
        return None
    if tail_only:
        freeze_trunk(net)
    trunk, tail = split_parameters(net, label)
    groups = []
    for name, params, lr in (("trunk", trunk, lr_trunk), ("tail", tail, lr_tail)):
        if params:
            groups.append({"params": params, "name": name, **({"lr": float(lr)} if lr is not None else {})})
    return groups


def describe_groups(optimizer: Any, net: nn.Module, label: str, tail_only: bool) -> str:
    """One log line: what the optimiser trains, e.g. ``net_g: tail-only: 12,345 trainable of
    1,234,567 parameters (upsample., conv_last.)``."""
    total = sum(p.numel() for p in unwrap_model(net).parameters())
    groups = optimizer.param_groups
    counts = [sum(p.numel() for p in g["params"]) for g in groups]
    prefixes = ", ".join(tail_prefixes(net))
    if tail_only:
        return f"{label}: tail-only: {sum(counts):,} trainable of {total:,} parameters ({prefixes})"
    # initial_lr: the group's base LR (the scheduler has already applied its first warm-up factor to lr)
    parts = [f"{g.get('name', i)} {n:,} at lr {g.get('initial_lr', g['lr']):.3g}"
             for i, (g, n) in enumerate(zip(groups, counts, strict=True))]
    return f"{label}: per-group learning rates: {'; '.join(parts)} (of {total:,} parameters; tail: {prefixes})"


def trainable_params(params: nn.Module | list, label: str = "net") -> list:
    """What an optimiser may be given: the parameters of a network, a list of parameters or a
    list of param groups, without any whose ``requires_grad`` is off; groups left empty are
    dropped. A ValueError naming ``label`` when nothing is left to train."""
    if isinstance(params, nn.Module):
        params = list(params.parameters())
    params = list(params)
    if params and isinstance(params[0], dict):
        kept = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in params]
        kept = [g for g in kept if g["params"]]
        count = sum(len(g["params"]) for g in kept)
    else:
        kept = [p for p in params if p.requires_grad]
        count = len(kept)
    if not count:
        raise ValueError(f"{label}: no parameter requires gradients, so the optimiser has nothing to train")
    return kept
