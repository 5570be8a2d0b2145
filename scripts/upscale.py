"""Upscale an image, a folder of images or a video with a trained network.

    python scripts/upscale.py -i INPUT -o OUTPUT --model FILE [--arch NAME] [--arch-opt key=value ...]
        [--scale N] [--tile N --tile-overlap N --tile-batch N] [--tta] [--precision fp32|fp16|bf16 | --half]
        [--channels-last] [--compile] [--device auto|cpu|cuda|mps]
        [--frame-batch N] [--fourcc CODE] [--log-every N]

Without ``--arch`` the architecture and its options come from the file's metadata (every weight
file upforge writes describes its network) or are inferred from the weights (RRDBNet, EDSR).
A folder input gives a folder output with the same file names as PNG. Output is 8-bit PNG, or
16-bit when the input file was 16-bit. Alpha is dropped and grayscale becomes RGB for 3-band
networks. ``--precision`` casts the network and its input to that dtype; ``--half`` is short for
float16 on CUDA / MPS and bfloat16 on the CPU (CPU float16 convolutions are slow or missing).
``--tile`` runs overlapping, feathered tiles (``--tile-batch`` of them per forward pass);
``--channels-last`` and ``--compile`` (torch.compile; slow to compile on the CPU) are speed
options. docs/inference.md explains the choices. The weights prefer ``params_ema`` over ``params``.

A video input (``.mp4 .mov .avi .mkv .webm``) is read frame by frame through OpenCV, each frame goes
through the same path as an image (tiles, TTA, precision; ``--frame-batch`` frames per pass) and
the result is written to a video of the same frame rate and ``scale`` times the frame size. The
codec follows the output's extension (``VIDEO_CODECS``; ``--fourcc`` overrides it): .mkv is FFV1,
lossless, the one to pick for pixel art; .mp4 / .mov mp4v and .avi MJPG are lossy. Audio is not
carried over. docs/tools.md has the details.
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
from collections.abc import Callable, Iterator, Sequence
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


# Output codec per extension, each checked to write and read back with this OpenCV (FFmpeg backend).
# FFV1 is lossless (pixel art keeps its hard edges); mp4v (MPEG-4 part 2) and MJPG blur them.
# H.264 ('avc1') is missing from the pip OpenCV wheels, so it is not offered by default.
VIDEO_CODECS = {".mkv": "FFV1", ".avi": "MJPG", ".mp4": "mp4v", ".mov": "mp4v", ".webm": "VP80"}
DEFAULT_FPS = 25.0  # for streams that do not state a frame rate


def is_video(path: str | Path) -> bool:
    """True for the file extensions handled as video (``VIDEO_CODECS``)."""
    return Path(path).suffix.lower() in VIDEO_CODECS


def _video_output(src: Path, dst: Path) -> Path:
    """The output file for input video ``src``: ``dst`` when it names a video file, else ``dst/<src name>``."""
    if not src.is_file():
        raise FileNotFoundError(f"input '{src}' does not exist")
    return dst if is_video(dst) and not dst.is_dir() else dst / src.name


def open_video(path: Path) -> tuple[cv2.VideoCapture, float, int]:
    """An opened capture of ``path``, its frame rate and its frame count as the container states it
    (0 when unknown; only used for progress lines)."""
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"video '{path}': OpenCV cannot open it (not a video, or a codec this OpenCV build lacks)")
    fps = capture.get(cv2.CAP_PROP_FPS)
    if not fps or not np.isfinite(fps) or fps <= 0:
        get_logger().warning(f"video '{path}' states no frame rate; writing {DEFAULT_FPS} frames/s")
        fps = DEFAULT_FPS
    return capture, float(fps), max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)


def open_video_writer(path: Path, fps: float, size: tuple[int, int], fourcc: str | None = None) -> cv2.VideoWriter:
    """A VideoWriter for BGR frames of ``size`` (width, height); the codec from the extension unless given."""
    code = fourcc or VIDEO_CODECS.get(path.suffix.lower())
    if code is None or len(code) != 4:
        raise ValueError(f"video output '{path}': no codec; use one of {', '.join(VIDEO_CODECS)} or a 4-letter "
                         f"--fourcc (got {code!r})")
    writer = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*code), fps, size)
    if not writer.isOpened():
        raise ValueError(f"video output '{path}': OpenCV cannot write codec '{code}' at {size[0]}x{size[1]} into "
                         f"a {path.suffix} file; try another extension ({', '.join(VIDEO_CODECS)}) or --fourcc")
    return writer


def read_frames(capture: cv2.VideoCapture, batch: int) -> Iterator[list[np.ndarray]]:
    """The capture's BGR uint8 frames in lists of ``batch`` (the last may be shorter)."""
    frames: list[np.ndarray] = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
        if len(frames) == batch:
            yield frames
            frames = []
    if frames:
        yield frames


def frames_to_tensor(frames: Sequence[np.ndarray]) -> torch.Tensor:
    """BGR uint8 frames → an N x 3 x H x W float32 RGB batch in [0, 1], the values ``read_image`` +
    ``img2tensor`` give an 8-bit image file (level / 255 in float32)."""
    rgb = np.stack([f[:, :, ::-1] for f in frames]).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(rgb)).float().div_(255.0)


def tensor_to_frames(out: torch.Tensor) -> list[np.ndarray]:
    """An N x 3 x H x W float batch → BGR uint8 frames, clipped and rounded as ``write_image`` rounds."""
    return [np.round(tensor2img(img[None]).astype(np.float64) * 255).astype(np.uint8)[:, :, ::-1].copy()
            for img in out]


