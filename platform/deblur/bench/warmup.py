"""``deblur bench warmup``: how fast the recurrent state forgets where it started, on real footage.

A long video cut into chunks for several actors (issue 30) starts each chunk's engine W frames
before its first frame and drops those outputs. This measures what W buys: per sequence, the
frames after a cut deblurred from a fresh state started W frames earlier, against the same frames
of one sequential run, as PSNR per frame after the cut.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["WARMUPS", "forgetting", "run_warmup_benchmark"]

WARMUPS = (0, 4, 8, 16, 32)
CAP_DB = 99.0  # identical frames: PSNR is infinite; shown as this


def forgetting(
    model: Any, frames: list[np.ndarray], *, cut: int, after: int, warmups: tuple[int, ...] = WARMUPS, precision: str
) -> dict[int, list[float]]:
    """For each W <= ``cut``: PSNR of frames cut..cut+after-1 started W frames before the cut,
    against the sequential run over ``frames`` (which must reach cut+after+m)."""
    from deblur.engine import OnlineDeblurrer
    from deblur.evaluate import frame_psnr

    def run(start: int) -> list[np.ndarray]:
        engine = OnlineDeblurrer(model, device="cpu", precision=precision)
        out = [f for frame in frames[start : cut + after + model.m] for f in engine.push(frame)]
        return out[cut - start : cut - start + after]

    sequential = run(0)
    scores = {}
    for w in warmups:
        if w > cut:
            continue
        chunked = run(cut - w)
        scores[w] = [min(frame_psnr(a, b), CAP_DB) for a, b in zip(chunked, sequential, strict=True)]
    return scores


def run_warmup_benchmark(
    *,
    videos: str,
    cut: int = 32,
    after: int = 12,
    max_side: int = 480,
    precision: str = "auto",
    echo: Callable[[str], None] = print,
) -> dict[str, dict[int, list[float]]]:
    """Every sequence under ``videos`` long enough for a cut at ``cut``: the PSNR table per W."""
    from deblur.bench.roofline import describe_machine
    from deblur.checkpoint import load_model
    from deblur.evaluate_real import sequence_folders, sequence_frames

    model = load_model()
    echo(f"machine: {describe_machine()}")
    echo(
        f"bundled model, precision {precision}, cut at frame {cut}, {after} frames after it, centre crops of {max_side}"
    )
    results = {}
    for name, folder in sequence_folders(videos):
        frames = sequence_frames(folder, cut + after + model.m, max_side=max_side)
        if len(frames) < cut + after + model.m:
            echo(f"{name}: {len(frames)} frames, too short for a cut at {cut} and {after} after it: skipped")
            continue
        results[name] = scores = forgetting(model, frames, cut=cut, after=after, precision=precision)
        for w, row in scores.items():
            first_50 = next((i for i in range(after) if min(row[i:]) >= 50.0), None)
            echo(
                f"{name} W={w:2d}: worst {min(row):5.1f} dB, first frame after the cut {row[0]:5.1f} dB, "
                f"all >= 50 dB from frame {'never' if first_50 is None else f'+{first_50}'}"
            )
    if results:
        worst = {w: min(min(s[w]) for s in results.values() if w in s) for w in WARMUPS}
        echo("worst over the sequences, per W: " + ", ".join(f"W={w}: {db:.1f} dB" for w, db in worst.items()))
    return results
