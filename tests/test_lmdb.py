"""LMDB io_backend: scripts/create_lmdb.py writes BasicSR's format, and the datasets read LMDBs
(BasicSR's or ours) into exactly the batches the image folders give."""

from __future__ import annotations

import logging
import pickle
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from data.data_loader import build_dataloader, build_loaders
from data.hr_image_dataset import HRImageDataset
from data.image_io import ImageReadError, read_image
from data.lmdb_backend import LmdbReader, import_lmdb, read_meta_info
from data.paired_image_dataset import PairedImageDataset
from scripts import create_lmdb as script
from scripts.create_lmdb import create_lmdb
from tests.conftest import small_train_yaml
from utils.options import OptionsError, load_options, parse_options

lmdb = pytest.importorskip("lmdb")

LMDB = {"type": "lmdb"}


def write_bgr(path: Path, img: np.ndarray) -> None:
    """Write an image file as OpenCV stores it (BGR(A) channel order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


def mixed_folder(folder: Path) -> dict[str, np.ndarray]:
    """8-bit RGB, 16-bit RGB, 8-bit gray, 16-bit gray and RGBA PNGs; returns name → stored array."""
    rng = np.random.default_rng(0)
    images = {
        "a_rgb8.png": rng.integers(0, 256, (5, 7, 3), dtype=np.uint8),
        "b_rgb16.png": rng.integers(0, 65536, (4, 6, 3), dtype=np.uint16),
        "c_gray8.png": rng.integers(0, 256, (3, 5), dtype=np.uint8),
        "d_gray16.png": rng.integers(0, 65536, (6, 2), dtype=np.uint16),
        "e_rgba8.png": rng.integers(0, 256, (2, 3, 4), dtype=np.uint8),
    }
    for name, img in images.items():
        write_bgr(folder / name, img)
    return images


def pair_folders(root: Path, n: int = 6, lq_hw: tuple[int, int] = (8, 8), scale: int = 2, bits: int = 8) -> None:
    """n gt/lq PNG pairs of random pixels under root/gt and root/lq (same file names)."""
    rng = np.random.default_rng(1)
    dtype, top = (np.uint8, 256) if bits == 8 else (np.uint16, 65536)
    for i in range(n):
        write_bgr(root / "gt" / f"img{i:02d}.png", rng.integers(0, top, (lq_hw[0] * scale, lq_hw[1] * scale, 3),
                                                                 dtype=dtype))
        write_bgr(root / "lq" / f"img{i:02d}.png", rng.integers(0, top, (*lq_hw, 3), dtype=dtype))


def train_batches(ds, workers: int, seed: int = 7, epochs: int = 2) -> list[dict]:
    torch.manual_seed(100)  # the global RNG drives crops when num_workers == 0
    loader = build_dataloader(ds, "train", 2, workers, seed=seed, persistent_workers=False)
    out = []
    for epoch in range(epochs):
        loader.batch_sampler.set_epoch(epoch)
        out += list(loader)
    return out


def assert_same_batches(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert torch.equal(x["gt"], y["gt"]) and torch.equal(x["lq"], y["lq"])
        assert [Path(p).name for p in x["gt_path"]] == [Path(p).name for p in y["gt_path"]]


def basicsr_lmdb(folder: Path, out: Path, compress_level: int = 1) -> None:
    """An LMDB written the way BasicSR's make_lmdb_from_imgs writes one (not through our script)."""
    names = sorted(p.name for p in folder.glob("*.png"))
    keys = [n.split(".png")[0] for n in names]
    first = cv2.imread(str(folder / names[0]), cv2.IMREAD_UNCHANGED)
    _, first_bytes = cv2.imencode(".png", first, [cv2.IMWRITE_PNG_COMPRESSION, compress_level])
    # BasicSR's estimate; the floor is ours: for images this tiny, ten times their bytes is less
    # than LMDB's own pages take (BasicSR would fail with MapFullError here)
    env = lmdb.open(str(out), map_size=max(first_bytes.nbytes * len(names) * 10, 2**20))
    txn = env.begin(write=True)
    with open(out / "meta_info.txt", "w") as meta:
        for idx, (name, key) in enumerate(zip(names, keys)):
            img = cv2.imread(str(folder / name), cv2.IMREAD_UNCHANGED)
            h, w, c = (*img.shape, 1) if img.ndim == 2 else img.shape
            _, img_byte = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, compress_level])
            txn.put(key.encode("ascii"), img_byte)
            meta.write(f"{key}.png ({h},{w},{c}) {compress_level}\n")
            if idx % 5000 == 0:
                txn.commit()
                txn = env.begin(write=True)
    txn.commit()
    env.close()


