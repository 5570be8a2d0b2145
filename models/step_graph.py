"""The whole training step as one CUDA graph (``cuda_graph: true``).

A small network's step is bound by the host: hundreds of kernel launches, autograd bookkeeping
and the optimiser's Python take longer than the GPU needs to run them, and under DDP two such
hosts slow each other. Captured once, the step (forward, losses, backward, gradient averaging,
clipping, optimiser) replays with one launch. EMA, schedulers and the loop's hooks stay on the
host after each replay.

A graph replays fixed kernels on fixed memory, so everything the host decides inside a step must
be the same at every replay. The runner's :meth:`~models.base_model.BaseModel.step_signature`
names those decisions (batch shapes, loss weights, ...): a new signature gets eager steps first
(compilation, cuDNN autotuning, optimiser state, log keys) and then its own capture; a few graphs
are kept, so a patch-size schedule or a weight that alternates recaptures rarely. The learning
rate changes every step under a schedule: the optimisers read it from a device tensor that is
refreshed before each replay, so the schedulers keep writing plain floats.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch

from utils.logger import get_logger

#: eager steps before the first capture (compilation, cuDNN autotuning, optimiser state) and before
#: the capture of each later signature (new shapes compile again)
FIRST_WARMUP, LATER_WARMUP = 3, 1
MAX_GRAPHS = 4
#: recaptures after which the run is told that its step keeps changing
RECAPTURE_WARNING = 20


class _Captured:
    """One captured step: its graph, the static batch tensors it reads and the log counts it adds."""

    def __init__(self, graph: torch.cuda.CUDAGraph, static: list[dict[str, Any]], counts: dict[str, int]) -> None:
        self.graph, self.static, self.counts = graph, static, counts


class StepGraph:
    """Runs ``model.update`` + ``model.end_step`` for each step, replaying captured graphs."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.graphs: OrderedDict[tuple, _Captured] = OrderedDict()
        self.eager_steps: dict[tuple, int] = {}
        self.captures = 0
        self.replays = 0
        # one device LR per optimiser group, shared by every graph; refreshed before each replay
        self._lr: dict[tuple[str, int], torch.Tensor] = {}
        self._lr_value: dict[tuple[str, int], float] = {}

    def __call__(self, batches: list[dict[str, Any]], iteration: int) -> None:
        model = self.model
        signature = model.step_signature(batches, iteration)
        captured = self.graphs.get(signature)
        if captured is None:
            seen = self.eager_steps.get(signature, 0)
            if seen < (FIRST_WARMUP if not self.captures else LATER_WARMUP):
                self.eager_steps[signature] = seen + 1
                self._eager(batches, iteration)
            else:
                self._capture(signature, batches, iteration)
        else:
            self.graphs.move_to_end(signature)
            self._replay(captured, batches)
        model.end_step(iteration)

    # ------------------------------------------------------------------ parts

    def _eager(self, batches: list[dict[str, Any]], iteration: int) -> None:
        # on a side stream, as torch asks of warm-up before a capture (lazy CUDA and NCCL state)
        side = torch.cuda.Stream(self.model.device)
        side.wait_stream(torch.cuda.current_stream(self.model.device))
        with torch.cuda.stream(side):
            self.model.update(batches, iteration)
        torch.cuda.current_stream(self.model.device).wait_stream(side)

    def _capture(self, signature: tuple, batches: list[dict[str, Any]], iteration: int) -> None:
        model = self.model
        if len(self.graphs) >= MAX_GRAPHS:
            self.graphs.popitem(last=False)  # the least recently replayed; its memory returns to torch
        static = [{k: torch.empty_like(v) if isinstance(v, torch.Tensor) else v for k, v in b.items()}
                  for b in batches]
        self._copy_in(static, batches)
        counts = dict(model._log_counts)
        floats = self._lr_tensors_in()
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(model.device)
        try:
            # thread_local: the data pipeline's thread keeps launching its own work meanwhile
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                model.update(static, iteration)
        finally:
            self._lr_floats_back(floats)
        # The capture ran the host code once but no kernel: the log counts it added belong to
        # every replay, the first included.
        added = {k: n - counts.get(k, 0) for k, n in model._log_counts.items() if n != counts.get(k, 0)}
        model._log_counts.update(counts)
        captured = _Captured(graph, static, added)
        self.graphs[signature] = captured
        self.captures += 1
        if self.captures == RECAPTURE_WARNING:  # counts only up: said once
            get_logger().warning(
                f"cuda_graph: the training step was captured {self.captures} times by iteration {iteration} "
                "because what it computes keeps changing (batch shapes, loss weights); a graph pays off only "
                "when steps repeat: set cuda_graph: false for this run")
        self._replay(captured, None)

    def _replay(self, captured: _Captured, batches: list[dict[str, Any]] | None) -> None:
        if batches is not None:
            self._copy_in(captured.static, batches)
        self._refresh_lr()
        captured.graph.replay()
        self.replays += 1
        counts = self.model._log_counts
        for key, n in captured.counts.items():
            counts[key] = counts.get(key, 0) + n

    @staticmethod
    def _copy_in(static: list[dict[str, Any]], batches: list[dict[str, Any]]) -> None:
        for dst, src in zip(static, batches, strict=True):
            for key, value in src.items():
                if isinstance(value, torch.Tensor):
                    dst[key].copy_(value, non_blocking=True)

    # ---------------------------------------------------------------- the LR

    def _groups(self) -> list[tuple[tuple[str, int], dict[str, Any]]]:
        return [((key, i), group) for key, opt in self.model.optimizers.items()
                for i, group in enumerate(opt.param_groups)]

    def _lr_tensors_in(self) -> dict[tuple[str, int], Any]:
        """Give every optimiser group its device LR for the capture; returns the floats to restore."""
        floats = {}
        for ident, group in self._groups():
            if ident not in self._lr:
                self._lr[ident] = torch.zeros((), dtype=torch.float32, device=self.model.device)
                self._lr_value[ident] = float("nan")
            floats[ident] = group["lr"]
            group["lr"] = self._lr[ident]
        return floats

    def _lr_floats_back(self, floats: dict[tuple[str, int], Any]) -> None:
        for ident, group in self._groups():
            group["lr"] = floats[ident]

    def _refresh_lr(self) -> None:
        for ident, group in self._groups():
            lr = float(group["lr"])
            if ident in self._lr and lr != self._lr_value[ident]:
                self._lr[ident].fill_(lr)
                self._lr_value[ident] = lr
