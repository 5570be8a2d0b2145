"""Reading and writing images as HWC arrays (float32 in [0, 1]), and numpy <-> torch helpers.

Image files (PNG, JPEG, TIFF, ...) are decoded with OpenCV; ``.npy`` files hold any number of
bands. A 4-D ``.npy`` is a *stack* of images: :func:`list_images` lists its items as virtual
paths ``<dir>/<name>.npy/<name>_<i>`` (see :func:`stack_item_path`), which every function here
accepts like the path of a file.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".npy")
SUPPORTED_DTYPES = (np.uint8, np.uint16, np.float32, np.float64)
_NPY_MAGIC = b"\x93NUMPY"
_TIFF_SAMPLES_PER_PIXEL = 277
_TIFF_IMAGE_WIDTH, _TIFF_IMAGE_LENGTH = 256, 257
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers, which carry the image size: C0-CF but DHT (C4), JPG (C8) and DAC (CC)
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class ImageReadError(OSError):
    """An image file that is missing, empty, corrupt or of an unsupported kind."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image '{self.path}': {reason}")

    def __reduce__(self) -> tuple:
        # Keeps the error picklable, so it crosses DataLoader worker processes intact.
        return (type(self), (self.path, self.reason))

    @classmethod
    def from_message(cls, message: str) -> ImageReadError | None:
        """The error whose ``str`` is ``message``, or None when ``message`` is not one.

        A DataLoader worker hands its errors over as text only (torch keeps the type and the
        formatted traceback), so this rebuilds the error, path and reason included, on the
        loader's side (see :func:`data.data_loader.unwrap_worker_error`).
        """
        match = re.fullmatch(r"cannot read image '(.*?)': (.*)", message, re.S)
        return cls(match.group(1), match.group(2)) if match else None


class ChannelCountError(ValueError):
    """An image whose channel count does not fit the setting it is read for.

    A ValueError, not an :class:`ImageReadError`: it is a configuration mistake, so training
    must stop on it rather than skip the file.
    """


# ---------------------------------------------------------------- stacks (4-D .npy)


def stack_item_path(stack: str | Path, index: int) -> Path:
    """The virtual path of item ``index`` of the stack file ``stack``: ``scenes.npy/scenes_3``.

    Its ``stem`` and ``name`` are the item's name (``scenes_3``), which pairs gt and lq items
    and names saved outputs; :func:`read_image` reads it like a file.
    """
    stack = Path(stack)
    return stack / f"{stack.stem}_{index}"


def split_stack_item(path: str | Path) -> tuple[Path, int] | None:
    """``(stack file, index)`` for a virtual stack-item path, None for anything else."""
    path = Path(path)
    parent = path.parent
    if parent.suffix.lower() != ".npy" or not parent.is_file():
        return None
    match = re.fullmatch(re.escape(parent.stem) + r"_(\d+)", path.name)
    return (parent, int(match.group(1))) if match else None


def is_band_file(path: str | Path) -> bool:
    """True for ``.npy`` files and stack items: their channels are bands, none of them is alpha."""
    path = Path(path)
    return path.suffix.lower() == ".npy" or split_stack_item(path) is not None


# ---------------------------------------------------------------- reading