# ---------------------------------------------------------------- the format create_lmdb writes


def test_create_lmdb_writes_basicsr_meta_info(tmp_path: Path) -> None:
    mixed_folder(tmp_path / "src")
    assert create_lmdb(tmp_path / "src", tmp_path / "out.lmdb") == 5
    assert sorted(p.name for p in (tmp_path / "out.lmdb").iterdir()) == ["data.mdb", "lock.mdb", "meta_info.txt"]
    assert (tmp_path / "out.lmdb" / "meta_info.txt").read_text() == (
        "a_rgb8.png (5,7,3) 1\n"
        "b_rgb16.png (4,6,3) 1\n"
        "c_gray8.png (3,5,1) 1\n"
        "d_gray16.png (6,2,1) 1\n"
        "e_rgba8.png (2,3,4) 1\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.lmdb", "src"]  # no temporary folder left
    create_lmdb(tmp_path / "src", tmp_path / "nine.lmdb", compress_level=9)
    assert (tmp_path / "nine.lmdb" / "meta_info.txt").read_text().splitlines()[0] == "a_rgb8.png (5,7,3) 9"


def test_stored_values_decode_to_the_source_pixels(tmp_path: Path) -> None:
    images = mixed_folder(tmp_path / "src")
    jpeg = np.random.default_rng(3).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    write_bgr(tmp_path / "src" / "f_photo.jpg", jpeg)
    create_lmdb(tmp_path / "src", tmp_path / "out.lmdb", n_thread=2)
    # As BasicSR reads it: raw PNG bytes under the ASCII key, decoded by OpenCV.
    env = lmdb.open(str(tmp_path / "out.lmdb"), readonly=True, lock=False, readahead=False)
    with env.begin(write=False) as txn:
        for name, stored in images.items():
            raw = txn.get(name[:-4].encode("ascii"))
            assert raw[:8] == b"\x89PNG\r\n\x1a\n"
            back = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
            assert back.dtype == stored.dtype and np.array_equal(back, stored)
        decoded_jpeg = cv2.imread(str(tmp_path / "src" / "f_photo.jpg"), cv2.IMREAD_UNCHANGED)
        photo = cv2.imdecode(np.frombuffer(txn.get(b"f_photo"), np.uint8), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(photo, decoded_jpeg)  # the pixels the JPEG decodes to, losslessly
    env.close()
    # As upforge reads it: exactly what read_image gives for the file (dtype, HWC, RGB(A), gray HxWx1).
    reader = LmdbReader(tmp_path / "out.lmdb")
    assert reader.keys() == ["a_rgb8", "b_rgb16", "c_gray8", "d_gray16", "e_rgba8", "f_photo"]
    for path in sorted((tmp_path / "src").iterdir()):
        got, want = reader.read(path.stem), read_image(path, keep_channels=True, as_float=False)
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want), path.name
    assert reader.read("c_gray8").shape == (3, 5, 1)
    assert np.array_equal(reader.read("a_rgb8"), images["a_rgb8.png"][:, :, ::-1])  # RGB order


