"""Training states and weight files: atomic writes, retention, safe loading, newest-usable-state lookup.

A training state is read with ``torch.load(weights_only=True)``: it may hold tensors and plain
Python values only (dicts, lists, tuples, str, numbers, None), never a pickled object, so a
crafted ``.state`` cannot run code. :func:`plain_state` enforces that when a state is written.
"""

from __future__ import annotations

import pickle
import random
import re
import zipfile
from collections import OrderedDict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utils.weights import TMP_SUFFIX, CheckpointWriteError, NonFiniteWeightsError, atomic_write_file, save_network

__all__ = ["CheckpointError", "CheckpointWriteError", "NonFiniteWeightsError", "UnsafeStateError"]

_STATE = re.compile(r"^(\d+)\.state$")
_WEIGHTS = re.compile(r"^(net_\w+?)_(\d+)\.(safetensors|pth)$")
_PLAIN_LEAVES = (torch.Tensor, str, bytes, int, float, bool, complex, type(None), torch.Size, torch.dtype, torch.device)
CORRUPT_SUFFIX = ".corrupt"  # a state that failed to load is renamed aside, out of list_states' sight


class CheckpointError(RuntimeError):
    """A training state that cannot be used: unreadable (truncated, corrupt) or holding NaN/inf."""


class UnsafeStateError(CheckpointError):
    """A training state that holds pickled Python objects (which could run code): refused unread."""


