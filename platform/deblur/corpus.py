"""A synthetic high-speed (240 fps) video corpus, for the blur synthesis of paper Sec. 3.

This is NOT real high-speed footage. No such footage can be downloaded where this project is
built and tested, so this module renders stand-in videos that exercise the same pipeline:

- **Scene**: a real photograph as the background (scikit-image's bundled sample photographs:
  astronaut, chelsea, coffee, rocket, motorcycle, Hubble deep field), and 2-4 objects cut from
  other photographs (colour photos and grey textures: brick, grass, gravel, coins, camera) with
  soft-edged random shapes. Objects lie at fixed depths, so nearer ones occlude farther ones.
- **Camera shake**: a smooth random trajectory of translation, in-plane rotation and zoom (a sum
  of low-frequency sinusoids, 0.5-4 Hz, like hand tremor and drift) on top of a steady pan whose
  heading slowly turns (``camera_pan``: its share of the speed budget). The sum is scaled so that
  no pixel of the frame moves more than ``max_camera_motion`` pixels between consecutive frames.
  Without the pan, the sinusoids' speed averages about a third of its peak and the blur of
  Eq. 1 is far weaker than in real hand-held footage: the bundle recipe's held-out set had an
  input PSNR of 37.7 dB, against about 26 dB for the GoPro dataset. With the pan keeping most
  frames near the budget it is 31.5 dB.
- **Object motion**: each object has its own translation and rotation trajectory, faster than the
  camera (up to ``max_object_motion`` px/frame relative to the scene), so the blur of Eq. 1
  varies across the frame and differs between objects and background, as in dynamic scenes.
- **Exposure**: each 240 fps frame integrates its own exposure (a full 1/240 s shutter) as the
  mean of ``subframes`` renders along the motion, enough that no point on screen moves more
  than 1 px between renders. The paper captured its videos "to have small motions (ideally less
  than 1 pixel) among high-speed sharp frames" so that averaging frames (Eq. 1) draws a
  continuous blur, not separate copies of an edge; a renderer meets that by integrating the
  exposure, and can then move objects faster than 1 px per frame, as real scenes do. The camera
  alone stays under 1 px per frame by default (0.9), as the paper asks of camera shake.
- **Noise** (optional, ``noise_sigma`` in 8-bit levels): i.i.d. Gaussian sensor noise per frame.

``motion="mixed"`` draws each video's motion from the kinds people film (``MOTION_KINDS``): static
tripod shots, a tripod with moving objects, slow pans, hand-held shake at 1-10 Hz (translation,
rotation, zoom) and fast pans, each with its own speed range (``_MIXED_SPEEDS``), and places the
background at or below its native scale (mirrored past its border) so that textures stay as sharp
as the camera took them. ``photos=DIR`` (a folder or ``s3://`` prefix) takes scenes from a folder of
photographs instead of scikit-image's; videos are split by photograph (``eval_photos``) and
``corpus.json`` says which videos are held out, with the settings synthesis should use
(``REAL_SYNTHESIS``) and the motion drawn per video.

What it does not model: depth parallax inside the background, lighting changes, rolling shutter,
defocus, motion of non-rigid objects, the compression artefacts of a real camera (frames are
encoded at high quality, ``crf``). Every video is a pure function of (seed, index, config).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from functools import cache
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from deblur import storage
from deblur.photos import Photo, load_photos

__all__ = [
    "BACKGROUNDS",
    "MOTION_KINDS",
    "OBJECT_SOURCES",
    "REAL_SYNTHESIS",
    "CorpusConfig",
    "generate_corpus",
    "render_video",
]

# Explicit lists of the photographs used (files inside the scikit-image package, read locally).
BACKGROUNDS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
)
OBJECT_SOURCES = (
    *BACKGROUNDS,
    "motorcycle_right.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "coins.png",
    "camera.png",
)


@dataclass(frozen=True)
class CorpusConfig:
    width: int = 640
    height: int = 360
    fps: int = 240
    seconds: float = 2.0
    max_camera_motion: float = 0.9  # px/frame at the fastest-moving pixel (paper: ideally < 1 px)
    camera_pan: float = 0.85  # share of that budget taken by a steady, slowly turning pan
    max_object_motion: float = 2.0  # px/frame, relative to the scene
    subframes: int = 0  # renders averaged per frame (its exposure); 0: enough for steps <= 1 px
    min_objects: int = 2
    max_objects: int = 4
    noise_sigma: float = 0.0  # Gaussian noise, 8-bit levels; 0 = none
    crf: int = 12  # H.264 quality of the stored sharp video (lower = closer to lossless)
    preset: str = "veryfast"
    motion: str = "shake"  # "shake": the settings above for every video; "mixed": MOTION_KINDS
    photos: str = ""  # folder or s3:// prefix of photographs; "" = scikit-image's sample photos
    eval_photos: float = 0.1  # share of the photographs (and videos) held out for evaluation

    def __post_init__(self) -> None:
        if self.width < 16 or self.height < 16 or self.width % 2 or self.height % 2:
            raise ValueError(f"frame size must be even and at least 16x16, got {self.width}x{self.height}")
        if self.fps < 1 or self.seconds <= 0:
            raise ValueError(f"need fps >= 1 and seconds > 0, got {self.fps}, {self.seconds}")
        if not 0 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 0 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        if self.max_camera_motion < 0 or self.max_object_motion < 0 or self.noise_sigma < 0:
            raise ValueError("motions and noise_sigma must be non-negative")
        if not 0.0 <= self.camera_pan <= 1.0:
            raise ValueError(f"camera_pan is a share of the camera's motion, in [0, 1]; got {self.camera_pan}")
        if self.subframes < 0:
            raise ValueError(f"subframes must be 0 (automatic) or more, got {self.subframes}")
        if self.motion not in ("shake", "mixed"):
            raise ValueError(f"motion must be 'shake' or 'mixed', got {self.motion!r}")
        if not 0.0 <= self.eval_photos < 1.0:
            raise ValueError(f"eval_photos is a share of the photographs, in [0, 1); got {self.eval_photos}")

    @property
    def frames(self) -> int:
        return max(1, round(self.fps * self.seconds))

    @property
    def exposure_subframes(self) -> int:
        """Renders per frame: on screen a point moves at most camera + object motion per frame."""
        return self.subframes or max(1, math.ceil(self.max_camera_motion + self.max_object_motion))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CorpusConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown corpus setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)


@cache
def _photo(name: str) -> torch.Tensor:
    """A bundled photograph as a float (3, H, W) tensor in [0, 1]; grey images become RGB."""
    from importlib import resources

    import skimage.io

    image = skimage.io.imread(str(resources.files("skimage") / "data" / name))
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return torch.from_numpy(np.ascontiguousarray(image[..., :3])).permute(2, 0, 1).float() / 255.0


def _resize(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    # Antialiased when shrinking, bicubic when enlarging (the small photos must cover the frame).
    out = F.interpolate(image[None], size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return out[0].clamp_(0.0, 1.0)


def _smooth_path(
    rng: np.random.Generator, t: np.ndarray, *, components: int = 4, hz: tuple[float, float] = (0.5, 4.0)
) -> tuple[np.ndarray, np.ndarray]:
    """A random smooth signal and its derivative (per second): a sum of low-frequency sinusoids."""
    freqs = rng.uniform(*hz, components)  # Hz: drift and hand tremor
    phases = rng.uniform(0, 2 * np.pi, components)
    amps = rng.uniform(0.2, 1.0, components) / freqs  # slower components wander farther
    angle = 2 * np.pi * freqs[:, None] * t[None] + phases[:, None]
    value = (amps[:, None] * np.sin(angle)).sum(0)
    speed = (amps[:, None] * 2 * np.pi * freqs[:, None] * np.cos(angle)).sum(0)
    return value - value[0], speed


@dataclass(frozen=True)
class _Motion:
    """Pose per render: translation (px), rotation (rad), log-zoom; arrays of length frames x subframes."""

    tx: np.ndarray
    ty: np.ndarray
    angle: np.ndarray
    log_zoom: np.ndarray


def _random_motion(
    rng: np.random.Generator,
    frames: int,
    fps: int,
    *,
    max_speed: float,
    radius: float,
    hz: tuple[float, float] = (0.5, 4.0),
) -> _Motion:
    """A trajectory whose fastest point within ``radius`` of the centre moves ``max_speed`` px/frame.

    A point at distance r moves by at most |dt| + r (|d angle| + |d log_zoom|) between frames; the
    whole path is scaled so that the largest such step equals ``max_speed``.
    """
    t = np.arange(frames) / fps
    share = rng.dirichlet([2.0, 1.0, 0.5])  # translation, rotation, zoom (zoom the smallest)
    tx, vx = _smooth_path(rng, t, hz=hz)
    ty, vy = _smooth_path(rng, t, hz=hz)
    angle, va = _smooth_path(rng, t, hz=hz)
    zoom, vz = _smooth_path(rng, t, hz=hz)
    # Normalise each to a unit peak speed, then weight by its share of the motion budget.
    norm = lambda v: max(float(np.abs(v).max()), 1e-12)  # noqa: E731
    vt = np.hypot(vx, vy)
    tx, ty = tx * share[0] / norm(vt), ty * share[0] / norm(vt)
    angle = angle * share[1] / (norm(va) * max(radius, 1.0))
    zoom = zoom * share[2] / (norm(vz) * max(radius, 1.0))
    steps = (
        np.hypot(np.diff(tx), np.diff(ty)) + radius * (np.abs(np.diff(angle)) + np.abs(np.diff(zoom)))
        if frames > 1
        else np.zeros(1)
    )
    scale = max_speed / max(float(steps.max()), 1e-12) if max_speed > 0 else 0.0
    return _Motion(tx=tx * scale, ty=ty * scale, angle=angle * scale, log_zoom=zoom * scale)


def _add_pan(
    rng: np.random.Generator,
    shake: _Motion,
    *,
    speed: float,
    fps: int,
    share: float,
    turn_hz: tuple[float, float] = (1.0, 3.0),
) -> _Motion:
    """``shake`` scaled by ``1 - share`` plus a pan at a constant ``speed`` (px per render).

    The pan's heading turns at 1-3 rad/s (a random sense), so the camera sweeps circles of 60-180 px radius
    instead of leaving the scene: a hand-held camera is rarely still at 240 fps, so most frames
    carry close to the full motion budget, where shake alone averages about a third of its peak.
    Steps add at most ``speed`` to the shake's, so the fastest pixel stays within the budget.
    """
    n = len(shake.tx)
    turn = rng.uniform(*turn_hz) * rng.choice([-1.0, 1.0]) / fps  # rad per render
    heading = rng.uniform(0, 2 * np.pi) + turn * np.arange(n)
    tx = np.concatenate([[0.0], np.cumsum(speed * np.cos(heading[:-1]))])
    ty = np.concatenate([[0.0], np.cumsum(speed * np.sin(heading[:-1]))])
    keep = 1.0 - share
    return _Motion(
        tx=shake.tx * keep + tx, ty=shake.ty * keep + ty, angle=shake.angle * keep, log_zoom=shake.log_zoom * keep
    )


def _pixel_grid(height: int, width: int) -> torch.Tensor:
    """Pixel centres relative to the frame centre, (H, W, 2) as (x, y)."""
    ys = torch.arange(height, dtype=torch.float32) - (height - 1) / 2
    xs = torch.arange(width, dtype=torch.float32) - (width - 1) / 2
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx, yy], dim=-1)


def _camera_to_world(points: torch.Tensor, motion: _Motion, n: int) -> torch.Tensor:
    """World position (px, relative to the scene centre) of each frame point at frame n."""
    c, s = math.cos(motion.angle[n]), math.sin(motion.angle[n])
    zoom = math.exp(motion.log_zoom[n])
    # (x, y) -> (c x - s y, s x + c y) / zoom + t, as one matrix product over all points.
    rotation = torch.tensor([[c, s], [-s, c]], dtype=points.dtype) / zoom
    shift = torch.tensor([motion.tx[n], motion.ty[n]], dtype=points.dtype)
    return torch.addmm(shift, points.reshape(-1, 2), rotation).reshape(points.shape)


def _view_to_world(height: int, width: int, motion: _Motion, n: int) -> torch.Tensor:
    """``_camera_to_world`` of every pixel centre, (H, W, 2): the affine map is separable in rows
    and columns, so each coordinate is one broadcast sum of a row and a column vector."""
    c, s = math.cos(motion.angle[n]), math.sin(motion.angle[n])
    inv = math.exp(-motion.log_zoom[n])
    xs = torch.arange(width, dtype=torch.float32) - (width - 1) / 2
    ys = torch.arange(height, dtype=torch.float32) - (height - 1) / 2
    out = torch.empty(height, width, 2)
    torch.add((c * inv) * xs[None, :], ((-s * inv) * ys + motion.tx[n])[:, None], out=out[..., 0])
    torch.add((s * inv) * xs[None, :], ((c * inv) * ys + motion.ty[n])[:, None], out=out[..., 1])
    return out


def _object_window(
    centre: tuple[float, float], size: int, camera: _Motion, n: int, height: int, width: int
) -> tuple[slice, slice] | None:
    """Rows and columns of the frame that can see an object of ``size`` px centred at world ``centre``.

    The object's texture reaches at most size / sqrt 2 from its centre (its corner), plus one
    pixel of bilinear support; the camera maps world distances to frame pixels times its zoom.
    Two more pixels of margin absorb rounding. ``None`` when the object is out of view.
    """
    c, s = math.cos(camera.angle[n]), math.sin(camera.angle[n])
    zoom = math.exp(camera.log_zoom[n])
    dx, dy = centre[0] - camera.tx[n], centre[1] - camera.ty[n]
    # Inverse of _camera_to_world: frame position relative to the frame centre.
    px, py = zoom * (c * dx + s * dy), zoom * (-s * dx + c * dy)
    reach = zoom * (size / math.sqrt(2) + 1.0) + 2.0
    col, row = px + (width - 1) / 2, py + (height - 1) / 2
    x0, x1 = max(0, math.floor(col - reach)), min(width, math.ceil(col + reach) + 1)
    y0, y1 = max(0, math.floor(row - reach)), min(height, math.ceil(row + reach) + 1)
    if x0 >= x1 or y0 >= y1:
        return None
    return slice(y0, y1), slice(x0, x1)


def _sample(texture: torch.Tensor, coords: torch.Tensor, *, padding: str = "zeros") -> torch.Tensor:
    """Bilinear lookup of (C, h, w) ``texture`` at pixel ``coords`` (H, W, 2) relative to its centre."""
    _, h, w = texture.shape
    grid = coords / torch.tensor([w / 2, h / 2], dtype=coords.dtype)
    return F.grid_sample(texture[None], grid[None], mode="bilinear", padding_mode=padding, align_corners=False)[0]


def _object_mask(rng: np.random.Generator, size: int) -> torch.Tensor:
    """A soft-edged random blob (a star-convex shape with a smooth outline), (1, size, size)."""
    r = _pixel_grid(size, size)
    radius = torch.hypot(r[..., 0], r[..., 1])
    theta = torch.atan2(r[..., 1], r[..., 0])
    outline = torch.full_like(theta, 0.36 * size)
    for k in range(2, 6):  # a few low harmonics keep the outline smooth
        outline += float(rng.uniform(0, 0.05) * size) * torch.cos(k * theta + float(rng.uniform(0, 2 * np.pi)))
    # About one pixel of antialiased edge.
    return (outline - radius + 0.5).clamp(0.0, 1.0)[None]


@dataclass(frozen=True)
class _SceneObject:
    texture: torch.Tensor  # (4, s, s): RGB and alpha
    motion: _Motion  # world pose of its centre
    centre: tuple[float, float]  # world position at frame 0
    source: str


@dataclass(frozen=True)
class _Pool:
    """Where scenes come from: photograph names for backgrounds and objects, and how to load one."""

    backgrounds: tuple[str, ...]
    objects: tuple[str, ...]
    load: Callable[[str], torch.Tensor]


_SKIMAGE_POOL = _Pool(BACKGROUNDS, OBJECT_SOURCES, lambda name: _photo(name))

# The motion kinds of ``motion="mixed"`` and how often each is drawn (per video).
MOTION_KINDS = {"static": 0.10, "tripod_objects": 0.12, "slow_pan": 0.20, "handheld": 0.36, "fast_pan": 0.22}
# Per kind: the camera's speed range (px per frame at the fastest pixel) and the number of objects.
# Objects move at 0.3-2.4 px per frame (none in a static shot). With the speeds at 240 fps and
# REAL_SYNTHESIS's exposures of 7-23 frames scaled by 0.75, the camera's blur runs from 0 to 28 px.
_MIXED_SPEEDS = {
    "static": ((0.0, 0.0), (0, 2)),
    "tripod_objects": ((0.0, 0.0), (1, 3)),
    "slow_pan": ((0.1, 0.6), (0, 2)),
    "handheld": ((0.3, 1.6), (0, 3)),
    "fast_pan": ((0.9, 1.6), (0, 2)),
}
_OBJECT_SPEED = (0.3, 2.4)

# What synthesis should use for a corpus of mixed motion from real photographs (``deblur synth``
# takes these from corpus.json unless told otherwise): linear-light exposures of 7-23 frames, and
# the blurry input degraded as a camera would (deblur.degrade). A window then needs videos of
# about 1.6 s at 240 fps.
REAL_SYNTHESIS: dict[str, Any] = {
    "taus": [7, 9, 11, 13, 15, 17, 19, 21, 23],
    "stride_max": 1.6,
    "linear_light": True,
    "degrade": True,
    # Long exposures leave fewer outputs per video: windows of 12 pairs (at least 10).
    "window_frames": 12,
    "min_window_frames": 10,
}


def _make_object(
    rng: np.random.Generator, pool: _Pool, exclude: str, height: int, width: int, renders: int, fps: int, speed: float
) -> _SceneObject:
    """An object cut from another photograph, moving up to ``speed`` px per render."""
    name = str(rng.choice([n for n in pool.objects if n != exclude] or list(pool.objects)))
    source = pool.load(name)
    size = max(8, int(rng.uniform(0.2, 0.45) * min(height, width)))
    # A random square patch of the source photo, resized to the object's size.
    side = int(min(source.shape[1:]) * rng.uniform(0.35, 0.8))
    y0 = int(rng.integers(0, source.shape[1] - side + 1))
    x0 = int(rng.integers(0, source.shape[2] - side + 1))
    rgb = _resize(source[:, y0 : y0 + side, x0 : x0 + side], size, size)
    texture = torch.cat([rgb, _object_mask(rng, size)], dim=0)
    # The texture's corner (size / sqrt 2 from its centre) bounds every point of the blob.
    motion = _random_motion(rng, renders, fps, max_speed=speed, radius=size / math.sqrt(2))
    # A drift across the frame on top of the wobble makes object motion dominate the
    # camera's, as a car or a person crossing the scene would.
    drift = rng.normal(size=2)
    drift *= rng.uniform(0.2, 0.5) * speed / max(float(np.hypot(*drift)), 1e-9)
    n = np.arange(renders)
    motion = _Motion(
        tx=motion.tx * 0.5 + drift[0] * n,
        ty=motion.ty * 0.5 + drift[1] * n,
        angle=motion.angle * 0.5,
        log_zoom=np.zeros(renders),
    )
    # Wobble and drift each take at most half the speed budget; the object crosses its
    # random spot in the view half-way through the video.
    mid = renders // 2
    centre = (
        float(rng.uniform(-0.35, 0.35) * width - drift[0] * mid),
        float(rng.uniform(-0.35, 0.35) * height - drift[1] * mid),
    )
    return _SceneObject(texture=texture, motion=motion, centre=centre, source=name)


def _plan_scene(
    rng: np.random.Generator, config: CorpusConfig, pool: _Pool = _SKIMAGE_POOL
) -> tuple[torch.Tensor, _Motion, list[_SceneObject], dict[str, Any]]:
    if config.motion == "mixed":
        return _plan_mixed_scene(rng, config, pool)
    # Poses are sampled per render: ``subframes`` renders per frame, each moving 1/subframes as far.
    k = config.exposure_subframes
    renders, h, w = config.frames * k, config.height, config.width
    half_diag = math.hypot(w, h) / 2
    camera = _random_motion(rng, renders, config.fps * k, max_speed=config.max_camera_motion / k, radius=half_diag)
    if config.camera_pan > 0:
        camera = _add_pan(
            rng,
            camera,
            speed=config.camera_pan * config.max_camera_motion / k,
            fps=config.fps * k,
            share=config.camera_pan,
        )

    # The background must cover every frame's footprint in the world: size the photo to the
    # largest extent any frame corner reaches, plus a margin for bilinear lookups.
    corners = torch.tensor([[-(w / 2), -(h / 2)], [w / 2, -(h / 2)], [-(w / 2), h / 2], [w / 2, h / 2]])
    extent = torch.stack([_camera_to_world(corners, camera, n).abs() for n in range(renders)]).amax(dim=(0, 1))
    background_name = str(rng.choice(pool.backgrounds))
    photo = pool.load(background_name)
    scale = max((2 * float(extent[0]) + 4) / photo.shape[2], (2 * float(extent[1]) + 4) / photo.shape[1])
    background = _resize(photo, math.ceil(photo.shape[1] * scale), math.ceil(photo.shape[2] * scale))

    objects = [
        _make_object(rng, pool, background_name, h, w, renders, config.fps * k, config.max_object_motion / k)
        for _ in range(int(rng.integers(config.min_objects, config.max_objects + 1)))
    ]
    description = {
        "background": background_name,
        "objects": [o.source for o in objects],
        "camera_max_px_per_frame": config.max_camera_motion,
        "object_max_px_per_frame": config.max_object_motion,
        "subframes": k,
    }
    return background, camera, objects, description


def _plan_mixed_scene(
    rng: np.random.Generator, config: CorpusConfig, pool: _Pool
) -> tuple[torch.Tensor, _Motion, list[_SceneObject], dict[str, Any]]:
    """One video of ``motion="mixed"``: a motion kind, its speeds, then the scene along it."""
    h, w = config.height, config.width
    kind = str(rng.choice(list(MOTION_KINDS), p=list(MOTION_KINDS.values())))
    (low, high), (fewest, most) = _MIXED_SPEEDS[kind]
    camera_speed = float(rng.uniform(low, high))
    object_speeds = [
        0.0 if kind == "static" else float(rng.uniform(*_OBJECT_SPEED))
        for _ in range(int(rng.integers(fewest, most + 1)))
    ]
    # Enough renders per frame that no point moves more than 1 px between two of them.
    k = config.subframes or max(1, math.ceil(camera_speed + max(object_speeds, default=0.0)))
    renders, fps = config.frames * k, config.fps * k
    half_diag = math.hypot(w, h) / 2
    if camera_speed == 0:
        camera = _Motion(*(np.zeros(renders) for _ in range(4)))
    else:
        # Hand tremor at 1-10 Hz, with rotation and zoom; pans put most of the speed in a steady
        # sweep whose heading turns slowly, hand-held shots drift a little.
        shake = _random_motion(rng, renders, fps, max_speed=camera_speed / k, radius=half_diag, hz=(1.0, 10.0))
        share, turn = (rng.uniform(0.0, 0.3), (0.0, 2.0)) if kind == "handheld" else (0.9, (0.0, 0.5))
        camera = _add_pan(rng, shake, speed=share * camera_speed / k, fps=fps, share=share, turn_hz=turn)

    # The background at or below its native scale (textures as sharp as taken), covering the
    # frame; past its border it is mirrored. The view starts at a random place on it.
    background_name = str(rng.choice(pool.backgrounds))
    photo = pool.load(background_name)
    cover = max(h / photo.shape[1], w / photo.shape[2]) * 1.02
    scale = max(cover, float(rng.uniform(0.6, 1.0)))
    background = _resize(photo, math.ceil(photo.shape[1] * scale), math.ceil(photo.shape[2] * scale))
    room_x, room_y = (background.shape[2] - w) / 2, (background.shape[1] - h) / 2
    start_x, start_y = rng.uniform(-room_x, room_x), rng.uniform(-room_y, room_y)
    camera = _Motion(tx=camera.tx + start_x, ty=camera.ty + start_y, angle=camera.angle, log_zoom=camera.log_zoom)

    objects = []
    for speed in object_speeds:
        obj = _make_object(rng, pool, background_name, h, w, renders, fps, speed / k)
        # Objects are placed relative to the view, which starts at (start_x, start_y).
        objects.append(
            _SceneObject(obj.texture, obj.motion, (obj.centre[0] + start_x, obj.centre[1] + start_y), obj.source)
        )
    description = {
        "background": background_name,
        "objects": [o.source for o in objects],
        "motion": kind,
        "camera_px_per_frame": round(camera_speed, 4),
        "object_px_per_frame": [round(v, 4) for v in object_speeds],
        "subframes": k,
        "background_scale": round(scale, 4),
    }
    return background, camera, objects, description


def video_split(seed: int, index: int, eval_fraction: float) -> str:
    """The split of video ``index`` of a corpus from photographs: its scenes come from that split."""
    return "eval" if np.random.default_rng([seed, index, 2]).random() < eval_fraction else "train"


def _photo_pools(photos: list[Photo]) -> dict[str, _Pool]:
    """A pool per split: held-out photographs make held-out videos only."""
    by_name = {p.name: p for p in photos}

    def load(name: str) -> torch.Tensor:
        return torch.from_numpy(by_name[name].pixels).permute(2, 0, 1).float() / 255.0

    pools = {}
    for split in ("train", "eval"):
        names = tuple(p.name for p in photos if p.split == split)
        if names:
            pools[split] = _Pool(names, names, load)
    return pools


def render_video(
    config: CorpusConfig, *, seed: int, index: int = 0, photos: list[Photo] | None = None
) -> tuple[Iterator[np.ndarray], dict[str, Any]]:
    """``(frames, description)``: the sharp high-speed frames of video ``index``, RGB uint8 (H, W, 3).

    With ``config.photos``, scenes come from ``photos`` (read from there when not given), from the
    video's split (``video_split``); the description then names the split.
    """
    rng = np.random.default_rng([seed, index])
    pool, split = _SKIMAGE_POOL, None
    if config.photos:
        if photos is None:
            photos, _ = load_photos(config.photos, eval_fraction=config.eval_photos, seed=seed)
        pools = _photo_pools(photos)
        split = video_split(seed, index, config.eval_photos) if "eval" in pools else "train"
        pool = pools.get(split) or pools["eval"]
    background, camera, objects, description = _plan_scene(rng, config, pool)
    if split is not None:
        description["split"] = split
    padding = "reflection" if config.motion == "mixed" else "zeros"
    noise_rng = np.random.default_rng([seed, index, 1])

    def render(n: int) -> torch.Tensor:
        world = _view_to_world(config.height, config.width, camera, n)
        image = _sample(background, world, padding=padding)
        for obj in objects:  # fixed depth order: later objects occlude earlier ones
            m = obj.motion
            ox, oy = obj.centre[0] + m.tx[n], obj.centre[1] + m.ty[n]
            # Only the pixels the object can cover: outside them its layer and alpha are exactly
            # zero and compositing would leave the image bit for bit as it was, at a cost of
            # several full-frame passes per object (most of the corpus's render time).
            window = _object_window((ox, oy), obj.texture.shape[-1], camera, n, config.height, config.width)
            if window is None:
                continue
            rows, cols = window
            w = world[rows, cols]
            c, s = math.cos(m.angle[n]), math.sin(m.angle[n])
            dx = w[..., 0] - ox
            dy = w[..., 1] - oy
            local = torch.stack([c * dx + s * dy, -s * dx + c * dy], dim=-1)
            layer = _sample(obj.texture, local)
            alpha = layer[3:4]
            image[:, rows, cols] = image[:, rows, cols] * (1 - alpha) + layer[:3] * alpha
        return image

    k = description["subframes"]

    def frames() -> Iterator[np.ndarray]:
        for n in range(config.frames):
            # The frame's exposure: the mean of its renders (a full shutter over 1/fps).
            image = render(n * k)
            for j in range(1, k):
                image += render(n * k + j)
            if k > 1:
                image /= k
            out = image.permute(1, 2, 0).numpy() * 255.0
            if config.noise_sigma > 0:
                out = out + noise_rng.normal(0.0, config.noise_sigma, out.shape)
            yield np.clip(np.rint(out), 0, 255).astype(np.uint8)

    return frames(), description


def generate_corpus(
    out: str,
    *,
    videos: int,
    seed: int = 0,
    config: CorpusConfig | None = None,
    on_video: Callable[[str], None] | None = None,
) -> list[str]:
    """Write ``videos`` sharp 240 fps videos as ``OUT/video_NNNN.mp4`` plus ``OUT/corpus.json``.

    Video i depends only on (seed, i, config), so a larger corpus extends a smaller one. Each
    video is staged locally and appears under ``out`` only when complete, and ``corpus.json``
    is rewritten after each one (``complete`` false until the last): an interrupted run resumes
    where it stopped, keeping the videos that the manifest lists for the same seed and config.
    With ``config.photos``, every photograph is read (and bad ones skipped and recorded) before
    anything is written; a folder without one usable photograph is a ``PhotoError``.
    """
    from deblur.video import EncoderOptions, write_video

    if videos < 1:
        raise ValueError(f"videos must be at least 1, got {videos}")
    config = config or CorpusConfig()
    photos: list[Photo] | None = None
    extra: dict[str, Any] = {}
    if config.photos:
        photos, skipped = load_photos(config.photos, eval_fraction=config.eval_photos, seed=seed)
        extra["photos"] = {p.name: p.split for p in photos}
        extra["skipped_photos"] = skipped
    if config.motion == "mixed":
        extra["synthesis"] = REAL_SYNTHESIS
    encoder = EncoderOptions(crf=config.crf, preset=config.preset)
    manifest_uri = storage.join_uri(out, "corpus.json")
    done = _finished_videos(manifest_uri, seed=seed, config=config)
    written, described = [], []
    for index in range(videos):
        name = f"video_{index:04d}.mp4"
        uri = storage.join_uri(out, name)
        if name in done and storage.exists(uri):
            described.append({**done[name], "video": uri})
        else:
            frames, description = render_video(config, seed=seed, index=index, photos=photos)
            with storage.staged_output(uri, suffix=".mp4") as staged:
                write_video(staged, frames, fps=config.fps, encoder=encoder)
            described.append({"video": uri, **description})
        written.append(uri)
        complete = index == videos - 1
        if complete and config.motion == "mixed":
            extra["motion"] = _motion_summary(described)
            _plot_motion(described, storage.join_uri(out, "corpus_motion.png"))
        _write_corpus_manifest(manifest_uri, seed=seed, config=config, videos=described, complete=complete, extra=extra)
        if on_video is not None:
            on_video(uri)
    return written


def _blur_lengths(videos: list[dict[str, Any]], speed_key: str) -> np.ndarray:
    """Blur at the output size for every video and every exposure REAL_SYNTHESIS may draw."""
    taus = np.asarray(REAL_SYNTHESIS["taus"], dtype=float)
    scale = 0.75  # SynthesisConfig's default output scale
    speeds = []
    for v in videos:
        value = v[speed_key]
        speeds.append(max(value, default=0.0) if isinstance(value, list) else value)
    return (np.asarray(speeds, dtype=float)[:, None] * taus[None] * scale).ravel()


def _motion_summary(videos: list[dict[str, Any]]) -> dict[str, Any]:
    """The drawn distribution: videos per kind, and blur lengths (px at the output size) in bins."""
    kinds = [v["motion"] for v in videos]
    edges = [0, 1, 3, 6, 10, 15, 20, 25, 30, 40]
    summary: dict[str, Any] = {"videos_per_kind": {k: kinds.count(k) for k in MOTION_KINDS}, "blur_bins_px": edges}
    for key, label in (("camera_px_per_frame", "camera"), ("object_px_per_frame", "fastest_object")):
        lengths = _blur_lengths(videos, key)
        counts, _ = np.histogram(np.minimum(lengths, edges[-1] - 1e-6), bins=edges)
        summary[f"{label}_blur_share"] = [round(float(c) / len(lengths), 4) for c in counts]
        summary[f"{label}_blur_max_px"] = round(float(lengths.max()), 2)
    return summary


def _plot_motion(videos: list[dict[str, Any]], uri: str) -> None:
    """corpus_motion.png: the drawn motion kinds and blur lengths, for people to look at."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    kinds = [v["motion"] for v in videos]
    left.bar(list(MOTION_KINDS), [kinds.count(k) for k in MOTION_KINDS], color="#4c72b0")
    left.set_title("videos per motion kind")
    left.tick_params(axis="x", rotation=25)
    bins = np.arange(0, 41, 2)
    right.hist(_blur_lengths(videos, "camera_px_per_frame"), bins=bins, alpha=0.7, label="camera")
    right.hist(_blur_lengths(videos, "object_px_per_frame"), bins=bins, alpha=0.5, label="fastest object")
    right.set_xlabel(
        f"blur length, px at the output size (taus {REAL_SYNTHESIS['taus'][0]}-{REAL_SYNTHESIS['taus'][-1]})"
    )
    right.set_ylabel("video x tau")
    right.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    storage.write_bytes(uri, buffer.getvalue(), content_type="image/png")


