"""The bad-input corpus of the reliability tests: odd, broken and hostile video files, made here.

Each ``Case`` builds one file and says what every entry point must answer for it: a valid video
(however unusual) is deblurred to the same number of frames, an invalid one is refused with a
message naming the file and the cause.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

from media import pattern_frame, write_test_video

# Valid cases get enough frames for one small synthesis training window (4 pairs at tau = T = 3).
LONG = 16
WIDTH, HEIGHT = 32, 24


@dataclass(frozen=True)
class Case:
    name: str  # file name, extension included
    build: Callable[[Path], Path]  # writes the file at the given path
    frames: int | None = None  # valid: frames every entry point must deblur; None: invalid
    error: str = ""  # invalid: a regular expression the error message matches (after the file name)
    vfr_times: tuple[float, ...] | None = None  # valid, variable rate: the frame times to keep
    rotation: int = 0

    @property
    def valid(self) -> bool:
        return self.frames is not None


def _video(**kwargs: object) -> Callable[[Path], Path]:
    def build(path: Path) -> Path:
        return write_test_video(path, **{"width": WIDTH, "height": HEIGHT, "frames": LONG, **kwargs})  # type: ignore[arg-type]

    return build


def _random_bytes(path: Path) -> Path:
    path.write_bytes(np.random.default_rng(9).bytes(20_000))
    return path


def _truncated(fraction: float, **kwargs: object) -> Callable[[Path], Path]:
    def build(path: Path) -> Path:
        write_test_video(path, **{"width": WIDTH, "height": HEIGHT, "frames": 30, "audio": False, **kwargs})  # type: ignore[arg-type]
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * fraction)])
        return path

    return build


def _zero_frames(path: Path) -> Path:
    """A video stream with no frames. AVI keeps the stream's header; MP4 and MOV drop a track
    without samples (the file then has no video stream at all, the audio-only case) and Matroska
    without any cluster cannot be opened."""
    out = av.open(str(path), "w", format="avi")
    stream = out.add_stream("libx264", rate=30)
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    out.start_encoding()  # the header and an empty video track, then no frames
    out.close()
    with av.open(str(path)) as check:  # the case this stands for, or it would test another
        assert len(check.streams.video) == 1 and check.streams.video[0].codec_context.width == WIDTH
        assert next(check.decode(video=0), None) is None
    return path


def _audio_only(path: Path) -> Path:
    out = av.open(str(path), "w", format="mp4")
    stream = out.add_stream("aac", rate=44100)
    chunk = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
    chunk.sample_rate = 44100
    for packet in [*stream.encode(chunk), *stream.encode(None)]:
        out.mux(packet)
    out.close()
    return path


def _image(path: Path) -> Path:
    Image.fromarray(pattern_frame(0, WIDTH, HEIGHT)).save(path, format="PNG")
    return path


def _huge_declared(path: Path) -> Path:
    """MJPEG frames whose headers declare 30000x30000 pixels, with a few bytes of data behind them."""
    write_test_video(path, width=WIDTH, height=HEIGHT, frames=3, codec="mjpeg", pix_fmt="yuvj420p", audio=False)
    data = bytearray(path.read_bytes())
    start = 0
    while (start := data.find(b"\xff\xc0", start)) >= 0:  # SOF0: marker, length, precision, height, width
        data[start + 5 : start + 9] = struct.pack(">HH", 30000, 30000)
        start += 2
    path.write_bytes(bytes(data))
    return path


def _size_change(path: Path) -> Path:
    """A container that declares 32x24 whose later frames are 400x300: frames larger than declared
    (and than the endpoint's limit), a resolution change the recurrent state cannot follow."""
    parts = [
        write_test_video(
            path.with_name(f".{path.stem}-{i}.mkv"),
            width=w,
            height=h,
            frames=3,
            codec="mjpeg",
            pix_fmt="yuvj444p",
            audio=False,
        )
        for i, (w, h) in enumerate([(WIDTH, HEIGHT), (400, 300)])
    ]
    out = av.open(str(path), "w")
    offset = 0
    with av.open(str(parts[0])) as first:
        stream = out.add_stream_from_template(first.streams.video[0])
    for part in parts:
        with av.open(str(part)) as source:
            last = 0
            for packet in source.demux(video=0):
                if packet.dts is None:
                    continue
                packet.pts += offset
                packet.dts += offset
                last = packet.pts
                packet.stream = stream
                out.mux(packet)
        offset = last + 100
        part.unlink()
    out.close()
    return path


def _bad_metadata(path: Path) -> Path:
    """A title tag whose bytes are not UTF-8 (camera and editing tools write other encodings)."""
    plain = write_test_video(path.with_name(f".{path.name}"), width=WIDTH, height=HEIGHT, frames=LONG)
    with av.open(str(plain)) as source, av.open(str(path), "w", format="mp4") as out:
        out.metadata["title"] = "TITLE-PLACEHOLDER"
        streams = {s.index: out.add_stream_from_template(s) for s in source.streams}
        for packet in source.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
    plain.unlink()
    data = path.read_bytes()
    assert data.count(b"TITLE-PLACEHOLDER") == 1
    path.write_bytes(data.replace(b"TITLE-PLACEHOLDER", b"\xff\xfe\x80 caf\xe9 \xc3\x28\x81"))
    return path


def _unknown_audio(path: Path) -> Path:
    """A Matroska file whose audio track names a codec FFmpeg does not know."""
    write_test_video(path, width=WIDTH, height=HEIGHT, frames=LONG, audio=True)
    data = path.read_bytes()
    assert data.count(b"A_AAC") == 1
    path.write_bytes(data.replace(b"A_AAC", b"A_ZZZ"))
    return path


VFR_TIMES_MS = tuple(int(t) for t in np.cumsum([0, *[20, 40, 33, 70, 17] * 4])[:LONG])


def _variable_rate(path: Path) -> Path:
    out = av.open(str(path), "w")
    stream = out.add_stream("libx264", rate=30, options={"qp": "10"})
    stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
    for i, ms in enumerate(VFR_TIMES_MS):
        frame = av.VideoFrame.from_ndarray(pattern_frame(i, WIDTH, HEIGHT), format="rgb24")
        frame.pts, frame.time_base = ms, Fraction(1, 1000)
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
    out.close()
    return path


# What a file cut short is called depends on where the cut falls and on how it is read (a path, or
# an S3 stream that reports the cut as invalid data rather than the end of the file).
TRUNCATED = "truncated or corrupt|corrupt video at frame|cannot decode video"

CASES: list[Case] = [
    Case("random.mp4", _random_bytes, error="not a readable video"),
    Case(
        "truncated_header.mp4",
        _truncated(0.02, container_options={"movflags": "+faststart"}),
        error="contains no video stream",  # cut inside its header: FFmpeg finds no stream at all
    ),
    Case(
        "truncated_half.mp4",
        _truncated(0.5, container_options={"movflags": "+faststart"}),
        error=TRUNCATED,
    ),
    Case(
        "truncated_tail.mp4",
        _truncated(0.97, container_options={"movflags": "+faststart"}),
        error=TRUNCATED,
    ),
    Case("truncated_index.mp4", _truncated(0.9), error="not a readable video"),
    Case("zero_frames.avi", _zero_frames, error="contains no video frames"),
    Case("audio_only.mp4", _audio_only, error="contains no video stream"),
    Case("image.mp4", _image, frames=1),
    Case("huge_dimensions.mkv", _huge_declared, error=r"(cannot decode video|corrupt video at frame 0) \(Invalid data"),
    Case("size_change.mkv", _size_change, error="frame 3 is 400x300, the video started at 32x24"),
    Case("odd_size.mp4", _video(width=33, height=21), frames=LONG),
    Case("gray.mkv", _video(codec="ffv1", pix_fmt="gray", audio=False), frames=LONG),
    Case("tenbit.mov", _video(codec="prores_ks", pix_fmt="yuv422p10le", audio=False), frames=LONG),
    Case("variable_rate.mp4", _variable_rate, frames=LONG, vfr_times=tuple(t / 1000 for t in VFR_TIMES_MS)),
    Case("rotated.mp4", _video(rotation=90), frames=LONG, rotation=90),
    Case("two_frames.mp4", _video(frames=2), frames=2),
    # Found by the fuzz test: tags that are not UTF-8, an audio track of a codec FFmpeg does not know.
    Case("bad_metadata.mp4", _bad_metadata, frames=LONG),
    Case("unknown_audio.mkv", _unknown_audio, frames=LONG),
]


def build_corpus(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return {case.name: case.build(directory / case.name) for case in CASES}
