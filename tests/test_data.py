"""Image I/O, crops and flips, the two SR datasets, loaders and the CPU prefetcher."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from data.data_loader import ShardSampler, build_dataloader
from data.hr_image_dataset import HRImageDataset
from data.image_io import ImageReadError, img2tensor, list_images, read_image, tensor2img, write_image
from data.imresize import imresize
from data.paired_image_dataset import PairedImageDataset
from data.prefetcher import CPUPrefetcher, CUDAPrefetcher, build_prefetcher
from data.resumable_sampler import ResumableSampler
from data.transforms import augment, mod_crop, paired_random_crop
from utils.registry import DATASET_REGISTRY

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def block_up(img: np.ndarray, scale: int) -> np.ndarray:
    """Each pixel becomes a scale x scale block: the gt whose exact block-mean is ``img``."""
    return np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)


def u8(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 256, shape, dtype=np.uint8)


def eight_variants(img: np.ndarray) -> list[np.ndarray]:
    """All 8 flip/transpose combinations, index bits: 1 = h-flip, 2 = v-flip, 4 = transpose."""
    out = []
    for k in range(8):
        x = img[:, ::-1] if k & 1 else img
        x = x[::-1] if k & 2 else x
        out.append(x.swapaxes(0, 1) if k & 4 else x)
    return out


def make_pairs(root: Path, n: int, lq_hw: tuple[int, int], scale: int, lq_name: str = "{}x{s}") -> list:
    """Write n gt/lq pairs (lq random 8-bit, gt = block_up(lq)); returns the lq arrays in [0,1]."""
    rng = np.random.default_rng(0)
    lqs = []
    for i in range(n):
        lq = u8(rng, (*lq_hw, 3)).astype(np.float32) / 255
        write_image(root / "gt" / f"img{i:02d}.png", block_up(lq, scale))
        write_image(root / "lq" / (lq_name.format(f"img{i:02d}", s=scale) + ".png"), lq)
        lqs.append(lq)
    return lqs


# ---------------------------------------------------------------- image I/O


def test_png_8bit_round_trip_is_exact_and_rgb(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    raw = u8(rng, (7, 9, 3))
    path = tmp_path / "sub" / "a.png"  # parent folder is created
    write_image(path, raw.astype(np.float32) / 255)
    back = read_image(path)
    assert back.dtype == np.float32 and back.shape == (7, 9, 3)
    np.testing.assert_array_equal(np.round(back * 255).astype(np.uint8), raw)
    # Written in RGB order: OpenCV (BGR) sees the channels reversed.
    np.testing.assert_array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), raw[:, :, ::-1])


def test_png_16bit_round_trip_is_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    raw = rng.integers(0, 65536, (5, 6, 3), dtype=np.uint16)
    path = tmp_path / "b.png"
    write_image(path, raw.astype(np.float64) / 65535, bit_depth=16)
    stored = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert stored.dtype == np.uint16
    np.testing.assert_array_equal(stored, raw[:, :, ::-1])
    back = read_image(path)
    np.testing.assert_array_equal(np.round(back.astype(np.float64) * 65535).astype(np.uint16), raw)


def test_write_rounds_and_clips(tmp_path: Path) -> None:
    img = np.array([[[-0.5, 0.5 / 255 + 1e-4, 1.7]]], dtype=np.float32)
    write_image(tmp_path / "c.png", img)
    assert cv2.imread(str(tmp_path / "c.png"))[0, 0].tolist() == [255, 1, 0]  # BGR
    with pytest.raises(ValueError, match="16-bit"):
        write_image(tmp_path / "c.jpg", img, bit_depth=16)


def test_gray_rgba_and_jpeg_reading(tmp_path: Path) -> None:
    gray = np.array([[0, 51], [102, 255]], dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "g.png"), gray)
    three = read_image(tmp_path / "g.png")
    assert three.shape == (2, 2, 3)
    np.testing.assert_array_equal(three, np.repeat(gray[:, :, None], 3, axis=2) / np.float32(255))
    assert read_image(tmp_path / "g.png", keep_channels=True).shape == (2, 2, 1)

    bgra = np.zeros((2, 2, 4), dtype=np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2], bgra[..., 3] = 10, 20, 30, 40
    cv2.imwrite(str(tmp_path / "r.png"), bgra)
    rgb = read_image(tmp_path / "r.png")
    assert rgb.shape == (2, 2, 3)
    np.testing.assert_array_equal(np.round(rgb[0, 0] * 255), [30, 20, 10])
    np.testing.assert_array_equal(
        np.round(read_image(tmp_path / "r.png", True)[0, 0] * 255), [30, 20, 10, 40]
    )

    flat = np.full((8, 8, 3), (200, 100, 50), dtype=np.uint8)  # BGR; constant survives JPEG
    cv2.imwrite(str(tmp_path / "j.jpg"), flat)
    np.testing.assert_allclose(read_image(tmp_path / "j.jpg")[4, 4] * 255, [50, 100, 200], atol=2)


def test_unreadable_files_raise_image_read_error(tmp_path: Path) -> None:
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG not really an image")
    (tmp_path / "empty.png").write_bytes(b"")
    for name, reason in (("corrupt.png", "decode"), ("empty.png", "empty"), ("missing.png", "no such")):
        with pytest.raises(ImageReadError, match=reason) as info:
            read_image(tmp_path / name)
        assert name in str(info.value)
        assert isinstance(info.value, OSError)


def test_tensor_conversions() -> None:
    img = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 24
    t = img2tensor(img)
    assert t.shape == (4, 2, 3) and t.dtype == torch.float32
    assert t[3, 1, 2] == pytest.approx(img[1, 2, 3])
    np.testing.assert_array_equal(tensor2img(t[None]), img)
    np.testing.assert_array_equal(tensor2img(t * 3 - 1), np.clip(img * 3 - 1, 0, 1))


def test_list_images(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        list_images(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="contains no images"):
        list_images(tmp_path / "empty")
    for name in ("b.PNG", "a.jpg", "c.webp", "d.txt", "e.tiff"):
        (tmp_path / "imgs" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "imgs" / name).write_bytes(b"")
    assert [p.name for p in list_images(tmp_path / "imgs")] == ["a.jpg", "b.PNG", "c.webp", "e.tiff"]


# ---------------------------------------------------------------- transforms


def test_mod_crop() -> None:
    img = np.arange(7 * 10).reshape(7, 10)
    np.testing.assert_array_equal(mod_crop(img, 3), img[:6, :9])
    assert mod_crop(np.zeros((8, 8, 3)), 4).shape == (8, 8, 3)


def test_paired_random_crop_is_scale_aligned() -> None:
    rng = np.random.default_rng(3)
    scale, gt_size = 3, 12
    lq = rng.random((11, 13, 3))
    gt = block_up(lq, scale)
    seen = set()
    for seed in range(40):
        gt_p, lq_p = paired_random_crop(gt, lq, gt_size, scale, np.random.default_rng(seed))
        assert gt_p.shape == (12, 12, 3) and lq_p.shape == (4, 4, 3)
        np.testing.assert_array_equal(gt_p, block_up(lq_p, scale))  # pixel-for-pixel correspondence
        # Locate the lq patch in the source: it must be a true window of lq.
        hits = [
            (y, x)
            for y in range(11 - 3)
            for x in range(13 - 3)
            if np.array_equal(lq[y : y + 4, x : x + 4], lq_p)
        ]
        assert len(hits) == 1
        seen.add(hits[0])
    assert len(seen) > 10  # positions actually vary


def test_paired_random_crop_errors() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"'x\.png'.*should be 20x20"):
        paired_random_crop(np.zeros((21, 20, 3)), np.zeros((10, 10, 3)), 8, 2, rng, gt_path="x.png")
    with pytest.raises(ValueError, match="smaller than"):
        paired_random_crop(np.zeros((8, 8, 3)), np.zeros((4, 4, 3)), 12, 2, rng)
    with pytest.raises(ValueError, match="multiple of scale"):
        paired_random_crop(np.zeros((8, 8, 3)), np.zeros((4, 4, 3)), 6, 4, rng)


def test_augment_applies_identical_transforms() -> None:
    rng = np.random.default_rng(4)
    lq = rng.random((5, 7, 3))
    gt = block_up(lq, 2)

    def which(img: np.ndarray, options: list[np.ndarray]) -> int:
        found = [k for k, o in enumerate(options) if o.shape == img.shape and np.array_equal(o, img)]
        assert len(found) == 1
        return found[0]

    ks = set()
    for seed in range(64):
        g2, l2 = augment([gt, lq], hflip=True, rot=True, rng=np.random.default_rng(seed))
        k = which(l2, eight_variants(lq))
        assert which(g2, eight_variants(gt)) == k
        ks.add(k)
    assert ks == set(range(8))

    only_h = {
        which(augment([lq], True, False, np.random.default_rng(s))[0], eight_variants(lq)) for s in range(32)
    }
    assert only_h == {0, 1}
    none = {
        which(augment([lq], False, False, np.random.default_rng(s))[0], eight_variants(lq)) for s in range(8)
    }
    assert none == {0}


# ---------------------------------------------------------------- datasets


def test_registered() -> None:
    assert DATASET_REGISTRY.get("pairedimagedataset") is PairedImageDataset
    assert DATASET_REGISTRY.get("HRImageDataset") is HRImageDataset


def test_paired_train_crops_are_aligned(tmp_path: Path) -> None:
    lqs = make_pairs(tmp_path, 3, (10, 12), 2)
    ds = PairedImageDataset(str(tmp_path / "gt"), str(tmp_path / "lq"), scale=2, phase="train", gt_size=8)
    assert len(ds) == 3
    torch.manual_seed(0)
    for i in range(3):
        s = ds[i]
        assert s["gt"].shape == (3, 8, 8) and s["lq"].shape == (3, 4, 4)
        assert s["gt_path"].endswith(f"img{i:02d}.png") and s["lq_path"].endswith(f"img{i:02d}x2.png")
        gt, lq = tensor2img(s["gt"]), tensor2img(s["lq"])
        np.testing.assert_array_equal(gt, block_up(lq, 2))
        # The lq patch is a (possibly flipped/transposed) window of the source lq.
        src = lqs[i]
        windows = [src[y : y + 4, x : x + 4] for y in range(7) for x in range(9)]
        assert any(np.array_equal(v, lq) for w in windows for v in eight_variants(w))
    # An explicit (index, seed) pair fixes the sample, whatever torch's RNG state.
    a, b = ds[(1, 123)], ds[(1, 123)]
    assert torch.equal(a["gt"], b["gt"]) and torch.equal(a["lq"], b["lq"])


def test_paired_name_matching_and_errors(tmp_path: Path) -> None:
    make_pairs(tmp_path, 2, (6, 6), 2, lq_name="{}_lr")
    ds = PairedImageDataset(str(tmp_path / "gt"), str(tmp_path / "lq"), 2, "val", filename_tmpl="{}_lr")
    assert Path(ds[1]["lq_path"]).name == "img01_lr.png"
    with pytest.raises(FileNotFoundError, match=r"2 of 2 gt images have no lq.*img00\.png, img01\.png"):
        PairedImageDataset(str(tmp_path / "gt"), str(tmp_path / "lq"), 2, "val")
    with pytest.raises(ValueError, match="gt_size is required"):
        PairedImageDataset(str(tmp_path / "gt"), str(tmp_path / "lq"), 2, "train", filename_tmpl="{}_lr")
    with pytest.raises(FileNotFoundError, match="no_such_dir"):
        PairedImageDataset(str(tmp_path / "no_such_dir"), str(tmp_path / "lq"), 2, "val")


def test_val_phase_returns_whole_mod_cropped_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    gt = u8(rng, (35, 30, 3)).astype(np.float32) / 255  # 35 is not a multiple of 4
    lq = u8(rng, (8, 7, 3)).astype(np.float32) / 255
    write_image(tmp_path / "gt" / "a.png", gt)
    write_image(tmp_path / "lq" / "a.png", lq)
    s = PairedImageDataset(str(tmp_path / "gt"), str(tmp_path / "lq"), scale=4, phase="val")[0]
    np.testing.assert_array_equal(tensor2img(s["gt"]), gt[:32, :28])
    np.testing.assert_array_equal(tensor2img(s["lq"]), lq)

    write_image(tmp_path / "lq" / "a.png", lq[:6])  # 6 * 4 = 24, far from 35
    with pytest.raises(ValueError, match=r"size mismatch.*a\.png"):
        PairedImageDataset(str(tmp_path / "gt"), str(tmp_path / "lq"), scale=4, phase="val")[0]

    hr = HRImageDataset(str(tmp_path / "gt"), scale=4, phase="val")[0]
    np.testing.assert_array_equal(tensor2img(hr["gt"]), gt[:32, :28])
    np.testing.assert_allclose(
        hr["lq"].numpy().transpose(1, 2, 0), np.clip(imresize(gt[:32, :28], 0.25), 0, 1)
    )
    assert hr["lq"].shape == (3, 8, 7)


def test_hr_dataset_train_makes_bicubic_lr(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    src = u8(rng, (20, 24, 3)).astype(np.float32) / 255
    write_image(tmp_path / "hr" / "x.png", src)
    ds = HRImageDataset(
        str(tmp_path / "hr"), scale=3, phase="train", gt_size=12, use_hflip=False, use_rot=False
    )
    torch.manual_seed(1)
    s = ds[0]
    gt = tensor2img(s["gt"], clip=False)
    hits = [(y, x) for y in range(9) for x in range(13) if np.array_equal(src[y : y + 12, x : x + 12], gt)]
    assert len(hits) == 1
    np.testing.assert_allclose(
        s["lq"].numpy().transpose(1, 2, 0), np.clip(imresize(gt, 1 / 3), 0, 1), atol=1e-7
    )
    assert s["lq_path"] == s["gt_path"] == str(tmp_path / "hr" / "x.png")


def test_corrupt_training_image_is_skipped_and_counted(tmp_path: Path, caplog) -> None:
    make_pairs(tmp_path, 3, (6, 6), 2)
    (tmp_path / "gt" / "img01.png").write_bytes(b"garbage")
    ds = PairedImageDataset(str(tmp_path / "gt"), str(tmp_path / "lq"), scale=2, phase="train", gt_size=4)
    with caplog.at_level(logging.WARNING, logger="upforge"):
        s = ds[1]
    assert s["gt_path"].endswith("img02.png")  # the next index stands in
    assert ds.num_skipped == 1
    assert any("img01.png" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="upforge"):
        assert ds[1]["gt_path"].endswith("img02.png")
    assert ds.num_skipped == 1 and not caplog.records  # known-bad file is not re-read or re-counted

    with pytest.raises(ImageReadError, match="img01.png"):  # outside training it is an error
        PairedImageDataset(str(tmp_path / "gt"), str(tmp_path / "lq"), scale=2, phase="val")[1]

    for name in ("img00.png", "img02.png"):
        (tmp_path / "gt" / name).write_bytes(b"")
    with pytest.raises(RuntimeError, match="none of the 3 training images"):
        PairedImageDataset(str(tmp_path / "gt"), str(tmp_path / "lq"), scale=2, phase="train", gt_size=4)[0]


# ---------------------------------------------------------------- loaders and prefetchers


def _batches(loader, epoch: int) -> list[torch.Tensor]:
    loader.batch_sampler.set_epoch(epoch)
    return [b["gt"] for b in loader]


@pytest.mark.parametrize("workers", [0, 2])
def test_same_seed_gives_same_batches(tmp_path: Path, workers: int) -> None:
    make_pairs(tmp_path, 6, (8, 8), 2)
    ds = PairedImageDataset(str(tmp_path / "gt"), str(tmp_path / "lq"), scale=2, phase="train", gt_size=8)

    def run(seed: int, epoch: int) -> list[torch.Tensor]:
        torch.manual_seed(100)  # the global RNG drives crops when num_workers == 0
        loader = build_dataloader(ds, "train", 2, workers, seed=seed, persistent_workers=False)
        return _batches(loader, epoch)

    a, b = run(7, 0), run(7, 0)
    assert len(a) == 3 and all(x.shape == (2, 3, 8, 8) for x in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, run(8, 0)))
    # Resuming at epoch 1 with a fresh loader reproduces the uninterrupted run's epoch 1.
    if workers:
        loader = build_dataloader(ds, "train", 2, workers, seed=7, persistent_workers=False)
        first, second = _batches(loader, 0), _batches(loader, 1)
        assert all(torch.equal(x, y) for x, y in zip(first, a))
        assert all(torch.equal(x, y) for x, y in zip(second, run(7, 1)))


def test_resumable_sampler_order_epochs_ranks_and_start() -> None:
    s = ResumableSampler(5, seed=1, enlarge_ratio=3)
    s.set_epoch(0)
    e0 = list(s)
    assert len(s) == 15 and sorted(i for i, _ in e0) == sorted(list(range(5)) * 3)
    assert len({seed for _, seed in e0}) == 15  # every sample gets its own augmentation seed
    s.set_epoch(1)
    e1 = list(s)
    s.set_epoch(0)
    assert list(s) == e0 and e1 != e0
    s.set_start(4)
    assert list(s) == e0[4:]  # resuming mid-epoch continues the same order ...
    assert list(s) == e0  # ... for one pass only
    ranks = [ResumableSampler(10, seed=2, rank=r, world_size=3) for r in range(3)]
    parts = [[i for i, _ in r] for r in ranks]
    assert [len(p) for p in parts] == [4, 4, 4]
    assert set(sum(parts, [])) == set(range(10))  # 12 slots: all 10 plus 2 repeats


def test_batches_do_not_depend_on_worker_count(tmp_path: Path) -> None:
    make_pairs(tmp_path, 6, (8, 8), 2)
    ds = PairedImageDataset(str(tmp_path / "gt"), str(tmp_path / "lq"), scale=2, phase="train", gt_size=4)
    runs = [_batches(build_dataloader(ds, "train", 2, w, seed=5, persistent_workers=False), 2) for w in (0, 2)]
    assert all(torch.equal(x, y) for x, y in zip(*runs))


def test_val_loader_is_sequential_batch_one(tmp_path: Path) -> None:
    make_pairs(tmp_path, 5, (4, 4), 2)
    ds = PairedImageDataset(str(tmp_path / "gt"), str(tmp_path / "lq"), scale=2, phase="val")
    loader = build_dataloader(ds, "val", batch_size=4, num_workers=0)
    paths = [b["gt_path"][0] for b in loader]
    assert [Path(p).name for p in paths] == [f"img{i:02d}.png" for i in range(5)]
    shards = [list(ShardSampler(5, r, 2)) for r in range(2)]
    assert shards == [[0, 2, 4], [1, 3]]  # every image exactly once across ranks


def test_cpu_prefetcher(tmp_path: Path) -> None:
    make_pairs(tmp_path, 4, (4, 4), 2)
    ds = PairedImageDataset(str(tmp_path / "gt"), str(tmp_path / "lq"), scale=2, phase="val")
    loader = build_dataloader(ds, "val", 1, 0)
    pf = build_prefetcher(loader, torch.device("cpu"), None, channels_last=True)
    assert isinstance(pf, CPUPrefetcher)
    got = []
    while (batch := pf.next()) is not None:
        assert batch["gt"].is_contiguous(memory_format=torch.channels_last)
        got.append(batch)
    assert len(got) == 4 and pf.next() is None
    ref = [b for b in loader]
    assert all(torch.equal(g["lq"], r["lq"]) and g["lq_path"] == r["lq_path"] for g, r in zip(got, ref))
    pf.reset()
    assert torch.equal(pf.next()["gt"], ref[0]["gt"])
    assert isinstance(build_prefetcher(loader, "cuda", "cpu"), CPUPrefetcher)
    with pytest.raises(ValueError, match="prefetch_mode"):
        build_prefetcher(loader, "cpu", "gpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU; CPU path is tested above")
def test_cuda_prefetcher(tmp_path: Path) -> None:
    make_pairs(tmp_path, 4, (4, 4), 2)
    ds = PairedImageDataset(str(tmp_path / "gt"), str(tmp_path / "lq"), scale=2, phase="val")
    loader = build_dataloader(ds, "val", 1, 0)
    pf = build_prefetcher(loader, torch.device("cuda"), None, channels_last=True)
    assert isinstance(pf, CUDAPrefetcher)
    ref = list(loader)
    for _ in range(2):
        for r in ref:
            b = pf.next()
            assert b["gt"].is_cuda and b["gt"].is_contiguous(memory_format=torch.channels_last)
            assert torch.equal((b["gt"] * 2).cpu(), r["gt"] * 2) and b["gt_path"] == r["gt_path"]
        assert pf.next() is None
        pf.reset()
