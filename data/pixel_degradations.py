"""Pixel-art training pairs made from an HR patch alone (``PixelArtDataset``'s ``degradations``).

One call, :func:`pixel_degrade`, takes a uint8 HWC HR patch and returns ``(gt, lq)``, both
uint8 HWC, the lq ``scale`` times smaller. The steps, in order, each with its own probability:

1. **palette jitter** (``palette_prob``) on the HR patch, which is then the gt too;
2. **resampling** to the LR size: ``nearest_prob`` nearest, ``box_prob`` box (area), the rest
   bilinear (a tent filter), all with exact integer arithmetic (:func:`downscale`);
3. **tiny blur** (``blur_prob``, Gaussian ``blur_sigma`` [lo, hi] in LR pixels);
4. **Gaussian noise** (``noise_prob``, ``noise_sigma`` [lo, hi] on the 0-255 scale);
5. **JPEG** (``jpeg_prob``, quality drawn from ``jpeg_quality`` [lo, hi]);
6. **channel drop** (``channel_drop_prob``): one channel replaced by the mean of the others.

Why the palette jitter acts on the HR (and so on the gt as well) rather than on the LR alone:
applied to the input only, a random colour shift asks the network to undo a change it cannot
see, which teaches it to pull every colour towards the average (washed-out outputs). Applied to
the HR before the LR is made from it, it is a palette swap, as retro games recolour one sprite
for several characters: new colour combinations of the same shapes, with gt and lq agreeing.
It also needs the HR: a sprite's palette is its HR's few distinct colours, while an LR made with
box or bilinear filtering holds blends of them, not a palette.

The palette shift (:class:`PaletteShift`): the image's distinct colours (its palette) are found,
every palette colour ``v`` (RGB, 0-255) goes through one transform drawn for the patch,

    w = R_hue @ (c * (v - 127.5) + 127.5) + offset,    out = clip(floor(w + 0.5), 0, 255)

(``c`` a contrast factor about mid-grey, ``R_hue`` a rotation by ``hue`` degrees about the grey
axis R = G = B, which keeps greys grey and turns red towards green at +120 degrees exactly,
``offset`` one shift per channel shared by all colours), and every pixel is re-mapped through
the palette. So equal colours stay equal; distinct colours that round to one output are moved
apart (the later one, in the palette's sorted order, to the nearest free colour within 2 levels
per channel; :func:`separate_colours`). Gray (1-channel) images get the contrast and the first
offset, no hue. An image with more distinct colours than ``palette_max_colors`` is not a
palette: palette jitter refuses it with :class:`PaletteError` instead of shifting pixels one by
one (``PixelArtDataset`` checks its images when it is built, naming the files).

Determinism: randomness comes only from the generator passed in, and every call draws the same
:data:`DRAWS` uniform numbers whatever fires (:func:`plan_pixel_degradations` lists them), so the
rest of a sample's draws never depend on what happened. The noise field comes from its own
generator seeded by one of those draws, so it costs nothing when the noise does not fire.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator, ConfigDict, with_config
from typing_extensions import NotRequired, TypedDict

from data.degradations import jpeg_compress
from utils.schedule import Schedule, Scheduled, as_schedule
from utils.steps import resolve_step

KERNELS = ("nearest", "box", "bilinear")

PROBABILITIES = ("palette_prob", "nearest_prob", "box_prob", "blur_prob", "noise_prob", "jpeg_prob",
                 "channel_drop_prob")
MAGNITUDES = ("palette_shift", "palette_contrast", "palette_hue")
RANGES = ("blur_sigma", "noise_sigma", "jpeg_quality")
#: every degradation setting that may change during a run (a schedule, degrad_schedule, an automation)
KNOBS = PROBABILITIES + MAGNITUDES + RANGES

#: the defaults: the seed's "Balanced Pixel-SR" recipe
DEFAULTS: dict[str, Any] = {
    "palette_prob": 0.25, "palette_shift": 8.0, "palette_contrast": 0.1, "palette_hue": 10.0,
    "palette_max_colors": 256,
    "nearest_prob": 0.65, "box_prob": 0.20,
    "blur_prob": 0.05, "blur_sigma": (0.3, 0.7),
    "noise_prob": 0.10, "noise_sigma": (0.5, 2.0),
    "jpeg_prob": 0.20, "jpeg_quality": (75, 95),
    "channel_drop_prob": 0.05,
}

#: uniform numbers one sample draws (see plan_pixel_degradations)
DRAWS = 16

#: largest blur sigma (LR pixels; a 19-tap kernel) and noise sigma (0-255) accepted: "tiny" blur and
#: light noise; beyond these the LR no longer looks like pixel art
MAX_BLUR_SIGMA = 3.0
MAX_NOISE_SIGMA = 64.0


class PaletteError(ValueError):
    """An image with more distinct colours than ``palette_max_colors`` met palette jitter."""


# ------------------------------------------------------------------------------ value checks
# Each takes a value and returns it normalised, or raises ValueError("must be ..."); callers add
# the key. Used by the option-file types (pydantic) and by check_pixel_degradations alike.


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _probability(value: Any) -> float:
    if not _number(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"must be a probability in [0, 1], got {value!r}")
    return float(value)


def _magnitude(high: float, closed: bool = True) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        ok = _number(value) and value >= 0 and (value <= high if closed else value < high)
        if not ok:
            raise ValueError(f"must be a number in [0, {high:g}{']' if closed else ')'}, got {value!r}")
        return float(value)
    return check


def _range(low: float, high: float, whole: bool = False, low_open: bool = False) -> Callable[[Any], tuple]:
    def check(value: Any) -> tuple:
        ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(_number(v) for v in value)
        if ok and whole:
            ok = all(float(v).is_integer() for v in value)
        if ok:
            lo, hi = value
            ok = (low < lo if low_open else low <= lo) and lo <= hi <= high
        if not ok:
            kind = "whole numbers" if whole else "numbers"
            bound = f"{low:g} {'<' if low_open else '<='} lo <= hi <= {high:g}"
            raise ValueError(f"must be [lo, hi] {kind} with {bound}, got {value!r}")
        return (int(value[0]), int(value[1])) if whole else (float(value[0]), float(value[1]))
    return check


def _max_colors(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ValueError(f"must be a whole number >= 2, got {value!r}")
    return value


#: key → check of one value
VALUE_CHECKS: dict[str, Callable[[Any], Any]] = {
    **{key: _probability for key in PROBABILITIES},
    "palette_shift": _magnitude(255.0), "palette_contrast": _magnitude(1.0, closed=False),
    "palette_hue": _magnitude(180.0),
    "blur_sigma": _range(0.0, MAX_BLUR_SIGMA, low_open=True), "noise_sigma": _range(0.0, MAX_NOISE_SIGMA),
    "jpeg_quality": _range(1, 100, whole=True),
    "palette_max_colors": _max_colors,
}


def check_value(key: str, value: Any) -> Any:
    """One setting's value, normalised (ranges as tuples); ValueError naming ``key`` otherwise."""
    if key not in VALUE_CHECKS:
        raise ValueError(f"unknown degradation setting {key!r} (known: {', '.join(VALUE_CHECKS)})")
    try:
        return VALUE_CHECKS[key](value)
    except ValueError as err:
        raise ValueError(f"{key} {err}") from None


