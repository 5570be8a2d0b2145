"""Reading data: nothing lost, nothing silent (docs/reliability.md, the data rows).

Mixed 8/16-bit training folders reach the network on the [0, 1] scale; corrupt validation
images, too-small training images and a dataroot that is a file are found when the dataset is
built; an error inside a DataLoader worker names the file and the cause, without torch's wrapper.
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data import image_io
from data.data_loader import WorkerError, build_dataloader, collate_samples, unwrap_worker_error
from data.hr_image_dataset import HRImageDataset
from data.image_io import ChannelCountError, ImageReadError, header_size, read_image, stack_item_path, tensor_to_float
from data.paired_image_dataset import PairedImageDataset, SizeProbe
from data.prefetcher import CPUPrefetcher
from tests.conftest import small_train_yaml

# constant-colour files, so every crop, flip and bicubic downscale of one keeps its value:
# name → (stored level, bit depth); the hand-computed reference is level / (2**bits - 1)
LEVELS = {"a8.png": (200, 8), "b16.png": (40000, 16), "c8.png": (51, 8), "d16.png": (1000, 16)}


def write_level(path: Path, level: int, bits: int, hw: tuple[int, int] = (24, 24)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((*hw, 3), level, np.uint8 if bits == 8 else np.uint16))


def mixed_depth_folder(folder: Path) -> dict[str, float]:
    """The LEVELS files; returns name → expected value on the [0, 1] scale."""
    for name, (level, bits) in LEVELS.items():
        write_level(folder / name, level, bits)
    return {name: level / (255.0 if bits == 8 else 65535.0) for name, (level, bits) in LEVELS.items()}


def rgb_folder(folder: Path, sizes: list[tuple[int, int]]) -> list[Path]:
    """8-bit random RGB PNGs img00.png, img01.png, ... of the given (H, W) sizes."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"img{i:02d}.png" for i in range(len(sizes))]
    for path, (h, w) in zip(paths, sizes):
        assert cv2.imwrite(str(path), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return paths


def epoch_batches(loader: DataLoader) -> list[dict]:
    loader.batch_sampler.set_epoch(0)
    prefetcher = CPUPrefetcher(loader, torch.device("cpu"))  # what the network is fed
    batches = []
    while (batch := prefetcher.next()) is not None:
        batches.append(batch)
    return batches


# ---------------------------------------------------------------- mixed bit depths


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("kind", ["hr", "paired"])
def test_mixed_bit_depths_reach_the_network_on_the_unit_scale(tmp_path: Path, workers: int, kind: str) -> None:
    expected = mixed_depth_folder(tmp_path / "hr")
    if kind == "hr":
        ds = HRImageDataset(str(tmp_path / "hr"), scale=2, gt_size=8)
    else:
        ds = PairedImageDataset(str(tmp_path / "hr"), str(tmp_path / "hr"), scale=1, gt_size=8)
    loader = build_dataloader(ds, "train", 4, workers, seed=0, persistent_workers=False)
    batches = epoch_batches(loader)
    assert len(batches) == 1 and len(batches[0]["gt_path"]) == 4  # one batch, both depths in it
    batch = batches[0]
    for key in ("gt", "lq"):
        assert batch[key].dtype == torch.float32
        for i, path in enumerate(batch["gt_path"]):
            want = torch.full_like(batch[key][i], expected[Path(path).name])
            torch.testing.assert_close(batch[key][i], want, atol=1e-6, rtol=0)


def test_uniform_8bit_batches_keep_the_uint8_fast_path(tmp_path: Path) -> None:
    for name in ("a8.png", "c8.png"):
        write_level(tmp_path / "hr" / name, LEVELS[name][0], 8)
    ds = PairedImageDataset(str(tmp_path / "hr"), str(tmp_path / "hr"), scale=1, gt_size=8)
    loader = build_dataloader(ds, "train", 2, 0, seed=0, persistent_workers=False)
    loader.batch_sampler.set_epoch(0)
    raw = next(iter(loader))
    assert raw["gt"].dtype == torch.uint8  # travels as 8-bit levels to the device ...
    fed = epoch_batches(loader)[0]  # ... and becomes float there
    assert fed["gt"].dtype == torch.float32
    torch.testing.assert_close(fed["gt"].unique(), torch.tensor([51 / 255, 200 / 255]), atol=1e-7, rtol=0)


def test_16bit_tensors_are_divided_by_their_own_peak() -> None:
    u16 = torch.tensor([0, 257, 65535], dtype=torch.uint16)
    torch.testing.assert_close(tensor_to_float(u16), torch.tensor([0.0, 1 / 255, 1.0]))
    batch = collate_samples([{"gt": torch.tensor([255], dtype=torch.uint8)}, {"gt": torch.tensor([65535],
                                                                                           dtype=torch.uint16)}])
    assert batch["gt"].tolist() == [[1.0], [1.0]]


@pytest.mark.parametrize("workers", [0, 2])
def test_training_on_mixed_bit_depths_has_a_sane_loss(tmp_path: Path, workers: int) -> None:
    from train import train

    rng = np.random.default_rng(0)
    for i in range(6):  # smooth random images, 8-bit and 16-bit alternately
        img = cv2.resize(rng.random((6, 6, 3)), (48, 48), interpolation=cv2.INTER_CUBIC).clip(0, 1)
        bits = 16 if i % 2 else 8
        (tmp_path / "hr").mkdir(exist_ok=True)
        assert cv2.imwrite(str(tmp_path / "hr" / f"img{i}.png"),
                           np.round(img * (2**bits - 1)).astype(np.uint8 if bits == 8 else np.uint16))
    path = small_train_yaml(tmp_path, tmp_path / "hr")
    result = train(path, [f"datasets.train.num_worker_per_gpu={workers}", "datasets.train.batch_size_per_gpu=4"])
    log = next(Path(result["experiment_dir"]).glob("train_*.log")).read_text()
    losses = [float(v) for v in re.findall(r"\bl1 ([0-9.e+-]+)", log)]
    assert losses and max(losses) < 1.0  # 8-bit targets left in 0-255 give an L1 near 73
    assert result["metrics"]["tinyval"]["psnr"] > 10


# ---------------------------------------------------------------- corrupt validation / test images


@pytest.mark.parametrize("phase", ["val", "test"])
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_validation_image_is_an_error_when_the_set_is_built(tmp_path: Path, phase: str,
                                                                    damage: str) -> None:
    paths = rgb_folder(tmp_path / "hr", [(16, 16)] * 3)
    data = paths[1].read_bytes()
    paths[1].write_bytes(b"garbage" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=re.escape(str(paths[1]))):
        HRImageDataset(str(tmp_path / "hr"), scale=2, phase=phase)  # not at the first validation
    with pytest.raises(ImageReadError, match=re.escape(str(paths[1]))):
        PairedImageDataset(str(tmp_path / "hr"), str(tmp_path / "hr"), scale=1, phase=phase)
    # a training set still builds, and skips the file with a warning when it comes to it
    train = HRImageDataset(str(tmp_path / "hr"), scale=2, gt_size=8)
    assert train[(1, 0)]["gt_path"] == str(paths[2]) and train.num_skipped == 1


def test_validation_problems_beyond_decoding_are_found_at_build(tmp_path: Path) -> None:
    rgb_folder(tmp_path / "gt", [(16, 16), (16, 16)])
    rgb_folder(tmp_path / "lq", [(8, 8), (6, 8)])  # img01: 6 * 2 rows, not 16
    with pytest.raises(ValueError, match=r"size mismatch.*img01\.png"):
        PairedImageDataset(str(tmp_path / "gt"), str(tmp_path / "lq"), scale=2, phase="val")
    with pytest.raises(ValueError, match=r"img00\.png' is 16x16 \(HxW\), smaller than center_crop 32x32"):
        HRImageDataset(str(tmp_path / "gt"), scale=2, phase="val", center_crop=32)
    with pytest.raises(ChannelCountError, match=r"img00\.png' has 3 channels"):
        HRImageDataset(str(tmp_path / "gt"), scale=2, phase="val", channels=4)


# ---------------------------------------------------------------- gt_size larger than the images


def test_images_smaller_than_gt_size_are_named_at_build(tmp_path: Path) -> None:
    paths = rgb_folder(tmp_path / "hr", [(32, 32), (32, 20), (40, 40), (12, 50)])
    with pytest.raises(ValueError) as info:
        HRImageDataset(str(tmp_path / "hr"), scale=2, gt_size=24)
    message = str(info.value)
    assert "2 of 4 training images are too small for gt_size 24" in message
    assert f"'{paths[1]}' is 32x20 (HxW)" in message and f"'{paths[3]}' is 12x50 (HxW)" in message
    assert str(paths[0]) not in message and str(paths[2]) not in message
    HRImageDataset(str(tmp_path / "hr"), scale=2, gt_size=12)  # every image holds a 12 x 12 patch


def test_a_patch_size_schedule_is_checked_at_its_largest_value(tmp_path: Path) -> None:
    paths = rgb_folder(tmp_path / "hr", [(32, 32), (20, 32)])
    with pytest.raises(ValueError, match=rf"too small for gt_size 24 \(the largest value of its schedule\): "
                                         rf"'{re.escape(str(paths[1]))}' is 20x32"):
        HRImageDataset(str(tmp_path / "hr"), scale=2, gt_size={0: 16, 100: 24, 200: 8})


def test_gt_size_set_during_the_run_is_checked_against_the_images(tmp_path: Path) -> None:
    paths = rgb_folder(tmp_path / "hr", [(32, 32), (20, 32)])
    ds = HRImageDataset(str(tmp_path / "hr"), scale=2, gt_size=16)
    ds.check_knob("gt_size", 20)
    with pytest.raises(ValueError, match=rf"gt_size 22 is too large.*'{re.escape(str(paths[1]))}' is 20x32"):
        ds.check_knob("gt_size", 22)


def test_paired_sets_check_the_lq_size_against_gt_size_over_scale(tmp_path: Path) -> None:
    rgb_folder(tmp_path / "gt", [(32, 32), (24, 32)])
    lq = rgb_folder(tmp_path / "lq", [(8, 8), (6, 8)])
    with pytest.raises(ValueError, match=rf"1 of 2 .*gt_size 28: lq '{re.escape(str(lq[1]))}' is 6x8 \(HxW\), "
                                         r"which allows gt_size up to 24 at scale 4"):
        PairedImageDataset(str(tmp_path / "gt"), str(tmp_path / "lq"), scale=4, gt_size=28)
    PairedImageDataset(str(tmp_path / "gt"), str(tmp_path / "lq"), scale=4, gt_size=24)
    rgb_folder(tmp_path / "lq", [(8, 8), (5, 8)])  # a training pair that cannot match is found at build too
    with pytest.raises(ValueError, match=r"size mismatch at scale 4.*img01\.png"):
        PairedImageDataset(str(tmp_path / "gt"), str(tmp_path / "lq"), scale=4, gt_size=16)


def test_training_sizes_come_from_headers_not_decodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (30, 44, 3), dtype=np.uint8)
    files = {"a.png": [], "b.jpg": [], "c.jpg": [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], "d.bmp": [], "e.tif": []}
    (tmp_path / "hr").mkdir()
    for name, params in files.items():
        cv2.imencode(Path(name).suffix, img, params)[1].tofile(str(tmp_path / "hr" / name))
    np.save(tmp_path / "hr" / "f.npy", rng.random((4, 30, 44), dtype=np.float32))  # CHW
    np.save(tmp_path / "stack.npy", rng.random((3, 30, 44, 5), dtype=np.float32))
    for path in sorted((tmp_path / "hr").iterdir()):
        assert header_size(path) == read_image(path, keep_channels=True).shape[:2] == (30, 44), path.name
    assert header_size(stack_item_path(tmp_path / "stack.npy", 2)) == (30, 44)
    assert header_size(tmp_path / "hr" / "missing.png") is None

    def no_decoding(*args: object) -> None:
        raise AssertionError("an image was decoded to learn its size")

    monkeypatch.setattr(image_io.cv2, "imdecode", no_decoding)
    ds = HRImageDataset(str(tmp_path / "hr"), scale=2, gt_size=30, channels=4)  # checks sizes, channels later
    assert len(ds) == 6
    with pytest.raises(ValueError, match=r"6 of 6 training images are too small for gt_size 32"):
        HRImageDataset(str(tmp_path / "hr"), scale=2, gt_size=32)


