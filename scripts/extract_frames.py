"""Save every N-th frame of a video as PNG files (to grow a training set from longplays or trailers).

    python scripts/extract_frames.py --video longplay.mp4 --out data/frames/longplay_01 \
        [--every 8] [--start 600] [--max_frames 3000] [--prefix longplay]

Frames ``start, start + every, start + 2*every, ...`` (0-based frame indices of the video) are saved
until the video ends or ``max_frames`` files are written. Each file is named after the index of its
frame in the video, ``<prefix>_<index>.png`` with at least six digits (``longplay_000600.png`` is
frame 600): a name says where the frame came from, and runs with other strides or limits over the
same video write the same name for the same frame instead of renumbering. ``--start`` counts frames,
not seconds. Frames are read in order through OpenCV's VideoCapture (no seeking: seeking is exact
only at key frames for most codecs), skipped ones are only grabbed, not converted. PNG is lossless;
the frames carry whatever the video codec already lost.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a plain script from a clone
    sys.path.insert(0, str(ROOT))

from utils.logger import get_logger, setup_logger  # noqa: E402


def frame_name(prefix: str, index: int) -> str:
    """``<prefix>_<index>.png``, the index zero-padded to six digits (longer indices keep all theirs)."""
    return f"{prefix}_{index:06d}.png"


def open_video(path: str | Path) -> cv2.VideoCapture:
    """An opened VideoCapture of ``path``; FileNotFoundError / ValueError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video '{path}' does not exist" if not path.exists() else f"'{path}' is not a file")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"video '{path}': OpenCV cannot open it (not a video, or a codec this OpenCV build lacks)")
    return capture


def sampled_frames(capture: cv2.VideoCapture, every: int, start: int, max_frames: int | None,
                   ) -> Iterator[tuple[int, np.ndarray]]:
    """``(index, BGR frame)`` for frames ``start, start + every, ...``, at most ``max_frames`` of them."""
    index, kept = 0, 0
    while max_frames is None or kept < max_frames:
        if not capture.grab():  # decodes the next frame but does not convert it
            return
        if index >= start and (index - start) % every == 0:
            ok, frame = capture.retrieve()
            if not ok or frame is None:
                raise ValueError(f"frame {index} could not be decoded")
            yield index, frame
            kept += 1
        index += 1


def extract_frames(video: str | Path, out: str | Path, every: int = 1, start: int = 0, max_frames: int | None = None,
                   prefix: str = "frame") -> list[Path]:
    """Write the sampled frames of ``video`` to ``out`` as PNG (see the module docstring); returns the files.

    Raises FileNotFoundError for a missing video, ValueError for an unreadable one, bad arguments,
    or a ``start`` at or beyond the last frame.
    """
    video, out = Path(video), Path(out)
    if every < 1:
        raise ValueError(f"--every must be >= 1 (keep one frame out of every N), got {every}")
    if start < 0:
        raise ValueError(f"--start must be a frame index >= 0, got {start}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"--max_frames must be >= 1 (or left out for no limit), got {max_frames}")
    if not prefix or any(sep in prefix for sep in "/\\"):
        raise ValueError(f"--prefix must be a non-empty file name part without slashes, got {prefix!r}")
    capture = open_video(video)
    written: list[Path] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for index, frame in _with_context(video, sampled_frames(capture, every, start, max_frames)):
            path = out / frame_name(prefix, index)
            if not cv2.imwrite(str(path), frame):
                raise OSError(f"could not write '{path}'")
            written.append(path)
    finally:
        capture.release()
    if not written:
        raise ValueError(_nothing_read(video, start))
    return written


def _with_context(video: Path, frames: Iterator[tuple[int, np.ndarray]]) -> Iterator[tuple[int, np.ndarray]]:
    """``frames``, with a decoding error naming the video."""
    try:
        yield from frames
    except ValueError as err:
        raise ValueError(f"video '{video}': {err}") from err


def _nothing_read(video: Path, start: int) -> str:
    """Why no frame was written: the video has no decodable frame, or ``start`` is past its end."""
    capture = cv2.VideoCapture(str(video))
    try:
        count = 0
        while count <= start and capture.grab():
            count += 1
    finally:
        capture.release()
    if count == 0:
        return f"video '{video}': no frame could be decoded (empty or corrupt file)"
    return f"video '{video}': --start {start} is beyond its end (it has {count} frames, indices 0..{count - 1})"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--video", required=True, help="video file (anything OpenCV's FFmpeg backend reads)")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--every", type=int, default=1, help="keep one frame out of every N")
    parser.add_argument("--start", type=int, default=0, help="index of the first frame kept (frames, not seconds)")
    parser.add_argument("--max_frames", "--max-frames", type=int, default=None, help="stop after this many files")
    parser.add_argument("--prefix", default="frame", help="file names are <prefix>_<frame index>.png")
    args = parser.parse_args(argv)
    logger = setup_logger()
    try:
        written = extract_frames(args.video, args.out, args.every, args.start, args.max_frames, args.prefix)
    except (OSError, ValueError) as err:
        get_logger().error(str(err))
        return 1
    logger.info(f"wrote {len(written)} frames to {args.out} ({written[0].name} .. {written[-1].name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
