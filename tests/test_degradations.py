"""LR-only degradations: JPEG compression and coarse dropout, and how they draw random numbers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from data.degradations import (
    check_dropout,
    check_jpeg,
    coarse_dropout,
    jpeg_compress,
    random_lq_degradations,
)


def smooth_rgb(h: int = 32, w: int = 40) -> np.ndarray:
    """A smooth uint8 RGB image (JPEG at quality 100 keeps it within a few levels)."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([60 + 3 * xx, 40 + 4 * yy, 200 - 2 * xx - yy], axis=-1)
    return np.clip(img, 0, 255).astype(np.uint8)


def textured_rgb(seed: int = 0, h: int = 32, w: int = 40) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def cv2_jpeg_rgb(img: np.ndarray, quality: int) -> np.ndarray:
    """The reference: OpenCV's own encode/decode of the RGB image (as BGR)."""
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)[:, :, ::-1]


def state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state


# ---------------------------------------------------------------- JPEG


def test_jpeg_quality_100_is_close_to_identity_and_5_is_far() -> None:
    img = smooth_rgb()
    high = jpeg_compress(img, 100)
    assert high.dtype == np.uint8 and high.shape == img.shape
    assert np.abs(high.astype(int) - img).max() <= 4
    low = jpeg_compress(textured_rgb(), 5)
    assert np.abs(low.astype(int) - textured_rgb()).mean() > 30
    np.testing.assert_array_equal(low, cv2_jpeg_rgb(textured_rgb(), 5))
    np.testing.assert_array_equal(jpeg_compress(img, 5), cv2_jpeg_rgb(img, 5))