def test_formats_without_a_readable_header_are_decoded_up_to_a_limit(tmp_path: Path) -> None:
    for i in range(3):
        cv2.imencode(".webp", np.zeros((20, 30, 3), np.uint8))[1].tofile(str(tmp_path / f"w{i}.webp"))
    assert header_size(tmp_path / "w0.webp") is None
    with pytest.raises(ValueError, match=r"3 of 3 training images are too small.*w0\.webp' is 20x30"):
        HRImageDataset(str(tmp_path), scale=2, gt_size=24)  # decoded: 3 is under the limit
    ds = HRImageDataset(str(tmp_path), scale=2, gt_size=8)
    probe = SizeProbe(ds, decode_limit=1)
    assert [probe(p) for p in ds.gt_paths] == [(20, 30), None, None] and probe.unchecked == 2


def test_lmdb_sizes_come_from_the_stored_headers(tmp_path: Path) -> None:
    pytest.importorskip("lmdb")
    from scripts.create_lmdb import create_lmdb

    rgb_folder(tmp_path / "gt", [(32, 32), (16, 24)])
    create_lmdb(tmp_path / "gt", tmp_path / "gt.lmdb")
    ds = HRImageDataset(str(tmp_path / "gt.lmdb"), scale=2, gt_size=16, io_backend={"type": "lmdb"})
    assert [ds.header_size(p) for p in ds.gt_paths] == [(32, 32), (16, 24)]
    with pytest.raises(ValueError, match=r"gt\.lmdb/img01\.png' is 16x24 \(HxW\)"):
        HRImageDataset(str(tmp_path / "gt.lmdb"), scale=2, gt_size=20, io_backend={"type": "lmdb"})


