"""One long video across several actors: cut at keyframes, warm up, deblur, join without re-encoding.

The recurrent model carries its state from frame to frame, so a video deblurred in pieces differs
from one deblurred in one go only where a piece starts from a fresh state. Each piece (``Chunk``)
therefore first runs the model over the ``warmup`` frames before its start, output discarded, and
then deblurs its own frames; ``deblur bench warmup`` measures how many frames that takes on real
footage (docs/performance.md). Pieces start at keyframes, so that each decodes from a nearby seek
point, and are encoded with the same settings, so that their packets join into one stream as they
are (``join_chunks``): the joined file has the source's timestamps and its audio, copied.

What cannot be split this way (no timestamps, no duration, audio the container cannot hold) raises
``NotSplittableError`` and is deblurred in one piece instead.
"""

from __future__ import annotations

import heapq
import io
import math
import os
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np

from deblur.video import EncoderOptions, VideoError, VideoInfo
from deblur.video.decode import Source, check_size, frame_to_rgb, open_input, reason, stream_info, video_stream
from deblur.video.encode import Encoder, atomic_output

__all__ = ["Chunk", "ChunkResult", "NotSplittableError", "deblur_chunk", "join_chunks", "plan_chunks"]

DEFAULT_WARMUP = 8  # frames; every frame after a cut within 50 dB of a sequential run at 8


class NotSplittableError(Exception):
    """This video cannot be cut into chunks and joined again; deblur it in one piece."""


@dataclass(frozen=True)
class Chunk:
    """Frames with ``start <= pts < end`` (the video stream's time base); None: the video's start or end."""

    index: int
    count: int  # chunks of the video
    start: int | None
    end: int | None


@dataclass(frozen=True)
class ChunkResult:
    frames: int  # frames this chunk wrote (warm-up not counted)
    warmup: int  # frames run before the chunk to warm the state up
    seconds: float
    info: VideoInfo
    precision: str
    precision_note: str | None


