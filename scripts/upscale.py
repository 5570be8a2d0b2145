"""Upscale an image or a folder of images with a trained network.

    python scripts/upscale.py -i INPUT -o OUTPUT --model FILE [--arch NAME] [--arch-opt key=value ...]
        [--scale N] [--tile N --tile-overlap N --tile-batch N] [--tta] [--precision fp32|fp16|bf16 | --half]
        [--channels-last] [--compile] [--device auto|cpu|cuda|mps]

Without ``--arch`` the architecture and its options come from the file's metadata (every weight
file upforge writes describes its network) or are inferred from the weights (RRDBNet, EDSR).
A folder input gives a folder output with the same file names as PNG. Output is 8-bit PNG, or
16-bit when the input file was 16-bit. Alpha is dropped and grayscale becomes RGB for 3-band
networks. ``--precision`` casts the network and its input to that dtype; ``--half`` is short for
float16 on CUDA / MPS and bfloat16 on the CPU (CPU float16 convolutions are slow or missing).
``--tile`` runs overlapping, feathered tiles (``--tile-batch`` of them per forward pass);
``--channels-last`` and ``--compile`` (torch.compile; slow to compile on the CPU) are speed
options. docs/inference.md explains the choices. The weights prefer ``params_ema`` over ``params``.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a plain script from a clone
    sys.path.insert(0, str(ROOT))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from torch import nn  # noqa: E402

from data.image_io import IMAGE_EXTENSIONS, img2tensor, list_images, read_image, tensor2img, write_image  # noqa: E402
from utils.device import select_device  # noqa: E402
from utils.logger import get_logger, setup_logger  # noqa: E402
from utils.registry import ARCH_REGISTRY  # noqa: E402
from utils.tiling import DEFAULT_TILE_OVERLAP, tile_forward  # noqa: E402
from utils.tta import tta_forward  # noqa: E402
from utils.weights import (  # noqa: E402
    arch_from_metadata,
    infer_arch,
    load_network,
    read_metadata,
    read_weights,
    unwrap_state_dict,
)


def parse_arch_opts(items: Sequence[str]) -> dict:
    """``["num_block=6", "residual_output=true"]`` → dict, values parsed as YAML scalars."""
    opts = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--arch-opt '{item}': expected key=value")
        opts[key.strip()] = yaml.safe_load(value)
    return opts


def build_model(
    model_path: str | Path,
    arch: str | None = None,
    arch_opts: dict | None = None,
    scale: int | None = None,
    param_key: str = "params_ema",
) -> tuple[nn.Module, dict]:
    """Build the network for ``model_path`` and load its weights strictly.

    Returns the network (CPU, eval mode) and the constructor kwargs used (``scale`` included).
    """
    raw = read_weights(model_path)
    sd = unwrap_state_dict(raw, param_key)
    described = arch_from_metadata(read_metadata(model_path))  # files upforge wrote describe themselves
    if described is not None:
        inferred_name, inferred = described.pop("type"), described
    else:
        try:
            inferred_name, inferred = infer_arch(sd, scale)
        except ValueError as err:
            if arch is None:
                raise ValueError(f"{model_path}: {err}") from err
            inferred_name, inferred = None, {}
    name = arch or inferred_name
    cls = ARCH_REGISTRY.get(name)
    params = inspect.signature(cls).parameters
    kwargs = dict(inferred) if inferred_name and inferred_name.lower() == name.lower() else {}
    if scale is not None:
        kwargs["scale"] = scale
    kwargs.update(arch_opts or {})
    unknown = sorted(k for k in kwargs if k not in params)
    if unknown:
        raise ValueError(f"arch {name}: unknown option(s) {unknown}; valid: {', '.join(params)}")
    if "scale" not in kwargs:
        kwargs["scale"] = params["scale"].default if "scale" in params else 1
    net = cls(**kwargs)
    load_network(net, sd, strict=True, param_key=param_key)
    return net.eval(), kwargs


PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def run_model(
    net: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    lq: torch.Tensor,
    scale: int,
    tile: int = 0,
    tile_overlap: int = DEFAULT_TILE_OVERLAP,
    tta: bool = False,
    tile_batch: int = 1,
    channels_last: bool = False,
) -> torch.Tensor:
    """Forward an NCHW batch, optionally over overlapped tiles and with 8-way TTA; float32 out.

    ``lq`` must already have the network's dtype and device. Each network output is made float32
    at once, so tile blending and the TTA mean never round to fp16/bf16 in between.
    """
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def net_fn(x: torch.Tensor) -> torch.Tensor:
        # Tiles are strided views (and stacked batches follow their inputs' layout): make each
        # one dense in the layout the network's weights were converted to.
        return net(x.contiguous(memory_format=fmt)).float()

    def forward(x: torch.Tensor) -> torch.Tensor:
        return tile_forward(net_fn, x, scale, tile, tile_overlap, tile_batch) if tile > 0 else net_fn(x)

    with torch.inference_mode():
        return tta_forward(forward, lq) if tta else forward(lq)


def resolve_precision(precision: str | None, half: bool, device: torch.device) -> torch.dtype:
    """The inference dtype: ``precision`` if given, else ``half``'s device-dependent choice, else fp32."""
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    # CPU float16 convolutions are slow or missing, so --half means bfloat16 there.
    half_dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
    if precision is None:
        return half_dtype if half else torch.float32
    if half and PRECISIONS[precision] != half_dtype:
        raise ValueError(f"--half means {half_dtype} on {device.type}; it contradicts --precision {precision}")
    return PRECISIONS[precision]


