"""Score every image of a folder for complexity (texture, edges, colour) and write a CSV.

    python scripts/score_complexity.py -i datasets/DIV2K/DIV2K_train_HR -o scores.csv --min 0.5 --list complexity05.txt

The CSV has the columns path,texture_variance,edge_density,colour_variation,complexity with
paths relative to the folder; the statistics and the score are defined in
utils/image_statistics.py and computed on whole images. ``--list`` writes the images scoring
>= --min, one relative path per line: BasicSR's ``meta_info_file`` format, so the list can
restrict a paired/HR dataset to the complex images. That format ends a name at the first
space, so names containing whitespace are left out of the list (with a warning).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.image_io import ImageReadError, list_images, read_image  # noqa: E402
from utils.image_statistics import STAT_NAMES, complexity_score, first_three_bands, image_statistics  # noqa: E402

CSV_COLUMNS = ("path", *STAT_NAMES, "complexity")


def score_folder(folder: str | Path, recursive: bool = False) -> list[dict[str, str | float]]:
    """One row per image: its path relative to ``folder`` (POSIX style), the statistics and the score."""
    folder = Path(folder)
    rows: list[dict[str, str | float]] = []
    for path in list_images(folder, recursive=recursive):
        stats = image_statistics(first_three_bands(read_image(path, keep_channels=True)))
        rows.append({"path": path.relative_to(folder).as_posix(), **stats, "complexity": complexity_score(stats)})
    return rows


def write_csv(rows: list[dict[str, str | float]], out: str | Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: v if k == "path" else f"{v:.6g}" for k, v in row.items()})


def write_list(names: list[str], out: str | Path) -> None:
    """BasicSR meta_info_file: one relative path per line."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(f"{name}\n" for name in names), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-i", "--input", required=True, help="image folder")
    parser.add_argument("-o", "--output", required=True, help="CSV file to write")
    parser.add_argument("--min", type=float, default=0.5, help="complexity threshold for the summary and --list")
    parser.add_argument("--list", help="also write the names of images scoring >= --min (meta_info_file format)")
    parser.add_argument("--recursive", action="store_true", help="include images in subfolders")
    args = parser.parse_args(argv)

    try:
        rows = score_folder(args.input, recursive=args.recursive)
    except (FileNotFoundError, NotADirectoryError, ImageReadError) as err:
        # A missing/empty folder or an unreadable image is a user error: one line, no traceback.
        print(f"error: {err}", file=sys.stderr)
        return 2
    write_csv(rows, args.output)

    selected = [str(row["path"]) for row in rows if float(row["complexity"]) >= args.min]
    mean = sum(float(row["complexity"]) for row in rows) / len(rows)
    print(f"scored {len(rows)} images in {args.input} -> {args.output}")
    print(f"mean complexity {mean:.3f}; {len(selected)} of {len(rows)} at or above {args.min:g}")
    if args.list:
        listable = [name for name in selected if not any(c.isspace() for c in name)]
        skipped = len(selected) - len(listable)
        if skipped:
            print(
                f"warning: left {skipped} name(s) with whitespace out of {args.list}: "
                "meta_info_file readers take the text up to the first space as the path",
                file=sys.stderr,
            )
        write_list(listable, args.list)
        print(f"wrote {len(listable)} names to {args.list}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
