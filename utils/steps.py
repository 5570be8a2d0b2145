"""Iteration counts that may be written as fractions of the run: ``0.8T`` = 0.8 x total_iter."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, ValidationInfo

_FRACTION = re.compile(r"^\s*(\d*\.?\d+)\s*T\s*$")


def resolve_step(value: Any, total_iter: int | None) -> int:
    """Turn ``1000``, ``"1000"`` or ``"0.8T"`` into an iteration number."""
    if isinstance(value, bool):
        raise ValueError(f"expected an iteration count, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"iteration count must be whole, got {value!r} (write fractions as '0.5T')")
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        match = _FRACTION.match(text)
        if match:
            if total_iter is None:
                raise ValueError(f"'{value}' needs train.total_iter to be set")
            return int(round(float(match.group(1)) * total_iter))
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text)
    raise ValueError(f"expected an iteration count or a fraction of the run like '0.8T', got {value!r}")


def _validate(value: Any, info: ValidationInfo) -> int:
    total = (info.context or {}).get("total_iter")
    return resolve_step(value, total)


Step = Annotated[int, BeforeValidator(_validate)]
"""A pydantic type for iteration counts; the validation context supplies ``total_iter``."""
