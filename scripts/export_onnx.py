"""Export a trained generator to ONNX and check the file against PyTorch with onnxruntime.

    python scripts/export_onnx.py --model W -o OUT.onnx [--arch NAME] [--arch-opt key=value ...]
        [--scale N] [--fp16] [--opset N] [--static H W] [--check-image PATH] [--check-size N]
        [--tolerance T] [--device auto|cpu|cuda|mps]

The network is rebuilt as ``scripts/upscale.py`` does it: from the weight file's metadata, or
``--arch`` / ``--arch-opt``, or inferred (RRDBNet, EDSR). The graph takes one NCHW float input
named ``input`` (RGB, values 0..1) and gives ``output`` (NCHW, scale x the size); batch,
height and width are dynamic unless ``--static H W`` fixes the input to 1xCxHxW. ``--fp16``
writes a float16 graph (float16 input and output). The file's metadata_props describe the
network (arch, options, scale, channels, precision).

Before the file is written under its name, onnxruntime runs it on a real image (by default a
crop of a CC0 pixel-art image shipped in ``datasets/``, with odd sides unlike the traced size)
and its output is compared with the PyTorch float32 output of the same network: the largest
absolute difference and the PSNR between the two are reported, and a difference above
``--tolerance`` stops the export with exit code 1 and no file. Needs
``pip install onnx onnxruntime onnxscript``.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a plain script from a clone
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from data.image_io import img2tensor, read_image  # noqa: E402
from scripts.upscale import build_model, parse_arch_opts  # noqa: E402
from utils.device import select_device  # noqa: E402
from utils.logger import get_logger, setup_logger  # noqa: E402
from utils.registry import ARCH_REGISTRY  # noqa: E402
from utils.weights import arch_from_metadata, atomic_write, network_metadata, read_metadata  # noqa: E402

# Opset 18 is the lowest the dynamo exporter writes itself (lower ones go through the ONNX
# version converter, which has no Pad adapter below 18, so ParagonSR2 and padded RRDBNet fail);
# onnxruntime reads it from 1.14 on, so older chaiNNer installs load the files too.
DEFAULT_OPSET = 18
# Bounds on max |onnx − torch fp32| on 0..1 images. fp32: a quarter of an 8-bit level, so the
# saved image cannot change by more than one level. fp16: float16 keeps 11 significant bits and
# deep nets accumulate that rounding; the real Real-ESRGAN anime 6B weights reach 1.25e-2 at the
# worst pixel of a sharp pixel-art crop (PSNR 67 dB), so 5e-2 (13 8-bit levels at one pixel)
# passes honest float16 rounding and still stops a broken graph (wrong padding, a lost branch).
DEFAULT_TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2}
DEFAULT_CHECK_IMAGE = ROOT / "datasets" / "pixelart_demo" / "val" / "tinytown_preview_crop.png"
DEFAULT_CHECK_SIZE = 64
# The example input traced for a dynamic export; the parity check uses another (odd) size.
TRACE_HW = (32, 48)
INSTALL_HINT = "pip install onnx onnxruntime onnxscript"


class MissingDependencyError(ImportError):
    """onnx, onnxscript or onnxruntime is not installed."""


class ParityError(RuntimeError):
    """The ONNX file's output differs from PyTorch's by more than the tolerance."""


@dataclass(frozen=True)
class Parity:
    """onnxruntime against PyTorch float32 on one input.

    ``max_abs_diff`` over the raw outputs (inf when onnxruntime gave a non-finite value);
    ``psnr`` in dB between both outputs clipped to [0, 1] as they would be saved (inf when equal).
    """

    max_abs_diff: float
    psnr: float
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    onnx_dtype: str


# ---------------------------------------------------------------- dependencies and arch


def require_onnx() -> None:
    """Raise :class:`MissingDependencyError` naming what to install when the ONNX stack is absent."""
    if tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) < (2, 6):
        # torch.onnx.export(dynamo=True) with dynamic_shapes is the torch.export-based exporter of 2.6+.
        raise MissingDependencyError(f"ONNX export needs PyTorch 2.6 or newer (this is {torch.__version__})")
    missing = []
    for module in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        names = ", ".join(missing)
        raise MissingDependencyError(f"ONNX export needs {names}, which {verb} not installed: {INSTALL_HINT}")


def generator_class(name: str) -> type[nn.Module]:
    """The registered arch ``name``; a clear ValueError for a discriminator or other non-generator.

    Generators declare ``valid_scales`` (see ``archs/``); discriminators do not.
    """
    cls = ARCH_REGISTRY.get(name)  # RegistryError (a KeyError) with close matches if unknown
    if not hasattr(cls, "valid_scales"):
        generators = sorted(n for n, c in ARCH_REGISTRY.items() if hasattr(c, "valid_scales"))
        raise ValueError(
            f"arch {cls.__name__} is not an image-to-image generator (a discriminator?) and cannot be "
            f"exported; generators: {', '.join(generators)}"
        )
    return cls


def described_arch(model_path: str | Path, arch: str | None) -> str | None:
    """The arch name ``build_model`` will use when it is known before loading: ``--arch`` or metadata."""
    if arch:
        return arch
    section = arch_from_metadata(read_metadata(model_path))
    return None if section is None else str(section["type"])


def _option_value(cls: type, key: str, kwargs: Mapping) -> object:
    """``kwargs[key]``, else the constructor's default for it (None if it has no such option)."""
    if key in kwargs:
        return kwargs[key]
    param = inspect.signature(cls).parameters.get(key)
    return None if param is None else param.default


