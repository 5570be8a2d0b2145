"""Training-data throughput: batches and samples per second of an option file's training set.

    python scripts/benchmark_loader.py -opt options/train/PixelArt/edsr_64x32_x2_trunk.yml \
        [-o key=value ...] [--steps 400] [--warmup 100] [--workers 0,4,8] [--prefetch-factor 2,4] \
        [--at-step 0.7T] [--device cpu|cuda] [--json results.jsonl]

Only the training set is built, exactly as train.py builds it (``data.data_loader.build_loaders``:
the dataset with its degradations, crops and schedules, the seeded resumable sampler, the loader
workers, the prefetcher, ``cache`` if set); no network, no validation set. For each requested
worker count (and prefetch factor) the stream is built afresh, ``--warmup`` steps are drawn (worker
start-up, caches, the queue reaching its steady state), then ``--steps`` steps are timed. One JSON
line per setting: batches/s, samples/s, ms per batch, steps/s and the steps it covered.

Schedules make batches of step ``s`` with the values at ``s`` (a patch-size schedule 64 → 128 makes
later batches four times larger), so ``--at-step`` places the stream at a step of the run (``0.7T``
allowed) before the warm-up; the result names the first and last timed step and the live settings
(``gt_size``, ``batch_size``) at the first. The samples are those of epoch 0 from its start; only
the settings come from the step.

``--device`` moves each batch as training does (uint8 → float on the device; on CUDA the side-stream
prefetcher with pinned memory), so ``--device cuda`` measures what a GPU run gets and can be compared
with ``scripts/benchmark_train.py --modes step`` (the step rate on one reused batch).
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from data.batch_stream import BatchStream, batch_length  # noqa: E402
from data.data_loader import build_loaders  # noqa: E402
from scripts.bench_report import emit  # noqa: E402
from utils.device import select_device  # noqa: E402
from utils.logger import get_logger, setup_logger  # noqa: E402
from utils.options import Options, load_options  # noqa: E402
from utils.steps import resolve_step  # noqa: E402

TRAINING_PREFETCH_FACTOR = 4  # what data.data_loader.build_dataloader gives every worker loader


def parse_counts(text: str, name: str, minimum: int) -> list[int]:
    """``"0,4,8"`` → ``[0, 4, 8]``; a clear error for anything but whole numbers >= ``minimum``."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as err:
        raise ValueError(f"{name}: expected comma-separated whole numbers, got {text!r}") from err
    if not values or min(values) < minimum:
        raise ValueError(f"{name}: expected comma-separated whole numbers >= {minimum}, got {text!r}")
    return values


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _train_only(opt: Options, workers: int | None) -> Options:
    """``opt`` holding just its training set (validation sets are never built), with ``workers``
    data workers when given. ``build_loaders`` reads nothing else of the options."""
    if opt.train is None or "train" not in opt.datasets:
        raise ValueError(f"{opt.source}: benchmark_loader needs a training option file (train: and datasets.train)")
    section = dict(opt.datasets["train"])
    if workers is not None:
        section["num_worker_per_gpu"] = workers
    return opt.model_copy(update={"datasets": {"train": section}})


def build_stream(opt: Options, device: torch.device, workers: int | None = None,
                 prefetch_factor: int | None = None) -> BatchStream:
    """The training batch stream of ``opt`` as train.py builds it, optionally with another worker
    count and loader prefetch factor (batches each worker prepares ahead)."""
    torch.manual_seed(opt.manual_seed)  # as train.build_run does before building the data
    stream, _ = build_loaders(_train_only(opt, workers), device)
    if prefetch_factor is not None and stream.loader.num_workers > 0:
        # build_dataloader fixes the factor; DataLoader lets it be changed before an iterator exists
        stream.loader.prefetch_factor = prefetch_factor
    return stream


def place_at_step(stream: BatchStream, step: int, accumulate: int) -> None:
    """Make the stream's next batch the first of training step ``step`` (1-based)."""
    stream.load_state({"epoch": 0, "position": 0, "batches": (step - 1) * accumulate, "overrides": {}})


def _draw(stream: BatchStream, batches: int) -> tuple[int, int, dict[str, Any] | None]:
    """Take ``batches`` batches; returns (batches, samples, the last batch)."""
    samples, batch = 0, None
    for _ in range(batches):
        batch = stream.next()
        samples += batch_length(batch)
    return batches, samples, batch


def _shapes(batch: dict[str, Any] | None) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in (batch or {}).items() if isinstance(v, torch.Tensor)}


def _knobs(stream: BatchStream, step: int) -> dict[str, Any]:
    return {name: stream.knob(name, step) for name in stream.knob_names()}


def _close(stream: BatchStream) -> None:
    """Stop the stream's worker processes before the next setting starts its own."""
    stream.shutdown()  # stops the loader's persistent workers too
    gc.collect()


