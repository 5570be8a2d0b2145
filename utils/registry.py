"""String-keyed registries that map option-file names onto classes and functions."""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


class RegistryError(KeyError):
    """Raised for unknown or duplicate registry names; the message is meant for the user."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain.
        return str(self.args[0]) if self.args else ""


def _where(obj: Any) -> str:
    try:
        return f"{inspect.getsourcefile(obj)}:{inspect.getsourcelines(obj)[1]}"
    except (OSError, TypeError):
        return getattr(obj, "__module__", "?")


class Registry:
    """A case-insensitive name → object map.

    Register with ``@ARCH_REGISTRY.register()`` (name = ``obj.__name__``) or
    ``@ARCH_REGISTRY.register("alias")``.
    """

    def __init__(self, name: str, package: str | None = None, suffix: str | None = None) -> None:
        self.name = name
        self._package = package
        self._suffix = suffix
        self._scanned = False
        self._objects: dict[str, Any] = {}
        self._display: dict[str, str] = {}

    def register(self, name: str | None = None) -> Callable[[Any], Any]:
        def deco(obj: Any) -> Any:
            key = name or obj.__name__
            low = key.lower()
            if low in self._objects:
                old = self._objects[low]
                if old is obj or _where(old) == _where(obj):
                    # The same definition imported twice under two module names
                    # (e.g. a file loaded both by path and by package) is harmless.
                    self._objects[low] = obj
                    return obj
                raise RegistryError(
                    f"{self.name}: '{key}' is registered twice: at {_where(old)} and at {_where(obj)}"
                )
            self._objects[low] = obj
            self._display[low] = key
            return obj

        return deco

    def scan(self) -> None:
        """Import every module of the owning package whose file name ends with the suffix."""
        if self._scanned or self._package is None:
            return
        self._scanned = True
        pkg = importlib.import_module(self._package)
        if self._suffix is None:  # a single module holds every entry
            return
        folder = Path(pkg.__file__).parent
        for path in sorted(folder.glob(f"*{self._suffix}.py")):
            if path.stem.startswith("_"):
                continue
            importlib.import_module(f"{self._package}.{path.stem}")

    def get(self, name: str) -> Any:
        self.scan()
        obj = self._objects.get(str(name).lower())
        if obj is None:
            raise RegistryError(self.unknown_message(name))
        return obj

    def unknown_message(self, name: str) -> str:
        self.scan()
        names = sorted(self._display.values())
        close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
        if not close:
            close = difflib.get_close_matches(str(name).lower(), list(self._display), n=3, cutoff=0.5)
            close = [self._display[c] for c in close]
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        return f"{self.name}: no entry named '{name}'.{hint} Known: {', '.join(names)}"

    def __contains__(self, name: str) -> bool:
        self.scan()
        return str(name).lower() in self._objects

    def __iter__(self) -> Iterator[str]:
        self.scan()
        return iter(sorted(self._display.values()))

    def items(self) -> list[tuple[str, Any]]:
        self.scan()
        return [(self._display[k], v) for k, v in sorted(self._objects.items())]

    def keys(self) -> list[str]:
        return list(self)


ARCH_REGISTRY = Registry("arch", "archs", "_arch")
LOSS_REGISTRY = Registry("loss", "losses", "_loss")
DATASET_REGISTRY = Registry("dataset", "data", "_dataset")
MODEL_REGISTRY = Registry("model", "models", "_model")
METRIC_REGISTRY = Registry("metric", "utils.metrics", "")
OPTIMIZER_REGISTRY = Registry("optimizer", "models.optimizers")
SCHEDULER_REGISTRY = Registry("scheduler", "models.lr_schedulers")
AUTOMATION_REGISTRY = Registry("automation", "models.automations", "_automation")


def import_user_modules(entries: list[str], base_dir: str | Path | None = None) -> None:
    """Import user code named in an option file's ``imports:`` list.

    An entry ending in ``.py`` is a file path (relative to ``base_dir`` if not found as given);
    anything else is a dotted module name.
    """
    for entry in entries:
        if entry.endswith(".py"):
            path = Path(entry)
            if not path.is_absolute() and not path.exists() and base_dir is not None:
                path = Path(base_dir) / entry
            if not path.exists():
                raise FileNotFoundError(f"imports: file '{entry}' not found")
            path = path.resolve()
            mod_name = f"upforge_user_{path.stem}_{abs(hash(str(path))) % 10**8}"
            if mod_name in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
        else:
            importlib.import_module(entry)