# ---------------------------------------------------------------- export


class PadToMultiple(nn.Module):
    """Pad H and W up to a multiple outside the network, crop the output back to ``scale`` x size.

    RRDBNet x2 / x1 pad their input (when a side does not divide by the pixel-unshuffle factor)
    behind a Python ``if`` on the size. Exporters trace one branch of it, the one the example
    input takes, and the graph then rejects every size that needed the other. Padding here
    unconditionally (by 0 when the side already divides) keeps one graph valid for every size;
    the network's own test then never finds anything to pad. Reflect padding matches what the
    network itself does for sides of at least ``multiple`` pixels.
    """

    def __init__(self, net: nn.Module, multiple: int, scale: int) -> None:
        super().__init__()
        self.net = net
        self.multiple = multiple
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (-w) % self.multiple, 0, (-h) % self.multiple), mode="reflect")
        return self.net(x)[..., : h * self.scale, : w * self.scale]


def size_multiple(net: nn.Module) -> int:
    """The multiple the network pads its input to internally (RRDBNet's ``unshuffle``), else 1."""
    return int(getattr(net, "unshuffle", 1))


def _exportable(net: nn.Module, scale: int) -> nn.Module:
    multiple = size_multiple(net)
    return PadToMultiple(net, multiple, scale).eval() if multiple > 1 else net


def _oldest_ir_version(opset: int) -> int:
    """The oldest ONNX IR version that knows ``opset`` (onnx's release table).

    The exporter stamps the newest IR version onnx knows; runtimes refuse files whose IR version
    is newer than theirs, even when nothing in the graph needs it.
    """
    import onnx

    fitting = [ir for _release, ir, ai_onnx, *_ in onnx.helper.VERSION_TABLE if ai_onnx >= opset]
    return min(fitting) if fitting else onnx.IR_VERSION


def _opset_of(proto) -> int:
    return next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))


