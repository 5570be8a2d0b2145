"""Upscale an image or a folder of images with a trained network.

    python scripts/upscale.py -i INPUT -o OUTPUT --model FILE [--arch NAME] [--arch-opt key=value ...]
        [--scale N] [--tile N --tile-overlap N] [--tta] [--half] [--device auto|cpu|cuda|mps]

Without ``--arch`` the architecture and its options come from the file's metadata (every weight
file upforge writes describes its network) or are inferred from the weights (RRDBNet, EDSR).
A folder input gives a folder output with the same file names as PNG. Output is 8-bit PNG, or
16-bit when the input file was 16-bit. Alpha is dropped and grayscale becomes RGB for 3-band
networks. ``--half`` runs in float16 on CUDA / MPS and in bfloat16 on the CPU (CPU float16
convolutions are slow or missing). The weights prefer ``params_ema`` over ``params``.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Sequence
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
from utils.tiling import tile_forward  # noqa: E402
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


def run_model(
    net: nn.Module,
    lq: torch.Tensor,
    scale: int,
    tile: int = 0,
    tile_overlap: int = 16,
    tta: bool = False,
) -> torch.Tensor:
    """Forward an NCHW batch, optionally over overlapped tiles and with 8-way TTA."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        return tile_forward(net, x, scale, tile, tile_overlap) if tile > 0 else net(x)

    with torch.inference_mode():
        return tta_forward(forward, lq) if tta else forward(lq)


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
    tile_overlap: int = 16,
    tta: bool = False,
    half: bool = False,
    device: str = "auto",
    param_key: str = "params_ema",
) -> list[Path]:
    """Upscale one image or every image of a folder; returns the written files."""
    pairs = _plan(Path(input), Path(output))
    dev = select_device(device)
    net, kwargs = build_model(model, arch, arch_opts, scale, param_key)
    dtype = torch.float32
    if half:
        dtype = torch.bfloat16 if dev.type == "cpu" else torch.float16
    net = net.to(dev, dtype)
    in_ch = kwargs.get("num_in_ch", inspect.signature(type(net)).parameters["num_in_ch"].default)
    written = []
    for src, dst in pairs:
        img = read_image(src, keep_channels=in_ch != 3)
        if img.shape[2] != in_ch:
            raise ValueError(f"{src}: image has {img.shape[2]} channel(s), the network takes {in_ch}")
        lq = img2tensor(img).unsqueeze(0).to(dev, dtype)
        out = run_model(net, lq, kwargs["scale"], tile, tile_overlap, tta)
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
    parser.add_argument("--tile-overlap", type=int, default=16)
    parser.add_argument("--tta", action="store_true", help="8-way flip/rotate averaging")
    parser.add_argument("--half", action="store_true", help="fp16 on CUDA/MPS, bf16 on CPU")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--param-key", default="params_ema", help="checkpoint entry to prefer")
    args = parser.parse_args(argv)
    logger = setup_logger()
    try:
        written = upscale(
            args.input, args.output, args.model, args.arch, parse_arch_opts(args.arch_opt), args.scale,
            args.tile, args.tile_overlap, args.tta, args.half, args.device, args.param_key,
        )
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        get_logger().error(str(err))
        return 1
    for path in written:
        logger.info(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
