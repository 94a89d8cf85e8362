"""``read_frames`` letting the decoder drop the frames its caller will not use, on real H.264 files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deblur.video import read_frames
from media import write_test_video


def not_every_frame(index: int) -> bool:
    return index % 5 < 2


def check_same_frames_where_needed(path: Path, *, from_file: bool) -> int:
    """Compares with decoding every frame; returns how many frames came back as None."""
    full = list(read_frames(path))
    if from_file:
        with path.open("rb") as handle:
            got = list(read_frames(handle, needed=not_every_frame))
    else:
        got = list(read_frames(path, needed=not_every_frame))
    assert len(got) == len(full)
    for index, (frame, expected) in enumerate(zip(got, full, strict=True)):
        if frame is None:
            assert not not_every_frame(index), f"frame {index} is needed but was dropped"
        else:
            np.testing.assert_array_equal(frame, expected, err_msg=f"frame {index}")
    return sum(frame is None for frame in got)


@pytest.mark.parametrize("from_file", [False, True])
def test_unneeded_frames_may_be_dropped_and_every_other_frame_is_unchanged(tmp_path: Path, from_file: bool) -> None:
    # libx264's default (medium) uses B-frames: a third or more of the frames are non-reference.
    path = write_test_video(tmp_path / "b.mp4", width=64, height=48, frames=60, fps=240, pix_fmt="yuv420p", audio=False)
    dropped = check_same_frames_where_needed(path, from_file=from_file)
    assert 10 <= dropped <= 36  # 36 frames are not needed; only non-reference ones can be dropped


def test_a_stream_without_droppable_frames_is_decoded_whole(tmp_path: Path) -> None:
    path = write_test_video(
        tmp_path / "p.mp4", width=64, height=48, frames=30, fps=240, pix_fmt="yuv420p", audio=False,
        options={"bf": "0"},  # P-frames only: every frame is a reference
    )  # fmt: skip
    assert check_same_frames_where_needed(path, from_file=False) == 0


@pytest.mark.parametrize("hole_at", [1, 30, 58])
def test_timestamps_with_a_missing_frame_fall_back_to_decoding_every_frame(tmp_path: Path, hole_at: int) -> None:
    # NUT keeps the 240 fps grid (an integer number of ticks a frame) with one frame's slot empty,
    # so frame numbers from timestamps disagree with the frames' order from the hole on.
    timestamps = [t for t in range(61) if t != hole_at]
    path = write_test_video(
        tmp_path / "hole.nut", width=64, height=48, frames=60, fps=240, pix_fmt="yuv420p", audio=False,
        timestamps=timestamps,
    )  # fmt: skip
    check_same_frames_where_needed(path, from_file=True)