def plan_chunks(
    source: Source, destination: str | os.PathLike[str], *, chunks: int, min_seconds: float, name: str
) -> list[Chunk]:
    """At most ``chunks`` chunks of at least ``min_seconds``, each starting at a keyframe.

    Reads the header and one packet per cut (a seek each), never the whole file. One chunk when the
    video is too short or has too few keyframes.
    """
    with open_input(source, name) as container:
        stream = video_stream(container, name)
        info = stream_info(container, stream, name)
        _check_joinable(container, info, destination, name)
        if not info.duration or chunks < 2:
            return [Chunk(index=0, count=1, start=None, end=None)]
        wanted = max(1, min(chunks, int(info.duration // min_seconds)))
        base = stream.start_time or 0
        cuts: list[int] = []
        for i in range(1, wanted):
            target = base + int(i * info.duration / wanted / info.time_base)
            pts = _keyframe_at_or_before(container, stream, target)
            if pts is not None and pts > (cuts[-1] if cuts else base):
                cuts.append(pts)
    bounds = [None, *cuts, None]
    return [Chunk(index=i, count=len(cuts) + 1, start=bounds[i], end=bounds[i + 1]) for i in range(len(cuts) + 1)]


def _check_joinable(container: av.container.InputContainer, info: VideoInfo, destination: Any, name: str) -> None:
    if info.fps == 0:
        raise NotSplittableError(f"{name}: no frame rate to place the warm-up by")
    if not container.streams.audio:
        return
    with av.open(io.BytesIO(), mode="w", format=_format_of(destination) or "mp4") as probe:
        supported = probe.supported_codecs
    for audio in container.streams.audio:
        if audio.codec_context is None or audio.codec_context.name not in supported:
            raise NotSplittableError(
                f"{name}: its audio cannot be copied into {Path(destination).suffix or 'the output'}"
            )


def _keyframe_at_or_before(container: av.container.InputContainer, stream: Any, pts: int) -> int | None:
    try:
        container.seek(pts, stream=stream, backward=True, any_frame=False)
        for packet in container.demux(stream):
            if packet.pts is not None:
                return int(packet.pts) if packet.is_keyframe else None
    except av.FFmpegError:
        return None
    return None


def deblur_chunk(
    source: Source,
    destination: str | os.PathLike[str],
    model: Any,
    chunk: Chunk,
    *,
    warmup: int = DEFAULT_WARMUP,
    device: Any = "auto",
    encoder: EncoderOptions | None = None,
    precision: str = "fp32",
    name: str | None = None,
) -> ChunkResult:
    """Deblur the frames of ``chunk`` into ``destination`` (video only, the source's timestamps).

    The model first runs over the ``warmup`` frames before the chunk (output discarded), and past
    its end over the frames the model looks ahead (m), so that each frame sees the same window as
    in one sequential run.
    """
    from deblur.engine import OnlineDeblurrer

    name = name or str(source)
    started = time.perf_counter()
    engine = OnlineDeblurrer(model, device=device, precision=precision)
    keep: deque[int | None] = deque()  # per frame in the engine: its pts to write, or None (warm-up)
    written = ran_warmup = 0
    with open_input(source, name) as container, atomic_output(Path(destination)) as tmp:
        stream = video_stream(container, name)
        stream.thread_type = "AUTO"
        info = stream_info(container, stream, name)
        out: Encoder | None = None
        try:
            frames = _frames_from(container, stream, info, chunk, warmup, name)
            for rgb, pts, is_warmup in frames:
                if out is None:
                    out = _open_encoder(tmp, destination, info, rgb, encoder, name)
                keep.append(None if is_warmup else pts)
                ran_warmup += is_warmup
                outputs = engine.push(rgb)
                if chunk.end is not None and pts >= chunk.end:
                    keep[-1] = None  # the next chunk's frame: only the look-ahead of this one's last
                written += _write(out, outputs, keep)
                if chunk.end is not None and pts >= chunk.end and all(k is None for k in keep):
                    break
            else:
                written += _write(out, engine.finish(), keep) if out is not None else 0
            if out is None or written == 0:
                raise VideoError(f"{name}: no frames in chunk {chunk.index + 1} of {chunk.count}")
            out.close()
        except BaseException:
            if out is not None:
                out.abort()
            raise
    return ChunkResult(
        frames=written,
        warmup=ran_warmup,
        seconds=time.perf_counter() - started,
        info=info,
        precision=engine.precision,
        precision_note=engine.precision_note,
    )


def _open_encoder(
    tmp: Path, destination: Any, info: VideoInfo, rgb: np.ndarray, options: EncoderOptions | None, name: str
) -> Encoder:
    return Encoder(
        tmp,
        destination=Path(destination),
        width=rgb.shape[1],
        height=rgb.shape[0],
        fps=info.fps,
        time_base=info.time_base,
        rotation=0,  # the joined file takes the rotation (one display matrix, on its stream)
        options=options or EncoderOptions(),
        source=name,
        source_pix_fmt=info.pix_fmt,
        colour=info.colour,
    )


def _write(out: Encoder, outputs: list[np.ndarray], keep: deque[int | None]) -> int:
    count = 0
    for rgb in outputs:
        pts = keep.popleft()
        if pts is not None:
            out.write_frame(rgb, pts)
            count += 1
    return count


def _frames_from(
    container: av.container.InputContainer, stream: Any, info: VideoInfo, chunk: Chunk, warmup: int, name: str
) -> Iterator[tuple[np.ndarray, int, bool]]:
    """``(rgb, pts, is_warmup)`` from ``warmup`` frames before the chunk to the end of the video."""
    if chunk.start is not None:
        # Seek a little before the warm-up (the keyframe at or before it): frames before it are
        # decoded and dropped, which costs far less than running the model on them.
        margin = math.ceil((warmup + 2) / info.fps / info.time_base)
        container.seek(max(0, chunk.start - margin), stream=stream, backward=True, any_frame=False)
    before: deque[np.ndarray] = deque(maxlen=max(warmup, 1))
    size: tuple[int, int] | None = None
    last: int | None = None
    decoded = 0
    try:
        for frame in container.decode(stream):
            if frame.pts is None or (last is not None and frame.pts <= last):
                raise NotSplittableError(f"{name}: frames without increasing timestamps")
            last = int(frame.pts)
            size = size or (frame.width, frame.height)
            check_size(name, decoded, frame, size)
            decoded += 1
            if chunk.start is not None and frame.pts < chunk.start:
                if warmup > 0:
                    before.append(frame_to_rgb(frame))
                continue
            while before:
                yield before.popleft(), -1, True
            yield frame_to_rgb(frame), last, False
    except av.FFmpegError as exc:
        raise VideoError(f"{name}: corrupt video at or after pts {last} ({reason(exc)})") from exc


def join_chunks(
    parts: list[Path], source: Source, destination: str | os.PathLike[str], *, rotation: int = 0, name: str
) -> int:
    """Join the encoded ``parts`` (in order) into ``destination`` with the source's audio, copied.

    Packets are copied as they are: the parts must carry one codec with the same parameters, which
    ``deblur_chunk`` with one encoder setting gives. Returns the number of video packets written.
    """
    with av.open(os.fspath(parts[0])) as first:
        template = first.streams.video[0]
        extradata = template.codec_context.extradata
        with open_input(source, name) as src, atomic_output(Path(destination)) as tmp:
            out = av.open(os.fspath(tmp), mode="w", format=_format_of(destination))
            try:
                video = out.add_stream_from_template(template)
                if rotation:
                    video.set_display_rotation(rotation)
                audio = {a.index: out.add_stream_from_template(a) for a in src.streams.audio}
                count = 0
                merged = heapq.merge(
                    _video_packets(parts, extradata, name), _audio_packets(src, list(audio)), key=lambda x: x[:2]
                )
                for _, order, packet in merged:
                    packet.stream = video if order == 0 else audio[packet.stream.index]
                    out.mux(packet)
                    count += order == 0
                out.close()
            except (av.FFmpegError, ValueError) as exc:
                out.close()
                raise VideoError(f"{destination}: cannot join the deblurred chunks ({reason(exc)})") from exc
            except BaseException:
                out.close()
                raise
    return count


def _format_of(destination: str | os.PathLike[str]) -> str | None:
    suffix = Path(destination).suffix.lower()
    return {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}.get(suffix)


def _video_packets(parts: list[Path], extradata: bytes | None, name: str) -> Iterator[tuple[float, int, av.Packet]]:
    for part in parts:
        with av.open(os.fspath(part)) as container:
            stream = container.streams.video[0]
            if stream.codec_context.extradata != extradata:
                raise NotSplittableError(f"{name}: chunk {part.name} was encoded with other parameters")
            for packet in container.demux(stream):
                if packet.dts is not None:
                    yield float(packet.dts * packet.time_base), 0, packet


def _audio_packets(
    container: av.container.InputContainer, indices: list[int]
) -> Iterator[tuple[float, int, av.Packet]]:
    streams = [s for s in container.streams.audio if s.index in indices]
    if not streams:
        return
    container.seek(0)
    for packet in container.demux(streams):
        if packet.dts is not None:
            yield float(packet.dts * packet.time_base), 1, packet
