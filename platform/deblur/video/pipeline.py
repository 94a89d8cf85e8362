"""``transform_video``: decode, process and encode in three threads linked by small bounded queues."""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import av
import numpy as np

from deblur.video.decode import (
    Source,
    VideoError,
    VideoInfo,
    check_complete,
    check_size,
    frame_to_rgb,
    open_input,
    reason,
    source_name,
    stream_info,
    video_stream,
    with_rotation,
)
from deblur.video.encode import Encoder, EncoderOptions, atomic_output

_log = logging.getLogger("deblur.video")


class FrameProcessor(Protocol):
    """What ``transform_video`` drives: the online engine has this shape."""

    def push(self, frame: np.ndarray) -> list[np.ndarray]: ...

    def finish(self) -> list[np.ndarray]: ...


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
    it repeats, goes back or is missing (``Timestamps``; logged as a warning naming the source,
    and returned in ``TransformResult.timestamp_repair``).
    ``on_frame(frames_written, info)`` is called after each written frame (progress).
    ``name`` is what error messages call the source (e.g. its s3:// URI).

    Decoding runs in a thread ahead of the processor and encoding in another behind it
    (FFmpeg and PyTorch release the GIL while they work, so the three overlap); ``processor``
    and ``on_frame`` are called from the calling thread. A failure in any of them stops all
    three and leaves no file; errors of the output name ``destination``.
    """
    encoder = encoder or EncoderOptions()
    name = name or source_name(source)
    dest = Path(destination)
    with open_input(source, name) as container, atomic_output(dest) as tmp:
        stream = video_stream(container, name)
        stream.thread_type = "AUTO"
        info = stream_info(container, stream, name)
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
                    info = with_rotation(info, frame)
                    yield _Start(info, frame.width, frame.height)
                    yield from early_audio
                    early_audio.clear()
                check_size(name, decoded, frame, size)
                decoded += 1
                yield frame_to_rgb(frame), frame.pts
    except av.FFmpegError as exc:
        raise VideoError(f"{name}: corrupt video at frame {decoded} ({reason(exc)})") from exc
    check_complete(info, decoded)


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
        out: Encoder | None = None
        try:
            for item in items:
                if isinstance(item, _Start):
                    out = Encoder(
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
