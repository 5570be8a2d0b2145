"""data/pbr_rendering.py and scripts/render_pbr_views.py: shading against hand-computed Cook-Torrance
values, normal-map rotations against rotated height fields, determinism, the written layout and the
error messages. Real materials come from ../shared/data/pbr_ambientcg (read, or copied shrunk)."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from data import pbr_rendering as pr
from data.image_io import read_image
from scripts import render_pbr_views as rv
from tests.conftest import ROOT, SHARED, LogLines

AMBIENTCG = SHARED / "data" / "pbr_ambientcg"


def _flat(albedo_srgb, roughness: float, metallic: float, hw: tuple[int, int] = (4, 5)) -> pr.Material:
    h, w = hw
    return pr.Material("flat", np.broadcast_to(np.asarray(albedo_srgb, dtype=np.float64), (h, w, 3)).copy(),
                       np.full(hw, roughness), np.full(hw, metallic),
                       np.broadcast_to(np.array([0.0, 0.0, 1.0]), (h, w, 3)).copy())


# ------------------------------------------------------------------------ shading


def test_srgb_transfer() -> None:
    # ((0.5 + 0.055) / 1.055) ** 2.4 = 0.21404; the linear segment below 0.04045: x / 12.92
    assert pr.srgb_to_linear(np.array(0.5)) == pytest.approx(0.2140411, abs=1e-6)
    assert pr.srgb_to_linear(np.array(0.02)) == pytest.approx(0.02 / 12.92)
    x = np.linspace(0, 1, 101)
    np.testing.assert_allclose(pr.linear_to_srgb(pr.srgb_to_linear(x)), x, atol=1e-12)


def test_flat_dielectric_overhead_matches_closed_form() -> None:
    # n = l = v = h = (0, 0, 1): n·h = n·l = n·v = v·h = 1.
    # roughness 0.5 → alpha = 0.25, alpha² = 0.0625; D = alpha² / (π (1·(alpha² - 1) + 1)²) = 1 / (π alpha²)
    D = 1.0 / (math.pi * 0.0625)  # 5.092958
    # k = alpha / 2 = 0.125; G1(1) = 1 / (1·(1 - k) + k) = 1 → G = 1
    G = 1.0 / (0.875 + 0.125) * 1.0
    F = 0.04  # Schlick at v·h = 1 is F0; dielectric F0 = 0.04
    specular = D * G * F / (4 * 1 * 1)  # = 0.0509296, the same in every channel
    albedo = np.array([0.5, 0.25, 0.1])  # linear
    diffuse = (1 - F) * (1 - 0.0) * albedo / math.pi
    E = 2.0  # light intensity, white, n·l = 1
    expected = (diffuse + specular) * E * 1.0
    np.testing.assert_allclose(expected, [0.4074367, 0.2546479, 0.1629746], rtol=1e-6)  # the numbers, by hand

    light = pr.Light((0.0, 0.0, 1.0), (1.0, 1.0, 1.0), E)
    diff, spec = pr.cook_torrance(np.broadcast_to(albedo, (4, 5, 3)), np.full((4, 5), 0.5), np.zeros((4, 5)),
                                  np.broadcast_to([0.0, 0.0, 1.0], (4, 5, 3)), light)
    np.testing.assert_allclose(spec, specular * E, rtol=1e-9)
    np.testing.assert_allclose(diff + spec, np.broadcast_to(expected, (4, 5, 3)), rtol=1e-9)
    # through render_linear, from an sRGB-stored albedo: sRGB 0.5 is linear 0.2140411
    got = pr.render_linear(_flat([0.5, 0.5, 0.5], 0.5, 0.0), [light])
    np.testing.assert_allclose(got, (0.96 * 0.2140411 / math.pi + specular) * E, rtol=1e-6)


def test_flat_metal_overhead_matches_closed_form() -> None:
    # roughness 0.3 → alpha = 0.09, alpha² = 0.0081; D = 1 / (π · 0.0081) = 39.29751; G = 1
    D = 1.0 / (math.pi * 0.0081)
    albedo = np.array([0.9, 0.6, 0.3])  # linear; metal: F0 = albedo, no diffuse
    expected = D * 1.0 * albedo / 4.0 * 1.5  # light intensity 1.5
    np.testing.assert_allclose(expected, [13.263, 8.842, 4.421], rtol=1e-4)
    light = pr.Light((0.0, 0.0, 1.0), (1.0, 1.0, 1.0), 1.5)
    diff, spec = pr.cook_torrance(np.broadcast_to(albedo, (3, 3, 3)), np.full((3, 3), 0.3), np.ones((3, 3)),
                                  np.broadcast_to([0.0, 0.0, 1.0], (3, 3, 3)), light)
    np.testing.assert_allclose(diff, 0.0, atol=1e-12)
    np.testing.assert_allclose(spec, np.broadcast_to(expected, (3, 3, 3)), rtol=1e-9)
    # a coloured light multiplies channel by channel
    tinted = pr.Light((0.0, 0.0, 1.0), (1.2, 1.0, 0.5), 1.5)
    _, spec2 = pr.cook_torrance(np.broadcast_to(albedo, (3, 3, 3)), np.full((3, 3), 0.3), np.ones((3, 3)),
                                np.broadcast_to([0.0, 0.0, 1.0], (3, 3, 3)), tinted)
    np.testing.assert_allclose(spec2[0, 0], expected * [1.2, 1.0, 0.5], rtol=1e-9)


def _terms(theta_deg: float, roughness: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    t = math.radians(theta_deg)
    light = pr.Light((math.sin(t), 0.0, math.cos(t)), (1.0, 1.0, 1.0), 1.0)
    return pr.cook_torrance(np.full((2, 2, 3), 0.5), np.full((2, 2), roughness), np.zeros((2, 2)),
                            np.broadcast_to([0.0, 0.0, 1.0], (2, 2, 3)), light)


def test_tilted_light_cosine_falloff() -> None:
    # light 60° from the normal: n·l = cos 60° = 0.5; h is halfway, 30° off: v·h = n·h = cos 30° = 0.8660254
    fresnel60 = 0.04 + 0.96 * (1 - 0.8660254) ** 5  # 0.04 + 0.96 · 4.3163e-5 = 0.0400414
    assert abs(fresnel60 - 0.0400414) < 1e-7
    diff60, spec60 = _terms(60.0)
    np.testing.assert_allclose(diff60, (1 - fresnel60) * 0.5 / math.pi * 0.5, rtol=1e-6)
    # D at n·h = cos 30°: alpha² / (π (0.75 (alpha² - 1) + 1)²) = 0.0625 / (π · 0.296875²) = 0.2257289
    # G1(n·l = 0.5) = 0.5 / (0.5 · 0.875 + 0.125) = 0.8888889, G1(n·v = 1) = 1
    # specular × n·l = D G F / (4 n·v) = 0.2257289 · 0.8888889 · 0.0400414 / 4 = 0.0020085
    np.testing.assert_allclose(spec60, 0.2257289 * 0.8888889 * 0.0400414 / 4, rtol=1e-5)
    diff0, _ = _terms(0.0)
    for theta in (20.0, 45.0, 70.0, 85.0):
        t = math.radians(theta)
        vh = math.cos(t / 2)
        fresnel = 0.04 + 0.96 * (1 - vh) ** 5
        ratio = _terms(theta)[0] / diff0
        np.testing.assert_allclose(ratio, math.cos(t) * (1 - fresnel) / 0.96, rtol=1e-9)
    for theta in (95.0, 120.0):  # below the horizon: nothing
        diff, spec = _terms(theta)
        assert np.all(diff == 0) and np.all(spec == 0)


def test_rough_floor_and_ambient() -> None:
    # roughness 0 is shaded as MIN_ROUGHNESS (no infinite peak)
    _, spec0 = _terms(0.0, roughness=0.0)
    _, spec_min = _terms(0.0, roughness=pr.MIN_ROUGHNESS)
    np.testing.assert_allclose(spec0, spec_min)
    assert np.isfinite(spec0).all()
    # ambient only: ambient × (diffuse colour + F0); dielectric sRGB 0.5 → 0.2140411 + 0.04
    got = pr.render_linear(_flat([0.5] * 3, 0.5, 0.0), [], ambient=(0.1, 0.2, 0.1))
    np.testing.assert_allclose(got[0, 0], np.array([0.1, 0.2, 0.1]) * (0.2140411 + 0.04), rtol=1e-6)


# ------------------------------------------------------------------------ normals, rotations, flips


def _height() -> np.ndarray:
    rows, cols = np.mgrid[0:9, 0:13].astype(np.float64)
    return 0.3 * cols + 0.02 * rows**2 - 0.05 * rows + 0.01 * cols * rows


def test_normals_from_height_ramp() -> None:
    # z = 0.5 · col: rising to the right (+X) → the normal leans left: (-0.5, 0, 1) / |.|
    cols = np.tile(np.arange(6, dtype=np.float64), (5, 1))
    n = pr.normals_from_height(cols, strength=0.5)
    np.testing.assert_allclose(n, np.broadcast_to(np.array([-0.5, 0.0, 1.0]) / math.sqrt(1.25), n.shape))
    # z rising towards the top row (+Y, rows decrease) → the normal leans down (-Y)
    rows = np.tile(np.arange(5, dtype=np.float64)[::-1, None], (1, 6))
    n = pr.normals_from_height(rows, strength=1.0)
    np.testing.assert_allclose(n[2, 2], np.array([0.0, -1.0, 1.0]) / math.sqrt(2.0))


@pytest.mark.parametrize("rotations", [0, 1, 2, 3])
@pytest.mark.parametrize("flip", [False, True])
def test_rotate_flip_keeps_normals_consistent_with_height(rotations: int, flip: bool) -> None:
    height = _height()
    material = pr.Material("ramp", np.zeros((*height.shape, 3)), height / 10, np.zeros(height.shape),
                           pr.normals_from_height(height))
    moved = pr.rotate_flip(material, rotations, flip)
    moved_height = np.rot90(height, rotations)
    moved_height = moved_height[:, ::-1] if flip else moved_height
    np.testing.assert_allclose(moved.normal, pr.normals_from_height(moved_height), atol=1e-12)
    np.testing.assert_array_equal(moved.roughness, moved_height / 10)  # the other maps move like the pixels
    if rotations % 2 == 1 or flip:
        # moving the pixels without turning the vectors would break the match (the test can fail)
        pixels_only = np.rot90(material.normal, rotations)
        pixels_only = pixels_only[:, ::-1] if flip else pixels_only
        assert np.abs(pixels_only - pr.normals_from_height(moved_height)).max() > 0.1


def test_ambientcg_normalgl_convention_matches_displacement() -> None:
    """The NormalGL map of a real material agrees with the normals of its displacement map, before
    and after a rotation with a flip: the loader's +Y-up reading and the vector rotation are right."""
    folder = AMBIENTCG / "Ground054_1K-JPG"
    material = pr.load_material(folder, max_side=128)
    height = read_image(folder / "Ground054_1K-JPG_Displacement.jpg", keep_channels=True)[:, :, 0]
    height = cv2.resize(height, (128, 128), interpolation=cv2.INTER_AREA).astype(np.float64)

    def corr(n: np.ndarray, h: np.ndarray) -> tuple[float, float]:
        ref = pr.normals_from_height(h, strength=50.0)
        return tuple(float(np.corrcoef(n[..., c].ravel(), ref[..., c].ravel())[0, 1]) for c in (0, 1))

    assert min(corr(material.normal, height)) > 0.8
    moved = pr.rotate_flip(material, 1, True)
    assert min(corr(moved.normal, np.rot90(height, 1)[:, ::-1])) > 0.8
    assert material.defaults == ("metallic",)  # Ground054 has no Metalness map
    assert np.all(material.metallic == 0)


