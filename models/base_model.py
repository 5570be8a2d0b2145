"""Shared machinery of every runner: devices, precision, the parts of a training step, state,
and validation driven by the runner's own ``run_sample``."""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import torch
from torch import nn

from models.loss_set import loss_inputs
from models.param_groups import trainable_params
from models.validation import ValidationMixin
from utils import dist
from utils.checkpoint import rng_state, set_rng_state
from utils.ema import ModelEMA
from utils.logger import get_logger
from utils.options import MetricEntry, Options, head_and_kwargs
from utils.registry import ARCH_REGISTRY, METRIC_REGISTRY, OPTIMIZER_REGISTRY, SCHEDULER_REGISTRY
from utils.weights import load_network, network_metadata, unwrap_model

_AMP_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


class NonFiniteLossError(RuntimeError):
    """Training produced NaN or inf; raised at the next logging or saving point."""


def build_network(net_opt: dict[str, Any]) -> nn.Module:
    """Instantiate ``{type: Name, **kwargs}`` from the arch registry."""
    kwargs = {k: v for k, v in net_opt.items() if k != "type"}
    return ARCH_REGISTRY.get(net_opt["type"])(**kwargs)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def quantize(img: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to 8-bit levels, as a saved PNG would be."""
    return (img.clamp(0, 1) * 255.0).round() / 255.0


class BaseModel(ValidationMixin):
    """Builds and owns the networks, optimisers, schedulers and EMA of one run.

    A training step is assembled from parts, so a runner with a second network adds its update
    without copying the first: per micro-batch forward → losses → ``backward(loss, key, n)``; then
    ``optimizer_step(key)`` (average over the ranks, unscale, clip, step) → ``end_step`` (scaler
    update, EMA, schedulers). Optimisers are named (``g``, ``d``, ...); ``trained_nets``
    maps each to the network it updates.
    """

    #: option sections the runner adds: name → (annotation, default), top level and under train:
    option_fields: ClassVar[dict[str, tuple[Any, Any]]] = {}
    train_option_fields: ClassVar[dict[str, tuple[Any, Any]]] = {}
    #: named tensors a training loss may ask for
    loss_tensors: ClassVar[frozenset[str]] = frozenset()
    #: validation outputs (metrics score the first unless they name another with ``output``)
    outputs: ClassVar[tuple[str, ...]] = ()
    #: why the runner's step cannot be replayed as a CUDA graph (None: it can); refuses cuda_graph
    no_step_graph_reason: ClassVar[str | None] = None

    @classmethod
    def check_options(cls, opt: Options) -> list[tuple[str, str]]:
        """Problems that span sections, found before anything is built."""
        problems = []
        metrics = opt.val.metrics if opt.val is not None else {}
        t = opt.train
        if t is not None:
            if not t.losses:
                problems.append(("train.losses", "at least one loss is needed"))
            if "train" not in opt.datasets:
                problems.append(("datasets.train", "a training dataset is required when train: is given"))
            for i, entry in enumerate(t.losses):
                for name in loss_inputs(entry):
                    if name not in cls.loss_tensors:
                        have = ", ".join(sorted(cls.loss_tensors))
                        problems.append((f"train.losses[{i}]", f"{entry['type']} needs the tensor '{name}', which "
                                         f"{cls.__name__} does not provide (it has {have})"))
            if t.accumulate_grad_batches > 1 and opt.compile in ("reduce-overhead", "max-autotune"):
                # seen on an H100 with reduce-overhead, SRModel and SRGANModel alike: a later micro-batch's
                # CUDA-graph replay overwrites an output still in use and torch stops with a cryptic
                # error; max-autotune replays CUDA graphs the same way
                problems.append(("train.accumulate_grad_batches",
                                 f"{t.accumulate_grad_batches} micro-batches per step do not work with compile: "
                                 f"{opt.compile} (CUDA graphs); use compile: true or default, or a larger "
                                 "batch_size_per_gpu instead of accumulation"))
            sched = t.scheduler or {}
            if sched.get("monitor") and sched["monitor"] not in metrics:
                problems.append(("train.scheduler.monitor", f"'{sched['monitor']}' is not a val.metrics name"))
            if sched and getattr(SCHEDULER_REGISTRY.get(sched["type"]), "watches_metric", False) and not metrics:
                problems.append(("train.scheduler", f"{sched['type']} watches a validation metric: add val.metrics"))
        if opt.cuda_graph:
            problems.extend(("cuda_graph", p) for p in cls.step_graph_problems(opt))
        if cls.no_tta_reason and opt.val is not None and opt.val.tta:
            problems.append(("val.tta", f"{cls.no_tta_reason}: {cls.__name__} is scored without TTA"))
        for name, mopt in metrics.items():
            if mopt.get("output") and mopt["output"] not in cls.outputs:
                problems.append((f"val.metrics.{name}.output",
                                 f"'{mopt['output']}' is not an output of {cls.__name__} ({', '.join(cls.outputs)})"))
        if t is not None:
            from models.training_loop import automation_sections
            from utils.registry import AUTOMATION_REGISTRY

            for path, section in automation_sections(opt):
                if section.get("enabled", True):
                    problems.extend(AUTOMATION_REGISTRY.get(section["type"]).check_options(opt, section, path))
        keep = opt.logger.keep_best
        if keep is not None and keep.metric not in metrics:
            problems.append(("logger.keep_best.metric", f"'{keep.metric}' is not a val.metrics name"))
        return problems

    @classmethod
    def step_graph_problems(cls, opt: Options) -> list[str]:
        """Why ``cuda_graph: true`` cannot work with these options (empty: it can)."""
        problems = []
        if cls.no_step_graph_reason:
            problems.append(f"{cls.no_step_graph_reason}: {cls.__name__} steps without a CUDA graph")
        if opt.amp == "fp16":
            problems.append("amp: fp16 scales the loss and checks the gradients on the host every step; use amp: "
                            "bf16 or none with cuda_graph")
        if opt.compile in ("reduce-overhead", "max-autotune"):
            problems.append(f"compile: {opt.compile} replays its own CUDA graphs of the network, which cannot sit "
                            "inside the step's graph; use compile: true or max-autotune-no-cudagraphs")
        if opt.device in ("cpu", "mps"):
            problems.append(f"CUDA graphs need a CUDA GPU, and device is {opt.device}")
        return problems

    def __init__(self, opt: Options, device: torch.device) -> None:
        if opt.cuda_graph and device.type != "cuda":
            raise RuntimeError(f"cuda_graph: true needs a CUDA GPU, and this run is on {device}; set cuda_graph: false")
        self.opt = opt
        self.device = device
        self.log = get_logger()
        self.amp_dtype = _AMP_DTYPES.get(opt.amp)
        if self.amp_dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise RuntimeError("amp: bf16 was requested but this GPU does not support bfloat16; use amp: fp16")
        self.memory_format = torch.channels_last if opt.channels_last else torch.contiguous_format
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = opt.tf32
            torch.backends.cudnn.allow_tf32 = opt.tf32
            torch.backends.cudnn.benchmark = True
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype is torch.float16)
        self.nets: dict[str, nn.Module] = {}  # bare networks, by name
        self.train_nets: dict[str, nn.Module] = {}  # the same, under torch.compile when asked
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.trained_nets: dict[str, str] = {}  # optimiser key → network name
        self.schedulers: dict[str, Any] = {}
        self.grad_clip: dict[str, float | None] = {}
        self.ema: ModelEMA | None = None
        self.ema_of = "net_g"
        self.net_options: dict[str, dict[str, Any]] = {}  # network name → its option section
        self.best: dict[str, dict[str, dict[str, float]]] = {}
        self._log_sums: dict[str, torch.Tensor] = {}
        self._log_counts: dict[str, int] = {}
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        self._has_grad: set[str] = set()
        self._scaler_stepped = False
        # False for steps that must stay rank-local (an automation's trial step)
        self.sync_gradients = True
        self._running_stats_nets: list[str] = []  # trained networks with batch-norm statistics
        self.step_graph: Any = None  # cuda_graph: the StepGraph, made at the first step

    # ------------------------------------------------------------------ building

    def build_net(self, net_opt: dict[str, Any], label: str) -> nn.Module:
        self.net_options[label] = dict(net_opt)
        net = build_network(net_opt).to(self.device, memory_format=self.memory_format)
        self.log.info(f"{label}: {net_opt['type']} with {count_parameters(net):,} trainable parameters")
        return net

    def load_pretrained(self, net: nn.Module, path: str | None, strict: bool, param_key: str, label: str) -> None:
        if not path:
            return
        report = load_network(net, path, strict=strict, param_key=param_key)
        self.log.info(f"{label}: loaded {path}: {report.summary()}")

    def wrap(self, net: nn.Module, compile_net: bool | str) -> nn.Module:
        """The training forward of ``net``: under torch.compile in the option's mode (saving always
        unwraps). Under DDP every rank starts from rank 0's weights and buffers; gradients are
        averaged in :meth:`optimizer_step` (``utils.dist.average_gradients`` says why not
        DistributedDataParallel).

        ``compile_net`` is False, True (torch's default mode) or a torch.compile mode name;
        ``reduce-overhead`` replays CUDA graphs, which pays off for small networks whose step
        time is dominated by kernel launches.
        """
        dist.broadcast_tensors([*net.parameters(), *net.buffers()])
        return self.compiled(net, compile_net)

    @staticmethod
    def compiled(net: nn.Module, compile_net: bool | str) -> nn.Module:
        """``net`` under torch.compile in the option's mode (unchanged when compile is off)."""
        if not compile_net:
            return net
        mode = None if compile_net is True or compile_net == "default" else compile_net
        return torch.compile(net, mode=mode)

    def add_trained(self, name: str, net: nn.Module, key: str, optim_opt: dict[str, Any],
                    sched_opt: dict[str, Any] | None, grad_clip: float | None, params: list | None = None) -> None:
        """Register ``net`` as trained by optimiser ``key`` (with its scheduler and clipping).

        ``params``: the parameters or param groups (dicts with ``params`` and e.g. their own ``lr``)
        to optimise; default every parameter of ``net`` that requires gradients. Parameters with
        ``requires_grad`` off are left out of every group (a group left empty is dropped), so a
        frozen part costs no optimiser state. Freeze before calling: the optimiser gets the
        parameters that require gradients at that moment.
        """
        net.train()
        self.nets[name] = net
        self.train_nets[name] = self.wrap(net, self.opt.compile)
        if has_running_stats(net):
            self._running_stats_nets.append(name)
        params = trainable_params(net if params is None else params, name)
        kwargs = {k: v for k, v in optim_opt.items() if k != "type"}
        self.optimizers[key] = OPTIMIZER_REGISTRY.get(optim_opt["type"])(params, **kwargs)
        if self.opt.cuda_graph and "capturable" not in self.optimizers[key].defaults:
            raise RuntimeError(f"cuda_graph: the optimiser {optim_opt['type']} cannot step inside a CUDA graph (it "
                               "has no capturable mode); use Adam or AdamW, or cuda_graph: false")
        self._make_capturable(self.optimizers[key])
        self.trained_nets[key] = name
        self.grad_clip[key] = grad_clip
        if sched_opt is not None:
            kwargs = {k: v for k, v in sched_opt.items() if k != "type"}
            self.schedulers[key] = SCHEDULER_REGISTRY.get(sched_opt["type"])(self.optimizers[key], **kwargs)

    def _make_capturable(self, optimizer: torch.optim.Optimizer) -> None:
        """Under ``cuda_graph``: the optimiser's step count and bias correction on the device, as a
        capture needs (also after loading a state saved without cuda_graph)."""
        if not self.opt.cuda_graph:
            return
        for group in optimizer.param_groups:
            group["capturable"] = True
            for p in group["params"]:
                state = optimizer.state.get(p, {})
                if isinstance(state.get("step"), torch.Tensor):
                    state["step"] = state["step"].to(p.device, torch.float32)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ----------------------------------------------------------- step in parts

    def backward(self, loss: torch.Tensor | None, key: str, micro_batches: int = 1) -> None:
        """Backward the (scaled) loss of one micro-batch; None (every weight 0) does nothing."""
        if loss is None:
            return
        self._nonfinite |= ~torch.isfinite(loss.detach())
        self.scaler.scale(loss / micro_batches if micro_batches > 1 else loss).backward()
        self._has_grad.add(key)

    def optimizer_step(self, key: str) -> None:
        """Unscale, clip (logging the norm) and step optimiser ``key``; skipped when no loss reached
        it this step, so a step whose weights are all 0 changes nothing."""
        optimizer = self.optimizers[key]
        if key not in self._has_grad:
            optimizer.zero_grad(set_to_none=True)
            return
        self._has_grad.discard(key)
        params = [p for g in optimizer.param_groups for p in g["params"]]
        if self.sync_gradients:
            dist.average_gradients(params)
        clip = self.grad_clip.get(key)
        if clip is not None:
            self.scaler.unscale_(optimizer)
            norm = torch.nn.utils.clip_grad_norm_(params, clip, foreach=True)
            self.log_value(f"grad_norm/{key}" if key != "g" else "grad_norm", norm)
        self.scaler.step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        self._scaler_stepped = True

    def discard_step(self) -> None:
        """Forget the gradients of a step that will not be completed (out of memory, a trial step)."""
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        self._has_grad.clear()

    def end_step(self, iteration: int) -> None:
        """After every optimiser of the step: scaler update, EMA, schedulers."""
        if self._scaler_stepped:
            self.scaler.update()
            self._scaler_stepped = False
        if self.sync_gradients and dist.is_dist():
            # Batch-norm statistics are not gradients: every rank takes rank 0's, as
            # DistributedDataParallel's broadcast_buffers would.
            for name in self._running_stats_nets:
                dist.broadcast_tensors(self.nets[name].buffers())
        if self.ema is not None:
            self.ema.update(self.nets[self.ema_of], iteration)
        for scheduler in self.schedulers.values():
            scheduler.step()

    def train_step(self, batches: list[dict[str, Any]], iteration: int) -> None:
        """One optimiser step: :meth:`update` then :meth:`end_step`, replayed as a CUDA graph under
        ``cuda_graph`` (``models.step_graph``)."""
        if self.opt.cuda_graph:
            if self.step_graph is None:
                from models.step_graph import StepGraph

                self.step_graph = StepGraph(self)
            self.step_graph(batches, iteration)
            return
        self.update(batches, iteration)
        self.end_step(iteration)

    def release_step_graph(self) -> None:
        """Free the captured steps. Before the process group closes: NCCL waits for the graphs that
        hold its collectives, so closing it first would never return."""
        if self.step_graph is not None:
            torch.cuda.synchronize(self.device)
            self.step_graph = None

    def update(self, batches: list[dict[str, Any]], iteration: int) -> None:
        """The step up to and including the optimisers (forward, losses, backward, ``optimizer_step``).
        Under ``cuda_graph`` it is captured once per :meth:`step_signature`, so it must not read
        device values on the host, and every host decision must be named by the signature."""
        raise NotImplementedError

    def step_signature(self, batches: list[dict[str, Any]], iteration: int) -> tuple:
        """What :meth:`update` decides on the host at ``iteration``: a captured step replays only
        where this is the same. Here: the batch tensors' layout, which parameters train (an
        automation may freeze or thaw some), whether gradients are averaged and whether
        ``train_metrics`` are logged."""
        layout = tuple(tuple((k, tuple(v.shape), tuple(v.stride()), v.dtype, v.device) for k, v in sorted(b.items())
                             if isinstance(v, torch.Tensor)) for b in batches)
        trainable = tuple(p.requires_grad for name in self.trained_nets.values() for p in self.nets[name].parameters())
        t = self.opt.train
        logs_metrics = bool(t.train_metrics) and iteration % self.opt.logger.print_freq == 0
        return layout, trainable, self.sync_gradients, logs_metrics

    # --------------------------------------------------------------------- logs

    def log_value(self, key: str, value: torch.Tensor) -> None:
        """Add a device scalar to the running sums read at the next logging step (no host sync)."""
        value = value.detach().float()
        if key in self._log_sums:
            self._log_sums[key] += value
            self._log_counts[key] += 1
        else:
            self._log_sums[key] = value.clone()
            self._log_counts[key] = 1

    def _checkpoint_tensors(self) -> list[tuple[str, torch.Tensor]]:
        """(``label.key``, tensor) of every floating-point tensor the weight files hold."""
        return [(f"{label}.{key}", t.detach()) for label, net in self.checkpoint_nets().items()
                for key, t in unwrap_model(net).state_dict().items() if t.is_floating_point() and t.numel()]

    def _weights_nonfinite(self) -> torch.Tensor:
        """A device bool: some checkpointed tensor holds NaN or inf (no host sync)."""
        tensors = [t for _, t in self._checkpoint_tensors()]
        if not tensors:
            return torch.zeros((), dtype=torch.bool, device=self.device)
        # the inf-norm propagates NaN and inf: a tensor is finite exactly when its max |value| is
        peaks = torch.stack([n.float().to(self.device) for n in torch._foreach_norm(tensors, float("inf"))])
        return ~torch.isfinite(peaks).all()

    def nonfinite_weight(self) -> str | None:
        """``label.key`` of the first checkpointed tensor holding NaN or inf, else None (host syncs:
        for the error message only)."""
        return next((name for name, t in self._checkpoint_tensors() if not bool(torch.isfinite(t).all())), None)

    def check_finite(self, iteration: int, weights: bool = False) -> None:
        """Raise on every rank if any rank's loss went NaN/inf since the start or (``weights``) a
        checkpointed weight (trained networks, EMA) is NaN/inf. A collective under DDP: all ranks
        call it at the same steps. Called at logging steps and, with ``weights``, before every
        validation and save, so no step between two checks needs a host sync."""
        no = torch.zeros((), dtype=torch.bool, device=self.device)
        flags = torch.stack([self._nonfinite, self._weights_nonfinite() if weights else no]).to(torch.int32)
        if dist.is_dist():
            torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        loss_bad, weights_bad = (bool(v) for v in flags.tolist())  # the one host sync
        if not (loss_bad or weights_bad):
            return
        if loss_bad:
            what = "the training loss"
        else:
            what = f"the weights ({self.nonfinite_weight() or 'on another rank'})"
        raise NonFiniteLossError(
            f"{what} became NaN or inf before iteration {iteration}; nothing was saved after that "
            "and earlier checkpoints are untouched. Try a lower learning rate, train.grad_clip, amp: bf16 "
            "instead of fp16, or check the training images."
        )

    def pop_logs(self, iteration: int) -> dict[str, float]:
        """Mean of each logged term since the last call, averaged over ranks; raises if anything
        went non-finite."""
        self.check_finite(iteration)
        logs = {}
        keys = [k for k in self._log_sums if self._log_counts[k]]
        if keys:
            values = torch.stack([self._log_sums[k] / self._log_counts[k] for k in keys])
            if dist.is_dist():
                torch.distributed.all_reduce(values)
                values /= dist.get_world_size()
            logs = dict(zip(keys, values.cpu().tolist()))
        # Emptied in place, not dropped: a captured step (cuda_graph) adds into these very tensors,
        # and a key with no count since is left out above.
        for key, value in self._log_sums.items():
            value.zero_()
            self._log_counts[key] = 0
        logs.update(self.status_scalars(iteration))
        return logs

    def status_scalars(self, iteration: int) -> dict[str, float]:
        """Values known on the host, logged at each logging step: ``lr_<network>`` (one per
        optimiser; ``_<i>`` per param group when there are several) and the ``EMA/*`` state."""
        out = {}
        for key, optimizer in self.optimizers.items():
            groups = optimizer.param_groups
            for i, group in enumerate(groups):
                out[f"lr_{self.trained_nets[key]}" + (f"_{i}" if len(groups) > 1 else "")] = group["lr"]
        out.update(self.ema.scalars(iteration) if self.ema is not None else {"EMA/enabled": 0.0})
        return out

    def log_train_metrics(self, outputs: torch.Tensor, targets: torch.Tensor, iteration: int) -> None:
        """``train.train_metrics`` on the step's last micro-batch, at logging steps only, as
        ``train_metrics/<name>`` (device tensors: no host sync)."""
        metrics = self.opt.train.train_metrics
        if not metrics or iteration % self.opt.logger.print_freq:
            return
        outputs, targets = outputs.detach().float().clamp(0, 1), targets.detach().float()
        for name, mopt in metrics.items():
            _, kwargs = head_and_kwargs(mopt, MetricEntry)
            value = METRIC_REGISTRY.get(mopt["type"])(outputs, targets, **kwargs)
            self.log_value(f"train_metrics/{name}", value.mean())

    # -------------------------------------------------------------------- state

    def state_dict(self) -> dict[str, Any]:
        return {
            "nets": {k: v.state_dict() for k, v in self.nets.items()},
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
            "schedulers": {k: v.state_dict() for k, v in self.schedulers.items()},
            "scaler": self.scaler.state_dict(),
            # plain values only (the state loads with weights_only): metric values as Python floats
            "best": {ds: {name: {k: float(v) if k == "value" else v for k, v in entry.items()}
                          for name, entry in table.items()} for ds, table in self.best.items()},
            "rng": rng_state(),
            # running log sums: a resume between two logging steps must average the same steps
            "logs": {k: (v.cpu(), int(self._log_counts[k])) for k, v in self._log_sums.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Captured steps write the optimiser state and log sums that this replaces (an automation's
        # trial step loads mid-run): drop them; the next steps warm up and capture again.
        self.release_step_graph()
        for k, sd in state["nets"].items():
            self.nets[k].load_state_dict(sd)
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        for k, sd in state["optimizers"].items():
            self.optimizers[k].load_state_dict(sd)
            self._make_capturable(self.optimizers[k])
        for k, sd in state["schedulers"].items():
            if k in self.schedulers:
                self.schedulers[k].load_state_dict(sd)
        self.scaler.load_state_dict(state["scaler"])
        self.best = state.get("best", {})
        set_rng_state(state["rng"])
        logs = state.get("logs", {})
        self._log_sums = {k: v.to(self.device) for k, (v, _) in logs.items()}
        self._log_counts = {k: int(n) for k, (_, n) in logs.items()}

    def checkpoint_nets(self) -> dict[str, nn.Module]:
        """The weight files a checkpoint writes: every trained network, and its EMA copy."""
        nets = {name: self.nets[name] for name in self.trained_nets.values()}
        if self.ema is not None:
            nets[f"{self.ema_of}_ema"] = self.ema.module
        return nets

    def weight_metadata(self, label: str, iteration: int | str | None = None,
                        copy: str | None = None) -> dict[str, str]:
        """What a weight file labelled ``label`` (``net_g``, ``net_g_ema``, ``net_g_swa_final``...)
        records about its network, so that test.py and upscale.py rebuild it from the file alone."""
        names = [n for n in self.net_options if label == n or label.startswith(n + "_")]
        if not names:
            return {}
        name = max(names, key=len)
        if copy is None:
            copy = label[len(name) + 1:] or "live"
        return network_metadata(self.net_options[name], self.opt.scale, iteration, copy)

    def fingerprint(self) -> list[float]:
        """A cheap per-tensor checksum of the trained networks' parameters and floating-point
        buffers (batch-norm statistics), to compare DDP replicas."""
        with torch.no_grad():
            return [float(t.double().sum()) for name in self.trained_nets.values()
                    for t in [*self.nets[name].parameters(), *self.nets[name].buffers()] if t.is_floating_point()]


def has_running_stats(net: nn.Module) -> bool:
    """Whether training updates buffers of ``net`` (batch-norm running statistics)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in net.modules())
