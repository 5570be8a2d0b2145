"""N-band data end to end: .npy images and stacks, multi-band TIFF limits, channels / value_scale /
indices / center_crop / LR-only augmentations in the datasets, mixed-dtype collation, the S2 set."""

from __future__ import annotations

import logging
import pickle
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from data.data_loader import build_dataloader, build_loaders, collate_samples
from data.degradations import random_lq_degradations
from data.hr_image_dataset import HRImageDataset
from data.image_io import (
    ChannelCountError,
    ImageReadError,
    list_images,
    read_image,
    split_stack_item,
    stack_item_path,
    write_image,
)
from data.imresize import imresize
from data.paired_image_dataset import PairedImageDataset
from utils.options import OptionsError, load_options

ROOT = Path(__file__).resolve().parents[1]
S2 = ROOT / "datasets" / "s2_rgbn" / "REFERENCE_SCENES_RGBN_B04B03B02B08.npy"


@pytest.fixture(scope="module")
def s2() -> np.ndarray:
    return np.load(S2)  # (5, 101, 100, 4) float32: R, G, B, NIR


def block_up(img: np.ndarray, scale: int) -> np.ndarray:
    return np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)


def tiff_bytes(arr: np.ndarray, photometric: int = 1) -> bytes:
    """A minimal uncompressed little-endian TIFF of an HWC array (any band count): photometric
    MinIsBlack with the bands past the first as extra samples, as GDAL writes multi-band data."""
    h, w, c = arr.shape
    data = np.ascontiguousarray(arr).tobytes()
    bits = arr.dtype.itemsize * 8
    blobs = b""
    entries = []

    def tag(code: int, kind: int, values: list[int]) -> None:
        nonlocal blobs
        fmt = {3: "H", 4: "I"}[kind]
        packed = struct.pack("<" + fmt * len(values), *values)
        if len(packed) <= 4:
            value = packed.ljust(4, b"\0")
        else:
            value = struct.pack("<I", 8 + len(data) + len(blobs))
            blobs += packed
        entries.append(struct.pack("<HHI", code, kind, len(values)) + value)

    tag(256, 4, [w])
    tag(257, 4, [h])
    tag(258, 3, [bits] * c)
    tag(259, 3, [1])
    tag(262, 3, [photometric])
    tag(273, 4, [8])
    tag(277, 3, [c])
    tag(278, 4, [h])
    tag(279, 4, [len(data)])
    tag(284, 3, [1])
    if c > 1:
        tag(338, 3, [0] * (c - 1))
    ifd = struct.pack("<H", len(entries)) + b"".join(entries) + struct.pack("<I", 0)
    return b"II*\0" + struct.pack("<I", 8 + len(data) + len(blobs)) + data + blobs + ifd


# ---------------------------------------------------------------- .npy reading


def test_npy_hwc_and_chw_give_the_same_array(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).random((6, 7, 5)).astype(np.float32)
    np.save(tmp_path / "hwc.npy", arr)
    np.save(tmp_path / "chw.npy", arr.transpose(2, 0, 1))
    np.save(tmp_path / "hw.npy", arr[:, :, 0])
    hwc = read_image(tmp_path / "hwc.npy", keep_channels=True)
    chw = read_image(tmp_path / "chw.npy", keep_channels=True)
    np.testing.assert_array_equal(hwc, arr)
    np.testing.assert_array_equal(chw, arr)
    np.testing.assert_array_equal(read_image(tmp_path / "hw.npy", keep_channels=True), arr[:, :, :1])
    np.testing.assert_array_equal(read_image(tmp_path / "hw.npy"), np.repeat(arr[:, :, :1], 3, axis=2))
    with pytest.raises(ChannelCountError, match="has 5 channels.*keep_channels=True"):
        read_image(tmp_path / "hwc.npy")  # the 3-channel default never drops bands silently