def test_jpeg_gray_and_channel_order() -> None:
    gray = textured_rgb()[:, :, 0]
    ok, buf = cv2.imencode(".jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, 20])
    ref = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(jpeg_compress(gray, 20), ref)
    np.testing.assert_array_equal(jpeg_compress(gray[:, :, None], 20), ref[:, :, None])
    # A pure-red image: OpenCV must see it as red (BGR 0, 0, 255), not blue.
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    np.testing.assert_array_equal(jpeg_compress(red, 30), cv2_jpeg_rgb(red, 30))
    assert jpeg_compress(red, 30)[8, 8, 0] > 240 and jpeg_compress(red, 30)[8, 8, 2] < 15


def test_jpeg_keeps_dtype_and_scale_through_8_bits() -> None:
    u8 = textured_rgb(1)
    ref = cv2_jpeg_rgb(u8, 40)
    u16 = u8.astype(np.uint16) * 257  # exactly the 8-bit levels on the 16-bit scale
    nudged = np.where(u8 > 0, u16 - 100, u16)  # (257 k - 100) / 257 rounds back to level k
    out16 = jpeg_compress(nudged, 40)
    assert out16.dtype == np.uint16
    np.testing.assert_array_equal(out16, ref.astype(np.uint16) * 257)
    f32 = u8.astype(np.float32) / 255
    out_f = jpeg_compress(f32, 40)
    assert out_f.dtype == np.float32
    np.testing.assert_array_equal(out_f, ref.astype(np.float32) / np.float32(255))
    # float outside [0, 1] is clipped for the codec
    np.testing.assert_array_equal(jpeg_compress(np.full((8, 8, 3), 1.7, np.float32), 90), np.ones((8, 8, 3)))


def test_jpeg_rejects_other_channel_counts() -> None:
    with pytest.raises(ValueError, match="1 or 3 channels"):
        jpeg_compress(np.zeros((8, 8, 4), np.uint8), 50)
    with pytest.raises(ValueError, match="quality"):
        jpeg_compress(np.zeros((8, 8, 3), np.uint8), 0)


# ---------------------------------------------------------------- coarse dropout


def expected_mask(shape: tuple[int, int], seed: int, holes: int, max_holes: int, size: tuple[int, int]) -> np.ndarray:
    """The documented geometry recomputed by hand from an identically seeded generator."""
    h, w = shape
    draws = np.random.default_rng(seed).random((max_holes, 3))
    mask = np.zeros((h, w), bool)
    for u_size, u_y, u_x in draws[:holes]:
        side = size[0] + int(np.floor(u_size * (size[1] - size[0] + 1)))
        sy, sx = min(side, h), min(side, w)
        y, x = int(np.floor(u_y * (h - sy + 1))), int(np.floor(u_x * (w - sx + 1)))
        mask[y : y + sy, x : x + sx] = True
    return mask


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_dropout_zeroes_exactly_the_expected_holes(seed: int) -> None:
    img = np.random.default_rng(99).integers(1, 256, (20, 24, 3), dtype=np.uint8)  # no zeros before
    out = coarse_dropout(img, 3, np.random.default_rng(seed), size=(2, 6), max_holes=5)
    mask = expected_mask((20, 24), seed, 3, 5, (2, 6))
    assert mask.any()
    np.testing.assert_array_equal(out == 0, np.repeat(mask[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(out[~mask], img[~mask])
    assert img.min() > 0  # the input is not modified


def test_dropout_fill_value_on_each_dtype_scale() -> None:
    for dtype, fill, value in ((np.uint8, 0.5, 128), (np.uint16, 0.5, 32768), (np.float32, 0.25, 0.25)):
        img = np.zeros((10, 10, 2), dtype)
        out = coarse_dropout(img, 1, np.random.default_rng(3), size=(4, 4), fill=fill)
        mask = expected_mask((10, 10), 3, 1, 1, (4, 4))
        assert out.dtype == dtype and mask.sum() == 16
        assert (out[mask] == value).all() and (out[~mask] == 0).all()


def test_dropout_holes_larger_than_the_image_are_cut_to_it() -> None:
    out = coarse_dropout(np.ones((3, 5, 1), np.float32), 1, np.random.default_rng(0), size=(9, 9))
    assert (out == 0).all()


def test_dropout_draws_the_same_whatever_the_hole_count() -> None:
    a, b = np.random.default_rng(5), np.random.default_rng(5)
    img = np.ones((8, 8, 3), np.uint8)
    assert coarse_dropout(img, 0, a, size=(1, 3), max_holes=4) is img
    coarse_dropout(img, 4, b, size=(1, 3), max_holes=4)
    assert state(a) == state(b)


# ---------------------------------------------------------------- random_lq_degradations


JPEG = {"prob": 1.0, "quality": (10, 30)}
DROPOUT = {"prob": 1.0, "holes": (1, 4), "size": (2, 5), "fill": 0.0}


def test_prob_zero_leaves_the_patch_but_draws_as_much_as_prob_one() -> None:
    img = textured_rgb(2, 24, 24)
    for jpeg, dropout in ((JPEG, None), (None, DROPOUT), (JPEG, DROPOUT)):
        off = np.random.default_rng(11)
        on = np.random.default_rng(11)
        never = random_lq_degradations(img, off, {**jpeg, "prob": 0.0} if jpeg else None,
                                       {**dropout, "prob": 0.0} if dropout else None)
        always = random_lq_degradations(img, on, jpeg, dropout)
        np.testing.assert_array_equal(never, img)
        assert not np.array_equal(always, img)
        assert state(off) == state(on)


def test_degradations_follow_the_documented_draws() -> None:
    img = textured_rgb(3, 24, 24)
    out = random_lq_degradations(img, np.random.default_rng(21), JPEG, DROPOUT)
    ref = np.random.default_rng(21)
    fire_j, u_q = ref.random(2)
    quality = 10 + int(u_q * 21)
    expected = cv2_jpeg_rgb(img, quality)
    fire_d, u_n = ref.random(2)
    holes = 1 + int(u_n * 4)
    mask = expected_mask((24, 24), 0, 0, 0, (2, 5))  # all False; geometry below from `ref`
    draws = ref.random((4, 3))
    for u_size, u_y, u_x in draws[:holes]:
        side = 2 + int(u_size * 4)
        y, x = int(u_y * (24 - side + 1)), int(u_x * (24 - side + 1))
        mask[y : y + side, x : x + side] = True
    expected[mask] = 0
    np.testing.assert_array_equal(out, expected)
    # the call consumed exactly what the reference consumed
    after = np.random.default_rng(21)
    random_lq_degradations(img, after, JPEG, DROPOUT)
    assert state(after) == state(ref)


def test_nothing_configured_draws_nothing() -> None:
    rng = np.random.default_rng(4)
    before = state(rng)
    img = textured_rgb()
    assert random_lq_degradations(img, rng) is img
    assert state(rng) == before


# ---------------------------------------------------------------- option checks


def test_option_checks_name_the_option() -> None:
    assert check_jpeg({"prob": 0.5, "quality": [30, 95]}, 3) == {"prob": 0.5, "quality": (30, 95)}
    assert check_dropout({"prob": 1, "holes": [0, 2], "size": [1, 8]}) == {
        "prob": 1.0, "holes": (0, 2), "size": (1, 8), "fill": 0.0}
    assert check_jpeg(None, 4) is None and check_dropout(None) is None
    bad = [
        (lambda: check_jpeg({"prob": 0.5, "qualty": [30, 95]}, 3), r"lq_jpeg: unknown key\(s\) qualty"),
        (lambda: check_jpeg({"prob": 0.5}, 3), r"lq_jpeg: missing key\(s\) quality"),
        (lambda: check_jpeg({"prob": 0.5, "quality": [95, 30]}, 3), r"lq_jpeg\.quality must be \[lo, hi\]"),
        (lambda: check_jpeg({"prob": 0.5, "quality": [0, 30]}, 3), r"lq_jpeg\.quality.*1 <= lo <= hi <= 100"),
        (lambda: check_jpeg({"prob": 1.5, "quality": [10, 30]}, 3), r"lq_jpeg\.prob must be a number in \[0, 1\]"),
        (lambda: check_jpeg({"prob": 0.5, "quality": [10, 30]}, 4), "lq_jpeg: JPEG holds 1 or 3 channels.*is 4"),
        (lambda: check_dropout({"prob": 0.5, "holes": [3, 1], "size": [1, 2]}), r"lq_dropout\.holes"),
        (lambda: check_dropout({"prob": 0.5, "holes": [1, 3], "size": [0, 2]}), r"lq_dropout\.size"),
        (lambda: check_dropout({"prob": 0.5, "holes": [1, 3], "size": [1, 2], "fill": 2}), r"lq_dropout\.fill"),
        (lambda: check_dropout({"prob": 0.5, "holes": [1, 3], "size": [1, 2], "color": 0}), "unknown key"),
        (lambda: check_dropout([1, 2]), "lq_dropout must be a mapping"),
    ]
    for call, message in bad:
        with pytest.raises(ValueError, match=message):
            call()
