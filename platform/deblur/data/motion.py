"""Camera and object motion for the rendered corpus (``deblur.data.corpus``), and the motion kinds.

A motion is a pose per render (translation, in-plane rotation, log-zoom): ``_random_motion`` is a
smooth random trajectory (a sum of low-frequency sinusoids, like hand tremor and drift) scaled
so that its fastest point moves a given number of pixels per render; ``_add_pan`` adds a steady
pan whose heading slowly turns. ``_camera_to_world`` and ``_view_to_world`` map frame pixels to
the scene, ``_object_window`` finds the pixels an object can cover.

``MOTION_KINDS`` are the kinds of video people film (``motion="mixed"``) with their speeds, and
``REAL_SYNTHESIS`` the synthesis settings a corpus of them asks for; ``_motion_summary`` and
``_plot_motion`` describe the motion a corpus drew. Pure NumPy and torch, no Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from deblur import storage


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


@dataclass(frozen=True)
class _MixedMotion:
    """What one video of ``motion="mixed"`` drew: its kind, speeds, and the camera along it."""

    kind: str
    camera_speed: float  # px per frame at the fastest pixel
    object_speeds: list[float]  # px per frame relative to the scene, one per object
    subframes: int  # renders per frame
    camera: _Motion  # pose per render, starting at the scene's centre


def _draw_mixed_motion(
    rng: np.random.Generator, *, frames: int, fps: int, subframes: int, radius: float
) -> _MixedMotion:
    """A motion kind of ``MOTION_KINDS``, its camera and object speeds, and the camera's path.

    ``subframes`` 0 takes enough renders per frame that no point moves more than 1 px between
    two of them; ``radius`` is the distance of the frame's corners from its centre.
    """
    kind = str(rng.choice(list(MOTION_KINDS), p=list(MOTION_KINDS.values())))
    (low, high), (fewest, most) = _MIXED_SPEEDS[kind]
    camera_speed = float(rng.uniform(low, high))
    object_speeds = [
        0.0 if kind == "static" else float(rng.uniform(*_OBJECT_SPEED))
        for _ in range(int(rng.integers(fewest, most + 1)))
    ]
    k = subframes or max(1, math.ceil(camera_speed + max(object_speeds, default=0.0)))
    renders, fps = frames * k, fps * k
    if camera_speed == 0:
        camera = _Motion(*(np.zeros(renders) for _ in range(4)))
    else:
        # Hand tremor at 1-10 Hz, with rotation and zoom; pans put most of the speed in a steady
        # sweep whose heading turns slowly, hand-held shots drift a little.
        shake = _random_motion(rng, renders, fps, max_speed=camera_speed / k, radius=radius, hz=(1.0, 10.0))
        share, turn = (rng.uniform(0.0, 0.3), (0.0, 2.0)) if kind == "handheld" else (0.9, (0.0, 0.5))
        camera = _add_pan(rng, shake, speed=share * camera_speed / k, fps=fps, share=share, turn_hz=turn)
    return _MixedMotion(kind, camera_speed, object_speeds, k, camera)


# What synthesis should use for a corpus of mixed motion from real photographs (``deblur synth``
# takes these from corpus.json unless told otherwise): linear-light exposures of 7-23 frames, and
# the blurry input degraded as a camera would (``degrade``, in ``deblur.data.blur``). A window
# then needs videos of about 1.6 s at 240 fps.
REAL_SYNTHESIS: dict[str, Any] = {
    "taus": [7, 9, 11, 13, 15, 17, 19, 21, 23],
    "stride_max": 1.6,
    "linear_light": True,
    "degrade": True,
    # Long exposures leave fewer outputs per video: windows of 12 pairs (at least 10).
    "window_frames": 12,
    "min_window_frames": 10,
}


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