def test_npy_channel_axis_tie_is_an_error(tmp_path: Path) -> None:
    np.save(tmp_path / "tie.npy", np.zeros((4, 9, 4), np.float32))
    with pytest.raises(ImageReadError, match=r"tie\.npy.*store it as HWC"):
        read_image(tmp_path / "tie.npy", keep_channels=True)


def test_npy_dtypes_and_value_scale(tmp_path: Path) -> None:
    raw = np.tile(np.array([0, 5000, 10000, 12000], dtype=np.uint16), (5, 6, 1))  # 5 x 6 x 4
    np.save(tmp_path / "refl.npy", raw)
    expected = np.tile(np.array([0.0, 0.5, 1.0, 1.2], dtype=np.float32), (5, 6, 1))
    np.testing.assert_allclose(read_image(tmp_path / "refl.npy", keep_channels=True, value_scale=10000),
                               expected, rtol=1e-7)
    np.testing.assert_allclose(read_image(tmp_path / "refl.npy", keep_channels=True), raw / 65535, rtol=1e-6)
    kept = read_image(tmp_path / "refl.npy", keep_channels=True, as_float=False)
    assert kept.dtype == np.uint16 and not kept.flags.writeable  # a view of the memory map
    np.save(tmp_path / "u8.npy", np.tile(np.array([255, 51, 0], np.uint8), (4, 4, 1)))
    np.testing.assert_array_equal(read_image(tmp_path / "u8.npy")[2, 1], np.array([1.0, 0.2, 0.0], np.float32))
    np.save(tmp_path / "f64.npy", np.array([[-0.5, 2.0]]))
    f64 = read_image(tmp_path / "f64.npy", keep_channels=True)
    assert f64.dtype == np.float32 and f64.ravel().tolist() == [-0.5, 2.0]  # floats kept as stored
    np.save(tmp_path / "i16.npy", np.zeros((3, 3), np.int16))
    with pytest.raises(ImageReadError, match=r"i16\.npy.*unsupported pixel type int16"):
        read_image(tmp_path / "i16.npy")
    with pytest.raises(ValueError, match="value_scale must be a positive number"):
        read_image(tmp_path / "refl.npy", keep_channels=True, value_scale=0)


