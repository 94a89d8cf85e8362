"""One step of a large frame in tiles: bounded memory, the same output as the whole frame.

A step's output at a pixel, and its new state there, depend on the window and on the state
(F_{n-1}, h~_{n-1}) only within a bounded distance: the receptive field of one step
(``step_radius``). So the state stays whole, at half size, and each tile runs ``step`` on its
crop of the window and of the state grown by a halo of at least that distance, keeping only
its core. Every core pixel then sees exactly what it would see in the whole frame, and the
stitched output and state equal the untiled step's up to floating-point rounding; the
recurrence carries no tile seams from frame to frame.

Memory falls from the full-size activations of the whole frame (64 channels at full size
after the first conv) to those of one tile plus the whole state (96 channels at half size).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor

from deblur.model import ModelConfig, RecurrentState

__all__ = ["plan_tiles", "step_radius", "tiled_step"]

Step = Callable[[Tensor, RecurrentState], tuple[Tensor, RecurrentState]]


def step_radius(config: ModelConfig) -> int:
    """How far (full-size pixels) one step reaches: every 3x3 conv of the residual blocks adds
    one half-size pixel, the DTB's 5x5 two, the first conv, the stride-2 conv, F_n's conv and
    the upsampling one or two each."""
    half = 2 * config.num_blocks * 2 + 2 + 4  # encoder and decoder blocks, DTB, the other convs
    return 2 * half + 2  # to full size, plus the 5x5 input conv and the 3x3 output conv


def plan_tiles(length: int, tile: int) -> list[tuple[int, int]]:
    """[start, stop) spans of about ``tile`` that cover ``length``, of even sizes (the model's
    stride), as equal as that allows; ``length`` is even (the engine pads frames to the stride)."""
    count = max(1, math.ceil(length / tile))
    size = math.ceil(length / count / 2) * 2
    return [(start, min(start + size, length)) for start in range(0, length, size)]


def tiled_step(
    step: Step, window: Tensor, state: RecurrentState, *, tile: int, halo: int
) -> tuple[Tensor, RecurrentState]:
    """``step(window, state)`` computed tile by tile. ``halo`` >= ``step_radius`` makes it exact.

    window: (B, 2m+1, 3, H, W) with H, W even; state at half size as ``DeblurNet.step`` takes it.
    """
    if tile < 2 or tile % 2 or halo % 2:
        raise ValueError(f"tile ({tile}) and halo ({halo}) must be even, tile at least 2")
    height, width = window.shape[-2:]
    out: Tensor | None = None
    feature: Tensor | None = None
    blended: Tensor | None = None
    for y0, y1 in plan_tiles(height, tile):
        ya, yb = max(0, y0 - halo), min(height, y1 + halo)
        for x0, x1 in plan_tiles(width, tile):
            xa, xb = max(0, x0 - halo), min(width, x1 + halo)
            half = (..., slice(ya // 2, yb // 2), slice(xa // 2, xb // 2))
            crop = RecurrentState(
                feature=None if state.feature is None else state.feature[half],
                blended=None if state.blended is None else state.blended[half],
            )
            image, next_state = step(window[..., ya:yb, xa:xb], crop)
            core = (..., slice(y0 - ya, y1 - ya), slice(x0 - xa, x1 - xa))
            core_half = (..., slice((y0 - ya) // 2, (y1 - ya) // 2), slice((x0 - xa) // 2, (x1 - xa) // 2))
            target_half = (..., slice(y0 // 2, y1 // 2), slice(x0 // 2, x1 // 2))
            if out is None:
                out = image.new_empty((*image.shape[:-2], height, width))
                feature = _like(next_state.feature, height, width)
                blended = _like(next_state.blended, height, width)
            out[..., y0:y1, x0:x1] = image[core]
            if feature is not None and next_state.feature is not None:
                feature[target_half] = next_state.feature[core_half]
            if blended is not None and next_state.blended is not None:
                blended[target_half] = next_state.blended[core_half]
    assert out is not None  # a frame has at least one tile
    return out, RecurrentState(feature=feature, blended=blended)


def _like(part: Tensor | None, height: int, width: int) -> Tensor | None:
    """An empty whole-frame (half size) tensor for the state ``part`` is a tile of."""
    return None if part is None else part.new_empty((*part.shape[:-2], height // 2, width // 2))
