"""Decoding with PyAV: probe a video, read its frames as RGB (unbiased YUV->RGB), the types both directions share."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

from deblur.formats import UNTAGGED, SourceColour

Source = str | os.PathLike[str] | IO[bytes]

_log = logging.getLogger("deblur.video")


class VideoError(Exception):
    """A video could not be read or written; the message names the file and the cause."""


@dataclass(frozen=True)
class VideoInfo:
    name: str
    width: int
    height: int
    fps: Fraction  # average frame rate
    time_base: Fraction
    frames: int | None  # as declared by the container; None when it does not say
    duration: float | None  # seconds
    rotation: int  # display rotation, degrees counter-clockwise
    codec: str
    pix_fmt: str
    audio_codecs: tuple[str, ...] = ()
    colour: SourceColour = UNTAGGED


def source_name(source: Source) -> str:
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    return getattr(source, "name", None) or "<stream>"


@contextlib.contextmanager
def open_input(source: Source, name: str) -> Iterator[av.container.InputContainer]:
    if isinstance(source, str | os.PathLike) and not Path(source).exists():
        raise VideoError(f"{name}: no such file")
    try:
        # Tags are text of any encoding in the wild: undecodable bytes must not make the video unreadable.
        container = av.open(
            source if not isinstance(source, os.PathLike) else os.fspath(source), mode="r", metadata_errors="replace"
        )
    except av.FFmpegError as exc:
        raise VideoError(f"{name}: not a readable video ({reason(exc)})") from exc
    try:
        yield container
    finally:
        container.close()


def reason(exc: BaseException) -> str:
    if isinstance(exc, av.FFmpegError | OSError) and exc.strerror:
        return str(exc.strerror)
    return str(exc) or type(exc).__name__


def video_stream(container: av.container.InputContainer, name: str) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise VideoError(f"{name}: contains no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None or stream.codec_context.width <= 0:
        raise VideoError(f"{name}: video stream has no decodable codec or size")
    return stream


def stream_info(container: av.container.InputContainer, stream: av.video.stream.VideoStream, name: str) -> VideoInfo:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    duration = None
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / av.time_base
    return VideoInfo(
        name=name,
        width=stream.codec_context.width,
        height=stream.codec_context.height,
        fps=Fraction(rate) if rate else Fraction(0),
        time_base=Fraction(stream.time_base) if stream.time_base else Fraction(1, 90000),
        frames=stream.frames or None,
        duration=duration,
        rotation=0,  # read from the first frame's display matrix by the decoders below
        codec=stream.codec_context.name,
        pix_fmt=stream.codec_context.pix_fmt or "unknown",
        audio_codecs=tuple(a.codec_context.name for a in container.streams.audio if a.codec_context is not None),
        colour=SourceColour.of(stream.codec_context),
    )


def probe_video(source: Source, *, name: str | None = None) -> VideoInfo:
    """Read a video's header (and its first frame, for the rotation). ``name`` is for messages."""
    name = name or source_name(source)
    with open_input(source, name) as container:
        stream = video_stream(container, name)
        info = stream_info(container, stream, name)
        try:
            first = next(container.decode(stream), None)
        except av.FFmpegError as exc:
            raise VideoError(f"{name}: cannot decode video ({reason(exc)})") from exc
        if first is None:
            raise VideoError(f"{name}: contains no video frames")
        return with_rotation(info, first)


def with_rotation(info: VideoInfo, frame: av.VideoFrame) -> VideoInfo:
    rotation = round(frame.rotation or 0)
    if rotation == info.rotation:
        return info
    return VideoInfo(**{**info.__dict__, "rotation": rotation})


_CONVERTERS = threading.local()
# Full-resolution chroma interpolation with accurate rounding: an unbiased YUV -> RGB conversion.
RGB_CONVERSION = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT


def frame_to_rgb(frame: av.VideoFrame) -> np.ndarray:
    """A decoded frame as RGB uint8 (H, W, 3); swscale converts any pixel format (gray, alpha, 10-bit).

    One converter per thread, reused: ``frame.to_ndarray(format="rgb24")`` would build a new swscale
    context for every frame. One swscale thread: the callers already run one decoder per CPU they
    hold. ``RGB_CONVERSION``: swscale's default path from 4:2:0 darkens every frame by about one
    level; this one does not (docs/data.md).
    """
    converter = getattr(_CONVERTERS, "rgb", None)
    if converter is None:
        converter = _CONVERTERS.rgb = VideoReformatter()
    return converter.reformat(frame, format="rgb24", interpolation=RGB_CONVERSION, threads=1).to_ndarray()


def check_size(name: str, index: int, frame: av.VideoFrame, size: tuple[int, int]) -> None:
    # The recurrent state (and the output stream) has the first frame's size; a stream whose
    # frames change size (or exceed what its header declared) is refused, not half-processed.
    if (frame.width, frame.height) != size:
        raise VideoError(
            f"{name}: frame {index} is {frame.width}x{frame.height}, the video started at "
            f"{size[0]}x{size[1]}: frame size changes within a video are not supported"
        )


