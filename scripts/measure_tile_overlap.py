"""How far tiled inference is from a whole-image pass, per tile size, overlap and blend width.

    python scripts/measure_tile_overlap.py [--model FILE] [--images DIR ...] [--tiles 64 128] \
        [--overlaps 8 16 24 32 48] [--blends 0.5] [--device cpu] [--json FILE]

For every image of the folders the network runs once on the whole image and once per
(tile, overlap, blend) with :mod:`utils.tiling`; it prints, per setting, the PSNR (outputs clamped
to [0, 1], whole image, all channels) and the largest difference in 8-bit levels (outputs as
written: clamped, x255, rounded) over the images. An image that the setting covers with a single
window is not tiled at all (exact; infinite PSNR): the table says how many images were really
tiled, and the PSNR mean is over those (each capped at 99 dB). ``--fit`` crops each image so that
the tiles overlap no more than they would on a large image (the worst case). ``--blends`` are
cross-fade widths as fractions of the overlap (the library uses ``utils.tiling.BLEND_RATIO``);
docs/inference.md has the results.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a plain script from a clone
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from data.image_io import img2tensor, list_images, read_image  # noqa: E402
from scripts.upscale import build_model  # noqa: E402

# The private layout/blend hooks are used on purpose: the point of this script is to compare
# blend widths other than the library default, which the public tile_forward does not expose.
from utils.tiling import BLEND_RATIO, DEFAULT_TILE_OVERLAP, _layout, _tile_forward, blend_width  # noqa: E402

SHARED = ROOT.parent / "shared"
DEFAULT_MODEL = SHARED / "weights" / "realesrgan" / "RealESRGAN_x4plus_anime_6B.safetensors"
DEFAULT_IMAGES = [SHARED / "data" / "Set5" / "LR_bicubic" / "X4", SHARED / "data" / "Set14" / "LR_bicubic_X4"]


def compare(tiled: torch.Tensor, whole: torch.Tensor) -> dict[str, float]:
    """PSNR on [0, 1] and the max / mean absolute difference in 8-bit levels."""
    a, b = tiled.float().clamp(0, 1), whole.float().clamp(0, 1)
    mse = torch.mean((a.double() - b.double()) ** 2).item()
    levels = ((a * 255).round() - (b * 255).round()).abs()
    return {
        "psnr": math.inf if mse == 0 else 10 * math.log10(1 / mse),
        "max_diff": int(levels.max().item()),
        "mean_diff": levels.mean().item(),
    }


def fit_side(side: int, tile: int, window: int) -> int:
    """The largest length ``<= side`` of the form ``window + k * tile`` (k >= 1): tiled with it, every
    seam has the minimum overlap, as on a large image. ``side`` itself when that is impossible."""
    k = (side - window) // tile
    return window + k * tile if k >= 1 else side


def measure_image(net: torch.nn.Module, lq: torch.Tensor, scale: int, settings: list[tuple[int, int, int]],
                  fit: bool = False) -> list[dict]:
    """One record per (tile, overlap, blend_px) for one image; untiled settings are exact by construction.

    ``fit`` centre-crops the image per setting with :func:`fit_side`. The layout spreads windows
    evenly, so on a small image neighbours overlap by much more than the minimum and the error
    looks smaller than on a large image; the crop removes that slack.
    """
    wholes: dict[tuple[int, int], torch.Tensor] = {}
    rows = []
    for tile, overlap, blend in settings:
        window = tile + 2 * overlap + blend
        h, w = lq.shape[-2:]
        ch, cw = (fit_side(h, tile, window), fit_side(w, tile, window)) if fit else (h, w)
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        crop = lq[..., y0 : y0 + ch, x0 : x0 + cw]
        (wy, wx), ys, xs = _layout(ch, cw, tile, overlap, blend)
        windows = len(ys) * len(xs)
        if windows == 1:
            stats = {"psnr": math.inf, "max_diff": 0, "mean_diff": 0.0}
        else:
            if (ch, cw) not in wholes:
                wholes[(ch, cw)] = net(crop)
            stats = compare(_tile_forward(net, crop, scale, tile, overlap, 1, blend), wholes[(ch, cw)])
        rows.append({"tile": tile, "overlap": overlap, "blend": blend, "window": max(wy, wx), "windows": windows,
                     "size": f"{cw}x{ch}", **stats})
    return rows


def summarise(records: list[dict]) -> list[dict]:
    """Per setting: images tiled, min / mean PSNR over the tiled ones, max diff, mean diff."""
    groups: dict[tuple[int, int, int], list[dict]] = {}
    for r in records:
        groups.setdefault((r["tile"], r["overlap"], r["blend"]), []).append(r)
    summary = []
    for (tile, overlap, blend), rows in groups.items():
        tiled = [r for r in rows if r["windows"] > 1]
        psnrs = [r["psnr"] for r in tiled]
        summary.append({
            "tile": tile, "overlap": overlap, "blend": blend, "window": tile + 2 * overlap + blend,
            "images": len(rows), "tiled": len(tiled),
            "psnr_min": min(psnrs, default=math.inf),
            "psnr_mean": sum(min(p, 99.0) for p in psnrs) / len(psnrs) if psnrs else math.inf,
            "max_diff": max((r["max_diff"] for r in rows), default=0),
            "mean_diff": sum(r["mean_diff"] for r in tiled) / len(tiled) if tiled else 0.0,
            "worst": min(tiled, key=lambda r: r["psnr"])["image"] if tiled else None,
        })
    return summary


def _db(value: float) -> str:
    return ">99" if value >= 99 else f"{value:.2f}"  # beyond 99 dB only float rounding is left


def format_table(summary: list[dict]) -> str:
    lines = ["| tile | overlap | blend | window | tiled | PSNR min (dB) | PSNR mean (dB) | max diff | mean diff "
             "| worst |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for s in summary:
        lines.append(f"| {s['tile']} | {s['overlap']} | {s['blend']} | {s['window']} | {s['tiled']}/{s['images']} | "
                     f"{_db(s['psnr_min'])} | {_db(s['psnr_mean'])} | {s['max_diff']} | {s['mean_diff']:.4f} | "
                     f"{s['worst'] or '-'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="weights file (scripts/upscale.py builds it)")
    parser.add_argument("--images", nargs="+", default=[str(p) for p in DEFAULT_IMAGES], help="LR image folders")
    parser.add_argument("--tiles", nargs="+", type=int, default=[64, 128], help="LR tile sizes")
    parser.add_argument("--overlaps", nargs="+", type=int, default=[8, 16, 24, 32, 48],
                        help=f"LR overlaps (discarded context; library default {DEFAULT_TILE_OVERLAP})")
    parser.add_argument("--blends", nargs="+", type=float, default=[BLEND_RATIO],
                        help=f"blend band widths as fractions of the overlap (library: {BLEND_RATIO})")
    parser.add_argument("--fit", action="store_true",
                        help="centre-crop each image per setting so that every seam has the minimum overlap")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images of each folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="write per-image records and the summary to this JSON file")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda":  # TF32 would swamp the differences being measured
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    net, kwargs = build_model(args.model)
    net = net.to(device)
    settings = [(t, o, blend_width(o, b)) for t in args.tiles for o in args.overlaps for b in args.blends]
    settings = list(dict.fromkeys(settings))  # ratios that round to the same width run once
    records = []
    with torch.inference_mode():
        for folder in args.images:
            for path in list_images(Path(folder))[: args.limit]:
                start = time.perf_counter()
                lq = img2tensor(read_image(path)).unsqueeze(0).to(device)
                for row in measure_image(net, lq, kwargs["scale"], settings, args.fit):
                    records.append({"image": path.name, **row})
                print(f"{path.name}: {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
    summary = summarise(records)
    print(format_table(summary))
    if args.json:
        finite = [{k: (None if v == math.inf else v) for k, v in r.items()} for r in summary + records]
        data = {"summary": finite[: len(summary)], "records": finite[len(summary) :]}  # strict JSON: inf → null
        Path(args.json).write_text(json.dumps(data, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
