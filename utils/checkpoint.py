"""Training states and weight files: atomic writes, retention, newest-state lookup."""

from __future__ import annotations

import random
import re
from collections.abc import Collection
from pathlib import Path

import numpy as np
import torch

from utils.weights import atomic_write, save_network

_STATE = re.compile(r"^(\d+)\.state$")
_WEIGHTS = re.compile(r"^(net_\w+?)_(\d+)\.(safetensors|pth)$")


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(folder: str | Path, iteration: int, state: dict, keep_last: int,
                        protect: Collection[int] = ()) -> Path:
    """Write ``<folder>/<iteration>.state`` atomically; keep the newest ``keep_last`` and those in
    ``protect`` (e.g. the top-k by a metric)."""
    folder = Path(folder)
    path = folder / f"{iteration}.state"
    atomic_write(path, lambda p: torch.save(state, p))
    for old in list_states(folder)[:-keep_last]:
        if int(old.stem) not in protect:
            old.unlink(missing_ok=True)
    return path


def list_states(folder: str | Path) -> list[Path]:
    """Complete training states, oldest first (temporary files never match)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STATE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_state(folder: str | Path) -> Path | None:
    states = list_states(folder)
    return states[-1] if states else None


def load_training_state(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training state not found: {path}")
    # The state holds RNG tuples and numpy arrays, which weights_only refuses; it is our own file.
    return torch.load(str(path), map_location="cpu", weights_only=False)


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
