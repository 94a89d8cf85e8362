"""Irregular timestamps: repeated, going back, missing ones are repaired on the way out, gaps kept.

Such videos decode fine, but no muxer takes their timestamps as they are: before the repair,
``deblur video`` stopped with "cannot write the video (Invalid argument)", or wrote a Matroska
file whose frames all had timestamp 0. The inputs are tiny real H.264 files muxed by PyAV with
chosen timestamps (``media.write_h264_with_timestamps``); the outputs go through the real command
into MP4, Matroska and QuickTime.
"""

from __future__ import annotations

import itertools
import logging
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from deblur.batch import VideoTask, deblur_object
from deblur.checkpoint import load_model
from deblur.cli import main
from deblur.video import probe_video, transform_video
from deblur.video.timestamps import Timestamps
from media import write_h264_with_timestamps

CONTAINERS = ["mp4", "mkv", "mov"]
FRAME = 1 / 30  # the inputs' nominal frame duration, seconds
MS = 0.0011  # Matroska keeps milliseconds: a time "kept" is kept to within this


def frame_times(path: Path) -> list[float | None]:
    """Presentation times of the decoded frames, in decoding output order (None: no timestamp)."""
    with av.open(str(path)) as container:
        return [None if f.pts is None else float(f.pts * f.time_base) for f in container.decode(video=0)]


def packet_dts(path: Path) -> list[int]:
    with av.open(str(path)) as container:
        return [p.dts for p in container.demux(video=0) if p.size and p.dts is not None]


def deblur(source: Path, out: Path, checkpoint: Path) -> None:
    assert main(["video", str(source), "-o", str(out), "--checkpoint", str(checkpoint), "--device", "cpu", "-q"]) == 0


def check_output(out: Path, frames: int) -> list[float]:
    """Every frame is there and the timestamps strictly increase (decode order too, where stored)."""
    times = frame_times(out)
    assert len(times) == frames
    assert all(t is not None for t in times)
    assert all(b > a for a, b in itertools.pairwise(times)), times
    if out.suffix != ".mkv":  # Matroska stores presentation times only
        dts = packet_dts(out)
        assert len(dts) == frames
        assert all(b > a for a, b in itertools.pairwise(dts)), dts
    return times  # type: ignore[return-value]


def repairs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "deblur.video" and r.levelno == logging.WARNING]