def export_onnx(
    net: nn.Module,
    out_path: str | Path,
    *,
    fp16: bool = False,
    opset: int = DEFAULT_OPSET,
    static_hw: tuple[int, int] | None = None,
    scale: int | None = None,
    num_in_ch: int | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``net`` (an image-to-image generator) to ``out_path`` as ONNX; returns the path.

    Input ``input`` and output ``output``, NCHW, float32 (float16 with ``fp16``). Batch, height and
    width are dynamic; ``static_hw=(H, W)`` fixes the input to 1 x C x H x W instead. ``scale`` and
    ``num_in_ch`` default to the network's attributes / constructor defaults. ``metadata`` (string
    pairs) goes into the model's metadata_props beside ``arch`` and ``precision``. ``net`` itself is
    not modified. The file is written under a temporary name and renamed, so a failure leaves none.

    The dynamo exporter (``torch.onnx.export(dynamo=True)``, through torch.export and onnxscript)
    is used: with dynamic height and width the TorchScript exporter (``dynamo=False``) fails on
    ParagonSR2 (its fixed depthwise filters are expanded to the channel count, "convolution for
    kernel of unknown shape") and is deprecated; the dynamo exporter handles every arch here.
    """
    require_onnx()
    import onnx
    from torch.export import Dim

    cls = type(net)
    scale = int(scale if scale is not None else getattr(net, "scale", 1))
    in_ch = int(num_in_ch if num_in_ch is not None else _option_value(cls, "num_in_ch", {}) or 3)
    dtype = torch.float16 if fp16 else torch.float32
    model = _exportable(copy.deepcopy(net).to("cpu", dtype).eval(), scale)
    if static_hw is not None:
        h, w = static_hw
        if h < 1 or w < 1:
            raise ValueError(f"--static: height and width must be ≥ 1, got {h} x {w}")
        example = torch.rand(1, in_ch, h, w, dtype=dtype)
        dynamic_shapes = None
    else:
        example = torch.rand(2, in_ch, *TRACE_HW, dtype=dtype)
        dynamic_shapes = ({0: Dim("batch"), 2: Dim("height"), 3: Dim("width")},)
    program = torch.onnx.export(
        model, (example,), None, dynamo=True, opset_version=opset, input_names=["input"],
        output_names=["output"], dynamic_shapes=dynamic_shapes, optimize=True, verbose=False,
    )
    proto = program.model_proto
    written_opset = _opset_of(proto)
    if written_opset != opset:  # the exporter falls back to its own opset when conversion fails
        raise ValueError(
            f"{cls.__name__} cannot be written at opset {opset} (the ONNX version converter failed; "
            f"the exporter produced opset {written_opset}); use --opset {max(written_opset, DEFAULT_OPSET)}"
        )
    proto.ir_version = min(proto.ir_version, _oldest_ir_version(opset))
    precision = "fp16" if fp16 else "fp32"
    bands = "RGB" if in_ch == 3 else f"{in_ch} bands"
    props = {**dict(metadata or {}), "arch": cls.__name__, "precision": precision, "scale": str(scale),
             "num_in_ch": str(in_ch), "input": f"NCHW {bands} 0..1", "producer": "upforge scripts/export_onnx.py"}
    onnx.helper.set_model_props(proto, {k: str(v) for k, v in props.items()})
    proto.doc_string = (
        f"{cls.__name__} x{scale}, {precision}: input 'input' N x {in_ch} x H x W ({bands}, 0..1), "
        f"output 'output' N x C x {scale}H x {scale}W"
    )
    onnx.checker.check_model(proto)
    out_path = Path(out_path)
    atomic_write(out_path, lambda p: onnx.save_model(proto, p))
    return out_path


def onnx_metadata(arch: str, kwargs: Mapping, num_in_ch: int, num_out_ch: int) -> dict[str, str]:
    """metadata_props for an exported network: the weight-file metadata (arch section as JSON,
    scale, channels, upforge version) with the channel counts always filled in."""
    section = {"type": arch, **kwargs}
    meta = network_metadata(section, kwargs.get("scale"))
    meta.update({"num_in_ch": str(num_in_ch), "num_out_ch": str(num_out_ch)})
    return meta


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The metadata_props of an ONNX file as a dict."""
    require_onnx()
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


# ---------------------------------------------------------------- parity


def check_input(
    path: str | Path | None,
    num_in_ch: int,
    size: int = DEFAULT_CHECK_SIZE,
    static_hw: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, str]:
    """The 1 x C x H x W float32 input of the parity check and a description of it.

    A central crop of the image, (size − 1) x (size + 1): odd and not square, so padding paths
    and the two spatial axes are exercised at a size other than the traced one; ``size`` 0 takes
    the whole image. With ``static_hw`` the crop is exactly that size (the image is mirrored if
    smaller). Bands are repeated or dropped to ``num_in_ch`` (the check compares two runtimes;
    the content needs to be realistic, not the bands). Without ``path`` the image shipped in
    ``datasets/`` is used, or a synthetic one if it is not there.
    """
    if path is None and not DEFAULT_CHECK_IMAGE.is_file():
        img, name = _synthetic_image(), "a synthetic image (the default check image is not installed)"
    else:
        path = Path(path or DEFAULT_CHECK_IMAGE)
        if not path.is_file():
            raise FileNotFoundError(f"check image not found: {path}")
        img, name = read_image(path, keep_channels=num_in_ch != 3), path.name
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] != num_in_ch:
        img = img[:, :, [i % img.shape[2] for i in range(num_in_ch)]]
    if size < 0:
        raise ValueError(f"--check-size must be ≥ 0 (0 = the whole image), got {size}")
    if static_hw is not None:
        want = static_hw
    elif size > 0:
        want = (max(size - 1, 1), size + 1)
    else:
        want = img.shape[:2]
    img = _crop_or_mirror(img, *want)
    return img2tensor(np.ascontiguousarray(img)).float().unsqueeze(0), f"{name} ({img.shape[0]}x{img.shape[1]})"


