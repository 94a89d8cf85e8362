"""Streaming video I/O with PyAV (FFmpeg), both directions.

``transform_video`` decodes a file frame by frame, hands each RGB frame to a
processor (the online engine), and encodes what comes back, so memory never holds
more than the processor's window. The output keeps the input's frame count, frame
timestamps (so frame rate and duration, variable rates included), size, rotation
metadata and audio (packets copied unchanged where the output container accepts the
codec, re-encoded to AAC otherwise). It is written under a temporary name beside the
destination and renamed only when complete, so a failure never leaves a file where
a finished one is expected. Decoding and encoding run in threads of their own beside
the processor, linked by small bounded queues.

Timestamps that repeat, go back or are missing (joined files, broken muxers, raw H.264)
decode fine but no muxer accepts them: the writer repairs them (``_Timestamps``), keeping
every frame and every regular timestamp, and says so in one line (a warning of the
``deblur.video`` logger, and ``TransformResult.timestamp_repair``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import IO, Protocol

import av
import numpy as np
from av.video.reformatter import Interpolation, VideoReformatter

from deblur.formats import UNTAGGED, SourceColour, format_note, output_pix_fmt

__all__ = [
    "EncoderOptions",
    "FrameProcessor",
    "VideoError",
    "VideoInfo",
    "frame_to_rgb",
    "probe_video",
    "read_frames",
    "transform_video",
    "write_video",
]

Source = str | os.PathLike[str] | IO[bytes]

_log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class EncoderOptions:
    """How the output video stream is encoded.

    Default: H.264 (libx264) at CRF 18, visually lossless for most content, in the source's
    chroma subsampling and bit depth (``deblur.formats.output_pix_fmt``: 4:2:0 for most video,
    4:4:4 for an RGB or 4:4:4 source or an odd size). ``lossless`` switches to libx264rgb at
    QP 0, which round-trips RGB frames exactly.
    """

    lossless: bool = False
    crf: int = 18
    preset: str = "medium"
    extra: dict[str, str] = field(default_factory=dict)

    def codec_and_format(
        self, width: int, height: int, source_pix_fmt: str = "yuv420p"
    ) -> tuple[str, str, dict[str, str]]:
        if self.lossless:
            return "libx264rgb", "rgb24", {"qp": "0", "preset": self.preset, **self.extra}
        pix_fmt = output_pix_fmt(source_pix_fmt, width, height)
        return "libx264", pix_fmt, {"crf": str(self.crf), "preset": self.preset, **self.extra}


class FrameProcessor(Protocol):
    """What ``transform_video`` drives: the online engine has this shape."""

    def push(self, frame: np.ndarray) -> list[np.ndarray]: ...

    def finish(self) -> list[np.ndarray]: ...


def _name(source: Source) -> str:
    if isinstance(source, str | os.PathLike):
        return os.fspath(source)
    return getattr(source, "name", None) or "<stream>"


@contextlib.contextmanager
def _open_input(source: Source, name: str) -> Iterator[av.container.InputContainer]:
    if isinstance(source, str | os.PathLike) and not Path(source).exists():
        raise VideoError(f"{name}: no such file")
    try:
        # Tags are text of any encoding in the wild: undecodable bytes must not make the video unreadable.
        container = av.open(
            source if not isinstance(source, os.PathLike) else os.fspath(source), mode="r", metadata_errors="replace"
        )
    except av.FFmpegError as exc:
        raise VideoError(f"{name}: not a readable video ({_reason(exc)})") from exc
    try:
        yield container
    finally:
        container.close()


def _reason(exc: BaseException) -> str:
    if isinstance(exc, av.FFmpegError | OSError) and exc.strerror:
        return str(exc.strerror)
    return str(exc) or type(exc).__name__


def _video_stream(container: av.container.InputContainer, name: str) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise VideoError(f"{name}: contains no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None or stream.codec_context.width <= 0:
        raise VideoError(f"{name}: video stream has no decodable codec or size")
    return stream


def _info(container: av.container.InputContainer, stream: av.video.stream.VideoStream, name: str) -> VideoInfo:
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
    name = name or _name(source)
    with _open_input(source, name) as container:
        stream = _video_stream(container, name)
        info = _info(container, stream, name)
        try:
            first = next(container.decode(stream), None)
        except av.FFmpegError as exc:
            raise VideoError(f"{name}: cannot decode video ({_reason(exc)})") from exc
        if first is None:
            raise VideoError(f"{name}: contains no video frames")
        return _with_rotation(info, first)


def _with_rotation(info: VideoInfo, frame: av.VideoFrame) -> VideoInfo:
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


_to_rgb = frame_to_rgb


def _check_size(name: str, index: int, frame: av.VideoFrame, size: tuple[int, int]) -> None:
    # The recurrent state (and the output stream) has the first frame's size; a stream whose
    # frames change size (or exceed what its header declared) is refused, not half-processed.
    if (frame.width, frame.height) != size:
        raise VideoError(
            f"{name}: frame {index} is {frame.width}x{frame.height}, the video started at "
            f"{size[0]}x{size[1]}: frame size changes within a video are not supported"
        )


def _check_complete(info: VideoInfo, decoded: int) -> None:
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
    name = name or _name(source)
    # Decoding again needs the source from its start: a path, or a seekable file.
    dropping = needed is not None and (
        isinstance(source, str | os.PathLike) or getattr(source, "seekable", lambda: False)()
    )
    yielded = 0
    while True:
        with _open_input(source, name) as container:
            stream = _video_stream(container, name)
            stream.thread_type = "AUTO"
            if threads is not None:
                stream.codec_context.thread_count = threads
            info = _info(container, stream, name)
            decoded = 0
            size: tuple[int, int] | None = None
            frames = _decode_dropping(container, stream, needed) if dropping else container.decode(stream)
            try:
                for frame in frames:
                    if frame is not None:
                        size = size or (frame.width, frame.height)
                        _check_size(name, decoded, frame, size)
                    decoded += 1
                    if decoded > yielded:  # after a restart, those already yielded are passed over
                        yielded = decoded
                        yield _to_rgb(frame) if rgb and frame is not None else frame
            except _IrregularTimestampsError:
                dropping = False
                if not isinstance(source, str | os.PathLike):
                    source.seek(0)
                continue
            except av.FFmpegError as exc:
                raise VideoError(f"{name}: corrupt video at frame {decoded} ({_reason(exc)})") from exc
            _check_complete(info, decoded)
            return


@contextlib.contextmanager
def _atomic_output(destination: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``destination``, renamed onto it only on success."""
    dest = Path(destination)
    if dest.is_dir():
        raise VideoError(f"{dest}: is a directory")
    if not dest.parent.exists():
        raise VideoError(f"{dest}: directory {dest.parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=f".partial{dest.suffix}", dir=dest.parent)
    except OSError as exc:
        raise VideoError(f"{dest}: cannot create the output file ({_reason(exc)})") from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp_path.chmod(0o666 & ~umask)  # mkstemp makes it private; the result is an ordinary file
        yield tmp_path
        try:
            os.replace(tmp_path, dest)
        except OSError as exc:
            raise VideoError(f"{dest}: cannot write the output file ({_reason(exc)})") from exc
    finally:
        tmp_path.unlink(missing_ok=True)


def _container_format(destination: Path) -> str | None:
    # FFmpeg guesses the muxer from the extension (the temporary name ends in ".partial.EXT").
    return None if destination.suffix else "mp4"


def _container_options(path: Path) -> dict[str, str]:
    # Index at the front: the file plays (and range-reads) before it is fully fetched.
    if path.suffix.lower() in {".mp4", ".mov", ".m4v", ""}:
        return {"movflags": "+faststart"}
    return {}


def _rescale(value: int, source: Fraction, target: Fraction) -> int:
    """``value`` ticks of ``source`` in ticks of ``target``, rounded as FFmpeg rounds (half away from 0)."""
    num = value * source.numerator * target.denominator
    den = source.denominator * target.numerator
    half = den // 2
    return (num + half) // den if num >= 0 else -((-num + half) // den)


class _Timestamps:
    """Strictly increasing timestamps for frames whose own may repeat, go back or be missing.

    In ticks of the output (the coarser of the encoder's and the container's time bases, so
    that distinct ticks stay distinct in the file). ``push(item, ticks)`` returns the items
    whose timestamp is decided, in order, as ``(item, timestamp)``; ``finish()`` the rest.

    - A frame whose timestamp is after the last one written keeps it (plus the shift below,
      zero unless something was shifted): regular timestamps, gaps (variable frame rates)
      included, come out as they went in.
    - A frame later than the one before it in the source, but not in output ticks (the two
      are closer together than the output's time base), goes one tick after it.
    - A frame whose timestamp is missing, repeats, or goes back by at most ``HOLD`` frames
      is held (up to ``HOLD`` frames) until the next frame with a usable timestamp, then
      placed between the two: at the nominal frame spacing if the interval has room for it
      (a real gap stays after the held frames), evenly if each gets at least half a frame and
      a tick, and otherwise (a coarse time base, a long run) at the nominal spacing with the
      frames that follow shifted by as much as needed, their own spacing kept.
    - A jump back by more than that (files joined end to end, a reset clock) starts a new
      stretch one nominal frame after the last one, with its own spacing kept.
    - Frames held when ``HOLD`` is reached, or at the end, go one after another: a missing
      timestamp one nominal frame after the last, a known one with its spacing kept.
    """

    HOLD = 8  # frames held for the next usable timestamp (the encoder's frames: bounded memory)

    def __init__(self, step: int) -> None:
        self.step = max(1, step)  # nominal frame duration, ticks
        self.jump = self.HOLD * self.step  # a step back further than this is a new stretch
        self.last: int | None = None  # last timestamp given out
        self.offset = 0  # added to the source timestamps from here on
        self.held: list[tuple[object, int | None]] = []
        self.previous: tuple[int, int] | None = None  # (source pts, ticks) of the last frame that had one
        self.frames = self.retimed = 0
        self.counts = {"repeated": 0, "back": 0, "close": 0, "missing": 0}

    def push(self, item: object, ticks: int | None, pts: int | None = None) -> list[tuple[object, int]]:
        """``ticks``: the frame's timestamp in output ticks; ``pts`` the source's own (for the counts)."""
        self.frames += 1
        pts = ticks if pts is None else pts
        previous = self.previous
        self._count(ticks, pts)
        if ticks is None:
            return self._hold(item, None)
        t = ticks + self.offset
        out: list[tuple[object, int]] = []
        if self.last is not None and t <= self.last:
            if not self.held and previous is not None and previous[1] == ticks and previous[0] < pts:
                return [self._give(item, ticks, self.last + 1)]  # closer together than a tick
            if self.last - t <= self.jump:
                return self._hold(item, ticks)
            out += self._release()
            assert self.last is not None
            self.offset += self.last + self.step - t
            t = self.last + self.step
        if self.held:
            placed, t = self._place_before(t)
            out += placed
        out.append(self._give(item, ticks, t))
        return out

    def finish(self) -> list[tuple[object, int]]:
        return self._release()

    def summary(self) -> str | None:
        """What was repaired, or None when nothing was."""
        if not self.retimed:
            return None
        names = {
            "repeated": "repeated",
            "back": "going back",
            "close": "closer together than the output's time base",
            "missing": "missing",
        }
        causes = ", ".join(f"{n} {names[k]}" for k, n in self.counts.items() if n)
        return f"irregular timestamps ({causes}) repaired: {self.retimed} of {self.frames} frames retimed, all kept"

    def _count(self, ticks: int | None, pts: int | None) -> None:
        if pts is None or ticks is None:
            self.counts["missing"] += 1
            return
        if self.previous is not None:
            previous_pts, previous_ticks = self.previous
            if pts == previous_pts:
                self.counts["repeated"] += 1
            elif pts < previous_pts:
                self.counts["back"] += 1
            elif ticks <= previous_ticks:
                self.counts["close"] += 1
        self.previous = (pts, ticks)

    def _give(self, item: object, ticks: int | None, t: int) -> tuple[object, int]:
        if ticks != t:
            self.retimed += 1
        self.last = t
        return item, t

    def _hold(self, item: object, ticks: int | None) -> list[tuple[object, int]]:
        self.held.append((item, ticks))
        return self._release() if len(self.held) >= self.HOLD else []

    def _release(self) -> list[tuple[object, int]]:
        out = []
        for item, ticks in self.held:
            start = -self.step if self.last is None else self.last
            if ticks is None:
                t = start + self.step
            else:
                t = ticks + self.offset
                if t <= start:
                    self.offset += start + self.step - t
                    t = start + self.step
            out.append(self._give(item, ticks, t))
        self.held.clear()
        return out

    def _place_before(self, t: int) -> tuple[list[tuple[object, int]], int]:
        """Give out the held frames before a frame at ``t``; returns them and that frame's timestamp."""
        k, step = len(self.held), self.step
        if self.last is None:  # before the first known timestamp
            times = [t - step * (k - j) for j in range(k)]
        else:
            gap = t - self.last
            if gap >= (k + 1) * step:
                times = [self.last + step * (j + 1) for j in range(k)]
            elif gap >= k + 1 and 2 * gap >= (k + 1) * step:
                times = [self.last + gap * (j + 1) // (k + 1) for j in range(k)]
            else:
                times = [self.last + step * (j + 1) for j in range(k)]
                shift = self.last + step * (k + 1) - t
                self.offset += shift
                t += shift
        placed = [self._give(item, ticks, time) for (item, ticks), time in zip(self.held, times, strict=True)]
        self.held.clear()
        return placed, t


class _Encoder:
    """Video encoder plus audio pass-through for one output file.

    Errors name ``destination`` (what the user asked for, not the temporary ``path``), or
    ``source`` for audio that cannot be decoded for re-encoding.
    """

    def __init__(
        self,
        path: Path,
        *,
        destination: Path,
        width: int,
        height: int,
        fps: Fraction,
        time_base: Fraction,
        rotation: int,
        options: EncoderOptions,
        audio_templates: Iterable[av.audio.stream.AudioStream] = (),
        source: str = "<input>",
        source_pix_fmt: str = "yuv420p",
        colour: SourceColour = UNTAGGED,
    ) -> None:
        self.destination, self.source = destination, source
        try:
            self.out = av.open(
                os.fspath(path),
                mode="w",
                format=_container_format(destination),
                options=_container_options(destination),
            )
        except (av.FFmpegError, ValueError, OSError) as exc:
            raise self._format_error(exc) from exc
        try:
            self._add_streams(width, height, fps, time_base, rotation, options, audio_templates, source_pix_fmt)
            hdr_tags = colour.hdr is not None and not options.lossless
            if hdr_tags:  # the source's transfer, primaries and matrix: still HDR
                context = self.video.codec_context
                context.color_primaries, context.color_trc = colour.primaries, colour.transfer
                context.colorspace = colour.matrix
            # The header now: a container that cannot hold these streams says so before any frame.
            self.out.start_encoding()
        except (av.FFmpegError, ValueError, OSError) as exc:
            self.abort()
            raise self._format_error(exc) from exc
        # Timestamps are made strictly increasing in the coarser of the encoder's time base and the
        # one the muxer chose (Matroska: 1 ms, whatever was asked), so that no two collide in the file.
        muxer = Fraction(self.video.time_base) if self.video.time_base else time_base
        self.ticks = max(time_base, muxer)
        step = _rescale(1, 1 / fps, self.ticks) if fps else _rescale(1, Fraction(1, 25), self.ticks)
        self.timestamps = _Timestamps(step)
        # What of the source's format the output keeps (one line), or None.
        self.format_note = format_note(source_pix_fmt, colour, rotation, self.pix_fmt, hdr_tags=hdr_tags)

    def _add_streams(
        self,
        width: int,
        height: int,
        fps: Fraction,
        time_base: Fraction,
        rotation: int,
        options: EncoderOptions,
        audio_templates: Iterable[av.audio.stream.AudioStream],
        source_pix_fmt: str,
    ) -> None:
        codec, pix_fmt, codec_options = options.codec_and_format(width, height, source_pix_fmt)
        self.video = self.out.add_stream(codec, rate=fps if fps else None, options=codec_options)
        self.video.width, self.video.height, self.video.pix_fmt = width, height, pix_fmt
        self.video.time_base = time_base
        self.video.codec_context.time_base = time_base
        if rotation:
            self.video.set_display_rotation(rotation)
        self.time_base = time_base
        self.pix_fmt = pix_fmt
        # audio stream index in input -> (output stream, re-encoder or None for copy)
        self.audio: dict[int, tuple[av.stream.Stream, av.audio.resampler.AudioResampler | None]] = {}
        supported = self.out.supported_codecs
        for template in audio_templates:
            if template.codec_context is None:
                continue  # a codec FFmpeg does not know: neither copied nor re-encoded
            if template.codec_context.name in supported:
                self.audio[template.index] = (self.out.add_stream_from_template(template), None)
            else:
                stream = self.out.add_stream("aac", rate=template.codec_context.sample_rate or 48000)
                resampler = av.audio.resampler.AudioResampler(
                    format="fltp", layout=stream.codec_context.layout, rate=stream.codec_context.sample_rate
                )
                self.audio[template.index] = (stream, resampler)

    def _format_error(self, exc: BaseException) -> VideoError:
        return VideoError(
            f"{self.destination}: cannot write a video in this format ({_reason(exc)}); use .mp4, .mov or .mkv"
        )

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            yield
        except (av.FFmpegError, OSError) as exc:
            raise VideoError(f"{self.destination}: cannot write the video ({_reason(exc)})") from exc

    def write_frame(self, rgb: np.ndarray, pts: int | None) -> None:
        """Encode a frame whose timestamp (``time_base`` ticks) may repeat, go back or be missing."""
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        if self.pix_fmt != "rgb24":
            frame = frame.reformat(format=self.pix_fmt)
        ticks = None if pts is None else _rescale(pts, self.time_base, self.ticks)
        for ready, t in self.timestamps.push(frame, ticks, pts):
            self._encode(ready, t)  # type: ignore[arg-type]

    def _encode(self, frame: av.VideoFrame, ticks: int) -> None:
        pts = _rescale(ticks, self.ticks, self.time_base)
        if not -(2**62) < pts < 2**62:  # a damaged file's timestamps, shifted: FFmpeg's are 64-bit
            raise VideoError(f"{self.source}: timestamps out of range ({pts} x {self.time_base} s)")
        frame.pts = pts
        frame.time_base = self.time_base
        with self._writing():
            for packet in self.video.encode(frame):
                self.out.mux(packet)

    @property
    def timestamp_repair(self) -> str | None:
        """What was repaired in the timestamps (one line), or None."""
        return self.timestamps.summary()

    def write_audio(self, packet: av.Packet) -> None:
        entry = self.audio.get(packet.stream.index)
        if entry is None or packet.dts is None:
            return  # a flush packet of the demuxer, or a stream we do not carry
        stream, resampler = entry
        if resampler is None:
            packet.stream = stream
            with self._writing():
                self.out.mux(packet)
            return
        try:
            decoded = packet.decode()
        except av.FFmpegError as exc:
            raise VideoError(f"{self.source}: corrupt audio ({_reason(exc)})") from exc
        with self._writing():
            for samples in decoded:
                for resampled in resampler.resample(samples):
                    resampled.pts = None
                    for out_packet in stream.encode(resampled):
                        self.out.mux(out_packet)

    def close(self) -> None:
        for frame, t in self.timestamps.finish():
            self._encode(frame, t)  # type: ignore[arg-type]
        with self._writing():
            for packet in self.video.encode(None):
                self.out.mux(packet)
            for stream, resampler in self.audio.values():
                if resampler is not None:
                    for packet in stream.encode(None):
                        self.out.mux(packet)
            self.out.close()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.out.close()


@dataclass(frozen=True)
class TransformResult:
    info: VideoInfo  # of the input
    frames: int  # frames decoded and written
    # What was repaired in the input's timestamps (repeated, going back, missing), one line; None if nothing.
    timestamp_repair: str | None = None
    # What of the input's format (bit depth, HDR, rotation) the output keeps, one line; None if nothing to say.
    format_note: str | None = None


def transform_video(
    source: Source,
    destination: str | os.PathLike[str],
    processor: FrameProcessor,
    *,
    encoder: EncoderOptions | None = None,
    on_frame: Callable[[int, VideoInfo], None] | None = None,
    keep_audio: bool = True,
    name: str | None = None,
) -> TransformResult:
    """Decode ``source``, pass each frame through ``processor``, encode to ``destination``.

    ``processor`` may hold frames back (the engine holds m) but must return exactly one
    output per input, in order; output frame i gets input frame i's timestamp, repaired where
    it repeats, goes back or is missing (``_Timestamps``; logged as a warning naming the source,
    and returned in ``TransformResult.timestamp_repair``).
    ``on_frame(frames_written, info)`` is called after each written frame (progress).
    ``name`` is what error messages call the source (e.g. its s3:// URI).

    Decoding runs in a thread ahead of the processor and encoding in another behind it
    (FFmpeg and PyTorch release the GIL while they work, so the three overlap); ``processor``
    and ``on_frame`` are called from the calling thread. A failure in any of them stops all
    three and leaves no file; errors of the output name ``destination``.
    """
    encoder = encoder or EncoderOptions()
    name = name or _name(source)
    dest = Path(destination)
    with _open_input(source, name) as container, _atomic_output(dest) as tmp:
        stream = _video_stream(container, name)
        stream.thread_type = "AUTO"
        info = _info(container, stream, name)
        audio_streams = list(container.streams.audio) if keep_audio else []
        pending: deque[int | None] = deque()  # timestamps of frames inside the processor
        decoded = written = 0
        # The input container stays open until both threads have stopped: the encoder copies
        # from (and may decode) its audio packets.
        with _Pipeline() as pipeline:
            inputs = pipeline.start(_decode_items(container, stream, audio_streams, info, name))
            outcome: dict[str, str | None] = {}
            outputs = pipeline.start_sink(_encode_items(tmp, dest, audio_streams, encoder, name, outcome))

            def write(frames: list[np.ndarray]) -> None:
                nonlocal written
                for rgb in frames:
                    outputs.put((rgb, pending.popleft()))
                    written += 1
                    if on_frame is not None:
                        on_frame(written, info)

            for item in inputs:
                if isinstance(item, _Start):
                    info = item.info
                    outputs.put(item)
                elif isinstance(item, av.Packet):
                    outputs.put(item)  # audio, kept in its place among the frames
                else:
                    rgb, pts = item  # type: ignore[misc]
                    decoded += 1
                    pending.append(pts)
                    write(processor.push(rgb))
            write(processor.finish())
            if written != decoded:
                raise VideoError(f"{name}: processor returned {written} frames for {decoded} inputs")
            outputs.close()  # the encoder flushes and closes the file; its errors are raised here
    repair, note = outcome.get("timestamp_repair"), outcome.get("format_note")
    for line in (repair, note):
        if line:
            _log.warning("%s: %s", name, line)
    return TransformResult(info=info, frames=written, timestamp_repair=repair, format_note=note)


# Items (frames or audio packets) queued between the decoder, the processor and the encoder:
# enough to keep each busy while another works; at most a few frames, whatever the video's length.
_QUEUE_DEPTH = 4
_POLL_S = 0.05  # how often a thread blocked on a full or empty queue checks that the others still run


@dataclass(frozen=True)
class _Start:
    """The first decoded frame's facts: the encoder opens the output when this arrives."""

    info: VideoInfo
    width: int
    height: int


def _decode_items(
    container: av.container.InputContainer,
    stream: av.video.stream.VideoStream,
    audio_streams: list[av.audio.stream.AudioStream],
    info: VideoInfo,
    name: str,
) -> Iterator[object]:
    """``_Start``, then RGB frames with their timestamps ``(rgb, pts)`` and audio packets, in file order."""
    early_audio: list[av.Packet] = []
    size: tuple[int, int] | None = None
    decoded = 0
    try:
        for packet in container.demux([stream, *audio_streams]):
            if packet.stream.type == "audio":
                if size is None:
                    # The encoder needs the first decoded frame (its rotation); the decoder
                    # lags a few packets behind the demuxer.
                    early_audio.append(packet)
                else:
                    yield packet
                continue
            for frame in packet.decode():
                if size is None:
                    size = (frame.width, frame.height)
                    info = _with_rotation(info, frame)
                    yield _Start(info, frame.width, frame.height)
                    yield from early_audio
                    early_audio.clear()
                _check_size(name, decoded, frame, size)
                decoded += 1
                yield _to_rgb(frame), frame.pts
    except av.FFmpegError as exc:
        raise VideoError(f"{name}: corrupt video at frame {decoded} ({_reason(exc)})") from exc
    _check_complete(info, decoded)


def _encode_items(
    tmp: Path,
    destination: Path,
    audio_streams: list[av.audio.stream.AudioStream],
    options: EncoderOptions,
    name: str,
    outcome: dict[str, str | None],
) -> Callable[[Iterator[object]], None]:
    """The sink of ``transform_video``: opens the output at ``_Start``, then writes what comes.

    Once the file is closed, ``outcome["timestamp_repair"]`` says what was repaired (or None).
    """

    def encode(items: Iterator[object]) -> None:
        out: _Encoder | None = None
        try:
            for item in items:
                if isinstance(item, _Start):
                    out = _Encoder(
                        tmp,
                        destination=destination,
                        width=item.width,
                        height=item.height,
                        fps=item.info.fps,
                        time_base=item.info.time_base,
                        rotation=item.info.rotation,
                        options=options,
                        audio_templates=audio_streams,
                        source=name,
                        source_pix_fmt=item.info.pix_fmt,
                        colour=item.info.colour,
                    )
                    continue
                assert out is not None, "frames before _Start"
                if isinstance(item, av.Packet):
                    out.write_audio(item)
                else:
                    out.write_frame(*item)  # type: ignore[misc]
            if out is not None:
                out.close()
                outcome["timestamp_repair"] = out.timestamp_repair
                outcome["format_note"] = out.format_note
        except BaseException:
            if out is not None:
                out.abort()
            raise

    return encode


class _StoppedError(Exception):
    """Raised in a thread of a ``_Pipeline`` that another thread's failure has stopped."""


class _End:
    """The last item of a queue."""


class _Queue:
    """A bounded queue between two threads of a ``_Pipeline`` that gives up once it is stopped."""

    def __init__(self, depth: int, stop: threading.Event) -> None:
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = stop

    def put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_POLL_S)
                return
            except queue.Full:
                pass
        raise _StoppedError

    def __iter__(self) -> Iterator[object]:
        while True:
            if self._stop.is_set():  # what is still queued is not wanted any more
                raise _StoppedError
            try:
                item = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if isinstance(item, _End):
                return
            yield item


class _Sink:
    """The producing end of a queue whose consumer runs in its own thread."""

    def __init__(self, pipeline: _Pipeline, q: _Queue, thread: threading.Thread) -> None:
        self._pipeline, self._queue, self._thread = pipeline, q, thread

    def put(self, item: object) -> None:
        try:
            self._queue.put(item)
        except _StoppedError:
            self._pipeline.raise_failure()
            raise

    def close(self) -> None:
        """No more items: wait for the consumer to finish, and raise what made it fail."""
        self.put(_End())
        self._thread.join()
        self._pipeline.raise_failure()


class _Pipeline:
    """Threads linked by bounded queues; a failure in any of them stops all.

    The first exception (from a thread, or the caller's own) is the one raised in the caller;
    leaving the ``with`` block stops every thread and waits for it, so nothing runs on after.
    """

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._failure: BaseException | None = None
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> _Pipeline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._failure is None:
                self._failure = exc
        self._stop.set()

    def raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _spawn(self, target: Callable[[], None], name: str) -> threading.Thread:
        def run() -> None:
            try:
                target()
            except _StoppedError:
                pass
            except BaseException as exc:  # handed to the caller's thread
                self._fail(exc)

        thread = threading.Thread(target=run, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()
        return thread

    def start(self, items: Iterator[object], *, depth: int = _QUEUE_DEPTH) -> Iterator[object]:
        """Run ``items`` in a thread ahead of the caller, who iterates the result."""
        q = _Queue(depth, self._stop)

        def produce() -> None:
            for item in items:
                q.put(item)
            q.put(_End())

        self._spawn(produce, "video-decode")

        def consume() -> Iterator[object]:
            try:
                yield from q
            except _StoppedError:
                self.raise_failure()
                raise

        return consume()

    def start_sink(self, consume: Callable[[Iterator[object]], None], *, depth: int = _QUEUE_DEPTH) -> _Sink:
        """Run ``consume`` in a thread on what the caller puts into the result."""
        q = _Queue(depth, self._stop)
        return _Sink(self, q, self._spawn(lambda: consume(iter(q)), "video-encode"))


def write_video(
    destination: str | os.PathLike[str],
    frames: Iterable[np.ndarray],
    *,
    fps: Fraction | int | float,
    encoder: EncoderOptions | None = None,
) -> int:
    """Encode RGB uint8 frames at a constant rate (atomically); returns the frame count."""
    encoder = encoder or EncoderOptions()
    rate = Fraction(fps).limit_denominator(1001000)
    time_base = 1 / rate
    count = 0
    with _atomic_output(destination) as tmp:
        out: _Encoder | None = None
        try:
            for rgb in frames:
                if out is None:
                    out = _Encoder(
                        tmp,
                        destination=Path(destination),
                        width=rgb.shape[1],
                        height=rgb.shape[0],
                        fps=rate,
                        time_base=time_base,
                        rotation=0,
                        options=encoder,
                    )
                out.write_frame(rgb, count)
                count += 1
            if out is None:
                raise VideoError(f"{destination}: no frames to write")
            out.close()
        except BaseException:
            if out is not None:
                out.abort()
            raise
    return count
