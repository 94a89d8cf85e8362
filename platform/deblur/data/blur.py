"""Blurry/sharp training pairs from high-speed video: the paper's Eq. 1 (Sec. 3), and what a
camera then does to the blurry frames.

    B_n = 1/tau * sum_{j=0}^{tau-1} H_{nT + j}        S_n = H_{nT + (tau-1)/2}

H is the high-speed (e.g. 240 fps) sequence, tau the number of frames averaged (an odd number
from {7, 9, 11, 13, 15}) and T >= tau the step between consecutive outputs, so the synthesized
video runs at f/T frames per second with an exposure of tau/T of each frame interval. Eq. 1 as
printed takes S_n at offset ceil(tau/2), which for 0-based j is one frame past the middle of the
exposure; we take the middle frame, offset (tau-1)/2, so that the sharp target is the instant the
blur is centred on.

An average of tau rendered frames is unrealistically clean, and real video is stored compressed.
With ``degrade``, per clip, ``draw_degradation`` picks for the blurry frames only, as a phone or
camera would give them:

- **exposure gain** in linear light, so that highlights clip (the sharp target gets the same
  gain: it is the same scene at the same exposure);
- **Poisson-Gaussian sensor noise** in linear light, variance ``a * x + b**2`` (Foi et al. 2008),
  added to the exposure average, independently per frame;
- **H.264** at CRF 18-28 (libx264, no B-frames or look-ahead, as hardware encoders of phones
  store video), decoded again.

Targets stay clean. Pure NumPy/torch/PyAV on arrays (or on decoded PyAV frames), no Ray:
``deblur.data.synth_job`` runs it over videos in object storage.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, StrictBool, StrictInt, field_validator, model_validator

from deblur.settings import Number, Settings

__all__ = [
    "ClipDegradation",
    "ClipParams",
    "ClipSchedule",
    "H264RoundTrip",
    "SynthesisConfig",
    "add_sensor_noise",
    "blur_window",
    "degrade_pairs",
    "draw_clip_params",
    "draw_degradation",
    "resize_frame",
    "synthesize_clip",
]

PAPER_TAUS = (7, 9, 11, 13, 15)


class SynthesisConfig(Settings):
    """How pairs are made. Defaults follow the paper (plain averaging, 3/4 downsampling)."""

    label: ClassVar[str] = "synthesis"

    taus: tuple[StrictInt, ...] = PAPER_TAUS
    # T is drawn uniformly from the integers in [stride_min * tau, stride_max * tau); the paper's
    # tau <= T < 2 tau is (1.0, 2.0).
    stride_min: Number = Field(1.0, ge=1)
    stride_max: Number = 2.0
    # Output size as a fraction of the source (paper: 1280x720 -> 960x540 = 0.75), antialiased.
    scale: Number = Field(0.75, gt=0, le=1)
    # Average in linear light (decode gamma 2.2, average, re-encode), as the GoPro dataset's
    # blur_gamma; the paper averages the stored (gamma-encoded) values directly.
    linear_light: StrictBool = False
    gamma: Number = Field(2.2, gt=0)
    # Output frames per clip: each clip of a source video gets its own (tau, T).
    clip_frames: StrictInt = Field(32, ge=1)
    # Degrade the blurry frames as a camera would (``draw_degradation``: exposure, noise, H.264), per clip.
    degrade: StrictBool = False

    @field_validator("taus")
    @classmethod
    def _odd_taus(cls, taus: tuple[int, ...]) -> tuple[int, ...]:
        if not taus or any(t < 1 or t % 2 == 0 for t in taus):
            raise ValueError("must be odd positive integers")
        return taus

    @model_validator(mode="after")
    def _strides(self) -> SynthesisConfig:
        if not self.stride_min < self.stride_max:
            raise ValueError(f"need 1 <= stride_min < stride_max, got {self.stride_min}, {self.stride_max}")
        return self


@dataclass(frozen=True)
class ClipParams:
    tau: int  # frames averaged per output
    stride: int  # T: high-speed frames between consecutive outputs

    @property
    def sharp_offset(self) -> int:
        return (self.tau - 1) // 2

    def source_frames(self, outputs: int) -> int:
        """High-speed frames a clip of ``outputs`` pairs spans (the last needs only tau)."""
        return (outputs - 1) * self.stride + self.tau if outputs else 0

    def output_fps(self, source_fps: Fraction) -> Fraction:
        return Fraction(source_fps) / self.stride


def draw_clip_params(rng: np.random.Generator, config: SynthesisConfig) -> ClipParams:
    tau = int(rng.choice(config.taus))
    low = int(np.ceil(config.stride_min * tau))
    high = max(low + 1, int(np.ceil(config.stride_max * tau)))  # exclusive
    return ClipParams(tau=tau, stride=int(rng.integers(low, high)))


class ClipSchedule:
    """The clips of one video in order, each drawn from ``rng`` when first reached, and the source
    frames they read.

    A video is cut into clips of ``config.clip_frames`` outputs, each with its own tau and T (the
    last clip may end early with the video). Taking the clips' parameters from here, in order, gives
    the same clips as drawing them one after another with ``draw_clip_params``, and lets the decoder
    be told ahead which frames Eq. 1 never reads (``uses``): the T - tau frames between exposures.
    """

    def __init__(self, rng: np.random.Generator, config: SynthesisConfig) -> None:
        self._rng, self._config = rng, config
        self._clips: list[ClipParams] = []
        self._starts = [0]  # source frame where each clip starts; the last entry is where the next would

    def params(self, clip: int) -> ClipParams:
        while len(self._clips) <= clip:
            params = draw_clip_params(self._rng, self._config)
            self._clips.append(params)
            self._starts.append(self._starts[-1] + params.source_frames(self._config.clip_frames))
        return self._clips[clip]

    def uses(self, index: int) -> bool:
        """Whether source frame ``index`` (0-based) falls in an exposure of its clip."""
        while self._starts[-1] <= index:
            self.params(len(self._clips))
        clip = bisect.bisect_right(self._starts, index) - 1
        params = self._clips[clip]
        return (index - self._starts[clip]) % params.stride < params.tau


def _to_linear(gamma: float) -> np.ndarray:
    """8-bit code -> linear value, as a table of 256."""
    return ((np.arange(256, dtype=np.float64) / 255.0) ** gamma).astype(np.float32)


def blur_window(frames: np.ndarray, *, linear_light: bool = False, gamma: float = 2.2) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 1 for one output: ``frames`` (tau, H, W, 3) uint8 -> (blurry, sharp), each (H, W, 3) uint8."""
    if frames.ndim != 4 or frames.shape[0] % 2 == 0:
        raise ValueError(f"expected an odd number of frames (tau, H, W, C), got shape {frames.shape}")
    if linear_light:
        mean = _to_linear(gamma)[frames].mean(axis=0, dtype=np.float64)
        blurry = np.clip(mean, 0.0, 1.0) ** (1.0 / gamma) * 255.0
    else:
        blurry = frames.mean(axis=0, dtype=np.float64)
    return np.rint(blurry).astype(np.uint8), frames[(frames.shape[0] - 1) // 2].copy()


def resize_frame(frame: np.ndarray, scale: float) -> np.ndarray:
    """Antialiased downsampling of an (H, W, 3) uint8 frame; identity at scale 1."""
    if scale == 1.0:
        return frame
    import torch
    import torch.nn.functional as F

    h, w = frame.shape[:2]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    # A uint8 channels-last tensor takes PyTorch's vectorised uint8 path (results within 1 of the
    # float filter's, from rounding; docs/data.md has the speeds). Bilinear with antialias=True
    # widens the filter to the scale factor (like PIL's resize), so high frequencies are removed
    # instead of aliased. The batch dimension goes first, then the permute: unsqueezing after it
    # leaves a batch stride of 3 that PyTorch does not take for channels-last (a slower path).
    tensor = torch.from_numpy(np.ascontiguousarray(frame))[None].permute(0, 3, 1, 2)
    out = F.interpolate(tensor, size=size, mode="bilinear", antialias=True, align_corners=False)
    # Channels-last out, so this is a view, not a copy.
    return out[0].permute(1, 2, 0).contiguous().numpy()


class _Accumulator:
    """Running sum of the frames of one exposure, so a window never sits whole in memory.

    Plain averaging sums uint8 frames in uint16 (exact for up to 257 frames and several times
    cheaper than floats); linear light sums the linearised values in float32.
    """

    def __init__(self, linear_light: bool, gamma: float) -> None:
        self.lut = _to_linear(gamma) if linear_light else None
        self.gamma = gamma
        self.total: np.ndarray | None = None
        self.count = 0

    def add(self, frame: np.ndarray) -> None:
        if self.lut is not None:
            values = self.lut[frame]
            if self.total is None:
                self.total = values
            else:
                self.total += values
        elif self.total is None:
            self.total = frame.astype(np.uint16)
        else:
            np.add(self.total, frame, out=self.total)
        self.count += 1

    def take(self) -> np.ndarray:
        assert self.total is not None
        if self.lut is not None:
            mean = np.clip(self.total / self.count, 0.0, 1.0) ** (1.0 / self.gamma) * 255.0
            out = np.rint(mean).astype(np.uint8)
        else:
            # Round half to even, as np.rint of the float mean: integer arithmetic, same result.
            out = np.rint(self.total / np.float32(self.count)).astype(np.uint8)
        self.total, self.count = None, 0
        return out


# 8-bit planar formats whose planes can be summed as they are (the decoders' usual output).
_PLANAR_8BIT = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "gray"})


