"""Small real video files for tests, written with PyAV."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from deblur.video import probe_video


def pattern_frame(i: int, width: int, height: int) -> np.ndarray:
    """A moving, textured RGB frame: gradients plus a square that travels with i."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = (x * 4 + i * 5) % 256
    img[..., 1] = (y * 5 + i * 3) % 256
    img[..., 2] = ((x + y) * 2) % 256
    x0 = (i * 2) % max(width - 8, 1)
    img[height // 4 : height // 4 + 8, x0 : x0 + 8] = 255
    return img


def write_test_video(
    path: Path,
    *,
    width: int = 65,
    height: int = 47,
    frames: int = 30,
    fps: int | Fraction = 30,
    codec: str = "libx264",
    pix_fmt: str = "yuv444p",
    audio: bool = True,
    rotation: int = 0,
    options: dict[str, str] | None = None,
    container_options: dict[str, str] | None = None,
    timestamps: list[int] | None = None,
    colour: tuple[int, int, int] | None = None,
) -> Path:
    """Encode a real video file; H.264 MP4 with an AAC track by default.

    ``timestamps``: each frame's pts in units of 1/fps (default 0, 1, 2, ...). ``colour``: the
    stream's (primaries, transfer, matrix) tags, FFmpeg's values (e.g. 9, 16, 9: BT.2020 PQ).
    """
    out = av.open(str(path), "w", options=container_options or {})
    stream = out.add_stream(codec, rate=fps, options=options or {})
    stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
    if rotation:
        stream.set_display_rotation(rotation)
    if colour is not None:
        context = stream.codec_context
        context.color_primaries, context.color_trc, context.colorspace = colour
    audio_stream = out.add_stream("aac", rate=44100) if audio else None
    for i in range(frames):
        frame = av.VideoFrame.from_ndarray(pattern_frame(i, width, height), format="rgb24")
        if timestamps is not None:
            frame.pts, frame.time_base = timestamps[i], Fraction(1, fps)
        for packet in stream.encode(frame):
            out.mux(packet)
    if audio_stream is not None:
        n = int(44100 * frames / float(fps))
        t = np.arange(n) / 44100
        signal = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None]
        for start in range(0, n, 1024):
            chunk = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(signal[:, start : start + 1024]), format="fltp", layout="mono"
            )
            chunk.sample_rate = 44100
            for packet in audio_stream.encode(chunk):
                out.mux(packet)
        for packet in audio_stream.encode(None):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
    out.close()
    return path


def stream_facts(path: Path) -> dict[str, object]:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        times = [float(f.time) for f in container.decode(video)]
    with av.open(str(path)) as container:
        audio = [
            (s.codec_context.name, s.codec_context.sample_rate, s.codec_context.channels)
            for s in container.streams.audio
        ]
        audio_packets = [(p.pts, p.size) for p in container.demux(audio=0) if p.dts is not None] if audio else []
    info = probe_video(path)
    return {
        "frames": len(times),
        "times": times,
        "fps": info.fps,
        "size": (info.width, info.height),
        "rotation": info.rotation,
        "duration": round(info.duration or 0, 3),
        "audio": audio,
        "audio_packets": audio_packets,
    }


def write_h264_with_timestamps(
    path: Path,
    pts: list[int],
    *,
    dts: list[int] | None = None,
    width: int = 48,
    height: int = 40,
    fps: int = 30,
) -> Path:
    """H.264 frames (no B-frames) muxed with the given timestamps, in units of 1/fps.

    One frame per timestamp, the ``pattern_frame`` sequence in decoding order. ``dts`` defaults
    to ``pts``. The container follows the suffix: Matroska takes repeated timestamps (and pts
    going back while dts increase), raw ``.h264`` stores none at all, ``.ts`` gives 90 kHz ones.
    """
    encoder = av.CodecContext.create("libx264", "w")
    encoder.width, encoder.height, encoder.pix_fmt = width, height, "yuv420p"
    encoder.time_base, encoder.framerate = Fraction(1, fps), Fraction(fps)
    encoder.options = {"bf": "0", "preset": "ultrafast"}
    packets = []
    for i in range(len(pts)):
        frame = av.VideoFrame.from_ndarray(pattern_frame(i, width, height), format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        packets += encoder.encode(frame)
    packets += encoder.encode(None)
    assert len(packets) == len(pts)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("h264", rate=fps)
        stream.width, stream.height = width, height
        stream.codec_context.extradata = encoder.extradata
        stream.time_base = Fraction(1, fps)
        for i, packet in enumerate(packets):
            packet.stream, packet.time_base = stream, Fraction(1, fps)
            packet.pts, packet.dts = pts[i], pts[i] if dts is None else dts[i]
            out.mux(packet)
    return path
