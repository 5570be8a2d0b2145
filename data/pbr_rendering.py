"""Offline rendering of multi-view training data for PBR material estimation (NeuroPBR, seed 003).

No public multi-view PBR dataset exists offline, so this module makes one: from a material's maps
(albedo, roughness, metallic, normal) it renders three views of a flat patch under different
lights, the network's input, and keeps the maps themselves as the target.

Conventions used throughout:

* Maps are HWC float arrays. Albedo is stored sRGB-encoded (as texture files hold it) and turned
  linear for shading; roughness is perceptual roughness (alpha = roughness²); metallic is 0..1.
* Tangent space = world space: the patch lies in the XY plane, +X towards the right of the image
  (increasing column), +Y towards its top (decreasing row, OpenGL "NormalGL" convention), +Z out
  of the surface towards the camera. Normals are unit vectors in that frame.
* The camera is orthographic and looks down -Z, so the view vector is (0, 0, 1) everywhere;
  lights are directional (a direction towards the light, a colour, an intensity in irradiance
  units: a white light of intensity E on a white Lambert surface facing it gives radiance E/π).

Everything random takes a numpy ``Generator``: a render is a function of its seed (see
:func:`sample_rng`).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from data.degradations import jpeg_compress
from data.image_io import IMAGE_EXTENSIONS, read_image, write_image

# Below this the GGX lobe of a flat pixel is a near-delta whose peak (1 / (π α²)) only adds
# aliasing; real materials rarely go lower, and the common engines clamp similarly.
MIN_ROUGHNESS = 0.05
VIEW_DIR = np.array([0.0, 0.0, 1.0])
MAP_NAMES = ("albedo", "roughness", "metallic", "normal")
# The map suffixes of an ambientCG material (``<Name>_Color.jpg``, ...), lower-case, by role.
AMBIENTCG_SUFFIXES = {
    "albedo": ("_color",),
    "normal": ("_normalgl", "_normaldx", "_normal"),
    "roughness": ("_roughness",),
    "metallic": ("_metalness", "_metallic"),
}
_REC709_LUMA = np.array([0.2126, 0.7152, 0.0722])


# ---------------------------------------------------------------- colour


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """The sRGB transfer function inverted (IEC 61966-2-1): texture values → linear reflectance."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x <= 0.04045, x / 12.92, ((np.maximum(x, 0.04045) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """Linear values → sRGB-encoded ones (no clipping; clip before when writing 8-bit files)."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.maximum(x, 0.0031308) ** (1 / 2.4) - 0.055)


# ---------------------------------------------------------------- materials


@dataclass
class Material:
    """The four maps of a material, all of one size (see the module docstring for conventions)."""

    name: str
    albedo: np.ndarray  # HxWx3, sRGB-encoded, [0, 1]
    roughness: np.ndarray  # HxW, [0, 1]
    metallic: np.ndarray  # HxW, [0, 1]
    normal: np.ndarray  # HxWx3 unit vectors, OpenGL (+Y up)
    defaults: tuple[str, ...] = field(default=())  # maps that were missing and got a constant value

    @property
    def shape(self) -> tuple[int, int]:
        return self.albedo.shape[:2]


def material_files(folder: str | Path) -> dict[str, Path]:
    """The map files of an ambientCG-style folder by role (``albedo``, ``normal``, ...).

    Files are recognised by their name's ending (``<Name>_Color.jpg``, ``_NormalGL``, ``_Roughness``,
    ``_Metalness``; any image extension, any case). ``NormalGL`` wins over ``NormalDX``; other maps
    (AmbientOcclusion, Displacement, previews) are ignored.
    """
    folder = Path(folder)
    found: dict[str, Path] = {}
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    for role, suffixes in AMBIENTCG_SUFFIXES.items():
        for suffix in suffixes:  # in order of preference
            match = [p for p in images if p.stem.lower().endswith(suffix)]
            if match:
                found[role] = match[0]
                break
    return found


