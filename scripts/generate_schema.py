"""Write the editor schema of option files and the option reference, both from the option schema.

    python scripts/generate_schema.py            # writes options/schema.json and docs/options.md
    python scripts/generate_schema.py --check    # exits 1 when either committed file is stale

Run it after changing an option section, a runner's option fields or a registered class's
keywords; tests/test_option_schema.py fails until the committed files match.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.option_schema import generated_files  # noqa: E402


def stale_files(files: dict[Path, str]) -> list[Path]:
    """The generated files whose committed text differs from ``files`` (missing ones included)."""
    return [path for path, text in files.items()
            if not path.is_file() or path.read_text(encoding="utf-8") != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="only compare the committed files with a fresh generation; exit 1 if they differ")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    files = generated_files(ROOT)
    if args.check:
        stale = stale_files(files)
        if stale:
            names = ", ".join(str(p.relative_to(ROOT)) for p in stale)
            print(f"out of date: {names}; run python scripts/generate_schema.py and commit the result",
                  file=sys.stderr)
            return 1
        print(f"up to date: {', '.join(str(p.relative_to(ROOT)) for p in files)}")
        return 0
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        # newline="\n": the same bytes on every platform, so --check compares like with like
        with path.open("w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
        print(f"wrote {path.relative_to(ROOT)} ({len(text.encode('utf-8')) / 1024:.1f} KiB)")
    print(f"generated in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
