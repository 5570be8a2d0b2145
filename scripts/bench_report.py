"""How the benchmark scripts report a result: one JSON line on stdout, optionally appended to a file."""

from __future__ import annotations

import json


def emit(result: dict, json_path: str | None = None) -> None:
    line = json.dumps(result)
    print(line)
    if json_path:
        with open(json_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
