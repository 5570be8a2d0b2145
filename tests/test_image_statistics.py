"""Image complexity statistics against hand-computed values, on real data, and the scoring script."""

from __future__ import annotations

import csv
import math
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, SHARED, write_png

from data.image_io import list_images, read_image
from scripts.score_complexity import main as score_main
from utils.image_statistics import (
    REFERENCE_SCALES,
    colour_variation,
    complexity_score,
    edge_density,
    gradient_magnitude,
    image_statistics,
    local_variance,
    luma,
    sample_statistics,
    texture_variance,
)

DIV2K = SHARED / "data" / "DIV2K_valid_256crop" / "HR"
TINY_TOWN = SHARED / "data" / "pixelart" / "kenney_tiny-town" / "Tiles"


def _grey(value: float, h: int = 24, w: int = 32) -> np.ndarray:
    return np.full((h, w, 3), value, dtype=np.float32)


def _vertical_step(left: float, right: float, col: int, h: int = 12, w: int = 20) -> np.ndarray:
    img = _grey(left, h, w)
    img[:, col:] = right
    return img


# ---- hand-computed values -----------------------------------------------------------------------


def test_constant_images_score_zero():
    grey = _grey(0.5)
    assert texture_variance(grey) == 0.0
    assert edge_density(grey) == 0.0
    assert colour_variation(grey) == 0.0
    assert image_statistics(grey) == {"texture_variance": 0.0, "edge_density": 0.0, "colour_variation": 0.0}
    assert complexity_score(image_statistics(grey)) == 0.0
    red = np.zeros((24, 32, 3), np.float32)
    red[..., 0] = 1.0
    assert texture_variance(red) == 0.0
    assert edge_density(red) == 0.0


def test_colour_variation_of_red_grey_and_a_mixed_image():
    # Pure red (1, 0, 0): mean 1/3, deviations (2/3, -1/3, -1/3), variance (4 + 1 + 1) / 27 = 2/9.
    red = np.zeros((8, 8, 3), np.float32)
    red[..., 0] = 1.0
    assert colour_variation(red) == pytest.approx(math.sqrt(2) / 3, abs=1e-7)
    assert colour_variation(_grey(0.3, 8, 8)) == 0.0
    # Half red, half grey: the per-pixel values average to sqrt(2)/6.
    half = _grey(0.7, 8, 8)
    half[:, :4] = red[:, :4]
    assert colour_variation(half) == pytest.approx(math.sqrt(2) / 6, abs=1e-7)
    # (0.2, 0.4, 0.6): deviations (-0.2, 0, 0.2), variance 0.08 / 3.
    ramp = np.broadcast_to(np.array([0.2, 0.4, 0.6], np.float32), (4, 4, 3))
    assert colour_variation(ramp) == pytest.approx(math.sqrt(0.08 / 3), abs=1e-7)


def test_vertical_step_edge_density_counted_by_hand():
    # 12x20 grey image, 0.2 in columns 0-7 and 0.7 from column 8. With Sobel / 8 only columns 7
    # and 8 see the step (their horizontal neighbours differ by 0.5 on all three kernel rows:
    # gx = (1 + 2 + 1) * 0.5 / 8 = 0.25); every other column, and gy everywhere, is 0 (the border is
    # replicated, so rows 0 and 11 are no different). 2 columns x 12 rows = 24 of 240 pixels.
    img = _vertical_step(0.2, 0.7, col=8)
    magnitude = gradient_magnitude(luma(img))
    assert np.allclose(magnitude[:, [7, 8]], 0.25)
    assert np.count_nonzero(magnitude > 1e-9) == 24
    assert edge_density(img) == pytest.approx(24 / 240)
    assert edge_density(img, threshold=0.2) == pytest.approx(24 / 240)
    assert edge_density(img, threshold=0.3) == 0.0
    # A step of 0.08 gives 0.04 < 0.05: no edge at the default threshold.
    assert edge_density(_vertical_step(0.5, 0.58, col=8)) == 0.0
    # Convention check: a unit step gives 0.5, a ramp of slope s per pixel gives s.
    assert gradient_magnitude(luma(_vertical_step(0.0, 1.0, col=5)))[3, 5] == pytest.approx(0.5)
    ramp = np.broadcast_to((0.03 * np.arange(20, dtype=np.float32))[None, :, None], (12, 20, 3))
    assert gradient_magnitude(luma(ramp))[5, 10] == pytest.approx(0.03, abs=1e-6)


def test_edges_are_measured_on_bt601_luma():
    # Black | pure blue: Y step 0.114, magnitude 0.057 (> 0.05, < 0.06). Black | pure red: 0.1495.
    blue = np.zeros((10, 10, 3), np.float32)
    blue[:, 5:, 2] = 1.0
    assert gradient_magnitude(luma(blue))[4, 5] == pytest.approx(0.114 / 2)
    assert edge_density(blue) == pytest.approx(20 / 100)
    assert edge_density(blue, threshold=0.06) == 0.0
    red = np.zeros((10, 10, 3), np.float32)
    red[:, 5:, 0] = 1.0
    assert edge_density(red, threshold=0.14) == pytest.approx(20 / 100)


