"""ImageNet backbone weights for the perceptual losses: from a local file, torchvision's download, or none.

Accepted state-dict layouts (a ``.pth``/``.pt`` file read with ``torch.load(weights_only=True)``, or a
``.safetensors`` file), checked strictly, i.e. exactly one of these key sets:

* torchvision's full model, as ``torchvision.models.<arch>()`` saves it and as its download URL
  serves it (``features.0.weight``, ..., ``classifier.6.bias``). Only the part the module keeps is
  used (``key_map`` says which torchvision key feeds which module key); the classifier and any
  layers after the module's truncation point are read and dropped, but must be there.
* the module's own keys, i.e. a file written with ``torch.save(module.state_dict(), path)``.

A file with any other key set raises ``ValueError`` listing a few missing and unexpected keys.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision
from torch import Tensor, nn

_SHOW = 5  # keys listed per kind in a mismatch message


def _torchvision_shapes(arch: str) -> dict[str, torch.Size]:
    """Key → shape of torchvision's ``arch`` state dict, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = torchvision.models.get_model(arch, weights=None)
    return {k: v.shape for k, v in model.state_dict().items()}


def _read_file(path: str, owner: str) -> dict[str, Tensor]:
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{owner}: weights_path '{path}' does not exist (option `weights_path`)")
    from utils.weights import read_weights

    state = read_weights(file)  # names the file when it is truncated or not a tensor file
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{owner}: weights_path '{path}' does not hold a state dict (a mapping of name → tensor)")
    return dict(state)


def _key_list(keys: set[str]) -> str:
    shown = sorted(keys)[:_SHOW]
    more = f", ... ({len(keys)} in all)" if len(keys) > _SHOW else ""
    return ", ".join(shown) + more


def _pick(
    state: dict[str, Tensor], module: nn.Module, arch: str, key_map: Mapping[str, str], owner: str, source: str
) -> dict[str, Tensor]:
    """The module's state dict taken from ``state``, in whichever accepted layout ``state`` is."""
    own = module.state_dict()
    have = set(state)
    if have == set(own):
        picked = state
    else:
        tv_shapes = _torchvision_shapes(arch)
        if have == set(tv_shapes):
            picked = {k: state[key_map[k]] for k in own}
        else:
            # Report against whichever layout the file is closer to.
            layouts = [(f"torchvision's {arch}", set(tv_shapes)), (f"the {type(module).__name__} module", set(own))]
            name, want = max(layouts, key=lambda item: len(item[1] & have))
            raise ValueError(
                f"{owner}: {source} is neither torchvision's {arch} state dict nor the module's own; "
                f"compared with {name}: missing keys [{_key_list(want - have)}], "
                f"unexpected keys [{_key_list(have - want)}]"
            )
    bad = [k for k, v in own.items() if picked[k].shape != v.shape]
    if bad:
        k = bad[0]
        raise ValueError(
            f"{owner}: {source} has wrong shapes for {len(bad)} tensor(s), e.g. {k}: "
            f"{tuple(picked[k].shape)} in the file, {tuple(own[k].shape)} in the module "
            f"(is the file for another network than {arch}?)"
        )
    return picked


def _download(arch: str, owner: str) -> dict[str, Tensor]:
    weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    try:
        # Uses <torch hub dir>/checkpoints/<file> when it is there, else downloads into it.
        return weights.get_state_dict(progress=False)
    except Exception as err:  # no network, proxy, TLS, disk, a truncated cached file...: all end the same way
        file = os.path.basename(urlparse(weights.url).path)
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        stale = (
            f" ({cache / file} exists but could not be read: it may be an incomplete download, delete it.)"
            if (cache / file).exists()
            else ""
        )
        raise RuntimeError(
            f"{owner}: the ImageNet weights for {arch} could not be downloaded ({type(err).__name__}: {err}).{stale}\n"
            f"The file is {weights.url} ({file}). Download it on a machine with internet access, then either\n"
            f"  - set `weights_path: /path/to/{file}` in this loss's options, or\n"
            f"  - copy it into the torch hub cache folder {cache}{os.sep} (it is used from there without a download);\n"
            f"or set `pretrained: false` for random backbone weights (only useful for tests)."
        ) from err


def load_backbone_weights(
    module: nn.Module,
    arch: str,
    pretrained: bool,
    weights_path: str | None,
    *,
    owner: str,
    key_map: Mapping[str, str] | None = None,
) -> None:
    """Fill ``module`` with torchvision's ImageNet weights for ``arch`` (e.g. ``vgg19``, ``alexnet``).

    ``weights_path`` wins over ``pretrained``: that local file is loaded (layouts: see the module
    docstring). Else ``pretrained=True`` takes torchvision's ``IMAGENET1K_V1`` weights (torch hub
    cache or download; an offline failure raises ``RuntimeError`` saying where to put the file), and
    ``pretrained=False`` leaves the module's random initialisation. ``key_map`` maps each key of
    ``module.state_dict()`` to its torchvision name (default: the same name). ``owner`` names the
    loss in messages.
    """
    if weights_path is None and not pretrained:
        return
    if key_map is None:
        key_map = {k: k for k in module.state_dict()}
    if weights_path is not None:
        state, source = _read_file(weights_path, owner), f"weights_path '{weights_path}'"
    else:
        state, source = _download(arch, owner), f"torchvision's {arch} ImageNet weights"
    module.load_state_dict(_pick(state, module, arch, key_map, owner, source), strict=True)
