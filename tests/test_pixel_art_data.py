"""Pixel-art data: the HR-only degradations, tile-aligned and edge-aware crops, live degradation
settings, the deterministic auto-split and the messages for bad input."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from data.auto_split import split_fraction, split_part
from data.data_loader import build_dataloader, build_loaders
from data.hr_image_dataset import HRImageDataset
from data.imresize import imresize
from data.paired_image_dataset import PairedImageDataset
from data.pixel_art_dataset import PixelArtDataset, candidate_corners, pick_crop, sobel_energy
from data.pixel_degradations import (
    DRAWS,
    PaletteError,
    PaletteShift,
    add_noise,
    check_pixel_degradations,
    downscale,
    drop_channel,
    gaussian_blur,
    knob_schedules,
    pixel_degrade,
    plan_pixel_degradations,
    shift_palette,
    tent_weights,
    values_at,
)
from tests.conftest import SHARED, small_train_yaml, write_png
from utils.options import OptionsError, load_options
from utils.schedule import Schedule

STEPS_OFF = {"palette_prob": 0.0, "blur_prob": 0.0, "noise_prob": 0.0, "jpeg_prob": 0.0, "channel_drop_prob": 0.0}
STEPS_ON = {key: 1.0 for key in STEPS_OFF}


def _values(**changes) -> dict:
    """Plain settings at step 0 of the defaults, changed."""
    return {**values_at(check_pixel_degradations({}), 0), **changes}


def _sprite_folder(folder: Path, count: int, side: int = 32, seed: int = 0, prefix: str = "s") -> Path:
    """``count`` palette sprites (6 colours, 4x4-pixel blocks) of ``side`` px."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (6, 3)).astype(np.uint8)
    for i in range(count):
        cells = rng.integers(0, 6, (side // 4, side // 4))
        write_png(folder / f"{prefix}{i:03d}.png", palette[cells].repeat(4, 0).repeat(4, 1))
    return folder


# ------------------------------------------------------------------------------ resampling


def test_integer_downscales_match_hand_computed_values():
    x = (10 * np.arange(16).reshape(4, 4, 1)).astype(np.uint8)  # x[i, j] = 10 (4 i + j)
    # nearest: the pixel at (2i + 1, 2j + 1) of each 2x2 block
    assert downscale(x, 2, "nearest")[..., 0].tolist() == [[50, 70], [130, 150]]
    # box: block means, 25 = (0 + 10 + 40 + 50) / 4
    assert downscale(x, 2, "box")[..., 0].tolist() == [[25, 45], [105, 125]]
    # bilinear (tent [1, 3, 3, 1] / 8, edges repeated): out[0, 0] = 10 (4 * 20/8 + 5/8) = 31.25,
    # out[0, 1] = 10 (4 * 20/8 + 19/8) = 48.75, out[1, 0] = 10 (4 * 19/8 + 5/8) = 101.25, out[1, 1] = 118.75
    assert downscale(x, 2, "bilinear")[..., 0].tolist() == [[31, 49], [101, 119]]
    dot = np.zeros((4, 4, 1), np.uint8)
    dot[0, 0] = 255
    assert downscale(dot, 4, "nearest")[0, 0, 0] == 0  # samples (2, 2)
    assert downscale(dot, 4, "box")[0, 0, 0] == 16  # 255 / 16 = 15.94
    # tent [1, 3, 5, 7, 7, 5, 3, 1] / 32; pixel 0 also stands in for the two padded taps: (1 + 3 + 5) / 32 per axis
    assert downscale(dot, 4, "bilinear")[0, 0, 0] == round(255 * 81 / 1024)  # 20.17


def test_tent_weights_and_exact_round_trip_of_nearest_upscaled_art():
    assert tent_weights(2).tolist() == [1, 3, 3, 1]
    assert tent_weights(3).tolist() == [2, 4, 6, 4, 2]
    assert tent_weights(4).tolist() == [1, 3, 5, 7, 7, 5, 3, 1]
    assert all(tent_weights(s).sum() == 2 * s * s for s in (1, 2, 3, 4, 8))
    lr = np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    for s in (2, 3, 4):
        hr = lr.repeat(s, 0).repeat(s, 1)
        for kernel in ("nearest", "box"):  # a nearest-upscaled sprite comes back exactly
            assert np.array_equal(downscale(hr, s, kernel), lr)


# ------------------------------------------------------------------------------ palette


def _three_colour_image() -> np.ndarray:
    colours = np.array([[200, 10, 10], [10, 200, 10], [0, 0, 0]], np.uint8)
    return colours[np.random.default_rng(1).integers(0, 3, (8, 8))]


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Pixels equal in ``a`` are equal in ``b`` and the other way round."""
    ka = a.reshape(-1, a.shape[2]).astype(np.int64) @ np.array([65536, 256, 1])
    kb = b.reshape(-1, b.shape[2]).astype(np.int64) @ np.array([65536, 256, 1])
    return np.array_equal(ka[:, None] == ka[None, :], kb[:, None] == kb[None, :])


def test_palette_jitter_moves_every_palette_colour_by_one_transform():
    img = _three_colour_image()
    # a 120 degree turn about the grey axis is the channel cycle (r, g, b) -> (b, r, g)
    out = shift_palette(img, PaletteShift(1.0, 120.0, (0.0, 0.0, 0.0)))
    expected = {(200, 10, 10): (10, 200, 10), (10, 200, 10): (10, 10, 200), (0, 0, 0): (0, 0, 0)}
    for before, after in expected.items():
        assert (out[(img == before).all(axis=2)] == after).all()
    # contrast 1.2 about 127.5, offsets (+10, -5, 0), rounded half up, clipped:
    # 200 -> 214.5, 10 -> -13.5, 0 -> -25.5; so red -> (224.5, -18.5, -13.5) -> (225, 0, 0) and
    # green -> (-3.5, 209.5, -13.5) -> (0, 210, 0); black -> (0, 0, 0)
    out = shift_palette(img, PaletteShift(1.2, 0.0, (10.0, -5.0, 0.0)))
    expected = {(200, 10, 10): (225, 0, 0), (10, 200, 10): (0, 210, 0), (0, 0, 0): (0, 0, 0)}
    for before, after in expected.items():
        assert (out[(img == before).all(axis=2)] == after).all()
    assert len(np.unique(out.reshape(-1, 3), axis=0)) == 3
    assert _same_partition(img, out)


def test_palette_colours_that_round_together_are_moved_apart():
    img = np.zeros((2, 2, 3), np.uint8)
    img[1] = 5
    # contrast 1.5 sends 0 -> -63.75 and 5 -> -56.25: both clip to 0; the later colour (5, 5, 5) takes
    # the first free nudge in the documented order, (0, 0, +1)
    out = shift_palette(img, PaletteShift(1.5, 0.0, (0.0, 0.0, 0.0)))
    assert out[0].tolist() == [[0, 0, 0]] * 2
    assert out[1].tolist() == [[0, 0, 1]] * 2


def test_palette_jitter_refuses_an_image_with_thousands_of_colours():
    many = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    with pytest.raises(PaletteError, match=r"(?s)has \d{4} distinct colours, more than palette_max_colors 256"):
        shift_palette(many, PaletteShift(1.0, 5.0, (1.0, 1.0, 1.0)))
    with pytest.raises(PaletteError, match="palette_max_colors 256"):
        pixel_degrade(many, 2, np.random.default_rng(0), _values(palette_prob=1.0))
    gt, _ = pixel_degrade(many, 2, np.random.default_rng(0), _values(palette_prob=0.0))
    assert gt is many  # without palette jitter the gt is the HR patch itself


def test_real_pixel_art_palettes_fit_the_default_limit():
    root = SHARED / "data" / "pixelart"
    if not root.is_dir():
        pytest.skip(f"{root} is not here")
    from data.image_io import list_images, read_image
    from data.pixel_degradations import count_colours

    counts = [count_colours(read_image(p, keep_channels=True, as_float=False)[..., :3])
              for p in list_images(root, recursive=True)[::5]]
    assert len(counts) > 100
    assert max(counts) <= 256  # every sprite of the set is a palette image at the default limit
    assert np.median(counts) <= 32  # and most have few colours


# ------------------------------------------------------------------------------ the other steps


def test_blur_noise_and_channel_drop_by_hand():
    dot = np.zeros((5, 5, 1), np.uint8)
    dot[2, 2] = 255
    # sigma 0.5: taps -2..2 with weights exp(-x^2 / 0.5), normalised; the centre keeps 255 w0^2
    w = np.exp(-np.arange(-2, 3) ** 2 / 0.5)
    w /= w.sum()
    expected = np.floor(255 * np.outer(w, w) + 0.5)
    assert np.array_equal(gaussian_blur(dot, 0.5)[..., 0], expected)
    assert gaussian_blur(dot, 0.5)[2, 2, 0] == 158
    px = np.array([[[10, 20, 31]]], np.uint8)
    assert drop_channel(px, 1).tolist() == [[[10, 21, 31]]]  # (10 + 31) / 2 = 20.5 -> 21
    assert drop_channel(px, 0).tolist() == [[[26, 20, 31]]]  # (20 + 31) / 2 = 25.5 -> 26
    flat = np.full((8, 8, 3), 100, np.uint8)
    assert np.array_equal(add_noise(flat, 2.0, 7), add_noise(flat, 2.0, 7))
    assert not np.array_equal(add_noise(flat, 2.0, 7), add_noise(flat, 2.0, 8))
    assert np.array_equal(add_noise(flat, 0.0, 7), flat)


# ------------------------------------------------------------------------------ determinism


def test_plan_uses_the_documented_draws():
    values = _values(**STEPS_ON, nearest_prob=0.0, box_prob=0.0, blur_sigma=(0.2, 0.6), noise_sigma=(1.0, 3.0),
                     jpeg_quality=(60, 90), palette_shift=8.0, palette_contrast=0.1, palette_hue=10.0)
    u = np.random.default_rng(5).random(DRAWS)
    plan = plan_pixel_degradations(np.random.default_rng(5), values, 3)
    assert plan.palette == PaletteShift(1 + 0.1 * (2 * u[1] - 1), 10 * (2 * u[2] - 1),
                                        tuple(8 * (2 * v - 1) for v in u[3:6]))
    assert plan.kernel == "bilinear"
    assert plan.blur_sigma == pytest.approx(0.2 + 0.4 * u[8])
    assert plan.noise == (pytest.approx(1.0 + 2.0 * u[10]), int(u[11] * 2**53))
    assert plan.jpeg_quality == 60 + int(u[13] * 31)
    assert plan.drop_channel == int(u[15] * 3)
    # the kernel: nearest below nearest_prob, box below nearest_prob + box_prob
    def plan(**changes):
        return plan_pixel_degradations(np.random.default_rng(5), {**values, **changes}, 3)

    assert plan(nearest_prob=u[6] + 1e-9).kernel == "nearest"
    assert plan(box_prob=u[6] + 1e-9).kernel == "box"
    assert plan(**STEPS_OFF).palette is None


def test_same_seed_same_pair_and_draw_count_independent_of_what_fires():
    hr = _three_colour_image().repeat(4, 0).repeat(4, 1)  # 32x32
    after = []
    for values in (_values(**STEPS_OFF), _values(**STEPS_ON), _values(**STEPS_ON, nearest_prob=1.0)):
        rng = np.random.default_rng(11)
        gt, lq = pixel_degrade(hr, 2, rng, values)
        after.append(rng.random())
        gt2, lq2 = pixel_degrade(hr, 2, np.random.default_rng(11), values)
        assert np.array_equal(gt, gt2) and np.array_equal(lq, lq2)
        assert gt.shape == (32, 32, 3) and lq.shape == (16, 16, 3) and lq.dtype == np.uint8
    reference = np.random.default_rng(11)
    reference.random(DRAWS)
    assert after == [reference.random()] * 3


# ------------------------------------------------------------------------------ crops


def test_tile_aligned_corners_are_multiples_of_the_tile():
    corners = [c for seed in range(40) for c in candidate_corners(100, 90, 32, np.random.default_rng(seed), 4, 1.0, 16)]
    assert {y for y, _ in corners} == {0, 16, 32, 48, 64}  # every slot that leaves room for the patch (100 - 32 = 68)
    assert {x for _, x in corners} == {0, 16, 32, 48}  # 90 - 32 = 58
    free = [c for seed in range(40) for c in candidate_corners(100, 90, 32, np.random.default_rng(seed), 4, 0.0, 16)]
    assert any(y % 16 or x % 16 for y, x in free)
    assert max(y for y, _ in free) <= 68 and max(x for _, x in free) <= 58


def test_dataset_crops_land_on_the_tile_grid(tmp_path):
    yy, xx = np.mgrid[0:96, 0:96]
    write_png(tmp_path / "hr" / "coords.png", np.stack([yy, xx, np.zeros_like(yy)], -1).astype(np.uint8))
    ds = PixelArtDataset(str(tmp_path / "hr"), scale=2, phase="train", gt_size=32, use_hflip=False, use_rot=False,
                         crops_tile_aligned_prob=1.0, tile_size=16, degradations={"palette_prob": 0.0})
    corners = {tuple(ds[(0, seed)]["gt"][:2, 0, 0].tolist()) for seed in range(30)}  # the patch's first pixel is (y, x)
    assert all(y % 16 == 0 and x % 16 == 0 for y, x in corners)
    assert len(corners) > 8


def _energy_image() -> np.ndarray:
    """64x64 gray of 16x16 tiles; tile k = 4 ty + tx holds columns L, L, H, H repeated with
    H - L = 8 (k + 1), so its Sobel energy is 16 (8 (k + 1))**2 and grows with k."""
    img = np.zeros((64, 64, 1), np.uint8)
    for ty in range(4):
        for tx in range(4):
            a = 8 * (4 * ty + tx + 1)
            tile = np.where(np.arange(16) % 4 < 2, 128 - a // 2, 128 + a // 2)
            img[16 * ty : 16 * ty + 16, 16 * tx : 16 * tx + 16, 0] = tile[None, :]
    return img


def test_sobel_energy_by_hand():
    img = _energy_image()
    # |Gx| = 4 (H - L) on every inner pixel of the LLHH pattern, Gy = 0
    assert sobel_energy(img[:16, :16]) == 16 * 8**2
    assert sobel_energy(img[48:, 48:]) == 16 * 128**2
    assert sobel_energy(np.full((8, 8, 3), 50, np.uint8)) == 0.0


def test_edge_aware_sampling_keeps_the_highest_energy_candidate():
    img = _energy_image()
    for seed in range(20):
        corners = candidate_corners(64, 64, 16, np.random.default_rng(seed), 4, 1.0, 16)
        best = max(corners, key=lambda c: 4 * (c[0] // 16) + c[1] // 16)
        assert pick_crop(img, 16, np.random.default_rng(seed), 4, 1.0, 16, 1.0) == best
        # prefer_top_p 0: the candidate the second draw after the corners names
        rng = np.random.default_rng(seed)
        candidate_corners(64, 64, 16, rng, 4, 1.0, 16)
        which = rng.random(2)[1]
        assert pick_crop(img, 16, np.random.default_rng(seed), 4, 1.0, 16, 0.0) == corners[int(which * 4)]


# ------------------------------------------------------------------------------ live settings


def test_degrad_schedule_maps_onto_piecewise_knob_schedules():
    checked = check_pixel_degradations({"jpeg_prob": 0.05, "nearest_prob": {0: 0.5, 100: 0.7}})
    knobs = knob_schedules(checked, {"0": {"jpeg_prob": 0.1}, "0.6T": {"jpeg_prob": 0.2, "noise_sigma": [1, 4]},
                                     300: {"noise_prob": 0.3}}, total_iter=1000)
    assert knobs["jpeg_prob"] == Schedule.parse({0: 0.1, 600: 0.2})
    assert knobs["noise_prob"] == Schedule.parse({0: 0.1, 300: 0.3})  # its degradations value before step 300
    assert knobs["nearest_prob"] == Schedule.parse({0: 0.5, 100: 0.7})
    assert knobs["noise_sigma"](599) == (0.5, 2.0) and knobs["noise_sigma"](600) == (1.0, 4.0)
    with pytest.raises(ValueError, match="nearest_prob is also a schedule in degradations"):
        knob_schedules(checked, {0: {"nearest_prob": 0.1}})
    with pytest.raises(ValueError, match=r"degrad_schedule\[5\]: 'jpeg_probability' cannot be scheduled"):
        knob_schedules(checked, {5: {"jpeg_probability": 0.1}})
    with pytest.raises(ValueError, match=r"degrad_schedule\[5\]\.box_prob must be a probability in \[0, 1\]"):
        knob_schedules(checked, {5: {"box_prob": 2}})
    with pytest.raises(ValueError, match="nearest_prob \\+ box_prob must be at most 1.*0.7 \\+ 0.4 = 1.1 at step 100"):
        knob_schedules(checked, {50: {"box_prob": 0.4}})


def test_jpeg_schedule_reaches_the_samples_through_the_batch_sampler(tmp_path):
    folder = _sprite_folder(tmp_path / "hr", 6, side=32)
    off = {**STEPS_OFF, "nearest_prob": 1.0, "box_prob": 0.0}
    ds = PixelArtDataset(str(folder), scale=2, phase="train", gt_size={0: 16, 4: 24}, degradations=off,
                         degrad_schedule={3: {"jpeg_prob": 1.0, "jpeg_quality": [20, 20]}})
    assert set(ds.schedules) == {"gt_size", "jpeg_prob", "jpeg_quality"}
    loader = build_dataloader(ds, "train", 2, 0, seed=3, dataset_enlarge_ratio=4)
    batches = list(loader)[:5]  # steps 1..5
    assert [b["gt"].shape[-1] for b in batches] == [16, 16, 16, 24, 24]
    for step, batch in enumerate(batches, start=1):
        gt = batch["gt"].permute(0, 2, 3, 1).numpy()
        nearest = np.stack([downscale(g, 2, "nearest") for g in gt])
        lq = batch["lq"].permute(0, 2, 3, 1).numpy()
        assert np.array_equal(lq, nearest) == (step < 3), step  # JPEG at quality 20 from step 3 on


def test_pixel_art_option_file_with_curriculum_and_knobs(tmp_path):
    folder = _sprite_folder(tmp_path / "hr", 8, side=32)
    path = small_train_yaml(tmp_path, folder)
    text = path.read_text().replace("type: HRImageDataset", "type: PixelArtDataset")
    text = text.replace("    gt_size: 16\n", """    gt_size: {0: 16, 0.5T: 24}
    degradations: {nearest_prob: 0.65, box_prob: 0.2, palette_prob: {0: 0.0, 0.5T: 0.25}}
    degrad_schedule: {0: {jpeg_prob: 0.1}, 0.6T: {jpeg_prob: 0.2}}
    candidates: 4
    prefer_top_p: 0.6
    crops_tile_aligned_prob: 1.0
    tile_size: 8
""")
    path.write_text(text)
    opt = load_options(path)
    stream, vals = build_loaders(opt, torch.device("cpu"))
    assert [stream.knob("jpeg_prob", s) for s in (1, 11, 12, 20)] == [0.1, 0.1, 0.2, 0.2]  # 0.6T of 20 = 12
    assert [stream.knob("palette_prob", s) for s in (9, 10)] == [0.0, 0.25]
    assert [stream.knob("gt_size", s) for s in (9, 10)] == [16, 24]
    batch = stream.next()
    assert batch["gt"].shape == (2, 3, 16, 16) and batch["lq"].shape == (2, 3, 8, 8)
    stream.set_knob("noise_sigma", [1.0, 3.0])  # an automation may move a range too
    with pytest.raises(ValueError, match=r"PixelArtDataset: jpeg_prob must be a probability in \[0, 1\], got 1.5"):
        stream.set_knob("jpeg_prob", 1.5)
    val = vals["tinyval"].dataset
    sample = val[0]  # validation: whole image, box LR, float
    gt = (sample["gt"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert torch.allclose(sample["lq"], torch.from_numpy(downscale(gt, 2, "box")).permute(2, 0, 1).float() / 255)
    with pytest.raises(OptionsError, match=r"degradations\.jpeg_prob: must be a probability in \[0, 1\]"):
        load_options(path, ["datasets.train.degradations={jpeg_prob: {0: 0.1, 5: 1.5}}"])
    with pytest.raises(OptionsError, match=r"degradations\.blur_sigma: must be \[lo, hi\] numbers"):
        load_options(path, ["datasets.train.degradations={blur_sigma: [0.8, 0.2]}"])


def test_bicubic_eval_kernel_is_the_hr_sets_lr(tmp_path):
    folder = _sprite_folder(tmp_path / "hr", 2, side=32)
    pixel = PixelArtDataset(str(folder), scale=2, phase="val", eval_kernel="bicubic")
    hr = HRImageDataset(str(folder), scale=2, phase="val")
    assert torch.equal(pixel[1]["lq"], hr[1]["lq"])
    img = (pixel[1]["gt"].permute(1, 2, 0).numpy()).astype(np.float32)
    assert np.allclose(pixel[1]["lq"].permute(1, 2, 0).numpy(), np.clip(imresize(img, 0.5), 0, 1))


# ------------------------------------------------------------------------------ auto-split


def _names(n: int, start: int = 0) -> list[str]:
    return [f"sprites/tile_{i:04d}" for i in range(start, start + n)]


def test_split_fraction_is_the_documented_hash():
    digest = hashlib.blake2b(b"7:sprites/tile_0003", digest_size=8).digest()
    assert split_fraction("sprites/tile_0003", 7) == int.from_bytes(digest, "big") / 2**64
    assert split_part("x", [1.0, 0.0, 0.0], 0) == "train" and split_part("x", [0.0, 0.0, 1.0], 0) == "test"


def test_split_ratios_determinism_and_stability_when_files_are_added():
    ratios = (0.8, 0.1, 0.1)
    parts = {n: split_part(n, ratios, 0) for n in _names(200)}
    counts = {p: list(parts.values()).count(p) for p in ("train", "val", "test")}
    # binomial: 160 +- 5.7, 20 +- 4.2 (one standard deviation); allow about 3
    assert abs(counts["train"] - 160) <= 18 and abs(counts["val"] - 20) <= 13 and abs(counts["test"] - 20) <= 13
    assert parts == {n: split_part(n, ratios, 0) for n in _names(200)}  # deterministic
    grown = {n: split_part(n, ratios, 0) for n in _names(250)}  # 50 files added
    assert all(grown[n] == parts[n] for n in parts)  # none of the old ones moved
    other_seed = {n: split_part(n, ratios, 1) for n in _names(200)}
    assert other_seed != parts


def test_every_dataset_type_splits_alike_and_pairs_stay_paired(tmp_path):
    gt_dir, lq_dir = tmp_path / "gt", tmp_path / "lq"
    rng = np.random.default_rng(0)
    for i in range(40):
        img = rng.integers(0, 4, (4, 4, 3)).astype(np.uint8) * 60
        write_png(gt_dir / f"im{i:02d}.png", img.repeat(2, 0).repeat(2, 1))
        write_png(lq_dir / f"im{i:02d}.png", img)
    ratios = [0.6, 0.2, 0.2]

    def split(part: str) -> dict:
        return {"part": part, "ratios": ratios, "seed": 3}

    expected = {p: sorted(f"im{i:02d}" for i in range(40) if split_part(f"im{i:02d}", ratios, 3) == p)
                for p in ("train", "val", "test")}
    for part in ("train", "val", "test"):
        hr = HRImageDataset(str(gt_dir), scale=2, phase="val", split=split(part))
        pixel = PixelArtDataset(str(gt_dir), scale=2, phase="val", split=split(part))
        paired = PairedImageDataset(str(gt_dir), str(lq_dir), scale=2, phase="val", split=split(part))
        for ds in (hr, pixel, paired):
            assert [p.stem for p in ds.gt_paths] == expected[part]
        assert [p.stem for p in paired.lq_paths] == expected[part]  # each lq still with its gt
        sample = paired[0]
        assert torch.equal(sample["lq"], (torch.from_numpy(np.asarray(
            downscale((sample["gt"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), 2, "nearest"))
        ).permute(2, 0, 1).float() / 255))
    assert sum(map(len, expected.values())) == 40
    # indices count within the part; a meta_info_file may list the whole folder
    ds = HRImageDataset(str(gt_dir), scale=2, phase="val", split=split("train"), indices=[0, 2, 3])
    assert [p.stem for p in ds.gt_paths] == [expected["train"][i] for i in (0, 2, 3)]
    meta = tmp_path / "meta.txt"
    meta.write_text("\n".join(f"im{i:02d}.png" for i in range(0, 40, 2)))
    ds = HRImageDataset(str(gt_dir), scale=2, phase="val", split=split("train"), meta_info_file=str(meta))
    assert [p.stem for p in ds.gt_paths] == [n for n in expected["train"] if int(n[2:]) % 2 == 0]
    # 10 more files: nobody moves
    for i in range(40, 50):
        write_png(gt_dir / f"im{i:02d}.png", np.zeros((8, 8, 3), np.uint8))
    grown = HRImageDataset(str(gt_dir), scale=2, phase="val", split=split("val"))
    assert [p.stem for p in grown.gt_paths if int(p.stem[2:]) < 40] == expected["val"]


def test_split_messages(tmp_path):
    folder = _sprite_folder(tmp_path / "hr", 3, side=8)
    with pytest.raises(ValueError, match=r"split\.ratios must sum to 1, got \[0\.8, 0\.1, 0\.2\]"):
        HRImageDataset(str(folder), scale=2, phase="val", split={"part": "val", "ratios": [0.8, 0.1, 0.2]})
    with pytest.raises(ValueError, match="part 'test' has ratio 0"):
        HRImageDataset(str(folder), scale=2, phase="val", split={"part": "test", "ratios": [0.8, 0.2, 0]})
    with pytest.raises(ValueError, match="split part 'val' of .* holds none of its 3 images"):
        HRImageDataset(str(folder), scale=2, phase="val", split={"part": "val", "ratios": [0.98, 0.01, 0.01]})


# ------------------------------------------------------------------------------ bad input


def test_empty_folder_and_nested_images_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"PixelArtDataset: dataroot_gt: image folder .*empty' contains no "):
        PixelArtDataset(str(tmp_path / "empty"), scale=2, phase="train", gt_size=16)
    _sprite_folder(tmp_path / "top" / "sheet_a", 2)
    _sprite_folder(tmp_path / "top" / "sheet_b", 3)
    with pytest.raises(FileNotFoundError, match="its subfolders hold 5 images: set recursive: true"):
        PixelArtDataset(str(tmp_path / "top"), scale=2, phase="train", gt_size=16)
    ds = PixelArtDataset(str(tmp_path / "top"), scale=2, phase="train", gt_size=16, recursive=True)
    assert [p.relative_to(tmp_path / "top").as_posix() for p in ds.gt_paths][:2] == ["sheet_a/s000.png",
                                                                                    "sheet_a/s001.png"]


def test_sprites_smaller_than_the_patch_are_named_or_left_out(tmp_path):
    folder = _sprite_folder(tmp_path / "hr", 3, side=64)
    _sprite_folder(folder, 1, side=16, prefix="tiny")
    with pytest.raises(ValueError, match=r"1 of 4 training images are too small for gt_size 32 \(the largest value of "
                                         r"its schedule\): '.*tiny000\.png' is 16x16"):
        PixelArtDataset(str(folder), scale=2, phase="train", gt_size={0: 16, 10: 32})
    ds = PixelArtDataset(str(folder), scale=2, phase="train", gt_size={0: 16, 10: 32}, min_size=32)
    assert [p.name for p in ds.gt_paths] == ["s000.png", "s001.png", "s002.png"]


def test_palette_limit_is_checked_at_build_naming_the_file(tmp_path):
    folder = _sprite_folder(tmp_path / "hr", 2, side=32)
    write_png(folder / "photo.png", np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8))
    with pytest.raises(PaletteError, match=r"1 of 3 training images have more than palette_max_colors 256 distinct "
                                           r"colours: '.*photo\.png' \(10\d\d colours\)"):
        PixelArtDataset(str(folder), scale=2, phase="train", gt_size=16)
    ds = PixelArtDataset(str(folder), scale=2, phase="train", gt_size=16, degradations={"palette_prob": 0.0})
    with pytest.raises(PaletteError, match="photo.png"):
        ds.check_knob("palette_prob", 0.1)  # an automation turning it on is checked as well
    PixelArtDataset(str(folder), scale=2, phase="train", gt_size=16, degradations={"palette_max_colors": 4096})


@pytest.mark.parametrize(("degradations", "message"), [
    ({"jpeg_prob": 1.5}, r"degradations\.jpeg_prob must be a probability in \[0, 1\], got 1\.5"),
    ({"noise_prob": {0: 0.1, 100: -0.2}}, r"degradations\.noise_prob must be a probability in \[0, 1\], got -0\.2"),
    ({"nearest_prob": 0.9, "box_prob": 0.2}, r"nearest_prob \+ box_prob must be at most 1"),
    ({"jpeg_quality": [90, 50]}, r"degradations\.jpeg_quality must be \[lo, hi\] whole numbers"),
    ({"palette_contrast": 1.0}, r"degradations\.palette_contrast must be a number in \[0, 1\)"),
    ({"blur_prob": True}, r"degradations\.blur_prob: expected a number or a schedule, got True"),
    ({"jpeg": 0.1}, r"degradations: unknown key\(s\) jpeg"),
])
def test_bad_degradation_settings_name_the_key(degradations, message):
    with pytest.raises(ValueError, match=message):
        check_pixel_degradations(degradations)


def test_training_options_in_a_validation_set_and_cache_are_refused(tmp_path):
    folder = _sprite_folder(tmp_path / "hr", 2, side=16)
    with pytest.raises(ValueError, match=r"training option\(s\) degradations, candidates in a val set"):
        PixelArtDataset(str(folder), scale=2, phase="val", degradations={}, candidates=3)
    with pytest.raises(ValueError, match="eval_kernel is the clean LR of validation/test sets"):
        PixelArtDataset(str(folder), scale=2, phase="train", gt_size=16, eval_kernel="box")
    with pytest.raises(ValueError, match="cache: gpu is not supported.*cache: ram keeps the decoded images"):
        PixelArtDataset(str(folder), scale=2, phase="train", gt_size=16, cache="gpu")
    with pytest.raises(ValueError, match="cache is for training sets"):
        PixelArtDataset(str(folder), scale=2, phase="val", cache="ram")
    assert not math.isnan(sobel_energy(np.zeros((2, 2, 3), np.uint8)))


def test_ram_cache_gives_the_same_samples_without_reading_the_files(tmp_path):
    folder = _sprite_folder(tmp_path / "hr", 3, side=24)
    options = {"scale": 2, "phase": "train", "gt_size": 16, "candidates": 3, "prefer_top_p": 0.7,
               "degradations": {"palette_prob": 0.5, "jpeg_prob": 0.3, "noise_prob": 0.3}}
    plain = PixelArtDataset(str(folder), **options)
    cached = PixelArtDataset(str(folder), cache="ram", **options)
    assert cached.makes_device_batches is False  # the workers still make the samples
    assert cached._images.nbytes == 3 * 24 * 24 * 3
    items = [(0, 1), (1, 7), (2, 123), (0, 99)]
    expected = [plain[item] for item in items]
    for path in folder.iterdir():  # the files are gone: only the cache can serve them now
        path.unlink()
    for item, want in zip(items, expected, strict=True):
        got = cached[item]
        assert got["gt"].dtype == torch.uint8
        assert torch.equal(got["gt"], want["gt"]) and torch.equal(got["lq"], want["lq"])
        assert got["gt_path"] == want["gt_path"]
    with pytest.raises(RuntimeError, match="none of the 3 training images could be read"):
        plain[(0, 1)]  # the uncached set does read the files


@pytest.mark.parametrize("override, message", [
    ("datasets.train.degradations.box_prob=0.5", "nearest_prob + box_prob must be at most 1"),
    ("datasets.val.candidates=4", "training option(s) candidates in a val set"),
    ("datasets.train.eval_kernel=box", "eval_kernel is the clean LR of validation/test sets"),
    ("datasets.train.tile_size=0", "tile_size must be a whole number >= 1"),
])
def test_the_option_check_refuses_what_start_up_would(override, message):
    """--check runs PixelArtDataset's own keyword checks (no files needed), with start-up's message."""
    from tests.conftest import ROOT
    from utils.options import OptionsError, load_options

    with pytest.raises(OptionsError, match=re.escape(message)):
        load_options(ROOT / "options/train/PixelArt/edsr_64x32_x2_tail.yml", [override])