def test_checkerboard_texture_variance_equals_hand_computed_box_variance():
    # 1-pixel checkerboard of 0.25 / 0.75 (exact in float32): every 7x7 window holds 25 of one
    # value and 24 of the other, so its variance is p (1 - p) (0.75 - 0.25)^2 with p = 25/49,
    # i.e. 600/2401 * 0.25 = 0.062474...
    expected = 25 * 24 / 49**2 * 0.5**2
    yy, xx = np.mgrid[0:21, 0:23]
    board = np.where((yy + xx) % 2 == 0, 0.25, 0.75).astype(np.float32)
    img = np.repeat(board[..., None], 3, axis=2)
    var = local_variance(luma(img))
    assert np.allclose(var[3:-3, 3:-3], expected, rtol=0, atol=1e-12)
    # Reflect-101 borders mirror about the edge pixel, which keeps the checkerboard's parity,
    # so the border windows also hold 25/24 and the image mean equals the interior value.
    assert texture_variance(img) == pytest.approx(expected, abs=1e-12)


def test_local_variance_matches_numpy_window_variance_on_random_data():
    rng = np.random.default_rng(5)
    y = rng.random((15, 17))
    var = local_variance(y)
    for r, c in [(3, 3), (7, 9), (11, 13)]:
        assert var[r, c] == pytest.approx(np.var(y[r - 3 : r + 4, c - 3 : c + 4]), abs=1e-12)


def test_complexity_score_formula():
    stats = {"texture_variance": 0.005, "edge_density": 0.2, "colour_variation": 0.24}
    expected = (0.005 / REFERENCE_SCALES["texture_variance"] + 0.2 / REFERENCE_SCALES["edge_density"] + 1.0) / 3
    assert complexity_score(stats) == pytest.approx(expected)
    assert complexity_score({"texture_variance": 0.005, "edge_density": 0.2, "colour_variation": 0.24}) == (
        pytest.approx((0.5 + 0.5 + 1.0) / 3)
    )
    assert complexity_score({"texture_variance": 1.0, "edge_density": 1.0, "colour_variation": 1.0}) == 1.0
    with pytest.raises(KeyError, match="edge_density"):
        complexity_score({"texture_variance": 0.1, "colour_variation": 0.1})


def test_noise_scores_higher_than_a_smooth_gradient():
    rng = np.random.default_rng(0)
    noise = rng.random((96, 96, 3)).astype(np.float32)
    ramp = np.linspace(0.0, 1.0, 96, dtype=np.float32)
    gradient = np.repeat(np.broadcast_to(ramp[None, :, None], (96, 96, 1)), 3, axis=2)
    noisy, smooth = image_statistics(noise), image_statistics(gradient)
    for key in noisy:
        assert noisy[key] > smooth[key]
    assert complexity_score(noisy) == 1.0  # uniform noise saturates every term
    assert complexity_score(smooth) < 0.1


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="HWC RGB"):
        texture_variance(np.zeros((8, 8), np.float32))
    with pytest.raises(TypeError, match="float"):
        colour_variation(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="no image paths"):
        sample_statistics([], crop=64, n=10, seed=0)


# ---- real data ----------------------------------------------------------------------------------


def test_photos_and_pixel_art_differ_in_sampled_complexity():
    # Measured (crop 64, n 200, seed 0), means over the crops:
    #   DIV2K_valid_256crop/HR:  texture 0.0082, edges 0.236, colour 0.062, complexity 0.519
    #   kenney_tiny-town/Tiles (16x16 tiles, taken whole): texture 0.0332, edges 0.576, colour 0.088,
    #   complexity 0.807  (kenney_tiny-town/Tilemap, the two 192x176 maps: 0.914)
    # Pixel art is edges at the pixel scale everywhere, photos are mostly smooth at that scale.
    photos = sample_statistics(list_images(DIV2K), crop=64, n=200, seed=0)
    pixel_art = sample_statistics(list_images(TINY_TOWN), crop=64, n=200, seed=0)
    assert 0.3 < photos["complexity"] < 0.8
    assert pixel_art["complexity"] > photos["complexity"] + 0.15
    assert pixel_art["edge_density"] > 1.5 * photos["edge_density"]
    assert pixel_art["texture_variance"] > 2 * photos["texture_variance"]
    # Seeded: the same seed repeats exactly, another seed draws other crops.
    assert sample_statistics(list_images(DIV2K), crop=64, n=200, seed=0) == photos
    assert sample_statistics(list_images(DIV2K), crop=64, n=200, seed=1) != photos


def test_sample_statistics_takes_small_images_whole_and_averages_crops():
    tile = sorted(TINY_TOWN.glob("*.png"))[40]
    stats = image_statistics(read_image(tile))
    sampled = sample_statistics([tile], crop=64, n=3, seed=0)  # 16x16 tile < 64: every crop is the tile
    for key, value in stats.items():
        assert sampled[key] == pytest.approx(value)
    assert sampled["complexity"] == pytest.approx(complexity_score(stats))
    # A crop the image's size is the whole image too, at the only possible position.
    photo = DIV2K / "0801.png"
    whole = image_statistics(read_image(photo))
    assert sample_statistics([photo], crop=256, n=2, seed=3)["edge_density"] == pytest.approx(whole["edge_density"])