def prepare_network(net: nn.Module, device: torch.device, dtype: torch.dtype, channels_last: bool = False,
                    compile_net: bool = False) -> nn.Module | Callable[[torch.Tensor], torch.Tensor]:
    """Move ``net`` to ``device``, cast it to ``dtype`` (weights, not autocast), optionally in
    channels-last layout and wrapped in ``torch.compile``.

    Casting rather than autocast: inference has no master weights to keep in fp32, a cast network
    reads half the weight bytes, and autocast would re-cast every weight on every tile's forward.
    """
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(device=device, dtype=dtype, memory_format=fmt).eval()
    return torch.compile(net) if compile_net else net


def _bit_depth(path: Path) -> int:
    """16 for 16-bit PNG / TIFF files, else 8."""
    suffix = path.suffix.lower()
    if suffix == ".png":
        with open(path, "rb") as f:
            header = f.read(25)
        # IHDR bit depth lives at byte 24 of every PNG.
        return 16 if len(header) == 25 and header[24] == 16 else 8
    if suffix in (".tif", ".tiff"):
        img = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
        return 16 if img is not None and img.dtype == np.uint16 else 8
    return 8


def _plan(src: Path, dst: Path) -> list[tuple[Path, Path]]:
    """(input, output) file pairs for an image or a folder."""
    if src.is_dir():
        pairs = [(p, dst / f"{p.stem}.png") for p in list_images(src)]
        outs = [o for _, o in pairs]
        clash = sorted({o.name for o in outs if outs.count(o) > 1})
        if clash:
            raise ValueError(f"{src}: several inputs would be written to the same file(s): {clash}")
        return pairs
    if not src.is_file():
        raise FileNotFoundError(f"input '{src}' does not exist")
    if dst.is_dir() or dst.suffix.lower() not in IMAGE_EXTENSIONS:
        dst = dst / f"{src.stem}.png"
    return [(src, dst)]


def upscale(
    input: str | Path,
    output: str | Path,
    model: str | Path,
    arch: str | None = None,
    arch_opts: dict | None = None,
    scale: int | None = None,
    tile: int = 0,
    tile_overlap: int = DEFAULT_TILE_OVERLAP,
    tta: bool = False,
    half: bool = False,
    device: str = "auto",
    param_key: str = "params_ema",
    tile_batch: int = 1,
    precision: str | None = None,
    channels_last: bool = False,
    compile_net: bool = False,
) -> list[Path]:
    """Upscale one image or every image of a folder; returns the written files.

    ``precision`` (fp32 / fp16 / bf16) wins over ``half`` (fp16 on CUDA / MPS, bf16 on the CPU);
    the output is converted to float32 before it is written either way.
    """
    if isinstance(tile_batch, bool) or not isinstance(tile_batch, int) or tile_batch < 1:
        raise ValueError(f"tile_batch must be an int >= 1, got {tile_batch!r}")  # before any work
    pairs = _plan(Path(input), Path(output))
    dev = select_device(device)
    dtype = resolve_precision(precision, half, dev)
    net, kwargs = build_model(model, arch, arch_opts, scale, param_key)
    in_ch = kwargs.get("num_in_ch", inspect.signature(type(net)).parameters["num_in_ch"].default)
    run = prepare_network(net, dev, dtype, channels_last, compile_net)
    written = []
    for src, dst in pairs:
        img = read_image(src, keep_channels=in_ch != 3)
        if img.shape[2] != in_ch:
            raise ValueError(f"{src}: image has {img.shape[2]} channel(s), the network takes {in_ch}")
        lq = img2tensor(img).unsqueeze(0).to(dev, dtype)
        out = run_model(run, lq, kwargs["scale"], tile, tile_overlap, tta, tile_batch, channels_last)
        write_image(dst, tensor2img(out.float()), bit_depth=_bit_depth(src))
        written.append(dst)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-i", "--input", required=True, help="image file or folder")
    parser.add_argument("-o", "--output", required=True, help="output image file or folder")
    parser.add_argument("--model", required=True, help="weights (.safetensors / .pth)")
    parser.add_argument("--arch", default=None, help="registered arch name (default: inferred)")
    parser.add_argument("--arch-opt", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--scale", type=int, default=None)
    parser.add_argument("--tile", type=int, default=0, help="LR tile size; 0 = whole image")
    parser.add_argument("--tile-overlap", type=int, default=DEFAULT_TILE_OVERLAP,
                        help="LR context pixels discarded at each inner tile edge")
    parser.add_argument("--tile-batch", type=int, default=1, help="tiles per forward pass")
    parser.add_argument("--tta", action="store_true", help="8-way flip/rotate averaging")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default=None, help="network dtype (default fp32)")
    parser.add_argument("--half", action="store_true", help="fp16 on CUDA/MPS, bf16 on CPU")
    parser.add_argument("--channels-last", action="store_true", help="NHWC memory layout (faster convs on GPUs)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network (slow first image)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--param-key", default="params_ema", help="checkpoint entry to prefer")
    args = parser.parse_args(argv)
    logger = setup_logger()
    try:
        written = upscale(
            args.input, args.output, args.model, arch=args.arch, arch_opts=parse_arch_opts(args.arch_opt),
            scale=args.scale, tile=args.tile, tile_overlap=args.tile_overlap, tta=args.tta, half=args.half,
            device=args.device, param_key=args.param_key, tile_batch=args.tile_batch, precision=args.precision,
            channels_last=args.channels_last, compile_net=args.compile,
        )
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        get_logger().error(str(err))
        return 1
    for path in written:
        logger.info(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
