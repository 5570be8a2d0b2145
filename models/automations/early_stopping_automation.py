"""Stop training when a validation metric has not improved for a number of iterations."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from models.automations.base import Automation
from utils.options import OptionsError
from utils.registry import AUTOMATION_REGISTRY
from utils.steps import Step

if TYPE_CHECKING:
    from models.context import TrainingContext


@AUTOMATION_REGISTRY.register("early_stopping")
class EarlyStopping(Automation):
    """Stop the run once the monitored validation metric has stopped improving.

    ``monitor`` is a metric name of ``val.metrics`` scored on the first validation set, or
    ``"dataset/metric"`` for another set; by default the first set's first metric. Whether higher
    or lower is better comes from the metric (``val.metrics.<name>.better`` or its registration).

    At each validation, with ``value`` the monitored metric:

    - ``value`` becomes the best, with its iteration ``best_iter``, when it is better than the best so
      far by MORE than ``min_improvement`` (absolute, in the metric's units; the first finite value
      always does; a NaN/inf value never does);
    - otherwise, once ``iteration >= min_iterations`` and ``iteration - best_iter >= patience``, the
      run stops after this step (a checkpoint and ``net_g_best`` are written as usual). While no
      finite value has been seen, ``best_iter`` counts as 0.

    ``patience`` and ``min_iterations`` count iterations, not validations, so they keep their
    meaning when ``val.val_freq`` changes. A run whose metric improves by more than ``min_improvement``
    at least once every ``patience`` iterations is never stopped.
    Each validation is logged, with TensorBoard scalars ``automation/<name>/best`` and
    ``automation/<name>/iterations_since_best``.

    Args:
        monitor: metric to watch: a ``val.metrics`` name (scored on the first validation set) or
            ``dataset/metric``; null: the first validation set's first metric.
        patience: iterations (not validations) without an improvement after which the run stops (≥ 1).
        min_improvement: margin by which a value must beat the best to count as an improvement (absolute,
            in the metric's units, ≥ 0).
        min_iterations: the run is never stopped before this iteration.
    """

    def __init__(
        self,
        monitor: str | None = None,
        patience: Annotated[Step, Field(ge=1)] = 5000,
        min_improvement: Annotated[float, Field(ge=0.0)] = 0.0,
        min_iterations: Annotated[Step, Field(ge=0)] = 0,
    ) -> None:
        self.monitor = monitor
        self.patience = patience
        self.min_improvement = min_improvement
        self.min_iterations = min_iterations
        # resolved at train start: (dataset, metric) and the metric's direction
        self.dataset = ""
        self.metric = ""
        self.higher = True
        # progress (the state)
        self.best: float | None = None
        self.best_iter = 0
        self._loaded_monitor: str | None = None  # what a loaded state watched

    @classmethod
    def check_options(cls, opt: Any, section: dict[str, Any], path: str) -> list[tuple[str, str]]:
        metrics = list(opt.val.metrics) if opt.val is not None else []
        sets = [ds.get("name") or key for key, ds in opt.datasets.items() if key != "train"]
        if not metrics or not sets:
            return [(path, "early stopping watches a validation metric: add a validation dataset "
                           "(datasets.val) and val.metrics")]
        monitor = section.get("monitor")
        if monitor is None:
            return []
        dataset, metric = monitor.split("/", 1) if "/" in monitor else (sets[0], monitor)
        if dataset not in sets or metric not in metrics:
            return [(f"{path}.monitor", f"'{monitor}' is not a validation metric; valid metric names: "
                     f"{', '.join(metrics)} (of the first validation set, or 'dataset/metric' with a set among: "
                     f"{', '.join(sets)})")]
        return []

    # --------------------------------------------------------------- helpers

    def _resolve(self, ctx: TrainingContext) -> None:
        """Find (dataset, metric) to watch; a mistake is an option error naming the valid choices."""
        path = f"train.training_automations.{self.name}"
        problems = self.check_options(ctx.opt, {"monitor": self.monitor}, path)  # the --check rule, once
        if problems:
            raise OptionsError(ctx.opt.source, problems)
        default = ctx.default_monitor()
        dataset, metric = default if self.monitor is None else (
            self.monitor.split("/", 1) if "/" in self.monitor else (default[0], self.monitor))
        self.dataset, self.metric = dataset, metric
        self.higher = ctx.metric_better(metric) == "higher"

    def _improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        gain = value - self.best if self.higher else self.best - value
        return gain > self.min_improvement

    # ----------------------------------------------------------------- hooks

    def on_train_start(self, ctx: TrainingContext) -> None:
        self._resolve(ctx)
        watched = f"{self.dataset}/{self.metric}"
        if self._loaded_monitor not in (None, watched):
            # a resumed run now watches another metric: the old best means nothing for it
            ctx.report(self.name, f"the monitor changed from {self._loaded_monitor} to {watched}: best forgotten")
            self.best, self.best_iter = None, ctx.iteration
        ctx.report(self.name, f"watching {self.dataset}/{self.metric} ({'higher' if self.higher else 'lower'} is "
                   f"better): stop after {self.patience} iterations without an improvement of more than "
                   f"{self.min_improvement:g}, not before iteration {self.min_iterations}")

    def on_validation_end(self, ctx: TrainingContext, metrics: dict[str, dict[str, float]]) -> None:
        if self.dataset not in metrics:
            return
        value = float(metrics[self.dataset][self.metric])
        it = ctx.iteration
        if self._improves(value):
            old, self.best, self.best_iter = self.best, value, it
            was = "" if old is None else f" (was {old:.6g})"
            ctx.report(self.name, f"new best {self.metric} {value:.6g}{was}", self._scalars(it))
            return
        waited = it - self.best_iter
        best = "none" if self.best is None else f"{self.best:.6g}"
        ctx.report(self.name, f"{self.metric} {value:.6g}: no improvement on the best {best} (iteration "
                   f"{self.best_iter}) for {waited}/{self.patience} iterations", self._scalars(it))
        if it >= self.min_iterations and waited >= self.patience:
            ctx.request_stop(f"{self.name}: {self.dataset}/{self.metric} has not improved by more than "
                             f"{self.min_improvement:g} on its best {best} (iteration {self.best_iter}) for "
                             f"{waited} iterations (patience {self.patience})")

    def _scalars(self, it: int) -> dict[str, float]:
        out = {f"automation/{self.name}/iterations_since_best": float(it - self.best_iter)}
        if self.best is not None:
            out[f"automation/{self.name}/best"] = self.best
        return out

    # ----------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": f"{self.dataset}/{self.metric}", "best": self.best, "best_iter": self.best_iter}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = None if state.get("best") is None else float(state["best"])
        self.best_iter = int(state.get("best_iter", 0))
        self._loaded_monitor = state.get("monitor")