def test_augment_and_procedural_maps() -> None:
    rng = np.random.default_rng(3)
    material = pr.procedural_material(rng, 48, "p")
    for m in (material, pr.augment_material(material, rng, 24)[0]):
        assert m.albedo.shape[2] == 3 and m.albedo.min() >= 0 and m.albedo.max() <= 1
        assert 0 <= m.roughness.min() <= m.roughness.max() <= 1 and 0 <= m.metallic.min() <= m.metallic.max() <= 1
        np.testing.assert_allclose(np.linalg.norm(m.normal, axis=-1), 1.0, atol=1e-9)
        assert (m.normal[..., 2] > 0).all()
    again = pr.procedural_material(np.random.default_rng(3), 48, "p")
    np.testing.assert_array_equal(material.albedo, again.albedo)
    # smaller than the view: enlarged first; non-square: a square crop inside
    small = _flat([0.2, 0.4, 0.6], 0.5, 0.0, hw=(10, 20))
    out, info = pr.augment_material(small, np.random.default_rng(0), 16)
    assert out.albedo.shape == (16, 16, 3) and info["source_size"] == [16, 32]
    np.testing.assert_allclose(out.albedo, np.broadcast_to([0.2, 0.4, 0.6], (16, 16, 3)), atol=1e-9)