# ---------------------------------------------------------------- a dataroot that is a file


def test_a_dataroot_that_is_a_file_names_the_option_and_the_path(tmp_path: Path) -> None:
    paths = rgb_folder(tmp_path / "hr", [(16, 16)])
    with pytest.raises(NotADirectoryError, match=rf"HRImageDataset: dataroot_gt '{re.escape(str(paths[0]))}' "
                                                 "is a file, not a folder of images"):
        HRImageDataset(str(paths[0]), scale=2, gt_size=8)
    notes = tmp_path / "notes.txt"
    notes.write_text("not images")
    with pytest.raises(NotADirectoryError, match=rf"PairedImageDataset: dataroot_lq '{re.escape(str(notes))}'"):
        PairedImageDataset(str(tmp_path / "hr"), str(notes), scale=1, phase="val")
    pickled = tmp_path / "objects.npy"
    pickled.write_bytes(b"\x80\x04 a pickle, never loaded")
    with pytest.raises(ValueError, match=r"dataroot_gt '.*objects\.npy' is not a usable \.npy file"):
        HRImageDataset(str(pickled), scale=2, phase="val")
    with pytest.raises(FileNotFoundError, match=r"HRImageDataset: dataroot_gt '.*nowhere' does not exist"):
        HRImageDataset(str(tmp_path / "nowhere"), scale=2, phase="val")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"dataroot_gt: image folder '.*empty' contains no images"):
        HRImageDataset(str(tmp_path / "empty"), scale=2, phase="val")
    (tmp_path / "set.lmdb").mkdir()
    (tmp_path / "set.lmdb" / "data.mdb").write_bytes(b"")
    with pytest.raises(ValueError, match=r"set\.lmdb' is an LMDB folder; read it with io_backend"):
        HRImageDataset(str(tmp_path / "set.lmdb"), scale=2, phase="val")


