"""Pack an image folder into a BasicSR-compatible LMDB (for ``io_backend: {type: lmdb}``).

    python scripts/create_lmdb.py -i datasets/DIV2K/DIV2K_train_HR_sub -o datasets/DIV2K/DIV2K_train_HR_sub.lmdb

The result is what BasicSR's ``scripts/data_preparation/create_lmdb.py`` makes, so either
project reads the other's LMDBs: a folder ``<name>.lmdb`` with ``data.mdb``, ``lock.mdb`` and
``meta_info.txt``. Each image of the folder (not its sub-folders) is stored as a PNG
(``cv2.imencode``, ``--compress-level``) under its file name without extension, and listed in
``meta_info.txt`` as ``<key>.png (<h>,<w>,<c>) <compress_level>``. Pixels are stored exactly
(8- or 16-bit, gray, RGB or RGBA); a JPEG source is stored as the pixels it decodes to.
The LMDB is written to a hidden temporary folder beside the output and renamed at the end, so
an interrupted run never leaves a partial LMDB under the output name.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.image_io import is_band_file, list_images, read_image  # noqa: E402
from data.lmdb_backend import META_INFO, import_lmdb  # noqa: E402

# The map size is only a ceiling: on Linux data.mdb grows with what is written. The first
# estimate is twice the encoded size of the first batch per image, plus slack for LMDB's pages;
# a full map doubles it and the batch is written again.
_MAP_SLACK = 16 * 2**20


def image_keys(paths: list[Path]) -> list[str]:
    """The LMDB key of every image: its file name without extension, as BasicSR makes them.

    Keys must be ASCII (BasicSR's reader encodes them so), unique, and free of '.' (BasicSR
    takes the text before the first '.' of a meta_info.txt line as the key).
    """
    keys = [p.stem for p in paths]
    bad = [p.name for p, k in zip(paths, keys) if not k.isascii() or "." in k]
    if bad:
        raise ValueError(f"{len(bad)} file names cannot be BasicSR LMDB keys (they must be ASCII and contain no "
                         f"'.' before the extension); rename them: {', '.join(bad[:5])}")
    seen: dict[str, Path] = {}
    for path, key in zip(paths, keys):
        if key in seen:
            raise ValueError(f"'{seen[key].name}' and '{path.name}' would share the LMDB key '{key}'")
        seen[key] = path
    return keys


def encode_png(path: Path, compress_level: int) -> tuple[bytes, tuple[int, int, int]]:
    """The image file ``path`` as PNG bytes (BGR(A) order, as OpenCV writes) and its (h, w, c)."""
    if is_band_file(path):
        raise ValueError(f"'{path}': .npy bands cannot go into an LMDB, which stores PNG images; "
                         "keep N-band data as .npy folders")
    img = read_image(path, keep_channels=True, as_float=False)  # stored dtype, RGB(A)
    h, w, c = img.shape
    if img.dtype not in (np.uint8, np.uint16) or c not in (1, 3, 4):
        raise ValueError(f"'{path}' is {img.dtype} with {c} channels; an LMDB stores PNG images, which hold "
                         "8- or 16-bit gray, RGB or RGBA")
    bgr = img[:, :, 0] if c == 1 else img[:, :, [2, 1, 0, 3][:c]]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(bgr), [cv2.IMWRITE_PNG_COMPRESSION, compress_level])
    if not ok:
        raise OSError(f"OpenCV could not encode '{path}' as PNG")
    return buf.tobytes(), (h, w, c)


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _put_batch(env: Any, batch: list[tuple[str, bytes]]) -> None:
    """Write one batch in one transaction; a full map is doubled and the batch written again."""
    lmdb = import_lmdb()
    while True:
        try:
            with env.begin(write=True) as txn:  # commits on leaving, aborts on an error
                for key, value in batch:
                    txn.put(key.encode("ascii"), value)
            return
        except lmdb.MapFullError:
            env.set_mapsize(env.info()["map_size"] * 2)


def _write(tmp: Path, paths: list[Path], keys: list[str], compress_level: int, batch: int, n_thread: int,
           map_size: int | None, progress: Callable[[int, int], None] | None) -> None:
    """Write the LMDB and meta_info.txt into the (new) folder ``tmp``."""
    lmdb = import_lmdb()
    env = None
    lines: list[str] = []
    done = 0
    try:
        # Threads: PNG decoding and encoding release the GIL; map() keeps the order.
        with ThreadPoolExecutor(max_workers=n_thread) as pool:
            for chunk in _batches(list(zip(paths, keys)), batch):
                encoded = list(pool.map(lambda item: encode_png(item[0], compress_level), chunk))
                if env is None:
                    per_image = sum(len(b) for b, _ in encoded) / len(encoded)
                    size = map_size or int(2 * per_image * len(paths)) + _MAP_SLACK
                    env = lmdb.open(str(tmp), map_size=size)
                _put_batch(env, [(key, data) for (_, key), (data, _) in zip(chunk, encoded)])
                lines += [f"{key}.png ({h},{w},{c}) {compress_level}\n" for (_, key), (_, (h, w, c))
                          in zip(chunk, encoded)]
                done += len(chunk)
                if progress is not None:
                    progress(done, len(paths))
    finally:
        if env is not None:
            env.close()
    (tmp / META_INFO).write_text("".join(lines), encoding="utf-8")


def _check_output(out: Path, overwrite: bool) -> None:
    if out.suffix != ".lmdb":
        raise ValueError(f"output '{out}' must end in .lmdb (BasicSR reads only folders named <name>.lmdb)")
    if not out.exists():
        return
    if not overwrite:
        raise FileExistsError(f"output '{out}' already exists; pass --overwrite (overwrite=True) to replace it")
    if not out.is_dir() or not (out / "data.mdb").is_file():
        raise FileExistsError(f"output '{out}' exists and is not an LMDB folder; not replacing it")


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out``; an existing ``out`` is moved aside first and
    removed only once the new LMDB is in place."""
    if not out.exists():
        tmp.rename(out)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        old.rename(out)  # put the previous LMDB back
        raise
    shutil.rmtree(old)


