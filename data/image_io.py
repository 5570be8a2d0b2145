"""Reading and writing images as float32 RGB arrays in [0, 1], and numpy <-> torch helpers."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageReadError(OSError):
    """An image file that is missing, empty, corrupt or of an unsupported kind."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"cannot read image '{self.path}': {reason}")

    def __reduce__(self) -> tuple:
        # Keeps the error picklable, so it crosses DataLoader worker processes intact.
        return (type(self), (self.path, self.reason))


def read_image(path: str | Path, keep_channels: bool = False, as_float: bool = True) -> np.ndarray:
    """Read an image as a float32 HWC array in [0, 1], channels in RGB(A) order.

    8-bit files are divided by 255, 16-bit files by 65535; float files (EXR/TIFF) are kept as
    stored. ``as_float=False`` keeps the stored integer type (uint8 / uint16), so training can
    crop first and convert only the patch (see :func:`to_float`). By default the result always
    has 3 channels: grayscale is repeated and alpha is dropped. With ``keep_channels=True`` the
    stored channels are kept (gray → HxWx1, RGBA → HxWx4).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "no such file" if not path.exists() else "not a regular file")
    # np.fromfile + imdecode (rather than cv2.imread) works for non-ASCII paths on every OS
    # and lets us tell "empty" from "undecodable".
    try:
        raw = np.fromfile(str(path), dtype=np.uint8)
    except OSError as err:
        raise ImageReadError(path, str(err)) from err
    if raw.size == 0:
        raise ImageReadError(path, "file is empty")
    img = cv2.imdecode(raw, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageReadError(path, "OpenCV could not decode it (corrupt or unsupported format)")

    if img.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
        raise ImageReadError(path, f"unsupported pixel type {img.dtype}")
    if as_float:
        img = to_float(img)

    if img.ndim == 2:
        img = img[:, :, None]
    channels = img.shape[2]
    if channels == 3:
        img = img[:, :, ::-1]
    elif channels == 4:
        img = img[:, :, [2, 1, 0, 3]]
    elif channels != 1:
        raise ImageReadError(path, f"unsupported channel count {channels}")

    if not keep_channels:
        if channels == 1:
            img = np.repeat(img, 3, axis=2)
        elif channels == 4:
            img = img[:, :, :3]
    return np.ascontiguousarray(img)


def to_float(img: np.ndarray) -> np.ndarray:
    """uint8 → /255, uint16 → /65535, float → float32."""
    if img.dtype == np.uint8:
        return img.astype(np.float32) / 255.0
    if img.dtype == np.uint16:
        return img.astype(np.float32) / 65535.0
    return img.astype(np.float32, copy=False)


def write_image(path: str | Path, img: np.ndarray, bit_depth: int = 8) -> None:
    """Write a float HWC (or HW) image in [0, 1] with RGB(A) channel order.

    Values are clipped to [0, 1] and rounded to the nearest level. ``bit_depth=16`` writes a
    16-bit PNG/TIFF. Missing parent folders are created.
    """
    path = Path(path)
    if bit_depth not in (8, 16):
        raise ValueError(f"write_image '{path}': bit_depth must be 8 or 16, got {bit_depth}")
    if bit_depth == 16 and path.suffix.lower() not in (".png", ".tif", ".tiff"):
        raise ValueError(f"write_image '{path}': 16-bit output needs a .png or .tif(f) file name")
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (3, 4)):
        raise ValueError(f"write_image '{path}': expected HW, HWC with C in (1, 3, 4), got {img.shape}")

    peak = 255 if bit_depth == 8 else 65535
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    out = np.round(np.clip(img.astype(np.float64), 0.0, 1.0) * peak).astype(dtype)
    if out.ndim == 3:
        out = out[:, :, [2, 1, 0, 3][: out.shape[2]]]

    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix or ".png", out)
    if not ok:
        raise OSError(f"write_image: OpenCV could not encode '{path}'")
    buf.tofile(str(path))


def img2tensor(img: np.ndarray) -> torch.Tensor:
    """HWC (or HW) numpy image → CHW tensor: uint8 stays uint8 (see :func:`tensor_to_float`),
    anything else becomes float32 in [0, 1]."""
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3:
        raise ValueError(f"img2tensor expects an HWC or HW array, got shape {img.shape}")
    if img.dtype != np.uint8:
        img = to_float(img)
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


def tensor_to_float(t: torch.Tensor) -> torch.Tensor:
    """uint8 image tensors → float32 in [0, 1] (memory format kept); float tensors unchanged."""
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
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


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (extensions in IMAGE_EXTENSIONS, any case), sorted by path."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"image folder '{folder}' does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"image folder '{folder}' is not a directory")
    pattern = "**/*" if recursive else "*"
    files = sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise FileNotFoundError(
            f"image folder '{folder}' contains no images (looked for {', '.join(IMAGE_EXTENSIONS)})"
        )
    return files
