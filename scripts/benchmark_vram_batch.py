"""Check the VRAM batch optimiser against the real memory of the step it sizes (CUDA only).

    python scripts/benchmark_vram_batch.py -opt options/train/EDSR/train_EDSR_Mx2.yml \
        [-o key=value ...] [--target 0.85] [--steps 20]

Builds the run as train.py does, lets ``dynamic_batch_size_optimizer`` choose the batch, then
measures peak reserved memory of real training steps at that batch and at 5 % more: the chosen
batch must stay under the target and the 5 % larger one must not (the optimiser is within 5 %
of the largest batch that fits). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from models.training_loop import TrainingLoop, build_automations  # noqa: E402
from scripts.bench_report import emit  # noqa: E402
from train import build_run  # noqa: E402
from utils.device import select_device  # noqa: E402
from utils.logger import TensorBoardWriter, setup_logger  # noqa: E402
from utils.options import load_options  # noqa: E402


def peak_of(loop: TrainingLoop, batch: int) -> float | None:
    """Peak reserved GiB of one real (undone) training step at ``batch``; None on out-of-memory."""
    loop.ctx.release_memory()
    torch.cuda.reset_peak_memory_stats(loop.model.device)
    try:
        loop.ctx.trial_step(batch)
    except torch.cuda.OutOfMemoryError:
        loop.ctx.release_memory()
        return None
    return torch.cuda.max_memory_reserved(loop.model.device) / 2**30


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-opt", "--opt", required=True)
    parser.add_argument("-o", "--override", action="append", default=[])
    parser.add_argument("--target", type=float, default=0.85)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    overrides = args.override + [
        f"train.training_automations={{dynamic_batch_size_optimizer: {{target_vram_usage: {args.target}}}}}"]
    opt = load_options(args.opt, overrides)
    log = setup_logger(None)
    device = select_device(opt.device)
    if device.type != "cuda":
        raise SystemExit("benchmark_vram_batch needs a CUDA device")
    model, stream, _ = build_run(opt, device)
    loop = TrainingLoop(opt, model, stream, {}, build_automations(opt), Path(tempfile.mkdtemp()),
                        TensorBoardWriter(None), log)
    configured = stream.knob("batch_size", 1)
    loop.hook("on_train_start")
    chosen = stream.knob("batch_size", 1)
    total = torch.cuda.get_device_properties(device).total_memory / 2**30
    bigger = math.ceil(chosen * 1.05)
    peaks = {b: peak_of(loop, b) for b in (chosen, chosen + 1, bigger)}
    loop.ctx.release_memory()
    torch.cuda.reset_peak_memory_stats(device)
    for i in range(1, args.steps + 1):
        loop.train_step(i)
    torch.cuda.synchronize(device)
    limit = args.target * total
    result = {
        "option_file": args.opt, "device": torch.cuda.get_device_name(device), "total_gib": total,
        "target": args.target, "limit_gib": limit, "configured_batch": configured, "chosen_batch": chosen,
        "peak_gib_chosen": peaks[chosen], "peak_gib_plus1": peaks[chosen + 1], "batch_plus_5pct": bigger,
        "peak_gib_plus_5pct": peaks[bigger],
        "chosen_fits": peaks[chosen] is not None and peaks[chosen] <= limit,
        "plus_5pct_exceeds": peaks[bigger] is None or peaks[bigger] > limit,
        "training_peak_gib": torch.cuda.max_memory_reserved(device) / 2**30,
        "lr_multiplier": loop.ctx.lr_multiplier("g"),
    }
    emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
