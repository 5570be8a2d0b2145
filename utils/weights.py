"""Reading, cleaning, saving and loading network weights."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import torch
from torch import nn

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

UPFORGE_VERSION = "0.1.0"
ARCH_KEY = "upforge_arch"  # safetensors metadata: the network's option section as JSON
TMP_SUFFIX = ".tmp"  # an atomic write's file until it is complete (``<name>.tmp``)
_LOW_SPACE = 64 * 2**20  # below this many free bytes an unexplained write failure is blamed on a full disk


class CheckpointWriteError(OSError, RuntimeError):
    """A weights or state file could not be written; the message names the file and why (no
    space, permission). The earlier files are untouched and no partial file is left behind.

    An OSError (it is one) and a RuntimeError (as torch's own write failures were), so callers
    catching either keep working and the command line prints it as a one-line error."""


class NonFiniteWeightsError(RuntimeError):
    """Weights holding NaN or inf were about to be written; nothing was written."""


def network_metadata(net_opt: Mapping, scale: int | None = None, iteration: int | str | None = None,
                     copy: str | None = None) -> dict[str, str]:
    """The metadata a weight file carries so that it rebuilds its network alone: the option
    section (``type`` and constructor keywords) as JSON, scale, channel counts, the upforge
    version, and, from training, the iteration and which copy it is (live, ema, swa, ...)."""
    meta = {ARCH_KEY: json.dumps(dict(net_opt), sort_keys=True), "upforge_version": UPFORGE_VERSION,
            "arch": str(net_opt["type"])}
    for key, value in (("scale", net_opt.get("scale", scale)), ("num_in_ch", net_opt.get("num_in_ch")),
                       ("num_out_ch", net_opt.get("num_out_ch")), ("iteration", iteration), ("copy", copy)):
        if value is not None:
            meta[key] = str(value)
    return meta


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a ``.safetensors`` file ({} for other formats or none)."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return {}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except SafetensorError as err:
        raise damaged_safetensors(path, err) from err


def damaged_safetensors(path: Path, err: Exception) -> ValueError:
    """A ``.safetensors`` file that does not parse (truncated by a broken copy or download), named;
    safetensors' own message names no file."""
    return ValueError(f"cannot read weights from {path} ({path.stat().st_size} bytes): not a complete "
                      f".safetensors file, truncated or damaged ({err}); copy or download it again")


def arch_from_metadata(meta: Mapping[str, str]) -> dict | None:
    """The ``{type: Name, **kwargs}`` section recorded by :func:`network_metadata`, if any."""
    raw = meta.get(ARCH_KEY)
    if not raw:
        return None
    try:
        section = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"weights metadata '{ARCH_KEY}' is not valid JSON: {err}") from err
    if not isinstance(section, dict) or "type" not in section:
        raise ValueError(f"weights metadata '{ARCH_KEY}' has no arch type: {raw[:200]}")
    return section


def unwrap_model(net: nn.Module) -> nn.Module:
    """Strip DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if isinstance(net, nn.parallel.DistributedDataParallel | nn.DataParallel):
            net = net.module
        elif hasattr(net, "_orig_mod"):
            net = net._orig_mod
        else:
            return net


def read_weights(path: str | Path) -> dict:
    """Load a weights file: safetensors, or a torch pickle restricted to tensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except SafetensorError as err:
            raise damaged_safetensors(path, err) from err
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - re-raised with the file named
        raise RuntimeError(f"cannot read weights from {path}: {err}") from err


def unwrap_state_dict(obj: dict, param_key: str | None = "params") -> dict[str, torch.Tensor]:
    """Pick the tensors out of a checkpoint dict and strip wrapper prefixes.

    BasicSR files hold ``{'params': ..., 'params_ema': ...}``; ``param_key`` picks one, falling
    back to the other keys commonly used by peers when it is absent.
    """
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in (param_key, "params_ema", "params", "state_dict", "model", "net_g"):
            if key and key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    out = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            continue
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES:
                if k.startswith(prefix):
                    k = k[len(prefix):]
                    changed = True
        out[k] = v
    return out