def _crop_or_mirror(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """The central h x w crop; sides shorter than asked are mirrored out first."""
    ph, pw = max(0, h - img.shape[0]), max(0, w - img.shape[1])
    if ph or pw:
        img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="symmetric")
    top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return img[top : top + h, left : left + w]


def _synthetic_image(h: int = 96, w: int = 96) -> np.ndarray:
    """Smooth colour gradients with sharp-edged squares: structure at several frequencies."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([0.5 + 0.4 * np.sin(xx / (5 + c) + yy / (7 - c)) for c in range(3)], -1)
    img[(yy // 12 + xx // 12) % 3 == 0] *= 0.5
    return img.astype(np.float32)


def _providers(device: torch.device) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.type == "cuda" and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def run_onnx(path: str | Path, lq: torch.Tensor, device: torch.device | str = "cpu") -> np.ndarray:
    """Run the ONNX file on ``lq`` (NCHW) with onnxruntime; float32 numpy output.

    The input is cast to the graph's input type (float16 files take float16).
    """
    require_onnx()
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=_providers(torch.device(device)))
    inp = session.get_inputs()[0]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    out = session.run(None, {inp.name: lq.detach().cpu().numpy().astype(dtype)})[0]
    return out.astype(np.float32)


def check_parity(
    net: nn.Module, onnx_path: str | Path, lq: torch.Tensor, device: torch.device | str = "cpu"
) -> Parity:
    """Compare the ONNX file's output on ``lq`` with ``net``'s float32 PyTorch output.

    For a float16 file this measures what matters to its users: how far it is from the trained
    network in float32, input rounding to float16 included.
    """
    device = torch.device(device)
    ref_net = copy.deepcopy(net).to(device, torch.float32).eval()  # the caller's network stays as it is
    with torch.inference_mode():
        ref = ref_net(lq.float().to(device)).float().cpu().numpy()
    out = run_onnx(onnx_path, lq, device)
    if out.shape != ref.shape:
        raise ParityError(f"{onnx_path}: onnxruntime output shape {out.shape} != PyTorch {ref.shape}")
    if not np.isfinite(out).all():
        max_diff, psnr = math.inf, -math.inf  # e.g. float16 overflow
    else:
        max_diff = float(np.abs(out - ref).max())
        mse = float(np.mean((np.clip(out, 0, 1) - np.clip(ref, 0, 1)).astype(np.float64) ** 2))
        psnr = math.inf if mse == 0 else 10 * math.log10(1.0 / mse)
    onnx_dtype = "float16" if _input_is_fp16(onnx_path) else "float32"
    return Parity(max_diff, psnr, tuple(lq.shape), tuple(out.shape), onnx_dtype)


def _input_is_fp16(path: str | Path) -> bool:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


# ---------------------------------------------------------------- command line


def _output_path(output: str | Path, model: str | Path, fp16: bool) -> Path:
    out = Path(output)
    if out.is_dir():  # a folder: name the file after the weights
        out = out / f"{Path(model).stem}{'_fp16' if fp16 else ''}.onnx"
    return out


def export_checked(
    model: str | Path,
    output: str | Path,
    arch: str | None = None,
    arch_opts: dict | None = None,
    scale: int | None = None,
    fp16: bool = False,
    opset: int = DEFAULT_OPSET,
    static_hw: tuple[int, int] | None = None,
    check_image: str | Path | None = None,
    check_size: int = DEFAULT_CHECK_SIZE,
    tolerance: float | None = None,
    device: str = "cpu",
    param_key: str = "params_ema",
) -> tuple[Path, Parity, str]:
    """Rebuild the network of ``model``, export it, check parity and only then name the file.

    Returns (file, parity, description of the check input). Raises :class:`ParityError` (no file
    written) when the difference is above ``tolerance`` (default by precision).
    """
    model = Path(model)
    if not model.is_file():
        raise FileNotFoundError(f"weights file not found: {model}")
    require_onnx()
    name = described_arch(model, arch)
    if name is not None:
        generator_class(name)
    net, kwargs = build_model(model, arch, arch_opts, scale, param_key)
    cls = generator_class(type(net).__name__)
    in_ch = int(_option_value(cls, "num_in_ch", kwargs))
    out_ch = int(_option_value(cls, "num_out_ch", kwargs))
    precision = "fp16" if fp16 else "fp32"
    bound = DEFAULT_TOLERANCE[precision] if tolerance is None else tolerance
    lq, described = check_input(check_image, in_ch, check_size, static_hw)

    out = _output_path(output, model, fp16)
    # Exported under a hidden name, renamed only once parity holds: a failed check leaves nothing.
    staging = out.with_name(f".{out.name}.unchecked")
    try:
        export_onnx(net, staging, fp16=fp16, opset=opset, static_hw=static_hw, scale=kwargs["scale"],
                    num_in_ch=in_ch, metadata=onnx_metadata(cls.__name__, kwargs, in_ch, out_ch))
        parity = check_parity(net, staging, lq, select_device(device))
        if not parity.max_abs_diff <= bound:
            raise ParityError(
                f"parity check failed: max |onnx − torch| = {parity.max_abs_diff:.3g} on {described} is above "
                f"the tolerance {bound:g} ({precision}); {out} was not written"
            )
        os.replace(staging, out)
    finally:
        staging.unlink(missing_ok=True)
    return out, parity, described


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="weights (.safetensors / .pth)")
    parser.add_argument("-o", "--output", required=True, help="ONNX file to write (or a folder)")
    parser.add_argument("--arch", default=None, help="registered arch name (default: metadata / inferred)")
    parser.add_argument("--arch-opt", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--scale", type=int, default=None)
    parser.add_argument("--fp16", action="store_true", help="float16 graph (input and output float16)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--static", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="fixed 1xCxHxW input instead of dynamic batch/height/width")
    parser.add_argument("--check-image", default=None, help="image for the parity check (default: shipped demo)")
    parser.add_argument("--check-size", type=int, default=DEFAULT_CHECK_SIZE,
                        help="parity crop about this size, odd sides (0 = whole image)")
    parser.add_argument("--tolerance", type=float, default=None,
                        help=f"max |onnx − torch| allowed (default {DEFAULT_TOLERANCE})")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda", "mps"],
                        help="where the PyTorch reference runs")
    parser.add_argument("--param-key", default="params_ema", help="checkpoint entry to prefer")
    args = parser.parse_args(argv)
    logger = setup_logger()
    try:
        out, parity, described = export_checked(
            args.model, args.output, args.arch, parse_arch_opts(args.arch_opt), args.scale, args.fp16,
            args.opset, tuple(args.static) if args.static else None, args.check_image, args.check_size,
            args.tolerance, args.device, args.param_key,
        )
    except (OSError, ImportError, ValueError, RuntimeError, KeyError) as err:
        get_logger().error(str(err))
        return 1
    meta = read_onnx_metadata(out)
    bound = DEFAULT_TOLERANCE[meta["precision"]] if args.tolerance is None else args.tolerance
    shape = "static " + "x".join(map(str, args.static)) if args.static else "dynamic batch/height/width"
    logger.info(f"wrote {out} ({meta['arch']} x{meta['scale']}, {meta['precision']}, opset {args.opset}, {shape})")
    logger.info(
        f"parity vs PyTorch fp32 on {described}: max |diff| {parity.max_abs_diff:.3g}, "
        f"PSNR {parity.psnr:.1f} dB (tolerance {bound:g})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
