"""utils.dist.average_gradients and broadcast_tensors in two real gloo processes, against values
computed by hand."""

from __future__ import annotations

import torch
import torch.distributed as td
import torch.multiprocessing as mp

from tests.test_ddp import _free_port
from utils import dist


def _params(rank: int) -> dict[str, torch.nn.Parameter]:
    """Parameters whose gradients differ by rank: rank r's gradient is (r + 1) * base."""
    p = {
        "flat": torch.nn.Parameter(torch.zeros(3)),
        # channels-last weight: averaged in memory order, written back in the same layout
        "conv": torch.nn.Parameter(torch.zeros(2, 3, 2, 2).to(memory_format=torch.channels_last)),
        "only_rank0": torch.nn.Parameter(torch.zeros(2)),  # no gradient on rank 1
        "nowhere": torch.nn.Parameter(torch.zeros(2)),  # no gradient on any rank
        "frozen": torch.nn.Parameter(torch.zeros(2), requires_grad=False),
        "half": torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16)),  # its own all-reduce
    }
    k = float(rank + 1)
    p["flat"].grad = torch.tensor([1.0, 2.0, 3.0]) * k
    p["conv"].grad = (torch.arange(24.0).view(2, 3, 2, 2) * k).contiguous(memory_format=torch.channels_last)
    if rank == 0:
        p["only_rank0"].grad = torch.tensor([4.0, 6.0])
    p["frozen"].grad = torch.tensor([5.0, 5.0]) * k  # not averaged: it does not require a gradient
    p["half"].grad = torch.tensor([2.0, 4.0], dtype=torch.bfloat16) * k
    return p


def _worker(rank: int, port: int, out: str) -> None:
    td.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        params = _params(rank)
        dist.average_gradients(params.values())
        grads = {k: (None if p.grad is None else p.grad.clone()) for k, p in params.items()}
        layout = params["conv"].grad.is_contiguous(memory_format=torch.channels_last)
        weights = [torch.full((2, 2), float(rank + 10)), torch.tensor([rank + 7, rank + 8])]  # float and int
        dist.broadcast_tensors(weights)
        torch.save({"grads": grads, "conv_channels_last": layout, "weights": weights}, f"{out}/{rank}.pt")
    finally:
        td.destroy_process_group()


def test_two_ranks_average_gradients_and_broadcast(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"{rank}.pt")
        g = got["grads"]
        # mean of k * base over k = 1, 2 is 1.5 * base
        assert torch.equal(g["flat"], torch.tensor([1.5, 3.0, 4.5]))
        assert torch.equal(g["conv"], torch.arange(24.0).view(2, 3, 2, 2) * 1.5)
        assert got["conv_channels_last"]
        # rank 0's gradient and rank 1's missing one (a zero) average to half of rank 0's
        assert torch.equal(g["only_rank0"], torch.tensor([2.0, 3.0]))
        assert g["nowhere"] is None
        assert torch.equal(g["frozen"], torch.tensor([5.0, 5.0]) * (rank + 1))
        assert g["half"].dtype == torch.bfloat16 and torch.equal(g["half"].float(), torch.tensor([3.0, 6.0]))
        # every rank now holds rank 0's values, dtype kept
        assert torch.equal(got["weights"][0], torch.full((2, 2), 10.0))
        assert torch.equal(got["weights"][1], torch.tensor([7, 8]))


def test_single_process_is_untouched():
    params = _params(1)
    dist.average_gradients(params.values())
    assert torch.equal(params["flat"].grad, torch.tensor([2.0, 4.0, 6.0]))
    assert params["only_rank0"].grad is None
