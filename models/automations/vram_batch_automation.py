"""Batch size from measured GPU memory: the largest batch whose training step fits a VRAM budget."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Literal

import torch
from pydantic import Field

from models.automations.base import Automation
from utils import dist
from utils.registry import AUTOMATION_REGISTRY

if TYPE_CHECKING:
    from models.context import TrainingContext

# Without any other upper bound the search stops growing here.
HARD_MAX_BATCH = 65536


def largest_fitting(fits: Callable[[int], bool], start: int, lo: int = 1, hi: int | None = None,
                    on_oom: Callable[[], None] | None = None) -> int | None:
    """The largest batch b in [lo, hi] with ``fits(b)``, assuming that a batch fits when a larger one
    does; None when not even ``lo`` fits.

    From b0 = clip(start, lo, hi): if b0 fits, double (capped at hi) until a batch does not fit or
    hi fits; if it does not, halve (floored at lo) until one fits. Then bisect between the largest
    fitting and the smallest failing batch. Each batch is probed at most once, at most about
    2 * log2(hi) + 2 probes in all. A ``torch.cuda.OutOfMemoryError`` raised by ``fits`` counts as
    "does not fit" (``on_oom`` then cleans up, outside the handler so the error's frames are freed);
    any other error propagates.
    """
    if lo < 1 or (hi is not None and hi < lo):
        raise ValueError(f"largest_fitting: need 1 <= lo <= hi, got lo={lo}, hi={hi}")
    cap = HARD_MAX_BATCH if hi is None else hi
    seen: dict[int, bool] = {}

    def probe(b: int) -> bool:
        if b not in seen:
            oom = False
            try:
                seen[b] = bool(fits(b))
            except torch.cuda.OutOfMemoryError:
                oom, seen[b] = True, False
            if oom and on_oom is not None:
                on_oom()
        return seen[b]

    b = min(max(start, lo), cap)
    if probe(b):
        good, bad = b, None
        while good < cap:
            b = min(2 * good, cap)
            if not probe(b):
                bad = b
                break
            good = b
        if bad is None:
            return good
    else:
        good, bad = None, b
        while bad > lo:
            b = max(bad // 2, lo)
            if probe(b):
                good = b
                break
            bad = b
        if good is None:
            return None
    while bad - good > 1:
        mid = (good + bad) // 2
        if probe(mid):
            good = mid
        else:
            bad = mid
    return good


def lr_factor(rule: str, new: int, old: int) -> float:
    """The LR multiplier's factor for a batch change old -> new: new/old, its square root, or 1."""
    if rule == "linear":
        return new / old
    if rule == "sqrt":
        return math.sqrt(new / old)
    return 1.0


@AUTOMATION_REGISTRY.register("dynamic_batch_size_optimizer")
class VramBatchAutomation(Automation):
    """Sets the per-GPU batch size to the largest one whose training step stays within
    ``target_vram_usage`` of the GPU's memory (CUDA only; on CPU/MPS it reports so and changes
    nothing).

    At train start (once per run; a resumed run keeps its batch, saved with the data state): each
    probe of batch b frees cached memory, resets the peak statistics, runs one real training step
    on b samples (``ctx.trial_step``, which restores everything afterwards) and reads the peak
    reserved memory; b fits when peak <= target_vram_usage * total memory and no out-of-memory
    error was raised. The search (:func:`largest_fitting`) starts at the configured batch, grows
    geometrically, then bisects, within [min_batch_size, min(max_batch_size, samples per GPU per
    epoch)]. Under DDP every probe's answer is the AND over ranks (so ranks probe in lockstep) and
    the batch taken is the minimum over ranks. If no batch fits, min_batch_size is used.

    LR: on a change b_old -> b_new the LR multiplier of optimiser ``optimizer`` becomes
    old * f, with f = b_new / b_old (``linear``), sqrt(b_new / b_old) (``sqrt``) or 1 (``none``).

    Out of memory later: back off to the largest batch known to fit that is smaller than the
    current one, else to max(min_batch_size, floor(3/4 * current)), rescale the LR the same way
    and have the step redone; at min_batch_size the error is not handled.

    Args:
        target_vram_usage: share of the GPU's total memory that a training step's peak reserved memory may
            use, in (0, 1].
        lr_scaling: LR rule on a batch change b_old -> b_new: ``linear`` (x b_new / b_old), ``sqrt``
            (x sqrt(b_new / b_old)) or ``none``.
        max_batch_size: largest batch tried (≥ 1); null: bounded only by the samples per GPU per epoch.
        min_batch_size: smallest batch (≥ 1): used when no batch fits, and the floor of the out-of-memory
            back-off.
        optimizer: key of the optimiser whose LR ``lr_scaling`` rescales: ``g`` (generator) or ``d``
            (discriminator).
    """

    def __init__(self, target_vram_usage: Annotated[float, Field(gt=0, le=1)] = 0.85,
                 lr_scaling: Literal["linear", "sqrt", "none"] = "sqrt",
                 max_batch_size: Annotated[int, Field(ge=1)] | None = None,
                 min_batch_size: Annotated[int, Field(ge=1)] = 1, optimizer: str = "g") -> None:
        if not 0 < target_vram_usage <= 1:
            raise ValueError(f"dynamic_batch_size_optimizer: target_vram_usage must be in (0, 1], got "
                             f"{target_vram_usage}")
        if lr_scaling not in ("linear", "sqrt", "none"):
            raise ValueError(f"dynamic_batch_size_optimizer: lr_scaling must be linear, sqrt or none, got "
                             f"{lr_scaling!r}")
        if min_batch_size < 1 or (max_batch_size is not None and max_batch_size < min_batch_size):
            raise ValueError(f"dynamic_batch_size_optimizer: need 1 <= min_batch_size <= max_batch_size, got "
                             f"{min_batch_size}, {max_batch_size}")
        self.target_vram_usage = float(target_vram_usage)
        self.lr_scaling = lr_scaling
        self.max_batch_size, self.min_batch_size = max_batch_size, min_batch_size
        self.optimizer = optimizer
        # the state
        self.probed = False
        self.fitting: list[int] = []  # batches known to fit (probed, or trained without error)
        self.failing: list[int] = []  # batches that did not fit
        self.peaks_gb: dict[int, float] = {}  # probed batch -> peak reserved GiB (this rank)

    # ------------------------------------------------------------------- probing

    def _upper_bound(self, ctx: TrainingContext) -> int | None:
        """max_batch_size and this rank's samples per epoch (a batch larger than that never comes)."""
        bounds = [self.max_batch_size] if self.max_batch_size is not None else []
        files = ctx.train_files()
        if files:
            enlarge = int(ctx.opt.datasets["train"].get("dataset_enlarge_ratio", 1) or 1)
            bounds.append(max(1, math.ceil(len(files) * enlarge / dist.get_world_size())))
        return min(bounds) if bounds else None

    def _probe(self, ctx: TrainingContext, batch: int, limit: float) -> bool:
        device = ctx.device
        ctx.release_memory()
        torch.cuda.reset_peak_memory_stats(device)
        oom = False
        try:
            ctx.trial_step(batch)
        except torch.cuda.OutOfMemoryError:
            oom = True
        if oom:  # outside the handler: the error's frames (and their activations) are gone
            ctx.release_memory()
        peak = torch.cuda.max_memory_reserved(device)
        self.peaks_gb[batch] = peak / 2**30
        ok = not oom and peak <= limit
        return all(dist.all_gather_objects(ok))  # every rank answers every probe: they stay in lockstep

    def on_train_start(self, ctx: TrainingContext) -> None:
        configured = int(ctx.data_value("batch_size"))
        if ctx.device.type != "cuda":
            ctx.report(self.name, f"measures CUDA memory only; on {ctx.device.type} the batch size stays {configured}")
            return
        if self.probed:
            return
        if self.lr_scaling != "none" and self.optimizer not in ctx.optimizers:
            raise KeyError(f"{self.name}: no optimiser '{self.optimizer}'; optimisers: {', '.join(ctx.optimizers)}")
        total = torch.cuda.get_device_properties(ctx.device).total_memory
        limit = self.target_vram_usage * total
        hi = self._upper_bound(ctx)
        lo = self.min_batch_size if hi is None else min(self.min_batch_size, hi)
        results: dict[int, bool] = {}

        def fits(batch: int) -> bool:
            results[batch] = self._probe(ctx, batch, limit)
            return results[batch]

        found = largest_fitting(fits, configured, lo, hi, on_oom=ctx.release_memory)
        chosen = min(dist.all_gather_objects(found if found is not None else lo))
        ctx.release_memory()
        torch.cuda.reset_peak_memory_stats(ctx.device)  # the run's peak statistics start after the probes
        self.probed = True
        self.fitting = sorted(b for b, ok in results.items() if ok)
        self.failing = sorted(b for b, ok in results.items() if not ok)
        factor = self._set_batch(ctx, configured, chosen)
        peak = self.peaks_gb.get(chosen, float("nan"))
        why = "no batch fits the budget: using min_batch_size; " if found is None else ""
        ctx.report(self.name,
                   f"{why}batch size {configured} -> {chosen} ({len(results)} probes, largest step within "
                   f"{self.target_vram_usage:.0%} of {total / 2**30:.1f} GiB: peak reserved {peak:.2f} GiB); "
                   f"LR x{factor:.4g} ({self.lr_scaling})",
                   {"vram_batch/batch_size": chosen, "vram_batch/previous_batch_size": configured,
                    "vram_batch/peak_reserved_gb": peak, "vram_batch/lr_factor": factor})

    def _set_batch(self, ctx: TrainingContext, old: int, new: int) -> float:
        """Apply a batch change and its LR rescaling; returns the LR factor."""
        if new == old:
            return 1.0
        ctx.set_data("batch_size", new)
        factor = lr_factor(self.lr_scaling, new, old)
        if factor != 1.0:
            ctx.set_lr_multiplier(self.optimizer, ctx.lr_multiplier(self.optimizer) * factor)
        return factor

    # ------------------------------------------------------------- out of memory

    def on_out_of_memory(self, ctx: TrainingContext, error: BaseException) -> bool:
        current = int(ctx.data_value("batch_size"))
        if current <= self.min_batch_size:
            ctx.report(self.name, f"out of memory at batch size {current} = min_batch_size: cannot back off")
            return False
        # current does not fit (now), so neither does anything larger
        self.failing = sorted({*self.failing, current})
        self.fitting = [b for b in self.fitting if b < current]
        smaller = [b for b in self.fitting if b >= self.min_batch_size]
        new = max(smaller) if smaller else max(self.min_batch_size, current * 3 // 4)
        factor = self._set_batch(ctx, current, new)
        ctx.report(self.name, f"out of memory at batch size {current}: backing off to {new}, LR x{factor:.4g} "
                              f"({self.lr_scaling})",
                   {"vram_batch/batch_size": new, "vram_batch/previous_batch_size": current,
                    "vram_batch/lr_factor": factor})
        return True

    # ---------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        return {"probed": self.probed, "fitting": list(self.fitting), "failing": list(self.failing),
                "peaks_gb": dict(self.peaks_gb)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.probed = bool(state.get("probed", False))
        self.fitting = [int(b) for b in state.get("fitting", [])]
        self.failing = [int(b) for b in state.get("failing", [])]
        self.peaks_gb = {int(b): float(v) for b, v in state.get("peaks_gb", {}).items()}
