"""Inference throughput in output megapixels per second for a network at a given input size.

    python scripts/benchmark_inference.py --net "{type: RRDBNet, num_block: 23}" --scale 4 \
        --size 512 --dtypes fp32,bf16,fp16 [--channels-last] [--compile]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import yaml  # noqa: E402

from models.base_model import build_network  # noqa: E402
from scripts.bench_report import emit  # noqa: E402
from utils.device import select_device  # noqa: E402
from utils.options import parse_options  # noqa: E402

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@torch.inference_mode()
def benchmark(net_opt: dict, scale: int, size: int, dtype: str, batch: int, iters: int, warmup: int,
              channels_last: bool, compile_net: bool, device: torch.device) -> dict:
    opt = parse_options({"name": "bench", "scale": scale, "network_g": net_opt})  # validates the keys
    net = build_network(opt.network_g).eval().to(device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(device=device, dtype=_DTYPES[dtype], memory_format=fmt)
    run = torch.compile(net) if compile_net else net
    x = torch.rand(batch, opt.network_g.get("num_in_ch", 3), size, size, device=device, dtype=_DTYPES[dtype])
    x = x.contiguous(memory_format=fmt)
    for _ in range(warmup):
        run(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        out = run(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    megapixels = batch * out.shape[-1] * out.shape[-2] / 1e6
    return {"arch": net_opt["type"], "net": net_opt, "scale": scale, "input": size, "dtype": dtype, "batch": batch,
            "channels_last": channels_last, "compile": compile_net, "ms_per_batch": 1000 * elapsed / iters,
            "output_mp_per_s": megapixels * iters / elapsed, "finite": bool(torch.isfinite(out).all())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", required=True, help="network_g as YAML, e.g. '{type: EDSR, num_block: 16}'")
    parser.add_argument("--scale", type=int, required=True)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--dtypes", default="fp32,bf16,fp16")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="append results as JSON lines to this file")
    args = parser.parse_args(argv)
    device = select_device(args.device)
    net_opt = yaml.safe_load(args.net)
    for dtype in args.dtypes.split(","):
        result = benchmark(net_opt, args.scale, args.size, dtype, args.batch, args.iters, args.warmup,
                           args.channels_last, args.compile, device)
        emit(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