class _Trap:
    """Unpickling this creates a file: proof that a loader did unpickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (open, (str(self.marker), "w"))


def test_pickled_npy_is_refused_and_never_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "unpickled.txt"
    obj = np.empty(1, dtype=object)
    obj[0] = _Trap(marker)
    np.save(tmp_path / "objects.npy", obj, allow_pickle=True)
    with open(tmp_path / "pickle.npy", "wb") as f:
        pickle.dump(_Trap(marker), f)
    with pytest.raises(ImageReadError, match=r"objects\.npy.*Python objects.*never unpickled"):
        read_image(tmp_path / "objects.npy")
    with pytest.raises(ImageReadError, match=r"pickle\.npy.*not a NumPy \.npy file"):
        read_image(tmp_path / "pickle.npy")
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        read_image(tmp_path / "empty.npy")
    np.save(tmp_path / "cut.npy", np.zeros((20, 20, 3), np.float32))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "cut.npy").read_bytes()[:300])
    with pytest.raises(ImageReadError, match=r"cut\.npy.*corrupt"):
        read_image(tmp_path / "cut.npy")
    assert not marker.exists()


# ---------------------------------------------------------------- stacks


def test_stacks_list_and_read_as_items(tmp_path: Path) -> None:
    stack = np.random.default_rng(1).random((3, 5, 6, 2)).astype(np.float32)
    np.save(tmp_path / "scenes.npy", stack)
    np.save(tmp_path / "chw_stack.npy", stack.transpose(0, 3, 1, 2))  # N x C x H x W
    np.save(tmp_path / "single.npy", stack[0])
    write_image(tmp_path / "a.png", np.zeros((5, 6, 3)))
    items = list_images(tmp_path)
    names = [p.name for p in items]
    assert names == ["a.png", "chw_stack_0", "chw_stack_1", "chw_stack_2",
                     "scenes_0", "scenes_1", "scenes_2", "single.npy"]
    assert items[5] == stack_item_path(tmp_path / "scenes.npy", 1) == tmp_path / "scenes.npy" / "scenes_1"
    assert items[5].stem == "scenes_1" and split_stack_item(items[5]) == (tmp_path / "scenes.npy", 1)
    assert split_stack_item(tmp_path / "a.png") is None
    for i in range(3):
        np.testing.assert_array_equal(read_image(items[4 + i], keep_channels=True), stack[i])
        np.testing.assert_array_equal(read_image(items[1 + i], keep_channels=True), stack[i])
    assert list_images(tmp_path / "scenes.npy") == items[4:7]  # a stack file is its own image list
    assert list_images(tmp_path / "single.npy") == [tmp_path / "single.npy"]
    with pytest.raises(ImageReadError, match=r"scenes\.npy.*stack of 3 images.*scenes\.npy/scenes_<i>"):
        read_image(tmp_path / "scenes.npy")
    with pytest.raises(ImageReadError, match="holds 3 images, there is no item 7"):
        read_image(tmp_path / "scenes.npy" / "scenes_7")
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "scenes.npy" / "other_1")


# ---------------------------------------------------------------- TIFF and writing


def test_multiband_tiff_beyond_opencv_goes_through_tifffile(tmp_path: Path) -> None:
    five = np.random.default_rng(2).integers(0, 60000, (4, 5, 5), dtype=np.uint16)
    # a hand-made 5-band TIFF (OpenCV refuses it): read with every band, in file order
    (tmp_path / "five.tif").write_bytes(tiff_bytes(five))
    np.testing.assert_array_equal(read_image(tmp_path / "five.tif", keep_channels=True, as_float=False), five)
    np.testing.assert_allclose(read_image(tmp_path / "five.tif", keep_channels=True), five / 65535.0, rtol=1e-6)
    # a GDAL-style 4-band TIFF (gray + 3 extra samples): OpenCV alone would decode one gray band
    (tmp_path / "rgbn.tif").write_bytes(tiff_bytes(five[:, :, :4]))
    assert cv2.imdecode(np.fromfile(str(tmp_path / "rgbn.tif"), np.uint8), cv2.IMREAD_UNCHANGED).ndim == 2
    np.testing.assert_array_equal(read_image(tmp_path / "rgbn.tif", True, as_float=False), five[:, :, :4])
    # a single-band one still goes through OpenCV
    (tmp_path / "one.tif").write_bytes(tiff_bytes(five[:, :, :1]))
    np.testing.assert_array_equal(read_image(tmp_path / "one.tif", True, as_float=False), five[:, :, :1])
    # writing N bands: 16-bit levels, read back exactly; PNG still refuses them
    write_image(tmp_path / "out.tif", five / 65535.0, bit_depth=16)
    np.testing.assert_array_equal(read_image(tmp_path / "out.tif", keep_channels=True, as_float=False), five)
    with pytest.raises(ValueError, match=r"1, 3 or 4 channels.*got 5.*\.tif or \.npy"):
        write_image(tmp_path / "five.png", five / 65535.0)
    # a corrupt multi-band TIFF names the file
    (tmp_path / "bad.tif").write_bytes(tiff_bytes(five)[:200])
    with pytest.raises(ImageReadError, match=r"bad\.tif"):
        read_image(tmp_path / "bad.tif", keep_channels=True)


def test_four_channel_tiff_round_trip_keeps_file_order(tmp_path: Path) -> None:
    raw = np.random.default_rng(3).integers(0, 65536, (5, 6, 4), dtype=np.uint16)
    write_image(tmp_path / "x.tif", raw / 65535.0, bit_depth=16)
    back = read_image(tmp_path / "x.tif", keep_channels=True, as_float=False)
    np.testing.assert_array_equal(back, raw)


def test_write_npy_round_trip_is_exact_for_any_band_count(tmp_path: Path) -> None:
    img = np.random.default_rng(4).normal(0.5, 1.0, (9, 8, 7)).astype(np.float32)  # beyond [0, 1]
    write_image(tmp_path / "out" / "x.npy", img)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "x.npy"), img)
    back = read_image(tmp_path / "out" / "x.npy", keep_channels=True)
    np.testing.assert_array_equal(back, img)
    assert type(back) is np.ndarray and back.flags.writeable  # not a view of the memory map
    write_image(tmp_path / "g.npy", img[:, :, 0].astype(np.float64))
    stored = np.load(tmp_path / "g.npy")
    assert stored.dtype == np.float32 and stored.shape == (9, 8, 1)
    with pytest.raises(ValueError, match=r"got 5; write a \.tif or \.npy file"):
        write_image(tmp_path / "x.png", img[:, :, :5])
    with pytest.raises(ValueError, match="got 2"):
        write_image(tmp_path / "x.png", img[:, :, :2])


# ---------------------------------------------------------------- the shipped Sentinel-2 set


def test_s2_val_sample_is_the_scene_with_its_nir_band(s2: np.ndarray) -> None:
    ds = HRImageDataset(str(S2), scale=4, phase="val", channels=4, indices=[4])
    assert len(ds) == 1
    s = ds[0]
    gt = s["gt"].numpy().transpose(1, 2, 0)
    assert s["gt"].shape == (4, 100, 100) and s["lq"].shape == (4, 25, 25)
    np.testing.assert_array_equal(gt, s2[4, :100, :100])  # mod-crop of 101 x 100 for scale 4
    np.testing.assert_array_equal(gt[:, :, 3], s2[4, :100, :100, 3])  # NIR = B08 as channel 3
    np.testing.assert_allclose(s["lq"].numpy().transpose(1, 2, 0),
                               np.clip(imresize(s2[4, :100, :100], 0.25), 0, 1), atol=1e-7)
    assert s["gt_path"] == s["lq_path"] == str(S2 / "REFERENCE_SCENES_RGBN_B04B03B02B08_4")
    assert Path(s["gt_path"]).stem == "REFERENCE_SCENES_RGBN_B04B03B02B08_4"  # saved-output name


def test_s2_train_patches_come_from_the_selected_scenes(s2: np.ndarray) -> None:
    ds = HRImageDataset(str(S2), scale=4, gt_size=32, channels=4, indices=[0, 1, 2, 3],
                        use_hflip=False, use_rot=False)
    assert [p.name for p in ds.gt_paths] == [f"REFERENCE_SCENES_RGBN_B04B03B02B08_{i}" for i in range(4)]
    for index in range(4):
        s = ds[(index, 100 + index)]
        assert s["gt"].shape == (4, 32, 32) and s["lq"].shape == (4, 8, 8) and s["gt"].dtype == torch.float32
        gt = s["gt"].numpy().transpose(1, 2, 0)
        # recover the crop position by search: found in scene `index` and nowhere else
        hits = [(k, y, x) for k in range(5) for y in range(101 - 31) for x in range(100 - 31)
                if s2[k, y, x, 3] == gt[0, 0, 3] and np.array_equal(s2[k, y : y + 32, x : x + 32], gt)]
        assert len(hits) == 1 and hits[0][0] == index
        np.testing.assert_allclose(s["lq"].numpy().transpose(1, 2, 0), np.clip(imresize(gt, 0.25), 0, 1), atol=1e-7)
    with pytest.raises(ValueError, match=r"indices \[5\] out of range.*holds 5 images"):
        HRImageDataset(str(S2), scale=4, phase="val", channels=4, indices=[0, 5])
    with pytest.raises(ValueError, match="without repeats"):
        HRImageDataset(str(S2), scale=4, phase="val", channels=4, indices=[1, 1])


def test_s2_with_three_channels_is_a_clear_error_even_in_training(caplog) -> None:
    ds = HRImageDataset(str(S2), scale=4, gt_size=32)  # channels defaults to 3
    message = "has 4 channels but the dataset's channels is 3; set channels: 4"
    with caplog.at_level(logging.WARNING, logger="upforge"), pytest.raises(ChannelCountError, match=message):
        ds[0]  # not skipped as an unreadable file
    assert ds.num_skipped == 0 and not caplog.records


def test_dataset_pickles_for_worker_processes() -> None:
    ds = HRImageDataset(str(S2), scale=4, gt_size=16, channels=4,
                        lq_dropout={"prob": 1, "holes": [1, 2], "size": [1, 2]})
    copy = pickle.loads(pickle.dumps(ds))
    a, b = ds[(2, 9)], copy[(2, 9)]
    assert torch.equal(a["gt"], b["gt"]) and torch.equal(a["lq"], b["lq"])


S2_YAML = """
name: s2
scale: 4
manual_seed: 1
device: cpu
datasets:
  train:
    type: HRImageDataset
    dataroot_gt: {s2}
    channels: 4
    indices: [0, 1, 2, 3]
    gt_size: 32
    batch_size_per_gpu: 2
    num_worker_per_gpu: {workers}
  val:
    name: s2val
    type: HRImageDataset
    dataroot_gt: {s2}
    channels: 4
    indices: [4]
    num_worker_per_gpu: 0