def test_quantised_maps_round_trip(tmp_path: Path) -> None:
    material = pr.quantize_material(pr.procedural_material(np.random.default_rng(1), 16, "q"))
    pr.save_maps(tmp_path / "q", material)
    back = pr.read_maps(tmp_path / "q")
    for key in ("albedo", "roughness", "metallic", "normal"):
        np.testing.assert_array_equal(getattr(back, key), getattr(material, key), err_msg=key)


def test_degradations() -> None:
    linear = np.full((16, 16, 3), 0.2)
    none = {"exposure_ev": 0.0, "vignette": 0.0, "blur_sigma": 0.0, "shot_noise": 0.0, "read_noise": 0.0,
            "jpeg_quality": 100}
    np.testing.assert_allclose(pr.degrade(linear, none, np.random.default_rng(0)), pr.clean_view(linear), atol=2 / 255)
    # one stop up doubles the linear value; vignetting darkens the corners by (1 - strength)
    brighter = pr.degrade(linear, {**none, "exposure_ev": 1.0}, np.random.default_rng(0))
    np.testing.assert_allclose(pr.srgb_to_linear(brighter), 0.4, atol=0.01)
    mask = pr.vignette_mask((64, 64), 0.4)
    assert mask[32, 32] > 0.99 and mask[0, 0] == pytest.approx(0.6, abs=0.02)
    noisy = pr.degrade(linear, {**none, "read_noise": 0.02}, np.random.default_rng(0))
    assert 0.01 < np.std(pr.srgb_to_linear(noisy)) < 0.04