def check_complete(info: VideoInfo, decoded: int) -> None:
    if decoded == 0:
        raise VideoError(f"{info.name}: contains no video frames")
    if info.frames is not None and decoded < info.frames:
        raise VideoError(
            f"{info.name}: truncated or corrupt: the container declares {info.frames} frames, "
            f"only {decoded} could be decoded"
        )


class _IrregularTimestampsError(Exception):
    """The timestamps do not say which frames the decoder dropped: decode again without dropping."""


def _decode_dropping(
    container: av.container.InputContainer, stream: av.video.stream.VideoStream, needed: Callable[[int], bool]
) -> Iterator[av.VideoFrame | None]:
    """Decoded frames in presentation order, ``None`` in the place of each frame the decoder dropped.

    A packet whose frame (numbered by its timestamp on the stream's frame grid) is not ``needed``
    is decoded with ``skip_frame=NONREF``: the decoder drops it when no other frame refers to it
    (in H.264 with B-frames, about half of all frames, each about two thirds the cost of an
    average one) and decodes it otherwise. Which frames were dropped shows in the timestamps of
    those that come out, in presentation order: every gap must be frames offered for dropping.
    When it is not (timestamps off the grid, a missing frame, a decoder that drops something
    else), ``_IrregularTimestampsError`` is raised before anything wrong is yielded.
    """
    context = stream.codec_context
    rate, time_base = stream.average_rate, stream.time_base
    ticks = 1 / (Fraction(rate) * Fraction(time_base)) if rate and time_base else None
    if ticks is None or ticks.denominator != 1:  # no whole number of ticks a frame: decode everything
        yield from container.decode(stream)
        return
    # An int from here: Fraction arithmetic on every packet and frame cost 2-3% of synthesis.
    ticks = int(ticks)
    origin: int | None = None  # timestamp of frame 0; None if it has none (then nothing is dropped)
    offered: set[int] = set()  # frames the decoder was allowed to drop, not yet accounted for
    position = 0  # frames (and drops) yielded so far

    def index_of(pts: int | None) -> int | None:
        if pts is None or origin is None or pts < origin or (pts - origin) % ticks:
            return None
        return int((pts - origin) // ticks)

    for packet in container.demux(stream):
        index = index_of(packet.pts)
        drop = index is not None and index >= position and not needed(index)
        if drop:
            offered.add(index)
        context.skip_frame = "NONREF" if drop else "DEFAULT"
        for frame in context.decode(packet):
            if position == 0:
                origin = frame.pts
            index = index_of(frame.pts)
            if index is None:
                if offered:
                    raise _IrregularTimestampsError
                index = position
            if index < position or any(missing not in offered for missing in range(position, index)):
                raise _IrregularTimestampsError
            for missing in range(position, index):
                offered.discard(missing)
                yield None
            offered.discard(index)
            position = index + 1
            yield frame
    tail = sorted(offered)  # offered and never decoded: dropped at the end of the stream
    if tail != list(range(position, position + len(tail))):
        raise _IrregularTimestampsError
    yield from (None for _ in tail)


def read_frames(
    source: Source,
    *,
    name: str | None = None,
    threads: int | None = None,
    rgb: bool = True,
    needed: Callable[[int], bool] | None = None,
) -> Iterator[np.ndarray | av.VideoFrame | None]:
    """Yield every frame as RGB uint8 (H, W, 3), streaming; errors name the file (or ``name``).

    ``threads`` caps the decoder's threads (default: FFmpeg's choice), e.g. 1 inside a Ray task
    that reserved one CPU, so parallel tasks do not oversubscribe the cores. ``rgb=False`` yields
    the decoded ``av.VideoFrame`` objects instead, for callers that convert only the frames they
    use (``frame_to_rgb``): each conversion costs about a fifth of decoding.

    ``needed(index)`` (0-based frame number) lets the decoder skip the frames the caller will not
    use: such a frame may come back as ``None`` in its place (when the codec can drop it: see
    ``_decode_dropping``), every other frame comes back as without ``needed``. A video whose
    timestamps do not show which frames were dropped is decoded again from the start without
    dropping, passing over the frames already yielded.
    """
    name = name or source_name(source)
    # Decoding again needs the source from its start: a path, or a seekable file.
    dropping = needed is not None and (
        isinstance(source, str | os.PathLike) or getattr(source, "seekable", lambda: False)()
    )
    yielded = 0
    while True:
        with open_input(source, name) as container:
            stream = video_stream(container, name)
            stream.thread_type = "AUTO"
            if threads is not None:
                stream.codec_context.thread_count = threads
            info = stream_info(container, stream, name)
            decoded = 0
            size: tuple[int, int] | None = None
            frames = _decode_dropping(container, stream, needed) if dropping else container.decode(stream)
            try:
                for frame in frames:
                    if frame is not None:
                        size = size or (frame.width, frame.height)
                        check_size(name, decoded, frame, size)
                    decoded += 1
                    if decoded > yielded:  # after a restart, those already yielded are passed over
                        yielded = decoded
                        yield frame_to_rgb(frame) if rgb and frame is not None else frame
            except _IrregularTimestampsError:
                dropping = False
                if not isinstance(source, str | os.PathLike):
                    source.seek(0)
                continue
            except av.FFmpegError as exc:
                raise VideoError(f"{name}: corrupt video at frame {decoded} ({reason(exc)})") from exc
            check_complete(info, decoded)
            return
