"""Fuzzing the decode path (hypothesis): any bytes, and real small videos with bytes changed or cut.

``probe_video``, ``read_frames`` and ``transform_video`` (what `deblur video`, the batch job and the
endpoint run) must either succeed or raise ``VideoError``, never another exception, never hang, and
``transform_video`` must leave no file behind when it fails.

The examples are derandomized, so every run tries the same inputs (a stable suite); set
``DEBLUR_FUZZ_EXAMPLES=N`` to run N fresh random examples per test instead.
"""

from __future__ import annotations

import contextlib
import io
import os
from datetime import timedelta
from pathlib import Path

import av
import numpy as np
import pytest
from bad_inputs import CASES, build_corpus
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from deblur.video import EncoderOptions, VideoError, probe_video, read_frames, transform_video
from media import write_test_video

_FRESH = int(os.environ.get("DEBLUR_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=_FRESH or 200,
    derandomize=not _FRESH,
    database=None,
    deadline=timedelta(seconds=10),  # per example; a stuck decoder fails the test (pytest-timeout bounds it too)
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


class Identity:
    """A processor that returns each frame as it is (the decode and encode path without a model)."""

    def push(self, frame: np.ndarray) -> list[np.ndarray]:
        return [frame]

    def finish(self) -> list[np.ndarray]:
        return []


def _seeds() -> dict[str, bytes]:
    """Small real files of several containers and codecs to mutate (built once per process)."""
    if not _SEEDS:
        import tempfile

        directory = Path(tempfile.mkdtemp(prefix="fuzz-seeds-"))
        made = {
            "h264.mp4": write_test_video(directory / "h264.mp4", width=32, height=24, frames=6),
            "faststart.mp4": write_test_video(
                directory / "faststart.mp4",
                width=32,
                height=24,
                frames=6,
                container_options={"movflags": "+faststart"},
            ),
            "ffv1.mkv": write_test_video(
                directory / "ffv1.mkv", width=32, height=24, frames=6, codec="ffv1", pix_fmt="gray"
            ),
            "mjpeg.mov": write_test_video(
                directory / "mjpeg.mov", width=32, height=24, frames=6, codec="mjpeg", pix_fmt="yuvj420p"
            ),
            "vp9.webm": write_test_video(
                directory / "vp9.webm",
                width=32,
                height=24,
                frames=6,
                codec="libvpx-vp9",
                pix_fmt="yuv420p",
                audio=False,
            ),
        }
        corpus = build_corpus(directory / "corpus")
        made.update({f"corpus-{name}": corpus[name] for name in ("bad_metadata.mp4", "unknown_audio.mkv")})
        _SEEDS.update({name: path.read_bytes() for name, path in made.items()})
    return _SEEDS


_SEEDS: dict[str, bytes] = {}


def _decode_all(data: bytes, path: Path) -> None:
    """Probe and read from memory and from a file, and as synthesis reads; each works or raises VideoError."""
    for source in (io.BytesIO(data), path):
        with contextlib.suppress(VideoError):
            probe_video(source, name="fuzz")
        if isinstance(source, io.BytesIO):
            source.seek(0)
        try:
            for frame in read_frames(source, name="fuzz"):
                assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
        except VideoError:
            pass
    # As synthesis reads: frames it does not need may be dropped, and odd timestamps decode again.
    try:
        for frame in read_frames(io.BytesIO(data), name="fuzz", rgb=False, needed=lambda index: index % 3 == 0):
            assert frame is None or isinstance(frame, av.VideoFrame)
    except VideoError:
        pass


@pytest.mark.timeout(300)
@FUZZ
@given(data=st.binary(max_size=4096))
def test_any_bytes_are_a_video_or_a_video_error(data: bytes, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "input.mp4"
    path.write_bytes(data)
    _decode_all(data, path)


@st.composite
def mutated_videos(draw: st.DrawFn) -> tuple[str, bytes]:
    seeds = _seeds()
    name = draw(st.sampled_from(sorted(seeds)))
    data = bytearray(seeds[name])
    for _ in range(draw(st.integers(0, 16))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return name, bytes(data)


@pytest.mark.timeout(300)
@FUZZ
@given(video=mutated_videos())
def test_damaged_videos_decode_or_raise_video_error_and_leave_no_file(
    video: tuple[str, bytes], tmp_path_factory: pytest.TempPathFactory
) -> None:
    name, data = video
    directory = tmp_path_factory.mktemp("fuzz")
    source = directory / f"input{Path(name).suffix}"
    source.write_bytes(data)
    _decode_all(data, source)
    out = directory / "out.mp4"
    try:
        result = transform_video(source, out, Identity(), encoder=EncoderOptions(preset="ultrafast"))
    except VideoError:
        assert sorted(p.name for p in directory.iterdir()) == [source.name]  # no output, no partial file
    else:
        assert result.frames > 0 and len(list(read_frames(out))) == result.frames


def test_seed_files_are_valid() -> None:
    """The fuzzer starts from real videos (mutations of garbage would not reach the decoders)."""
    for name, data in _seeds().items():
        assert probe_video(io.BytesIO(data), name=name).width == 32, name
    assert {case.name for case in CASES} >= {"bad_metadata.mp4", "unknown_audio.mkv"}