# ------------------------------------------------------------------------ the command


def _run(argv: list[str]) -> tuple[int, list[str]]:
    """main(argv) with the log messages it wrote."""
    log, lines = logging.getLogger("upforge"), LogLines()
    code = None
    try:
        # main() sets the logger up (removing handlers), so attach after it starts: wrap setup_logger
        original = rv.setup_logger

        def setup() -> logging.Logger:
            logger = original()
            logger.addHandler(lines)
            return logger

        rv.setup_logger = setup
        code = rv.main(argv)
    finally:
        rv.setup_logger = original
        log.removeHandler(lines)
    return code, lines.lines


def _shrunk_material(src: Path, dst_root: Path, side: int) -> Path:
    """A copy of an ambientCG folder with the maps the renderer reads, shrunk so the longer side is ``side``."""
    dst = dst_root / src.name
    dst.mkdir(parents=True)
    for path in src.iterdir():
        if path.stem.split("_")[-1] in ("Color", "NormalGL", "Roughness", "Metalness"):
            img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            factor = side / max(img.shape[:2])
            small = cv2.resize(img, (round(img.shape[1] * factor), round(img.shape[0] * factor)),
                               interpolation=cv2.INTER_AREA)
            cv2.imwrite(str(dst / path.name), small, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return dst


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_cli_end_to_end(tmp_path: Path) -> None:
    materials = tmp_path / "materials"
    _shrunk_material(AMBIENTCG / "Bricks102_1K-JPG", materials, 96)  # 48 x 96: not square, no Metalness
    _shrunk_material(AMBIENTCG / "Metal049A_1K-JPG", materials, 64)
    out = tmp_path / "render"
    code, lines = _run(["--materials", str(materials), "--out", str(out), "--samples", "1", "--procedural", "1",
                        "--size", "32", "--seed", "7"])
    assert code == 0, lines
    metadata = json.loads((out / "input" / "render_metadata.json").read_text())
    assert metadata == {"sample_0000": "Bricks102_1K-JPG_000", "sample_0001": "Metal049A_1K-JPG_000",
                        "sample_0002": "procedural_000_000"}
    assert all(isinstance(v, str) for v in metadata.values())  # the seed's format: sample → folder name
    for kind in ("clean", "dirty"):
        assert sorted(p.name for p in (out / "input" / kind).iterdir()) == sorted(metadata)
    assert sorted(p.name for p in (out / "output").iterdir()) == sorted(metadata.values())
    params = json.loads((out / "input" / "render_params.json").read_text())
    assert params["settings"]["seed"] == 7 and params["settings"]["views"] == 3

    for sample, target in metadata.items():
        maps = out / "output" / target
        assert sorted(p.name for p in maps.iterdir()) == ["albedo.png", "metallic.png", "normal.png", "roughness.png"]
        shapes = {k: read_image(maps / f"{k}.png", keep_channels=True).shape for k in pr.MAP_NAMES}
        assert shapes == {"albedo": (32, 32, 3), "roughness": (32, 32, 1), "metallic": (32, 32, 1),
                          "normal": (32, 32, 3)}
        material = pr.read_maps(maps)
        encoded = read_image(maps / "normal.png") * 2 - 1
        np.testing.assert_allclose(np.linalg.norm(encoded, axis=-1), 1.0, atol=0.02)  # stored as n * 0.5 + 0.5
        clean = [read_image(out / "input" / "clean" / sample / f"{v}.png") for v in range(3)]
        dirty = [read_image(out / "input" / "dirty" / sample / f"{v}.png") for v in range(3)]
        assert all(img.shape == (32, 32, 3) for img in clean + dirty)
        # the clean views are a function of the saved maps and the recorded lights
        rerendered = pr.render_views(material, pr.lighting_from_params(params["samples"][sample]))
        for v in range(3):
            assert np.abs(clean[v] - rerendered[v]).max() <= 1 / 255 + 1e-6, (sample, v)
            assert np.abs(clean[v] - dirty[v]).mean() > 2 / 255, (sample, v)
        assert not np.array_equal(clean[0], clean[1])  # different lights per view
        assert params["samples"][sample]["maps"] == target
    metal = read_image(out / "output" / "Metal049A_1K-JPG_000" / "metallic.png", keep_channels=True)
    bricks = read_image(out / "output" / "Bricks102_1K-JPG_000" / "metallic.png", keep_channels=True)
    assert metal.mean() > 0.9 and bricks.max() == 0.0


def test_render_is_deterministic(tmp_path: Path) -> None:
    def render(name: str, seed: int, procedural: int = 1) -> dict[str, bytes]:
        rv.render_dataset(tmp_path / name, None, samples=2, procedural=procedural, seed=seed, size=24)
        return _files(tmp_path / name)

    first, second, other = render("a", 5), render("b", 5), render("c", 6)
    assert first == second
    assert first.keys() == other.keys()
    differing = [k for k in first if first[k] != other[k] and k.endswith(".png")]
    assert len(differing) == len([k for k in first if k.endswith(".png")])  # every image changes with the seed
    # adding a material does not change the samples of the others
    more = render("d", 5, procedural=2)
    assert all(more[k] == first[k] for k in first if not k.endswith(".json"))
    # the degradations draw after the lights: --no-dirty leaves the clean views as they were
    rv.render_dataset(tmp_path / "e", None, samples=2, procedural=1, seed=5, size=24, dirty=False)
    clean_only = _files(tmp_path / "e")
    assert not any("dirty" in k for k in clean_only)
    assert all(clean_only[k] == first[k] for k in clean_only if not k.endswith(".json"))


def test_bad_inputs(tmp_path: Path) -> None:
    code, lines = _run(["--materials", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), "--samples", "1"])
    assert code == 1 and any("materials folder" in line and "nowhere' does not exist" in line for line in lines)

    broken = tmp_path / "mats" / "Plaster"
    broken.mkdir(parents=True)
    (broken / "Plaster_Roughness.jpg").write_bytes(b"")
    (broken / "notes.txt").write_text("x")
    code, lines = _run(["--materials", str(tmp_path / "mats"), "--out", str(tmp_path / "o"), "--samples", "1"])
    assert code == 1
    assert any("'" + str(broken) + "' has no Color map" in line and "Plaster_Roughness.jpg, notes.txt" in line
               for line in lines), lines

    code, lines = _run(["--out", str(tmp_path / "o"), "--samples", "0", "--procedural", "1"])
    assert code == 1 and any("--samples must be >= 1" in line for line in lines)
    code, lines = _run(["--out", str(tmp_path / "o"), "--samples", "1"])
    assert code == 1 and any("nothing to render" in line for line in lines)
    empty = tmp_path / "empty"
    empty.mkdir()
    code, lines = _run(["--materials", str(empty), "--out", str(tmp_path / "o"), "--samples", "1"])
    assert code == 1 and any("holds no material folders" in line for line in lines)
    assert not (tmp_path / "o").exists()  # nothing written for a refused command

    args = ["--out", str(tmp_path / "o"), "--samples", "1", "--procedural", "1", "--size", "16"]
    assert _run(args)[0] == 0
    stale = tmp_path / "o" / "output" / "stale_material"
    stale.mkdir()
    code, lines = _run(args)
    assert code == 1 and any("already holds a render (input/, output/); pass --overwrite" in line for line in lines)
    assert stale.exists()
    assert _run([*args, "--overwrite"])[0] == 0
    assert not stale.exists()  # the old render is replaced, not mixed with the new one

    # as a script: a message, no traceback
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "render_pbr_views.py"), "--out",
                           str(tmp_path / "o2"), "--samples", "0", "--procedural", "1"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 1
    assert "--samples must be >= 1" in proc.stderr and "Traceback" not in proc.stderr
