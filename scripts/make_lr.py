"""Make bicubic LR images from an HR folder with the MATLAB-compatible resize.

    python scripts/make_lr.py -i datasets/DIV2K/DIV2K_train_HR -o datasets/DIV2K/LR_bicubic/X2 --scale 2

HR images are mod-cropped to a multiple of the scale first, as benchmark LR sets are made.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.image_io import list_images, read_image, write_image  # noqa: E402
from data.imresize import imresize  # noqa: E402
from data.transforms import mod_crop  # noqa: E402


def make_lr(src: str | Path, dst: str | Path, scale: int, suffix: str = "") -> int:
    """Write one LR PNG per HR image; returns how many were written."""
    dst = Path(dst)
    count = 0
    for path in list_images(src):
        hr = mod_crop(read_image(path), scale)
        lr = imresize(hr, 1.0 / scale).clip(0, 1)
        write_image(dst / f"{path.stem}{suffix}.png", lr)
        count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-i", "--input", required=True, help="HR image folder")
    parser.add_argument("-o", "--output", required=True, help="LR output folder")
    parser.add_argument("--scale", type=int, required=True)
    parser.add_argument("--suffix", default="", help="appended to file stems, e.g. x2")
    args = parser.parse_args(argv)
    n = make_lr(args.input, args.output, args.scale, args.suffix)
    print(f"wrote {n} LR images to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
