"""The output keeps the source's chroma subsampling, bit depth and HDR tags where libx264 can.

Real files through PyAV, one per kind of source, each through ``transform_video`` with a processor
that passes frames through (the format is the writer's business, not the model's).
"""

from __future__ import annotations

import logging
from pathlib import Path

import av
import numpy as np
import pytest
from skimage import data

from deblur.evaluate import frame_psnr
from deblur.formats import output_pix_fmt
from deblur.video import read_frames, transform_video, write_video
from media import pattern_frame, write_test_video


class _PassThrough:
    def push(self, frame: np.ndarray) -> list[np.ndarray]:
        return [frame]

    def finish(self) -> list[np.ndarray]:
        return []


def _written(path: Path) -> av.video.codeccontext.VideoCodecContext:
    with av.open(str(path)) as container:
        context = container.streams.video[0].codec_context
        return context.pix_fmt, context.color_trc, context.color_primaries, context.colorspace


@pytest.mark.parametrize(
    ("codec", "source", "suffix", "expected"),
    [
        ("libx264", "yuv420p", "mp4", "yuv420p"),
        ("libx264", "yuv422p", "mp4", "yuv422p"),
        ("libx264", "yuv444p", "mp4", "yuv444p"),
        ("libx264", "yuv420p10le", "mp4", "yuv420p10le"),
        ("libx264rgb", "rgb24", "mkv", "yuv444p"),  # RGB (a screen recording, say): full chroma
        ("ffv1", "gray", "mkv", "yuv420p"),
    ],
)
def test_the_output_keeps_the_source_chroma_and_depth(
    tmp_path: Path, codec: str, source: str, suffix: str, expected: str
) -> None:
    src = write_test_video(
        tmp_path / f"in.{suffix}", width=64, height=48, frames=4, codec=codec, pix_fmt=source, audio=False
    )
    out = tmp_path / "out.mp4"
    result = transform_video(src, out, _PassThrough())
    assert result.frames == 4
    assert _written(out)[0] == expected


def test_an_rgb_source_written_444_stays_closer_than_420_would(tmp_path: Path) -> None:
    # The pattern's fine coloured detail: 4:2:0 halves its chroma, 4:4:4 keeps it.
    src = write_test_video(
        tmp_path / "in.mkv", width=64, height=48, frames=3, codec="libx264rgb", pix_fmt="rgb24", audio=False
    )
    out = tmp_path / "out.mp4"
    transform_video(src, out, _PassThrough())
    with av.open(str(out)) as container:
        kept = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    originals = [pattern_frame(i, 64, 48) for i in range(3)]
    as_420 = [
        av.VideoFrame.from_ndarray(o, format="rgb24").reformat(format="yuv420p").to_ndarray(format="rgb24")
        for o in originals
    ]
    assert np.mean([frame_psnr(k, o) for k, o in zip(kept, originals, strict=True)]) > np.mean(
        [frame_psnr(c, o) for c, o in zip(as_420, originals, strict=True)]
    )


def test_a_written_and_read_video_keeps_its_brightness(tmp_path: Path) -> None:
    # swscale's default 4:2:0 -> RGB path darkened every frame by about one level per channel.
    photo = np.ascontiguousarray(data.astronaut()[:192, :256])
    write_video(tmp_path / "v.mp4", [photo] * 3, fps=25)
    back = list(read_frames(tmp_path / "v.mp4"))
    shift = np.mean([b.astype(np.float32).mean((0, 1)) - photo.mean((0, 1)) for b in back], axis=0)
    assert np.abs(shift).max() < 0.3, f"mean shift per channel: {shift}"


def test_an_hdr_source_stays_hdr_and_says_so_in_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = write_test_video(  # BT.2020 primaries and matrix, PQ transfer
        tmp_path / "hdr.mp4", width=64, height=48, frames=3, pix_fmt="yuv420p10le", audio=False, colour=(9, 16, 9)
    )
    out = tmp_path / "out.mp4"
    with caplog.at_level(logging.WARNING, logger="deblur.video"):
        result = transform_video(src, out, _PassThrough())
    assert _written(out) == ("yuv420p10le", 16, 9, 9)
    assert result.format_note == (
        "HDR (PQ) 10-bit source: deblurred at 8 bits per channel, written yuv420p10le with its HDR colour tags"
    )
    assert [r.getMessage() for r in caplog.records] == [f"{src}: {result.format_note}"]


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotation_is_kept_as_metadata_and_said(tmp_path: Path, rotation: int) -> None:
    src = write_test_video(tmp_path / "in.mp4", width=64, height=48, frames=3, pix_fmt="yuv420p", rotation=rotation)
    out = tmp_path / "out.mp4"
    result = transform_video(src, out, _PassThrough())
    with av.open(str(out)) as container:
        assert round(next(container.decode(video=0)).rotation) % 360 == rotation
    assert result.format_note == f"rotation of {rotation} degrees kept as display metadata (frames deblurred as stored)"


def test_an_ordinary_source_says_nothing(tmp_path: Path) -> None:
    src = write_test_video(tmp_path / "in.mp4", width=64, height=48, frames=3, pix_fmt="yuv420p")
    assert transform_video(src, tmp_path / "out.mp4", _PassThrough()).format_note is None


@pytest.mark.parametrize(
    ("source", "size", "expected"),
    [
        ("yuv420p", (65, 48), "yuv444p"),  # 4:2:0 needs even sides
        ("yuv422p", (65, 48), "yuv444p"),  # 4:2:2 an even width
        ("yuv422p", (64, 47), "yuv422p"),
        ("pal8", (64, 48), "yuv444p"),
        ("rgb48le", (64, 48), "yuv444p10le"),
        ("no-such-format", (64, 48), "yuv420p"),
    ],
)
def test_sizes_and_formats_libx264_cannot_keep(source: str, size: tuple[int, int], expected: str) -> None:
    assert output_pix_fmt(source, *size) == expected
