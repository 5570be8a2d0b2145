"""scripts/extract_frames.py and the video path of scripts/upscale.py, on a small video written here.

The test video is FFV1 (lossless; checked below) so frames read back equal the frames written,
and extracted PNGs and upscaled frames can be compared exactly or to float rounding.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from archs.edsr_arch import EDSR
from scripts import extract_frames as ef
from scripts import upscale as up
from tests.conftest import LogLines

FPS = 12.5
W, H, N = 32, 24, 12


def _frame(i: int) -> np.ndarray:
    """Frame ``i`` (BGR): a gradient background and an 8x8 square moving 2 px right per frame."""
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([xx * 7, yy * 9, 60 + 0 * xx + 10 * i], -1).astype(np.uint8)
    img[4:12, 2 + 2 * i:10 + 2 * i] = (250, 30, 200)
    return img


def _read_all(path: Path) -> tuple[list[np.ndarray], float]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return frames, fps


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    path = tmp_path_factory.mktemp("video") / "moving.mkv"
    frames = [_frame(i) for i in range(N)]
    writer = cv2.VideoWriter(str(path), cv2.CAP_FFMPEG, cv2.VideoWriter_fourcc(*"FFV1"), FPS, (W, H))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    got, fps = _read_all(path)
    # The premise of every exact comparison below: FFV1 here is lossless.
    assert len(got) == N and fps == FPS
    assert all(np.array_equal(a, b) for a, b in zip(got, frames))
    return path, frames


def _reference(net: EDSR, bgr: np.ndarray) -> np.ndarray:
    """``net`` on one BGR uint8 frame, plainly, as 8-bit BGR rounded like write_image."""
    rgb = torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1])).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        out = net(rgb)[0].clamp(0, 1).permute(1, 2, 0).numpy()[:, :, ::-1]
    return np.round(out.astype(np.float64) * 255).astype(np.uint8)


# ------------------------------------------------------------------------ extract_frames


def test_extract_every_start_max(tmp_path: Path, video) -> None:
    path, frames = video
    assert ef.main(["--video", str(path), "--out", str(tmp_path / "f"), "--every", "3", "--start", "2",
                    "--max_frames", "3", "--prefix", "clip"]) == 0
    # frames 2, 5, 8 (frame 11 is past max_frames); names carry the frame index in the video
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == ["clip_000002.png", "clip_000005.png",
                                                                   "clip_000008.png"]
    for index in (2, 5, 8):
        png = cv2.imread(str(tmp_path / "f" / f"clip_{index:06d}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(png, frames[index])  # lossless video, lossless PNG: exact


def test_extract_until_the_end(tmp_path: Path, video) -> None:
    path, frames = video
    written = ef.extract_frames(path, tmp_path / "all", every=5, start=1)
    assert [p.name for p in written] == ["frame_000001.png", "frame_000006.png", "frame_000011.png"]
    np.testing.assert_array_equal(cv2.imread(str(written[-1])), frames[11])
    assert ef.frame_name("x", 1234567) == "x_1234567.png"  # past six digits every digit is kept


def test_extract_errors(tmp_path: Path, video) -> None:
    path, _ = video
    with pytest.raises(FileNotFoundError, match="video '.*nothing.mp4' does not exist"):
        ef.extract_frames(tmp_path / "nothing.mp4", tmp_path / "o")
    junk = tmp_path / "junk.mp4"
    junk.write_text("not a video")
    with pytest.raises(ValueError, match="junk.mp4': OpenCV cannot open it"):
        ef.extract_frames(junk, tmp_path / "o")
    with pytest.raises(ValueError, match="--every must be >= 1.*got 0"):
        ef.extract_frames(path, tmp_path / "o", every=0)
    with pytest.raises(ValueError, match=r"--start 12 is beyond its end \(it has 12 frames, indices 0..11\)"):
        ef.extract_frames(path, tmp_path / "o", start=12)
    with pytest.raises(ValueError, match="--max_frames must be >= 1"):
        ef.extract_frames(path, tmp_path / "o", max_frames=0)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    assert ef.main(["--video", str(path), "--out", str(tmp_path / "o"), "--start", "40"]) == 1


# ------------------------------------------------------------------------ upscale.py, video


def test_upscale_video_matches_frames(tmp_path: Path, video, small_edsr) -> None:
    path, frames = video
    weights, net = small_edsr
    log, lines = logging.getLogger("upforge"), LogLines()
    log.addHandler(lines)
    level = log.level
    log.setLevel(logging.INFO)
    try:
        # 12 frames in passes of 5, 5, 2, each frame cut into 2 x 2 tiles of 10 (overlap 8 covers
        # the network's receptive radius of 6 LR px), so batching and tiling change only rounding
        written = up.upscale(path, tmp_path / "out" / "up.mkv", weights, device="cpu", frame_batch=5, tile=10,
                             tile_overlap=8, tile_batch=3, log_every=5)
    finally:
        log.removeHandler(lines)
        log.setLevel(level)
    assert written == [tmp_path / "out" / "up.mkv"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["up.mkv"]  # the .partial file was renamed
    got, fps = _read_all(written[0])
    assert len(got) == N and fps == FPS and got[0].shape == (2 * H, 2 * W, 3)
    progress = [line for line in lines.lines if line.startswith("moving.mkv:")]
    assert [line.split(" frames")[0] for line in progress] == ["moving.mkv: 5 of 12", "moving.mkv: 10 of 12",
                                                              "moving.mkv: 12 of 12"]
    for i in (0, 7, 11):
        diff = np.abs(got[i].astype(int) - _reference(net, frames[i]).astype(int))
        assert diff.max() <= 1 and (diff == 0).mean() > 0.99, i  # FFV1 output: only float rounding

    # The first frame through the image path of the same script: the same pixels (to rounding).
    cv2.imwrite(str(tmp_path / "first.png"), frames[0])
    image = up.upscale(tmp_path / "first.png", tmp_path / "first_x2.png", weights, device="cpu")[0]
    diff = np.abs(cv2.imread(str(image)).astype(int) - got[0].astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99


def test_upscale_video_cli_to_folder_unbatched_is_exact(tmp_path: Path, video, small_edsr) -> None:
    path, frames = video
    weights, net = small_edsr
    # an output that is not a video file name is a folder: the video keeps its name there
    assert up.main(["-i", str(path), "-o", str(tmp_path / "outdir"), "--model", str(weights), "--device", "cpu",
                    "--log-every", "0"]) == 0
    got, _ = _read_all(tmp_path / "outdir" / "moving.mkv")
    assert len(got) == N
    # one frame per pass, no tiles: the same float operations as the reference, bit for bit
    np.testing.assert_array_equal(got[3], _reference(net, frames[3]))


def test_default_codecs_write_and_read_back(tmp_path: Path) -> None:
    """Every extension's default codec opens in this OpenCV and keeps count, size, rate and colours:
    FFV1 exactly; the lossy ones (measured 35-40 dB on these frames) above 30 dB, which a swapped
    channel order (about 8 dB here) or a wrong frame size would not reach."""
    frames = [cv2.resize(_frame(i), (64, 48), interpolation=cv2.INTER_NEAREST) for i in range(4)]
    assert set(up.VIDEO_CODECS) == {".mkv", ".avi", ".mp4", ".mov", ".webm"}
    for ext, code in up.VIDEO_CODECS.items():
        target = tmp_path / f"c{ext}"
        writer = up.open_video_writer(target, 10.0, (64, 48))
        for frame in frames:
            writer.write(frame)
        writer.release()
        got, fps = _read_all(target)
        assert len(got) == 4 and fps == 10.0 and got[0].shape == (48, 64, 3), ext
        mse = np.mean([(g.astype(float) - f.astype(float)) ** 2 for g, f in zip(got, frames)])
        if code == "FFV1":
            assert mse == 0
        else:
            assert 10 * np.log10(255**2 / mse) > 30, ext
        swapped = np.mean([(g[:, :, ::-1].astype(float) - f.astype(float)) ** 2 for g, f in zip(got, frames)])
        assert 10 * np.log10(255**2 / swapped) < 15, ext


def test_upscale_video_errors(tmp_path: Path, video, small_edsr) -> None:
    path, _ = video
    weights, _ = small_edsr
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match="junk.avi': OpenCV cannot open it"):
        up.upscale(junk, tmp_path / "o.mkv", weights, device="cpu")
    with pytest.raises(FileNotFoundError, match="missing.mp4' does not exist"):
        up.upscale(tmp_path / "missing.mp4", tmp_path / "o.mkv", weights, device="cpu")
    with pytest.raises(ValueError, match="frame_batch must be an int >= 1, got 0"):
        up.upscale(path, tmp_path / "o.mkv", weights, frame_batch=0)
    with pytest.raises(ValueError, match="no codec; use one of .* or a 4-letter --fourcc"):
        up.upscale(path, tmp_path / "o.mkv", weights, device="cpu", fourcc="XY")
    assert not (tmp_path / "o.mkv").exists() and not (tmp_path / "o.partial.mkv").exists()


def test_failed_video_leaves_no_file(tmp_path: Path, video) -> None:
    path, _ = video
    calls = []

    def forward(lq: torch.Tensor) -> torch.Tensor:
        calls.append(lq.shape[0])
        if len(calls) == 2:
            raise RuntimeError("out of memory (simulated)")
        return torch.nn.functional.interpolate(lq.float(), scale_factor=2, mode="nearest")

    with pytest.raises(RuntimeError, match="simulated"):
        up.upscale_video(path, tmp_path / "v.mkv", forward, 2, torch.device("cpu"), torch.float32, frame_batch=4)
    assert calls == [4, 4] and list(tmp_path.iterdir()) == []  # the partial video was removed

    def wrong_scale(lq: torch.Tensor) -> torch.Tensor:
        return lq.float()

    with pytest.raises(ValueError, match=r"expected \(4, 3, 48, 64\) \(3 channels, x2\)"):
        up.upscale_video(path, tmp_path / "v.mkv", wrong_scale, 2, torch.device("cpu"), torch.float32, frame_batch=4)
    assert list(tmp_path.iterdir()) == []
