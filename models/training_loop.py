"""The training loop: steps, logging, validation, checkpoints and the automation hooks.

It knows no network, loss or automation by name: the runner trains, validates and names the
weight files; automations act through a :class:`~models.context.TrainingContext`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from models.automations.base import Automation
from models.context import TrainingContext
from utils import dist
from utils.checkpoint import CheckpointWriteError, save_training_state, save_weights
from utils.options import AutomationEntry, Options, OptionsError, head_and_kwargs
from utils.registry import AUTOMATION_REGISTRY


def automation_sections(opt: Options) -> list[tuple[str, dict[str, Any]]]:
    """(option path, section) of every automation the file configures, in file order."""
    t = opt.train
    found = [(f"train.training_automations.{k}", v) for k, v in t.training_automations.items()]
    for _, cls in AUTOMATION_REGISTRY.items():
        section = getattr(cls, "section", None)
        if section and getattr(t, section, None) is not None:
            found.append((f"train.{section}", getattr(t, section)))
    return found


def build_automations(opt: Options) -> list[Automation]:
    built: list[Automation] = []
    seen: dict[type, str] = {}
    for path, section in automation_sections(opt):
        head, kwargs = head_and_kwargs(section, AutomationEntry)
        cls = AUTOMATION_REGISTRY.get(head["type"])
        if cls in seen:
            raise OptionsError(opt.source, [(path, f"configured twice (also at {seen[cls]})")])
        seen[cls] = path
        if head.get("enabled", True):
            automation = cls(**kwargs)
            # the registry's spelling, so the state key does not depend on how the file writes it
            automation.name = next(n for n, c in AUTOMATION_REGISTRY.items() if c is cls)
            built.append(automation)
    return built


def console_names(logs: dict[str, float]) -> dict[str, float]:
    """The logged values for the console line: short names (the last part, or the whole name where
    two would read alike), without the ``EMA/*`` bookkeeping, which only TensorBoard gets."""
    shown = {k: v for k, v in logs.items() if not k.startswith("EMA/")}
    last = [k.split("/")[-1] for k in shown]
    return {(k.split("/")[-1] if last.count(k.split("/")[-1]) == 1 else k): v for k, v in shown.items()}


class TrainingLoop:
    def __init__(self, opt: Options, model: Any, stream: Any, val_loaders: dict[str, Any],
                 automations: list[Automation], exp: Path, tb: Any, log: Any,
                 resume_command: str | None = None) -> None:
        self.opt, self.model, self.stream, self.val_loaders = opt, model, stream, val_loaders
        self.automations, self.exp, self.tb, self.log = automations, exp, tb, log
        # the command that continues this run (with its -o overrides), shown after Ctrl+C
        self.resume_command = resume_command or f"python train.py -opt {opt.source} --auto_resume"
        self.ctx = TrainingContext(self)
        self.stop_reason: str | None = None
        self.save_requests: list[str] = []
        self.scores: dict[int, float] = {}  # logger.keep_best: iteration → metric value
        self.metrics: dict[str, dict[str, float]] = {}

    # -------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        # plain values only (states load with weights_only): metric scores as Python floats
        return {"automations": {a.name: a.state_dict() for a in self.automations},
                "scores": {int(k): float(v) for k, v in self.scores.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scores = {int(k): v for k, v in state.get("scores", {}).items()}
        saved = state.get("automations", {})
        for automation in self.automations:
            if automation.name in saved:
                automation.load_state_dict(saved[automation.name])

    def hook(self, name: str, *args: Any) -> None:
        for automation in self.automations:
            getattr(automation, name)(self.ctx, *args)

    # --------------------------------------------------------------------- steps

    def train_step(self, iteration: int) -> None:
        """One step; an out-of-memory error is offered to the automations, which may change the
        batch and have the step redone from the same samples."""
        accumulate = self.opt.train.accumulate_grad_batches
        while True:
            batches = [self.stream.next() for _ in range(accumulate)]
            try:
                self.model.train_step(batches, iteration)
                self.stream.step_done()
                return
            except torch.cuda.OutOfMemoryError as err:
                del batches
                self.model.discard_step()
                self.ctx.release_memory()
                self.stream.rewind()
                if not any(a.on_out_of_memory(self.ctx, err) for a in self.automations):
                    raise RuntimeError(
                        f"CUDA out of memory at iteration {iteration} ({err}). Lower datasets.train."
                        "batch_size_per_gpu or gt_size, enable amp: bf16, or use val.tile for large validation "
                        "images. Saved checkpoints are intact; resume with --auto_resume.") from err

    def log_step(self, iteration: int, progress: Any) -> dict[str, float]:
        logs = self.model.pop_logs(iteration)
        rate = progress.measure(iteration)
        if self.model.device.type == "cuda":
            logs["vram/peak_gb"] = torch.cuda.max_memory_allocated(self.model.device) / 2**30
        self.tb.scalars(logs, iteration)
        shown = "  ".join(f"{name} {v:.4g}" for name, v in console_names(logs).items())
        progress.set_status(shown)
        total = self.opt.train.total_iter
        eta = (total - iteration) / rate if rate > 0 else math.nan
        self.log.info(f"iter {iteration}/{total}  {rate:.2f} it/s  eta {eta:.0f}s  {shown}")
        return logs

    # ---------------------------------------------------------------- validation

    def validate(self, iteration: int) -> dict[str, dict[str, float]]:
        # NaN weights would validate as NaN and could become net_g_best: stop before (the loss is
        # otherwise checked at logging steps only, and a validation step need not be one)
        self.model.check_finite(iteration, weights=True)
        out = {}
        single = len(self.val_loaders) == 1
        for index, (name, loader) in enumerate(self.val_loaders.items()):
            # each rank validates (and saves the images of) its own share of the set
            save_dir = self.exp / "visualization" / name if self.opt.val.save_img else None
            means, _ = self.model.validate(loader, name, iteration, save_dir, self.tb if dist.is_main() else None)
            out[name] = means
            prefix = "val_metrics" if single else f"val_metrics/{name}"
            self.tb.scalars({f"{prefix}/{k}": v for k, v in means.items()}, iteration)
            if index == 0:
                self.propose_best(self.model.eval_net(), {name: means}, "ema" if self.model.ema else "live")
                self.model.observe_validation(means, iteration)
            self.model.update_best(name, means, iteration)
            best = self.model.best[name]
            self.log.info(f"validation {name} @ {iteration}: " + ", ".join(
                f"{k} {v:.4f} (best {best[k]['value']:.4f} @ {best[k]['iter']}"
                + (f" from {best[k]['source']})" if best[k].get("source") not in (None, "ema", "live") else ")")
                for k, v in means.items()))
        keep = self.opt.logger.keep_best
        if keep is not None:
            self.scores[iteration] = out[keep.dataset or next(iter(out))][keep.metric]
        self.metrics = out
        return out

    def propose_best(self, net: Any, metrics: dict[str, dict[str, float]], source: str) -> bool:
        """Save ``net`` as ``net_g_best`` if it beats the best of the first set's first metric;
        the file's metadata says where it came from (``swa_promoted``: SWA won over EMA)."""
        monitor = self.ctx.default_monitor()
        if monitor is None or monitor[0] not in metrics:
            return False
        dataset, metric = monitor
        value = metrics[dataset][metric]
        old = self.model.best.get(dataset, {}).get(metric)
        higher = self.model.metric_better(metric) == "higher"
        if old is not None and not (value > old["value"] if higher else value < old["value"]):
            return False
        self.model.best.setdefault(dataset, {})[metric] = {"value": value, "iter": self.ctx.iteration,
                                                          "source": source}
        meta = {**self.model.weight_metadata("net_g", self.ctx.iteration, source),
                "iter": str(self.ctx.iteration), "source": source, metric: f"{value:.6f}",
                "swa_promoted": str(source == "swa").lower()}
        self.write_on_main("net_g_best", lambda: save_weights(self.exp / "models", "net_g", "best", net,
                                                              keep_last=10**9, metadata=meta))
        if source not in ("ema", "live"):
            self.log.info(f"best weights now from {source}: {metric} {value:.4f} at iteration {self.ctx.iteration}")
        return True

    # ------------------------------------------------------------------- saving

    def protected(self) -> set[int]:
        keep = self.opt.logger.keep_best
        if keep is None:
            return set()
        higher = self.model.metric_better(keep.metric) == "higher"
        ranked = sorted(self.scores, key=lambda it: self.scores[it], reverse=higher)
        return set(ranked[:keep.k])

    def write_on_main(self, what: str, write: Callable[[], Any]) -> None:
        """Run ``write`` on rank 0. Under DDP every rank then learns whether it succeeded, so a
        failed write (disk full, ...) stops every rank with an error instead of leaving the others
        waiting in the next collective (a collective: all ranks call it at the same point)."""
        error: Exception | None = None
        if dist.is_main():
            try:
                write()
            except Exception as err:  # noqa: BLE001 - re-raised below, after the ranks agree
                error = err
        if dist.is_dist() and dist.any_rank(error is not None) and error is None:
            raise CheckpointWriteError(f"rank 0 could not write {what}; its error names the file and the cause")
        if isinstance(error, CheckpointWriteError):  # say how to go on once the cause is fixed
            raise CheckpointWriteError(f"{error}; the run's earlier checkpoints are intact, continue with: "
                                       f"{self.resume_command}") from error
        if error is not None:
            raise error

    def save(self, iteration: int) -> None:
        """Weights and a full training state, written atomically by rank 0 after every rank has
        agreed that neither the loss nor the weights went NaN."""
        self.model.check_finite(iteration, weights=True)
        self.write_on_main(f"the checkpoint of iteration {iteration}", lambda: self._write_checkpoint(iteration))

    def _write_checkpoint(self, iteration: int) -> None:
        keep, protect = self.opt.logger.keep_last, self.protected()
        for label, net in self.model.checkpoint_nets().items():
            save_weights(self.exp / "models", label, iteration, net, keep, protect,
                         metadata=self.model.weight_metadata(label, iteration))
        state = {"iter": iteration, "data": self.stream.state(), "model": self.model.state_dict(),
                 "loop": self.state_dict()}
        save_training_state(self.exp / "training_states", iteration, state, keep, protect)

    # ---------------------------------------------------------------------- run

    def run(self, start_iter: int, resumed: bool, stop_signal: Any, progress: Any) -> dict[str, Any]:
        """Train from ``start_iter`` to ``train.total_iter`` (or an early stop, or a signal)."""
        t, lg, val = self.opt.train, self.opt.logger, self.opt.val
        validating = val is not None and bool(self.val_loaders)
        iteration = self.ctx.iteration = start_iter
        last_saved, last_validated = (start_iter if resumed else -1), -1
        results: dict[str, Any] = {}
        self.hook("on_train_start")
        while iteration < t.total_iter:
            iteration = self.ctx.iteration = iteration + 1
            self.train_step(iteration)
            progress.advance(iteration)
            logs = None
            if iteration % lg.print_freq == 0 or iteration == t.total_iter:
                logs = self.log_step(iteration, progress)
            self.hook("on_step_end", logs)
            if validating and (iteration % val.val_freq == 0 or iteration == t.total_iter):
                self.hook("on_validation_end", self.validate(iteration))
                last_validated = iteration
            due = iteration % lg.save_checkpoint_freq == 0 or (lg.keep_best is not None and last_validated == iteration)
            if due or self.save_requests:
                self.save(iteration)
                last_saved, self.save_requests = iteration, []
            if stop_signal(iteration):
                self.log.warning(f"interrupted at iteration {iteration}: saving a training state")
                if last_saved != iteration:
                    self.save(iteration)
                self.log.warning(f"saved; continue with: {self.resume_command}")
                results["interrupted"] = True
                return {**results, "iter": iteration}
            if self.stop_reason is not None:
                self.log.warning(f"stopping early at iteration {iteration}: {self.stop_reason}")
                results["stopped_early"] = {"iter": iteration, "reason": self.stop_reason}
                break
        if validating and last_validated != iteration:
            self.hook("on_validation_end", self.validate(iteration))
        self.hook("on_train_end")
        if last_saved != iteration or self.save_requests:
            self.save(iteration)
        return {**results, "iter": iteration}
