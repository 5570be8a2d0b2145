"""Deterministic train/val/test split of one image folder, stable when files are added.

Each image is assigned to a part by a hash of ``(seed, name)`` alone, mapped to a number ``u``
in [0, 1) and compared with the cumulative ratios: with ``ratios: [0.8, 0.1, 0.1]``, ``u < 0.8``
is train, ``0.8 <= u < 0.9`` is val, the rest test. So:

- the same folder, ratios and seed always give the same parts (no RNG, no dependence on the
  listing order, the machine or the Python version: the hash is BLAKE2b, not ``hash()``);
- adding (or removing) files never moves another file between parts, which sorting the list and
  slicing it at 80 % / 90 % would do: there every new name shifts the cut points;
- the parts' sizes follow the ratios statistically (binomially), not exactly: 200 files at
  0.8 / 0.1 / 0.1 give about 160 / 20 / 20, give or take a few.

The name of an image is its path relative to the dataroot, in POSIX form and without its
extension (``tiles/grass_01``; item 3 of a stack ``scenes.npy`` is ``scenes.npy/scenes_3``, or
``scenes_3`` when the dataroot is the stack file itself): converting
a folder from PNG to WebP, moving the dataroot or reading it as an LMDB keeps every image in its
part; renaming a file may move it. A pair (``PairedImageDataset``) goes by its gt's name, so its
lq always follows.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, with_config
from typing_extensions import NotRequired, TypedDict

PARTS = ("train", "val", "test")

#: how far the ratios may sum from 1 (they are typed by hand: 0.7 + 0.2 + 0.1 is not exactly 1.0)
RATIO_TOLERANCE = 1e-6


@with_config(ConfigDict(extra="forbid"))
class SplitOptions(TypedDict):
    """``split``: keep the images of one part of a deterministic train/val/test split of the dataroot."""

    part: Literal["train", "val", "test"]
    ratios: tuple[float, float, float]
    seed: NotRequired[int]


def check_split(opts: Mapping[str, Any] | None, option: str = "split") -> dict[str, Any] | None:
    """The ``split`` option as ``{'part': str, 'ratios': (train, val, test), 'seed': int}``;
    ValueError naming the key otherwise."""
    if opts is None:
        return None
    if not isinstance(opts, Mapping):
        raise ValueError(f"{option} must be a mapping {{part, ratios, seed}}, got {opts!r}")
    unknown = sorted(map(str, set(opts) - {"part", "ratios", "seed"}))
    if unknown:
        raise ValueError(f"{option}: unknown key(s) {', '.join(unknown)} (known: part, ratios, seed)")
    missing = [k for k in ("part", "ratios") if k not in opts]
    if missing:
        raise ValueError(f"{option}: missing key(s) {', '.join(missing)}")
    part = opts["part"]
    if part not in PARTS:
        raise ValueError(f"{option}.part must be one of {', '.join(PARTS)}, got {part!r}")
    ratios = _check_ratios(opts["ratios"], f"{option}.ratios")
    seed = opts.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"{option}.seed must be a whole number >= 0, got {seed!r}")
    if ratios[PARTS.index(part)] == 0:
        raise ValueError(f"{option}: part {part!r} has ratio 0 in {list(ratios)}, so it would hold no images")
    return {"part": part, "ratios": ratios, "seed": seed}


def _check_ratios(value: Any, option: str) -> tuple[float, float, float]:
    ok = isinstance(value, (list, tuple)) and len(value) == len(PARTS) and all(
        not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in value)
    if not ok:
        raise ValueError(f"{option} must be three numbers >= 0 (train, val, test), got {value!r}")
    if abs(sum(value) - 1.0) > RATIO_TOLERANCE:
        raise ValueError(f"{option} must sum to 1, got {list(value)} (sum {sum(value):g})")
    return float(value[0]), float(value[1]), float(value[2])


def split_fraction(name: str, seed: int) -> float:
    """The number in [0, 1) that ``name`` draws under ``seed``: the first 8 bytes of
    BLAKE2b(``"<seed>:<name>"``) as an integer, divided by 2**64."""
    digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def split_part(name: str, ratios: Sequence[float], seed: int) -> str:
    """The part (train, val or test) of the image called ``name``: the first part whose
    cumulative ratio exceeds :func:`split_fraction` (the last part takes any rounding left)."""
    u, total = split_fraction(name, seed), 0.0
    for part, ratio in zip(PARTS[:-1], ratios[:-1]):
        total += ratio
        if u < total:
            return part
    return PARTS[-1]


def split_name(path: Path, root: str | Path) -> str:
    """The name a split knows ``path`` by: relative to the dataroot ``root``, POSIX, without the
    extension (see the module docstring)."""
    path, root = Path(path), Path(root)
    rel = Path(path.name)  # not under the dataroot (should not happen): its own name
    # an LMDB reader names its images under the resolved root, the option may be relative
    for a, b in ((path, root), (path.resolve(), root.resolve())):
        if a.is_relative_to(b):
            rel = a.relative_to(b)
            break
    if rel == Path("."):  # the dataroot is a single-image .npy file
        rel = Path(Path(path).name)
    return rel.with_suffix("").as_posix() if rel.suffix else rel.as_posix()


def split_indices(names: Sequence[str], split: Mapping[str, Any]) -> list[int]:
    """Positions in ``names`` of the images in ``split['part']`` (a checked ``split`` option)."""
    part, ratios, seed = split["part"], split["ratios"], split.get("seed", 0)
    return [i for i, name in enumerate(names) if split_part(name, ratios, seed) == part]
