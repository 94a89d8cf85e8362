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
rotation, zoom) and fast pans, each with its own speed range (``deblur.data.motion``), and places the
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
from dataclasses import dataclass
from functools import cache
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, StrictInt, StrictStr, field_validator, model_validator

from deblur import storage
from deblur.data.motion import (
    MOTION_KINDS,
    REAL_SYNTHESIS,
    _add_pan,
    _camera_to_world,
    _draw_mixed_motion,
    _Motion,
    _motion_summary,
    _object_window,
    _pixel_grid,
    _plot_motion,
    _random_motion,
    _view_to_world,
)
from deblur.data.photos import Photo, load_photos
from deblur.settings import Number, Settings

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


class CorpusConfig(Settings):
    label: ClassVar[str] = "corpus"

    width: StrictInt = Field(640, ge=16)  # even: H.264 4:2:0
    height: StrictInt = Field(360, ge=16)
    fps: StrictInt = Field(240, ge=1)
    seconds: Number = Field(2.0, gt=0)
    max_camera_motion: Number = Field(0.9, ge=0)  # px/frame at the fastest-moving pixel (paper: ideally < 1 px)
    camera_pan: Number = Field(0.85, ge=0, le=1)  # share of that budget taken by a steady, slowly turning pan
    max_object_motion: Number = Field(2.0, ge=0)  # px/frame, relative to the scene
    subframes: StrictInt = Field(0, ge=0)  # renders averaged per frame (its exposure); 0: enough for steps <= 1 px
    min_objects: StrictInt = Field(2, ge=0)
    max_objects: StrictInt = Field(4, ge=0)
    noise_sigma: Number = Field(0.0, ge=0)  # Gaussian noise, 8-bit levels; 0 = none
    crf: StrictInt = 12  # H.264 quality of the stored sharp video (lower = closer to lossless)
    preset: StrictStr = "veryfast"
    motion: Literal["shake", "mixed"] = "shake"  # "shake": the settings above for every video; "mixed": MOTION_KINDS
    photos: StrictStr = ""  # folder or s3:// prefix of photographs; "" = scikit-image's sample photos
    eval_photos: Number = Field(0.1, ge=0, lt=1)  # share of the photographs (and videos) held out for evaluation

    @field_validator("width", "height")
    @classmethod
    def _even(cls, size: int) -> int:
        if size % 2:
            raise ValueError("must be even")
        return size

    @model_validator(mode="after")
    def _object_counts(self) -> CorpusConfig:
        if self.min_objects > self.max_objects:
            raise ValueError(f"need 0 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}")
        return self

    @property
    def frames(self) -> int:
        return max(1, round(self.fps * self.seconds))

    @property
    def exposure_subframes(self) -> int:
        """Renders per frame: on screen a point moves at most camera + object motion per frame."""
        return self.subframes or max(1, math.ceil(self.max_camera_motion + self.max_object_motion))


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
    drawn = _draw_mixed_motion(
        rng, frames=config.frames, fps=config.fps, subframes=config.subframes, radius=math.hypot(w, h) / 2
    )
    k, camera, object_speeds = drawn.subframes, drawn.camera, drawn.object_speeds
    renders, fps = config.frames * k, config.fps * k

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
        "motion": drawn.kind,
        "camera_px_per_frame": round(drawn.camera_speed, 4),
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
    if manifest.get("seed") != seed or manifest.get("config") != config.to_dict():
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
        "generator": "deblur.data.corpus (rendered from photographs; not real high-speed footage)",
        "seed": seed,
        "config": config.to_dict(),
        "complete": complete,
        **(extra or {}),
        "videos": videos,
    }
    storage.write_bytes(uri, json.dumps(manifest, indent=1).encode(), content_type="application/json")
