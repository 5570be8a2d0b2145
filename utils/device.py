"""Device selection: CUDA → MPS → CPU, and a clear error for a device that is not there."""

from __future__ import annotations

import torch


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """Resolve ``auto`` / ``cpu`` / ``mps`` / ``cuda`` / ``cuda:N`` to a usable device."""
    mps_ok = hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        return torch.device("mps") if mps_ok else torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"device: '{name}' was requested but CUDA is not available "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}). "
                "Use device: auto or device: cpu, or install a CUDA build of PyTorch."
            )
        index = int(name.split(":")[1]) if ":" in name else local_rank
        if index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device: '{name}' was requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        return torch.device("cuda", index)
    if name == "mps":
        if not mps_ok:
            raise RuntimeError("device: 'mps' was requested but Apple MPS is not available on this machine")
        return torch.device("mps")
    return torch.device("cpu")