def test_map_grows_when_the_estimate_is_too_small(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    for i in range(12):
        write_bgr(tmp_path / "src" / f"n{i:02d}.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    # ~12 KiB of incompressible PNG each, ~150 KiB in all, into a 32 KiB first map
    create_lmdb(tmp_path / "src", tmp_path / "out.lmdb", batch=5, map_size=32 * 1024)
    reader = LmdbReader(tmp_path / "out.lmdb")
    for path in sorted((tmp_path / "src").iterdir()):
        assert np.array_equal(reader.read(path.stem), read_image(path, keep_channels=True, as_float=False))


def test_output_rules_and_interrupted_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mixed_folder(tmp_path / "src")
    out = tmp_path / "out.lmdb"
    with pytest.raises(ValueError, match=r"must end in \.lmdb"):
        create_lmdb(tmp_path / "src", tmp_path / "out")
    create_lmdb(tmp_path / "src", out)
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        create_lmdb(tmp_path / "src", out)
    (tmp_path / "src" / "e_rgba8.png").unlink()
    create_lmdb(tmp_path / "src", out, overwrite=True)
    assert len(read_meta_info(out)) == 4
    (tmp_path / "plain.lmdb").mkdir()
    (tmp_path / "plain.lmdb" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not an LMDB folder"):
        create_lmdb(tmp_path / "src", tmp_path / "plain.lmdb", overwrite=True)

    real = script.encode_png
    calls = []

    def failing(path: Path, level: int):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if the run were stopped half-way
        return real(path, level)

    monkeypatch.setattr(script, "encode_png", failing)
    with pytest.raises(KeyboardInterrupt):
        create_lmdb(tmp_path / "src", tmp_path / "new.lmdb", batch=1, n_thread=1)
    assert not (tmp_path / "new.lmdb").exists()
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        create_lmdb(tmp_path / "src", out, batch=1, n_thread=1, overwrite=True)
    assert len(read_meta_info(out)) == 4  # the old LMDB is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.lmdb", "plain.lmdb", "src"]


def test_unstorable_names_and_images_are_refused(tmp_path: Path) -> None:
    write_bgr(tmp_path / "dots" / "a.b.png", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match=r"a\.b\.png"):
        create_lmdb(tmp_path / "dots", tmp_path / "dots.lmdb")
    write_bgr(tmp_path / "dup" / "x.png", np.zeros((2, 2, 3), np.uint8))
    write_bgr(tmp_path / "dup" / "x.bmp", np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="share the LMDB key 'x'"):
        create_lmdb(tmp_path / "dup", tmp_path / "dup.lmdb")
    (tmp_path / "npy").mkdir()
    np.save(tmp_path / "npy" / "bands.npy", np.zeros((4, 4, 5), np.float32))
    with pytest.raises(ValueError, match="keep N-band data as .npy"):
        create_lmdb(tmp_path / "npy", tmp_path / "npy.lmdb")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dots", "dup", "npy"]


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    mixed_folder(tmp_path / "src")
    out = str(tmp_path / "cli.lmdb")
    assert script.main(["--input", str(tmp_path / "src"), "--output", out, "--compress-level", "3",
                        "--batch", "2", "--n-thread", "1"]) == 0
    assert f"wrote 5 images to {out}" in capsys.readouterr().out
    assert (tmp_path / "cli.lmdb" / "meta_info.txt").read_text().splitlines()[-1] == "e_rgba8.png (2,3,4) 3"
    assert script.main(["-i", str(tmp_path / "src"), "-o", out]) == 1
    assert "already exists" in capsys.readouterr().err
    assert script.main(["-i", str(tmp_path / "src"), "-o", out, "--overwrite"]) == 0


# ---------------------------------------------------------------- datasets: LMDB == folder


@pytest.mark.parametrize("workers", [0, 2])
def test_paired_lmdb_gives_the_folder_batches(tmp_path: Path, workers: int) -> None:
    pair_folders(tmp_path)
    create_lmdb(tmp_path / "gt", tmp_path / "gt.lmdb")
    create_lmdb(tmp_path / "lq", tmp_path / "lq.lmdb")
    common = {"scale": 2, "phase": "train", "gt_size": 8}
    folder = PairedImageDataset(str(tmp_path / "gt"), str(tmp_path / "lq"), **common)
    packed = PairedImageDataset(str(tmp_path / "gt.lmdb"), str(tmp_path / "lq.lmdb"), io_backend=LMDB, **common)
    assert packed.gt_paths[0] == tmp_path / "gt.lmdb" / "img00.png"
    assert_same_batches(train_batches(packed, workers), train_batches(folder, workers))
    disk = PairedImageDataset(str(tmp_path / "gt"), str(tmp_path / "lq"), io_backend={"type": "disk"}, **common)
    assert_same_batches(train_batches(disk, 0), train_batches(folder, 0))


def test_paired_lmdb_validation_samples_and_16_bit(tmp_path: Path) -> None:
    pair_folders(tmp_path, n=3, bits=16)
    create_lmdb(tmp_path / "gt", tmp_path / "gt.lmdb")
    create_lmdb(tmp_path / "lq", tmp_path / "lq.lmdb")
    folder = PairedImageDataset(str(tmp_path / "gt"), str(tmp_path / "lq"), scale=2, phase="val")
    packed = PairedImageDataset(str(tmp_path / "gt.lmdb"), str(tmp_path / "lq.lmdb"), scale=2, phase="val",
                                io_backend=LMDB)
    a = list(build_dataloader(packed, "val", 1, 0))
    b = list(build_dataloader(folder, "val", 1, 0))
    assert_same_batches(a, b)
    assert a[1]["gt_path"] == [str(tmp_path / "gt.lmdb" / "img01.png")]
    assert a[1]["lq_path"] == [str(tmp_path / "lq.lmdb" / "img01.png")]
    # 16-bit values survive (a uint8 round trip would lose them)
    assert torch.equal(a[0]["gt"][0], torch.from_numpy(read_image(tmp_path / "gt" / "img00.png").transpose(2, 0, 1)))


@pytest.mark.parametrize("workers", [0, 2])
def test_hr_lmdb_gives_the_folder_batches(tmp_path: Path, workers: int) -> None:
    images = mixed_folder(tmp_path / "mixed")  # too small to crop: only for channel handling below
    rng = np.random.default_rng(5)
    for i in range(5):
        img = rng.integers(0, 256, (16, 20), dtype=np.uint8) if i == 2 else rng.integers(0, 256, (20, 16, 3),
                                                                                        dtype=np.uint8)
        write_bgr(tmp_path / "hr" / f"h{i}.png", img)  # one gray image: repeated to RGB as from the folder
    create_lmdb(tmp_path / "hr", tmp_path / "hr.lmdb")
    folder = HRImageDataset(str(tmp_path / "hr"), scale=2, phase="train", gt_size=8)
    packed = HRImageDataset(str(tmp_path / "hr.lmdb"), scale=2, phase="train", gt_size=8, io_backend=LMDB)
    assert_same_batches(train_batches(packed, workers), train_batches(folder, workers))
    create_lmdb(tmp_path / "mixed", tmp_path / "mixed.lmdb")
    for value_scale in (None, 1000.0):
        kw = {"scale": 1, "phase": "val", "value_scale": value_scale}
        a = [s for s in HRImageDataset(str(tmp_path / "mixed.lmdb"), io_backend=LMDB, **kw)]
        b = [s for s in HRImageDataset(str(tmp_path / "mixed"), **kw)]
        assert len(a) == len(images) and all(torch.equal(x["gt"], y["gt"]) for x, y in zip(a, b))


def test_options_file_with_lmdb_trains_on_the_same_batches(tmp_path: Path, hr_folder: Path) -> None:
    create_lmdb(hr_folder, tmp_path / "hr.lmdb")
    path = small_train_yaml(tmp_path, hr_folder)
    streams = []
    packed = [f"datasets.train.dataroot_gt={tmp_path / 'hr.lmdb'}", "datasets.train.io_backend={type: lmdb}",
              f"datasets.val.dataroot_gt={tmp_path / 'hr.lmdb'}", "datasets.val.io_backend={type: lmdb}"]
    for overrides in ([], packed):
        torch.manual_seed(0)
        opt = load_options(path, ["datasets.val.num_worker_per_gpu=0", *overrides])
        stream, vals = build_loaders(opt, torch.device("cpu"))
        streams.append(([stream.next() for _ in range(4)], [b for loader in vals.values() for b in loader]))
    (train_a, val_a), (train_b, val_b) = streams
    assert_same_batches(train_a, train_b)
    assert_same_batches(val_a, val_b)


def test_basicsr_written_lmdb_is_read_as_the_folder(tmp_path: Path) -> None:
    pair_folders(tmp_path, n=4)
    write_bgr(tmp_path / "gray" / "g0.png", np.arange(64, dtype=np.uint8).reshape(8, 8))
    for name in ("gt", "lq", "gray"):
        basicsr_lmdb(tmp_path / name, tmp_path / f"{name}.lmdb")
    assert (tmp_path / "gt.lmdb" / "meta_info.txt").read_text().splitlines()[0] == "img00.png (16,16,3) 1"
    assert (tmp_path / "gray.lmdb" / "meta_info.txt").read_text() == "g0.png (8,8,1) 1\n"
    common = {"scale": 2, "phase": "train", "gt_size": 8}
    folder = PairedImageDataset(str(tmp_path / "gt"), str(tmp_path / "lq"), **common)
    packed = PairedImageDataset(str(tmp_path / "gt.lmdb"), str(tmp_path / "lq.lmdb"), io_backend=LMDB, **common)
    assert_same_batches(train_batches(packed, 0), train_batches(folder, 0))
    gray = LmdbReader(tmp_path / "gray.lmdb").read("g0")
    assert gray.shape == (8, 8, 1) and np.array_equal(gray[:, :, 0], np.arange(64).reshape(8, 8))


def test_meta_info_file_and_indices_select_lmdb_images(tmp_path: Path) -> None:
    pair_folders(tmp_path, n=5)
    create_lmdb(tmp_path / "gt", tmp_path / "gt.lmdb")
    create_lmdb(tmp_path / "lq", tmp_path / "lq.lmdb")
    meta = tmp_path / "subset.txt"
    meta.write_text("img01.png (16,16,3) 1\nimg03\n")  # a file name (BasicSR's lists) or a bare key
    ds = PairedImageDataset(str(tmp_path / "gt.lmdb"), str(tmp_path / "lq.lmdb"), scale=2, phase="val",
                            io_backend=LMDB, meta_info_file=str(meta))
    assert [p.name for p in ds.gt_paths] == ["img01.png", "img03.png"]
    assert [p.name for p in ds.lq_paths] == ["img01.png", "img03.png"]
    ds = HRImageDataset(str(tmp_path / "gt.lmdb"), scale=2, phase="val", io_backend=LMDB, indices=[0, 4])
    assert [p.name for p in ds.gt_paths] == ["img00.png", "img04.png"]
    meta.write_text("img09.png\n")
    with pytest.raises(FileNotFoundError, match="img09.png"):
        HRImageDataset(str(tmp_path / "gt.lmdb"), scale=2, phase="val", io_backend=LMDB, meta_info_file=str(meta))


def test_lq_keys_may_follow_filename_tmpl(tmp_path: Path) -> None:
    pair_folders(tmp_path, n=2)
    for p in sorted((tmp_path / "lq").iterdir()):
        p.rename(p.with_name(f"{p.stem}x2.png"))  # DIV2K-style LR names
    create_lmdb(tmp_path / "gt", tmp_path / "gt.lmdb")
    create_lmdb(tmp_path / "lq", tmp_path / "lq.lmdb")
    ds = PairedImageDataset(str(tmp_path / "gt.lmdb"), str(tmp_path / "lq.lmdb"), scale=2, phase="val",
                            io_backend=LMDB)
    assert [p.name for p in ds.lq_paths] == ["img00x2.png", "img01x2.png"]


def test_dataset_pickles_without_its_environment(tmp_path: Path) -> None:
    pair_folders(tmp_path, n=2)
    create_lmdb(tmp_path / "gt", tmp_path / "gt.lmdb")
    ds = HRImageDataset(str(tmp_path / "gt.lmdb"), scale=2, phase="val", io_backend=LMDB)
    first = ds[0]["gt"]  # opens the environment in this process
    copy = pickle.loads(pickle.dumps(ds))  # as a spawned DataLoader worker receives it
    assert torch.equal(copy[0]["gt"], first)


# ---------------------------------------------------------------- errors


def test_lmdb_errors_name_the_root_file_and_key(tmp_path: Path) -> None:
    pair_folders(tmp_path, n=4)
    create_lmdb(tmp_path / "gt", tmp_path / "gt.lmdb")
    (tmp_path / "lq" / "img02.png").unlink()
    create_lmdb(tmp_path / "lq", tmp_path / "lq.lmdb")
    gt, lq = str(tmp_path / "gt.lmdb"), str(tmp_path / "lq.lmdb")

    with pytest.raises(FileNotFoundError) as info:  # a gt key without its lq partner
        PairedImageDataset(gt, lq, scale=2, phase="val", io_backend=LMDB)
    assert f"no lq counterpart in '{lq}'" in str(info.value) and "img02.png" in str(info.value)

    with pytest.raises(ValueError, match=r"dataroot_lq '.*lq' does not end in \.lmdb"):  # an image folder
        PairedImageDataset(gt, str(tmp_path / "lq"), scale=2, phase="val", io_backend=LMDB)
    (tmp_path / "empty.lmdb").mkdir()
    with pytest.raises(FileNotFoundError, match="empty.lmdb' is not an LMDB: it holds no data.mdb"):
        HRImageDataset(str(tmp_path / "empty.lmdb"), scale=2, phase="val", io_backend=LMDB)
    with pytest.raises(FileNotFoundError, match="missing.lmdb' does not exist"):
        HRImageDataset(str(tmp_path / "missing.lmdb"), scale=2, phase="val", io_backend=LMDB)
    with pytest.raises(ValueError, match="io_backend type must be one of disk, lmdb, got 's3'"):
        HRImageDataset(gt, scale=2, phase="val", io_backend={"type": "s3"})

    meta = tmp_path / "gt.lmdb" / "meta_info.txt"
    text = meta.read_text()
    meta.write_text(text + "img09.png (16,16,3) 1\n")  # listed but not stored
    with pytest.raises(ValueError, match="1 keys listed in meta_info.txt are not stored in data.mdb: img09"):
        HRImageDataset(gt, scale=2, phase="val", io_backend=LMDB)
    meta.write_text(text.replace("img01.png (16,16,3) 1", "img01.png 16x16"))
    with pytest.raises(ValueError, match=r"meta_info.txt, line 2: expected '<key>\.png \(<h>,<w>,<c>\) "
                                         r"<compress_level>', got 'img01.png 16x16'"):
        HRImageDataset(gt, scale=2, phase="val", io_backend=LMDB)
    meta.unlink()
    with pytest.raises(FileNotFoundError, match=f"LMDB '{gt}' has no meta_info.txt"):
        HRImageDataset(gt, scale=2, phase="val", io_backend=LMDB)


def test_unreadable_lmdb_values_are_skipped_in_training(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pair_folders(tmp_path, n=3)
    create_lmdb(tmp_path / "gt", tmp_path / "gt.lmdb")
    env = lmdb.open(str(tmp_path / "gt.lmdb"), map_size=2**24)
    with env.begin(write=True) as txn:
        txn.put(b"img01", b"not a png")
    env.close()
    reader = LmdbReader(tmp_path / "gt.lmdb")
    with pytest.raises(ImageReadError, match=r"gt\.lmdb/img01\.png': OpenCV could not decode the stored bytes"):
        reader.read("img01")
    with pytest.raises(ImageReadError, match=r"key 'nope' is not listed in .*meta_info.txt"):
        reader.read("nope")

    ds = HRImageDataset(str(tmp_path / "gt.lmdb"), scale=2, phase="train", gt_size=8, io_backend=LMDB)
    with caplog.at_level(logging.WARNING, logger="upforge"):
        sample = ds[(1, 0)]
    assert ds.num_skipped == 1 and sample["gt_path"].endswith("img02.png")
    assert any("gt.lmdb/img01.png" in r.getMessage() for r in caplog.records)
    with pytest.raises(ImageReadError, match="img01.png"):  # validation stops on it
        HRImageDataset(str(tmp_path / "gt.lmdb"), scale=2, phase="val", io_backend=LMDB)[1]


def test_missing_lmdb_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lmdb", None)  # import lmdb now raises ImportError
    with pytest.raises(ImportError, match="pip install lmdb"):
        import_lmdb()


# ---------------------------------------------------------------- option files


@pytest.mark.parametrize("backend", [{"type": "lmdb"}, {"type": "disk"}, None])
def test_option_files_accept_io_backend(tmp_path: Path, hr_folder: Path, backend) -> None:
    data = yaml.safe_load(small_train_yaml(tmp_path, hr_folder).read_text())
    data["datasets"]["train"]["io_backend"] = backend
    data["datasets"]["val"]["io_backend"] = backend
    opt = parse_options(data)
    assert opt.datasets["train"]["io_backend"] == backend


@pytest.mark.parametrize(("backend", "where", "message"), [
    ({"type": "s3"}, "datasets.train.io_backend.type", "Input should be 'disk' or 'lmdb' (got 's3')"),
    ({"type": "lmdb", "db_paths": ["a.lmdb"]}, "datasets.train.io_backend.db_paths", "unknown key"),
    ("lmdb", "datasets.train.io_backend", "valid dictionary"),
])
def test_option_files_reject_other_backends(tmp_path: Path, hr_folder: Path, backend, where: str,
                                            message: str) -> None:
    data = yaml.safe_load(small_train_yaml(tmp_path, hr_folder).read_text())
    data["datasets"]["train"]["io_backend"] = backend
    with pytest.raises(OptionsError) as info:
        parse_options(data)
    problems = dict(info.value.problems)
    assert message in problems[where]
