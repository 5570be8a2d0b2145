"""Schedules: constants, piecewise dicts and ramps, against hand-computed values."""

from __future__ import annotations

import math

import pytest

from utils.schedule import Schedule, integer_schedule


def test_constant_and_piecewise():
    assert Schedule.parse(0.25)(12345) == 0.25
    s = Schedule.parse({"0.5T": 2.0, 10: 1.0}, total_iter=100)  # keys in any order, fractions resolved
    assert [s(i) for i in (0, 9, 10, 49, 50, 1000)] == [0, 0, 1.0, 1.0, 2.0, 2.0]
    assert s.to_spec() == {10: 1.0, 50: 2.0}
    assert s.values() == [0, 1.0, 2.0]


def test_linear_and_cosine_ramps():
    lin = Schedule.parse({"type": "linear", "from": 10, "to": 30, "start": 1.0, "end": 0.0})
    assert [lin(i) for i in (0, 10, 15, 20, 30, 99)] == pytest.approx([1.0, 1.0, 0.75, 0.5, 0.0, 0.0])
    cos = Schedule.parse({"type": "cosine", "from": 0, "to": "0.5T", "start": 0.0, "end": 1e-3}, total_iter=200)
    for i in (0, 25, 50, 75, 100, 150):
        t = min(i / 100, 1.0)
        assert cos(i) == pytest.approx(1e-3 * 0.5 * (1 - math.cos(math.pi * t)))
    assert cos(50) == pytest.approx(0.5e-3)


@pytest.mark.parametrize(("spec", "message"), [
    ({"type": "step", "from": 0, "to": 1, "start": 0, "end": 1}, "linear, cosine"),
    ({"type": "linear", "from": 5, "to": 5, "start": 0, "end": 1}, "must be after"),
    ({"type": "linear", "from": 0, "to": 5, "start": 0}, "missing: end"),
    ({"type": "linear", "from": 0, "to": 5, "start": 0, "end": 1, "stop": 2}, "unknown: stop"),
    ({0: "high"}, "must be a number"),
    (True, "expected a number"),
    ({"0.5T": 1.0}, "total_iter"),
])
def test_bad_schedules_say_why(spec, message):
    with pytest.raises(ValueError, match=message):
        Schedule.parse(spec)


def test_integer_schedules_for_sizes():
    s = integer_schedule({0: 64, 100: 96}, "gt_size")
    assert (s(99), s(100)) == (64, 96)
    with pytest.raises(ValueError, match="not a ramp"):
        integer_schedule({"type": "linear", "from": 0, "to": 5, "start": 1, "end": 4}, "gt_size")
    with pytest.raises(ValueError, match="start at step 0"):
        integer_schedule({10: 64}, "gt_size")
    with pytest.raises(ValueError, match="whole number"):
        integer_schedule({0: 64, 5: 2.5}, "batch_size_per_gpu")