def test_sample_statistics_max_images_limits_distinct_files(monkeypatch):
    import utils.image_statistics as module

    opened: list[str] = []
    real_read = module.read_image

    def counting_read(path, **kwargs):
        opened.append(str(path))
        return real_read(path, **kwargs)

    monkeypatch.setattr(module, "read_image", counting_read)
    sample_statistics(list_images(DIV2K), crop=32, n=50, seed=0, max_images=4)
    assert len(opened) == len(set(opened)) <= 4  # each picked image decoded once


# ---- scripts/score_complexity.py ----------------------------------------------------------------


@pytest.fixture
def scored_folder(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "imgs"
    ramp = np.linspace(0, 255, 48).astype(np.uint8)
    write_png(folder / "flat.png", np.full((48, 48, 3), 128, np.uint8))
    write_png(folder / "gradient.png", np.repeat(np.broadcast_to(ramp[None, :, None], (48, 48, 1)), 3, axis=2))
    write_png(folder / "noise.png", rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    write_png(folder / "noise copy.png", rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    write_png(folder / "sub" / "deep.png", rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    return folder


def test_score_script_end_to_end(scored_folder, tmp_path, capsys):
    out_csv, out_list = tmp_path / "scores.csv", tmp_path / "complex.txt"
    rc = score_main(["-i", str(scored_folder), "-o", str(out_csv), "--min", "0.5", "--list", str(out_list)])
    assert rc == 0
    with out_csv.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "texture_variance", "edge_density", "colour_variation", "complexity"]
    assert [r["path"] for r in rows] == ["flat.png", "gradient.png", "noise copy.png", "noise.png"]
    for row in rows:
        stats = image_statistics(read_image(scored_folder / row["path"]))
        assert float(row["complexity"]) == pytest.approx(complexity_score(stats), rel=1e-5, abs=1e-9)
        assert float(row["edge_density"]) == pytest.approx(stats["edge_density"], rel=1e-5)
    scores = {r["path"]: float(r["complexity"]) for r in rows}
    assert scores["flat.png"] == 0.0
    assert scores["noise.png"] == 1.0
    assert scores["gradient.png"] < 0.5
    # meta_info_file format: one path per line; the name with a space cannot be listed.
    assert out_list.read_text().splitlines() == ["noise.png"]
    captured = capsys.readouterr()
    assert "scored 4 images" in captured.out
    assert "2 of 4 at or above 0.5" in captured.out
    assert "noise copy.png" not in out_list.read_text() and "whitespace" in captured.err


def test_score_script_threshold_is_inclusive_and_recursive_paths_are_relative(scored_folder, tmp_path, capsys):
    out_csv, out_list = tmp_path / "s.csv", tmp_path / "l.txt"
    # flat.png scores exactly 0, so --min 0 lists everything (>=); noise scores exactly 1.
    assert score_main(["-i", str(scored_folder), "-o", str(out_csv), "--min", "0", "--list", str(out_list)]) == 0
    assert out_list.read_text().splitlines() == ["flat.png", "gradient.png", "noise.png"]
    assert score_main(["-i", str(scored_folder), "-o", str(out_csv), "--min", "1.0", "--list", str(out_list)]) == 0
    assert out_list.read_text().splitlines() == ["noise.png"]
    args = ["-i", str(scored_folder), "-o", str(out_csv), "--min", "0.9", "--list", str(out_list), "--recursive"]
    assert score_main(args) == 0
    assert out_list.read_text().splitlines() == ["noise.png", "sub/deep.png"]
    with out_csv.open() as f:
        assert "sub/deep.png" in [r["path"] for r in csv.DictReader(f)]
    capsys.readouterr()


def test_score_script_missing_folder(tmp_path, capsys):
    missing = tmp_path / "no_such_folder"
    assert score_main(["-i", str(missing), "-o", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err
    assert not (tmp_path / "x.csv").exists()
    # As a process: exit code 2, one message, no traceback.
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "score_complexity.py"), "-i", str(missing), "-o", "x.csv"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert str(missing) in proc.stderr and "Traceback" not in proc.stderr


def test_statistics_of_n_band_data_use_the_first_three_bands(tmp_path):
    from utils.image_statistics import first_three_bands, sample_statistics

    rng = np.random.default_rng(0)
    rgbn = rng.random((40, 40, 4)).astype(np.float32)
    np.save(tmp_path / "rgbn.npy", rgbn)
    np.save(tmp_path / "rgb.npy", rgbn[:, :, :3].copy())
    four = sample_statistics([tmp_path / "rgbn.npy"], crop=16, n=4, seed=1)
    three = sample_statistics([tmp_path / "rgb.npy"], crop=16, n=4, seed=1)
    assert four == pytest.approx(three)
    gray = rng.random((5, 5, 1))
    assert np.array_equal(first_three_bands(gray), np.repeat(gray, 3, axis=2))
