"""upforge's one top-level name in site-packages.

The project keeps the layout its users clone and edit: top-level ``archs/ data/ losses/ models/
utils/ scripts/`` and ``train.py``, importing each other by those short names. Installed as they
are, those names would land at the top of site-packages, where a user's own ``utils`` or another
project's ``data`` shadows them (or is shadowed by them). A wheel therefore puts them under this
package (``site-packages/upforge/utils``, ...) and nothing else at the top level; upforge's own
processes (the ``upforge-*`` console scripts) call :func:`activate` first, which puts that folder
at the front of ``sys.path`` so the short names resolve to upforge's modules in that process only.
Importing this package changes nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

__version__ = "0.1.0"

# Top-level names upforge's code imports; each must come from the same source root.
PROJECT_MODULES = ("archs", "data", "losses", "models", "utils", "scripts", "train")


def source_root() -> Path:
    """The folder holding ``train.py`` and the packages: this package's own folder in a wheel,
    the repository root in a clone or an editable install."""
    here = Path(__file__).resolve().parent
    for candidate in (here, here.parent):
        if (candidate / "train.py").is_file() and (candidate / "utils").is_dir():
            return candidate
    raise RuntimeError(f"upforge: no train.py beside or above {here}; the installation is incomplete")


def activate() -> Path:
    """Make ``import utils`` (and the other project names) resolve to upforge in this process.

    Refuses when a module of the same name from elsewhere is already imported: mixing the two
    would fail later in a confusing way.
    """
    root = source_root()
    for name in PROJECT_MODULES:
        module = sys.modules.get(name)
        origin = getattr(module, "__file__", None)
        if module is not None and origin is not None and root not in Path(origin).resolve().parents:
            raise RuntimeError(
                f"upforge needs the module name '{name}', but '{name}' from {origin} is already imported "
                "in this process; run upforge in its own process (the upforge-* commands) or import it first"
            )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root