def clean_state_dict(net: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of the bare network, detached, contiguous and on the CPU."""
    sd = unwrap_model(net).state_dict()
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


def _why(err: BaseException, folder: Path) -> str:
    """The cause of a failed write in words: the OS error found in the exception chain (torch wraps
    it in a RuntimeError without a path, e.g. "unexpected pos 72896 vs 72796"), else a diagnosis
    of the folder (not writable, disk nearly full), else the error itself."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            if seen.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
                return "no space left on device" + _free_space(folder)
            if seen.errno in (errno.EACCES, errno.EPERM):
                return f"permission denied (is {folder} writable?)"
            if seen.errno == errno.EROFS:
                return f"read-only file system at {folder}"
            return seen.strerror or str(seen)
        seen = seen.__cause__ or seen.__context__
    if folder.is_dir() and not os.access(folder, os.W_OK):
        return f"permission denied (is {folder} writable?)"
    free = _free_bytes(folder)
    if free is not None and free < _LOW_SPACE:
        return f"no space left on device{_free_space(folder)} ({type(err).__name__}: {err})"
    return f"{type(err).__name__}: {err}"


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _free_space(folder: Path) -> str:
    free = _free_bytes(folder)
    return "" if free is None else f" ({free / 2**20:.1f} MiB free in {folder})"


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):  # a folder we cannot write to holds no partial file of ours either
        path.unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); platforms that cannot open folders skip it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _replace_atomically(path: Path, produce: Callable[[Path], None]) -> None:
    """``produce(tmp)`` writes the complete ``<path>.tmp``; it is then renamed over ``path``, so a
    crash (even kill -9 or a power cut) leaves the old file or the new one, never half. Whatever
    fails, the ``.tmp`` is removed and the error propagates."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.unlink(missing_ok=True)  # a leftover (or a planted link) is never written through
        produce(tmp)
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise
    _fsync_folder(path.parent)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def atomic_write(path: str | Path, write_fn: Callable[[str], None]) -> None:
    """Write through ``write_fn(tmp_path)`` (for writers that take a path: onnx, tifffile), flush
    the file to disk and rename it into place; a failure removes the partial file and propagates
    unchanged. Weights and training states use :func:`atomic_write_file`."""
    def produce(tmp: Path) -> None:
        write_fn(str(tmp))
        _fsync_file(tmp)

    _replace_atomically(Path(path), produce)


def atomic_write_file(path: str | Path, write_fn: Callable[[BinaryIO], None]) -> None:
    """Write ``path`` atomically through ``write_fn(file)``, for weights and training states.

    The file is created by Python (exclusively, unbuffered): it gets the permissions of every
    other file the run writes (0666 less the umask; safetensors' own writer made 0600 files), and
    a failing write raises the OS error itself rather than torch's path-less "unexpected pos
    72896 vs 72796". Any write failure becomes :class:`CheckpointWriteError` naming the file and
    the cause; the partial ``.tmp`` is removed and the previous file under ``path`` is kept.
    """
    path = Path(path)

    def produce(tmp: Path) -> None:
        with open(tmp, "xb", buffering=0) as f:
            write_fn(f)
            os.fsync(f.fileno())

    try:
        _replace_atomically(path, produce)
    except (OSError, RuntimeError) as err:
        raise CheckpointWriteError(f"cannot write {path}: {_why(err, path.parent)}. No partial file was left and "
                                   "the files written before are untouched") from err


def write_all(f: BinaryIO, data: bytes) -> None:
    """``f.write`` until every byte is written (an unbuffered file may write fewer at a time)."""
    view = memoryview(data)
    while view:
        written = f.write(view)
        if not written:
            raise OSError(errno.EIO, "write returned no progress")
        view = view[written:]


def first_nonfinite(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The first key whose floating-point tensor holds NaN or inf, else None."""
    for key, value in tensors.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            return key
    return None


def save_network(net: nn.Module | dict, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Save weights; ``.safetensors`` by default (``metadata``: string pairs in its header),
    ``.pth`` holds a plain ``{'params': ...}``.

    Weights holding NaN or inf are refused (:class:`NonFiniteWeightsError`, naming the file and the
    first bad key) before anything is written, so the previous file under that name is kept."""
    sd = net if isinstance(net, dict) else clean_state_dict(net)
    path = Path(path)
    bad = first_nonfinite(sd)
    if bad is not None:
        raise NonFiniteWeightsError(
            f"refusing to write {path}: '{bad}' holds NaN or inf. The previous file under that name (if any) "
            "is kept; the training diverged (try a lower learning rate or train.grad_clip)"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        data = save(sd, metadata=metadata)
        atomic_write_file(path, lambda f: write_all(f, data))
    else:
        atomic_write_file(path, lambda f: torch.save({"params": sd}, f))


@dataclass
class LoadReport:
    """What ``load_network`` did: keys loaded, missing (new in the net), unexpected (dropped),
    mismatched in shape, ignored by the arch's key adaptation, and renamed (old → new).

    A warm start across scales also fills ``scale`` (the file's scale, the network's) and lists
    the tail keys the network keeps freshly initialised (``renewed``: "new (scale changed)") and
    the file's tail keys left unused (``dropped``: "dropped (scale changed)")."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    renamed: dict[str, str] = field(default_factory=dict)
    scale: tuple[int | None, int | None] | None = None
    renewed: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    note: str = ""

    def summary(self) -> str:
        parts = [self.note] if self.note else []
        parts.append(f"{len(self.loaded)} loaded")
        if self.renamed:
            parts.append(f"{len(self.renamed)} renamed")
        for name, label in (("renewed", "new (scale changed)"), ("dropped", "dropped (scale changed)"),
                            ("missing", "missing"), ("unexpected", "unexpected"), ("mismatched", "mismatched"),
                            ("ignored", "ignored")):
            keys = getattr(self, name)
            if keys:
                shown = ", ".join(keys[:8]) + (" ..." if len(keys) > 8 else "")
                parts.append(f"{len(keys)} {label} ({shown})")
        return "; ".join(parts)


def adapt_state_dict(net: nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apply the arch's optional ``adapt_state_dict(sd) -> sd`` classmethod (key renaming)."""
    hook = getattr(type(unwrap_model(net)), "adapt_state_dict", None)
    return dict(hook(sd)) if callable(hook) else sd


def _recorded_scale(meta: Mapping[str, str], sd: dict[str, torch.Tensor], target: nn.Module,
                    infer: bool) -> int | None:
    """The scale the weights were trained at: the file's metadata ``meta`` (every file upforge
    writes records it), else, with ``infer``, what :func:`infer_arch` reads from the keys when they
    are of the target's arch (a guess for RRDBNet files whose bands differ, so strict loads do not
    use it); None when unknown."""
    recorded = meta.get("scale")
    if recorded is not None:
        try:
            return int(recorded)
        except ValueError:
            return None
    if not infer:
        return None
    try:
        arch, kwargs = infer_arch(sd)
    except (KeyError, ValueError, IndexError):
        return None
    return int(kwargs["scale"]) if arch == type(target).__name__ else None


def _tail_of(target: nn.Module) -> tuple[str, ...]:
    return tuple(getattr(type(target), "tail_prefixes", ()) or ())


def _split_off_tail(sd: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor], prefixes: tuple[str, ...],
                    report: LoadReport) -> dict[str, torch.Tensor]:
    """``sd`` without its tail keys; the file's tail goes to ``report.dropped``, the network's to
    ``report.renewed`` (kept as initialised)."""
    report.dropped = [k for k in sd if k.startswith(prefixes)]
    report.renewed = [k for k in own if k.startswith(prefixes)]
    return {k: v for k, v in sd.items() if not k.startswith(prefixes)}


def _scale_change(source: str, target: nn.Module, src: int | None, cross_scale: bool, strict: bool,
                  report: LoadReport) -> bool:
    """Decide whether the tail is renewed (True) for a load of x``src`` weights into ``target``; set
    the report's note; raise for a strict load across scales that was not asked for."""
    dst = getattr(target, "scale", None)
    dst = dst if isinstance(dst, int) and not isinstance(dst, bool) else None
    changed = src is not None and dst is not None and src != dst
    arch = type(target).__name__
    prefixes = _tail_of(target)
    if cross_scale and not prefixes:
        raise ValueError(f"warm start across scales from {source}: {arch} names no tail (no tail_prefixes), so "
                         "the part to initialise afresh is unknown; load it with strict: false instead")
    if changed and strict and not cross_scale:
        raise RuntimeError(f"{source} holds an x{src} network, but the {arch} here is x{dst}: a strict load needs "
                           "the same scale. For a warm start across scales (the trunk loads, the tail starts "
                           "fresh) set path.strict_load_g: false")
    if not (cross_scale or changed):
        return False
    report.scale = (src, dst)
    were = f"x{src}" if src is not None else "weights of another scale"
    if not prefixes:  # only reachable without cross_scale: a non-strict load of what fits
        report.note = f"warm start across scales ({were} into x{dst}): {arch} names no tail, so the keys that fit load"
        return False
    report.note = (f"warm start across scales ({were} into x{dst}): the trunk loads, the tail "
                   f"({', '.join(prefixes)}) keeps its fresh initialisation")
    return True


def load_network(
    net: nn.Module,
    path: str | Path | Mapping,
    strict: bool = True,
    param_key: str | None = "params",
    adapt: bool = True,
    cross_scale: bool = False,
) -> LoadReport:
    """Load weights into ``net`` and report which keys loaded, were missing or unexpected.

    ``path`` is a weights file or an already loaded checkpoint / state dict. Wrapper prefixes
    (``module.``, ``_orig_mod.``) and ``params`` / ``params_ema`` containers are unwrapped; with
    ``adapt`` the arch's ``adapt_state_dict`` hook renames foreign key names (e.g. EDSR-PyTorch's
    ``head.0``) and drops keys it knows to be irrelevant (reported as ``ignored``). ``strict``
    raises on any missing, unexpected or shape-mismatched key, naming them; otherwise the
    matching keys load and the rest are reported.

    Weights of another scale: the file's scale is its metadata's ``scale`` (else what
    :func:`infer_arch` reads from the keys, for non-strict loads), the network's its ``scale`` attribute. A strict load
    across scales raises, naming both. A warm start across scales -- ``cross_scale``, or any
    non-strict load whose scales are known to differ -- loads every key outside the arch's tail
    (``tail_prefixes``, e.g. EDSR's upsampler and conv_last) and none inside it: the file's tail
    keys are reported as ``dropped`` ("dropped (scale changed)"), the network's as ``renewed``
    ("new (scale changed)"), kept as initialised. With ``cross_scale`` and ``strict`` the trunk
    must still match exactly. An arch that names no tail cannot take ``cross_scale``; a
    non-strict load into it loads what fits, as for any other warm start.

    After a non-strict load from a file, the arch's optional ``after_warm_start(source_options,
    report)`` hook (the file's recorded network section or None, and this report) may adjust the
    network for where its weights came from; its message joins the report (EDSR: new residual
    blocks start as the identity; a residual network whose last conv did not come from a residual
    network of its scale starts that conv at zero).
    """
    source = "state dict" if isinstance(path, Mapping) else str(path)
    raw = dict(path) if isinstance(path, Mapping) else read_weights(path)
    meta = {} if isinstance(path, Mapping) else read_metadata(path)
    sd = unwrap_state_dict(raw, param_key)
    target = unwrap_model(net)
    report = LoadReport()
    if adapt:
        adapted = adapt_state_dict(target, sd)
        new_name = {id(v): k for k, v in adapted.items()}
        for k, v in sd.items():
            if id(v) not in new_name:
                report.ignored.append(k)
            elif new_name[id(v)] != k:
                report.renamed[k] = new_name[id(v)]
        sd = adapted
    own = target.state_dict()
    recorded = _recorded_scale(meta, sd, target, infer=cross_scale or not strict)
    if _scale_change(source, target, recorded, cross_scale, strict, report):
        sd = _split_off_tail(sd, own, _tail_of(target), report)
    usable = {}
    for k, v in sd.items():
        if k not in own:
            report.unexpected.append(k)
        elif own[k].shape != v.shape:
            report.mismatched.append(f"{k} {tuple(v.shape)}→{tuple(own[k].shape)}")
        else:
            usable[k] = v.to(own[k].dtype)
            report.loaded.append(k)
    renewed = set(report.renewed)
    report.missing = [k for k in own if k not in sd and k not in renewed]
    if strict and (report.missing or report.unexpected or report.mismatched):
        raise RuntimeError(
            f"strict load of {source} into {type(target).__name__} failed: {report.summary()}"
        )
    target.load_state_dict(usable, strict=False)
    hook = getattr(target, "after_warm_start", None)
    if not strict and callable(hook) and not isinstance(path, Mapping):
        # the arch may adjust for what its source network was (its recorded options, if any)
        note = hook(arch_from_metadata(meta), report)
        if note:
            report.note = f"{report.note}; {note}" if report.note else note
    return report


def _conv_shape(sd: dict[str, torch.Tensor], key: str) -> tuple[int, int]:
    w = sd[key]
    if w.dim() != 4:
        raise ValueError(f"infer_arch: '{key}' should be a conv weight, got shape {tuple(w.shape)}")
    return int(w.shape[0]), int(w.shape[1])


def _count_indexed(sd: dict[str, torch.Tensor], pattern: str) -> int:
    """1 + the largest N over keys matching ``pattern`` (with one ``(\\d+)`` group), else 0."""
    found = [int(m[1]) for k in sd if (m := re.fullmatch(pattern, k))]
    return max(found) + 1 if found else 0


def _infer_rrdbnet(sd: dict[str, torch.Tensor], scale: int | None) -> tuple[str, dict]:
    if "conv_up2.weight" not in sd:
        raise ValueError(
            "infer_arch: RRDBNet-like weights without conv_up2 (a single upsampling stage) are not "
            "supported; upforge's RRDBNet always has conv_up1 and conv_up2"
        )
    num_feat, first_in = _conv_shape(sd, "conv_first.weight")
    num_out_ch = _conv_shape(sd, "conv_last.weight")[0]
    num_grow_ch = _conv_shape(sd, "body.0.rdb1.conv1.weight")[0]
    # conv_first sees num_in_ch * (4 // scale)^2 channels (pixel-unshuffle for x2 / x1).
    options = {s: first_in // (4 // s) ** 2 for s in (4, 2, 1) if first_in % (4 // s) ** 2 == 0}
    if scale is not None:
        if scale not in options:
            raise ValueError(
                f"infer_arch: RRDBNet conv_first has {first_in} input channels, which does not fit "
                f"scale {scale} (possible scales: {sorted(options)})"
            )
    else:
        # Assume as many input as output bands; fall back to x4 (no unshuffle).
        same = [s for s, c in options.items() if c == num_out_ch]
        scale = same[0] if same else 4
    kwargs = {
        "num_in_ch": options[scale],
        "num_out_ch": num_out_ch,
        "scale": scale,
        "num_feat": num_feat,
        "num_block": _count_indexed(sd, r"body\.(\d+)\.rdb1\.conv1\.weight"),
        "num_grow_ch": num_grow_ch,
    }
    return "RRDBNet", kwargs


def _infer_edsr(sd: dict[str, torch.Tensor], scale: int | None) -> tuple[str, dict]:
    num_feat, num_in_ch = _conv_shape(sd, "conv_first.weight")
    num_out_ch = _conv_shape(sd, "conv_last.weight")[0]
    stages = [k for k in sd if re.fullmatch(r"upsample\.\d+\.weight", k)]
    first_out = _conv_shape(sd, "upsample.0.weight")[0]
    if first_out == 9 * num_feat and len(stages) == 1:
        inferred = 3
    elif first_out == 4 * num_feat:
        inferred = 2 ** len(stages)
    else:
        raise ValueError(
            f"infer_arch: EDSR upsample.0 has {first_out} output channels; expected 4x or 9x "
            f"num_feat ({num_feat})"
        )
    if scale is not None and scale != inferred:
        raise ValueError(f"infer_arch: the EDSR weights upsample x{inferred}, but scale {scale} was asked")
    kwargs = {
        "num_in_ch": num_in_ch,
        "num_out_ch": num_out_ch,
        "num_feat": num_feat,
        "num_block": _count_indexed(sd, r"body\.(\d+)\.conv1\.weight"),
        "scale": inferred,
    }
    return "EDSR", kwargs


def infer_arch(sd: Mapping, scale: int | None = None) -> tuple[str, dict]:
    """Recognise RRDBNet or EDSR weights and return ``(arch_name, constructor kwargs)``.

    ``sd`` may be a full checkpoint (wrappers are removed) and may use EDSR-PyTorch key names.
    ``scale`` disambiguates RRDBNet files whose input bands differ from their output bands.
    Options that leave no trace in the weights (EDSR ``res_scale``, ``rgb_mean``,
    ``residual_output``) keep their defaults.
    """
    sd = unwrap_state_dict(dict(sd), "params_ema")
    if "conv_first.weight" in sd and "body.0.rdb1.conv1.weight" in sd and "conv_body.weight" in sd:
        return _infer_rrdbnet(sd, scale)
    if "head.0.weight" in sd and "tail.1.weight" in sd:
        from archs.edsr_arch import EDSR

        sd = EDSR.adapt_state_dict(sd)
    if "conv_first.weight" in sd and "conv_after_body.weight" in sd and "upsample.0.weight" in sd:
        return _infer_edsr(sd, scale)
    shown = ", ".join(list(sd)[:6]) + (" ..." if len(sd) > 6 else "")
    raise ValueError(
        f"infer_arch: cannot recognise the architecture (known: RRDBNet, EDSR); keys: {shown}. "
        "Name the arch explicitly."
    )
