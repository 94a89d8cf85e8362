"""Tiled steps: the same output and state as the whole frame, at any tile size."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from deblur.engine import TILE_EDGE, OnlineDeblurrer, choose_tile
from deblur.model import DeblurNet
from deblur.tiling import plan_tiles, step_radius, tiled_step

# The trunk must be the bundled model's depth (4 blocks): the halo is the reach of one step.
SMALL = {"width": 8, "feature_channels": 4, "num_blocks": 4}


def seeded_model(**kwargs: object) -> DeblurNet:
    torch.manual_seed(0)
    return DeblurNet(**{**SMALL, **kwargs}).eval()  # type: ignore[arg-type]


@pytest.mark.parametrize(("length", "tile"), [(96, 32), (100, 32), (2, 32), (3840, 1920), (2160, 1920), (62, 20)])
def test_tiles_cover_the_length_once_in_even_spans(length: int, tile: int) -> None:
    spans = plan_tiles(length, tile)
    assert spans[0][0] == 0 and spans[-1][1] == length
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))
    assert all((stop - start) % 2 == 0 and 0 < stop - start <= tile for start, stop in spans)


@pytest.mark.parametrize("variant", ["cnn", "strcnn", "strcnn_dtb"])
def test_tiled_steps_equal_whole_frame_steps_frame_after_frame(variant: str) -> None:
    model = seeded_model(variant=variant)
    clip = torch.rand(1, 7, 3, 112, 144, generator=torch.Generator().manual_seed(1))
    whole = tiled = model.init_state(1, 112, 144)
    halo = step_radius(model.config)
    with torch.inference_mode():
        for n in range(1, 6):
            window = clip[:, n - 1 : n + 2]
            out, whole = model.step(window, whole)
            out_tiled, tiled = tiled_step(model.step, window, tiled, tile=48, halo=halo)
            torch.testing.assert_close(out_tiled, out, rtol=0, atol=1e-5)
            torch.testing.assert_close(tiled.feature, whole.feature, rtol=0, atol=1e-5)
            if variant == "strcnn_dtb":
                torch.testing.assert_close(tiled.blended, whole.blended, rtol=0, atol=1e-5)


def test_an_engine_in_tiles_gives_the_whole_frame_output() -> None:
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (90, 130, 3), dtype=np.uint8) for _ in range(5)]
    whole = np.stack(list(OnlineDeblurrer(seeded_model(), device="cpu", tile=0).run(frames)))
    engine = OnlineDeblurrer(seeded_model(), device="cpu", tile=40)
    tiled = np.stack(list(engine.run(frames)))
    assert engine.tile == 40
    assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 1  # rounding to 8 bits at most


def test_frames_above_1080p_are_tiled_by_default() -> None:
    assert choose_tile(1080, 1920, None) == 0
    assert choose_tile(2160, 3840, None) == TILE_EDGE
    assert choose_tile(2160, 3840, 0) == 0
    assert choose_tile(90, 130, 40) == 40
    assert choose_tile(90, 130, 200) == 0  # one tile is the whole frame


def test_an_odd_or_negative_tile_is_refused() -> None:
    with pytest.raises(ValueError, match="tile must be 0 or an even number of pixels, got 33"):
        OnlineDeblurrer(seeded_model(), device="cpu", tile=33)