@pytest.mark.parametrize("container", CONTAINERS)
def test_repeated_timestamps_are_repaired_every_frame_kept(
    container: str, tmp_path: Path, tiny_checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = write_h264_with_timestamps(tmp_path / "repeated.mkv", [0, 1, 2, 2, 3, 4, 5, 6])
    before = frame_times(source)
    assert before[2] == before[3]  # the input does repeat one
    out = tmp_path / f"out.{container}"
    with caplog.at_level(logging.WARNING, logger="deblur.video"):
        deblur(source, out, tiny_checkpoint)
    after = check_output(out, 8)
    # As close to the source as the container allows: every other frame keeps its time, the
    # repeated one goes between its neighbours (no drift for the frames after it).
    for i in (0, 1, 2, 4, 5, 6, 7):
        assert after[i] == pytest.approx(before[i], abs=MS)
    assert before[3] < after[3] < before[4]
    assert repairs(caplog) == [f"{source}: irregular timestamps (1 repeated) repaired: 1 of 8 frames retimed, all kept"]


@pytest.mark.parametrize("container", CONTAINERS)
def test_timestamps_going_back_are_repaired_every_frame_kept(
    container: str, tmp_path: Path, tiny_checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Presentation times 0 1 2 5 4 6 7 8 (frames) with increasing decoding times: frame 4 goes back.
    source = write_h264_with_timestamps(tmp_path / "back.mkv", [0, 1, 2, 5, 4, 6, 7, 8], dts=list(range(8)))
    before = frame_times(source)
    assert before[4] < before[3]
    out = tmp_path / f"out.{container}"
    with caplog.at_level(logging.WARNING, logger="deblur.video"):
        deblur(source, out, tiny_checkpoint)
    after = check_output(out, 8)
    for i in (0, 1, 2, 3, 5, 6, 7):
        assert after[i] == pytest.approx(before[i], abs=MS)
    assert before[3] < after[4] < before[5]
    assert repairs(caplog) == [
        f"{source}: irregular timestamps (1 going back) repaired: 1 of 8 frames retimed, all kept"
    ]


@pytest.mark.parametrize("container", CONTAINERS)
def test_a_clock_reset_goes_on_after_the_first_part_with_its_own_spacing(
    container: str, tmp_path: Path, tiny_checkpoint: Path
) -> None:
    # Two MPEG-TS files joined end to end (a common way to cut and join): the clock starts again.
    part = write_h264_with_timestamps(tmp_path / "part.ts", [0, 1, 3, 4])  # a gap inside each part
    source = tmp_path / "joined.ts"
    source.write_bytes(part.read_bytes() * 2)
    before = frame_times(source)
    assert before[4] == before[0]
    out = tmp_path / f"out.{container}"
    deblur(source, out, tiny_checkpoint)
    after = check_output(out, 8)
    start = after[0]
    # First part as it was; the second one frame after it, its own spacing (gap included) kept.
    expected = [0, 1, 3, 4, 5, 6, 8, 9]
    assert [t - start for t in after] == pytest.approx([n * FRAME for n in expected], abs=MS)


@pytest.mark.parametrize("container", CONTAINERS)
def test_gaps_are_kept_so_variable_frame_rates_stay_variable(
    container: str, tmp_path: Path, tiny_checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = write_h264_with_timestamps(tmp_path / "gaps.mkv", [0, 1, 2, 10, 11, 12, 20, 21])
    before = frame_times(source)
    out = tmp_path / f"out.{container}"
    with caplog.at_level(logging.WARNING, logger="deblur.video"):
        deblur(source, out, tiny_checkpoint)
    after = check_output(out, 8)
    assert after == pytest.approx(before, abs=MS)
    assert repairs(caplog) == []  # nothing to repair: nothing said


@pytest.mark.parametrize("container", CONTAINERS)
def test_a_video_without_timestamps_gets_its_nominal_rate(
    container: str, tmp_path: Path, tiny_checkpoint: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = write_h264_with_timestamps(tmp_path / "raw.h264", list(range(8)))  # raw H.264 stores no times
    assert frame_times(source) == [None] * 8
    fps = probe_video(source).fps
    assert fps > 0
    out = tmp_path / f"out.{container}"
    with caplog.at_level(logging.WARNING, logger="deblur.video"):
        deblur(source, out, tiny_checkpoint)
    after = check_output(out, 8)
    assert after == pytest.approx([i / float(fps) for i in range(8)], abs=MS)
    assert repairs(caplog) == [f"{source}: irregular timestamps (8 missing) repaired: 8 of 8 frames retimed, all kept"]


def test_the_command_says_what_it_repaired_in_one_line(tmp_path: Path, tiny_checkpoint: Path) -> None:
    source = write_h264_with_timestamps(tmp_path / "repeated.mkv", [0, 1, 2, 2, 3, 4, 5, 6])
    cli = Path(sys.executable).with_name("deblur")
    command = ["video", str(source), "-o", str(tmp_path / "out.mp4"), "--checkpoint", str(tiny_checkpoint)]
    run = subprocess.run(
        [str(cli), *command, "--device", "cpu", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines() == [
        f"{source}: irregular timestamps (1 repeated) repaired: 1 of 8 frames retimed, all kept"
    ]


class Identity:
    """A frame processor that returns each frame as it came (the engine's shape)."""

    def push(self, frame: np.ndarray) -> list[np.ndarray]:
        return [frame]

    def finish(self) -> list[np.ndarray]:
        return []


def test_the_shared_writer_repairs_for_the_batch_job_and_the_endpoint(tmp_path: Path, tiny_checkpoint: Path) -> None:
    source = write_h264_with_timestamps(tmp_path / "back.mkv", [0, 1, 2, 5, 4, 6, 7, 8], dts=list(range(8)))
    # The endpoint's path: transform_video on an open file (as an upload or an S3 object).
    with source.open("rb") as handle:
        result = transform_video(handle, tmp_path / "endpoint.mp4", Identity(), name="upload.mkv")
    assert result.frames == 8
    assert result.timestamp_repair == "irregular timestamps (1 going back) repaired: 1 of 8 frames retimed, all kept"
    check_output(tmp_path / "endpoint.mp4", 8)
    # The batch job's per-video step, on local paths (it takes URIs of either kind).
    # It writes the container of the input's key.
    task = VideoTask(source=str(source), destination=str(tmp_path / "batch.mkv"), key="back.mkv", version="1")
    record = deblur_object(task, load_model(tiny_checkpoint), staging_uri=str(tmp_path / "staging"), device="cpu")
    assert record["status"] == "ok", record
    assert record["frames"] == 8
    check_output(tmp_path / "batch.mkv", 8)


def give(timestamps: Timestamps, source: list[int | None]) -> list[int]:
    out = [t for i, ticks in enumerate(source) for _, t in timestamps.push(i, ticks)]
    return out + [t for _, t in timestamps.finish()]


@pytest.mark.parametrize(
    ("step", "source", "expected"),
    [
        # A fine time base: a repeat goes half-way to the next frame, nothing else moves.
        (512, [0, 512, 1024, 1024, 1536, 2048], [0, 512, 1024, 1280, 1536, 2048]),
        # A time base of one tick per frame has no room: the frames after it shift by one.
        (1, [0, 1, 2, 2, 3, 4], [0, 1, 2, 3, 4, 5]),
        # Repeats before a gap: at the nominal spacing, the gap stays after them.
        (10, [0, 10, 10, 10, 100, 110], [0, 10, 20, 30, 100, 110]),
        # A reset further back than the held frames could wait out: a new stretch, spacing kept.
        (
            10,
            [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 0, 10, 30],
            [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 140],
        ),
        # Missing timestamps between known ones: placed between them.
        (10, [0, 10, None, None, 40, 50], [0, 10, 20, 30, 40, 50]),
        # None at all: the nominal spacing from 0, however long (beyond what is held).
        (10, [None] * 20, [10 * i for i in range(20)]),
        # All the same: strictly increasing anyway.
        (10, [5] * 20, None),
    ],
)
def test_timestamp_rules(step: int, source: list[int | None], expected: list[int] | None) -> None:
    timestamps = Timestamps(step)
    out = give(timestamps, source)
    assert len(out) == len(source)
    assert all(b > a for a, b in itertools.pairwise(out)), out
    if expected is not None:
        assert out == expected
    assert (timestamps.summary() is None) == (out == source)


def test_frames_closer_than_the_output_time_base_are_told_apart(tmp_path: Path, tiny_checkpoint: Path) -> None:
    # 1/90000 s ticks, two frames 0.11 ms apart: in Matroska's milliseconds both would be 33 ms.
    source = tmp_path / "close.mp4"
    with av.open(str(source), "w") as out:
        stream = out.add_stream("libx264", rate=30, options={"bf": "0"})
        stream.width, stream.height, stream.pix_fmt = 48, 40, "yuv420p"
        stream.time_base = stream.codec_context.time_base = Fraction(1, 90000)
        for i, pts in enumerate([0, 3000, 3010, 6000, 9000]):
            frame = av.VideoFrame.from_ndarray(np.full((40, 48, 3), 40 * i, np.uint8), format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 90000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    target = tmp_path / "out.mkv"
    deblur(source, target, tiny_checkpoint)
    after = check_output(target, 5)
    # The second goes one tick (1 ms) after the first, nothing else moves.
    assert after == pytest.approx([0, 1 / 30, 1 / 30 + 0.001, 2 / 30, 3 / 30], abs=MS)
