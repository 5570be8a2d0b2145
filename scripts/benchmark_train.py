"""Training throughput: iterations per second and peak memory of the real training step.

    python scripts/benchmark_train.py -opt options/train/EDSR/train_EDSR_Mx2.yml \
        [-o amp=bf16 -o channels_last=true ...] [--iters 300] [--warmup 50] [--data-only]

The run is built exactly as train.py builds it (datasets from PNG files, workers, prefetcher,
runner, EMA, scheduler, the option file's training automations and their hooks, the logging
steps every ``logger.print_freq``); validation and checkpointing are left out. Timing covers
``--iters`` steps after ``--warmup`` steps, with one device synchronisation at each end.
"""

from __future__ import annotations

import argparse
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


def benchmark(opt_path: str, overrides: list[str], iters: int, warmup: int, data_only: bool = False,
              synthetic: bool = False, sync_debug: bool = False) -> dict:
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
    if not data_only:
        loop.hook("on_train_start")

    fixed = [stream.next() for _ in range(accumulate)] if synthetic else None

    def step(i: int) -> None:
        # synthetic: reuse one real batch, so only the training step itself is timed
        batches = fixed if synthetic else [stream.next() for _ in range(accumulate)]
        if data_only:
            return
        model.train_step(batches, i)
        loop.ctx.iteration = i
        logs = None
        if i % print_freq == 0:  # a logging step reads the device once, as in training
            if sync_debug and device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
            logs = model.pop_logs(i)
            if sync_debug and device.type == "cuda":
                torch.cuda.set_sync_debug_mode("error")
        loop.hook("on_step_end", logs)

    for i in range(warmup):
        step(i + 1)
    model.pop_logs(warmup) if not data_only else None
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if sync_debug and device.type == "cuda":
        # Any host-device synchronisation inside the timed steps now raises instead of stalling.
        torch.cuda.set_sync_debug_mode("error")
    start = time.perf_counter()
    for i in range(iters):
        step(warmup + i + 1)
    if sync_debug and device.type == "cuda":
        torch.cuda.set_sync_debug_mode("default")
    _sync(device)
    elapsed = time.perf_counter() - start
    if not data_only:
        model.check_finite(warmup + iters)
    train_ds = opt.datasets["train"]
    result = {
        "option_file": opt_path,
        "overrides": overrides,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "arch": opt.network_g["type"],
        "batch_size": stream.knob("batch_size", warmup + iters),
        "gt_size": stream.knob("gt_size", warmup + iters),
        "workers": train_ds.get("num_worker_per_gpu"),
        "amp": opt.amp,
        "channels_last": opt.channels_last,
        "compile": opt.compile,
        "automations": [a.name for a in automations],
        "data_only": data_only,
        "synthetic": synthetic,
        "sync_debug": sync_debug,
        "iters": iters,
        "it_per_s": iters / elapsed,
        "ms_per_it": 1000 * elapsed / iters,
    }
    if device.type == "cuda":
        result["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        result["peak_reserved_gb"] = torch.cuda.max_memory_reserved(device) / 2**30
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure training it/s and peak memory for an option file.")
    parser.add_argument("-opt", "--opt", required=True)
    parser.add_argument("-o", "--override", action="append", default=[])
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--data-only", action="store_true", help="time the data pipeline alone")
    parser.add_argument("--synthetic", action="store_true", help="reuse one batch: time the step alone")
    parser.add_argument("--sync-debug", action="store_true",
                        help="fail if a timed step synchronises the host with the GPU")
    parser.add_argument("--json", help="append the result as one JSON line to this file")
    args = parser.parse_args(argv)
    result = benchmark(args.opt, args.override, args.iters, args.warmup, args.data_only, args.synthetic,
                       args.sync_debug)
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