def check_material_folder(folder: str | Path) -> dict[str, Path]:
    """:func:`material_files`, or a ValueError naming the folder and its files when it has no Color map."""
    folder = Path(folder)
    files = material_files(folder)
    if "albedo" not in files:
        names = sorted(p.name for p in folder.iterdir())
        listing = ", ".join(names) if names else "nothing"
        raise ValueError(f"material folder '{folder}' has no Color map (a file named <Name>_Color.jpg/.png); "
                         f"it holds: {listing}")
    return files


def _gray(img: np.ndarray) -> np.ndarray:
    """HxW from an HxWxC map (a gray map saved as RGB has equal channels: their mean)."""
    return img[:, :, 0] if img.shape[2] == 1 else img[:, :, :3].mean(axis=2)


def _resize(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """``img`` resized to ``hw`` (area averaging when shrinking, bicubic when growing)."""
    if img.shape[:2] == tuple(hw):
        return img
    shrink = hw[0] < img.shape[0] or hw[1] < img.shape[1]
    out = cv2.resize(img, (hw[1], hw[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)
    return out.reshape(*hw, *img.shape[2:])


def _normalise(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def decode_normals(encoded: np.ndarray) -> np.ndarray:
    """Unit normals from a normal map's values in [0, 1] (n = 2v - 1, renormalised)."""
    n = _normalise(encoded.astype(np.float64) * 2.0 - 1.0)
    flat = np.linalg.norm(encoded * 2.0 - 1.0, axis=-1) < 1e-6  # a zero vector: treat as facing up
    n[flat] = (0.0, 0.0, 1.0)
    return n


def load_material(folder: str | Path, max_side: int | None = None) -> Material:
    """An ambientCG material folder as a :class:`Material` named after the folder.

    Metalness missing → metallic 0 (ambientCG ships it only for metals); normal missing → flat;
    roughness missing → 0.5. Missing maps are listed in ``defaults`` so the caller can say so.
    A ``NormalDX`` map (DirectX, +Y down) is flipped to the OpenGL convention. All maps take the
    Color map's size; ``max_side`` shrinks the material (area averaging) so its longer side is at
    most that many pixels, which keeps big (4K, 8K) materials cheap to crop.
    """
    folder = Path(folder)
    files = check_material_folder(folder)
    albedo = read_image(files["albedo"]).astype(np.float64)
    hw = albedo.shape[:2]
    if max_side is not None and max(hw) > max_side:
        factor = max_side / max(hw)
        hw = (max(1, round(hw[0] * factor)), max(1, round(hw[1] * factor)))
        albedo = _resize(albedo, hw)
    defaults = []
    if "normal" in files:
        normal = decode_normals(_resize(read_image(files["normal"]).astype(np.float64), hw))
        if files["normal"].stem.lower().endswith("_normaldx"):
            normal[:, :, 1] *= -1.0
    else:
        normal = np.broadcast_to(np.array([0.0, 0.0, 1.0]), (*hw, 3)).copy()
        defaults.append("normal")
    scalars = {}
    for role, constant in (("roughness", 0.5), ("metallic", 0.0)):
        if role in files:
            scalars[role] = _resize(_gray(read_image(files[role], keep_channels=True)).astype(np.float64), hw)
        else:
            scalars[role] = np.full(hw, constant)
            defaults.append(role)
    return Material(folder.name, albedo, scalars["roughness"], scalars["metallic"], normal, tuple(defaults))


def list_material_folders(root: str | Path) -> list[Path]:
    """The material folders under ``root``: its sub-folders, sorted; ``root`` itself when it holds a Color map."""
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"materials folder '{root}' does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"materials folder '{root}' is not a directory")
    if "albedo" in material_files(root):
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


# ---------------------------------------------------------------- procedural materials


def fractal_noise(rng: np.random.Generator, hw: tuple[int, int], cells: int = 4, octaves: int = 5,
                  persistence: float = 0.5) -> np.ndarray:
    """Smooth fractal value noise in [0, 1]: bicubically upsampled random grids, octave o with
    ``cells * 2**o`` cells across and weight ``persistence**o``."""
    out = np.zeros(hw)
    amplitude = 1.0
    for octave in range(octaves):
        n = cells * 2**octave
        if n > max(hw) // 2:
            break
        grid = rng.random((max(2, round(n * hw[0] / max(hw))) + 3, max(2, round(n * hw[1] / max(hw))) + 3))
        # upsample the grid with one cell of margin on each side, then cut it away: the borders
        # are as smooth as the inside
        gh, gw = grid.shape
        big = cv2.resize(grid, (hw[1] * gw // (gw - 2), hw[0] * gh // (gh - 2)), interpolation=cv2.INTER_CUBIC)
        y0, x0 = (big.shape[0] - hw[0]) // 2, (big.shape[1] - hw[1]) // 2
        out += amplitude * big[y0:y0 + hw[0], x0:x0 + hw[1]]
        amplitude *= persistence
    lo, hi = out.min(), out.max()
    return (out - lo) / (hi - lo) if hi > lo else np.full(hw, 0.5)


def normals_from_height(height: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Unit normals of the surface z = ``strength`` * height (height in pixels of the map).

    Central differences inside, one-sided at the borders (``np.gradient``). With +X = column and
    +Y = -row (the module's convention), n ∝ (-dz/dx, -dz/dy, 1) = (-s dh/dcol, +s dh/drow, 1).
    """
    d_row, d_col = np.gradient(np.asarray(height, dtype=np.float64))
    n = np.stack([-strength * d_col, strength * d_row, np.ones_like(d_col)], axis=-1)
    return _normalise(n)


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _random_colour(rng: np.random.Generator, lo: float, hi: float, saturation: float) -> np.ndarray:
    """An sRGB colour of brightness in [lo, hi] and at most ``saturation`` away from gray."""
    grey = rng.uniform(lo, hi)
    return np.clip(grey + rng.uniform(-saturation, saturation, 3) * grey, 0.02, 0.98)


PROCEDURAL_KINDS = ("stone", "tiles", "metal", "painted_metal")


def procedural_material(rng: np.random.Generator, size: int, name: str) -> Material:
    """A random material of ``size``² pixels from fractal noise: a patchy two-colour albedo,
    varying roughness, a metallic mask (none, all, or chipped paint over metal) and a bumpy height
    field (with tile grooves for the ``tiles`` kind) turned into normals.

    The kind is one of :data:`PROCEDURAL_KINDS`, drawn from ``rng`` like everything else; the
    bump strength is set so the steepest tenth of the surface leans 15-45°, whatever the size.
    """
    hw = (size, size)
    kind = PROCEDURAL_KINDS[int(rng.integers(len(PROCEDURAL_KINDS)))]
    mix = _smoothstep(0.35, 0.65, fractal_noise(rng, hw, cells=int(rng.integers(2, 6))))
    detail = fractal_noise(rng, hw, cells=int(rng.integers(8, 17)), octaves=4)
    height = 0.6 * fractal_noise(rng, hw, cells=int(rng.integers(3, 8))) + 0.4 * detail
    metallic = np.zeros(hw)
    if kind in ("metal", "painted_metal"):
        base = _random_colour(rng, 0.55, 0.95, 0.15)  # metals: bright, nearly neutral F0
        colour_a, colour_b = base, np.clip(base * rng.uniform(0.75, 0.95), 0.0, 1.0)
        roughness = rng.uniform(0.1, 0.5) + 0.25 * (detail - 0.5)
        metallic[:] = 1.0
    else:
        colour_a, colour_b = _random_colour(rng, 0.15, 0.8, 0.5), _random_colour(rng, 0.1, 0.7, 0.5)
        roughness = rng.uniform(0.45, 0.95) + 0.3 * (detail - 0.5)
    albedo = colour_a * (1.0 - mix[..., None]) + colour_b * mix[..., None]
    albedo = albedo * (0.9 + 0.2 * detail[..., None])
    if kind == "painted_metal":  # paint (dielectric, rough) with chips showing the metal below
        paint = _random_colour(rng, 0.2, 0.8, 0.6)
        chips = _smoothstep(0.55, 0.6, fractal_noise(rng, hw, cells=int(rng.integers(4, 9))))
        albedo = albedo * chips[..., None] + paint * (1.0 - chips[..., None])
        roughness = roughness * chips + rng.uniform(0.4, 0.8) * (1.0 - chips)
        metallic = chips
        height = height + 0.5 * (1.0 - chips)  # the paint layer stands above the chips
    if kind == "tiles":
        tiles = int(rng.integers(2, 6))
        period = size / tiles
        coords = np.arange(size) % period / period
        edge = np.minimum(coords, 1.0 - coords)  # 0 on the joints, 0.5 in the middle of a tile
        groove = _smoothstep(0.02, 0.06, np.minimum(edge[:, None], edge[None, :]))
        height = 0.3 * height + groove
        grout = _random_colour(rng, 0.3, 0.7, 0.1)
        albedo = albedo * groove[..., None] + grout * (1.0 - groove[..., None])
        roughness = roughness * groove + 0.9 * (1.0 - groove)
    slope = np.hypot(*np.gradient(height))
    steep = float(np.quantile(slope, 0.9))
    strength = math.tan(math.radians(rng.uniform(15.0, 45.0))) / steep if steep > 0 else 0.0
    return Material(name, np.clip(albedo, 0.0, 1.0), np.clip(roughness, MIN_ROUGHNESS, 1.0),
                    np.clip(metallic, 0.0, 1.0), normals_from_height(height, strength))


# ---------------------------------------------------------------- augmentation


def transform_normals(normal: np.ndarray, rotations: int, flip: bool) -> np.ndarray:
    """Rotate and flip a normal map as :func:`rotate_flip` moves its pixels: the pixels AND the
    vectors' x/y components, or the bumps would be lit from the wrong side.

    ``np.rot90`` turns the picture 90° counter-clockwise, which takes (x, y) to (-y, x) in the
    x-right, y-up frame; the left-right flip that follows negates x.
    """
    n = np.rot90(normal, rotations).copy()
    for _ in range(rotations % 4):
        n[..., 0], n[..., 1] = -n[..., 1].copy(), n[..., 0].copy()
    if flip:
        n = n[:, ::-1].copy()
        n[..., 0] *= -1.0
    return n


def rotate_flip(material: Material, rotations: int, flip: bool) -> Material:
    """The material turned ``rotations`` × 90° counter-clockwise, then mirrored left-right if ``flip``."""

    def move(img: np.ndarray) -> np.ndarray:
        img = np.rot90(img, rotations)
        return np.ascontiguousarray(img[:, ::-1] if flip else img)

    return replace(material, albedo=move(material.albedo), roughness=move(material.roughness),
                   metallic=move(material.metallic), normal=transform_normals(material.normal, rotations, flip))


def crop_resize(material: Material, top: int, left: int, side: int, size: int) -> Material:
    """The square ``side``² at (top, left), resized to ``size``² (normals renormalised after resizing)."""

    def cut(img: np.ndarray) -> np.ndarray:
        return _resize(np.ascontiguousarray(img[top:top + side, left:left + side]), (size, size))

    return replace(material, albedo=np.clip(cut(material.albedo), 0.0, 1.0),
                   roughness=np.clip(cut(material.roughness), 0.0, 1.0),
                   metallic=np.clip(cut(material.metallic), 0.0, 1.0), normal=_normalise(cut(material.normal)))


def augment_material(material: Material, rng: np.random.Generator, size: int,
                     max_zoom: float = 2.0) -> tuple[Material, dict[str, Any]]:
    """A random square view of the material at ``size``², and what was done (for the record).

    A square of side ``size * U(1, max_zoom)`` (at most the map's shorter side) is cut at a random
    place and resized to ``size`` (so each sample sees the texture at its own scale), then turned by
    a random multiple of 90° and mirrored with probability 1/2. A material smaller than ``size`` is
    first enlarged (bicubic) so its shorter side is ``size``.
    """
    h, w = material.shape
    if min(h, w) < size:
        factor = size / min(h, w)
        hw = (max(size, round(h * factor)), max(size, round(w * factor)))
        material = replace(material, albedo=np.clip(_resize(material.albedo, hw), 0, 1),
                           roughness=np.clip(_resize(material.roughness, hw), 0, 1),
                           metallic=np.clip(_resize(material.metallic, hw), 0, 1),
                           normal=_normalise(_resize(material.normal, hw)))
        h, w = hw
    side = min(h, w, max(size, round(size * rng.uniform(1.0, max(1.0, max_zoom)))))
    top, left = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    rotations, flip = int(rng.integers(4)), bool(rng.integers(2))
    out = rotate_flip(crop_resize(material, top, left, side, size), rotations, flip)
    return out, {"crop": [top, left, side], "source_size": [h, w], "rotations": rotations, "flip": flip}


# ---------------------------------------------------------------- 8-bit maps (what is saved)


def encode_maps(material: Material) -> dict[str, np.ndarray]:
    """The four maps as the uint8 images that are saved: albedo RGB (sRGB), roughness and
    metallic gray, normal RGB = round((n * 0.5 + 0.5) * 255)."""

    def u8(x: np.ndarray) -> np.ndarray:
        return np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)

    return {"albedo": u8(material.albedo), "roughness": u8(material.roughness),
            "metallic": u8(material.metallic), "normal": u8(material.normal * 0.5 + 0.5)}


def decode_maps(name: str, maps: dict[str, np.ndarray]) -> Material:
    """:func:`encode_maps` inverted (normals renormalised): the material a reader of the files sees."""

    def f(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float64) / 255.0

    return Material(name, f(maps["albedo"]), f(maps["roughness"]), f(maps["metallic"]),
                    decode_normals(f(maps["normal"])))


def quantize_material(material: Material) -> Material:
    """The material as its saved 8-bit files hold it, so renders match the saved targets exactly."""
    return replace(decode_maps(material.name, encode_maps(material)), defaults=material.defaults)


def save_maps(folder: str | Path, material: Material) -> None:
    """Write ``{albedo,roughness,metallic,normal}.png`` into ``folder`` (8-bit, see :func:`encode_maps`)."""
    folder = Path(folder)
    for key, img in encode_maps(material).items():
        write_image(folder / f"{key}.png", img.astype(np.float64) / 255.0)


def read_maps(folder: str | Path) -> Material:
    """The maps :func:`save_maps` wrote, as a Material named after the folder."""
    folder = Path(folder)
    maps = {key: read_image(folder / f"{key}.png", keep_channels=True, as_float=False) for key in MAP_NAMES}
    maps["roughness"], maps["metallic"] = maps["roughness"][:, :, 0], maps["metallic"][:, :, 0]
    return decode_maps(folder.name, maps)


# ---------------------------------------------------------------- shading


@dataclass(frozen=True)
class Light:
    """A directional light: ``direction`` towards the light (normalised here), linear RGB ``colour``
    (luminance 1 for the sampled ones) and ``intensity`` (irradiance on a surface facing it)."""

    direction: tuple[float, float, float]
    colour: tuple[float, float, float] = (1.0, 1.0, 1.0)
    intensity: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"direction": list(self.direction), "colour": list(self.colour), "intensity": self.intensity}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Light:
        return cls(tuple(d["direction"]), tuple(d["colour"]), float(d["intensity"]))


def cook_torrance(albedo_linear: np.ndarray, roughness: np.ndarray, metallic: np.ndarray, normal: np.ndarray,
                  light: Light) -> tuple[np.ndarray, np.ndarray]:
    """Diffuse and specular radiance (HxWx3 each, linear) that one light reflects to the camera.

    Metallic workflow, per pixel, with n the normal, l the light direction, v = (0, 0, 1), h = (l+v)/|l+v|:

    * alpha = max(roughness, MIN_ROUGHNESS)²
    * D = alpha² / (π ((n·h)² (alpha² - 1) + 1)²)                (GGX / Trowbridge-Reitz)
    * G = G1(n·l) G1(n·v), G1(x) = x / (x (1 - k) + k), k = alpha/2 (Smith-Schlick-GGX; the
      Schlick fit of Smith-GGX, k = alpha/2 as in Karis 2013, not the (r+1)²/8 "hotness" remap)
    * F = F0 + (1 - F0)(1 - v·h)^5, F0 = lerp(0.04, albedo, metallic)   (Schlick)
    * specular = D G F / (4 (n·l)(n·v)), diffuse = (1 - F)(1 - metallic) albedo / π
    * radiance = brdf × colour × intensity × max(n·l, 0)

    Pixels whose normal faces away from the light get nothing (no shadows between pixels).
    """
    direction = np.asarray(light.direction, dtype=np.float64)
    direction = direction / np.linalg.norm(direction)
    albedo = np.asarray(albedo_linear, dtype=np.float64)
    rough = np.maximum(np.asarray(roughness, dtype=np.float64), MIN_ROUGHNESS)[..., None]
    metal = np.asarray(metallic, dtype=np.float64)[..., None]
    n = np.asarray(normal, dtype=np.float64)
    half = (direction + VIEW_DIR) / np.linalg.norm(direction + VIEW_DIR)
    n_dot_l = np.clip(n @ direction, 0.0, 1.0)[..., None]
    n_dot_v = np.clip(n @ VIEW_DIR, 1e-4, 1.0)[..., None]
    n_dot_h = np.clip(n @ half, 0.0, 1.0)[..., None]
    v_dot_h = float(np.clip(VIEW_DIR @ half, 0.0, 1.0))

    alpha = rough * rough
    a2 = alpha * alpha
    D = a2 / (math.pi * (n_dot_h * n_dot_h * (a2 - 1.0) + 1.0) ** 2)
    k = alpha / 2.0
    G = (n_dot_l / (n_dot_l * (1.0 - k) + k)) * (n_dot_v / (n_dot_v * (1.0 - k) + k))
    f0 = 0.04 * (1.0 - metal) + albedo * metal
    F = f0 + (1.0 - f0) * (1.0 - v_dot_h) ** 5
    radiance = np.asarray(light.colour, dtype=np.float64) * float(light.intensity)
    # specular × n·l = D G F / (4 n·v); the n·l of the BRDF's denominator cancels the cosine
    specular = D * G * F / (4.0 * n_dot_v) * (n_dot_l > 0) * radiance
    diffuse = (1.0 - F) * (1.0 - metal) * albedo / math.pi * n_dot_l * radiance
    return diffuse, specular


def render_linear(material: Material, lights: Sequence[Light], ambient: Sequence[float] = (0.0, 0.0, 0.0),
                  ) -> np.ndarray:
    """Linear radiance (HxWx3) of the material under ``lights`` plus a uniform ``ambient`` radiance.

    The ambient term is an approximation, not an integral: ambient × (diffuse colour + F0), i.e. what a
    uniform environment reflects ignoring the Fresnel rise at grazing angles and roughness losses;
    it keeps faces turned away from every light from going black.
    """
    albedo = srgb_to_linear(material.albedo)
    out = np.zeros(albedo.shape)
    for light in lights:
        diffuse, specular = cook_torrance(albedo, material.roughness, material.metallic, material.normal, light)
        out += diffuse + specular
    ambient = np.asarray(ambient, dtype=np.float64)
    if np.any(ambient):
        metal = material.metallic[..., None]
        out += ambient * (albedo * (1.0 - metal) + 0.04 * (1.0 - metal) + albedo * metal)
    return out


def clean_view(linear: np.ndarray) -> np.ndarray:
    """Linear radiance → sRGB in [0, 1], clipped: a clean view as it is saved (before 8-bit rounding)."""
    return linear_to_srgb(np.clip(linear, 0.0, 1.0))


# ---------------------------------------------------------------- random lights and views


def _light_colour(rng: np.random.Generator) -> tuple[float, float, float]:
    """A light tint between warm and cool white, with a slight green/magenta shift, luminance 1."""
    warmth, tint = rng.uniform(-1.0, 1.0), rng.uniform(-0.05, 0.05)
    rgb = np.array([1.0 + 0.25 * warmth, 1.0 + tint, 1.0 - 0.25 * warmth])
    rgb = rgb / float(rgb @ _REC709_LUMA)
    return tuple(float(c) for c in rgb)


def _direction(azimuth: float, elevation: float) -> tuple[float, float, float]:
    """Unit vector at ``azimuth`` (radians from +X towards +Y) and ``elevation`` (radians above the surface)."""
    ce = math.cos(elevation)
    return (ce * math.cos(azimuth), ce * math.sin(azimuth), math.sin(elevation))


def sample_view_lighting(rng: np.random.Generator, views: int = 3) -> list[dict[str, Any]]:
    """Lights for each view: a key light whose azimuth steps 360°/views from view to view (±17°) at
    25-75° elevation, intensity 2-3.5; half the time a fill light (anywhere, 15-60°, intensity
    0.3-1); a dim ambient (0.02-0.12). Each light has its own tint. The spread of key lights is what
    lets a model separate albedo from shading (photometric-stereo-like cues)."""
    base = rng.uniform(0.0, 2.0 * math.pi)
    out = []
    for view in range(views):
        azimuth = base + 2.0 * math.pi * view / views + rng.uniform(-0.3, 0.3)
        lights = [Light(_direction(azimuth, math.radians(rng.uniform(25.0, 75.0))), _light_colour(rng),
                        float(rng.uniform(2.0, 3.5)))]
        if rng.random() < 0.5:
            lights.append(Light(_direction(rng.uniform(0.0, 2.0 * math.pi), math.radians(rng.uniform(15.0, 60.0))),
                                _light_colour(rng), float(rng.uniform(0.3, 1.0))))
        ambient = float(rng.uniform(0.02, 0.12)) * np.array(_light_colour(rng))
        out.append({"lights": lights, "ambient": [float(a) for a in ambient]})
    return out


# ---------------------------------------------------------------- "dirty" views


def sample_degradations(rng: np.random.Generator, views: int = 3) -> list[dict[str, float]]:
    """Parameters of the camera degradations per view. Vignetting and blur belong to the lens, so
    one value serves all views of a sample; exposure, noise and JPEG quality change per shot."""
    vignette = float(rng.uniform(0.0, 0.4))
    blur_sigma = float(rng.uniform(0.0, 1.2))
    out = []
    for _ in range(views):
        out.append({
            "exposure_ev": float(rng.uniform(-0.6, 0.6)),
            "vignette": vignette,
            "blur_sigma": blur_sigma,
            "shot_noise": float(rng.uniform(1e-4, 2e-3)),
            "read_noise": float(rng.uniform(1e-3, 1e-2)),
            "jpeg_quality": int(rng.integers(40, 91)),
        })
    return out


def vignette_mask(hw: tuple[int, int], strength: float) -> np.ndarray:
    """1 - strength * rho², rho the distance from the centre scaled to 1 in the corners."""
    y = (np.arange(hw[0]) + 0.5) / hw[0] * 2.0 - 1.0
    x = (np.arange(hw[1]) + 0.5) / hw[1] * 2.0 - 1.0
    rho2 = (y[:, None] ** 2 + x[None, :] ** 2) / 2.0
    return 1.0 - strength * rho2


def degrade(linear: np.ndarray, params: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """A "dirty" sRGB view (HxWx3 in [0, 1]) from linear radiance, in the order a camera applies them:
    exposure (× 2^ev), vignetting, lens blur (Gaussian), sensor noise (Gaussian with variance
    shot × signal + read², the usual Poisson-Gaussian fit), clipping, sRGB encoding, JPEG."""
    img = linear * 2.0 ** params["exposure_ev"]
    img = img * vignette_mask(img.shape[:2], params["vignette"])[..., None]
    if params["blur_sigma"] > 0.05:
        img = cv2.GaussianBlur(img, (0, 0), params["blur_sigma"], borderType=cv2.BORDER_REFLECT)
    sigma = np.sqrt(params["shot_noise"] * np.clip(img, 0.0, None) + params["read_noise"] ** 2)
    img = img + sigma * rng.standard_normal(img.shape)
    srgb = linear_to_srgb(np.clip(img, 0.0, 1.0))
    return jpeg_compress(srgb.astype(np.float32), int(params["jpeg_quality"])).astype(np.float64)


# ---------------------------------------------------------------- one sample


def sample_rng(seed: int, material_name: str, index: int) -> np.random.Generator:
    """The generator of sample ``index`` of a material: seeded by (seed, CRC-32 of the name, index),
    so a sample does not change when other materials are added or removed."""
    return np.random.default_rng([int(seed), zlib.crc32(material_name.encode("utf-8")), int(index)])


@dataclass
class RenderedSample:
    """The maps (as saved), the clean and dirty views (sRGB in [0, 1]) and the parameters used."""

    maps: Material
    clean: list[np.ndarray]
    dirty: list[np.ndarray]
    params: dict[str, Any]


def render_views(material: Material, lighting: Sequence[dict[str, Any]]) -> list[np.ndarray]:
    """The clean sRGB views of ``material`` under each view's lights and ambient."""
    return [clean_view(render_linear(material, view["lights"], view["ambient"])) for view in lighting]


def render_sample(material: Material, rng: np.random.Generator, size: int, views: int = 3, dirty: bool = True,
                  max_zoom: float = 2.0) -> RenderedSample:
    """One training sample: augment the material, quantise its maps to the saved 8-bit values,
    render ``views`` clean views under fresh lights and, if ``dirty``, degraded copies of them.
    Draws from ``rng`` in a fixed order, so equal generators give equal samples."""
    maps, augmentation = augment_material(material, rng, size, max_zoom)
    maps = quantize_material(maps)
    lighting = sample_view_lighting(rng, views)
    linear = [render_linear(maps, view["lights"], view["ambient"]) for view in lighting]
    clean = [clean_view(x) for x in linear]
    degradations = sample_degradations(rng, views) if dirty else []
    dirty_views = [degrade(x, p, rng) for x, p in zip(linear, degradations)]
    params = {
        "augmentation": augmentation,
        "views": [{"lights": [light.to_dict() for light in view["lights"]], "ambient": view["ambient"],
                   **({"degradation": degradations[i]} if dirty else {})} for i, view in enumerate(lighting)],
    }
    return RenderedSample(maps, clean, dirty_views, params)


def lighting_from_params(params: dict[str, Any]) -> list[dict[str, Any]]:
    """The per-view lighting of a sample's recorded ``params`` (as :func:`render_views` takes it)."""
    return [{"lights": [Light.from_dict(d) for d in view["lights"]], "ambient": view["ambient"]}
            for view in params["views"]]
