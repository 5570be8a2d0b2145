"""Optimisers that option files name in ``train.optim_g``."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from utils.registry import OPTIMIZER_REGISTRY


def _fused_ok(params: list) -> bool:
    tensors = [p for group in params for p in group["params"]] if isinstance(params[0], dict) else params
    return all(t.is_cuda for t in tensors)


def _build(cls: type, params: Iterable, fused: bool | None, **kwargs) -> torch.optim.Optimizer:
    params = list(params)
    # fused kernels run the whole update in a few launches; they need every tensor on CUDA.
    if fused is None:
        fused = _fused_ok(params)
    if fused:
        return cls(params, fused=True, **kwargs)
    return cls(params, foreach=True, **kwargs)


@OPTIMIZER_REGISTRY.register()
def Adam(  # noqa: N802 - the registry name users write
    params: Iterable,
    lr: float = 1e-4,
    betas: tuple[float, float] = (0.9, 0.99),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """Adam; ``fused`` defaults to the fused CUDA kernel when every parameter is on CUDA.

    Args:
        params: parameters (or parameter groups) to optimise; passed by the trainer.
        lr: base learning rate, which the scheduler (and any LR automation) scales per step.
        betas: decay rates of the running means of the gradient and of its square.
        eps: term added to the denominator for numerical stability.
        weight_decay: L2 penalty: ``weight_decay * param`` is added to the gradient (coupled, unlike AdamW).
        fused: ``true``: torch's fused CUDA kernel (every parameter must be on CUDA); ``false``: the
            ``foreach`` implementation; null: fused when every parameter is on CUDA.
    """
    return _build(torch.optim.Adam, params, fused, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


@OPTIMIZER_REGISTRY.register()
def AdamW(  # noqa: N802 - the registry name users write
    params: Iterable,
    lr: float = 1e-4,
    betas: tuple[float, float] = (0.9, 0.99),
    eps: float = 1e-8,
    weight_decay: float = 1e-2,
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """AdamW with decoupled weight decay.

    Args:
        params: parameters (or parameter groups) to optimise; passed by the trainer.
        lr: base learning rate, which the scheduler (and any LR automation) scales per step.
        betas: decay rates of the running means of the gradient and of its square.
        eps: term added to the denominator for numerical stability.
        weight_decay: decoupled weight decay: each step shrinks every parameter by ``lr * weight_decay``
            times its value, apart from the gradient update.
        fused: ``true``: torch's fused CUDA kernel (every parameter must be on CUDA); ``false``: the
            ``foreach`` implementation; null: fused when every parameter is on CUDA.
    """
    return _build(torch.optim.AdamW, params, fused, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
