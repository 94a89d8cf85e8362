"""The output's pixel format and colour tags, chosen from the source's (no Ray, no torch).

The network works on 8-bit RGB. What the encoder writes keeps what the source had where the
encoder (libx264) can: its chroma subsampling (a 4:4:4 or RGB source is not written as 4:2:0),
10 bits where it had more than 8, and the colour tags of an HDR (PQ or HLG) source, so that a
player shows it as HDR. What was kept, and what could not be, is said in one line
(``format_note``), as the timestamp repair is.
"""

from __future__ import annotations

from dataclasses import dataclass

import av

# FFmpeg's AVColorTransferCharacteristic values of the two HDR transfers.
_HDR_TRANSFERS = {16: "PQ", 18: "HLG"}
_UNSPECIFIED = 2


@dataclass(frozen=True)
class SourceColour:
    """A video stream's colour tags (FFmpeg's enum values; 2 is 'unspecified')."""

    primaries: int = _UNSPECIFIED
    transfer: int = _UNSPECIFIED
    matrix: int = _UNSPECIFIED

    @classmethod
    def of(cls, codec_context: av.video.codeccontext.VideoCodecContext) -> SourceColour:
        return cls(
            primaries=int(codec_context.color_primaries or _UNSPECIFIED),
            transfer=int(codec_context.color_trc or _UNSPECIFIED),
            matrix=int(codec_context.colorspace or _UNSPECIFIED),
        )

    @property
    def hdr(self) -> str | None:
        """'PQ' or 'HLG' for an HDR transfer, else None."""
        return _HDR_TRANSFERS.get(self.transfer)


UNTAGGED = SourceColour()


def _layout(pix_fmt: str) -> tuple[str, int]:
    """(chroma, bits): '444', '422' or '420' and the deepest component of ``pix_fmt``."""
    if pix_fmt == "pal8":  # a palette of RGB colours: full chroma
        return "444", 8
    try:
        fmt = av.VideoFormat(pix_fmt, 64, 64)
    except (ValueError, av.FFmpegError):
        return "420", 8
    components = fmt.components
    bits = max(c.bits for c in components)
    if fmt.is_rgb:
        return "444", bits
    if len(components) < 3:  # gray: no chroma to keep
        return "420", bits
    chroma = components[1]
    if chroma.width == 64 and chroma.height == 64:
        return "444", bits
    if chroma.height == 64:
        return "422", bits
    return "420", bits


def output_pix_fmt(source_pix_fmt: str, width: int, height: int) -> str:
    """The libx264 pixel format that keeps the source's chroma subsampling and bit depth.

    4:2:0 needs even sides and 4:2:2 an even width: where the size rules them out, 4:4:4.
    """
    chroma, bits = _layout(source_pix_fmt)
    if chroma == "420" and (width % 2 or height % 2):
        chroma = "444"
    if chroma == "422" and width % 2:
        chroma = "444"
    return f"yuv{chroma}p" + ("10le" if bits > 8 else "")


def format_note(
    source_pix_fmt: str, colour: SourceColour, rotation: int, written: str, *, hdr_tags: bool
) -> str | None:
    """One line on what of the source's format the output keeps, where that is worth saying."""
    parts = []
    _, bits = _layout(source_pix_fmt)
    if colour.hdr:
        parts.append(
            f"HDR ({colour.hdr}) {bits}-bit source: deblurred at 8 bits per channel, written {written} "
            + ("with its HDR colour tags" if hdr_tags else "without HDR colour tags")
        )
    elif bits > 8:
        parts.append(f"{bits}-bit source: deblurred at 8 bits per channel, written {written}")
    if rotation % 360:
        parts.append(f"rotation of {rotation % 360} degrees kept as display metadata (frames deblurred as stored)")
    return "; ".join(parts) or None