def _schedule_check(check: Callable[[Any], Any]) -> Callable[[Schedule], Schedule]:
    def after(schedule: Schedule) -> Schedule:
        for value in schedule.values():
            check(value)
        return schedule
    return after


def _typed(key: str, scheduled: bool) -> Any:
    """The option-file type of ``key``: a number or schedule (scalars, when ``scheduled``), a
    number, or a [lo, hi] pair, validated by its check."""
    check = VALUE_CHECKS[key]
    if key in RANGES:
        pair = tuple[int, int] if key == "jpeg_quality" else tuple[float, float]
        return Annotated[pair, AfterValidator(check)]
    if scheduled:
        return Annotated[Scheduled, AfterValidator(_schedule_check(check))]
    return Annotated[float, AfterValidator(check)]


Prob = _typed("nearest_prob", True)
Magnitude255 = _typed("palette_shift", True)
Contrast = _typed("palette_contrast", True)
Hue = _typed("palette_hue", True)
BlurRange = _typed("blur_sigma", True)
NoiseRange = _typed("noise_sigma", True)
QualityRange = _typed("jpeg_quality", True)
MaxColors = Annotated[int, AfterValidator(_max_colors)]
StepProb = _typed("nearest_prob", False)
StepMagnitude255 = _typed("palette_shift", False)
StepContrast = _typed("palette_contrast", False)
StepHue = _typed("palette_hue", False)