def measure(opt: Options, device: torch.device, workers: int | None, prefetch_factor: int | None, steps: int,
            warmup: int, at_step: int = 1) -> dict[str, Any]:
    """Throughput of one setting; see the module docstring for what is timed."""
    accumulate = opt.train.accumulate_grad_batches
    start = time.perf_counter()
    stream = build_stream(opt, device, workers, prefetch_factor)
    build_s = time.perf_counter() - start
    try:
        place_at_step(stream, at_step, accumulate)
        first_batch_s = None  # without warm-up the start-up is inside the timed batches
        if warmup:
            start = time.perf_counter()
            _draw(stream, 1)
            first_batch_s = time.perf_counter() - start
            _draw(stream, warmup * accumulate - 1)
        first = stream.batches // accumulate + 1
        _sync(device)
        start = time.perf_counter()
        batches, samples, last = _draw(stream, steps * accumulate)
        _sync(device)
        elapsed = time.perf_counter() - start
        last_step = (stream.batches - 1) // accumulate + 1
        knobs, knobs_end = _knobs(stream, first), _knobs(stream, last_step)
        effective_workers = stream.loader.num_workers
    finally:
        _close(stream)
    changed = sorted(k for k in knobs if knobs[k] != knobs_end[k])
    if changed:
        get_logger().warning(f"{', '.join(changed)} changed between steps {first} and {last_step}: "
                             "the rate mixes settings; choose --at-step or --steps inside one stage")
    train_ds = opt.datasets["train"]
    return {
        "option_file": opt.source,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "dataset": train_ds["type"],
        "cache": train_ds.get("cache"),
        "workers": effective_workers,  # 0 with cache set: build_loaders makes those batches in-process
        "prefetch_factor": (prefetch_factor or TRAINING_PREFETCH_FACTOR) if effective_workers else None,
        "prefetch_mode": train_ds.get("prefetch_mode"),
        "accumulate": accumulate,
        "step": first,
        "last_step": last_step,
        "batch_size": knobs["batch_size"],
        "gt_size": knobs.get("gt_size"),
        "knobs": knobs,
        "knobs_changed": changed,
        "shapes": _shapes(last),
        "steps": steps,
        "warmup": warmup,
        "batches": batches,
        "samples": samples,
        "seconds": elapsed,
        "batches_per_s": batches / elapsed,
        "samples_per_s": samples / elapsed,
        "steps_per_s": steps / elapsed,
        "ms_per_batch": 1000 * elapsed / batches,
        "build_s": build_s,
        "first_batch_s": first_batch_s,
    }


def benchmark(opt_path: str | Path, overrides: Sequence[str] = (), steps: int = 200, warmup: int = 20,
              workers: Sequence[int] | None = None, prefetch_factors: Sequence[int] | None = None,
              at_step: int | str = 1, device: str = "cpu") -> Iterator[dict[str, Any]]:
    """One result per (worker count, prefetch factor), yielded as each is measured; ``None`` lists
    mean the option file's value (the prefetch factor only applies to worker loaders, so 0 workers
    is measured once)."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"--steps must be >= 1 and --warmup >= 0, got {steps} and {warmup}")
    opt = load_options(opt_path, list(overrides))
    dev = select_device(device)
    step = resolve_step(at_step, opt.train.total_iter if opt.train else None)
    if step < 1:
        raise ValueError(f"--at-step must be >= 1 (steps count from 1), got {at_step!r}")
    for count in workers or [None]:
        factors = [None] if count == 0 else (prefetch_factors or [None])
        for factor in factors:
            yield measure(opt, dev, count, factor, steps, warmup, step)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure the training loader's batches/s for an option file.")
    parser.add_argument("-opt", "--opt", "--config", dest="opt", required=True,
                        help="training option file (--config: the seed's spelling)")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=200, help="timed training steps per setting")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first (worker start-up, queues)")
    parser.add_argument("--workers", default=None, help="comma-separated worker counts (default: the file's)")
    parser.add_argument("--prefetch-factor", default=None,
                        help=f"comma-separated batches prepared ahead per worker (default: training's, "
                             f"{TRAINING_PREFETCH_FACTOR})")
    parser.add_argument("--at-step", default="1", help="training step the warm-up starts at (e.g. 5000 or 0.7T)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "mps", "auto"],
                        help="where batches are moved, as training moves them")
    parser.add_argument("--json", help="append each result as one JSON line to this file")
    args = parser.parse_args(argv)
    setup_logger(None)
    try:
        workers = parse_counts(args.workers, "--workers", 0) if args.workers else None
        factors = parse_counts(args.prefetch_factor, "--prefetch-factor", 1) if args.prefetch_factor else None
        for result in benchmark(args.opt, args.override, args.steps, args.warmup, workers, factors,
                                args.at_step, args.device):
            emit(result, args.json)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        get_logger().error(str(err))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
