"""Camera degradations of the blurry input: noise, clipped highlights, H.264; targets untouched."""

from __future__ import annotations

import numpy as np
from skimage import data

from deblur.data.blur import ClipDegradation, add_sensor_noise, degrade_pairs, draw_degradation
from deblur.evaluate import frame_psnr

IMAGE = np.ascontiguousarray(data.astronaut()[:96, :128])


def _run(degradation: ClipDegradation, frames: int = 6) -> list[tuple[np.ndarray, np.ndarray]]:
    pairs = [(IMAGE.copy(), IMAGE.copy()) for _ in range(frames)]
    return list(degrade_pairs(pairs, degradation, rng=np.random.default_rng(0)))


def test_no_degradation_changes_nothing() -> None:
    assert all(np.array_equal(b, IMAGE) and np.array_equal(s, IMAGE) for b, s in _run(ClipDegradation()))


def test_noise_grows_with_the_signal_and_differs_per_frame() -> None:
    flat = {level: np.full((64, 64, 3), level, np.uint8) for level in (40, 200)}
    rng = np.random.default_rng(0)
    # Poisson noise only: the linear-light variance is proportional to the signal.
    spread = {}
    for level, frame in flat.items():
        linear = (add_sensor_noise(frame, poisson=1e-3, read=0.0, rng=rng) / 255.0) ** 2.2
        spread[level] = linear.std()
    assert spread[200] > 2 * spread[40]
    out = _run(ClipDegradation(poisson=1e-3, read=1e-3))
    assert not np.array_equal(out[0][0], out[1][0])
    assert all(np.array_equal(s, IMAGE) for _, s in out)


def test_gain_clips_highlights_in_both_frames_alike() -> None:
    (blurry, sharp), *_ = _run(ClipDegradation(gain=1.5))
    np.testing.assert_array_equal(blurry, sharp)
    assert (IMAGE == 255).mean() == 0 and (blurry == 255).mean() > 0.003
    assert blurry.astype(float).mean() > IMAGE.astype(float).mean() + 10


def test_h264_keeps_every_frame_in_order_and_costs_quality() -> None:
    pairs = [(np.roll(IMAGE, 3 * i, axis=1), IMAGE) for i in range(8)]
    out = list(degrade_pairs(pairs, ClipDegradation(crf=28), rng=np.random.default_rng(0)))
    assert len(out) == 8
    for (blurry, _), (coded, sharp) in zip(pairs, out, strict=True):
        assert 25.0 < frame_psnr(coded, blurry) < 45.0
        np.testing.assert_array_equal(sharp, IMAGE)
    # In order: each decoded frame is closest to its own input.
    assert frame_psnr(out[3][0], pairs[3][0]) > frame_psnr(out[3][0], pairs[4][0])


def test_h264_keeps_the_brightness_of_every_channel() -> None:
    # The decoder's RGB conversion is unbiased: a training pair must not teach a colour shift.
    photo = np.ascontiguousarray(data.astronaut()[:192, :256])
    out = list(degrade_pairs([(photo, photo)] * 4, ClipDegradation(crf=18), rng=np.random.default_rng(0)))
    shift = np.mean([coded.astype(np.float32).mean((0, 1)) - photo.mean((0, 1)) for coded, _ in out], axis=0)
    assert np.abs(shift).max() < 0.3, f"mean shift per channel: {shift}"


def test_odd_sizes_go_through_h264() -> None:
    odd = np.ascontiguousarray(IMAGE[:45, :67])
    out = list(degrade_pairs([(odd, odd)] * 3, ClipDegradation(crf=20), rng=np.random.default_rng(0)))
    assert [b.shape for b, _ in out] == [odd.shape] * 3


def test_drawn_degradations_cover_the_ranges() -> None:
    drawn = [draw_degradation(np.random.default_rng(i)) for i in range(300)]
    crfs = [d.crf for d in drawn if d.crf is not None]
    assert min(crfs) == 18 and max(crfs) == 28
    assert 0.6 < len(crfs) / len(drawn) < 0.9
    assert any(d.gain > 1.3 for d in drawn) and any(d.gain == 1.0 for d in drawn)
    assert any(d.poisson == 0 for d in drawn) and any(d.poisson > 1e-3 for d in drawn)
