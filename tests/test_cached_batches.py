"""Cached training sets (``cache: ram | gpu``): decoded once, batches cut on the device.

The references are the CPU path's batches for the same sampler items (crop, flips, bicubic LR,
dropout holes drawn by the same functions from the same seeds) and explicit numpy slicing.
CUDA variants run where a GPU is present (the GPU machine); on CPU the same code runs with the
cache in RAM, and the RAM-to-device staging is exercised by forcing it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from data import image_cache
from data.cached_batches import CachedBatches
from data.data_loader import build_loaders
from data.hr_image_dataset import HRImageDataset
from data.image_cache import ImageCache, check_fits, gather_patches
from data.paired_image_dataset import PairedImageDataset
from tests.conftest import small_train_yaml
from train import train
from utils.options import OptionsError, load_options

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _folders(tmp_path: Path, sizes: list[tuple[int, int]], scale: int = 2, bits: int = 8) -> tuple[Path, Path]:
    """Random-texture gt PNGs of the given (H, W) and their area-downscaled lq."""
    rng = np.random.default_rng(5)
    gt_dir, lq_dir = tmp_path / "gt", tmp_path / "lq"
    gt_dir.mkdir(parents=True, exist_ok=True)
    lq_dir.mkdir(parents=True, exist_ok=True)
    peak = 255 if bits == 8 else 65535
    dtype = np.uint8 if bits == 8 else np.uint16
    for i, (h, w) in enumerate(sizes):
        gt = rng.integers(0, peak + 1, (h, w, 3)).astype(dtype)
        assert cv2.imwrite(str(gt_dir / f"im{i}.png"), gt)
        lq = cv2.resize(gt, (w // scale, h // scale), interpolation=cv2.INTER_AREA)
        assert cv2.imwrite(str(lq_dir / f"im{i}.png"), lq)
    return gt_dir, lq_dir


def _paired_yaml(tmp_path: Path, gt_dir: Path, lq_dir: Path, **extra: str) -> Path:
    path = small_train_yaml(tmp_path, gt_dir)
    text = path.read_text().replace(
        f"    type: HRImageDataset\n    dataroot_gt: {gt_dir}\n    gt_size: 16",
        f"    type: PairedImageDataset\n    dataroot_gt: {gt_dir}\n    dataroot_lq: {lq_dir}\n    gt_size: 16", 1)
    path.write_text(text)
    return path


# ---------------------------------------------------------------- the gather


@pytest.mark.parametrize("device", DEVICES)
def test_gather_cuts_flips_and_transposes_like_numpy(device):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (9, 13, 3), dtype=np.uint8), rng.integers(0, 256, (11, 7, 3), dtype=np.uint8)]
    buffer = torch.from_numpy(np.concatenate([im.reshape(-1) for im in images])).to(device)
    offsets, size = [0, images[0].size], 5
    rows, expected = [], []
    for code in range(8):
        k = code % 2
        img = images[k]
        y, x = (3, 6) if k == 0 else (4, 1)
        rows.append((offsets[k] + (y * img.shape[1] + x) * 3, img.shape[1], code))
        patch = img[y:y + size, x:x + size]
        if code & 1:
            patch = patch[:, ::-1]
        if code & 2:
            patch = patch[::-1]
        if code & 4:
            patch = patch.transpose(1, 0, 2)
        expected.append(patch.transpose(2, 0, 1))
    out = gather_patches(buffer, 3, torch.tensor(rows, device=device), size)
    assert out.shape == (8, 3, size, size) and out.dtype == torch.uint8
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert np.array_equal(out.cpu().numpy(), np.stack(expected))


# ------------------------------------------------------- equal to the CPU path


def _streams(path: Path, overrides: list[str], device: str) -> tuple:
    plain, _ = build_loaders(load_options(path, overrides), torch.device(device))
    mode = "gpu" if device == "cuda" else "ram"
    cached, _ = build_loaders(load_options(path, [*overrides, f"datasets.train.cache={mode}"]), torch.device(device))
    return plain, cached


def _assert_same_batches(plain, cached, count: int, exact_lq: bool = True) -> None:
    for n in range(count):
        if n == count // 2:  # an automation changes the patch size mid-epoch
            plain.set_knob("gt_size", 12)
            cached.set_knob("gt_size", 12)
        a, b = plain.next(), cached.next()
        assert a["gt_path"] == b["gt_path"] and a["lq_path"] == b["lq_path"]
        assert b["gt"].dtype == torch.float32 and b["gt"].device == a["gt"].device
        assert torch.equal(a["gt"], b["gt"]), n
        if exact_lq:
            assert torch.equal(a["lq"], b["lq"]), n
        else:  # bicubic in float64 either way; only the summation order differs
            assert torch.allclose(a["lq"], b["lq"], atol=1e-6, rtol=0), n


@pytest.mark.parametrize("device", DEVICES)
def test_cached_paired_batches_equal_the_cpu_path(tmp_path, device):
    gt_dir, lq_dir = _folders(tmp_path, [(40, 48), (36, 60), (50, 40), (44, 44), (38, 52)])
    path = _paired_yaml(tmp_path, gt_dir, lq_dir)
    overrides = ["datasets.train.gt_size={0: 8, 3: 16}", "datasets.train.aug_prob={0: 0.2, 2: 0.5}",
                 "datasets.train.lq_dropout={prob: 0.7, holes: [1, 3], size: [1, 3], fill: 0.5}"]
    plain, cached = _streams(path, overrides, device)
    assert cached.cached is not None and plain.cached is None
    _assert_same_batches(plain, cached, 12)
    # the probe batch automations take (VRAM batch sizing) is the same too
    assert torch.equal(plain.sample_batch(3, 5)["lq"], cached.sample_batch(3, 5)["lq"])


@pytest.mark.parametrize("device", DEVICES)
def test_cached_hr_batches_match_the_cpu_path(tmp_path, device):
    gt_dir, _ = _folders(tmp_path, [(40, 48), (36, 60), (50, 40)])
    path = small_train_yaml(tmp_path, gt_dir)
    plain, cached = _streams(path, ["datasets.train.gt_size={0: 8, 2: 16}"], device)
    _assert_same_batches(plain, cached, 8, exact_lq=False)


def test_ram_cache_staged_through_a_buffer_gives_the_same_batches(tmp_path):
    """On a GPU run a RAM cache copies crops through a staging buffer; forced here on the CPU."""
    gt_dir, lq_dir = _folders(tmp_path, [(40, 48), (36, 60), (50, 40)])
    path = _paired_yaml(tmp_path, gt_dir, lq_dir)
    plain, cached = _streams(path, [], "cpu")
    cached.cached.staged = True
    _assert_same_batches(plain, cached, 6)


def test_sixteen_bit_sets_are_cached_as_float_on_the_unit_scale(tmp_path):
    gt_dir, lq_dir = _folders(tmp_path, [(40, 48), (36, 60)], bits=16)
    path = _paired_yaml(tmp_path, gt_dir, lq_dir)
    plain, cached = _streams(path, [], "cpu")
    assert cached.cached.cache.is_float and cached.cached.cache.buffer.dtype == torch.float32
    _assert_same_batches(plain, cached, 4)


def test_the_cache_holds_every_image_once_with_its_size(tmp_path):
    gt_dir, lq_dir = _folders(tmp_path, [(40, 48), (36, 60)])
    ds = PairedImageDataset(str(gt_dir), str(lq_dir), scale=2, gt_size=8, cache="ram")
    cache = CachedBatches(ds, torch.device("cpu")).cache
    assert cache.sizes(1) == [(36, 60), (18, 30)]
    assert cache.nbytes == (40 * 48 + 20 * 24 + 36 * 60 + 18 * 30) * 3
    lq1 = cv2.imread(str(lq_dir / "im1.png"))[..., ::-1]
    assert np.array_equal(cache.image(1, 1).numpy(), lq1)


# ------------------------------------------------------------ whole runs


def _batch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "cached-batches" and t.is_alive()]


def test_training_with_a_cache_equals_training_without(tmp_path):
    gt_dir, lq_dir = _folders(tmp_path, [(40, 48), (36, 60), (50, 40), (44, 44)])
    path = _paired_yaml(tmp_path, gt_dir, lq_dir)
    plain = Path(train(path, ["name=plain"])["experiment_dir"])
    before = set(_batch_threads())  # (streams other tests left open)
    cached = Path(train(path, ["name=cached", "datasets.train.cache=ram"])["experiment_dir"])
    assert set(_batch_threads()) == before  # the run's batch thread ended with it
    for label in ("net_g_20", "net_g_ema_20"):
        a = load_file(str(plain / "models" / f"{label}.safetensors"))
        b = load_file(str(cached / "models" / f"{label}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), label


def test_a_cached_run_resumes_where_it_stopped(tmp_path):
    gt_dir, lq_dir = _folders(tmp_path, [(40, 48), (36, 60), (50, 40), (44, 44)])
    path = _paired_yaml(tmp_path, gt_dir, lq_dir)
    common = ["datasets.train.cache=ram", "datasets.train.gt_size={0: 8, 0.5T: 16}"]
    straight = Path(train(path, ["name=straight", *common])["experiment_dir"])
    half = Path(train(path, ["name=half", *common])["experiment_dir"])
    (half / "training_states" / "20.state").unlink()
    train(path, ["name=half", *common], auto_resume=True)
    a = load_file(str(straight / "models" / "net_g_20.safetensors"))
    b = load_file(str(half / "models" / "net_g_20.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------- bad input


def test_cache_options_that_cannot_work_are_refused(tmp_path, hr_folder):
    path = small_train_yaml(tmp_path, hr_folder)
    with pytest.raises(OptionsError, match="cache"):
        load_options(path, ["datasets.train.cache=disk"])
    with pytest.raises(OptionsError, match="lq_jpeg cannot be used with cache"):
        load_options(path, ["datasets.train.cache=ram", "datasets.train.lq_jpeg={prob: 0.5, quality: [30, 90]}"])
    with pytest.raises(OptionsError, match="cache is for training sets"):
        load_options(path, ["datasets.val.cache=ram"])
    if not torch.cuda.is_available():
        opt = load_options(path, ["datasets.train.cache=gpu"])
        with pytest.raises(ValueError, match="cache: gpu keeps the images on the GPU, but the run's device is cpu"):
            build_loaders(opt, torch.device("cpu"))


def test_a_set_too_large_for_ram_is_refused_with_the_sizes(monkeypatch, hr_folder):
    monkeypatch.setattr(image_cache, "available_ram", lambda: 10_000)
    ds = HRImageDataset(str(hr_folder), scale=2, gt_size=8, cache="ram")
    with pytest.raises(MemoryError, match=r"cache: ram: 6 training images take 40\.5 KiB, but the machine has 9\.8 KiB "
                                          r"of RAM available"):
        CachedBatches(ds, torch.device("cpu"))


def test_a_set_too_large_for_the_gpu_is_refused_with_the_sizes(monkeypatch):
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * gib, 80 * gib))
    # 80 GiB card: 20 GiB stay free for training, so with 10 GiB free nothing fits
    with pytest.raises(MemoryError, match=r"take 1\.00 GiB, but cuda:0 has 10\.00 GiB free of 80\.00 GiB and "
                                          r"20\.00 GiB stay free for training; use cache: ram"):
        check_fits(gib, "gpu", torch.device("cuda:0"), "the images")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (40 * gib, 80 * gib))
    assert check_fits(gib, "gpu", torch.device("cuda:0"), "the images").startswith("cuda:0 (39.00 GiB left free)")


def test_an_unreadable_image_is_named_when_the_cache_is_filled(tmp_path):
    gt_dir, lq_dir = _folders(tmp_path, [(40, 48), (36, 60)])
    ds = PairedImageDataset(str(gt_dir), str(lq_dir), scale=2, gt_size=8, cache="ram")
    (gt_dir / "im1.png").write_bytes(b"not a png")
    with pytest.raises(Exception, match="im1.png"):
        ImageCache(len(ds), ds.cache_read, 3, 2, "ram", torch.device("cpu"), "x")


def test_an_error_while_making_a_batch_reaches_the_training_loop(tmp_path, monkeypatch):
    """Patches are drawn in a worker process and kernels launched in a thread; an error in
    either is raised by next(), as a CPU-path worker's would be."""
    gt_dir, lq_dir = _folders(tmp_path, [(40, 48), (36, 60), (50, 40)])
    path = _paired_yaml(tmp_path, gt_dir, lq_dir)
    original = PairedImageDataset.plan_patch

    def broken(self, index, rng, sizes, knobs):  # fails once an automation sets aug_prob 0.25
        if knobs.get("aug_prob") == 0.25:
            raise ValueError("image 'x.png' is 4x4 (HxW), smaller than the 8x8 patch")
        return original(self, index, rng, sizes, knobs)

    monkeypatch.setattr(PairedImageDataset, "plan_patch", broken)  # before the worker starts
    _, cached = _streams(path, [], "cpu")
    first = cached.next()
    assert first["gt"].shape[0] == 2
    cached.set_knob("aug_prob", 0.25)  # batches made before are dropped and made again
    with pytest.raises(ValueError, match="smaller than the 8x8 patch"):
        cached.next()
    cached.shutdown()
