"""Encoding with PyAV: the output options, the atomic output file, the encoder, ``write_video``."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from deblur.formats import UNTAGGED, SourceColour, format_note, output_pix_fmt
from deblur.video.decode import VideoError, reason
from deblur.video.timestamps import Timestamps, rescale


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


@contextlib.contextmanager
def atomic_output(destination: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``destination``, renamed onto it only on success."""
    dest = Path(destination)
    if dest.is_dir():
        raise VideoError(f"{dest}: is a directory")
    if not dest.parent.exists():
        raise VideoError(f"{dest}: directory {dest.parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=f".partial{dest.suffix}", dir=dest.parent)
    except OSError as exc:
        raise VideoError(f"{dest}: cannot create the output file ({reason(exc)})") from exc
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
            raise VideoError(f"{dest}: cannot write the output file ({reason(exc)})") from exc
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


class Encoder:
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
        step = rescale(1, 1 / fps, self.ticks) if fps else rescale(1, Fraction(1, 25), self.ticks)
        self.timestamps = Timestamps(step)
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
            f"{self.destination}: cannot write a video in this format ({reason(exc)}); use .mp4, .mov or .mkv"
        )

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        try:
            yield
        except (av.FFmpegError, OSError) as exc:
            raise VideoError(f"{self.destination}: cannot write the video ({reason(exc)})") from exc

    def write_frame(self, rgb: np.ndarray, pts: int | None) -> None:
        """Encode a frame whose timestamp (``time_base`` ticks) may repeat, go back or be missing."""
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        if self.pix_fmt != "rgb24":
            frame = frame.reformat(format=self.pix_fmt)
        ticks = None if pts is None else rescale(pts, self.time_base, self.ticks)
        for ready, t in self.timestamps.push(frame, ticks, pts):
            self._encode(ready, t)  # type: ignore[arg-type]

    def _encode(self, frame: av.VideoFrame, ticks: int) -> None:
        pts = rescale(ticks, self.ticks, self.time_base)
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
            raise VideoError(f"{self.source}: corrupt audio ({reason(exc)})") from exc
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
    with atomic_output(destination) as tmp:
        out: Encoder | None = None
        try:
            for rgb in frames:
                if out is None:
                    out = Encoder(
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
