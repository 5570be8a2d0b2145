"""Four PBR maps from three rendered views with a trained map network (NeuroPBR, seed 003).

    python scripts/pbr_infer.py --model experiments/PBR_default/models/net_g_best.safetensors \
        --views 0.png 1.png 2.png -o out/
    python scripts/pbr_infer.py --model W --opt options/train/PBR/default.yml --sample-idx 12 -o out/

Writes ``albedo.png``, ``roughness.png``, ``metallic.png`` and ``normal.png`` (encoded
``n * 0.5 + 0.5``) under ``-o``, and the input views as ``view_0.png`` ... With ``--sample-idx``
the views come from sample N of the option file's validation set (``--split train`` for its
training set), whose reference maps are written too, as ``<map>_gt.png``. The weights rebuild
their network from the file's metadata (every weight file upforge writes records it).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a plain script from a clone
    sys.path.insert(0, str(ROOT))

from archs.pbr_fusion_arch import stack_views  # noqa: E402
from data.image_io import read_image, tensor2img, write_image  # noqa: E402
from models.pbr_model import StackedMaps, map_network_problem, split_maps  # noqa: E402
from scripts.upscale import build_model  # noqa: E402
from utils.device import select_device  # noqa: E402
from utils.logger import get_logger, setup_logger  # noqa: E402


def load_map_network(path: str | Path, param_key: str = "params_ema") -> torch.nn.Module:
    """The network of weight file ``path``, which must be a map network (it declares ``num_views``)."""
    net, _ = build_model(path, param_key=param_key)
    problem = map_network_problem(net)
    if problem:
        raise ValueError(f"{path}: {problem}")
    return net


def read_views(paths: Sequence[str | Path], num_views: int) -> torch.Tensor:
    """The views as one (1, 3 * num_views, H, W) float tensor; a clear error for a wrong count or sizes."""
    if len(paths) != num_views:
        raise ValueError(f"the network takes {num_views} views, got {len(paths)}: {', '.join(map(str, paths))}")
    views = []
    for path in paths:
        img = read_image(path)
        if img.shape[2] == 1:
            img = img.repeat(3, axis=2)
        views.append(torch.from_numpy(img[:, :, :3].copy()).permute(2, 0, 1).float())
    try:
        return stack_views(views, num_views).unsqueeze(0)
    except ValueError as err:
        raise ValueError(f"{err} ({', '.join(map(str, paths))})") from err


def dataset_sample(opt_path: str, index: int, split: str = "val", overrides: Sequence[str] = ()) -> dict:
    """Sample ``index`` of the option file's ``val`` (or ``train``) set, read as validation reads it."""
    from data.data_loader import build_dataset
    from utils.options import load_options

    opt = load_options(opt_path, list(overrides))
    sets = {("train" if key == "train" else "val"): ds for key, ds in opt.datasets.items()}
    if split not in sets:
        raise ValueError(f"{opt_path} has no {split} dataset")
    ds_opt = dict(sets[split], phase="val")  # whole samples, no augmentation
    dataset = build_dataset(ds_opt)
    if not 0 <= index < len(dataset):
        raise ValueError(f"--sample-idx {index} is outside the {split} set's {len(dataset)} samples")
    return dataset[index]


@torch.no_grad()
def predict(net: torch.nn.Module, views: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
    """The four maps (normal encoded) for (1, 3V, H, W) ``views`` in [0, 1]."""
    stacked = StackedMaps(net).to(device).eval()(views.to(device)).clamp(0, 1)
    return split_maps(stacked.cpu())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="weights of a PBRModel run (.safetensors)")
    parser.add_argument("--views", nargs="+", help="the rendered views, in the training order (0, 1, 2)")
    parser.add_argument("--opt", help="option file whose dataset --sample-idx reads")
    parser.add_argument("--sample-idx", type=int, help="a sample of the option file's dataset instead of --views")
    parser.add_argument("--split", choices=["val", "train"], default="val", help="which set --sample-idx reads")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="an option-file override, as train.py's -o (e.g. datasets.val.dataroot_input=...)")
    parser.add_argument("-o", "--out-dir", required=True)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    parser.add_argument("--param-key", default="params_ema", help="checkpoint entry to prefer")
    args = parser.parse_args(argv)
    setup_logger()
    log = get_logger()
    if (args.views is None) == (args.sample_idx is None):
        log.error("give either --views A B C or --opt FILE --sample-idx N")
        return 2
    if args.sample_idx is not None and args.opt is None:
        log.error("--sample-idx reads the dataset of an option file: add --opt FILE")
        return 2
    try:
        net = load_map_network(args.model, args.param_key)
        targets = None
        if args.views is not None:
            views = read_views(args.views, net.num_views)
        else:
            sample = dataset_sample(args.opt, args.sample_idx, args.split, args.override)
            views, targets = sample["lq"].unsqueeze(0).float(), split_maps(sample["gt"].unsqueeze(0).float())
        maps = predict(net, views, select_device(args.device))
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        log.error(str(err))
        return 1
    out = Path(args.out_dir)
    for name, value in maps.items():
        write_image(out / f"{name}.png", tensor2img(value[0]))
        if targets is not None:
            write_image(out / f"{name}_gt.png", tensor2img(targets[name][0]))
    for v in range(net.num_views):
        write_image(out / f"view_{v}.png", tensor2img(views[0, 3 * v:3 * v + 3]))
    log.info(f"wrote {', '.join(f'{n}.png' for n in maps)} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
