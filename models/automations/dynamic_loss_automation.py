"""Dynamic loss weights: hold each loss term's share of the weighted total near a target that is
derived from measured statistics of the training images."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from models.automations.base import Automation
from utils.image_statistics import REFERENCE_SCALES, STAT_NAMES, complexity_score, sample_statistics
from utils.registry import AUTOMATION_REGISTRY

if TYPE_CHECKING:
    from models.context import TrainingContext

# Losses that compare local structure (windows, gradients) rather than single pixels.
STRUCTURAL_LOSSES = frozenset({"ssimloss", "msssimloss", "gradientloss"})
STRUCTURAL_LABELS = frozenset({"ssim", "msssim", "gradient"})
# Share of the structural group: S = SHARE_LOW + SHARE_SPAN * structure, structure in [0, 1].
SHARE_LOW, SHARE_SPAN = 0.1, 0.4
# Adaptation rate from calibration: r = RATE_LOW + RATE_SPAN * complexity.
RATE_LOW, RATE_SPAN = 0.1, 0.4
UNCALIBRATED_RATE = 0.25
# A relative change below this is rounding, not a change (it is neither applied nor reported).
CHANGE_TOLERANCE = 1e-9


def structure_score(stats: dict[str, float]) -> float:
    """(min(texture_variance / 0.01, 1) + min(edge_density / 0.4, 1)) / 2, in [0, 1]."""
    parts = [min(max(float(stats[k]), 0.0) / REFERENCE_SCALES[k], 1.0) for k in ("texture_variance", "edge_density")]
    return sum(parts) / 2


def calibrated_targets(stats: dict[str, float], structural: dict[str, bool]) -> dict[str, float]:
    """Target shares: the structural group gets S = 0.1 + 0.4 * structure, the other terms 1 - S,
    split equally inside each group; normalised to sum 1 over the terms given (so a group with
    no term leaves its share to the other)."""
    s = SHARE_LOW + SHARE_SPAN * structure_score(stats)
    counts = {flag: sum(1 for v in structural.values() if v is flag) for flag in (True, False)}
    raw = {label: (s if flag else 1.0 - s) / counts[flag] for label, flag in structural.items()}
    total = sum(raw.values())
    return {label: value / total for label, value in raw.items()}


def calibrated_rate(stats: dict[str, float]) -> float:
    """r = 0.1 + 0.4 * complexity_score(stats), in [0.1, 0.5]."""
    return RATE_LOW + RATE_SPAN * complexity_score(stats)


def _clip(value: float, lo: float, hi: float) -> float:
    return min(max(value, lo), hi)


def initial_multipliers(weights: dict[str, float], targets: dict[str, float], min_weight: float,
                        max_weight: float) -> dict[str, float]:
    """Before any loss is measured (terms assumed equally large): effective weight
    e_i = clip(tau_i * sum_j w_j, min, max), so m_i = e_i / w_i, over the terms with w_i > 0."""
    active = [label for label, w in weights.items() if w > 0]
    budget = sum(weights[label] for label in active)
    tsum = sum(targets[label] for label in active)
    return {label: _clip(targets[label] / tsum * budget, min_weight, max_weight) / weights[label]
            for label in active}


def shares(weights: dict[str, float], multipliers: dict[str, float],
           magnitudes: dict[str, float]) -> dict[str, float]:
    """share_i = w_i m_i l_i / sum_j w_j m_j l_j over the terms of ``magnitudes``."""
    parts = {label: weights[label] * multipliers[label] * value for label, value in magnitudes.items()}
    total = sum(parts.values())
    return {label: part / total for label, part in parts.items()}


def adapt_multipliers(weights: dict[str, float], multipliers: dict[str, float], magnitudes: dict[str, float],
                      targets: dict[str, float], rate: float, min_weight: float,
                      max_weight: float) -> dict[str, float]:
    """One update of the terms in ``magnitudes`` (the active ones; see the class docstring)."""
    active = list(magnitudes)
    now = shares(weights, multipliers, magnitudes)
    tsum = sum(targets[label] for label in active)
    moved = {label: multipliers[label] * (targets[label] / tsum / now[label]) ** rate for label in active}
    # Keep the configured total weight: the rule moves weight between terms, it does not rescale the
    # loss (which would act like an LR change).
    budget = sum(weights[label] for label in active)
    scale = budget / sum(weights[label] * moved[label] for label in active)
    return {label: _clip(weights[label] * moved[label] * scale, min_weight, max_weight) / weights[label]
            for label in active}


@AUTOMATION_REGISTRY.register("dynamic_loss_scheduling")
class DynamicLossAutomation(Automation):
    """Adapts a multiplier m_i per loss term so that the term's share of the weighted total stays
    near a target share tau_i. w_i is the term's scheduled weight at the step, e_i = w_i m_i its
    effective weight, l_i its unweighted logged value.

    Calibration (``auto_calibrate``, once per run at train start; a resumed run keeps its result):
    mean texture variance, edge density and colour variation over ``calibration_samples`` crops of
    ``calibration_crop`` px of the training files (``utils.image_statistics.sample_statistics``,
    seeded by ``seed``), reported. Then

    - structure = (min(texture_variance / 0.01, 1) + min(edge_density / 0.4, 1)) / 2;
    - structural terms (SSIMLoss, MSSSIMLoss, GradientLoss by their ``type`` in ``train.losses``)
      share S = 0.1 + 0.4 * structure, the other (pixel) terms 1 - S, split equally inside each
      group: textured, edge-rich data puts more weight on structure, flat data on pixels;
    - adaptation rate r = 0.1 + 0.4 * complexity_score(stats) (``adaptation_rate`` overrides it):
      complex data moves the weights faster;
    - initial multipliers, terms assumed equally large: e_i = clip(tau_i * sum_j w_j, min_weight,
      max_weight), m_i = e_i / w_i, over the terms with w_i > 0 at the start.

    Without ``auto_calibrate`` (or without training files to measure), tau_i is the share a term
    has at the first logging step where it is active, and r = ``adaptation_rate`` or 0.25.

    At every logging step, over the active terms A (w_i > 0, m_i > 0, a finite positive l_i
    logged; the others are left alone), with s = ``smoothing``:

    1. L_i = s * L_i + (1 - s) * l_i (L_i = l_i the first time);
    2. share_i = e_i L_i / sum_{j in A} e_j L_j, and tau_i renormalised to sum 1 over A;
    3. m_i' = m_i * (tau_i / share_i) ** r;
    4. keep the total weight: m_i'' = m_i' * sum_{j in A} w_j / sum_{j in A} w_j m_j';
    5. clamp the effective weight: m_i = clip(w_i m_i'', min_weight, max_weight) / w_i.

    With r = 1 and no clamping, step 3 reaches the targets in one step; r < 1 moves geometrically.
    Changes are reported with scalars ``dynamic_weight/<label>`` (the multipliers).

    Args:
        auto_calibrate: measure the training images at train start to set the target shares, the rate and
            the initial multipliers; false: each term's target is its share at its first active logging step.
        min_weight: lower clamp of each term's effective weight w_i * m_i (> 0).
        max_weight: upper clamp of each term's effective weight (≥ ``min_weight``).
        smoothing: s in L_i = s * L_i + (1 - s) * l_i, the smoothing of the logged loss values, in [0, 1)
            (0: none).
        adaptation_rate: exponent r of the update, in (0, 1] (1: reach the targets in one step); null: from
            the calibration (0.1 to 0.5), or 0.25 without one.
        calibration_samples: number of random crops measured for the calibration (≥ 1).
        calibration_crop: side in pixels of each calibration crop (≥ 8); smaller images are used whole.
        seed: seed of the calibration's choice of images and crop positions.
    """

    section = "dynamic_loss_scheduling"

    def __init__(self, auto_calibrate: bool = True, min_weight: Annotated[float, Field(gt=0)] = 1e-3,
                 max_weight: Annotated[float, Field(gt=0)] = 10.0,
                 smoothing: Annotated[float, Field(ge=0, lt=1)] = 0.9,
                 adaptation_rate: Annotated[float, Field(gt=0, le=1)] | None = None,
                 calibration_samples: Annotated[int, Field(ge=1)] = 64,
                 calibration_crop: Annotated[int, Field(ge=8)] = 96, seed: int = 0) -> None:
        if not 0 < min_weight <= max_weight:
            raise ValueError(f"dynamic_loss_scheduling: need 0 < min_weight <= max_weight, got {min_weight}, "
                             f"{max_weight}")
        if not 0 <= smoothing < 1:
            raise ValueError(f"dynamic_loss_scheduling: smoothing must be in [0, 1), got {smoothing}")
        if adaptation_rate is not None and not 0 < adaptation_rate <= 1:
            raise ValueError(f"dynamic_loss_scheduling: adaptation_rate must be in (0, 1], got {adaptation_rate}")
        self.auto_calibrate = auto_calibrate
        self.min_weight, self.max_weight = float(min_weight), float(max_weight)
        self.smoothing = float(smoothing)
        self.adaptation_rate = adaptation_rate
        self.calibration_samples, self.calibration_crop, self.seed = calibration_samples, calibration_crop, seed
        # the state
        self.calibrated = False
        self.statistics: dict[str, float] | None = None
        self.calibrated_rate: float | None = None
        self.targets: dict[str, float] = {}
        self.magnitudes: dict[str, float] = {}

    @property
    def rate(self) -> float:
        if self.adaptation_rate is not None:
            return float(self.adaptation_rate)
        return self.calibrated_rate if self.calibrated_rate is not None else UNCALIBRATED_RATE

    # ------------------------------------------------------------------ calibration

    @staticmethod
    def structural_terms(ctx: TrainingContext) -> dict[str, bool]:
        """label -> whether the term is structural, from its ``train.losses`` type (the runner labels
        the entries in order), else from its label."""
        labels = ctx.loss_labels()
        entries = list(getattr(ctx.opt.train, "losses", None) or [])
        if len(entries) == len(labels):
            return {label: str(e["type"]).lower() in STRUCTURAL_LOSSES for label, e in zip(labels, entries)}
        return {label: label.rsplit("_", 1)[0] in STRUCTURAL_LABELS for label in labels}

    def on_train_start(self, ctx: TrainingContext) -> None:
        if not self.auto_calibrate or self.calibrated:
            return
        self.calibrated = True
        files = ctx.train_files()
        if not files:
            ctx.report(self.name, "no training image files to measure: the target shares will be the shares at "
                                  "the first logging step")
            return
        stats = sample_statistics(files, self.calibration_crop, self.calibration_samples, self.seed,
                                  read=ctx.read_train_image)
        self.statistics = {k: float(stats[k]) for k in STAT_NAMES}
        self.calibrated_rate = calibrated_rate(self.statistics)
        structural = self.structural_terms(ctx)
        self.targets = calibrated_targets(self.statistics, structural)
        structure = structure_score(self.statistics)
        ctx.report(self.name,
                   f"measured {self.calibration_samples} crops of {self.calibration_crop} px from {len(files)} files: "
                   + ", ".join(f"{k} {v:.5g}" for k, v in self.statistics.items())
                   + f"; structure {structure:.4f}, complexity {complexity_score(self.statistics):.4f}; target shares "
                   + ", ".join(f"{k} {v:.4f}" + (" (structural)" if structural[k] else "")
                               for k, v in self.targets.items())
                   + f"; adaptation rate {self.rate:.4f}",
                   {**{f"dynamic_loss/{k}": v for k, v in self.statistics.items()},
                    "dynamic_loss/structure": structure, "dynamic_loss/adaptation_rate": self.rate,
                    **{f"dynamic_loss/target/{k}": v for k, v in self.targets.items()}})
        weights = {label: ctx.loss_weight(label) for label in ctx.loss_labels()}
        self._apply(ctx, initial_multipliers(weights, self.targets, self.min_weight, self.max_weight), weights,
                    "initial multipliers from the target shares")

    # ------------------------------------------------------------------ adaptation

    def on_step_end(self, ctx: TrainingContext, logs: dict[str, float] | None) -> None:
        if logs is None:  # only logged means are read: no device sync on other steps
            return
        weights = {label: ctx.loss_weight(label) for label in ctx.loss_labels()}
        multipliers = {label: ctx.loss_multiplier(label) for label in weights}
        values = {label: logs.get(ctx.loss_log_key(label)) for label in weights}
        active = [label for label in weights if weights[label] > 0 and multipliers[label] > 0
                  and values[label] is not None and math.isfinite(values[label]) and values[label] > 0]
        s = self.smoothing
        for label in active:
            old = self.magnitudes.get(label)
            self.magnitudes[label] = values[label] if old is None else s * old + (1 - s) * values[label]
        if len(active) < 2:
            return
        magnitudes = {label: self.magnitudes[label] for label in active}
        current = shares(weights, multipliers, magnitudes)
        for label in active:  # without calibration: hold the share a term first had
            self.targets.setdefault(label, current[label])
        new = adapt_multipliers(weights, multipliers, magnitudes, self.targets, self.rate,
                                self.min_weight, self.max_weight)
        self._apply(ctx, new, weights, "shares " + ", ".join(f"{k} {v:.4f}" for k, v in current.items()))

    def _apply(self, ctx: TrainingContext, new: dict[str, float], weights: dict[str, float], why: str) -> None:
        changed = {}
        for label, value in new.items():
            old = ctx.loss_multiplier(label)
            if abs(value - old) > CHANGE_TOLERANCE * max(abs(old), 1e-12):
                ctx.set_loss_multiplier(label, value)
                changed[label] = value
        if changed:
            now = {k: ctx.loss_multiplier(k) for k in new}
            shown = ", ".join(f"{k} {m:.4g} (weight {weights[k] * m:.4g})" for k, m in now.items())
            ctx.report(self.name, f"{why}; multipliers {shown}", {f"dynamic_weight/{k}": m for k, m in now.items()})

    # ---------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        return {"calibrated": self.calibrated, "statistics": self.statistics, "calibrated_rate": self.calibrated_rate,
                "targets": dict(self.targets), "magnitudes": dict(self.magnitudes)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.calibrated = bool(state.get("calibrated", False))
        self.statistics = state.get("statistics")
        self.calibrated_rate = state.get("calibrated_rate")
        self.targets = dict(state.get("targets", {}))
        self.magnitudes = dict(state.get("magnitudes", {}))
