"""Distributed helpers for runs launched with ``torchrun`` (NCCL on CUDA, gloo on CPU)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


def init_distributed(device_name: str = "auto") -> tuple[int, int, int]:
    """Start the process group when torchrun's variables are set; return (rank, world, local_rank)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, 0
    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if world > 1 and not dist.is_initialized():
        use_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30))
    return rank, world, local_rank


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (a list with one item when not distributed)."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any (a collective: all ranks must call it)."""
    return any(all_gather_objects(bool(flag)))



# Gradients are averaged by one flat all-reduce after the backward rather than by
# DistributedDataParallel. DDP's per-parameter hooks, per-gradient scaling kernels and Python
# forward cost about 2 ms of host time per step (EDSR-M x2 on an H200: 106 it/s without it, 87 with
# it on a single rank), which the launch-bound small networks of SR pay in full; under
# torch.compile it also cuts the graph at its buckets. The price is that communication no longer
# overlaps the backward: a fraction of a millisecond over NVLink for SR-sized networks
# (docs/speed.md has the numbers).


def _groups(tensors: Iterable[torch.Tensor]) -> list[list[torch.Tensor]]:
    """``tensors`` split by dtype and device (one flat buffer each), in first-seen order, which
    is the same on every rank."""
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    return list(groups.values())


def _flat_views(tensors: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """Each tensor's elements in memory order as a 1-D view (channels-last weights too), or None
    where the layout has gaps (then read with ``reshape`` and written back with ``copy_``)."""
    views: list[torch.Tensor | None] = []
    for t in tensors:
        if t.is_contiguous():
            views.append(t.view(-1))
        elif t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
            views.append(t.permute(0, 2, 3, 1).view(-1))  # NHWC is a channels-last tensor's memory order
        else:
            views.append(None)
    return views


def _pieces(tensors: list[torch.Tensor], views: list[torch.Tensor | None]) -> list[torch.Tensor]:
    return [v if v is not None else t.reshape(-1) for t, v in zip(tensors, views, strict=True)]


def _unflatten_into(tensors: list[torch.Tensor], views: list[torch.Tensor | None], flat: torch.Tensor) -> None:
    """Copy consecutive pieces of ``flat`` back into ``tensors``, in the order :func:`_pieces` read them."""
    pieces = flat.split([t.numel() for t in tensors])
    dests = [v if v is not None else t for t, v in zip(tensors, views, strict=True)]
    values = [p if v is not None else p.view(t.shape) for t, v, p in zip(tensors, views, pieces, strict=True)]
    torch._foreach_copy_(dests, values)  # one launch for all of them, not one per tensor


def average_gradients(params: Iterable[torch.Tensor]) -> None:
    """Replace the gradient of every parameter that requires one by its mean over the ranks:
    one all-reduce per dtype, no host sync. A parameter without a gradient on some ranks counts as
    zero there (as DDP's ``find_unused_parameters``); one without a gradient anywhere keeps None.
    A collective: every rank calls it with the same parameters in the same order."""
    if not is_dist():
        return
    world = get_world_size()
    for group in _groups(p for p in params if p.requires_grad):
        grads = [p.grad for p in group]
        missing = [i for i, g in enumerate(grads) if g is None]
        for i in missing:
            grads[i] = torch.zeros_like(group[i])
        # One presence flag per parameter rides along, so a rank that lacks a gradient learns
        # whether any other rank has one. Reading the flags is a host sync, paid only then.
        flags = torch.ones(len(group), dtype=grads[0].dtype, device=grads[0].device)
        if missing:
            flags[missing] = 0
        views = _flat_views(grads)
        flat = torch.cat([*_pieces(grads, views), flags])
        dist.all_reduce(flat)
        flat.mul_(1.0 / world)
        _unflatten_into(grads, views, flat[: -len(group)])
        if missing:
            present = flat[-len(group):].tolist()
            for i in missing:
                if present[i] > 0:
                    group[i].grad = grads[i]


def broadcast_tensors(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` (parameters, buffers) in place with rank ``src``'s values: one
    broadcast per dtype. A collective."""
    if not is_dist():
        return
    with torch.no_grad():
        for group in _groups(tensors):
            views = _flat_views(group)
            flat = torch.cat(_pieces(group, views))
            dist.broadcast(flat, src=src)
            _unflatten_into(group, views, flat)
