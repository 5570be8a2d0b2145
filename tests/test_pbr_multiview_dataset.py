"""data/pbr_multiview_dataset.py: the NeuroPBR multi-view dataset on a tiny render (2 procedural
materials x 2 samples, 32 px, scripts/render_pbr_views.py) and on hand-written PNGs: curriculum
counts, channel order against the files, flips and rotations turning the normals, seeding, the
split, resizing, the build-time error messages and a 2-worker loader."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from data import pbr_multiview_dataset as pmd
from data.auto_split import split_part
from data.data_loader import build_dataloader, build_dataset
from data.pbr_multiview_dataset import MAP_SLICES, PBRMultiViewDataset, view_slice
from data.pbr_rendering import transform_normals
from data.prefetcher import batch_to_device
from scripts.render_pbr_views import render_dataset
from utils.registry import DATASET_REGISTRY

MAPS = ("albedo", "roughness", "metallic", "normal")


@pytest.fixture(scope="module")
def render(tmp_path_factory) -> Path:
    """sample_0000, 0001 → procedural_000_000, _001; sample_0002, 0003 → procedural_001_000, _001."""
    out = tmp_path_factory.mktemp("pbr_render")
    render_dataset(out, procedural=2, samples=2, seed=0, size=32)
    return out


def _copy(render: Path, tmp_path: Path) -> Path:
    shutil.copytree(render, tmp_path / "r")
    return tmp_path / "r"


def _ds(root: Path, **kw) -> PBRMultiViewDataset:
    kw.setdefault("phase", "val")
    return PBRMultiViewDataset(dataroot_input=str(root / "input"), dataroot_output=str(root / "output"), **kw)


def _png(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)


def _rgb(path: Path) -> np.ndarray:
    """HxWxC uint8 read with OpenCV directly (BGR → RGB), not through the dataset's reader."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return img[:, :, None] if img.ndim == 2 else img[:, :, ::-1]


def _layout(root: Path, count: int, size: int = 4, sources: tuple[str, ...] = ("clean", "dirty"),
            start: int = 0) -> dict[str, str]:
    """Hand-written samples sample_<start..>, each with its own output folder mat_<i>, random pixels."""
    rng = np.random.default_rng(start)
    meta_path = root / "input" / "render_metadata.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    for i in range(start, start + count):
        name, material = f"sample_{i:04d}", f"mat_{i:03d}"
        for source in sources:
            for v in range(3):
                _png(root / "input" / source / name / f"{v}.png", rng.integers(0, 256, (size, size, 3), np.uint8))
        for key, ch in zip(MAPS, (3, 1, 1, 3)):
            img = rng.integers(0, 256, (size, size, ch), np.uint8)
            _png(root / "output" / material / f"{key}.png", img[:, :, 0] if ch == 1 else img)
        meta[name] = material
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(meta))
    return meta


def _decode(encoded: np.ndarray) -> np.ndarray:
    """Normal vectors (HxWx3) from an encoded 8-bit map (HWC)."""
    arr = np.asarray(encoded, dtype=np.float64)
    return arr / 255.0 * 2.0 - 1.0


def _hwc(t: torch.Tensor) -> np.ndarray:
    return t.numpy().transpose(1, 2, 0)


# ------------------------------------------------------------------------ listing


def test_registered_and_channel_layout() -> None:
    assert DATASET_REGISTRY.get("PBRMultiViewDataset") is PBRMultiViewDataset
    covered = [c for s in MAP_SLICES.values() for c in range(8)[s]]
    assert covered == list(range(8)) and list(MAP_SLICES) == list(MAPS)
    assert [len(range(8)[s]) for s in MAP_SLICES.values()] == [3, 1, 1, 3]
    assert view_slice(2) == slice(6, 9)


def test_curriculum_counts(render: Path, tmp_path: Path) -> None:
    root = _copy(render, tmp_path)
    shutil.rmtree(root / "input" / "dirty" / "sample_0000")  # 0000: clean only
    shutil.rmtree(root / "input" / "clean" / "sample_0003")  # 0003: dirty only
    entries = {c: [(s.name, s.source) for s in _ds(root, render_curriculum=c).samples] for c in (0, 1, 2)}
    assert entries[0] == [("sample_0000", "clean"), ("sample_0001", "clean"), ("sample_0002", "clean")]
    assert entries[1] == [("sample_0000", "clean"), ("sample_0001", "clean"), ("sample_0001", "dirty"),
                          ("sample_0002", "clean"), ("sample_0002", "dirty"), ("sample_0003", "dirty")]
    assert entries[2] == [("sample_0001", "dirty"), ("sample_0002", "dirty"), ("sample_0003", "dirty")]
    ds = _ds(root, render_curriculum=1)
    item = ds[5]
    assert (item["source"], item["material"]) == ("dirty", "procedural_001_001")
    assert item["lq_path"] == str(root / "input" / "dirty" / "sample_0003")
    assert item["gt_path"] == str(root / "output" / "procedural_001_001")


