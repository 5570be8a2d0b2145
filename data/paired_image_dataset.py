"""Paired GT/LQ image folders (the BasicSR ``PairedImageDataset``) and the shared dataset base."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from data.auto_split import SplitOptions, check_split, split_indices, split_name
from data.degradations import (
    DropoutOptions,
    JpegOptions,
    check_dropout,
    check_jpeg,
    plan_lq_degradations,
    random_lq_degradations,
)
from data.image_io import (
    ImageReadError,
    fit_channels,
    header_size,
    img2tensor,
    list_images,
    read_image,
    scale_values,
    tensor_to_float,
)
from data.lmdb_backend import IoBackend, LmdbReader, backend_type, key_of
from data.seeded_items import SeededItems
from data.transforms import augment, crop_origin, flip_draws, mod_crop, paired_random_crop
from utils.registry import DATASET_REGISTRY
from utils.schedule import Schedule, Scheduled, as_schedule, integer_schedule

logger = logging.getLogger("upforge")

PHASES = ("train", "val", "test")

CacheMode = Literal["ram", "gpu"]


@dataclass(frozen=True)
class PatchPlan:
    """A training sample as drawn from its seed, before any pixel is touched (cached sets,
    data.cached_batches): the patch corner in each of the sample's images (gt, then lq for
    paired sets), the flip code ``h + 2 v + 4 t`` and the lq dropout holes."""

    index: int
    origins: tuple[tuple[int, int], ...]
    flip_code: int
    holes: tuple[tuple[int, int, int, int], ...] = ()


#: training images whose size no header tells (WebP, ...) decoded at build to check it, at most;
#: the rest are checked when they are cropped
SIZE_DECODE_LIMIT = 64


class SRImageDatasetBase(SeededItems):
    """What every SR image dataset shares: option checks, per-sample RNG, skipping bad files.

    Subclasses fill ``self.gt_paths`` (then call :meth:`_keep_indices`) and implement
    ``load(index, rng)``, which returns ``(gt, lq, gt_path, lq_path)`` as HWC arrays read with
    :meth:`read` (cropped and flipped in training, centre-cropped with ``center_crop`` otherwise);
    ``rng`` is None outside training. The base then applies the LR-only degradations
    (``lq_jpeg``, ``lq_dropout``) to the training lq patch.
    Training samples keep 8-bit images as uint8 tensors: a quarter of the bytes to collate, pin
    and copy; the prefetcher turns them into float on the device. Other phases return float32.
    In training, crops, flips and degradations come from a per-sample seed: the one given with the
    index (``dataset[(index, seed)]``, as ``ResumableSampler`` yields) or else one drawn from
    torch's RNG.
    ``io_backend`` ``{type: lmdb}`` reads BasicSR LMDB folders instead of image folders: subclasses
    list a dataroot with :meth:`_list`, whose "paths" are then ``<root>.lmdb/<name>`` for the
    names its ``meta_info.txt`` lists, and :meth:`read` reads them from the LMDB.

    What would stop a run later is found when the dataset is built (subclasses end their
    ``__init__`` with :meth:`_check_images`): a validation/test set reads every image (they are
    small; a corrupt file, a wrong channel count or a mismatched pair is named at once, not at
    the first validation); a training set reads every image's size from its header, never its
    pixels, and refuses images smaller than the largest ``gt_size`` it will crop. Unreadable
    training images are still skipped with a warning when they are read.

    The options every dataset shares are documented here once; subclasses document their own.

    Args:
        dataroot_gt: ground-truth (HR) images: a folder, a 4-D ``.npy`` stack file, or with
            ``io_backend: {type: lmdb}`` a BasicSR ``*.lmdb`` folder.
        scale: upscaling factor (a positive int): gt sides are ``scale`` x the lq's.
        phase: ``train`` (random patches, flips and lq degradations) or ``val`` / ``test`` (whole images, or
            their ``center_crop``).
        gt_size: side in pixels of the square training gt patch, a positive multiple of ``scale`` (the lq
            patch is ``gt_size / scale``); required for training, unused otherwise; may be a schedule.
        use_hflip: training: random horizontal flips.
        use_rot: training: random vertical flips and transposes (with ``use_hflip``: all 8 rotations and
            flips).
        aug_prob: probability of each enabled flip or transpose, in [0, 1] (0.5: every variant equally
            often); may be a schedule.
        meta_info_file: text file listing the gt images to use, one per line (path relative to
            ``dataroot_gt`` or file name; anything after the first space is ignored); null: every image.
        channels: channel count of every sample (and of the network's input and output); with 3, gray is
            repeated to RGB and an RGBA file's alpha dropped; any other mismatch is an error.
        value_scale: divisor of the stored values instead of the type's (255 for uint8, 65535 for uint16,
            float as stored), e.g. 10000 for Sentinel-2 reflectance; the samples are then float32.
        indices: keep only the images at these positions of the sorted list (stacks expanded into their
            items; applied after ``split`` and before ``meta_info_file``), e.g. ``[0, 1, 2, 3]``.
        split: ``{part: train | val | test, ratios: [train, val, test], seed: 0}``: keep one part of a
            deterministic split of the dataroot; each image's part comes from a hash of (seed, its name), so
            adding files never moves others between parts (pairs go by the gt's name). Applied first, then
            ``indices`` (positions within the part), then ``meta_info_file``. See data/auto_split.py.
        lq_jpeg: training only: ``{prob, quality: [lo, hi]}``: with probability ``prob``, JPEG-compress the
            lq patch at a quality drawn from [lo, hi] (1-100); for ``channels`` 1 or 3.
        lq_dropout: training only: ``{prob, holes: [min, max], size: [min, max], fill}``: with probability
            ``prob``, fill that many square holes of that side (lq pixels) with ``fill`` (on the [0, 1]
            scale, default 0).
        io_backend: ``{type: disk}`` (image folders and stack files, the default) or ``{type: lmdb}``
            (BasicSR LMDB folders; needs the lmdb package).
        cache: training only: ``ram`` or ``gpu``: decode every image once at start-up and keep it (uint8 for
            8-bit sets) in RAM or on the GPU; crops, flips, rotations (and an HR set's bicubic LR, and
            ``lq_dropout``) are then made on the run's device, batched, with the same patches as without the
            cache; no data workers are used. The size is logged; a set that does not fit is refused at
            start-up. Not with ``lq_jpeg`` (JPEG runs on the CPU). null: the CPU path with workers.
    """

    #: options that may change during a run (a schedule in the option file, or an automation)
    live_options: tuple[str, ...] = ("gt_size", "aug_prob")

    def __init__(self, scale: int, phase: str, gt_size: Any, use_hflip: bool, use_rot: bool,
                 aug_prob: Any = 0.5, *, channels: int = 3, value_scale: float | None = None,
                 center_crop: int | None = None, lq_jpeg: JpegOptions | None = None,
                 lq_dropout: DropoutOptions | None = None, io_backend: IoBackend | None = None,
                 cache: CacheMode | None = None, split: SplitOptions | None = None) -> None:
        name = type(self).__name__
        self.split = check_split(split, f"{name}: split")
        self._left_out: set[str] = set()  # names of images the split left out (see _leave_out)
        self.io_backend = backend_type(io_backend, name)
        # dataroot → its reader (lmdb only); each reader opens the LMDB per process, on first read
        self._lmdb: dict[Path, LmdbReader] = {}
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise ValueError(f"{name}: scale must be a positive integer, got {scale!r}")
        if phase not in PHASES:
            raise ValueError(f"{name}: phase must be one of {', '.join(PHASES)}, got {phase!r}")
        self.scale = scale
        self.phase = phase
        self.use_hflip = use_hflip
        self.use_rot = use_rot
        # (the largest gt_size every training image allows, the image that limits it); set by
        # _check_images, then checked against gt_size changes during the run (check_knob)
        self._patch_limit: tuple[int, str] | None = None
        self.channels = self._check_channels(channels)
        self.value_scale = self._check_value_scale(value_scale)
        self.center_crop = self._check_center_crop(center_crop)
        if phase != "train" and (lq_jpeg is not None or lq_dropout is not None):
            raise ValueError(f"{name}: lq_jpeg and lq_dropout are training augmentations, but phase is "
                             f"{phase!r}; for a degraded validation set, write its LR images")
        self.lq_jpeg = check_jpeg(lq_jpeg, self.channels, f"{name}: lq_jpeg")
        self.lq_dropout = check_dropout(lq_dropout, f"{name}: lq_dropout")
        self.cache = self._check_cache(cache)
        # Scheduled options: the value at step 0 is the default; non-constant schedules are handed
        # to the batch sampler, which evaluates them per batch and passes the values with the indices.
        self.schedules: dict[str, Schedule] = {}
        self.gt_size = None
        self._gt_sizes: list[int] = []  # every value the gt_size schedule takes
        if phase == "train":
            if gt_size is None:
                raise ValueError(f"{name}: gt_size is required when phase is 'train'")
            sizes = integer_schedule(gt_size, f"{name}: gt_size")
            self._gt_sizes = sorted({int(v) for v in sizes.values()})
            self.gt_size = self._schedule("gt_size", sizes)
        self.aug_prob = self._schedule("aug_prob", as_schedule(aug_prob))
        self.gt_paths: list[Path] = []
        super().__init__()  # per process: each DataLoader worker keeps its own skip count and set

    def _check_channels(self, channels: Any) -> int:
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"{type(self).__name__}: channels must be a positive integer, got {channels!r}")
        return channels

    @property
    def makes_device_batches(self) -> bool:
        """Whether the training batches are made on the run's device from the cache
        (data.cached_batches, no workers) rather than by :meth:`__getitem__` in workers."""
        return self.cache is not None

    def _check_cache(self, cache: Any) -> str | None:
        name = type(self).__name__
        if cache is None:
            return None
        if cache not in ("ram", "gpu"):
            raise ValueError(f"{name}: cache must be ram, gpu or null, got {cache!r}")
        if self.phase != "train":
            raise ValueError(f"{name}: cache is for training sets (a {self.phase} set is read once per validation)")
        if self.lq_jpeg is not None:
            raise ValueError(f"{name}: lq_jpeg cannot be used with cache: JPEG compression runs on the CPU, and a "
                             "cached set makes its batches on the device; leave out cache (the CPU path with "
                             "workers) or lq_jpeg")
        return cache

    def _check_value_scale(self, value_scale: Any) -> float | None:
        if value_scale is None:
            return None
        number = not isinstance(value_scale, bool) and isinstance(value_scale, (int, float))
        if not number or not 0 < value_scale < np.inf:
            raise ValueError(f"{type(self).__name__}: value_scale must be a positive number, got {value_scale!r}")
        return float(value_scale)

    def _check_center_crop(self, size: Any) -> int | None:
        name = type(self).__name__
        if size is None:
            return None
        if self.phase == "train":
            raise ValueError(f"{name}: center_crop is for validation/test; training crops random "
                             "gt_size patches")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1 or size % self.scale:
            raise ValueError(f"{name}: center_crop must be a positive multiple of scale {self.scale}, got {size!r}")
        return size

    def _keep_indices(self, indices: list[int] | None) -> None:
        """Keep only the images of the ``split`` part (if any), then those at these positions of
        the sorted list (stacks expanded)."""
        self._keep_split()
        if indices is None:
            return
        name, n = type(self).__name__, len(self.gt_paths)
        bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n]
        if bad:
            part = f" (in split part {self.split['part']!r})" if self.split else ""
            raise ValueError(f"{name}: indices {bad} out of range: '{self.dataroot_gt}' holds {n} images{part} "
                             f"(indices 0 to {n - 1})")
        if not indices or len(set(indices)) != len(indices):
            raise ValueError(f"{name}: indices must be a non-empty list without repeats, got {indices}")
        keep = sorted(indices)
        self.gt_paths = [self.gt_paths[i] for i in keep]
        if hasattr(self, "lq_paths"):
            self.lq_paths = [self.lq_paths[i] for i in keep]

    def _keep_split(self) -> None:
        """Keep only the images of the ``split`` part, chosen by their gt names (data.auto_split)."""
        if self.split is None:
            return
        names = [split_name(p, self.dataroot_gt) for p in self.gt_paths]
        keep = split_indices(names, self.split)
        if not keep:
            raise ValueError(f"{type(self).__name__}: split part {self.split['part']!r} of '{self.dataroot_gt}' holds "
                             f"none of its {len(names)} images (ratios {list(self.split['ratios'])}, seed "
                             f"{self.split['seed']}); use more images or a larger ratio")
        self._leave_out(keep)

    def _leave_out(self, keep: list[int]) -> None:
        """Keep the samples at positions ``keep``; the names of the others (relative path and
        file name) go to ``_left_out``, which ``meta_info_file`` may still list."""
        kept = set(keep)
        for i, path in enumerate(self.gt_paths):
            if i not in kept:
                rel = split_name(path, self.dataroot_gt)  # an LMDB image may be listed by its bare key
                self._left_out.update((path.name, rel, rel + path.suffix))
        self.gt_paths = [self.gt_paths[i] for i in keep]
        if hasattr(self, "lq_paths"):
            self.lq_paths = [self.lq_paths[i] for i in keep]

    def _list(self, root: str, option: str) -> list[Path]:
        """The images of the dataroot ``root`` (the option ``option``): the files of a folder or
        the items of a stack (disk), or the images an LMDB's meta_info.txt lists (lmdb), as
        ``<root>.lmdb/<name>`` sorted like a folder listing, so ``indices`` and the pairing
        mean the same for an LMDB made from a folder as for the folder."""
        if self.io_backend == "disk":
            path = self._check_dataroot(root, option)
            try:
                return list_images(path)
            except (FileNotFoundError, NotADirectoryError) as err:  # e.g. a folder without images
                raise type(err)(f"{type(self).__name__}: {option}: {err}") from err
        reader = LmdbReader(root, f"{type(self).__name__}: {option}")
        self._lmdb[reader.root] = reader
        return sorted(map(reader.path_of, reader.keys()))

    def _check_dataroot(self, root: str, option: str) -> Path:
        """``root`` as a Path, after checking it is what a disk dataroot can be: a folder of
        images, or a ``.npy`` file (a stack of images, or one image); a clear error naming the
        option otherwise (the option-file check says the same; this one guards datasets built
        in Python)."""
        where = f"{type(self).__name__}: {option} '{root}'"
        path = Path(root)
        if not path.exists():
            raise FileNotFoundError(f"{where} does not exist")
        if path.is_dir():
            if (path / "data.mdb").is_file():
                raise ValueError(f"{where} is an LMDB folder; read it with io_backend: {{type: lmdb}}")
            return path
        if path.suffix.lower() != ".npy":
            raise NotADirectoryError(f"{where} is a file, not a folder of images; a dataroot is a folder, a .npy "
                                     "stack (a 4-D array), or with io_backend lmdb a *.lmdb folder")
        try:
            list_images(path)  # reads the .npy header only
        except ImageReadError as err:
            raise ValueError(f"{where} is not a usable .npy file: {err.reason}") from err
        return path

    def _lmdb_key(self, path: Path) -> tuple[LmdbReader, str]:
        """The reader and key of an LMDB image path made by :meth:`_list`."""
        for root, reader in self._lmdb.items():
            if path.is_relative_to(root):
                return reader, key_of(path.relative_to(root).as_posix())
        raise ImageReadError(path, f"not inside any LMDB of this dataset ({', '.join(map(str, self._lmdb))})")

    def stem(self, path: Path) -> str:
        """The name that pairs gt with lq: the file stem, or the key of an LMDB image."""
        return self._lmdb_key(path)[1] if self._lmdb else path.stem

    def read(self, path: Path) -> np.ndarray:
        """An image in its stored dtype (or float32 with ``value_scale``) with ``channels``
        channels; a wrong channel count is a :class:`~data.image_io.ChannelCountError`."""
        if self._lmdb:
            reader, key = self._lmdb_key(path)
            img = reader.read(key)
            if self.value_scale is not None:
                img = scale_values(img, self.value_scale)
        else:
            img = read_image(path, keep_channels=True, as_float=False, value_scale=self.value_scale)
        return fit_channels(img, self.channels, path)

    def header_size(self, path: Path, stack_shapes: dict[Path, tuple[int, ...]] | None = None
                    ) -> tuple[int, int] | None:
        """``(height, width)`` of an image from its header (no pixels decoded); None when the
        header does not tell (see :func:`~data.image_io.header_size`, which takes ``stack_shapes``)."""
        if self._lmdb:
            reader, key = self._lmdb_key(path)
            return reader.header_size(key)
        return header_size(path, stack_shapes)

    def decoded_size(self, path: Path) -> tuple[int, int]:
        """``(height, width)`` of an image, decoding it."""
        if self._lmdb:
            reader, key = self._lmdb_key(path)
            return reader.read(key).shape[:2]
        return read_image(path, keep_channels=True, as_float=False).shape[:2]

    # ----------------------------------------------------------- checks at build

    def _check_images(self) -> None:
        """Find at build what would otherwise stop the run later (see the class docstring).
        Subclasses call it at the end of ``__init__``, once their paths are final."""
        if self.phase == "train":
            self._check_patch_sizes()
            return
        for index in range(len(self)):
            try:
                self.verify(index)
            except Exception as err:
                err.add_note(f"{type(self).__name__} ({self.phase}): every image of a {self.phase} set is read "
                             "when the dataset is built, so a bad one is found at start-up, not when it is used")
                raise

    def verify(self, index: int) -> None:
        """Validation/test: read sample ``index`` and check it as :meth:`load` would (channels,
        pairing, sizes) without making it; raise on anything wrong."""
        raise NotImplementedError

    def patch_fit(self, index: int, probe: SizeProbe) -> tuple[int, str] | None:
        """Training: the largest ``gt_size`` sample ``index`` allows (from its images' headers)
        and a description of the image that limits it, naming it and its size; None when its
        sizes are unknown. May raise when the sizes show the sample cannot be made at all.
        This one is for sets that make their LR from the gt (the gt's shorter side); paired sets
        override it."""
        gt_path = self.gt_paths[index]
        size = probe(gt_path)
        if size is None:
            return None
        h, w = size
        return min(h, w), f"'{gt_path}' is {h}x{w} (HxW)"

    def _eval_gt(self, gt: np.ndarray, gt_path: Path) -> np.ndarray:
        """Validation/test of a set that makes its LR from the gt: the whole gt mod-cropped to a
        multiple of ``scale``, or its ``center_crop``."""
        gt = mod_crop(gt, self.scale)
        if gt.shape[0] == 0 or gt.shape[1] == 0:
            raise ValueError(f"image '{gt_path}' is smaller than scale {self.scale}")
        if self.center_crop is not None:
            gt = center_crop_pair(gt, None, self.center_crop, self.scale, gt_path)[0]
        return gt

    def _check_patch_sizes(self) -> None:
        """Every training sample holds the largest gt_size patch the schedule will crop.

        Sizes come from the image headers, so a large training set costs a few small reads per
        file at start-up, never a decode (formats without a readable header: up to
        SIZE_DECODE_LIMIT decodes). Images that are smaller are an error naming them, even when
        the others fit: leaving them out silently would train on a different set than the one
        asked for.
        """
        name, gt_size = type(self).__name__, max(self._gt_sizes)
        probe = SizeProbe(self)
        small: list[str] = []
        for index in range(len(self)):
            fit = self.patch_fit(index, probe)
            if fit is None:
                continue
            if self._patch_limit is None or fit[0] < self._patch_limit[0]:
                self._patch_limit = fit
            if fit[0] < gt_size:
                small.append(fit[1])
        if probe.unchecked:
            logger.info("%s: the sizes of %d training images were not checked at start-up (no header to read "
                        "them from); one smaller than gt_size stops training when it is cropped", name,
                        probe.unchecked)
        if small:
            schedule = " (the largest value of its schedule)" if len(self._gt_sizes) > 1 else ""
            shown = "; ".join(small[:5]) + ("; ..." if len(small) > 5 else "")
            raise ValueError(f"{name}: {len(small)} of {len(self)} training images are too small for gt_size "
                             f"{gt_size}{schedule}: {shown}. Lower gt_size, or leave them out (indices, "
                             "meta_info_file)")

    def _schedule(self, option: str, sched: Schedule) -> Any:
        for value in sched.values():
            self.check_knob(option, value)
        if not sched.is_constant:
            self.schedules[option] = sched
        return sched(0)

    def check_knob(self, option: str, value: Any) -> None:
        """Raise if ``value`` is not valid for the live option ``option``."""
        name = type(self).__name__
        if option == "gt_size" and (isinstance(value, bool) or int(value) != value or value < 1
                                    or int(value) % self.scale):
            raise ValueError(f"{name}: gt_size must be a positive multiple of scale {self.scale}, got {value!r}")
        if option == "aug_prob" and not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}: aug_prob must be in [0, 1], got {value!r}")
        if option == "gt_size" and self._patch_limit is not None and value > self._patch_limit[0]:
            raise ValueError(f"{name}: gt_size {value} is too large for the training images: "
                             f"{self._patch_limit[1]}")

    def option(self, name: str, knobs: dict[str, Any] | None = None) -> Any:
        """A live option's value for the sample being made: its value in ``knobs`` (by default
        the knobs of the item being read), else the dataset's default."""
        return (self._knobs if knobs is None else knobs).get(name, getattr(self, name))

    def _filter_meta_info(self, meta_info_file: str | None) -> None:
        """Keep only the gt images a BasicSR ``meta_info_file`` lists (one relative path per line,
        anything after the first space ignored), e.g. the list ``scripts/score_complexity.py``
        writes of the images at or above a complexity threshold."""
        if not meta_info_file:
            return
        path = Path(meta_info_file)
        if not path.is_file():
            raise FileNotFoundError(f"{type(self).__name__}: meta_info_file not found: {path}")
        names = [line.split(" ")[0] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        by_rel = {p.relative_to(self.dataroot_gt).as_posix(): i for i, p in enumerate(self.gt_paths)}
        by_name = {p.name: i for i, p in enumerate(self.gt_paths)}
        if self._lmdb:  # an LMDB image may also be listed by its bare key (unique, unlike folder stems)
            by_name.update({self.stem(p): i for i, p in enumerate(self.gt_paths)})
        # an image the split (or a subclass's filter) left out may be listed: the list may cover the whole folder
        missing = [n for n in names if n not in by_rel and n not in by_name and n not in self._left_out]
        if missing:
            raise FileNotFoundError(
                f"{type(self).__name__}: {len(missing)} images listed in {path} are not in "
                f"{self.dataroot_gt}: {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}")
        keep = sorted({by_rel.get(n, by_name.get(n)) for n in names if n in by_rel or n in by_name})
        if names and not keep:
            raise ValueError(f"{type(self).__name__}: none of the {len(names)} images listed in {path} is left after "
                             "the split (or the dataset's own filter)")
        self.gt_paths = [self.gt_paths[i] for i in keep]
        if hasattr(self, "lq_paths"):
            self.lq_paths = [self.lq_paths[i] for i in keep]

    def __len__(self) -> int:
        return len(self.gt_paths)

    def load(self, index: int, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray, Path, Path]:
        raise NotImplementedError

    # ------------------------------------------------------------- cached sets

    def cache_read(self, index: int) -> tuple[np.ndarray, ...]:
        """Sample ``index``'s images as :meth:`load` reads them before cropping: ``(gt,)`` for sets
        that make their lq, ``(gt, lq)`` otherwise."""
        raise NotImplementedError

    def plan_patch(self, index: int, rng: np.random.Generator, sizes: list[tuple[int, int]],
                   knobs: dict[str, Any]) -> PatchPlan:
        """Training sample ``index`` drawn from ``rng`` exactly as :meth:`load` and the lq
        degradations draw it, for images of ``sizes`` (as :meth:`cache_read` returns them) and
        the live options ``knobs``. Touches no state, so batches can be planned in a thread."""
        raise NotImplementedError

    def _draw_patch(self, rng: np.random.Generator, hw: tuple[int, int], size: int, path: Path,
                    knobs: dict[str, Any]) -> tuple[int, int, int, tuple[tuple[int, int, int, int], ...]]:
        """``(y, x, flip code, lq holes)`` of a ``size`` patch of an ``hw`` image, drawn in the
        CPU path's order: crop corner, flips, lq degradations."""
        y, x = crop_origin(*hw, size, rng, path)
        hflip, vflip, transpose = flip_draws(self.use_hflip, self.use_rot, rng, self.option("aug_prob", knobs))
        lq_size = int(self.option("gt_size", knobs)) // self.scale
        holes = plan_lq_degradations((lq_size, lq_size, self.channels), rng, self.lq_jpeg, self.lq_dropout)[1]
        return y, x, hflip + 2 * vflip + 4 * transpose, tuple(holes)

    def _sample(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        gt, lq, gt_path, lq_path = self.load(index, rng)
        if rng is not None:
            lq = random_lq_degradations(lq, rng, self.lq_jpeg, self.lq_dropout)
        gt_t, lq_t = img2tensor(gt), img2tensor(lq)
        if rng is None:
            gt_t, lq_t = tensor_to_float(gt_t), tensor_to_float(lq_t)
        return {"lq": lq_t, "gt": gt_t, "lq_path": str(lq_path), "gt_path": str(gt_path)}

    def _error_note(self, index: int, err: Exception) -> str | None:
        paths = [str(self.gt_paths[index]), str(getattr(self, "lq_paths", self.gt_paths)[index])]
        paths = list(dict.fromkeys(paths))
        if any(p in str(err) for p in paths):
            return None
        return f"while making sample {index} of {type(self).__name__} from " + " and ".join(f"'{p}'" for p in paths)

    def _first_name(self) -> str:
        return str(self.gt_paths[0])


class SizeProbe:
    """``(height, width)`` of a dataset's images for the checks at build: from the headers, and
    for images without a readable one by decoding them, at most ``decode_limit`` of them
    (``unchecked`` counts the rest). None for an image that cannot be read: a training set
    skips it, with a warning, when it comes to read it."""

    def __init__(self, dataset: SRImageDatasetBase, decode_limit: int = SIZE_DECODE_LIMIT) -> None:
        self.dataset = dataset
        self.decodes_left = decode_limit
        self.unchecked = 0
        self._stack_shapes: dict[Path, tuple[int, ...]] = {}

    def __call__(self, path: Path) -> tuple[int, int] | None:
        size = self.dataset.header_size(path, self._stack_shapes)
        if size is not None:
            return size
        if self.decodes_left <= 0:
            self.unchecked += 1
            return None
        self.decodes_left -= 1
        try:
            return self.dataset.decoded_size(path)
        except ImageReadError:
            return None


def check_pair_sizes(gt_hw: tuple[int, ...], lq_hw: tuple[int, ...], scale: int, gt_path: Path,
                     lq_path: Path) -> None:
    """Raise unless gt is ``scale`` x lq, up to ``scale - 1`` extra pixels (cut by the mod-crop)."""
    (h_gt, w_gt), (h_lq, w_lq) = gt_hw[:2], lq_hw[:2]
    if h_gt // scale != h_lq or w_gt // scale != w_lq:
        raise ValueError(
            f"size mismatch at scale {scale}: gt '{gt_path}' is {h_gt}x{w_gt} (HxW) but lq "
            f"'{lq_path}' is {h_lq}x{w_lq}; gt should be {h_lq * scale}x{w_lq * scale} "
            f"(or up to {scale - 1} pixels larger before mod-crop)"
        )


def align_pair(gt: np.ndarray, lq: np.ndarray, scale: int, gt_path: Path, lq_path: Path) -> np.ndarray:
    """Mod-crop ``gt`` so its size is exactly ``scale`` x lq's; error if they cannot match."""
    check_pair_sizes(gt.shape, lq.shape, scale, gt_path, lq_path)
    return mod_crop(gt, scale)


def center_crop_pair(
    gt: np.ndarray, lq: np.ndarray | None, size: int, scale: int, gt_path: Path
) -> tuple[np.ndarray, np.ndarray | None]:
    """The centre ``size`` x ``size`` of ``gt`` and the matching ``size/scale`` square of ``lq``.

    ``gt`` is ``scale`` x lq's size (or, without lq, a multiple of ``scale``). The corner is
    chosen on the lq grid, ``((H/scale - size/scale) // 2, (W/scale - size/scale) // 2)``, and
    multiplied by ``scale`` for gt, so the two crops stay aligned.
    """
    lq_size = size // scale
    h_lq, w_lq = gt.shape[0] // scale, gt.shape[1] // scale
    if h_lq < lq_size or w_lq < lq_size:
        raise ValueError(f"image '{gt_path}' is {gt.shape[0]}x{gt.shape[1]} (HxW), smaller than "
                         f"center_crop {size}x{size}")
    y, x = (h_lq - lq_size) // 2, (w_lq - lq_size) // 2
    gt = gt[y * scale : y * scale + size, x * scale : x * scale + size]
    if lq is not None:
        lq = lq[y : y + lq_size, x : x + lq_size]
    return gt, lq


def pair_by_position(gt_paths: list[Path], lq_paths: list[Path], gt_root: str, lq_root: str) -> list[Path]:
    """Item i of the gt stack with item i of the lq stack (both dataroots are .npy files)."""
    if len(gt_paths) != len(lq_paths):
        raise ValueError(f"gt '{gt_root}' holds {len(gt_paths)} images but lq '{lq_root}' holds "
                         f"{len(lq_paths)}; two stack files pair item by item")
    return list(lq_paths)


def match_lq_files(
    gt_paths: list[Path],
    lq_paths: list[Path],
    filename_tmpl: str,
    scale: int,
    lq_root: str | Path,
    stem: Callable[[Path], str] = lambda p: p.stem,
) -> list[Path]:
    """For every gt file, the lq file named ``filename_tmpl.format(stem)`` or ``<stem>x<scale>``;
    ``stem`` names a path (an LMDB image goes by its key)."""
    by_stem: dict[str, list[Path]] = {}
    for p in lq_paths:
        by_stem.setdefault(stem(p), []).append(p)
    matched: list[Path] = []
    missing: list[str] = []
    for gt in gt_paths:
        candidates = dict.fromkeys([filename_tmpl.format(stem(gt)), f"{stem(gt)}x{scale}"])
        found = [p for c in candidates for p in by_stem.get(c, [])]
        if not found:
            missing.append(gt.name)
        elif len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise ValueError(f"gt '{gt}' matches several lq files in '{lq_root}': {names}")
        else:
            matched.append(found[0])
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise FileNotFoundError(
            f"{len(missing)} of {len(gt_paths)} gt images have no lq counterpart in '{lq_root}' "
            f"(looked for '{filename_tmpl}'.format(stem) and '<stem>x{scale}'): {shown}"
        )
    return matched


@DATASET_REGISTRY.register()
class PairedImageDataset(SRImageDatasetBase):
    """GT and LQ folders whose files pair up by name (a stack's item i is named ``<stem>_i``),
    or two stack files (4-D ``.npy``) whose items pair up by position.

    Training: a random scale-aligned ``gt_size`` patch plus flips/rotations, then the lq-only
    ``lq_jpeg`` / ``lq_dropout``. Validation/test: whole images, gt mod-cropped to exactly
    ``scale`` x lq, or their aligned ``center_crop``.
    With ``io_backend: {type: lmdb}`` both dataroots are BasicSR LMDB folders (``*.lmdb``); a gt
    key pairs with the lq key ``filename_tmpl.format(key)`` (the same key by default) or
    ``<key>x<scale>``, and every gt key needs one.
    Shared options (``channels``, ``value_scale``, ``indices``, ...): see datasets/README.md.

    Args:
        dataroot_lq: low-quality (LR) images, ``scale`` times smaller than their gt; the same kinds as
            ``dataroot_gt``.
        filename_tmpl: name of a gt stem's lq file, ``{}`` standing for the stem (e.g. ``{}_x4``);
            ``<stem>x<scale>`` is accepted as well.
        center_crop: validation/test only: cut each gt to its centre ``center_crop`` square (a multiple of
            ``scale``) and the lq to the aligned ``center_crop / scale`` square.
    """

    def __init__(
        self,
        dataroot_gt: str,
        dataroot_lq: str,
        scale: int = 4,
        phase: str = "train",
        gt_size: Scheduled | None = None,
        use_hflip: bool = True,
        use_rot: bool = True,
        aug_prob: Scheduled = 0.5,
        filename_tmpl: str = "{}",
        meta_info_file: str | None = None,
        channels: int = 3,
        value_scale: float | None = None,
        indices: list[int] | None = None,
        center_crop: int | None = None,
        lq_jpeg: JpegOptions | None = None,
        lq_dropout: DropoutOptions | None = None,
        io_backend: IoBackend | None = None,
        cache: CacheMode | None = None,
        split: SplitOptions | None = None,
    ) -> None:
        super().__init__(scale, phase, gt_size, use_hflip, use_rot, aug_prob, channels=channels,
                         value_scale=value_scale, center_crop=center_crop, lq_jpeg=lq_jpeg, lq_dropout=lq_dropout,
                         io_backend=io_backend, cache=cache, split=split)
        if "{}" not in filename_tmpl:
            raise ValueError(f"PairedImageDataset: filename_tmpl {filename_tmpl!r} must contain '{{}}'")
        self.dataroot_gt = dataroot_gt
        self.dataroot_lq = dataroot_lq
        self.filename_tmpl = filename_tmpl
        self.gt_paths = self._list(dataroot_gt, "dataroot_gt")
        lq_paths = self._list(dataroot_lq, "dataroot_lq")
        if self.io_backend == "disk" and _is_npy_file(dataroot_gt) and _is_npy_file(dataroot_lq):
            self.lq_paths = pair_by_position(self.gt_paths, lq_paths, dataroot_gt, dataroot_lq)
        else:
            self.lq_paths = match_lq_files(self.gt_paths, lq_paths, filename_tmpl, scale, dataroot_lq, self.stem)
        self._keep_indices(indices)
        self._filter_meta_info(meta_info_file)
        self._check_images()

    def _read_pair(self, index: int) -> tuple[np.ndarray, np.ndarray, Path, Path]:
        """Sample ``index``'s gt (mod-cropped to exactly ``scale`` x lq) and lq."""
        gt_path, lq_path = self.gt_paths[index], self.lq_paths[index]
        gt = self.read(gt_path)
        lq = self.read(lq_path)
        return align_pair(gt, lq, self.scale, gt_path, lq_path), lq, gt_path, lq_path

    def verify(self, index: int) -> None:
        gt, lq, gt_path, _ = self._read_pair(index)
        if self.center_crop is not None:
            center_crop_pair(gt, lq, self.center_crop, self.scale, gt_path)

    def patch_fit(self, index: int, probe: SizeProbe) -> tuple[int, str] | None:
        gt_path, lq_path = self.gt_paths[index], self.lq_paths[index]
        gt, lq = probe(gt_path), probe(lq_path)
        if gt is not None and lq is not None:
            check_pair_sizes(gt, lq, self.scale, gt_path, lq_path)
        if lq is not None:  # the gt patch is cut where the lq patch is, times scale
            kind, path, (h, w), largest = "lq", lq_path, lq, min(lq) * self.scale
        elif gt is not None:
            kind, path, (h, w), largest = "gt", gt_path, gt, min(gt) // self.scale * self.scale
        else:
            return None
        return largest, (f"{kind} '{path}' is {h}x{w} (HxW), which allows gt_size up to {largest} "
                         f"at scale {self.scale}")

    def load(self, index: int, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray, Path, Path]:
        gt, lq, gt_path, lq_path = self._read_pair(index)
        if rng is not None:
            gt, lq = paired_random_crop(gt, lq, int(self.option("gt_size")), self.scale, rng, gt_path)
            gt, lq = augment([gt, lq], self.use_hflip, self.use_rot, rng, self.option("aug_prob"))
        elif self.center_crop is not None:
            gt, lq = center_crop_pair(gt, lq, self.center_crop, self.scale, gt_path)
        return gt, lq, gt_path, lq_path

    def cache_read(self, index: int) -> tuple[np.ndarray, ...]:
        return self._read_pair(index)[:2]

    def plan_patch(self, index: int, rng: np.random.Generator, sizes: list[tuple[int, int]],
                   knobs: dict[str, Any]) -> PatchPlan:
        # as paired_random_crop: the corner is drawn on the lq grid, the gt's is scale times it
        lq_size = int(self.option("gt_size", knobs)) // self.scale
        y, x, code, holes = self._draw_patch(rng, sizes[1], lq_size, self.lq_paths[index], knobs)
        return PatchPlan(index, ((y * self.scale, x * self.scale), (y, x)), code, holes)


def _is_npy_file(path: str | Path) -> bool:
    return Path(path).is_file() and Path(path).suffix.lower() == ".npy"
