"""Values that change over a run: loss weights, patch sizes, probabilities, ramps.

An option that takes a schedule accepts three spellings:

- a constant: ``0.1``;
- a piecewise-constant dict of ``step: value`` (``{0: 0.0, 0.8T: 0.02}``): the value of the last
  key at or below the step, 0 before the first key;
- a ramp ``{type: linear | cosine, from: STEP, to: STEP, start: V, end: V}``: ``start`` up to
  ``from``, ``end`` from ``to`` on, and in between a straight line or a half cosine (which
  leaves and arrives with zero slope, as OpenSR's adversarial weight does).

Steps may be written as fractions of the run (``0.8T``) everywhere.
"""

from __future__ import annotations

import bisect
import math
from typing import Annotated, Any

from pydantic import BeforeValidator, ValidationInfo
from pydantic_core import core_schema

from utils.steps import resolve_step

RAMPS = ("linear", "cosine")


class Schedule:
    """A value as a function of the iteration; build with :meth:`parse` or :func:`as_schedule`."""

    def __init__(self, points: dict[int, float] | None = None, constant: float | None = None,
                 ramp: tuple[str, int, int, float, float] | None = None) -> None:
        self.constant = constant
        self.ramp = ramp
        self.keys = sorted(points) if points else []
        self.points = [points[k] for k in self.keys] if points else []

    @classmethod
    def parse(cls, spec: Any, total_iter: int | None = None) -> Schedule:
        if isinstance(spec, Schedule):
            return spec
        if isinstance(spec, bool):
            raise ValueError(f"expected a number or a schedule, got {spec!r}")
        if isinstance(spec, int | float):
            return cls(constant=spec)
        if not isinstance(spec, dict) or not spec:
            raise ValueError(f"expected a number, a {{step: value}} dict or a ramp {{type: linear, ...}}, got {spec!r}")
        if "type" in spec:
            return cls._parse_ramp(spec, total_iter)
        points = {}
        for key, value in spec.items():
            step = resolve_step(key, total_iter)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"schedule value at {key!r} must be a number, got {value!r}")
            points[step] = value
        return cls(points=points)

    @classmethod
    def _parse_ramp(cls, spec: dict, total_iter: int | None) -> Schedule:
        kind = spec["type"]
        if kind not in RAMPS:
            raise ValueError(f"ramp type must be one of {', '.join(RAMPS)}, got {kind!r}")
        unknown = set(spec) - {"type", "from", "to", "start", "end"}
        missing = {"from", "to", "start", "end"} - set(spec)
        if unknown or missing:
            raise ValueError(f"a {kind} ramp takes type, from, to, start and end"
                             + (f"; unknown: {', '.join(sorted(map(str, unknown)))}" if unknown else "")
                             + (f"; missing: {', '.join(sorted(missing))}" if missing else ""))
        first, last = resolve_step(spec["from"], total_iter), resolve_step(spec["to"], total_iter)
        if last <= first:
            raise ValueError(f"ramp 'to' ({last}) must be after 'from' ({first})")
        for key in ("start", "end"):
            if isinstance(spec[key], bool) or not isinstance(spec[key], int | float):
                raise ValueError(f"ramp '{key}' must be a number, got {spec[key]!r}")
        return cls(ramp=(kind, first, last, float(spec["start"]), float(spec["end"])))

    def __call__(self, step: int) -> float:
        if self.constant is not None:
            return self.constant
        if self.ramp is not None:
            kind, first, last, start, end = self.ramp
            t = min(max((step - first) / (last - first), 0.0), 1.0)
            if kind == "cosine":
                t = 0.5 * (1.0 - math.cos(math.pi * t))
            return start + (end - start) * t
        i = bisect.bisect_right(self.keys, step)
        return self.points[i - 1] if i else 0

    @property
    def is_constant(self) -> bool:
        return self.constant is not None

    def values(self) -> list[float]:
        """Every value a constant or piecewise schedule can take (ramps: the two ends)."""
        if self.constant is not None:
            return [self.constant]
        if self.ramp is not None:
            return [self.ramp[3], self.ramp[4]]
        return ([0] if self.keys[0] > 0 else []) + list(self.points)

    def to_spec(self) -> Any:
        """The option-file spelling, with steps resolved (for the saved options.yml)."""
        if self.constant is not None:
            return self.constant
        if self.ramp is not None:
            kind, first, last, start, end = self.ramp
            return {"type": kind, "from": first, "to": last, "start": start, "end": end}
        return dict(zip(self.keys, self.points))

    def __repr__(self) -> str:
        return f"Schedule({self.to_spec()!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, int | float) and not isinstance(other, bool):
            return self.constant is not None and self.constant == other  # a constant equals its number
        return isinstance(other, Schedule) and self.to_spec() == other.to_spec()

    __hash__ = None  # type: ignore[assignment]

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        # validated by the Scheduled annotation's BeforeValidator; dumped in its file spelling
        return core_schema.is_instance_schema(
            cls, serialization=core_schema.plain_serializer_function_ser_schema(lambda s: s.to_spec()))


def as_schedule(value: Any, total_iter: int | None = None) -> Schedule:
    return Schedule.parse(value, total_iter)


def _validate(value: Any, info: ValidationInfo) -> Schedule:
    return Schedule.parse(value, (info.context or {}).get("total_iter"))


Scheduled = Annotated[Schedule, BeforeValidator(_validate)]
"""A pydantic type for an option that may change over the run; ``total_iter`` comes from the
validation context so that ``0.8T`` resolves."""


def integer_schedule(value: Any, name: str, minimum: int = 1) -> Schedule:
    """A constant or piecewise schedule of whole numbers >= ``minimum`` (patch and batch sizes)."""
    sched = as_schedule(value)
    if sched.ramp is not None:
        raise ValueError(f"{name} takes a whole number or a {{step: value}} dict, not a ramp")
    for v in sched.values():
        if v == 0 and sched.keys and sched.keys[0] > 0:
            raise ValueError(f"{name}: a schedule must start at step 0 (got first key {sched.keys[0]})")
        if isinstance(v, bool) or not float(v).is_integer() or v < minimum:
            raise ValueError(f"{name} must be a whole number >= {minimum}, got {v!r}")
    return sched