def upscale_video(src: Path, dst: Path, forward: Callable[[torch.Tensor], torch.Tensor], scale: int,
                  device: torch.device, dtype: torch.dtype, frame_batch: int = 1, fourcc: str | None = None,
                  log_every: int = 100) -> Path:
    """Upscale every frame of ``src`` with ``forward`` (an NCHW float batch on ``device`` in ``dtype``
    → float32 output) into the video ``dst``: same frame rate, ``scale`` times the size, no audio.

    The video is written to ``<stem>.partial<ext>`` first and renamed when complete, so a failed
    run leaves no file that looks finished.
    """
    capture, fps, total = open_video(src)
    partial = dst.with_name(f"{dst.stem}.partial{dst.suffix}")
    writer, size, done, start = None, None, 0, time.perf_counter()
    try:
        for frames in read_frames(capture, frame_batch):
            if size is None:
                size = frames[0].shape[:2]
            if any(f.shape[:2] != size for f in frames):
                raise ValueError(f"video '{src}': frame size changes near frame {done} ({size} before)")
            out = forward(frames_to_tensor(frames).to(device, dtype))
            expected = (len(frames), 3, size[0] * scale, size[1] * scale)
            if tuple(out.shape) != expected:
                raise ValueError(f"video '{src}': the network gave {tuple(out.shape)} for {len(frames)} frame(s) of "
                                 f"{size[1]}x{size[0]}, expected {expected} (3 channels, x{scale})")
            if writer is None:
                partial.parent.mkdir(parents=True, exist_ok=True)
                writer = open_video_writer(partial, fps, (expected[3], expected[2]), fourcc)
            for frame in tensor_to_frames(out):
                writer.write(frame)
            done, before = done + len(frames), done
            if log_every > 0 and done // log_every > before // log_every:
                _log_progress(src, done, total, time.perf_counter() - start)
    except BaseException:
        capture.release()
        if writer is not None:
            writer.release()
        partial.unlink(missing_ok=True)
        raise
    capture.release()
    if writer is None:
        raise ValueError(f"video '{src}': no frame could be decoded (empty or corrupt file)")
    writer.release()
    partial.replace(dst)
    _log_progress(src, done, total, time.perf_counter() - start)
    return dst


def _log_progress(src: Path, done: int, total: int, seconds: float) -> None:
    of = f" of {total}" if total else ""  # the container's count can be approximate
    get_logger().info(f"{src.name}: {done}{of} frames, {done / max(seconds, 1e-9):.2f} frames/s")


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
    frame_batch: int = 1,
    fourcc: str | None = None,
    log_every: int = 100,
) -> list[Path]:
    """Upscale one image, every image of a folder, or a video; returns the written files.

    ``precision`` (fp32 / fp16 / bf16) wins over ``half`` (fp16 on CUDA / MPS, bf16 on the CPU);
    the output is converted to float32 before it is written either way. Video only:
    ``frame_batch`` frames per forward pass, ``fourcc`` the output codec (default from the output's
    extension, ``VIDEO_CODECS``), a progress line every ``log_every`` frames (0: only at the end).
    """
    for name, value in (("tile_batch", tile_batch), ("frame_batch", frame_batch)):  # before any work
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    video = is_video(input) and not Path(input).is_dir()
    pairs = [(Path(input), _video_output(Path(input), Path(output)))] if video else _plan(Path(input), Path(output))
    dev = select_device(device)
    dtype = resolve_precision(precision, half, dev)
    net, kwargs = build_model(model, arch, arch_opts, scale, param_key)
    in_ch = kwargs.get("num_in_ch", inspect.signature(type(net)).parameters["num_in_ch"].default)
    run = prepare_network(net, dev, dtype, channels_last, compile_net)

    def forward(lq: torch.Tensor) -> torch.Tensor:
        return run_model(run, lq, kwargs["scale"], tile, tile_overlap, tta, tile_batch, channels_last)

    if video:
        if in_ch != 3:
            raise ValueError(f"{input}: video frames are 3-channel colour, the network takes {in_ch} channel(s)")
        src, dst = pairs[0]
        return [upscale_video(src, dst, forward, kwargs["scale"], dev, dtype, frame_batch, fourcc, log_every)]
    written = []
    for src, dst in pairs:
        img = read_image(src, keep_channels=in_ch != 3)
        if img.shape[2] != in_ch:
            raise ValueError(f"{src}: image has {img.shape[2]} channel(s), the network takes {in_ch}")
        lq = img2tensor(img).unsqueeze(0).to(dev, dtype)
        write_image(dst, tensor2img(forward(lq).float()), bit_depth=_bit_depth(src))
        written.append(dst)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-i", "--input", required=True, help="image file, folder or video file")
    parser.add_argument("-o", "--output", required=True, help="output image file, folder or video file")
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
    parser.add_argument("--frame-batch", type=int, default=1, help="video: frames per forward pass")
    parser.add_argument("--fourcc", default=None,
                        help=f"video: output codec (default by extension: "
                             f"{', '.join(f'{k} {v}' for k, v in VIDEO_CODECS.items())})")
    parser.add_argument("--log-every", type=int, default=100, help="video: a progress line every N frames")
    args = parser.parse_args(argv)
    logger = setup_logger()
    try:
        written = upscale(
            args.input, args.output, args.model, arch=args.arch, arch_opts=parse_arch_opts(args.arch_opt),
            scale=args.scale, tile=args.tile, tile_overlap=args.tile_overlap, tta=args.tta, half=args.half,
            device=args.device, param_key=args.param_key, tile_batch=args.tile_batch, precision=args.precision,
            channels_last=args.channels_last, compile_net=args.compile, frame_batch=args.frame_batch,
            fourcc=args.fourcc, log_every=args.log_every,
        )
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        get_logger().error(str(err))
        return 1
    for path in written:
        logger.info(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