def test_channel_order_equals_the_files(render: Path) -> None:
    val = _ds(render)
    train = _ds(render, phase="train", use_hflip=False, use_rot=False)
    for index in (0, 3):
        folder = render / "input" / "clean" / f"sample_{index:04d}"
        target = render / "output" / json.loads((render / "input" / "render_metadata.json").read_text())[
            f"sample_{index:04d}"]
        v, t = val[index], train[(index, 11)]
        assert v["lq"].dtype == torch.float32 and v["lq"].shape == (9, 32, 32) and v["gt"].shape == (8, 32, 32)
        assert t["lq"].dtype == torch.uint8 and t["gt"].dtype == torch.uint8
        for view in range(3):
            expected = _rgb(folder / f"{view}.png")
            assert np.array_equal(_hwc(t["lq"][3 * view:3 * view + 3]), expected)
            np.testing.assert_allclose(_hwc(v["lq"][view_slice(view)]), expected / 255.0, atol=1e-6)
        for key in MAPS:
            expected = _rgb(target / f"{key}.png")
            assert expected.shape[2] == (1 if key in ("roughness", "metallic") else 3)
            assert np.array_equal(_hwc(t["gt"][MAP_SLICES[key]]), expected), key
            np.testing.assert_allclose(_hwc(v["gt"][MAP_SLICES[key]]), expected / 255.0, atol=1e-6)


# ------------------------------------------------------------------------ augmentation


def _find_transform(moved: np.ndarray, original: np.ndarray) -> tuple[int, bool]:
    """The (rotations, flip) that turn ``original`` into ``moved`` (views: plain pixels)."""
    hits = [(k, f) for k in range(4) for f in (False, True)
            if np.array_equal(pmd.move_pixels(original, k, f), moved)]
    assert len(hits) == 1, hits
    return hits[0]


def test_hflip_negates_the_normals_x(render: Path) -> None:
    plain = _ds(render, phase="train", use_hflip=False, use_rot=False)[(1, 0)]
    ds = _ds(render, phase="train", use_hflip=True, use_rot=False)
    normal = _hwc(plain["gt"][MAP_SLICES["normal"]])
    seen = set()
    for seed in range(20):
        out = ds[(1, seed)]
        flipped = not np.array_equal(out["lq"], plain["lq"])
        seen.add(flipped)
        got = _hwc(out["gt"][MAP_SLICES["normal"]])
        if flipped:
            for view in range(3):  # every view mirrored alike
                assert np.array_equal(_hwc(out["lq"][view_slice(view)]), _hwc(plain["lq"][view_slice(view)])[:, ::-1])
            mirrored = normal[:, ::-1].astype(int)
            assert np.array_equal(got[..., 0].astype(int), 255 - mirrored[..., 0])  # x → -x: v → 255 - v
            assert np.array_equal(got[..., 1:], normal[:, ::-1, 1:])  # y, z kept
            np.testing.assert_allclose(_decode(got)[..., 0], -_decode(normal)[:, ::-1, 0], atol=1e-12)
            assert np.array_equal(_hwc(out["gt"][MAP_SLICES["albedo"]]),
                                  _hwc(plain["gt"][MAP_SLICES["albedo"]])[:, ::-1])
        else:
            assert np.array_equal(out["gt"], plain["gt"])
    assert seen == {True, False}


def test_rotations_turn_views_maps_and_normals_alike(render: Path) -> None:
    plain = _ds(render, phase="train", use_hflip=False, use_rot=False)[(2, 0)]
    ds = _ds(render, phase="train", use_hflip=True, use_rot=True)
    decoded = _decode(_hwc(plain["gt"][MAP_SLICES["normal"]]))
    seen = set()
    for seed in range(24):
        out = ds[(2, seed)]
        k, flip = _find_transform(_hwc(out["lq"][view_slice(0)]), _hwc(plain["lq"][view_slice(0)]))
        seen.add((k, flip))
        for view in (1, 2):
            assert np.array_equal(_hwc(out["lq"][view_slice(view)]),
                                  pmd.move_pixels(_hwc(plain["lq"][view_slice(view)]), k, flip))
        for key in ("albedo", "roughness", "metallic"):
            assert np.array_equal(_hwc(out["gt"][MAP_SLICES[key]]),
                                  pmd.move_pixels(_hwc(plain["gt"][MAP_SLICES[key]]), k, flip)), key
        got = _decode(_hwc(out["gt"][MAP_SLICES["normal"]]))
        np.testing.assert_allclose(got, transform_normals(decoded, k, flip), atol=1e-9)
        if (k, flip) == (1, False):  # by hand: a 90° counter-clockwise turn takes (x, y) to (-y, x)
            turned = np.rot90(decoded)
            np.testing.assert_allclose(got[..., 0], -turned[..., 1], atol=1e-9)
            np.testing.assert_allclose(got[..., 1], turned[..., 0], atol=1e-9)
    assert len(seen) >= 5  # 24 draws of 8 equally likely transforms