def _planes(frame: Any) -> list[np.ndarray]:
    """Views of a decoded frame's planes, (plane height, plane width) uint8 each, no copy."""
    return [np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width] for p in frame.planes]


def _layout(frame: Any) -> str:
    return f"{frame.format.name} {frame.width}x{frame.height}"


class _PlaneAccumulator:
    """Running sum of an exposure in the decoder's own planes (8-bit YUV), converted to RGB once.

    The YUV to RGB conversion is affine per pixel and chroma upsampling is linear, so converting
    the mean of the planes equals the mean of the converted frames up to rounding, and clipping of
    colours outside the RGB gamut: on the synthetic corpus, blurry frames differ from averaging the
    RGB frames by 0.34 levels on average, and by more than 1 level in 0.7% of values. For that, an
    exposure costs one conversion instead of tau, and sums 1.5 bytes a pixel (4:2:0) instead of 3.
    """

    def __init__(self, to_rgb: Callable[[Any], np.ndarray]) -> None:
        self.to_rgb = to_rgb
        self.template: Any = None
        self.total: list[np.ndarray] | None = None
        self.count = 0

    def add(self, frame: Any) -> None:
        planes = _planes(frame)
        if self.total is None:
            self.template, self.total = frame, [plane.astype(np.uint16) for plane in planes]
        else:
            before, now = _layout(self.template), _layout(frame)
            if now != before:
                raise ValueError(f"frame layout changed within an exposure: {before}, then {now}")
            for total, plane in zip(self.total, planes, strict=True):
                np.add(total, plane, out=total)
        self.count += 1

    def take(self) -> np.ndarray:
        assert self.total is not None
        # The mean goes into the first frame's own buffer (made writable), so that it is converted
        # with every property of the frames it came from: matrix, range and chroma siting.
        mean = self.template
        mean.make_writable()
        for total, plane in zip(self.total, _planes(mean), strict=True):
            # Round half to even, as the RGB accumulator does.
            np.rint(total / np.float32(self.count), out=plane, casting="unsafe")
        self.template, self.total, self.count = None, None, 0
        return self.to_rgb(mean)


