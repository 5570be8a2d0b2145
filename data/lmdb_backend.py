"""Reading images from BasicSR-style LMDB datasets (``io_backend: {type: lmdb}``).

An LMDB dataset is a folder ``<name>.lmdb`` holding the LMDB files ``data.mdb`` / ``lock.mdb``
and ``meta_info.txt``. Every value is an encoded image file (BasicSR writes PNG with
``cv2.imencode``), stored under the image's file name without extension; ``meta_info.txt`` lists
one image per line, ``<key>.png (<h>,<w>,<c>) <compress_level>``, e.g.
``0001_s001.png (480,480,3) 1``. ``scripts/create_lmdb.py`` writes such folders.

``lmdb`` is an optional dependency: it is imported only when an LMDB is opened.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import ConfigDict, with_config
from typing_extensions import TypedDict

from data.image_io import SUPPORTED_DTYPES, ImageReadError, header_size_of_bytes

META_INFO = "meta_info.txt"
IO_BACKENDS = ("disk", "lmdb")

# The environments open in this process, shared by every reader of the same LMDB (py-lmdb refuses
# to open one twice in a process): (resolved folder, device and inode of data.mdb) → (pid, env).
_ENVIRONMENTS: dict[tuple[str, int, int], tuple[int, Any]] = {}

# ``<name> (<h>,<w>,<c>) <level>``; BasicSR writes ``(h,w,c)`` with c = 1 for gray images.
_META_LINE = re.compile(r"(?P<name>\S.*?)\s+\(\s*\d+\s*(?:,\s*\d+\s*){1,2}\)\s+\d+")


@with_config(ConfigDict(extra="forbid"))
class IoBackend(TypedDict):
    """``io_backend`` of a dataset section: where the images are read from. ``disk`` (image
    folders, the default) or ``lmdb`` (BasicSR LMDB folders named ``*.lmdb``). Checked at
    option-load time, so ``{type: s3}`` or an unknown key fails ``--check``."""

    type: Literal["disk", "lmdb"]


def backend_type(io_backend: Any, owner: str) -> str:
    """``'disk'`` or ``'lmdb'`` from a dataset's ``io_backend`` option (None means disk).

    Repeats the option-file check for datasets built directly in Python.
    """
    if io_backend is None:
        return "disk"
    if not isinstance(io_backend, dict) or set(io_backend) != {"type"}:
        raise ValueError(f"{owner}: io_backend must be {{type: disk}} or {{type: lmdb}}, got {io_backend!r}")
    kind = io_backend["type"]
    if kind not in IO_BACKENDS:
        raise ValueError(f"{owner}: io_backend type must be one of {', '.join(IO_BACKENDS)}, got {kind!r}")
    return kind


def import_lmdb() -> Any:
    """The ``lmdb`` module, or an ImportError that says how to install it."""
    try:
        import lmdb
    except ImportError as err:
        raise ImportError("LMDB datasets (io_backend lmdb, scripts/create_lmdb.py) need the lmdb package: "
                          "pip install lmdb") from err
    return lmdb


def key_of(name: str) -> str:
    """The LMDB key of a meta_info name: the name without its extension (``0001.png`` → ``0001``)."""
    stem, dot, ext = name.rpartition(".")
    # only the last path segment carries an extension ("a.b/c" has none)
    return stem if dot and stem and "/" not in ext else name


def read_meta_info(root: Path) -> list[str]:
    """The image names ``meta_info.txt`` of the LMDB folder ``root`` lists, in file order."""
    path = root / META_INFO
    if not path.is_file():
        raise FileNotFoundError(f"LMDB '{root}' has no {META_INFO}: BasicSR LMDB folders list their images "
                                f"there (one '<key>.png (<h>,<w>,<c>) <level>' line per image); rebuild it "
                                "with scripts/create_lmdb.py")
    names: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        match = _META_LINE.fullmatch(line.strip())
        if match is None:
            raise ValueError(f"{path}, line {number}: expected '<key>.png (<h>,<w>,<c>) <compress_level>', "
                             f"got {line!r}")
        names.append(match.group("name"))
    if not names:
        raise ValueError(f"{path} lists no images")
    repeated = sorted(k for k, n in Counter(map(key_of, names)).items() if n > 1)
    if repeated:
        raise ValueError(f"{path} lists these keys more than once: {', '.join(repeated[:5])}")
    return names


def check_lmdb_root(root: str | Path, option: str = "LMDB") -> Path:
    """``root`` as a Path, after checking it looks like an LMDB folder (name, data.mdb).

    ``option`` names the setting in messages, e.g. ``PairedImageDataset: dataroot_lq``.
    """
    path = Path(root)
    if path.suffix != ".lmdb":
        raise ValueError(f"{option} '{root}' does not end in .lmdb: io_backend lmdb reads BasicSR LMDB folders "
                         "named <name>.lmdb (make one with scripts/create_lmdb.py); image folders take "
                         "io_backend {type: disk}")
    if not path.is_dir():
        raise FileNotFoundError(f"{option} '{root}' does not exist or is not a folder (io_backend lmdb)")
    if not (path / "data.mdb").is_file():
        raise FileNotFoundError(f"{option} '{root}' is not an LMDB: it holds no data.mdb (io_backend lmdb)")
    return path


def shared_environment(root: Path) -> Any:
    """This process's read-only environment of the LMDB folder ``root``, opened on first use.

    Opened as BasicSR's LmdbBackend does: no locking (the data does not change while it is
    read) and no readahead (random access to values larger than a page). An environment
    inherited through fork (DataLoader workers) must not be used (LMDB forbids it): the child
    closes its copy, which only unmaps the child's view and closes the child's file
    descriptors, and opens its own.
    """
    lmdb = import_lmdb()
    stat = (root / "data.mdb").stat()
    ident = (str(root.resolve()), stat.st_dev, stat.st_ino)
    pid = os.getpid()
    entry = _ENVIRONMENTS.get(ident)
    if entry is not None:
        owner, env = entry
        if owner == pid:
            return env
        env.close()
    try:
        env = lmdb.open(str(root), readonly=True, lock=False, readahead=False)
    except lmdb.Error as err:
        raise OSError(f"cannot open LMDB '{root}': {err}") from err
    _ENVIRONMENTS[ident] = (pid, env)
    return env


def decode_image(raw: bytes, name: str | Path) -> np.ndarray:
    """Encoded image bytes → HWC array in the stored dtype, channels as ``read_image`` returns
    them: gray HxWx1, RGB, RGBA (OpenCV's BGR(A) reordered). ``name`` is used in errors."""
    if not raw:
        raise ImageReadError(name, "the stored value is empty")
    img = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageReadError(name, "OpenCV could not decode the stored bytes (corrupt or unsupported format)")
    if img.ndim == 2:
        img = img[:, :, None]
    channels = img.shape[2]
    if channels == 3:
        img = img[:, :, ::-1]
    elif channels == 4:
        img = img[:, :, [2, 1, 0, 3]]
    elif channels != 1:
        raise ImageReadError(name, f"unsupported channel count {channels}")
    if img.dtype not in SUPPORTED_DTYPES:
        raise ImageReadError(name, f"unsupported pixel type {img.dtype} (supported: uint8, uint16, float32, float64)")
    return np.ascontiguousarray(img)


class LmdbReader:
    """Read-only access to one BasicSR LMDB folder.

    The folder and its ``meta_info.txt`` are checked on construction, and every listed key
    is checked to be stored. The environment is looked up once per process, on the first read
    (:func:`shared_environment`): DataLoader workers are forked from the main process, and an
    LMDB environment must not be used across a fork. The reader pickles without it (spawned
    workers open their own).
    """

    def __init__(self, root: str | Path, option: str = "LMDB") -> None:
        self.root = check_lmdb_root(root, option)
        self.names = read_meta_info(self.root)
        self._name_of = {key_of(n): n for n in self.names}
        self._env: Any = None
        self._pid: int | None = None
        self._check_stored()

    def keys(self) -> list[str]:
        """The keys ``meta_info.txt`` lists, in its order."""
        return [key_of(n) for n in self.names]

    def path_of(self, key: str) -> Path:
        """How an image is named in messages and sample paths: ``<root>.lmdb/<name>``, its name
        in meta_info.txt (``0001.png`` for key ``0001``), so stems and file names work as for
        image folders."""
        return self.root / self._name_of.get(key, key)

    def _environment(self) -> Any:
        # Keyed by pid: a forked worker finds its parent's handle here and fetches its own.
        if self._env is None or self._pid != os.getpid():
            self._env = shared_environment(self.root)
            self._pid = os.getpid()
        return self._env

    def _check_stored(self) -> None:
        """Every key meta_info.txt lists is in data.mdb (a scan of the keys; no value is copied)."""
        with self._environment().begin() as txn:
            stored = {bytes(k) for k in txn.cursor().iternext(keys=True, values=False)}
        missing = [k for k in self.keys() if k.encode("utf-8") not in stored]
        if missing:
            raise ValueError(f"LMDB '{self.root}': {len(missing)} keys listed in {META_INFO} are not stored in "
                             f"data.mdb: {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}")

    def read(self, key: str) -> np.ndarray:
        """The image stored under ``key`` (see :func:`decode_image`); a missing key or
        undecodable bytes are an :class:`~data.image_io.ImageReadError` naming the LMDB and key."""
        name = self.path_of(key)
        if key not in self._name_of:
            raise ImageReadError(name, f"key {key!r} is not listed in {self.root / META_INFO}")
        with self._environment().begin(buffers=False) as txn:
            raw = txn.get(key.encode("utf-8"))
        if raw is None:
            raise ImageReadError(name, f"key {key!r} is not stored in LMDB '{self.root}'")
        return decode_image(raw, name)

    def header_size(self, key: str) -> tuple[int, int] | None:
        """``(height, width)`` of the image stored under ``key``, from its header (PNG, JPEG, ...)
        without decoding it or copying the value; None when the key is missing or the header
        does not tell."""
        if key not in self._name_of:
            return None
        with self._environment().begin(buffers=True) as txn:
            raw = txn.get(key.encode("utf-8"))  # a view into the map, valid inside the transaction only
            return None if raw is None else header_size_of_bytes(raw)

    def __getstate__(self) -> dict[str, Any]:
        # An lmdb Environment cannot be pickled; the receiving process opens its own.
        state = dict(self.__dict__)
        state["_env"], state["_pid"] = None, None
        return state