def create_lmdb(
    folder: str | Path,
    out: str | Path,
    compress_level: int = 1,
    batch: int = 5000,
    n_thread: int | None = None,
    overwrite: bool = False,
    map_size: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Pack the images of ``folder`` into the BasicSR LMDB ``out`` (``*.lmdb``); returns how
    many were stored.

    ``batch`` images go into one transaction; ``n_thread`` threads read and encode them
    (default: up to 8, one per CPU). ``map_size`` overrides the first map-size estimate (it
    grows when full either way). ``progress(done, total)`` is called after every batch.
    """
    if isinstance(compress_level, bool) or not isinstance(compress_level, int) or not 0 <= compress_level <= 9:
        raise ValueError(f"compress_level must be an integer from 0 to 9, got {compress_level!r}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    n_thread = n_thread or min(8, os.cpu_count() or 1)
    if n_thread < 1:
        raise ValueError(f"n_thread must be >= 1, got {n_thread}")
    out = Path(out)
    _check_output(out, overwrite)
    import_lmdb()  # fail before any work when lmdb is missing
    paths = list_images(folder)
    keys = image_keys(paths)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        _write(tmp, paths, keys, compress_level, batch, n_thread, map_size, progress)
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # also on Ctrl-C: nothing half-written is left
        raise
    return len(paths)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-i", "--input", required=True, help="image folder (its sub-folders are not read)")
    parser.add_argument("-o", "--output", required=True, help="LMDB folder to write, named <name>.lmdb")
    parser.add_argument("--compress-level", type=int, default=1, help="PNG compression 0-9 (BasicSR's default 1)")
    parser.add_argument("--batch", type=int, default=5000, help="images per LMDB transaction")
    parser.add_argument("--n-thread", type=int, default=None, help="threads reading and encoding images")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output LMDB")
    args = parser.parse_args(argv)

    def report(done: int, total: int) -> None:
        print(f"{done}/{total} images", file=sys.stderr)

    try:
        n = create_lmdb(args.input, args.output, args.compress_level, args.batch, args.n_thread, args.overwrite,
                        progress=report)
    except (OSError, ValueError, ImportError) as err:
        print(f"create_lmdb: {err}", file=sys.stderr)
        return 1
    print(f"wrote {n} images to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