@with_config(ConfigDict(extra="forbid"))
class PixelDegradationOptions(TypedDict):
    """``degradations``: the LR recipe (data/pixel_degradations.py); every key optional, defaults the seed's.

    Probabilities and palette magnitudes take a number or a schedule; ranges are ``[lo, hi]``
    (moved during the run by ``degrad_schedule``).
    """

    palette_prob: NotRequired[Prob]
    palette_shift: NotRequired[Magnitude255]
    palette_contrast: NotRequired[Contrast]
    palette_hue: NotRequired[Hue]
    palette_max_colors: NotRequired[MaxColors]
    nearest_prob: NotRequired[Prob]
    box_prob: NotRequired[Prob]
    blur_prob: NotRequired[Prob]
    blur_sigma: NotRequired[BlurRange]
    noise_prob: NotRequired[Prob]
    noise_sigma: NotRequired[NoiseRange]
    jpeg_prob: NotRequired[Prob]
    jpeg_quality: NotRequired[QualityRange]
    channel_drop_prob: NotRequired[Prob]


@with_config(ConfigDict(extra="forbid"))
class DegradationStep(TypedDict):
    """One step of ``degrad_schedule``: the degradation settings that take these values from that step on."""

    palette_prob: NotRequired[StepProb]
    palette_shift: NotRequired[StepMagnitude255]
    palette_contrast: NotRequired[StepContrast]
    palette_hue: NotRequired[StepHue]
    nearest_prob: NotRequired[StepProb]
    box_prob: NotRequired[StepProb]
    blur_prob: NotRequired[StepProb]
    blur_sigma: NotRequired[BlurRange]
    noise_prob: NotRequired[StepProb]
    noise_sigma: NotRequired[NoiseRange]
    jpeg_prob: NotRequired[StepProb]
    jpeg_quality: NotRequired[QualityRange]
    channel_drop_prob: NotRequired[StepProb]


class RangeSchedule:
    """A ``[lo, hi]`` setting as a function of the step: piecewise constant, from a
    ``{step: (lo, hi)}`` dict that starts at step 0. Quacks like :class:`~utils.schedule.Schedule`
    for the batch sampler (call, ``is_constant``, ``values``, ``to_spec``)."""

    def __init__(self, points: Mapping[int, tuple]) -> None:
        if 0 not in points:
            raise ValueError("a range schedule must start at step 0")
        self.keys = sorted(points)
        self.points = [tuple(points[k]) for k in self.keys]

    def __call__(self, step: int) -> tuple:
        return self.points[bisect.bisect_right(self.keys, step) - 1]

    @property
    def is_constant(self) -> bool:
        return len(set(self.points)) == 1

    def values(self) -> list[tuple]:
        return list(self.points)

    def to_spec(self) -> dict[int, list]:
        return {k: list(v) for k, v in zip(self.keys, self.points)}

    def __repr__(self) -> str:
        return f"RangeSchedule({self.to_spec()!r})"