def read_image(
    path: str | Path,
    keep_channels: bool = False,
    as_float: bool = True,
    value_scale: float | None = None,
) -> np.ndarray:
    """Read an image as an HWC array, channels in the file's order (RGB(A) for colour files).

    Scale: 8-bit files are divided by 255, 16-bit by 65535, float files are kept as stored.
    ``value_scale`` replaces that divisor (for any stored type), e.g. 10000 for Sentinel-2
    reflectance stored as uint16 0-10000; the result is then always float32.
    ``as_float=False`` (and no ``value_scale``) keeps the stored type (uint8 / uint16 / float),
    so training can crop first and convert only the patch (see :func:`to_float`); for ``.npy``
    the result may then be a read-only view of the memory-mapped file. The result is always
    C-contiguous.

    Channels: by default the result has 3 channels: gray is repeated, the alpha of an RGBA
    image file is dropped, other counts are a :class:`ChannelCountError`. With
    ``keep_channels=True`` the stored channels are kept (gray → HxWx1, RGBA → HxWx4, N bands).

    ``.npy``: a 2-D array is one band (HxW); a 3-D array is HWC or CHW: the channel axis is
    whichever of the first and last axis is smaller (a tie is an error: store HWC). dtypes
    uint8, uint16, float32, float64. Pickled/object arrays are refused, never unpickled. A 4-D
    array is a stack of images: read its items through :func:`stack_item_path`.

    TIFF goes through OpenCV, which reads 1, 3 (RGB) and 4 (RGBA) channel TIFFs only; a TIFF
    with another band count (or bands stored as gray plus extra samples, which OpenCV would
    silently reduce to one channel) is an :class:`ImageReadError` suggesting ``.npy``.
    """
    path = Path(path)
    img = _read_stored(path)
    if value_scale is not None or as_float:
        img = scale_values(img, value_scale) if value_scale is not None else to_float(img)
        if type(img) is not np.ndarray or not (img.flags.writeable and img.flags.c_contiguous):
            img = np.array(img, order="C")  # float results are plain, writable arrays (not memmap views)
    if not keep_channels:
        img = fit_channels(img, 3, path, setting="read_image's channel count",
                           fix="pass keep_channels=True to keep all {stored}")
    return np.ascontiguousarray(img)


def _read_stored(path: Path) -> np.ndarray:
    """HWC array in the file's channel order and stored dtype."""
    item = split_stack_item(path) if not path.is_file() else None
    if item is not None:
        img = _stack_item(*item)
    elif not path.is_file():
        raise ImageReadError(path, "no such file" if not path.exists() else "not a regular file")
    elif path.suffix.lower() == ".npy":
        img = _npy_image(path)
    else:
        img = _decode_with_opencv(path)
    if img.dtype not in SUPPORTED_DTYPES:
        raise ImageReadError(path, f"unsupported pixel type {img.dtype} (supported: uint8, uint16, "
                                   "float32, float64)")
    return img


def _decode_with_opencv(path: Path) -> np.ndarray:
    # np.fromfile + imdecode (rather than cv2.imread) works for non-ASCII paths on every OS
    # and lets us tell "empty" from "undecodable".
    try:
        raw = np.fromfile(str(path), dtype=np.uint8)
    except OSError as err:
        raise ImageReadError(path, str(err)) from err
    if raw.size == 0:
        raise ImageReadError(path, "file is empty")
    samples = _tiff_samples_per_pixel(raw)
    if samples is not None and samples not in (1, 3, 4):
        return _read_multiband_tiff(path, samples)
    img = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageReadError(path, "OpenCV could not decode it (corrupt or unsupported format)")
    if img.ndim == 2:
        img = img[:, :, None]
    if samples is not None and img.shape[2] != samples:
        # e.g. a 4-band GeoTIFF stored as gray + 3 extra samples, which OpenCV decodes as gray
        return _read_multiband_tiff(path, samples)
    channels = img.shape[2]
    if channels == 3:
        img = img[:, :, ::-1]  # OpenCV's BGR → the file's RGB
    elif channels == 4:
        img = img[:, :, [2, 1, 0, 3]]
    elif channels != 1:
        raise ImageReadError(path, f"unsupported channel count {channels}")
    return np.ascontiguousarray(img)