# --------------------------------------------------------------------------- RNG


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain values (``weights_only`` loads it): Python's as its
    ``getstate()`` tuple of ints, numpy's MT19937 key as an int64 tensor, torch's as byte tensors."""
    name, key, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"bit_generator": str(name), "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _numpy_state(saved: Any) -> tuple:
    """numpy's ``set_state`` tuple from :func:`rng_state`'s dict (or a legacy state's own tuple)."""
    if isinstance(saved, dict):
        key = saved["key"].numpy() if isinstance(saved["key"], torch.Tensor) else np.asarray(saved["key"])
        return (saved["bit_generator"], key.astype(np.uint32), int(saved["pos"]), int(saved["has_gauss"]),
                float(saved["cached_gaussian"]))
    return tuple(saved)


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    np.random.set_state(_numpy_state(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------- plain content


def plain_state(obj: Any, where: str = "state") -> Any:
    """``obj`` with numpy scalars and arrays turned into Python numbers and tensors; anything else
    that is not a tensor, a plain value or a container of them raises ``TypeError`` naming its key,
    so a state that ``weights_only`` could not load is never written."""
    if isinstance(obj, np.generic):  # first: np.float64 is also a float, yet weights_only refuses it
        return obj.item()
    if isinstance(obj, _PLAIN_LEAVES):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, dict):
        out = {k: plain_state(v, f"{where}.{k}") for k, v in obj.items()}
        return OrderedDict(out) if isinstance(obj, OrderedDict) else out
    if isinstance(obj, list | tuple | set | frozenset):
        items = [plain_state(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items) if isinstance(obj, tuple) else set(items)
    raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; a training state holds "
                    "tensors and plain Python values only (it is loaded with weights_only=True)")


def first_nonfinite_entry(obj: Any, where: str = "state") -> str | None:
    """The key path of the first floating-point tensor holding NaN or inf, else None."""
    if isinstance(obj, torch.Tensor):
        return where if obj.is_floating_point() and not torch.isfinite(obj).all() else None
    items: Iterable = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list | tuple) else ()
    for key, value in items:
        found = first_nonfinite_entry(value, f"{where}.{key}" if isinstance(obj, dict) else f"{where}[{key}]")
        if found is not None:
            return found
    return None


# ---------------------------------------------------------------------- writing


def save_training_state(folder: str | Path, iteration: int, state: dict, keep_last: int,
                        protect: Collection[int] = ()) -> Path:
    """Write ``<folder>/<iteration>.state`` atomically; keep the newest ``keep_last`` and those in
    ``protect`` (e.g. the top-k by a metric). Older states are pruned only once the new one is
    complete, so a failed write keeps them all."""
    folder = Path(folder)
    path = folder / f"{iteration}.state"
    content = plain_state(state)
    atomic_write_file(path, lambda f: torch.save(content, f))
    for old in list_states(folder)[:-keep_last]:
        if int(old.stem) not in protect:
            old.unlink(missing_ok=True)
    return path


def save_weights(folder: str | Path, label: str, iteration: int | str, net, keep_last: int,
                 protect: Collection[int] = (), metadata: dict[str, str] | None = None) -> Path:
    """Save ``<folder>/<label>_<iteration>.safetensors``; prune numbered files of that label but the
    newest ``keep_last`` and those in ``protect``."""
    folder = Path(folder)
    path = folder / f"{label}_{iteration}.safetensors"
    save_network(net, path, metadata=metadata)
    numbered = sorted(
        (int(m.group(2)), p) for p in folder.iterdir() if (m := _WEIGHTS.match(p.name)) and m.group(1) == label
    )
    for it, old in numbered[:-keep_last]:
        if it not in protect:
            old.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------------- reading


def list_states(folder: str | Path) -> list[Path]:
    """Complete training states, oldest first (temporary and set-aside files never match)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STATE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_state(folder: str | Path) -> Path | None:
    states = list_states(folder)
    return states[-1] if states else None


def _legacy_numpy_globals() -> list[Any]:
    """What states written before RNG states were stored as tensors need: numpy's RNG key array
    (an ndarray of uint32). Allowed for one load only, never process-wide; ndarray reconstruction
    runs no code of the file's choosing."""
    array, scalar = np.zeros(1, np.uint32), np.float64(0)
    return [array.__reduce__()[0], np.ndarray, np.dtype, type(array.dtype), scalar.__reduce__()[0],
            type(scalar.dtype)]


def _refused_object(err: pickle.UnpicklingError) -> str | None:
    """What weights_only refused to build ('posix.system', a class), or None when the failure is
    not about a pickled object (a damaged stream: "Unsupported operand", ...)."""
    text = str(err)
    match = re.search(r"GLOBAL ([\w.]+)", text)
    if match:
        return match.group(1)
    match = re.search(r"allowlisted via `add_safe_globals`,? but got (.+)", text)
    return match.group(1).strip() if match else None


def load_training_state(path: str | Path, verify: bool = True) -> dict:
    """Read a training state safely (``weights_only=True``).

    Raises :class:`UnsafeStateError` if the file holds pickled objects (nothing of it runs),
    :class:`CheckpointError` if it is unreadable or (``verify``) holds NaN or inf in any tensor
    (weights, EMA, optimiser moments): each message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training state not found: {path}")
    try:
        with torch.serialization.safe_globals(_legacy_numpy_globals()):
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        refused = _refused_object(err)
        if refused is not None:
            raise UnsafeStateError(
                f"refusing to load training state {path}: it holds a pickled Python object ({refused}) that could "
                "run code when loaded. upforge states hold only tensors and plain values; nothing of the file was "
                "executed. Delete it (or move it out of training_states/) unless you know where it came from"
            ) from None
        raise CheckpointError(f"training state {path} is unreadable (corrupt): {err}") from err
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile, IndexError, KeyError) as err:
        raise CheckpointError(f"training state {path} is unreadable (truncated or corrupt): "
                              f"{type(err).__name__}: {err}") from err
    if not isinstance(state, dict) or "iter" not in state or "model" not in state:
        raise CheckpointError(f"training state {path} is not an upforge training state (no 'iter' and 'model')")
    if verify:
        bad = first_nonfinite_entry(state)
        if bad is not None:
            raise CheckpointError(f"training state {path} holds NaN or inf ({bad}); it cannot be resumed from")
    return state


@dataclass
class ResumePoint:
    """The state to resume from (None: start afresh) and the newer states skipped on the way."""

    path: Path | None = None
    state: dict | None = None
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # (file, why)


def find_resume_state(folder: str | Path) -> ResumePoint:
    """The newest state in ``folder`` that loads and verifies; newer ones that are truncated,
    corrupt or non-finite are skipped and reported. A state holding pickled objects stops the
    search (:class:`UnsafeStateError`): that is tampering, not a crash, and needs a person.
    When states exist but none is usable, :class:`CheckpointError` lists why."""
    found = ResumePoint()
    for path in reversed(list_states(folder)):
        try:
            found.state, found.path = load_training_state(path), path
            return found
        except UnsafeStateError:
            raise
        except CheckpointError as err:
            found.skipped.append((path, str(err)))
    if found.skipped:
        reasons = "; ".join(why for _, why in found.skipped)
        raise CheckpointError(f"no training state in {folder} can be resumed from: {reasons}. Run without "
                              "--auto_resume to start afresh (the folder is then archived, not deleted)")
    return found


def set_aside(path: str | Path) -> Path:
    """Rename an unusable state to ``<name>.corrupt``: kept for inspection, but no longer counted
    by retention (which would otherwise keep it as "newest" and prune good states)."""
    path = Path(path)
    target = path.with_name(path.name + CORRUPT_SUFFIX)
    path.replace(target)
    return target


def remove_partial_writes(folders: Iterable[str | Path]) -> list[Path]:
    """Delete the ``*.tmp`` files an interrupted atomic write left (a killed run); returns them."""
    removed = []
    for folder in folders:
        folder = Path(folder)
        if folder.is_dir():
            for tmp in sorted(folder.glob(f"*{TMP_SUFFIX}")):
                if tmp.is_file():
                    tmp.unlink(missing_ok=True)
                    removed.append(tmp)
    return removed