# ---------------------------------------------------------------- errors inside DataLoader workers


def test_worker_error_names_the_file_and_the_cause(tmp_path: Path) -> None:
    paths = rgb_folder(tmp_path / "hr", [(16, 16)] * 4)
    ds = HRImageDataset(str(tmp_path / "hr"), scale=2, phase="val")
    paths[2].write_bytes(b"garbage")  # unreadable after the set was checked; not skippable outside training
    loader = build_dataloader(ds, "val", 1, 2, persistent_workers=False)
    with pytest.raises(ImageReadError) as info:
        list(loader)
    err = info.value
    assert err.path == str(paths[2]) and "OpenCV could not decode it" in err.reason
    assert str(paths[2]) in str(err) and "Original Traceback" not in str(err)
    assert "_worker_loop" in err.worker_traceback  # kept for debugging, out of the message


def test_worker_error_in_training_names_the_file(tmp_path: Path) -> None:
    paths = rgb_folder(tmp_path / "hr", [(16, 16)] * 4)
    ds = HRImageDataset(str(tmp_path / "hr"), scale=2, gt_size=16)
    rgb_folder(tmp_path / "hr", [(16, 16), (8, 8)])  # img01 shrinks after the build-time check
    loader = build_dataloader(ds, "train", 4, 2, seed=0, persistent_workers=False)
    with pytest.raises(ValueError, match=rf"'{re.escape(str(paths[1]))}'\) is 8x8 \(HxW\), smaller than the 16x16"
                       ) as info:
        epoch_batches(loader)
    assert "Original Traceback" not in str(info.value) and "Caught" not in str(info.value)


