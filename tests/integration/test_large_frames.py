"""A 4K frame runs in tiles with bounded memory (the whole frame needs about 9 GB in fp32)."""

from __future__ import annotations

from deblur.bench.perf import peak_rss_of

# One 3840x2160 step of the bundled model in a fresh process, engine defaults (tiles of 1920).
FOUR_K = """
import numpy as np, torch
torch.set_num_threads(2)
from deblur.checkpoint import load_model
from deblur.engine import OnlineDeblurrer
engine = OnlineDeblurrer(load_model(), device="cpu", precision="fp32")
frame = np.random.default_rng(0).integers(0, 256, (2160, 3840, 3), dtype=np.uint8)
engine.push(frame)
(out,) = engine.push(frame)
assert out.shape == (2160, 3840, 3) and engine.tile == 1920, (out.shape, engine.tile)
"""


def test_a_4k_frame_runs_in_tiles_within_6_gib() -> None:
    peak_mib = peak_rss_of(FOUR_K)
    assert peak_mib < 6 * 1024, f"one 4K step peaked at {peak_mib:.0f} MiB"