def _read_multiband_tiff(path: Path, samples: int) -> np.ndarray:
    """A TIFF OpenCV cannot read (N bands, or bands stored as gray plus extra samples, as GDAL
    writes them), through ``tifffile``: HWC in the file's band order and stored dtype."""
    try:
        import tifffile
    except ImportError as err:
        raise ImageReadError(path, f"TIFF with {samples} bands needs the tifffile package "
                                   "(pip install tifffile), or store the data as .npy") from err
    try:
        arr = tifffile.imread(str(path), key=0)
    except Exception as err:  # noqa: BLE001 - any decoder failure is reported with the file named
        raise ImageReadError(path, f"tifffile could not decode it: {err}") from err
    if arr.ndim == 2:
        arr = arr[:, :, None]
    elif arr.ndim == 3 and arr.shape[-1] != samples and arr.shape[0] == samples:
        arr = arr.transpose(1, 2, 0)  # planar (band-sequential) storage
    if arr.ndim != 3 or arr.shape[-1] != samples:
        raise ImageReadError(path, f"TIFF declares {samples} bands but decodes to shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _tiff_samples_per_pixel(raw: np.ndarray) -> int | None:
    """SamplesPerPixel of the first image of a classic TIFF; None when ``raw`` is not one.

    Read by hand because OpenCV does not report it: it rejects 5+ bands with a generic error
    and decodes 2-4 gray+extra-sample bands as a single gray channel.
    """
    ifd = _tiff_first_ifd(_bytes_reader(raw.data))
    if ifd is None:
        return None
    return _tiff_tag(*ifd, _TIFF_SAMPLES_PER_PIXEL, default=1)


ReadAt = Callable[[int, int], bytes]
"""``read_at(offset, n)``: up to ``n`` bytes of a file or buffer from ``offset`` (fewer at its end)."""


def _bytes_reader(data: bytes | memoryview) -> ReadAt:
    return lambda offset, n: bytes(data[offset : offset + n])


def _tiff_first_ifd(read_at: ReadAt) -> tuple[str, bytes] | None:
    """The byte order and the 12-byte entries of a classic TIFF's first image directory; None
    when it is not one (BigTIFF included) or the directory is cut short."""
    head = read_at(0, 8)
    order = {b"II*\0": "<", b"MM\0*": ">"}.get(head[:4])
    if len(head) < 8 or order is None:
        return None
    (offset,) = struct.unpack(order + "I", head[4:8])
    raw_count = read_at(offset, 2)
    if len(raw_count) < 2:
        return None
    (count,) = struct.unpack(order + "H", raw_count)
    entries = read_at(offset + 2, 12 * count)
    return (order, entries) if len(entries) == 12 * count else None


def _tiff_tag(order: str, entries: bytes, tag: int, default: int | None = None) -> int | None:
    """The value of a SHORT or LONG ``tag`` among ``entries``; ``default`` when the tag is absent,
    None when it holds another type."""
    for offset in range(0, len(entries), 12):
        found, kind, _ = struct.unpack_from(order + "HHI", entries, offset)
        if found == tag:
            fmt = {3: "H", 4: "I"}.get(kind)
            return struct.unpack_from(order + fmt, entries, offset + 8)[0] if fmt else None
    return default


def _load_npy(path: Path) -> np.ndarray:
    """The array of a ``.npy`` file, memory-mapped read-only; nothing is ever unpickled."""
    try:
        with open(path, "rb") as f:
            magic = f.read(len(_NPY_MAGIC))
    except OSError as err:
        raise ImageReadError(path, str(err)) from err
    if not magic:
        raise ImageReadError(path, "file is empty")
    if magic != _NPY_MAGIC:
        raise ImageReadError(path, "not a NumPy .npy file (no .npy header); pickles and other formats "
                                   "are never loaded")
    try:
        # mmap: a crop or one item of a stack reads only the pages it touches
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        if "Python objects" in str(err) or "pickle" in str(err):
            raise ImageReadError(path, "it stores Python objects (a pickled object array); only "
                                       "numeric arrays are read, never unpickled") from err
        raise ImageReadError(path, f"corrupt .npy file ({err})") from err
    except OSError as err:
        raise ImageReadError(path, f"corrupt .npy file ({err})") from err


def _to_hwc(arr: np.ndarray, path: Path | str) -> np.ndarray:
    """A 2-D (HxW) or 3-D (HWC or CHW) array as HWC: the smaller of the first and last axis
    holds the channels."""
    if arr.ndim == 2:
        return arr[:, :, None]
    first, last = arr.shape[0], arr.shape[2]
    if first == last:
        raise ImageReadError(path, f"cannot tell the channel axis of shape {arr.shape} (first and last "
                                   "axis are equal); store it as HWC (height, width, channels)")
    return arr if last < first else arr.transpose(1, 2, 0)


def _npy_image(path: Path) -> np.ndarray:
    arr = _load_npy(path)
    if arr.ndim == 4:
        raise ImageReadError(path, f"it holds a stack of {arr.shape[0]} images (shape {arr.shape}); "
                                   f"read item i as '{path / (path.stem + '_<i>')}' or give the file "
                                   "as a dataset's dataroot")
    if arr.ndim not in (2, 3):
        raise ImageReadError(path, f"expected a 2-D (HxW) or 3-D (HWC or CHW) array, got shape {arr.shape}")
    return _to_hwc(arr, path)


def _stack_item(stack: Path, index: int) -> np.ndarray:
    arr = _load_npy(stack)
    name = stack_item_path(stack, index)
    if arr.ndim != 4:
        raise ImageReadError(name, f"'{stack}' is not a stack (a 4-D array) but has shape {arr.shape}")
    if index >= arr.shape[0]:
        raise ImageReadError(name, f"the stack holds {arr.shape[0]} images, there is no item {index}")
    return _to_hwc(arr[index], name)


# ---------------------------------------------------------------- sizes without decoding


def header_size(path: str | Path, stack_shapes: dict[Path, tuple[int, ...]] | None = None) -> tuple[int, int] | None:
    """``(height, width)`` of an image read from its header, without decoding the pixels.

    PNG (IHDR), JPEG (the start-of-frame segment), BMP and classic TIFF headers are read,
    ``.npy`` files and stack items by their array header. None for anything else (WebP, ...)
    and for a file whose header is missing or damaged: reading the image names the problem.
    Cheap enough for every file of a large training set: a few small reads per file.
    ``stack_shapes``, a dict kept by the caller, remembers each stack's shape, so the items of
    a large stack do not open it one by one.
    """
    path = Path(path)
    try:
        item = split_stack_item(path) if not path.is_file() else None
        if item is not None:
            stacks = {} if stack_shapes is None else stack_shapes
            if item[0] not in stacks:
                stacks[item[0]] = _load_npy(item[0]).shape
            shape = stacks[item[0]]
            return _array_hw(shape[1:]) if len(shape) == 4 else None
        if path.suffix.lower() == ".npy":
            return _array_hw(_load_npy(path).shape)
        with open(path, "rb") as f:
            def read_at(offset: int, n: int) -> bytes:
                f.seek(offset)
                return f.read(n)

            return _size_from_header(read_at)
    except (OSError, ValueError, struct.error):  # ImageReadError is an OSError
        return None


def header_size_of_bytes(data: bytes | memoryview) -> tuple[int, int] | None:
    """:func:`header_size` for an encoded image held in memory (e.g. an LMDB value)."""
    try:
        return _size_from_header(_bytes_reader(data))
    except (ValueError, struct.error):
        return None


def _array_hw(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """``(height, width)`` of an HW, HWC or CHW array shape, by :func:`_to_hwc`'s rule."""
    if len(shape) == 2:
        return int(shape[0]), int(shape[1])
    if len(shape) != 3 or shape[0] == shape[2]:
        return None
    return (int(shape[0]), int(shape[1])) if shape[2] < shape[0] else (int(shape[1]), int(shape[2]))


def _size_from_header(read_at: ReadAt) -> tuple[int, int] | None:
    head = read_at(0, 32)
    if head.startswith(_PNG_SIGNATURE):
        return _png_size(head)
    if head.startswith(b"\xff\xd8"):
        return _jpeg_size(read_at)
    if head.startswith(b"BM"):
        return _bmp_size(head)
    if head[:4] in (b"II*\0", b"MM\0*"):
        return _tiff_size(read_at)
    return None


def _png_size(head: bytes) -> tuple[int, int] | None:
    # signature (8), chunk length (4), "IHDR" (4), width (4), height (4), big-endian
    if len(head) < 24 or head[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return _positive(height, width)


def _jpeg_size(read_at: ReadAt) -> tuple[int, int] | None:
    """Walk the marker segments from SOI to the first start-of-frame; EXIF or ICC segments before it
    are skipped by their length, not read."""
    pos = 2
    for _ in range(4096):  # a real file reaches its frame header after a few dozen segments
        head = read_at(pos, 4)
        if len(head) < 2 or head[0] != 0xFF:
            return None
        marker = head[1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
        elif marker in _JPEG_SOF:
            frame = read_at(pos + 5, 4)  # after marker (2), length (2), precision (1)
            return _positive(*struct.unpack(">HH", frame)) if len(frame) == 4 else None
        elif marker in (0xD9, 0xDA) or len(head) < 4:  # end of image / scan data before any frame
            return None
        else:
            pos += 2 + struct.unpack(">H", head[2:4])[0]
    return None


def _bmp_size(head: bytes) -> tuple[int, int] | None:
    if len(head) < 26:
        return None
    (dib,) = struct.unpack("<I", head[14:18])
    if dib == 12:  # the old OS/2 header holds 16-bit sides
        width, height = struct.unpack("<HH", head[18:22])
    else:
        width, height = struct.unpack("<ii", head[18:26])
    return _positive(abs(height), width)  # a negative height means rows stored top-down


def _tiff_size(read_at: ReadAt) -> tuple[int, int] | None:
    ifd = _tiff_first_ifd(read_at)
    if ifd is None:
        return None
    height, width = _tiff_tag(*ifd, _TIFF_IMAGE_LENGTH), _tiff_tag(*ifd, _TIFF_IMAGE_WIDTH)
    return _positive(height, width) if height is not None and width is not None else None


def _positive(height: int, width: int) -> tuple[int, int] | None:
    return (int(height), int(width)) if height > 0 and width > 0 else None


def fit_channels(
    img: np.ndarray,
    channels: int,
    path: str | Path,
    setting: str = "the dataset's channels",
    fix: str = "set channels: {stored} to use every band",
) -> np.ndarray:
    """``img`` (HWC) with exactly ``channels`` channels.

    Kept when it has them; gray (1) is repeated to 3 and the alpha of a 4-channel image file
    (RGBA) is dropped when ``channels`` is 3; a 4-band ``.npy`` has no alpha. Anything else is a
    :class:`ChannelCountError` naming the file, its channel count, ``setting`` and ``fix``
    (``{stored}`` in it becomes the file's channel count).
    """
    stored = img.shape[2]
    if stored == channels:
        return img
    if channels == 3 and stored == 1:
        return np.repeat(img, 3, axis=2)
    if channels == 3 and stored == 4 and not is_band_file(path):
        return img[:, :, :3]
    raise ChannelCountError(f"image '{path}' has {stored} channels but {setting} is {channels}; "
                            + fix.format(stored=stored))


def scale_values(img: np.ndarray, value_scale: float) -> np.ndarray:
    """The stored values divided by ``value_scale``, as float32."""
    value_scale = float(value_scale)
    if not np.isfinite(value_scale) or value_scale <= 0:
        raise ValueError(f"value_scale must be a positive number, got {value_scale}")
    return img.astype(np.float32) / np.float32(value_scale)


def to_float(img: np.ndarray) -> np.ndarray:
    """uint8 → /255, uint16 → /65535, float → float32."""
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    return img.astype(np.float32, copy=False)


# ---------------------------------------------------------------- writing


def write_image(path: str | Path, img: np.ndarray, bit_depth: int = 8) -> None:
    """Write a float HWC (or HW) image in [0, 1] with RGB(A) channel order.

    Image files: 1, 3 or 4 channels; values are clipped to [0, 1] and rounded to the nearest
    level; ``bit_depth=16`` writes a 16-bit PNG/TIFF. ``.npy``: any channel count, stored as
    float32 HWC with the values as they are (no clipping or rounding; ``bit_depth`` does not
    apply). Missing parent folders are created.
    """
    path = Path(path)
    if bit_depth not in (8, 16):
        raise ValueError(f"write_image '{path}': bit_depth must be 8 or 16, got {bit_depth}")
    img = np.asarray(img)
    if path.suffix.lower() == ".npy":
        _write_npy(path, img)
        return
    if bit_depth == 16 and path.suffix.lower() not in (".png", ".tif", ".tiff"):
        raise ValueError(f"write_image '{path}': 16-bit output needs a .png or .tif(f) file name")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    tiff = path.suffix.lower() in (".tif", ".tiff")
    if img.ndim == 3 and img.shape[2] not in (3, 4) and not tiff:
        raise ValueError(f"write_image '{path}': image files hold 1, 3 or 4 channels (gray, RGB, RGBA), "
                         f"got {img.shape[2]}; write a .tif or .npy file for N-band data")
    if img.ndim not in (2, 3):
        raise ValueError(f"write_image '{path}': expected HW or HWC, got {img.shape}")

    peak = 255 if bit_depth == 8 else 65535
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    out = np.round(np.clip(img.astype(np.float64), 0.0, 1.0) * peak).astype(dtype)
    if tiff and out.ndim == 3 and out.shape[2] not in (3, 4):
        _write_multiband_tiff(path, out)
        return
    if out.ndim == 3:
        out = out[:, :, [2, 1, 0, 3][: out.shape[2]]]

    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix or ".png", out)
    if not ok:
        raise OSError(f"write_image: OpenCV could not encode '{path}'")
    buf.tofile(str(path))


def _write_multiband_tiff(path: Path, out: np.ndarray) -> None:
    """N bands (band-interleaved, one gray band plus extra samples, as GDAL writes them) through
    ``tifffile``; OpenCV writes 1, 3 and 4 channels only."""
    try:
        import tifffile
    except ImportError as err:
        raise ValueError(f"write_image '{path}': {out.shape[2]}-band TIFF needs the tifffile package "
                         "(pip install tifffile), or write a .npy file") from err
    from utils.weights import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tifffile.imwrite(tmp, out, photometric="minisblack", planarconfig="contig"))


def _write_npy(path: Path, img: np.ndarray) -> None:
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3:
        raise ValueError(f"write_image '{path}': expected HW or HWC, got shape {img.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(img, dtype=np.float32), allow_pickle=False)


# ---------------------------------------------------------------- numpy <-> torch


def img2tensor(img: np.ndarray) -> torch.Tensor:
    """HWC (or HW) numpy image → CHW tensor: uint8 stays uint8 (see :func:`tensor_to_float`),
    anything else becomes float32 in [0, 1]."""
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3:
        raise ValueError(f"img2tensor expects an HWC or HW array, got shape {img.shape}")
    if img.dtype != np.uint8:
        img = to_float(img)
    chw = np.ascontiguousarray(img.transpose(2, 0, 1))
    if not chw.flags.writeable:
        chw = chw.copy()  # a read-only memory-mapped view: the tensor must own its memory
    return torch.from_numpy(chw)


def tensor_to_float(t: torch.Tensor) -> torch.Tensor:
    """uint8 (/255) and uint16 (/65535) image tensors → float32 in [0, 1] (memory format kept);
    anything else unchanged.

    Each tensor is divided by its own type's peak, never by a batch's: an 8-bit level of 255
    and a 16-bit level of 65535 both become 1.0.
    """
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    if t.dtype == torch.uint16:  # datasets here never make them (img2tensor), other code may
        return t.float().div_(65535.0)
    return t


def tensor2img(tensor: torch.Tensor, clip: bool = True) -> np.ndarray:
    """CHW (or 1xCxHxW) tensor (float, or uint8 levels) → HWC float32 numpy image, clipped to [0, 1]."""
    if tensor.ndim == 4:
        if tensor.shape[0] != 1:
            raise ValueError(f"tensor2img takes one image; got a batch of {tensor.shape[0]}")
        tensor = tensor[0]
    if tensor.ndim != 3:
        raise ValueError(f"tensor2img expects CHW or 1CHW, got shape {tuple(tensor.shape)}")
    t = tensor_to_float(tensor.detach().to("cpu")).to(torch.float32)
    if clip:
        t = t.clamp(0.0, 1.0)
    return np.ascontiguousarray(t.numpy().transpose(1, 2, 0))


# ---------------------------------------------------------------- listing


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (extensions in IMAGE_EXTENSIONS, any case), sorted by path.

    A stack (4-D ``.npy``) stands for its items, in index order at the file's place
    (:func:`stack_item_path`). ``folder`` may also be a ``.npy`` file: its items, or the file
    itself when it holds one image.
    """
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"image folder '{folder}' does not exist")
    if folder.is_file() and folder.suffix.lower() == ".npy":
        return _expand_stack(folder, strict=True)
    if not folder.is_dir():
        raise NotADirectoryError(f"image folder '{folder}' is not a directory (nor a .npy file)")
    pattern = "**/*" if recursive else "*"
    files = sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    images = [item for f in files for item in _expand_stack(f, strict=False)]
    if not images:
        raise FileNotFoundError(
            f"image folder '{folder}' contains no images (looked for {', '.join(IMAGE_EXTENSIONS)})"
        )
    return images


def _expand_stack(path: Path, strict: bool) -> list[Path]:
    """The item paths of a stack file; ``[path]`` for any other file. An unreadable ``.npy``
    is an error when ``strict``, else listed as one image (reading it names the problem)."""
    if path.suffix.lower() != ".npy":
        return [path]
    try:
        shape = _load_npy(path).shape
    except ImageReadError:
        if strict:
            raise
        return [path]
    if len(shape) != 4:
        return [path]
    return [stack_item_path(path, i) for i in range(shape[0])]