def _unchanged(frame: Any) -> Any:
    return frame


def synthesize_clip(
    frames: Iterable[Any],
    params: ClipParams,
    *,
    outputs: int | None = None,
    linear_light: bool = False,
    gamma: float = 2.2,
    scale: float = 1.0,
    to_rgb: Callable[[Any], np.ndarray] | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream Eq. 1 over high-speed frames: yields ``(B_n, S_n)`` for n = 0, 1, ...

    Consumes exactly ``params.source_frames(outputs)`` frames when ``outputs`` is given (so the
    caller can continue with the next clip from the same iterator), else runs to the end. A final
    exposure with fewer than tau frames is dropped. With ``to_rgb``, ``frames`` may be decoded
    ``av.VideoFrame`` objects that ``to_rgb`` turns into arrays: the T - tau frames between
    exposures are never converted, and plain averaging of 8-bit planar YUV sums the planes and
    converts one frame per exposure (see ``_PlaneAccumulator``); linear light converts every frame.
    A frame between exposures may be ``None`` (one the decoder dropped: ``ClipSchedule.uses``).
    """
    accumulator: _Accumulator | _PlaneAccumulator | None = None
    sharp: np.ndarray | None = None
    made = 0
    if outputs == 0:
        return
    for position, frame in enumerate(frames):
        phase = position % params.stride
        if phase < params.tau:
            if frame is None:
                raise RuntimeError(f"source frame {position} of the clip is in an exposure, but the decoder dropped it")
            if accumulator is None:
                pixel_format = getattr(getattr(frame, "format", None), "name", None)
                planar = to_rgb is not None and not linear_light and pixel_format in _PLANAR_8BIT
                accumulator = _PlaneAccumulator(to_rgb) if planar else _Accumulator(linear_light, gamma)
                # What the accumulator takes, and how the sharp frame becomes an RGB array.
                to_summed = to_rgb if to_rgb is not None and not planar else _unchanged
                to_sharp = to_rgb if planar else _unchanged
            frame = to_summed(frame)
            accumulator.add(frame)
            if phase == params.sharp_offset:
                sharp = to_sharp(frame)
            if phase == params.tau - 1:
                assert sharp is not None
                yield resize_frame(accumulator.take(), scale), resize_frame(sharp, scale)
                made += 1
                if outputs is not None and made >= outputs:
                    return


# ---------------------------------------------------------------------------------------------
# Camera degradations of the blurry frames (``SynthesisConfig.degrade``)
# ---------------------------------------------------------------------------------------------

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
