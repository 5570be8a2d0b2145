"""Multi-view PBR samples (NeuroPBR, issue 9): three rendered views in, four material maps out.

The layout is the one ``scripts/render_pbr_views.py`` writes (and the NeuroPBR training guide
describes)::

    input/clean/sample_0000/{0,1,2}.png      clean views
    input/dirty/sample_0000/{0,1,2}.png      degraded views (optional)
    input/render_metadata.json               {"sample_0000": "<output folder>", ...}
    output/<output folder>/{albedo,roughness,metallic,normal}.png

A sample is a dict whose ``lq`` holds the views stacked on the channel axis (view ``v`` in
channels ``3v .. 3v+2``) and whose ``gt`` holds the maps stacked in the order of
:data:`MAP_SLICES` (albedo 3, roughness 1, metallic 1, normal 3, the normal stored encoded as on
disk, ``n * 0.5 + 0.5``). Keeping the names ``lq`` and ``gt`` lets the shared collate,
prefetch and to-device code carry the samples unchanged: in training 8-bit files stay uint8
tensors (made float on the device), in validation/test they are float32 in [0, 1].
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from data.auto_split import SplitOptions, check_split, split_indices
from data.image_io import (
    IMAGE_EXTENSIONS,
    ChannelCountError,
    ImageReadError,
    fit_channels,
    header_size,
    img2tensor,
    read_image,
    tensor_to_float,
    to_float,
)
from data.paired_image_dataset import PHASES
from data.pbr_rendering import MAP_NAMES, transform_normals
from data.seeded_items import SeededItems
from utils.registry import DATASET_REGISTRY

logger = logging.getLogger("upforge")

#: where each map lies in a sample's ``gt`` (channel axis); the runner splits predictions the same way
MAP_SLICES: dict[str, slice] = {
    "albedo": slice(0, 3),
    "roughness": slice(3, 4),
    "metallic": slice(4, 5),
    "normal": slice(5, 8),
}
#: channels of a sample's ``gt``
MAP_CHANNELS = 8
#: channels of one view in a sample's ``lq``: view ``v`` is ``lq[3v : 3v + 3]``
VIEW_CHANNELS = 3
#: the sources each ``render_curriculum`` draws from, in the order a sample's entries are listed
CURRICULUM_SOURCES: dict[int, tuple[str, ...]] = {0: ("clean",), 1: ("clean", "dirty"), 2: ("dirty",)}
_CURRICULUM_TEXT = {0: "clean only", 1: "clean and dirty", 2: "dirty only"}
#: problems shown in one error message, at most
_SHOWN = 5


def view_slice(view: int) -> slice:
    """The channels of view ``view`` in a sample's ``lq``."""
    return slice(VIEW_CHANNELS * view, VIEW_CHANNELS * (view + 1))


@dataclass(frozen=True)
class PBRSample:
    """One entry of the dataset: a sample folder of one source and the output folder it maps to."""

    name: str  # sample_0000
    source: str  # clean or dirty
    folder: Path  # input/<source>/<name>
    material: str  # the metadata value: the output folder's name
    target: Path  # output/<material>
    views: tuple[Path, ...]
    maps: tuple[Path, ...]  # in the order of MAP_NAMES


def _shown(items: list[str]) -> str:
    return "; ".join(items[:_SHOWN]) + (f"; ... ({len(items)} in all)" if len(items) > _SHOWN else "")


def _find_image(folder: Path, stem: str) -> Path | None:
    """``<folder>/<stem>.png``, else the first ``<stem>.<ext>`` of another image extension; None if none."""
    for ext in (".png", *[e for e in IMAGE_EXTENSIONS if e != ".png"]):
        path = folder / f"{stem}{ext}"
        if path.is_file():
            return path
    return None


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    """``img`` (HWC) resized to ``size`` x ``size``: area averaging when shrinking, bilinear when growing."""
    if img.shape[:2] == (size, size):
        return img
    shrink = size < img.shape[0] or size < img.shape[1]
    out = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return out.reshape(size, size, img.shape[2])


def _peak(img: np.ndarray) -> float:
    """The value that stands for 1.0 in ``img``'s dtype (255, 65535, or 1 for float)."""
    return float(np.iinfo(img.dtype).max) if np.issubdtype(img.dtype, np.integer) else 1.0


