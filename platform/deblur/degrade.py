"""What a camera does to a blurry exposure after Eq. 1, applied to the blurry frames only.

An average of tau rendered frames is unrealistically clean, and real video is stored compressed.
Per clip, ``draw_degradation`` picks, as a phone or camera would give them:

- **exposure gain** in linear light, so that highlights clip (the sharp target gets the same
  gain: it is the same scene at the same exposure);
- **Poisson-Gaussian sensor noise** in linear light, variance ``a * x + b**2`` (Foi et al. 2008),
  added to the exposure average, independently per frame;
- **H.264** at CRF 18-28 (libx264, no B-frames or look-ahead, as hardware encoders of phones
  store video), decoded again.

Targets stay clean. Pure NumPy and PyAV, no Ray: ``data.py`` runs it inside synthesis tasks.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["ClipDegradation", "H264RoundTrip", "add_sensor_noise", "degrade_pairs", "draw_degradation"]

# Shares of clips that get each degradation, and the ranges drawn (linear light in [0, 1]).
GAIN_SHARE, GAIN_RANGE = 0.3, (1.0, 1.6)
NOISE_SHARE, POISSON_LOG10, READ_LOG10 = 0.8, (-4.5, -2.5), (-3.5, -2.3)
H264_SHARE, CRF_RANGE = 0.75, (18, 28)


@dataclass(frozen=True)
class ClipDegradation:
    gain: float = 1.0  # exposure gain in linear light; values pushed above 1 clip
    poisson: float = 0.0  # a: noise variance per unit of linear signal
    read: float = 0.0  # b: standard deviation of the signal-independent noise, linear
    crf: int | None = None  # H.264 CRF of the stored blurry video; None: not compressed

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def draw_degradation(rng: np.random.Generator) -> ClipDegradation:
    gain = float(rng.uniform(*GAIN_RANGE)) if rng.random() < GAIN_SHARE else 1.0
    noisy = rng.random() < NOISE_SHARE
    poisson = float(10 ** rng.uniform(*POISSON_LOG10)) if noisy else 0.0
    read = float(10 ** rng.uniform(*READ_LOG10)) if noisy else 0.0
    crf = int(rng.integers(CRF_RANGE[0], CRF_RANGE[1] + 1)) if rng.random() < H264_SHARE else None
    return ClipDegradation(gain=gain, poisson=poisson, read=read, crf=crf)


def _to_linear(gamma: float) -> np.ndarray:
    """8-bit code -> linear value."""
    return ((np.arange(256) / 255.0) ** gamma).astype(np.float32)


def _encode(linear: np.ndarray, gamma: float) -> np.ndarray:
    """Linear values -> 8-bit codes, clipped (a table would posterize the darks)."""
    return np.rint(np.power(np.clip(linear, 0.0, 1.0), np.float32(1.0 / gamma)) * 255.0).astype(np.uint8)


def add_sensor_noise(
    frame: np.ndarray, *, poisson: float, read: float, rng: np.random.Generator, gamma: float = 2.2
) -> np.ndarray:
    """Poisson-Gaussian noise (variance ``poisson * x + read**2``) in linear light, 8-bit in and out."""
    if poisson <= 0 and read <= 0:
        return frame
    x = _to_linear(gamma)[frame]
    sigma = np.sqrt(poisson * x + read * read)
    return _encode(x + sigma * rng.standard_normal(x.shape, dtype=np.float32), gamma)


class H264RoundTrip:
    """Frames through libx264 and back, in memory; ``push`` returns the frames decoded so far."""

    def __init__(self, width: int, height: int, *, crf: int) -> None:
        import av

        self.size = (width, height)
        self.padded = (width + width % 2, height + height % 2)  # 4:2:0 needs even sizes
        self.encoder = av.CodecContext.create("libx264", "w")
        self.encoder.width, self.encoder.height = self.padded
        self.encoder.pix_fmt = "yuv420p"
        self.encoder.options = {"crf": str(crf), "preset": "veryfast", "tune": "zerolatency"}
        self.decoder = av.CodecContext.create("h264", "r")
        self.decoder.thread_type = "SLICE"

    def _decoded(self, packets: list[Any]) -> list[np.ndarray]:
        from deblur.video import frame_to_rgb

        width, height = self.size
        out = []
        for packet in packets:
            for frame in self.decoder.decode(packet):
                out.append(frame_to_rgb(frame)[:height, :width])
        return out

    def push(self, rgb: np.ndarray) -> list[np.ndarray]:
        import av

        pad_w, pad_h = self.padded[0] - rgb.shape[1], self.padded[1] - rgb.shape[0]
        if pad_w or pad_h:
            rgb = np.pad(rgb, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        return self._decoded(list(self.encoder.encode(frame)))

    def flush(self) -> list[np.ndarray]:
        out = self._decoded(list(self.encoder.encode(None)))
        return out + self._decoded([None])


def degrade_pairs(
    pairs: Iterable[tuple[np.ndarray, np.ndarray]],
    degradation: ClipDegradation,
    *,
    rng: np.random.Generator,
    gamma: float = 2.2,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(blurry, sharp)`` pairs of one clip, degraded: every pair comes out, in order."""
    to_linear = _to_linear(gamma)
    codec: H264RoundTrip | None = None
    waiting: deque[np.ndarray] = deque()  # sharp frames whose blurry frame is still in the codec
    for blurry, sharp in pairs:
        if degradation.gain != 1.0:
            blurry = _encode(to_linear[blurry] * degradation.gain, gamma)
            sharp = _encode(to_linear[sharp] * degradation.gain, gamma)
        blurry = add_sensor_noise(blurry, poisson=degradation.poisson, read=degradation.read, rng=rng, gamma=gamma)
        if degradation.crf is None:
            yield blurry, sharp
            continue
        if codec is None:
            codec = H264RoundTrip(blurry.shape[1], blurry.shape[0], crf=degradation.crf)
        waiting.append(sharp)
        for decoded in codec.push(blurry):
            yield decoded, waiting.popleft()
    if codec is not None:
        for decoded in codec.flush():
            yield decoded, waiting.popleft()