class _Failing(HRImageDataset):
    def load(self, index: int, rng: np.random.Generator | None) -> tuple:
        raise RuntimeError("the resampler blew up")


def test_worker_error_without_a_file_gets_the_sample_named(tmp_path: Path) -> None:
    paths = rgb_folder(tmp_path / "hr", [(16, 16)] * 2)
    ds = _Failing(str(tmp_path / "hr"), scale=2, gt_size=8)
    # a plain DataLoader too: the prefetcher unwraps what it gets
    plain = DataLoader(ds, batch_size=1, num_workers=2, collate_fn=collate_samples)
    with pytest.raises(RuntimeError) as info:
        CPUPrefetcher(plain).next()
    message = str(info.value)
    assert message.startswith("the resampler blew up") and "Original Traceback" not in message
    assert re.search(rf"while making sample \d of _Failing from '{re.escape(str(tmp_path / 'hr'))}/img0\d\.png'",
                     message)
    assert str(paths[0]) in message or str(paths[1]) in message


def test_unreadable_training_images_are_still_skipped_with_workers(tmp_path: Path) -> None:
    paths = rgb_folder(tmp_path / "hr", [(16, 16)] * 4)
    ds = HRImageDataset(str(tmp_path / "hr"), scale=2, gt_size=8)
    paths[1].write_bytes(b"garbage")
    loader = build_dataloader(ds, "train", 2, 2, seed=0, persistent_workers=False)
    served = [p for batch in epoch_batches(loader) for p in batch["gt_path"]]
    assert len(served) == 4 and str(paths[1]) not in served


def test_unwrap_rebuilds_the_original_error_or_says_what_it_was() -> None:
    def wrapped(final: str, where: str = "DataLoader worker process 1") -> RuntimeError:
        return RuntimeError(f"Caught X in {where}.\nOriginal Traceback (most recent call last):\n"
                            '  File "w.py", line 1, in f\n    g()\n    ^^^\n' + final + "\n")

    clean = unwrap_worker_error(wrapped("data.image_io.ImageReadError: cannot read image '/d/a b.png': file is "
                                        "empty"))
    assert type(clean) is ImageReadError and (clean.path, clean.reason) == ("/d/a b.png", "file is empty")
    chained = ("ValueError: first\n\nThe above exception was the direct cause of the following exception:\n\n"
               "Traceback (most recent call last):\n  File \"x.py\", line 2, in h\n"
               "ValueError: image 'x.png' is 3x3\nwhile making sample 0")
    clean = unwrap_worker_error(wrapped(chained, "pin memory thread for device 0"))
    assert type(clean) is ValueError and str(clean) == "image 'x.png' is 3x3\nwhile making sample 0"
    clean = unwrap_worker_error(wrapped("somewhere.NotImported: odd 'y.png'"))
    assert type(clean) is WorkerError and str(clean) == "X: odd 'y.png'"
    assert unwrap_worker_error(ValueError("plain")) is None