def test_deterministic_by_seed(render: Path) -> None:
    a = _ds(render, phase="train", render_curriculum=1)
    b = _ds(render, phase="train", render_curriculum=1)
    for index, seed in ((0, 5), (3, 123456789), (7, 2**40)):
        x, y = a[(index, seed)], b[(index, seed, {})]
        assert torch.equal(x["lq"], y["lq"]) and torch.equal(x["gt"], y["gt"]) and x["source"] == y["source"]
    outs = {a[(6, s)]["lq"].numpy().tobytes() for s in range(8)}
    assert len(outs) > 1  # the seed decides the transform
    torch.manual_seed(3)
    first = a[4]["gt"]
    torch.manual_seed(3)
    assert torch.equal(a[4]["gt"], first)  # without a seed: torch's RNG


# ------------------------------------------------------------------------ split


def test_split_is_disjoint_stable_and_keeps_sources_together(tmp_path: Path) -> None:
    meta = _layout(tmp_path, 30)
    ratios = [0.6, 0.2, 0.2]
    parts = {}
    for part in ("train", "val", "test"):
        ds = _ds(tmp_path, render_curriculum=1, split={"part": part, "ratios": ratios, "seed": 7})
        parts[part] = [(s.name, s.source) for s in ds.samples]
        again = _ds(tmp_path, render_curriculum=1, split={"part": part, "ratios": ratios, "seed": 7})
        assert [(s.name, s.source) for s in again.samples] == parts[part]  # stable
        names = {n for n, _ in parts[part]}
        assert sorted(parts[part]) == sorted((n, s) for n in names for s in ("clean", "dirty"))  # both sources
        assert names == {n for n, m in meta.items() if split_part(m, ratios, 7) == part}
    sets = [{n for n, _ in p} for p in parts.values()]
    assert all(sets) and not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    assert set.union(*sets) == set(meta)
    # adding samples moves none of the others between parts
    _layout(tmp_path, 5, start=30)
    grown = _ds(tmp_path, render_curriculum=1, split={"part": "val", "ratios": ratios, "seed": 7})
    assert {s.name for s in grown.samples} & set(meta) == sets[1]
    # the seed's val_ratio 0.1: ratios [0.9, 0.1, 0]
    tr = _ds(tmp_path, split={"part": "train", "ratios": [0.9, 0.1, 0.0], "seed": 42})
    va = _ds(tmp_path, split={"part": "val", "ratios": [0.9, 0.1, 0.0], "seed": 42})
    assert len(tr) + len(va) == 35 and not {s.name for s in tr.samples} & {s.name for s in va.samples}


# ------------------------------------------------------------------------ resizing


def test_image_size_resizes_and_keeps_unit_normals(render: Path) -> None:
    for size in (16, 48):
        val = _ds(render, image_size=size)
        train = _ds(render, phase="train", image_size=size)
        for index in range(len(val)):
            v, t = val[index], train[(index, index)]
            assert v["lq"].shape == t["lq"].shape == (9, size, size)
            assert v["gt"].shape == t["gt"].shape == (8, size, size)
            assert t["gt"].dtype == torch.uint8
            n_val = _hwc(v["gt"][MAP_SLICES["normal"]]).astype(np.float64) * 2.0 - 1.0
            np.testing.assert_allclose(np.linalg.norm(n_val, axis=-1), 1.0, atol=1e-5)
            n_train = _decode(_hwc(t["gt"][MAP_SLICES["normal"]]))
            np.testing.assert_allclose(np.linalg.norm(n_train, axis=-1), 1.0, atol=0.01)  # 8-bit: < √3/255


