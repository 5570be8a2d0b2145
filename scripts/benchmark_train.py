"""Training throughput: iterations per second and peak memory of the real training step.

    python scripts/benchmark_train.py -opt options/train/EDSR/train_EDSR_Mx2.yml \
        [-o amp=bf16 -o channels_last=true ...] [--iters 300] [--warmup 50] [--modes full,step,data]

The run is built exactly as train.py builds it (datasets from PNG files, workers, prefetcher,
runner, EMA, scheduler, the option file's training automations and their hooks, the logging
steps every ``logger.print_freq``); validation and checkpointing are left out. Timing covers
``--iters`` steps after ``--warmup`` steps, with one device synchronisation at each end, for each
of ``--modes``: the whole step (``full``), the step alone on one reused batch (``step``) and the
data pipeline alone (``data``), so the gap between the full rate and the slower of the other two
shows what is left to overlap.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from models.training_loop import TrainingLoop, build_automations  # noqa: E402
from scripts.bench_report import emit  # noqa: E402
from train import build_run  # noqa: E402
from utils.device import select_device  # noqa: E402
from utils.logger import TensorBoardWriter, setup_logger  # noqa: E402
from utils.options import apply_override, load_yaml, parse_options  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


MODES = ("full", "step", "data")

#: a step counts as a stall when it takes this many times the median step
STALL_FACTOR = 3.0


def step_time_summary(durations: list[float], first_step: int = 1, slowest: int = 5) -> dict:
    """Per-step host times (seconds) as the median and 99th percentile in ms, the rate the median
    implies (what train.py's median of logged intervals approaches when a few steps stall), the
    share of the wall time spent in stalls beyond the median (steps over ``STALL_FACTOR`` x the
    median), and the ``slowest`` steps as ``[step, ms]`` in time order (``first_step``: the number of
    the first timed step in the run's count, warm-up and earlier modes included).

    A step's host time is its wall time once the GPU queue is full (the host then waits for room),
    so periodic stalls (epoch ends, garbage collection) show up here though the mean hides them."""
    if not durations:
        raise ValueError("no steps were timed")
    ordered = sorted(durations)
    median = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    stalled = sum(d - median for d in durations if d > STALL_FACTOR * median)
    worst = sorted(range(len(durations)), key=lambda i: durations[i], reverse=True)[:slowest]
    return {"step_ms_median": 1000 * median, "step_ms_p99": 1000 * p99,
            "median_it_per_s": 1 / median if median > 0 else math.inf,
            "stall_share": stalled / sum(durations),
            "slowest_steps": [[first_step + i, 1000 * durations[i]] for i in sorted(worst)]}


def benchmark(opt_path: str, overrides: list[str], iters: int, warmup: int, modes: tuple[str, ...] = ("full",),
              sync_debug: bool = False) -> list[dict]:
    """One result per mode, all from one built run (one compile): ``full`` (data and step as in
    training), ``step`` (one real batch reused: the step alone) and ``data`` (batches only)."""
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"unknown mode(s) {unknown}; known: {', '.join(MODES)}")
    data = load_yaml(opt_path)
    for expr in overrides:
        apply_override(data, expr)
    # Only the training step is timed: validation sets are built (automations may watch their
    # metrics) but never run.
    opt = parse_options(data, source=opt_path)
    log = setup_logger(None)
    device = select_device(opt.device)
    model, stream, val_loaders = build_run(opt, device)
    accumulate = opt.train.accumulate_grad_batches
    automations = build_automations(opt)
    loop = TrainingLoop(opt, model, stream, val_loaders, automations, Path(tempfile.mkdtemp()),
                        TensorBoardWriter(None), log)
    print_freq = opt.logger.print_freq
    trains = any(m != "data" for m in modes)
    if trains:
        loop.hook("on_train_start")
    fixed = [stream.next() for _ in range(accumulate)]
    iteration = 0
    checking = False  # --sync-debug is raising now (timed steps, not the warm-up)

    def step(mode: str) -> None:
        nonlocal iteration
        iteration += 1
        # step: reuse one real batch, so only the training step itself is timed
        batches = fixed if mode == "step" else [stream.next() for _ in range(accumulate)]
        if mode == "data":
            return
        model.train_step(batches, iteration)
        stream.step_done()  # as the training loop does
        loop.ctx.iteration = iteration
        logs = None
        if iteration % print_freq == 0:  # a logging step reads the device once, as in training
            if checking:
                torch.cuda.set_sync_debug_mode("default")
            logs = model.pop_logs(iteration)
            if checking:
                torch.cuda.set_sync_debug_mode("error")
        loop.hook("on_step_end", logs)

    def timed(mode: str, count: int, check_sync: bool = True) -> tuple[float, list[float]]:
        """Wall time of ``count`` steps, and each step's host time (see :func:`step_time_summary`)."""
        nonlocal checking
        checking = check_sync and sync_debug and device.type == "cuda"
        _sync(device)
        if checking:
            # Any host-device synchronisation inside the timed steps now raises instead of stalling.
            torch.cuda.set_sync_debug_mode("error")
        durations = []
        start = last = time.perf_counter()
        for _ in range(count):
            step(mode)
            now = time.perf_counter()
            durations.append(now - last)
            last = now
        if checking:
            torch.cuda.set_sync_debug_mode("default")
            checking = False
        _sync(device)
        return time.perf_counter() - start, durations

    # compiles, autotunes, captures (cuda_graph), fills the workers' queues: compilation may
    # synchronise, so --sync-debug checks the timed steps only
    timed("full" if trains else "data", warmup, check_sync=False)
    if trains:
        model.pop_logs(iteration)
    train_ds = opt.datasets["train"]
    common = {
        "option_file": opt_path,
        "overrides": overrides,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "arch": opt.network_g["type"],
        "batch_size": stream.knob("batch_size", warmup + iters),
        # the patch size: a live knob of the SR sets; a fixed size (PBR views: image_size) otherwise
        "gt_size": (stream.knob("gt_size", warmup + iters) if "gt_size" in stream.knob_names()
                    else train_ds.get("gt_size", train_ds.get("image_size"))),
        "cache": train_ds.get("cache"),
        "workers": stream.loader.num_workers,
        "amp": opt.amp,
        "channels_last": opt.channels_last,
        "compile": opt.compile,
        "cuda_graph": opt.cuda_graph,
        "automations": [a.name for a in automations],
        "sync_debug": sync_debug,
        "iters": iters,
    }
    results = []
    for mode in modes:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        first = iteration + 1
        elapsed, durations = timed(mode, iters)
        result = {**common, "mode": mode, "it_per_s": iters / elapsed, "ms_per_it": 1000 * elapsed / iters,
                  **step_time_summary(durations, first)}
        if device.type == "cuda":
            result["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
            result["peak_reserved_gb"] = torch.cuda.max_memory_reserved(device) / 2**30
        results.append(result)
    if trains:
        model.check_finite(iteration)
    stream.shutdown()  # workers stop now, not in a slow join at interpreter exit
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure training it/s and peak memory for an option file.")
    parser.add_argument("-opt", "--opt", required=True)
    parser.add_argument("-o", "--override", action="append", default=[])
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--modes", default="full",
                        help="comma-separated, measured in one run: full (training), step (one batch reused: the "
                             "step alone), data (the data pipeline alone)")
    parser.add_argument("--data-only", action="store_true", help="= --modes data")
    parser.add_argument("--synthetic", action="store_true", help="= --modes step")
    parser.add_argument("--sync-debug", action="store_true",
                        help="fail if a timed step synchronises the host with the GPU")
    parser.add_argument("--json", help="append the result as one JSON line to this file")
    args = parser.parse_args(argv)
    modes = tuple(args.modes.split(","))
    modes = ("data",) if args.data_only else ("step",) if args.synthetic else modes
    for result in benchmark(args.opt, args.override, args.iters, args.warmup, modes, args.sync_debug):
        emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
