"""Tiled inference throughput: a plain PyTorch loop against upforge's fastest settings, same tiles.

    python scripts/benchmark_inference.py [--nets rrdbnet,edsr-m,paragonsr2-s] [--sizes 512x512,1920x1080]
        [--tile 512] [--tile-overlap N] [--tile-batch 4] [--fast-precision fp16|bf16] [--compile|--no-compile]
        [--iters 3] [--warmup 2] [--device auto|cpu|cuda] [--image FILE] [--json FILE]

Per network and input size (W x H, LR) two modes tile the same input the same way
(``utils.tiling.tile_forward`` with ``--tile`` and ``--tile-overlap``):

- ``plain``: the network in float32, one tile per forward pass, no compile, default memory layout,
  ``cudnn.benchmark`` off: what a straightforward PyTorch loop does.
- ``fast``: the network cast to ``--fast-precision``, channels-last, ``--tile-batch`` tiles per pass,
  ``torch.compile`` (unless ``--no-compile``), ``cudnn.benchmark`` on.

Each case prints (and with ``--json`` appends, via scripts/bench_report.py) one JSON line: output
megapixels per second of both modes, the speed-up and the PSNR of the fast output against the
plain one (peak 1.0, unclamped; ``valid`` is false below 50 dB, e.g. when fp16 overflows: use
bf16 then). Networks have seeded random weights and the input is seeded noise, or ``--image``
resized; the speed does not depend on the weights. Warm-up passes (which also compile) are not timed.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a plain script from a clone
    sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from data.image_io import img2tensor, read_image  # noqa: E402
from scripts.bench_report import emit  # noqa: E402
from utils.device import select_device  # noqa: E402
from utils.registry import ARCH_REGISTRY  # noqa: E402
from utils.tiling import DEFAULT_TILE_OVERLAP, tile_forward  # noqa: E402

# name → (network_g, scale). RRDBNet: the standard ESRGAN x4 generator; EDSR-M: the 16-block,
# 64-feature "medium" EDSR; ParagonSR2 S as options/train/ParagonSR2/2xParagonSR2_S_*.yml builds it.
NETS: dict[str, tuple[dict, int]] = {
    "rrdbnet": ({"type": "RRDBNet", "num_feat": 64, "num_block": 23, "num_grow_ch": 32}, 4),
    "edsr-m": ({"type": "EDSR", "num_feat": 64, "num_block": 16}, 2),
    "paragonsr2-s": ({"type": "ParagonSR2", "variant": "s"}, 2),
}
PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
MIN_PSNR = 50.0


def build_net(name: str, seed: int = 0) -> tuple[nn.Module, int]:
    """A seeded, randomly initialised network from :data:`NETS` (CPU, float32, eval mode)."""
    if name not in NETS:
        raise ValueError(f"unknown net {name!r}; choose from {', '.join(NETS)}")
    opt, scale = NETS[name]
    kwargs = {k: v for k, v in opt.items() if k != "type"}
    torch.manual_seed(seed)
    return ARCH_REGISTRY.get(opt["type"])(**kwargs, scale=scale).eval(), scale


def parse_size(text: str) -> tuple[int, int]:
    """``"1920x1080"`` → (width, height)."""
    w, sep, h = text.lower().partition("x")
    if not sep or not w.isdigit() or not h.isdigit() or int(w) < 1 or int(h) < 1:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected WIDTHxHEIGHT, e.g. 1920x1080")
    return int(w), int(h)


def make_input(width: int, height: int, image: str | None, seed: int = 0) -> Tensor:
    """(1, 3, H, W) float32 in [0, 1]: ``image`` resized (area/cubic), else seeded uniform noise."""
    if image is None:
        return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(seed))
    img = read_image(image)
    interp = cv2.INTER_AREA if img.shape[0] * img.shape[1] > width * height else cv2.INTER_CUBIC
    return img2tensor(cv2.resize(img, (width, height), interpolation=interp).clip(0, 1)).unsqueeze(0)


def plain_runner(net: nn.Module, scale: int, tile: int, overlap: int) -> Callable[[Tensor], Tensor]:
    """fp32, tile_batch 1, contiguous layout, eager: the baseline."""
    def run(lq: Tensor) -> Tensor:
        return tile_forward(net, lq, scale, tile, overlap, 1)

    return run


def fast_runner(net: nn.Module, scale: int, tile: int, overlap: int, dtype: torch.dtype, tile_batch: int,
                compile_net: bool) -> Callable[[Tensor], Tensor]:
    """The network cast to ``dtype`` (weights, not autocast), channels-last, batched and compiled."""
    fast = net.to(dtype=dtype, memory_format=torch.channels_last)
    # dynamic=False: every tile has one size, only the last batch may be shorter, so at most two
    # static graphs (both built during the warm-up) beat one shape-generic graph.
    fast = torch.compile(fast, dynamic=False) if compile_net else fast

    def fn(x: Tensor) -> Tensor:
        return fast(x.contiguous(memory_format=torch.channels_last))

    def run(lq: Tensor) -> Tensor:
        return tile_forward(fn, lq.to(dtype), scale, tile, overlap, tile_batch)

    return run


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_mode(run: Callable[[Tensor], Tensor], lq: Tensor, iters: int, warmup: int) -> tuple[Tensor, float]:
    """(output, seconds per image) after ``warmup`` untimed passes; CUDA work is waited for."""
    out = None
    for _ in range(warmup):
        out = run(lq)
    _sync(lq.device)
    start = time.perf_counter()
    for _ in range(iters):
        out = run(lq)
    _sync(lq.device)
    return out, (time.perf_counter() - start) / iters


def psnr(a: Tensor, b: Tensor) -> float:
    """PSNR of ``a`` against ``b`` with peak 1.0, unclamped (an overflow must not hide behind a clamp)."""
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    if not math.isfinite(mse):
        return -math.inf
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def _tile_count(width: int, height: int, tile: int, overlap: int) -> int:
    """How many windows tile_forward cuts (counted by running it on a cheap stand-in)."""
    calls = []

    def fn(x: Tensor) -> Tensor:
        calls.append(x.shape[0])
        return x.new_zeros(x.shape[0], 1, x.shape[2], x.shape[3])

    tile_forward(fn, torch.zeros(1, 1, height, width), 1, tile, overlap)
    return len(calls)


@torch.inference_mode()
def bench_case(name: str, size: tuple[int, int], args: argparse.Namespace, device: torch.device) -> dict:
    """Both modes on one network and input size; the result dict emitted as a JSON line."""
    width, height = size
    net, scale = build_net(name)
    net = net.to(device)
    lq = make_input(width, height, args.image).to(device)
    out_mp = width * scale * height * scale / 1e6

    torch.backends.cudnn.benchmark = False
    plain_out, plain_s = time_mode(plain_runner(net, scale, args.tile, args.tile_overlap), lq, args.iters,
                                   args.warmup)
    plain_out = plain_out.float()
    torch.backends.cudnn.benchmark = True  # fixed tile shapes: let cuDNN pick the fastest kernels
    runner = fast_runner(copy.deepcopy(net), scale, args.tile, args.tile_overlap, PRECISIONS[args.fast_precision],
                         args.tile_batch, args.compile)
    fast_out, fast_s = time_mode(runner, lq, args.iters, args.warmup)
    torch.backends.cudnn.benchmark = False
    quality = psnr(fast_out.float(), plain_out)
    return {
        "bench": "inference", "net": name, "network_g": NETS[name][0], "scale": scale,
        "input": f"{width}x{height}", "output_mp": out_mp, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "tile": args.tile, "tile_overlap": args.tile_overlap,
        "tiles": _tile_count(width, height, args.tile, args.tile_overlap),
        "plain": {"precision": "fp32", "tile_batch": 1, "channels_last": False, "compile": False,
                  "s_per_image": plain_s, "output_mp_per_s": out_mp / plain_s},
        "fast": {"precision": args.fast_precision, "tile_batch": args.tile_batch, "channels_last": True,
                 "compile": args.compile, "s_per_image": fast_s, "output_mp_per_s": out_mp / fast_s},
        "plain_mp_per_s": out_mp / plain_s, "fast_mp_per_s": out_mp / fast_s, "speedup": plain_s / fast_s,
        "psnr_fast_vs_plain": quality if math.isfinite(quality) else None,
        "valid": quality >= MIN_PSNR, "finite": bool(torch.isfinite(fast_out).all()),
        "tf32_conv": torch.backends.cudnn.allow_tf32 if device.type == "cuda" else None,
        "iters": args.iters, "warmup": args.warmup, "torch": torch.__version__,
    }


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nets", type=_csv, default=list(NETS), help=f"comma list of {', '.join(NETS)}")
    parser.add_argument("--sizes", type=lambda s: [parse_size(x) for x in _csv(s)],
                        default=[(512, 512), (1920, 1080)], help="comma list of LR input sizes WxH")
    parser.add_argument("--tile", type=int, default=512, help="LR tile size (tile_forward's stride)")
    parser.add_argument("--tile-overlap", type=int, default=DEFAULT_TILE_OVERLAP)
    parser.add_argument("--tile-batch", type=int, default=4, help="tiles per forward pass in the fast mode")
    parser.add_argument("--fast-precision", choices=sorted(PRECISIONS), default="fp16",
                        help="fast mode dtype (bf16 where fp16 overflows)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="torch.compile the fast mode's network")
    parser.add_argument("--iters", type=int, default=3, help="timed passes per mode")
    parser.add_argument("--warmup", type=int, default=2, help="untimed passes first (compile, cuDNN autotune)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--image", default=None, help="resize this image instead of seeded noise")
    parser.add_argument("--json", help="append the results as JSON lines to this file")
    args = parser.parse_args(argv)
    unknown = [n for n in args.nets if n not in NETS]
    if unknown:
        parser.error(f"unknown net(s) {unknown}; choose from {', '.join(NETS)}")
    if args.iters < 1 or args.warmup < 1:
        parser.error("--iters and --warmup must be >= 1 (the warm-up also compiles)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = select_device(args.device)
    for name in args.nets:
        for size in args.sizes:
            result = bench_case(name, size, args, device)
            emit(result, args.json)
            quality = result["psnr_fast_vs_plain"]
            flag = "" if result["valid"] else f"  INVALID: PSNR below {MIN_PSNR} dB"
            print(f"{name} {result['input']} ({result['tiles']} tiles): plain {result['plain_mp_per_s']:.3g} MP/s, "
                  f"fast {result['fast_mp_per_s']:.3g} MP/s, x{result['speedup']:.2f}, PSNR "
                  f"{'n/a' if quality is None else f'{quality:.1f}'} dB{flag}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
