"""Exponential moving average of a network's parameters and buffers."""

from __future__ import annotations

import copy

import torch
from torch import nn

from utils.weights import unwrap_model


class ModelEMA:
    """Keeps ``ema = d * ema + (1 - d) * live`` after every optimiser step.

    Before ``update_after`` steps the EMA simply copies the live weights. With ``warmup`` the
    decay grows as ``min(d, (1 + n) / (10 + n))`` (n = averaged steps), so early, poor weights
    fade fast. Integer buffers (e.g. BatchNorm's counter) are copied, float buffers averaged.
    """

    def __init__(self, net: nn.Module, decay: float, update_after: int = 0, warmup: bool = False) -> None:
        self.decay = decay
        self.update_after = update_after
        self.warmup = warmup
        self.num_updates = 0
        self.last_decay = 0.0  # the decay of the latest update (0: a plain copy before update_after)
        self._cached: tuple[tuple, tuple[list, list, list, list]] | None = None
        self.module = copy.deepcopy(unwrap_model(net)).eval()
        self.module.requires_grad_(False)

    @staticmethod
    def _storage_key(net: nn.Module) -> tuple:
        """Which storage the network's tensors live in now. ``net.to(...)`` swaps parameters'
        ``.data`` and replaces buffers, so cached views would go stale: the key notices it."""
        first_param = next(net.parameters(), None)
        first_buffer = next(net.buffers(), None)
        return (id(net), first_param.data_ptr() if first_param is not None else 0,
                first_buffer.data_ptr() if first_buffer is not None else 0)

    def _pairs(self, net: nn.Module) -> tuple[list, list, list, list]:
        # The tensor lists are built once per storage of the live and EMA networks; rebuilding
        # them each step costs Python time that shows up in small-network training.
        live = unwrap_model(net)
        key = self._storage_key(live) + self._storage_key(self.module)
        if self._cached is not None and self._cached[0] == key:
            return self._cached[1]
        ema_f, live_f, ema_o, live_o = [], [], [], []
        for (_, e), (_, x) in zip(self.module.named_parameters(), live.named_parameters(), strict=True):
            ema_f.append(e)
            live_f.append(x.detach())
        for (_, e), (_, x) in zip(self.module.named_buffers(), live.named_buffers(), strict=True):
            (ema_f if e.is_floating_point() else ema_o).append(e)
            (live_f if e.is_floating_point() else live_o).append(x.detach())
        self._cached = (key, (ema_f, live_f, ema_o, live_o))
        return self._cached[1]

    def current_decay(self, step: int) -> float:
        if step < self.update_after:
            return 0.0
        if self.warmup:
            n = self.num_updates
            return min(self.decay, (1 + n) / (10 + n))
        return self.decay

    @torch.no_grad()
    def update(self, net: nn.Module, step: int) -> None:
        decay = self.last_decay = self.current_decay(step)
        ema_f, live_f, ema_o, live_o = self._pairs(net)
        if decay == 0.0:
            torch._foreach_copy_(ema_f, live_f)
        else:
            torch._foreach_lerp_(ema_f, live_f, 1.0 - decay)
            self.num_updates += 1
        if ema_o:
            torch._foreach_copy_(ema_o, live_o)

    def scalars(self, step: int) -> dict[str, float]:
        """The ``EMA/*`` values logged with the training scalars (OpenSR's names)."""
        return {
            "EMA/enabled": 1.0,
            "EMA/decay": self.decay,
            "EMA/update_after_step": float(self.update_after),
            "EMA/use_num_updates": float(self.warmup),
            "EMA/is_active": float(step >= self.update_after),
            "EMA/steps_until_activation": float(max(0, self.update_after - step)),
            "EMA/last_decay": self.last_decay,
            "EMA/num_updates": float(self.num_updates),
        }

    def state_dict(self) -> dict:
        # tensors and plain numbers only: training states load with weights_only=True
        return {"module": self.module.state_dict(), "num_updates": int(self.num_updates),
                "last_decay": float(self.last_decay)}

    def load_state_dict(self, state: dict) -> None:
        # load_state_dict copies in place, so cached tensor lists stay valid.
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])
        self.last_decay = float(state.get("last_decay", 0.0))
