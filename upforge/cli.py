"""Console scripts: each activates upforge's module names, then runs the matching command."""

from __future__ import annotations

import importlib

from upforge import activate


def _run(module: str) -> int:
    activate()
    return int(importlib.import_module(module).main() or 0)


def train() -> int:
    """``upforge-train``: ``python train.py`` (same arguments)."""
    return _run("train")


def test() -> int:
    """``upforge-test``: ``python test.py`` (same arguments)."""
    return _run("models.evaluation")


def upscale() -> int:
    """``upforge-upscale``: ``python scripts/upscale.py`` (same arguments)."""
    return _run("scripts.upscale")


def export() -> int:
    """``upforge-export``: ``python scripts/export_onnx.py`` (same arguments)."""
    return _run("scripts.export_onnx")