def check_pixel_degradations(opts: Mapping[str, Any] | None, option: str = "degradations") -> dict[str, Any]:
    """The ``degradations`` option with every key filled in: probabilities and magnitudes as
    :class:`~utils.schedule.Schedule` (a constant unless a schedule was written), ranges as
    tuples, ``palette_max_colors`` an int. ValueError naming the key for an unknown key, a
    value out of range (every value a schedule takes is checked) or ``nearest_prob + box_prob``
    above 1 (checked at every step where either schedule changes)."""
    opts = {} if opts is None else opts
    if not isinstance(opts, Mapping):
        raise ValueError(f"{option} must be a mapping of degradation settings, got {opts!r}")
    unknown = sorted(map(str, set(opts) - set(DEFAULTS)))
    if unknown:
        raise ValueError(f"{option}: unknown key(s) {', '.join(unknown)} (known: {', '.join(DEFAULTS)})")
    out: dict[str, Any] = {}
    for key, default in DEFAULTS.items():
        value = opts.get(key, default)
        try:
            if key in PROBABILITIES or key in MAGNITUDES:
                try:
                    schedule = as_schedule(value)
                except ValueError as err:
                    raise ValueError(f"{key}: {err}") from None
                for v in schedule.values():
                    check_value(key, v)
                out[key] = schedule
            else:
                out[key] = check_value(key, value)
        except ValueError as err:
            raise ValueError(f"{option}.{err}") from None
    check_resampling_mass(out["nearest_prob"], out["box_prob"], option)
    return out


