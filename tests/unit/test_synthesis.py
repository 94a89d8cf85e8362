"""Eq. 1 on small hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest

from deblur.data.blur import (
    ClipParams,
    ClipSchedule,
    SynthesisConfig,
    blur_window,
    draw_clip_params,
    resize_frame,
    synthesize_clip,
)


def ramp(n: int, h: int = 2, w: int = 3) -> list[np.ndarray]:
    """Frame k is filled with the value 10 * k, so means are easy to work out by hand."""
    return [np.full((h, w, 3), 10 * k, np.uint8) for k in range(n)]


def test_eq1_mean_and_middle_frame() -> None:
    frames = np.stack(ramp(7))
    blurry, sharp = blur_window(frames)
    assert (blurry == 30).all()  # (0 + 10 + ... + 60) / 7
    # The middle frame of the exposure, offset (tau-1)/2 = 3, not Eq. 1's printed ceil(7/2) = 4.
    assert (sharp == 30).all()
    frames = np.stack([np.full((1, 1, 3), v, np.uint8) for v in (0, 0, 255)])
    assert blur_window(frames)[0].item(0) == 85
    assert blur_window(frames)[1].item(0) == 0
    with pytest.raises(ValueError, match="odd number"):
        blur_window(np.zeros((4, 2, 2, 3), np.uint8))


def test_linear_light_averages_in_linear_light() -> None:
    frames = np.stack([np.full((1, 1, 3), v, np.uint8) for v in (0, 255, 255)])
    plain, _ = blur_window(frames)
    linear, _ = blur_window(frames, linear_light=True, gamma=2.2)
    assert plain.item(0) == 170
    # (2/3) of the light, re-encoded with gamma 2.2: 255 * (2/3) ** (1 / 2.2) = 212.2
    assert linear.item(0) == 212
    flat = np.stack([np.full((1, 1, 3), 77, np.uint8)] * 3)
    assert blur_window(flat, linear_light=True)[0].item(0) == 77


@pytest.mark.parametrize("linear_light", [False, True])
def test_streaming_clip_matches_eq1_window_by_window(linear_light: bool) -> None:
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 256, (4, 5, 3), dtype=np.uint8) for _ in range(60)]
    params = ClipParams(tau=7, stride=11)
    pairs = list(synthesize_clip(iter(frames), params, linear_light=linear_light))
    assert len(pairs) == 5  # starts 0, 11, 22, 33, 44; 55 has only 5 frames left
    for n, (blurry, sharp) in enumerate(pairs):
        window = np.stack(frames[n * 11 : n * 11 + 7])
        expected_blurry, expected_sharp = blur_window(window, linear_light=linear_light)
        np.testing.assert_array_equal(blurry, expected_blurry)
        np.testing.assert_array_equal(sharp, expected_sharp)
        np.testing.assert_array_equal(sharp, frames[n * 11 + 3])


def test_clip_consumes_exactly_its_span() -> None:
    frames = iter([np.full((1, 1, 3), k, np.uint8) for k in range(100)])
    params = ClipParams(tau=9, stride=12)
    assert params.source_frames(3) == 2 * 12 + 9
    assert len(list(synthesize_clip(frames, params, outputs=3))) == 3
    assert next(frames)[0, 0, 0] == 33  # the next clip starts right after
    assert params.output_fps(240) == 20


def test_frames_between_exposures_may_be_missing_but_not_those_inside() -> None:
    frames: list[np.ndarray | None] = list(ramp(25))
    params = ClipParams(tau=7, stride=11)
    expected = list(synthesize_clip(iter(frames), params, outputs=2))
    between = [k for k in range(25) if k % 11 >= 7]
    for k in between:
        frames[k] = None
    for got, want in zip(synthesize_clip(iter(frames), params, outputs=2), expected, strict=True):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    frames[12] = None
    with pytest.raises(RuntimeError, match=r"frame 12 .* dropped"):
        list(synthesize_clip(iter(frames), params))


def test_schedule_draws_the_same_clips_and_names_the_frames_they_read() -> None:
    config = SynthesisConfig(clip_frames=4)
    rng = np.random.default_rng(3)
    drawn = [draw_clip_params(rng, config) for _ in range(30)]
    schedule = ClipSchedule(np.random.default_rng(3), config)
    # Asked about a late frame first (as a decoder running ahead does), the clips are still the same.
    end = sum(p.source_frames(4) for p in drawn[:29])
    assert schedule.uses(end - 1)  # the last frame of clip 28 closes its last exposure
    assert [schedule.params(k) for k in range(30)] == drawn
    start = 0
    for params in drawn[:29]:
        span = params.source_frames(4)
        used = [schedule.uses(start + k) for k in range(span)]
        assert used == [k % params.stride < params.tau for k in range(span)]
        start += span


def test_tau_and_stride_ranges() -> None:
    rng = np.random.default_rng(0)
    drawn = [draw_clip_params(rng, SynthesisConfig()) for _ in range(2000)]
    assert {p.tau for p in drawn} == {7, 9, 11, 13, 15}
    assert all(p.tau <= p.stride < 2 * p.tau for p in drawn)
    assert {p.stride for p in drawn if p.tau == 7} == set(range(7, 14))
    narrow = SynthesisConfig(taus=(9,), stride_min=1.0, stride_max=1.2)
    assert {draw_clip_params(rng, narrow).stride for _ in range(200)} == {9, 10}


def test_config_is_strict() -> None:
    with pytest.raises(ValueError, match=r"unknown synthesis setting.*'tua'"):
        SynthesisConfig.from_dict({"tua": [7]})
    with pytest.raises(ValueError, match="odd"):
        SynthesisConfig(taus=(8,))
    assert SynthesisConfig.from_dict({"taus": [7, 9]}).taus == (7, 9)


def test_resize_is_antialiased() -> None:
    # A one-pixel checkerboard has no content at 3/4 scale: antialiasing turns it to flat grey,
    # point sampling would keep full-contrast stripes.
    y, x = np.mgrid[0:64, 0:64]
    board = np.repeat((((x + y) % 2) * 255).astype(np.uint8)[..., None], 3, axis=2)
    small = resize_frame(board, 0.75)
    assert small.shape == (48, 48, 3)
    assert small[4:-4, 4:-4].std() < 20
    assert abs(float(small.mean()) - 127.5) < 3