def test_image_size_averages_areas(tmp_path: Path) -> None:
    _layout(tmp_path, 1, size=4, sources=("clean",))
    rough = np.array([[0, 0, 100, 100], [0, 0, 100, 100], [200, 200, 50, 50], [200, 200, 50, 52]], np.uint8)
    _png(tmp_path / "output" / "mat_000" / "roughness.png", rough)
    flat = np.zeros((4, 4, 3), np.uint8)
    flat[:] = (255, 128, 128)  # BGR of RGB (128, 128, 255): n ≈ (0, 0, 1)
    flat[0, 0] = (128, 128, 255)  # one pixel leaning to +x: RGB (255, 128, 128)
    _png(tmp_path / "output" / "mat_000" / "normal.png", flat)
    item = _ds(tmp_path, image_size=2)[0]
    # each output pixel is the mean of a 2x2 block: 0, 100, 200, (50 + 50 + 50 + 52) / 4 = 50.5
    np.testing.assert_allclose(item["gt"][MAP_SLICES["roughness"]][0].numpy(),
                               np.array([[0, 100], [200, 50.5]]) / 255.0, atol=1e-6)
    n = _hwc(item["gt"][MAP_SLICES["normal"]]).astype(np.float64) * 2.0 - 1.0
    np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-5)
    # top-left block: three (0.004, 0.004, 1) and one (1, 0.004, 0.004) averaged then normalised: x > 0.3
    assert n[0, 0, 0] > 0.3 and abs(n[1, 1, 0]) < 0.01


# ------------------------------------------------------------------------ errors


def _message(root: Path, **kw) -> str:
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        _ds(root, **kw)
    return str(info.value)


def test_missing_metadata_says_how_to_make_it(tmp_path: Path) -> None:
    _layout(tmp_path, 2)
    (tmp_path / "input" / "render_metadata.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"render_metadata\.json not found.*render_pbr_views\.py"):
        _ds(tmp_path)
    _layout(tmp_path, 1, start=5)  # metadata_path points elsewhere
    shutil.move(tmp_path / "input" / "render_metadata.json", tmp_path / "meta.json")
    with pytest.raises(ValueError, match=r"not listed in the metadata .*meta\.json.*sample_0000"):
        _ds(tmp_path, metadata_path=str(tmp_path / "meta.json"))


def test_sample_folder_absent_from_the_metadata(tmp_path: Path) -> None:
    meta = _layout(tmp_path, 3)
    del meta["sample_0001"]
    (tmp_path / "input" / "render_metadata.json").write_text(json.dumps(meta))
    message = _message(tmp_path)
    assert "1 sample folder(s) are not listed in the metadata" in message
    assert str(tmp_path / "input" / "clean" / "sample_0001") in message and "sample_0002" not in message


def test_metadata_naming_a_missing_output_folder(tmp_path: Path) -> None:
    _layout(tmp_path, 2)
    shutil.rmtree(tmp_path / "output" / "mat_001")
    message = _message(tmp_path)
    assert f"maps sample_0001 to 'mat_001', but the output folder '{tmp_path / 'output' / 'mat_001'}' does not " \
           "exist" in message


def test_missing_view_and_missing_map_are_named(tmp_path: Path) -> None:
    _layout(tmp_path, 2)
    (tmp_path / "input" / "clean" / "sample_0001" / "1.png").unlink()
    (tmp_path / "output" / "mat_000" / "metallic.png").unlink()
    message = _message(tmp_path)
    assert f"view '{tmp_path / 'input' / 'clean' / 'sample_0001' / '1.png'}' is missing" in message
    assert f"map '{tmp_path / 'output' / 'mat_000' / 'metallic.png'}' is missing" in message
    with pytest.raises(FileNotFoundError) as info:  # with one view only 0.png is needed; the map still is
        _ds(tmp_path, num_views=1)
    assert "metallic.png" in str(info.value) and "1.png" not in str(info.value)


def test_no_samples_for_the_curriculum(tmp_path: Path) -> None:
    _layout(tmp_path, 2, sources=("clean",))
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"No samples found for render_curriculum 2 (dirty only): the sample folders are read from "
            f"'{tmp_path / 'input' / 'dirty'}', but '{tmp_path / 'input' / 'dirty'}' does not exist")):
        _ds(tmp_path, render_curriculum=2)
    assert len(_ds(tmp_path, render_curriculum=1)) == 2


def test_view_sizes_are_checked(tmp_path: Path) -> None:
    _layout(tmp_path, 2, size=4)
    odd = tmp_path / "input" / "clean" / "sample_0001" / "2.png"
    _png(odd, np.zeros((5, 4, 3), np.uint8))
    message = _message(tmp_path)
    assert f"views of one sample differ in size: '{odd}' is 5x4 (HxW)" in message
    with pytest.raises(ValueError, match=re.escape(str(odd))):
        _ds(tmp_path, image_size=4)  # views of a sample must agree even when resized


