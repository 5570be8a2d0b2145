"""What a training automation may see and change: the runner's public surface, through one object."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from utils.weights import save_network

if TYPE_CHECKING:
    from models.training_loop import TrainingLoop


class TrainingContext:
    """Handed to every automation hook. Everything an automation changes goes through here, so
    each change can be logged, saved in the training state and restored on resume:

    - LR: a multiplier per optimiser (``set_lr_multiplier``), kept in each param group as
      ``lr_scale``; the LR schedulers multiply their value by it, so it survives their next step.
    - Losses: a multiplier per loss term (``set_loss_multiplier``) on top of its scheduled weight.
    - Data: live settings (``data_value``/``set_data``: ``batch_size``, ``gt_size``, ...), applied
      from the next batch.
    - Control: ``request_stop(reason)``, ``request_save(tag)``; ``validate(net)``,
      ``propose_best(net, metrics, source)``, ``save_weights(label, net, metadata)``.
    - Logging: ``report(source, message, scalars)`` to the log file and TensorBoard.
    """

    def __init__(self, loop: TrainingLoop) -> None:
        self._loop = loop
        self.iteration = 0

    # ----------------------------------------------------------------- the run

    @property
    def total_iter(self) -> int:
        return self._loop.opt.train.total_iter

    @property
    def device(self) -> torch.device:
        return self._loop.model.device

    @property
    def opt(self) -> Any:
        return self._loop.opt

    @property
    def nets(self) -> dict[str, nn.Module]:
        """The runner's networks by name (bare: no DDP or compile wrappers)."""
        return self._loop.model.nets

    @property
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self._loop.model.optimizers

    def eval_net(self) -> nn.Module:
        return self._loop.model.eval_net()

    # ---------------------------------------------------------------------- LR

    def lr_multiplier(self, key: str) -> float:
        return float(self.optimizers[key].param_groups[0].get("lr_scale", 1.0))

    def set_lr_multiplier(self, key: str, value: float) -> None:
        """Scale optimiser ``key``'s LR by ``value`` relative to its schedule, from now on."""
        if not value > 0:
            raise ValueError(f"LR multiplier must be positive, got {value}")
        for group in self.optimizers[key].param_groups:
            old = group.get("lr_scale", 1.0)
            group["lr"] = group["lr"] / old * value
            group["lr_scale"] = value
        scheduler = self._loop.model.schedulers.get(key)
        if scheduler is not None:  # keep get_last_lr() true until the scheduler's next step
            scheduler._last_lr = [g["lr"] for g in self.optimizers[key].param_groups]

    def base_lr(self, key: str) -> float:
        """The LR the option file gives optimiser ``key`` (its first group), before any schedule."""
        group = self.optimizers[key].param_groups[0]
        return float(group.get("initial_lr", group["lr"]))

    # ------------------------------------------------------------------ losses

    def loss_labels(self) -> list[str]:
        return self._loop.model.losses.labels

    def loss_log_key(self, label: str | None = None) -> str:
        """The name under which the logs carry loss ``label`` (None: the weighted total)."""
        return self._loop.model.losses.log_key(label)

    def loss_weight(self, label: str) -> float:
        """The weight of loss ``label`` at this iteration without the multiplier: its schedule
        times the loss's own ``step_weight`` (e.g. distillation's ramp and sampled steps)."""
        return float(self._loop.model.losses.term(label).weight_at(self.iteration))

    def loss_multiplier(self, label: str) -> float:
        return self._loop.model.losses.term(label).multiplier

    def set_loss_multiplier(self, label: str, value: float) -> None:
        if not value >= 0:
            raise ValueError(f"loss multiplier must be >= 0, got {value}")
        self._loop.model.losses.term(label).multiplier = float(value)

    # -------------------------------------------------------------------- data

    def data_names(self) -> list[str]:
        return self._loop.stream.knob_names()

    def data_value(self, name: str) -> Any:
        """The value of a live data setting for the next step's batches."""
        return self._loop.stream.knob(name, self.iteration + 1)

    def set_data(self, name: str, value: Any) -> None:
        """Make the batches of the following steps with ``name = value`` (``batch_size``, ``gt_size``,
        ...); the loader restarts at the current sample position, so nothing is dropped or repeated."""
        self._loop.stream.set_knob(name, value)

    def train_files(self) -> list[str]:
        """The training set's image files (for measuring the data)."""
        return [str(p) for p in getattr(self._loop.stream.loader.dataset, "gt_paths", [])]

    def read_train_image(self, path: str) -> np.ndarray:
        """One training image as the dataset reads it (folders, LMDB keys, stacks alike)."""
        dataset = self._loop.stream.loader.dataset
        if hasattr(dataset, "read"):
            return dataset.read(Path(path))
        from data.image_io import read_image

        return read_image(path, keep_channels=True, as_float=False)

    def trial_step(self, batch_size: int) -> None:
        """One real training step on ``batch_size`` training samples, then every weight, optimiser
        state, EMA, scaler, log and RNG state is put back: the run goes on as if it had not happened.
        Out-of-memory errors propagate (the caller cleans up with :meth:`release_memory`)."""
        model = self._loop.model
        saved = copy.deepcopy(_to_cpu(model.state_dict()))
        # copies: the trial's losses add into the running sums in place
        logs = ({k: v.clone() for k, v in model._log_sums.items()}, dict(model._log_counts))
        try:
            batch = self._loop.stream.sample_batch(batch_size, self.iteration + 1)
            # rank-local: no gradient all-reduce, so one rank's out-of-memory cannot hang the others
            model.sync_gradients = False
            model.train_step([batch] * self._loop.opt.train.accumulate_grad_batches, self.iteration + 1)
        finally:
            model.sync_gradients = True
            model.discard_step()
            model.load_state_dict(saved)
            model._log_sums, model._log_counts = logs

    @staticmethod
    def release_memory() -> None:
        import gc

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ----------------------------------------------------------------- control

    def request_stop(self, reason: str) -> None:
        """End the run after this step: save, validate if due, run ``on_train_end``, exit 0."""
        if self._loop.stop_reason is None:
            self._loop.stop_reason = reason

    def request_save(self, tag: str) -> None:
        """Write a checkpoint (weights and training state) at the end of this step."""
        self._loop.save_requests.append(tag)

    def validate(self, net: nn.Module) -> dict[str, dict[str, float]]:
        """Score ``net`` on every validation set: ``{dataset: {metric: mean}}``."""
        model = self._loop.model
        return {name: model.validate(loader, name, self.iteration, net=net)[0]
                for name, loader in self._loop.val_loaders.items()}

    def metric_better(self, metric: str) -> str:
        return self._loop.model.metric_better(metric)

    def val_sets(self) -> list[str]:
        """The validation sets' names, in file order."""
        return list(self._loop.val_loaders)

    def default_monitor(self) -> tuple[str, str] | None:
        """(dataset, metric): the first validation set's first metric, or None without validation."""
        loop = self._loop
        if not loop.val_loaders or loop.opt.val is None or not loop.opt.val.metrics:
            return None
        return next(iter(loop.val_loaders)), next(iter(loop.opt.val.metrics))

    def propose_best(self, net: nn.Module, metrics: dict[str, dict[str, float]], source: str) -> bool:
        """Make ``net`` the best weights if it beats the best so far on the monitored metric."""
        return self._loop.propose_best(net, metrics, source)

    def save_weights(self, label: str, net: nn.Module, metadata: dict[str, str] | None = None) -> None:
        """Write ``models/<label>.safetensors`` (rank 0 writes; every rank calls it), with the
        network's description in its metadata (see :meth:`BaseModel.weight_metadata`) under
        ``metadata``. NaN or inf weights are refused and a failed write raises on every rank."""
        meta = {**self._loop.model.weight_metadata(label, self.iteration), **(metadata or {})}
        path = self._loop.exp / "models" / f"{label}.safetensors"
        # through the loop: under DDP a failed write on rank 0 then stops every rank
        self._loop.write_on_main(str(path), lambda: save_network(net, path, metadata=meta))

    # ----------------------------------------------------------------- logging

    def report(self, source: str, message: str, scalars: dict[str, float] | None = None) -> None:
        """Log a change an automation made (log file, console) and its values (TensorBoard)."""
        self._loop.log.info(f"[{source}] iter {self.iteration}: {message}")
        if scalars:
            self._loop.tb.scalars(scalars, self.iteration)


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
