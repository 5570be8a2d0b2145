"""Render a multi-view PBR training set (NeuroPBR layout) from ambientCG and procedural materials.

    python scripts/render_pbr_views.py --materials ../shared/data/pbr_ambientcg --out data/pbr \
        --samples 8 [--procedural 20] [--seed 0] [--size 256] [--max-zoom 2] [--no-dirty] [--overwrite]

Each material folder under ``--materials`` (``<Name>_Color``, ``_NormalGL``, ``_Roughness`` and,
optional, ``_Metalness`` maps) and each of ``--procedural`` generated materials gives ``--samples``
samples. A sample is a random crop (zoom 1 to ``--max-zoom``), 90° rotation and flip of the maps at
``--size``², rendered three times under different lights (Cook-Torrance GGX, see
``data/pbr_rendering.py``). Written under ``--out``::

    input/clean/sample_0000/{0,1,2}.png     clean sRGB views
    input/dirty/sample_0000/{0,1,2}.png     the same views through exposure, vignetting, blur, noise, JPEG
    input/render_metadata.json              {"sample_0000": "Bricks102_1K-JPG_000", ...}
    input/render_params.json                per sample: material, crop, lights, degradations
    output/Bricks102_1K-JPG_000/{albedo,roughness,metallic,normal}.png

Every sample has its own output folder (``<material>_<k>``: its crop of the maps). The render is a
function of ``--seed`` and the arguments: the same command writes the same bytes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a plain script from a clone
    sys.path.insert(0, str(ROOT))

from data.image_io import write_image  # noqa: E402
from data.pbr_rendering import (  # noqa: E402
    check_material_folder,
    list_material_folders,
    load_material,
    procedural_material,
    render_sample,
    sample_rng,
    save_maps,
)
from utils.logger import get_logger, setup_logger  # noqa: E402

VIEWS = 3  # the NeuroPBR model takes exactly three views
PROCEDURAL_SEED_TAG = 0x50524F43  # "PROC": keeps procedural materials' streams apart from the samples'


def sample_name(index: int) -> str:
    """``sample_0000``: four digits as the seed's layout shows (more when there are more samples)."""
    return f"sample_{index:04d}"


def check_out_folder(out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that already holds a render (``input/`` or ``output/`` not empty) unless ``overwrite``;
    with it, those two folders are removed so no stale sample survives next to the new metadata."""
    existing = [out / sub for sub in ("input", "output") if (out / sub).is_dir() and any((out / sub).iterdir())]
    if not existing:
        return
    if not overwrite:
        raise ValueError(f"'{out}' already holds a render ({', '.join(p.name + '/' for p in existing)}); "
                         "pass --overwrite to replace it, or choose another --out")
    for path in existing:
        shutil.rmtree(path)


def render_dataset(out: str | Path, materials: str | Path | None = None, samples: int = 1, procedural: int = 0,
                   seed: int = 0, size: int = 256, dirty: bool = True, max_zoom: float = 2.0,
                   overwrite: bool = False, max_side: int | None = 2048) -> dict[str, str]:
    """Render the data set (see the module docstring); returns the metadata (sample → output folder).

    All inputs are checked before anything is written: FileNotFoundError / ValueError with a message
    for the user otherwise. ``max_side`` shrinks bigger source maps on loading (speed, memory).
    """
    out = Path(out)
    if samples < 1:
        raise ValueError(f"--samples must be >= 1 (samples rendered per material), got {samples}")
    if procedural < 0:
        raise ValueError(f"--procedural must be >= 0 (number of generated materials), got {procedural}")
    if seed < 0:
        raise ValueError(f"--seed must be >= 0, got {seed}")
    if size < 8:
        raise ValueError(f"--size must be >= 8 pixels, got {size}")
    if max_zoom < 1:
        raise ValueError(f"--max-zoom must be >= 1 (1 = crops at the maps' own scale), got {max_zoom}")
    folders = list_material_folders(materials) if materials is not None else []
    for folder in folders:
        check_material_folder(folder)
    if not folders and procedural == 0:
        where = f"'{materials}' holds no material folders" if materials is not None else "no --materials given"
        raise ValueError(f"nothing to render: {where} and --procedural is 0")
    names = [f.name for f in folders] + [f"procedural_{i:03d}" for i in range(procedural)]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"material names must be unique, these repeat: {', '.join(duplicates)}")
    check_out_folder(out, overwrite)

    log = get_logger()
    metadata: dict[str, str] = {}
    params: dict[str, dict] = {}
    index = 0
    for m, name in enumerate(names):
        start = time.perf_counter()
        if m < len(folders):
            material = load_material(folders[m], max_side=max_side)
            source = f"ambientcg:{folders[m]}"
            missing = [role for role in material.defaults if role != "metallic"]  # no Metalness = not a metal: normal
            if missing:
                log.warning(f"material '{name}': no {' or '.join(missing)} map; using a constant "
                            "(normal: flat, roughness: 0.5)")
        else:
            generator = np.random.default_rng([seed, PROCEDURAL_SEED_TAG, m - len(folders)])
            material = procedural_material(generator, 2 * size, name)
            source = "procedural"
        for k in range(samples):
            sample = render_sample(material, sample_rng(seed, name, k), size, VIEWS, dirty, max_zoom)
            sname, target = sample_name(index), f"{name}_{k:03d}"
            save_maps(out / "output" / target, sample.maps)
            for v in range(VIEWS):
                write_image(out / "input" / "clean" / sname / f"{v}.png", sample.clean[v])
                if dirty:
                    write_image(out / "input" / "dirty" / sname / f"{v}.png", sample.dirty[v])
            metadata[sname] = target
            params[sname] = {"material": name, "maps": target, "source": source, **sample.params}
            index += 1
        log.info(f"{name}: {samples} samples in {time.perf_counter() - start:.1f} s")
    (out / "input").mkdir(parents=True, exist_ok=True)
    (out / "input" / "render_metadata.json").write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
    settings = {"seed": seed, "size": size, "views": VIEWS, "samples_per_material": samples,
                "procedural": procedural, "max_zoom": max_zoom, "dirty": dirty}
    (out / "input" / "render_params.json").write_text(
        json.dumps({"settings": settings, "samples": params}, indent=1) + "\n", encoding="utf-8")
    return metadata


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--materials", default=None,
                        help="folder of ambientCG material folders (or one material folder); may be left out "
                             "with --procedural")
    parser.add_argument("--out", required=True, help="output folder; input/ and output/ are written in it")
    parser.add_argument("--samples", type=int, required=True, help="samples (crops) rendered per material")
    parser.add_argument("--procedural", type=int, default=0, help="number of generated materials to add")
    parser.add_argument("--seed", type=int, default=0, help="the render is a function of this seed")
    parser.add_argument("--size", type=int, default=256, help="side of the square views and maps, pixels")
    parser.add_argument("--max-zoom", "--max_zoom", type=float, default=2.0,
                        help="crops span size x U(1, max-zoom) source pixels before resizing to --size")
    parser.add_argument("--no-dirty", "--no_dirty", action="store_true", help="write clean views only")
    parser.add_argument("--overwrite", action="store_true", help="replace a render already in --out")
    args = parser.parse_args(argv)
    logger = setup_logger()
    start = time.perf_counter()
    try:
        metadata = render_dataset(args.out, args.materials, args.samples, args.procedural, args.seed, args.size,
                                  not args.no_dirty, args.max_zoom, args.overwrite)
    except (OSError, ValueError) as err:
        get_logger().error(str(err))
        return 1
    logger.info(f"wrote {len(metadata)} samples to {args.out} "
                f"in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