def test_view_size_against_the_maps(tmp_path: Path) -> None:
    _layout(tmp_path, 2, size=4)
    big = tmp_path / "output" / "mat_000" / "normal.png"
    _png(big, np.full((8, 8, 3), 128, np.uint8))
    message = _message(tmp_path)
    assert f"map '{big}' is 8x8 (HxW) but '{tmp_path / 'input' / 'clean' / 'sample_0000' / '0.png'}' is 4x4" in message
    assert "set image_size" in message
    assert _ds(tmp_path, image_size=4)[0]["gt"].shape == (8, 4, 4)  # resized: fine


def test_training_samples_of_different_sizes_need_image_size(tmp_path: Path) -> None:
    _layout(tmp_path, 1, size=4)
    _layout(tmp_path, 1, size=6, start=1)
    assert len(_ds(tmp_path)) == 2  # validation: one sample per batch
    with pytest.raises(ValueError, match="training samples differ in size.*set image_size"):
        _ds(tmp_path, phase="train")
    assert len(_ds(tmp_path, phase="train", image_size=4)) == 2


def test_decode_time_problems_name_the_file(tmp_path: Path, monkeypatch, caplog) -> None:
    _layout(tmp_path, 3)
    bad = tmp_path / "input" / "clean" / "sample_0000" / "2.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(OSError, match=re.escape(f"cannot read image '{bad}'")):
        _ds(tmp_path)  # a validation set reads every sample at build
    train = _ds(tmp_path, phase="train")  # the header is unreadable: found when read, skipped
    item = train[(0, 1)]
    assert item["lq_path"].endswith("sample_0001") and train.num_skipped == 1
    assert "skipping unreadable training sample sample_0000" in caplog.text
    # a size only the decoded image tells (no header read at build): a ValueError naming the file
    _png(bad, np.zeros((4, 4, 3), np.uint8))
    odd = tmp_path / "output" / "mat_001" / "albedo.png"
    _png(odd, np.zeros((3, 4, 3), np.uint8))
    monkeypatch.setattr(pmd, "header_size", lambda path: None)
    train = _ds(tmp_path, phase="train")
    with pytest.raises(ValueError, match=re.escape(f"map '{odd}' is 3x4 (HxW)")):
        train[(1, 0)]


def test_option_values_are_checked(tmp_path: Path) -> None:
    _layout(tmp_path, 1)
    for kw, key in (({"render_curriculum": 3}, "render_curriculum"), ({"image_size": 0}, "image_size"),
                    ({"num_views": 0}, "num_views"), ({"phase": "eval"}, "phase"),
                    ({"split": {"part": "val", "ratios": [0.9, 0.1]}}, "split.ratios")):
        with pytest.raises(ValueError, match=f"PBRMultiViewDataset: {key}"):
            _ds(tmp_path, **kw)
    with pytest.raises(FileNotFoundError, match="dataroot_output"):
        PBRMultiViewDataset(str(tmp_path / "input"), str(tmp_path / "nowhere"))


# ------------------------------------------------------------------------ loader


def test_build_dataloader_with_two_workers(render: Path) -> None:
    section = {"type": "PBRMultiViewDataset", "dataroot_input": str(render / "input"),
               "dataroot_output": str(render / "output"), "phase": "train", "batch_size_per_gpu": 2,
               "num_worker_per_gpu": 2}
    ds = build_dataset(section)
    assert isinstance(ds, PBRMultiViewDataset) and len(ds) == 4

    def first(workers: int) -> dict:
        loader = build_dataloader(ds, "train", 2, workers, pin_memory=False, persistent_workers=False, seed=3)
        loader.batch_sampler.set_epoch(0)
        return next(iter(loader))

    batch = first(2)
    assert batch["lq"].shape == (2, 9, 32, 32) and batch["lq"].dtype == torch.uint8
    assert batch["gt"].shape == (2, 8, 32, 32) and batch["gt"].dtype == torch.uint8
    assert batch["source"] == ["clean", "clean"] and len(batch["material"]) == 2
    serial = first(0)  # the per-sample seeds, not the workers, decide the batch
    assert torch.equal(batch["lq"], serial["lq"]) and torch.equal(batch["gt"], serial["gt"])
    moved = batch_to_device(batch, torch.device("cpu"), channels_last=False, non_blocking=False)
    assert moved["gt"].dtype == torch.float32 and float(moved["gt"].max()) <= 1.0
