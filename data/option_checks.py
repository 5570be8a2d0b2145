"""Dataset checks run when an option file is loaded (``utils.options``, so also by ``--check``).

What the dataset classes would refuse when they are built, found before anything is built: a
training ``gt_size`` that is not a positive multiple of the scale, an ``aug_prob`` outside
[0, 1], a ``center_crop`` in training, a dataroot that is a file but not a ``.npy`` stack, ...
The value checks are the datasets' own: the shared base class's ``__init__`` validates its
keywords without touching the disk, so it is run on a bare instance and the messages are the ones
start-up would print. Missing dataroots are not an error here: the file may be meant for another
machine (``--check`` notes them).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from data.image_io import list_images
from data.paired_image_dataset import SRImageDatasetBase
from utils.registry import DATASET_REGISTRY


class DatasetOptionsError(ValueError):
    """Problems of one dataset section; ``problems`` holds (key, message) pairs (key '' for the
    section as a whole), which the option check reports at ``datasets.<name>.<key>``."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{key}: {msg}" if key else msg for key, msg in problems))


def check_dataset_section(section: dict[str, Any]) -> None:
    """Raise :class:`DatasetOptionsError` for a checked dataset section (``type``, the class's
    keywords with ``scale`` and ``phase`` injected) that building the dataset would refuse."""
    cls = DATASET_REGISTRY.get(section["type"])
    if not (inspect.isclass(cls) and issubclass(cls, SRImageDatasetBase)):
        return  # another kind of dataset: its keywords mean what it says they mean
    kwargs = {k: v for k, v in section.items() if k != "type"}
    problems = (_base_value_problems(cls, kwargs) + _template_problems(kwargs) + _dataroot_problems(kwargs)
                + _meta_info_problems(kwargs))
    if problems:
        raise DatasetOptionsError(problems)


def _base_value_problems(cls: type, kwargs: dict[str, Any]) -> list[tuple[str, str]]:
    """What the shared base class's ``__init__`` refuses, run on a bare instance of ``cls`` (so
    the message names the class) with the keywords ``cls`` would hand it, defaults included."""
    if "scale" not in kwargs:  # the top-level scale was invalid and is reported there
        return []
    bound = inspect.signature(cls).bind_partial(**kwargs)
    bound.apply_defaults()
    base = inspect.signature(SRImageDatasetBase.__init__).parameters
    args = {name: value for name, value in bound.arguments.items() if name in base}
    required = [name for name, p in base.items()
                if name != "self" and p.default is p.empty and p.kind != p.VAR_KEYWORD]
    if any(name not in args for name in required):
        return []  # a subclass that does not pass these through: its own constructor decides
    bare = cls.__new__(cls)
    own = inspect.signature(bare.check_keywords).parameters if hasattr(bare, "check_keywords") else {}
    try:
        SRImageDatasetBase.__init__(bare, **args)
        if own:  # a subclass's own keyword checks (e.g. PixelArtDataset's degradations), no files touched
            bare.check_keywords(**{k: v for k, v in bound.arguments.items() if k in own})
    except (ValueError, TypeError) as err:
        return [("", str(err))]
    return []


def _template_problems(kwargs: dict[str, Any]) -> list[tuple[str, str]]:
    """``filename_tmpl`` names a gt stem's lq file: without ``{}`` every gt would look for one name."""
    template = kwargs.get("filename_tmpl")
    if isinstance(template, str) and "{}" not in template:
        return [("filename_tmpl", f"{template!r} must contain '{{}}', which stands for the gt file's stem")]
    return []


def _dataroot_problems(kwargs: dict[str, Any]) -> list[tuple[str, str]]:
    """Dataroots that exist but cannot be read as one: a file other than a ``.npy`` stack (or any
    file with the lmdb backend), or an LMDB folder read from disk. Missing ones are left to the
    notes of ``--check``."""
    lmdb = isinstance(kwargs.get("io_backend"), dict) and kwargs["io_backend"].get("type") == "lmdb"
    problems = []
    for key, value in kwargs.items():
        if not key.startswith("dataroot") or not isinstance(value, str | Path) or not str(value):
            continue
        problem = _dataroot_problem(Path(value), lmdb)
        if problem:
            problems.append((key, f"'{value}' {problem}"))
    return problems


def _dataroot_problem(path: Path, lmdb: bool) -> str | None:
    try:
        if not path.exists():
            return None
        if path.is_dir():
            if not lmdb and (path / "data.mdb").is_file():
                return "is an LMDB folder; read it with io_backend: {type: lmdb}"
            return None
    except OSError as err:  # e.g. a name too long for the file system
        return f"cannot be inspected: {err.strerror or err}"
    if lmdb:
        return "is a file; with io_backend lmdb a dataroot is a BasicSR *.lmdb folder"
    if path.suffix.lower() == ".npy":
        return _stack_problem(path)
    return ("is a file, not a folder of images; a dataroot is a folder, a .npy stack (a 4-D array), or with "
            "io_backend lmdb a *.lmdb folder")


def _meta_info_problems(kwargs: dict[str, Any]) -> list[tuple[str, str]]:
    """``meta_info_file`` is a text file listing images; a folder there is a mistake (a missing
    file may still be written, e.g. by scripts/score_complexity.py, so it is left to start-up)."""
    value = kwargs.get("meta_info_file")
    if isinstance(value, str) and value and Path(value).is_dir():
        return [("meta_info_file", f"'{value}' is a folder; meta_info_file is a text file listing the images to use, "
                                   "one per line")]
    return []


def _stack_problem(path: Path) -> str | None:
    """A ``.npy`` dataroot whose header does not describe images (a pickle, a 1-D array): listing
    it reads the header only, as building the dataset does first."""
    try:
        list_images(path)
    except (OSError, ValueError) as err:  # ImageReadError is an OSError
        return f"is not a usable .npy file: {getattr(err, 'reason', err)}"
    return None