network_g: {{type: EDSR, num_in_ch: 4, num_out_ch: 4, num_feat: 8, num_block: 1}}
path: {{experiments_root: {tmp}/exp, results_root: {tmp}/results}}
train:
  total_iter: 4
  optim_g: {{type: Adam, lr: 1.0e-3}}
  losses:
    - {{type: L1Loss, loss_weight: 1.0}}
"""


@pytest.mark.parametrize("workers", [0, 2])
def test_build_loaders_on_s2_gives_four_channel_batches(tmp_path: Path, workers: int) -> None:
    path = tmp_path / "s2.yml"
    path.write_text(S2_YAML.format(s2=S2, tmp=tmp_path, workers=workers))
    opt = load_options(path)
    stream, vals = build_loaders(opt, torch.device("cpu"))
    batch = stream.next()
    assert batch["gt"].shape == (2, 4, 32, 32) and batch["lq"].shape == (2, 4, 8, 8)
    assert batch["gt"].dtype == torch.float32 and len(batch["gt_path"]) == 2
    assert all(Path(p).parent == S2 for p in batch["gt_path"])
    val = next(iter(vals["s2val"]))
    assert val["gt"].shape == (1, 4, 100, 100) and val["gt_path"] == [str(S2 / f"{S2.stem}_4")]


def test_option_file_checks_the_new_keys(tmp_path: Path) -> None:
    path = tmp_path / "s2.yml"
    path.write_text(S2_YAML.format(s2=S2, tmp=tmp_path, workers=0))
    with pytest.raises(OptionsError, match=r"lq_jpeg\.qualty"):
        load_options(path, ["datasets.train.lq_jpeg={prob: 1, qualty: [10, 20]}"])
    with pytest.raises(OptionsError, match="indices"):
        load_options(path, ["datasets.train.indices=all"])
    opt = load_options(path, ["datasets.train.lq_dropout={prob: 0.5, holes: [1, 3], size: [2, 4]}",
                              "datasets.train.value_scale=1"])
    assert opt.datasets["train"]["lq_dropout"] == {"prob": 0.5, "holes": (1, 3), "size": (2, 4)}
    assert build_loaders(opt, torch.device("cpu"))[0].next()["lq"].shape == (2, 4, 8, 8)
    with pytest.raises(OptionsError, match=r"lq_jpeg: JPEG holds 1 or 3 channels.*is 4"):  # found by --check
        load_options(path, ["datasets.train.lq_jpeg={prob: 1, quality: [10, 20]}"])
    with pytest.raises(ValueError, match=r"lq_jpeg: JPEG holds 1 or 3 channels.*is 4"):
        HRImageDataset(str(S2), scale=4, gt_size=32, channels=4, lq_jpeg={"prob": 1, "quality": [10, 20]})


# ---------------------------------------------------------------- channels on image files


def test_channels_option_on_image_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    rgba = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)  # BGRA as OpenCV writes it
    gray = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    (tmp_path / "rgba").mkdir()
    (tmp_path / "gray").mkdir()
    cv2.imwrite(str(tmp_path / "rgba" / "a.png"), rgba)
    cv2.imwrite(str(tmp_path / "gray" / "g.png"), gray)
    rgb_of_rgba = HRImageDataset(str(tmp_path / "rgba"), scale=2, phase="val")[0]["gt"]
    np.testing.assert_array_equal((rgb_of_rgba * 255).round().byte().numpy(), rgba[:, :, [2, 1, 0]].transpose(2, 0, 1))
    four = HRImageDataset(str(tmp_path / "rgba"), scale=2, phase="val", channels=4)[0]["gt"]
    np.testing.assert_array_equal((four * 255).round().byte().numpy(), rgba[:, :, [2, 1, 0, 3]].transpose(2, 0, 1))
    one = HRImageDataset(str(tmp_path / "gray"), scale=2, phase="val", channels=1)[0]["gt"]
    np.testing.assert_array_equal((one[0] * 255).round().byte().numpy(), gray)
    three = HRImageDataset(str(tmp_path / "gray"), scale=2, phase="val")[0]["gt"]
    assert three.shape == (3, 8, 8) and torch.equal(three[0], three[2])
    with pytest.raises(ChannelCountError, match=r"g\.png' has 1 channels but the dataset's channels is 4"):
        HRImageDataset(str(tmp_path / "gray"), scale=2, phase="val", channels=4)[0]
    with pytest.raises(ValueError, match="channels must be a positive integer"):
        HRImageDataset(str(tmp_path / "gray"), scale=2, phase="val", channels=0)


def test_value_scale_in_a_dataset(tmp_path: Path) -> None:
    raw = np.random.default_rng(6).integers(0, 10001, (8, 8, 4), dtype=np.uint16)
    np.save(tmp_path / "refl.npy", raw)
    s = HRImageDataset(str(tmp_path), scale=2, phase="val", channels=4, value_scale=10000)[0]
    np.testing.assert_allclose(s["gt"].numpy().transpose(1, 2, 0), raw / 10000, rtol=1e-6)
    with pytest.raises(ValueError, match="value_scale must be a positive number"):
        HRImageDataset(str(tmp_path), scale=2, phase="val", channels=4, value_scale=-1.0)


# ---------------------------------------------------------------- paired stacks


def write_pair_stacks(tmp_path: Path, gt_name: str, lq_name: str, n: int = 3, scale: int = 2) -> np.ndarray:
    lq = np.random.default_rng(7).random((n, 6, 7, 5)).astype(np.float32)
    (tmp_path / "gt").mkdir(exist_ok=True)
    (tmp_path / "lq").mkdir(exist_ok=True)
    np.save(tmp_path / "gt" / gt_name, np.stack([block_up(x, scale) for x in lq]))
    np.save(tmp_path / "lq" / lq_name, lq.transpose(0, 3, 1, 2))  # the lq stack stored N x C x H x W
    return lq


def test_paired_stack_files_pair_item_by_item(tmp_path: Path) -> None:
    lq = write_pair_stacks(tmp_path, "hr.npy", "lr_x2.npy")
    gt_root, lq_root = str(tmp_path / "gt" / "hr.npy"), str(tmp_path / "lq" / "lr_x2.npy")
    val = PairedImageDataset(gt_root, lq_root, scale=2, phase="val", channels=5, indices=[0, 2])
    assert len(val) == 2
    s = val[1]
    np.testing.assert_array_equal(s["lq"].numpy().transpose(1, 2, 0), lq[2])
    np.testing.assert_array_equal(s["gt"].numpy().transpose(1, 2, 0), block_up(lq[2], 2))
    assert s["gt_path"] == str(Path(gt_root) / "hr_2") and s["lq_path"] == str(Path(lq_root) / "lr_x2_2")
    train = PairedImageDataset(gt_root, lq_root, scale=2, phase="train", gt_size=4, channels=5)
    for seed in range(5):
        t = train[(1, seed)]
        gt_p, lq_p = t["gt"].numpy().transpose(1, 2, 0), t["lq"].numpy().transpose(1, 2, 0)
        assert gt_p.shape == (4, 4, 5)
        np.testing.assert_array_equal(gt_p, block_up(lq_p, 2))
    np.save(tmp_path / "lq" / "short.npy", lq[:2])
    with pytest.raises(ValueError, match="holds 3 images but lq.*holds 2"):
        PairedImageDataset(gt_root, str(tmp_path / "lq" / "short.npy"), scale=2, phase="val", channels=5)


def test_paired_stack_folders_pair_by_item_name(tmp_path: Path) -> None:
    lq = write_pair_stacks(tmp_path, "scenes.npy", "scenes.npy")
    ds = PairedImageDataset(str(tmp_path / "gt"), str(tmp_path / "lq"), scale=2, phase="val", channels=5)
    assert [p.name for p in ds.lq_paths] == ["scenes_0", "scenes_1", "scenes_2"]
    np.testing.assert_array_equal(ds[2]["lq"].numpy().transpose(1, 2, 0), lq[2])
    with pytest.raises(ChannelCountError, match=r"scenes_0' has 5 channels but the dataset's channels is 3"):
        PairedImageDataset(str(tmp_path / "gt"), str(tmp_path / "lq"), scale=2, phase="val")[0]


# ---------------------------------------------------------------- center_crop


def test_center_crop_is_the_aligned_centre(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    lq = rng.random((13, 11, 3)).astype(np.float32)
    gt = rng.random((27, 23, 3)).astype(np.float32)  # 26 x 22 after the mod-crop for scale 2
    np.save(tmp_path / "gt.npy", gt)
    np.save(tmp_path / "lq.npy", lq)
    s = PairedImageDataset(str(tmp_path / "gt.npy"), str(tmp_path / "lq.npy"), scale=2, phase="val",
                           center_crop=8)[0]
    # lq corner ((13 - 4) // 2, (11 - 4) // 2) = (4, 3); gt corner (8, 6)
    np.testing.assert_array_equal(s["lq"].numpy().transpose(1, 2, 0), lq[4:8, 3:7])
    np.testing.assert_array_equal(s["gt"].numpy().transpose(1, 2, 0), gt[8:16, 6:14])
    hr = HRImageDataset(str(tmp_path / "gt.npy"), scale=2, phase="val", center_crop=8)[0]
    np.testing.assert_array_equal(hr["gt"].numpy().transpose(1, 2, 0), gt[8:16, 6:14])
    np.testing.assert_allclose(hr["lq"].numpy().transpose(1, 2, 0), np.clip(imresize(gt[8:16, 6:14], 0.5), 0, 1),
                               atol=1e-7)
    with pytest.raises(ValueError, match=r"gt\.npy' is 26x22 \(HxW\), smaller than center_crop 24x24"):
        HRImageDataset(str(tmp_path / "gt.npy"), scale=2, phase="val", center_crop=24)[0]
    with pytest.raises(ValueError, match="center_crop must be a positive multiple of scale 2"):
        HRImageDataset(str(tmp_path / "gt.npy"), scale=2, phase="val", center_crop=7)
    with pytest.raises(ValueError, match="center_crop is for validation"):
        HRImageDataset(str(tmp_path / "gt.npy"), scale=2, phase="train", gt_size=8, center_crop=8)


# ---------------------------------------------------------------- LR-only augmentations in a dataset


def test_lq_degradations_apply_to_the_lq_patch_after_crop_and_flips(tmp_path: Path) -> None:
    lq = np.random.default_rng(9).integers(1, 256, (12, 12, 3), dtype=np.uint8)
    (tmp_path / "gt").mkdir()
    (tmp_path / "lq").mkdir()
    cv2.imwrite(str(tmp_path / "lq" / "a.png"), lq[:, :, ::-1])
    cv2.imwrite(str(tmp_path / "gt" / "a.png"), block_up(lq, 2)[:, :, ::-1])
    jpeg = {"prob": 0.7, "quality": [5, 40]}
    dropout = {"prob": 0.8, "holes": [1, 3], "size": [2, 4], "fill": 0.0}
    kwargs = {"scale": 2, "phase": "train", "gt_size": 16}
    plain = PairedImageDataset(str(tmp_path / "gt"), str(tmp_path / "lq"), **kwargs)
    degraded = PairedImageDataset(str(tmp_path / "gt"), str(tmp_path / "lq"), **kwargs,
                                  lq_jpeg=jpeg, lq_dropout=dropout)
    changed = 0
    for seed in range(12):
        a, b = plain[(0, seed)], degraded[(0, seed)]
        assert torch.equal(a["gt"], b["gt"]) and b["lq"].dtype == torch.uint8
        # the reference: the same seed's crop (2 integers) and flips (3 floats), then the degradations
        rng = np.random.default_rng(seed)
        rng.integers(0, 5)
        rng.integers(0, 5)
        rng.random(3)
        ref = random_lq_degradations(a["lq"].numpy().transpose(1, 2, 0), rng,
                                     {"prob": 0.7, "quality": (5, 40)},
                                     {"prob": 0.8, "holes": (1, 3), "size": (2, 4), "fill": 0.0})
        np.testing.assert_array_equal(b["lq"].numpy().transpose(1, 2, 0), ref)
        changed += not torch.equal(a["lq"], b["lq"])
    assert changed >= 6
    with pytest.raises(ValueError, match="training augmentations, but phase is 'val'"):
        PairedImageDataset(str(tmp_path / "gt"), str(tmp_path / "lq"), scale=2, phase="val", lq_jpeg=jpeg)


# ---------------------------------------------------------------- collation


def test_collate_puts_mixed_dtypes_on_one_scale() -> None:
    u8 = {"gt": torch.full((3, 2, 2), 255, dtype=torch.uint8), "gt_path": "a.png"}
    f32 = {"gt": torch.ones((3, 2, 2)), "gt_path": "b.png"}
    batch = collate_samples([u8, f32])
    assert batch["gt"].dtype == torch.float32 and (batch["gt"] == 1.0).all()
    assert batch["gt_path"] == ["a.png", "b.png"]
    both = collate_samples([u8, {"gt": torch.zeros((3, 2, 2), dtype=torch.uint8), "gt_path": "c.png"}])
    assert both["gt"].dtype == torch.uint8 and both["gt"][0].max() == 255


def test_8_and_16_bit_files_in_one_training_batch_agree(tmp_path: Path) -> None:
    img = np.full((8, 8, 3), 255, np.uint8)
    (tmp_path / "hr").mkdir()
    cv2.imwrite(str(tmp_path / "hr" / "a8.png"), img)
    cv2.imwrite(str(tmp_path / "hr" / "b16.png"), img.astype(np.uint16) * 257)
    ds = PairedImageDataset(str(tmp_path / "hr"), str(tmp_path / "hr"), scale=1, phase="train", gt_size=4)
    assert {ds[(i, 0)]["gt"].dtype for i in range(2)} == {torch.uint8, torch.float32}
    loader = build_dataloader(ds, "train", 2, 0, seed=0, persistent_workers=False)
    loader.batch_sampler.set_epoch(0)
    batch = next(iter(loader))
    assert batch["gt"].dtype == torch.float32 and (batch["gt"] == 1.0).all()