def _finished_videos(manifest_uri: str, *, seed: int, config: CorpusConfig) -> dict[str, dict[str, Any]]:
    """The videos an earlier run of the same seed and config finished, by file name (none otherwise).

    By name, not URI: the same prefix given another way (relative or absolute path, a trailing
    slash) is the same corpus, and once re-rendered all of it for want of an equal string.
    """
    if not storage.exists(manifest_uri):
        return {}
    try:
        manifest = json.loads(storage.read_bytes(manifest_uri))
    except ValueError:
        return {}
    if manifest.get("seed") != seed or manifest.get("config") != asdict(config):
        return {}
    return {entry["video"].rstrip("/").rsplit("/", 1)[-1]: entry for entry in manifest.get("videos", [])}


def _write_corpus_manifest(
    uri: str,
    *,
    seed: int,
    config: CorpusConfig,
    videos: list[dict[str, Any]],
    complete: bool,
    extra: dict[str, Any] | None = None,
) -> None:
    manifest = {
        "synthetic": True,
        "generator": "deblur.corpus (rendered from photographs; not real high-speed footage)",
        "seed": seed,
        "config": asdict(config),
        "complete": complete,
        **(extra or {}),
        "videos": videos,
    }
    storage.write_bytes(uri, json.dumps(manifest, indent=1).encode(), content_type="application/json")