def _from_float(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Values on ``like``'s scale (0 .. its peak) back in ``like``'s dtype (rounded for integers)."""
    if np.issubdtype(like.dtype, np.integer):
        return np.clip(np.round(values), 0, _peak(like)).astype(like.dtype)
    return values.astype(np.float32)


def resize_normal(encoded: np.ndarray, size: int) -> np.ndarray:
    """An encoded normal map (``n * 0.5 + 0.5`` on its dtype's scale) resized to ``size``², the
    vectors re-normalised after resizing (a zero vector becomes (0, 0, 1)); same dtype."""
    if encoded.shape[:2] == (size, size):
        return encoded
    peak = _peak(encoded)
    n = _resize(encoded.astype(np.float64) / peak * 2.0 - 1.0, size)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    n = np.where(norm > 1e-6, n / np.maximum(norm, 1e-12), np.array([0.0, 0.0, 1.0]))
    return _from_float((n * 0.5 + 0.5) * peak, encoded)


def move_pixels(img: np.ndarray, rotations: int, flip: bool) -> np.ndarray:
    """``img`` turned ``rotations`` x 90° counter-clockwise, then mirrored left-right if ``flip``
    (the pixels only; the order of :func:`data.pbr_rendering.rotate_flip`)."""
    img = np.rot90(img, rotations)
    return np.ascontiguousarray(img[:, ::-1] if flip else img)


def move_normal(encoded: np.ndarray, rotations: int, flip: bool) -> np.ndarray:
    """An encoded normal map moved as :func:`move_pixels` moves the other maps, its vectors turned
    with it (:func:`data.pbr_rendering.transform_normals`). The vectors are worked on centred
    (value - peak/2, proportional to n), so an 8-bit map stays exact: -n encodes as 255 - v."""
    half = _peak(encoded) / 2.0
    moved = transform_normals(encoded.astype(np.float64) - half, rotations, flip) + half
    return _from_float(moved, encoded)


@DATASET_REGISTRY.register()
class PBRMultiViewDataset(SeededItems):
    """Multi-view PBR samples: ``num_views`` rendered views of a material in, its albedo, roughness,
    metallic and normal maps out (the NeuroPBR layout that scripts/render_pbr_views.py writes).

    A sample: ``lq`` the views stacked on channels, (3·num_views, H, W); ``gt`` the maps stacked in the
    order albedo (3), roughness (1), metallic (1), normal (3, encoded ``n * 0.5 + 0.5`` as stored),
    (8, H, W) (see ``MAP_SLICES``); uint8 tensors in training for 8-bit files, float32 in [0, 1]
    otherwise; ``lq_path`` the sample folder, ``gt_path`` the output folder, ``source`` clean or dirty,
    ``material`` the metadata value. Items are indices, ``(index, seed)`` or ``(index, seed, knobs)``
    as the ResumableSampler yields (knobs are ignored: no option of this set changes during a run);
    a training sample's flips and rotations come from its seed. What is cheap is checked when the set
    is built (metadata, every file's presence, the image sizes from the PNG headers); a validation/test
    set reads every sample then. An unreadable training file is skipped with a warning when read.

    Args:
        dataroot_input: the ``input/`` folder: ``clean/sample_XXXX/{0,1,2}.png``, optionally
            ``dirty/sample_XXXX/...``, and ``render_metadata.json``.
        dataroot_output: the ``output/`` folder: one folder per material with ``albedo``, ``roughness``,
            ``metallic`` and ``normal`` images (``.png``, or another image extension).
        metadata_path: the JSON file mapping every sample folder to its output folder's name
            (``{"sample_0000": "wood_oak"}``); null: ``<dataroot_input>/render_metadata.json``.
        render_curriculum: which renders to use: 0 the clean ones only; 1 the mix on disk (a sample with
            clean and dirty views is listed once per source, one with a single source once); 2 the dirty
            ones only.
        image_size: resize every view and map to this square size (area averaging when shrinking,
            bilinear when growing; normals re-normalised); null: native size (views and maps of a sample
            must then be the same size, and in training all samples too).
        num_views: views per sample, read from ``0.png`` .. ``<num_views - 1>.png``.
        phase: ``train`` (uint8 samples, flips and rotations) or ``val`` / ``test`` (float32 samples, no
            augmentation; every sample is read at build).
        use_hflip: training: mirror a sample left-right with probability 1/2 (views and maps alike, the
            normals' x negated).
        use_rot: training: turn a sample by a random multiple of 90° (views and maps alike, the normal
            vectors turned with them); with ``use_hflip`` all 8 rotations and mirrors.
        split: ``{part: train | val | test, ratios: [train, val, test], seed: 0}``: keep one part of a
            deterministic split of the samples, by a hash of (seed, the sample's output folder name): a
            sample's clean and dirty renders, and samples sharing a material folder, always fall in the
            same part. NeuroPBR's ``val_ratio: 0.1`` with seed S is ``ratios: [0.9, 0.1, 0]``, ``seed: S``
            with ``part: train`` in the training set and ``part: val`` in the validation set.
    """

    item_noun = "samples"
    #: no option of this set changes during a run (the batch stream asks)
    live_options: tuple[str, ...] = ()

    def __init__(
        self,
        dataroot_input: str,
        dataroot_output: str,
        metadata_path: str | None = None,
        render_curriculum: Literal[0, 1, 2] = 0,
        image_size: int | None = None,
        num_views: int = 3,
        phase: Literal["train", "val", "test"] = "train",
        use_hflip: bool = True,
        use_rot: bool = True,
        split: SplitOptions | None = None,
    ) -> None:
        name = type(self).__name__
        if phase not in PHASES:
            raise ValueError(f"{name}: phase must be one of {', '.join(PHASES)}, got {phase!r}")
        if isinstance(render_curriculum, bool) or render_curriculum not in CURRICULUM_SOURCES:
            raise ValueError(f"{name}: render_curriculum must be 0 (clean only), 1 (the clean/dirty mix on disk) "
                             f"or 2 (dirty only), got {render_curriculum!r}")
        if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int)
                                       or image_size < 1):
            raise ValueError(f"{name}: image_size must be a positive whole number of pixels or null (native "
                             f"size), got {image_size!r}")
        if isinstance(num_views, bool) or not isinstance(num_views, int) or num_views < 1:
            raise ValueError(f"{name}: num_views must be a positive whole number, got {num_views!r}")
        self.split = check_split(split, f"{name}: split")
        self.phase = phase
        self.render_curriculum = int(render_curriculum)
        self.image_size = image_size
        self.num_views = num_views
        self.use_hflip = bool(use_hflip)
        self.use_rot = bool(use_rot)
        self.schedules: dict[str, Any] = {}
        self.dataroot_input = Path(self._check_folder(dataroot_input, "dataroot_input"))
        self.dataroot_output = Path(self._check_folder(dataroot_output, "dataroot_output"))
        self.metadata_path = Path(metadata_path) if metadata_path else self.dataroot_input / "render_metadata.json"
        self.metadata = self._read_metadata(self.metadata_path)
        self.samples: list[PBRSample] = self._list_samples()
        self._check_sizes_at_build()
        super().__init__()  # per process: each DataLoader worker keeps its own skip count and set
        if phase != "train":
            self._verify_all()

    # ----------------------------------------------------------- building

    def _check_folder(self, root: Any, option: str) -> Path:
        name = type(self).__name__
        if not isinstance(root, (str, Path)) or not str(root):
            raise ValueError(f"{name}: {option} must be a folder path, got {root!r}")
        path = Path(root)
        if not path.exists():
            raise FileNotFoundError(f"{name}: {option} '{path}' does not exist")
        if not path.is_dir():
            raise NotADirectoryError(f"{name}: {option} '{path}' is not a folder")
        return path

    def _read_metadata(self, path: Path) -> dict[str, str]:
        name = type(self).__name__
        if not path.is_file():
            raise FileNotFoundError(
                f"{name}: render_metadata.json not found: '{path}' does not exist. It maps every sample folder to "
                "its output folder, e.g. {\"sample_0000\": \"wood_oak\"}; scripts/render_pbr_views.py writes it "
                "with the renders. Create it (in dataroot_input), or point metadata_path at it")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{name}: cannot read the metadata '{path}': {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"{name}: the metadata '{path}' must be a JSON object "
                             f"{{\"sample_0000\": \"<output folder>\", ...}}, got {type(data).__name__}")
        bad = [f"{k!r}: {v!r}" for k, v in data.items() if not isinstance(v, str) or not v.strip()]
        if bad:
            raise ValueError(f"{name}: the metadata '{path}' must map each sample to an output folder's name "
                             f"(a plain string); these entries are not: {_shown(bad)}")
        return data

    def _list_samples(self) -> list[PBRSample]:
        name = type(self).__name__
        sources = CURRICULUM_SOURCES[self.render_curriculum]
        found: list[tuple[str, str, Path]] = []  # (sample name, source, folder)
        for source in sources:
            root = self.dataroot_input / source
            if root.is_dir():
                found += [(d.name, source, d) for d in root.iterdir() if d.is_dir() and d.name.startswith("sample_")]
        order = {s: i for i, s in enumerate(sources)}
        found.sort(key=lambda item: (item[0], order[item[1]]))
        if not found:
            folders = " and ".join(f"'{self.dataroot_input / s}'" for s in sources)
            state = "; ".join(f"'{self.dataroot_input / s}' " + ("holds no sample_* folders"
                                                                  if (self.dataroot_input / s).is_dir()
                                                                  else "does not exist") for s in sources)
            raise FileNotFoundError(
                f"{name}: No samples found for render_curriculum {self.render_curriculum} "
                f"({_CURRICULUM_TEXT[self.render_curriculum]}): the sample folders are read from {folders}, "
                f"but {state}. Render them (scripts/render_pbr_views.py; without --no-dirty for dirty views) "
                "or choose another render_curriculum")
        unlisted = sorted({str(folder) for sample, _, folder in found if sample not in self.metadata})
        if unlisted:
            raise ValueError(f"{name}: {len(unlisted)} sample folder(s) are not listed in the metadata "
                             f"'{self.metadata_path}' (it must map every sample_* folder to its output folder): "
                             f"{_shown(unlisted)}")
        if self.split is not None:
            keep = split_indices([self.metadata[sample] for sample, _, _ in found], self.split)
            if not keep:
                raise ValueError(f"{name}: split part {self.split['part']!r} holds none of the {len(found)} samples "
                                 f"(ratios {list(self.split['ratios'])}, seed {self.split['seed']}); use more "
                                 "samples or a larger ratio")
            found = [found[i] for i in keep]
        problems: list[str] = []
        samples: list[PBRSample] = []
        for sample, source, folder in found:
            material = self.metadata[sample]
            target = self.dataroot_output / material
            if not target.is_dir():
                problems.append(f"the metadata maps {sample} to '{material}', but the output folder '{target}' "
                                "does not exist")
                continue
            views, maps = [], []
            for v in range(self.num_views):
                path = _find_image(folder, str(v))
                if path is None:
                    problems.append(f"view '{folder / f'{v}.png'}' is missing")
                views.append(path)
            for key in MAP_NAMES:
                path = _find_image(target, key)
                if path is None:
                    problems.append(f"map '{target / f'{key}.png'}' is missing")
                maps.append(path)
            if all(p is not None for p in views + maps):
                samples.append(PBRSample(sample, source, folder, material, target, tuple(views), tuple(maps)))
        if problems:
            problems = list(dict.fromkeys(problems))  # a material folder shared by samples: once
            raise FileNotFoundError(f"{name}: {len(problems)} problem(s) with the files of the samples: "
                                    f"{_shown(problems)}")
        return samples

    def _size_problem(self, sample: PBRSample, sizes: list[tuple[int, int] | None]) -> str | None:
        """What is wrong with a sample's image sizes (views, then maps; None where unknown), or None."""
        views, maps = sizes[:self.num_views], sizes[self.num_views:]
        paths = (*sample.views, *sample.maps)
        known = [(p, s) for p, s in zip(paths[:self.num_views], views) if s is not None]
        for path, size in known[1:]:
            if size != known[0][1]:
                return (f"views of one sample differ in size: '{path}' is {size[0]}x{size[1]} (HxW) but "
                        f"'{known[0][0]}' is {known[0][1][0]}x{known[0][1][1]}")
        if self.image_size is not None:
            return None
        reference = known[0] if known else None
        for path, size in zip(sample.maps, maps):
            if size is None:
                continue
            if reference is None:
                reference = (path, size)
            elif size != reference[1]:
                return (f"map '{path}' is {size[0]}x{size[1]} (HxW) but '{reference[0]}' is "
                        f"{reference[1][0]}x{reference[1][1]}; views and maps must be the same size, or set "
                        "image_size to resize them all")
        return None

    def _check_sizes_at_build(self) -> None:
        """Sizes from the image headers (no decoding): views of a sample alike, maps as large as
        the views unless ``image_size``; in training without ``image_size`` every sample alike."""
        name = type(self).__name__
        problems: list[str] = []
        first: tuple[Path, tuple[int, int]] | None = None
        for sample in self.samples:
            sizes = [header_size(p) for p in (*sample.views, *sample.maps)]
            problem = self._size_problem(sample, sizes)
            if problem is not None:
                problems.append(problem)
                continue
            known = [(p, s) for p, s in zip(sample.views, sizes) if s is not None]
            if self.phase == "train" and self.image_size is None and known:
                if first is None:
                    first = known[0]
                elif known[0][1] != first[1]:
                    problems.append(f"training samples differ in size, so they cannot be batched: '{known[0][0]}' "
                                    f"is {known[0][1][0]}x{known[0][1][1]} (HxW) but '{first[0]}' is "
                                    f"{first[1][0]}x{first[1][1]}; set image_size to resize them all")
        if problems:
            raise ValueError(f"{name}: {len(problems)} sample(s) with images of the wrong size: {_shown(problems)}")

    def _verify_all(self) -> None:
        for index in range(len(self)):
            try:
                self._make(index, None)
            except Exception as err:
                err.add_note(f"{type(self).__name__} ({self.phase}): every sample of a {self.phase} set is read when "
                             "the dataset is built, so a bad one is found at start-up, not when it is used")
                raise

    # ----------------------------------------------------------- reading

    def __len__(self) -> int:
        return len(self.samples)

    def read_sample(self, index: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Sample ``index``'s views (HxWx3 each) and maps (albedo HxWx3, roughness and metallic
        HxWx1, normal HxWx3 encoded), resized to ``image_size`` if set: in training in their stored
        dtype (8-bit stays uint8), otherwise float32 in [0, 1]."""
        sample = self.samples[index]
        views = [fit_channels(read_image(p, keep_channels=True, as_float=False), 3, p,
                              setting="a view's channel count (RGB)", fix="save the views as RGB (or gray)")
                 for p in sample.views]
        maps = []
        for key, path in zip(MAP_NAMES, sample.maps):
            img = read_image(path, keep_channels=True, as_float=False)
            if key in ("roughness", "metallic"):
                img = np.ascontiguousarray(img[:, :, :1])  # gray; a gray map saved as RGB(A): its first channel
            elif key == "normal" and img.shape[2] not in (3, 4):
                raise ChannelCountError(f"image '{path}' has {img.shape[2]} channels but a normal map needs 3 "
                                        "(RGB = n * 0.5 + 0.5)")
            else:
                img = fit_channels(img, 3, path, setting=f"the {key} map's channel count (RGB)",
                                   fix=f"save the {key} map as RGB")
            maps.append(img[:, :, :3] if key == "normal" else img)
        problem = self._size_problem(sample, [img.shape[:2] for img in views + maps])
        if problem is not None:
            raise ValueError(f"{type(self).__name__}: {problem}")
        if self.phase != "train":  # float32 before resizing: a resized normal is not re-quantised
            views, maps = [to_float(v) for v in views], [to_float(m) for m in maps]
        if self.image_size is not None:
            views = [_resize(v, self.image_size) for v in views]
            maps = [resize_normal(m, self.image_size) if key == "normal" else _resize(m, self.image_size)
                    for key, m in zip(MAP_NAMES, maps)]
        return views, maps

    def draw_augmentation(self, rng: np.random.Generator) -> tuple[int, bool]:
        """``(rotations, flip)`` of a training sample: 90° turns (0-3, with ``use_rot``), then a
        left-right mirror (with ``use_hflip``), drawn from the sample's generator in that order."""
        rotations = int(rng.integers(4)) if self.use_rot else 0
        flip = bool(rng.integers(2)) if self.use_hflip else False
        return rotations, flip

    def _sample(self, index: int, rng: np.random.Generator | None) -> dict[str, Any]:
        sample = self.samples[index]
        views, maps = self.read_sample(index)
        if rng is not None:
            rotations, flip = self.draw_augmentation(rng)
            if rotations or flip:
                views = [move_pixels(v, rotations, flip) for v in views]
                maps = [move_normal(m, rotations, flip) if key == "normal" else move_pixels(m, rotations, flip)
                        for key, m in zip(MAP_NAMES, maps)]
        images = views + maps
        if len({img.dtype for img in images}) > 1 or images[0].dtype != np.uint8:
            images = [to_float(img) for img in images]  # 16-bit or float files: all on the [0, 1] scale
        lq = img2tensor(np.concatenate(images[:len(views)], axis=2))
        stacked = np.empty((*images[0].shape[:2], MAP_CHANNELS), dtype=images[0].dtype)
        for key, img in zip(MAP_NAMES, images[len(views):]):
            stacked[:, :, MAP_SLICES[key]] = img  # MAP_SLICES decides the layout
        gt = img2tensor(stacked)
        if rng is None:
            lq, gt = tensor_to_float(lq), tensor_to_float(gt)
        return {"lq": lq, "gt": gt, "lq_path": str(sample.folder), "gt_path": str(sample.target),
                "source": sample.source, "material": sample.material}

    def _error_note(self, index: int, err: Exception) -> str | None:
        """Names the sample's folders when the error names none of its files."""
        sample = self.samples[index]
        if any(str(p) in str(err) for p in (*sample.views, *sample.maps)):
            return None
        return f"while making sample {index} of {type(self).__name__} from '{sample.folder}' and '{sample.target}'"

    def _skip_warning(self, index: int, err: ImageReadError) -> str:
        sample = self.samples[index]
        return f"skipping unreadable training sample {sample.name} ({sample.source}): {err}"

    def _first_name(self) -> str:
        return str(self.samples[0].folder)