def _breakpoints(schedule: Schedule) -> list[int]:
    """Steps at which a schedule's value may peak: its keys, a ramp's ends and 16 steps between."""
    if schedule.ramp is not None:
        first, last = schedule.ramp[1], schedule.ramp[2]
        return [first + (last - first) * i // 16 for i in range(17)]
    return list(schedule.keys)


def check_resampling_mass(nearest: Schedule, box: Schedule, option: str = "degradations") -> None:
    """``nearest_prob + box_prob <= 1`` at step 0 and wherever either changes (bilinear takes
    the rest, so it cannot be negative)."""
    for step in sorted({0, *_breakpoints(nearest), *_breakpoints(box)}):
        total = nearest(step) + box(step)
        if total > 1.0 + 1e-9:
            raise ValueError(f"{option}: nearest_prob + box_prob must be at most 1 (bilinear gets the rest), "
                             f"got {nearest(step):g} + {box(step):g} = {total:g} at step {step}")


def knob_schedules(checked: Mapping[str, Any], curriculum: Mapping[Any, Mapping[str, Any]] | None,
                   option: str = "degrad_schedule", total_iter: int | None = None) -> dict[str, Any]:
    """Every setting of :data:`KNOBS` as a schedule, from checked ``degradations`` and the
    ``degrad_schedule`` curriculum ``{step: {setting: value, ...}, ...}``.

    A setting the curriculum names becomes a piecewise-constant schedule of the values it gives
    it (a setting left out of a step keeps its previous value); before the curriculum's first
    step that names it, it keeps its ``degradations`` value. A setting written as a schedule in
    ``degradations`` cannot also appear in the curriculum (which of the two would hold is not
    obvious): an error. Ranges become :class:`RangeSchedule`. ``nearest_prob + box_prob <= 1``
    is checked again on the result.
    """
    points: dict[str, dict[int, Any]] = {}
    for raw_step, entry in (curriculum or {}).items():
        try:
            step = resolve_step(raw_step, total_iter)
        except ValueError as err:
            raise ValueError(f"{option}: key {raw_step!r}: {err}") from None
        if step < 0:
            raise ValueError(f"{option}: step {raw_step!r} is negative")
        where = f"{option}[{raw_step}]"
        if not isinstance(entry, Mapping) or not entry:
            raise ValueError(f"{where} must be a non-empty mapping of degradation settings, got {entry!r}")
        for key, value in entry.items():
            if key not in KNOBS:
                raise ValueError(f"{where}: {key!r} cannot be scheduled (settings: {', '.join(KNOBS)})")
            if step in points.get(key, {}):
                raise ValueError(f"{where}: {key} is given twice for step {step}")
            try:
                points.setdefault(key, {})[step] = check_value(key, value)
            except ValueError as err:
                raise ValueError(f"{where}.{err}") from None
    out: dict[str, Any] = {}
    for key in KNOBS:
        base = checked[key]
        if key not in points:
            out[key] = base if isinstance(base, Schedule) else RangeSchedule({0: base})
            continue
        if isinstance(base, Schedule) and not base.is_constant:
            raise ValueError(f"{option}: {key} is also a schedule in degradations ({base.to_spec()}); write it in one "
                             "place only")
        steps = points[key]
        steps.setdefault(0, base.constant if isinstance(base, Schedule) else base)
        out[key] = RangeSchedule(steps) if key in RANGES else Schedule(points=steps)
    check_resampling_mass(out["nearest_prob"], out["box_prob"], option)
    return out


# ------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class PaletteShift:
    """One colour transform for every palette colour: contrast ``contrast`` about mid-grey
    127.5, rotation by ``hue`` degrees about the grey axis, then ``offset`` per channel (0-255)."""

    contrast: float
    hue: float
    offset: tuple[float, float, float]

    def hue_matrix(self) -> np.ndarray:
        """Rodrigues' rotation by ``hue`` degrees about the unit axis (1, 1, 1) / sqrt(3)."""
        theta = math.radians(self.hue)
        cos, sin = math.cos(theta), math.sin(theta)
        cross = np.array([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / math.sqrt(3.0)
        return cos * np.eye(3) + sin * cross + (1.0 - cos) * np.full((3, 3), 1.0 / 3.0)

    def apply(self, colours: np.ndarray) -> np.ndarray:
        """The transformed colours, float64 (N, C), unrounded; channels past the third unchanged."""
        out = np.array(colours, dtype=np.float64)
        n = min(out.shape[1], 3)
        out[:, :n] = self.contrast * (out[:, :n] - 127.5) + 127.5
        if n == 3:
            out[:, :3] = out[:, :3] @ self.hue_matrix().T
        out[:, :n] += np.asarray(self.offset[:n])
        return out


@dataclass(frozen=True)
class PixelPlan:
    """What :func:`apply_pixel_degradations` does to one patch, as drawn: ``None`` for a step
    that does not fire."""

    palette: PaletteShift | None
    kernel: str
    blur_sigma: float | None
    noise: tuple[float, int] | None  # (sigma, seed of the noise field's generator)
    jpeg_quality: int | None
    drop_channel: int | None


def _between(u: float, lo: float, hi: float) -> float:
    return lo + u * (hi - lo)


def _whole_between(u: float, lo: int, hi: int) -> int:
    return min(lo + int(u * (hi - lo + 1)), hi)


def plan_pixel_degradations(rng: np.random.Generator, values: Mapping[str, Any], channels: int) -> PixelPlan:
    """Draw one sample's degradations for settings ``values`` (plain numbers and pairs, as a
    sample sees them) and an image of ``channels`` channels.

    Always draws ``rng.random(DRAWS)``, used as: 0 palette fires, 1 contrast, 2 hue, 3-5 offsets;
    6 resampling kernel; 7 blur fires, 8 its sigma; 9 noise fires, 10 its sigma, 11 its seed;
    12 JPEG fires, 13 its quality; 14 channel drop fires, 15 which channel. A value ``u`` picks
    ``lo + u * (hi - lo)`` from a range (JPEG quality: ``lo + floor(u * (hi - lo + 1))``), the
    palette's ``c = 1 + palette_contrast * (2u - 1)``, ``hue = palette_hue * (2u - 1)``,
    ``offset = palette_shift * (2u - 1)``; the kernel is nearest for ``u < nearest_prob``, box for
    ``u < nearest_prob + box_prob``, bilinear otherwise; the dropped channel ``floor(u * channels)``
    (none for 1 channel).
    """
    u = rng.random(DRAWS)
    palette = None
    if u[0] < values["palette_prob"]:
        shift, contrast, hue = values["palette_shift"], values["palette_contrast"], values["palette_hue"]
        palette = PaletteShift(1.0 + contrast * (2 * u[1] - 1), hue * (2 * u[2] - 1),
                               tuple(float(shift * (2 * v - 1)) for v in u[3:6]))
    nearest = values["nearest_prob"]
    kernel = "nearest" if u[6] < nearest else "box" if u[6] < nearest + values["box_prob"] else "bilinear"
    blur = _between(u[8], *values["blur_sigma"]) if u[7] < values["blur_prob"] else None
    noise = None
    if u[9] < values["noise_prob"]:
        noise = (_between(u[10], *values["noise_sigma"]), int(u[11] * 2**53))
    quality = _whole_between(u[13], *map(int, values["jpeg_quality"])) if u[12] < values["jpeg_prob"] else None
    drop = min(int(u[15] * channels), channels - 1) if u[14] < values["channel_drop_prob"] and channels > 1 else None
    return PixelPlan(palette, kernel, blur, noise, quality, drop)


# ------------------------------------------------------------------------------ the steps


def _check_patch(img: np.ndarray, scale: int) -> None:
    if img.dtype != np.uint8 or img.ndim != 3:
        raise ValueError(f"pixel degradations take uint8 HWC images, got {img.dtype} of shape {img.shape}")
    h, w = img.shape[:2]
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1 or h % scale or w % scale:
        raise ValueError(f"pixel degradations: the {h}x{w} patch is not a multiple of scale {scale!r}")


def palette_of(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(colours, index)``: the distinct colours of a uint8 HWC image, (N, C) in ascending
    (lexicographic) order, and for every pixel the row of its colour, shape (H, W)."""
    h, w, c = img.shape
    flat = img.reshape(-1, c)
    if c <= 4:  # one integer per colour: np.unique on a 1-D array is much faster than on rows
        key = flat[:, 0].astype(np.uint32)
        for k in range(1, c):
            key <<= np.uint32(8)
            key |= flat[:, k]
        keys, index = np.unique(key, return_inverse=True)
        shifts = np.arange(c - 1, -1, -1, dtype=np.uint32) * np.uint32(8)
        colours = ((keys[:, None] >> shifts[None, :]) & np.uint32(255)).astype(np.uint8)
    else:
        colours, index = np.unique(flat, axis=0, return_inverse=True)
    return colours, index.reshape(h, w)


def count_colours(img: np.ndarray) -> int:
    """The number of distinct colours of a uint8 HWC image."""
    return len(palette_of(img)[0])


@lru_cache(maxsize=8)
def _nudges(channels: int) -> np.ndarray:
    """Offsets within 2 levels per channel, nearest first: by largest |d|, then sum |d|, then d."""
    deltas = [d for d in itertools.product(range(-2, 3), repeat=channels) if any(d)]
    deltas.sort(key=lambda d: (max(map(abs, d)), sum(map(abs, d)), d))
    return np.array(deltas, dtype=np.int16)


def separate_colours(colours: np.ndarray) -> np.ndarray:
    """``colours`` (N, C) int, each row made distinct from the rows before it where possible: a
    row equal to an earlier one moves to the first free colour at one of :func:`_nudges`'s
    offsets inside [0, 255] (kept as it is if all are taken)."""
    out = np.array(colours, dtype=np.int16)
    if len(np.unique(out, axis=0)) == len(out):  # the usual case: nothing collided
        return out
    taken: set[tuple[int, ...]] = set()
    for i in range(len(out)):
        colour = tuple(int(v) for v in out[i])
        if colour in taken:
            for delta in _nudges(out.shape[1]):
                candidate = tuple(int(v) for v in out[i] + delta)
                if min(candidate) >= 0 and max(candidate) <= 255 and candidate not in taken:
                    colour = candidate
                    break
        out[i] = colour
        taken.add(colour)
    return out


def shift_palette(img: np.ndarray, shift: PaletteShift, max_colors: int = DEFAULTS["palette_max_colors"]) -> np.ndarray:
    """``img`` (uint8 HWC) with its palette moved by ``shift``: every distinct colour transformed
    once, rounded half up, clipped, made distinct again (:func:`separate_colours`), and every
    pixel re-mapped. :class:`PaletteError` for more than ``max_colors`` distinct colours."""
    colours, index = palette_of(img)
    if len(colours) > max_colors:
        raise PaletteError(f"palette jitter: the image has {len(colours)} distinct colours, more than "
                           f"palette_max_colors {max_colors}: it is not a palette image, and shifting its pixels one "
                           "by one is not a palette shift. Raise palette_max_colors, set palette_prob to 0, or leave "
                           "the image out")
    moved = np.clip(np.floor(shift.apply(colours) + 0.5), 0, 255).astype(np.int16)
    moved = separate_colours(moved).astype(np.uint8)
    return moved[index]


@lru_cache(maxsize=16)
def tent_weights(scale: int) -> np.ndarray:
    """Integer weights of the bilinear (tent) filter that shrinks by ``scale``: ``2 scale - |d|``
    for the taps at doubled distances ``d`` from the block's centre; they sum to ``2 scale**2``.
    Scale 2: [1, 3, 3, 1]; 3: [2, 4, 6, 4, 2]; 4: [1, 3, 5, 7, 7, 5, 3, 1]."""
    taps = 2 * scale if scale % 2 == 0 else 2 * scale - 1
    d = np.abs(2 * np.arange(taps) - (taps - 1))
    return (2 * scale - d).astype(np.int32)


def _tent_rows(x: np.ndarray, scale: int) -> np.ndarray:
    """The tent filter along axis 0 at stride ``scale`` (integer sums, not yet divided); edges
    repeated."""
    weights, pad = tent_weights(scale), scale // 2
    padded = np.pad(x, [(pad, pad)] + [(0, 0)] * (x.ndim - 1), mode="edge")
    n = x.shape[0] // scale
    out = np.zeros((n,) + x.shape[1:], dtype=np.int32)
    for k, w in enumerate(weights):
        out += w * padded[k : k + scale * n : scale]
    return out


def _round_div(total: np.ndarray, divisor: int) -> np.ndarray:
    """``round(total / divisor)`` with halves up, for non-negative integers."""
    return ((total + divisor // 2) // divisor).astype(np.uint8)


def downscale(img: np.ndarray, scale: int, kernel: str) -> np.ndarray:
    """Shrink a uint8 HWC image whose sides are multiples of ``scale``, exactly:

    - ``nearest``: LR pixel ``(i, j)`` is HR pixel ``(i s + s // 2, j s + s // 2)``, the centre
      of its ``s x s`` block (at even ``s`` the one below right of the centre; PIL's and
      torch's ``nearest-exact``); an HR made by nearest upscaling comes back exactly;
    - ``box``: the mean of the block, rounded half up (area averaging);
    - ``bilinear``: the tent (triangle) filter of half-width ``s`` centred on the block, i.e. the
      antialiased bilinear shrink, separable, weights :func:`tent_weights` (scale 2: [1, 3, 3, 1]
      / 8 per axis), edge pixels repeated past the border, rounded half up.
    """
    _check_patch(img, scale)
    if kernel not in KERNELS:
        raise ValueError(f"downscale: kernel must be one of {', '.join(KERNELS)}, got {kernel!r}")
    if scale == 1:
        return img.copy()
    h, w, c = img.shape
    if kernel == "nearest":
        return np.ascontiguousarray(img[scale // 2 :: scale, scale // 2 :: scale])
    if kernel == "box":
        # one strided slice per block offset: much faster than a reshaped sum over two axes
        total = np.zeros((h // scale, w // scale, c), dtype=np.int32)
        for dy in range(scale):
            for dx in range(scale):
                total += img[dy::scale, dx::scale]
        return _round_div(total, scale * scale)
    rows = _tent_rows(img.astype(np.int32), scale)
    both = _tent_rows(rows.transpose(1, 0, 2), scale).transpose(1, 0, 2)
    return _round_div(both, 4 * scale**4)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """The normalised 1-D Gaussian of ``sigma`` on the taps ``-r .. r``, ``r = max(1, ceil(3 sigma))``."""
    radius = max(1, math.ceil(3.0 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-(x * x) / (2.0 * sigma * sigma))
    return k / k.sum()


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a uint8 HWC image (float64, borders mirrored without repeating
    the edge pixel, as numpy's ``reflect``), rounded half up."""
    k = gaussian_kernel(sigma)
    r = len(k) // 2
    x = img.astype(np.float64)
    for _ in range(2):  # rows, then (transposed) columns
        padded = np.pad(x, [(r, r), (0, 0), (0, 0)], mode="reflect")
        n = x.shape[0]
        out = k[0] * padded[:n]
        for t in range(1, len(k)):
            out += k[t] * padded[t : t + n]
        x = out.transpose(1, 0, 2)
    return np.clip(np.floor(x + 0.5), 0, 255).astype(np.uint8)


def add_noise(img: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """``img`` plus Gaussian noise of ``sigma`` (0-255 scale, independent per pixel and channel)
    from ``np.random.default_rng(seed)``, rounded half up and clipped."""
    noise = np.random.default_rng(seed).standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
    return np.clip(np.floor(img.astype(np.float32) + noise + np.float32(0.5)), 0, 255).astype(np.uint8)


def drop_channel(img: np.ndarray, channel: int) -> np.ndarray:
    """``img`` with ``channel`` replaced by the mean of the other channels, rounded half up: a
    channel lost in capture shows as a desaturated tint rather than a pure black channel, which
    would turn every colour into a garish complementary one."""
    c = img.shape[2]
    if c < 2:
        return img
    others = img.astype(np.int32).sum(axis=2) - img[:, :, channel].astype(np.int32)
    out = img.copy()
    out[:, :, channel] = (2 * others + (c - 1)) // (2 * (c - 1))
    return out


def apply_pixel_degradations(hr: np.ndarray, scale: int, plan: PixelPlan,
                             max_colors: int = DEFAULTS["palette_max_colors"]) -> tuple[np.ndarray, np.ndarray]:
    """``(gt, lq)`` of a uint8 HWC HR patch under ``plan`` (see the module docstring for the
    order and :func:`downscale` for the kernels). ``gt`` is ``hr`` itself unless the palette moved."""
    _check_patch(hr, scale)
    gt = shift_palette(hr, plan.palette, max_colors) if plan.palette is not None else hr
    lq = downscale(gt, scale, plan.kernel)
    if plan.blur_sigma is not None:
        lq = gaussian_blur(lq, plan.blur_sigma)
    if plan.noise is not None:
        lq = add_noise(lq, *plan.noise)
    if plan.jpeg_quality is not None:
        lq = jpeg_compress(lq, plan.jpeg_quality)
    if plan.drop_channel is not None:
        lq = drop_channel(lq, plan.drop_channel)
    return gt, lq


def pixel_degrade(hr: np.ndarray, scale: int, rng: np.random.Generator,
                  values: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(gt, lq)`` for a uint8 HWC HR patch: :func:`plan_pixel_degradations` from ``rng`` and
    the settings ``values`` (plain numbers and pairs; ``palette_max_colors`` optional), then
    :func:`apply_pixel_degradations`."""
    plan = plan_pixel_degradations(rng, values, hr.shape[2])
    return apply_pixel_degradations(hr, scale, plan, values.get("palette_max_colors", DEFAULTS["palette_max_colors"]))


def values_at(schedules: Mapping[str, Any], step: int) -> dict[str, Any]:
    """The plain settings at ``step`` of :func:`check_pixel_degradations`' or
    :func:`knob_schedules`' result (schedules called, constants kept)."""
    return {k: (v(step) if callable(v) else v) for k, v in schedules.items()}
