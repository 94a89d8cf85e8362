"""Deblur a video file: decode, online engine, encode (the inference stage).

The batch job and the endpoint call the same functions, so a video gives the same
frames whichever way it is deblurred.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from deblur.engine import OnlineDeblurrer
from deblur.model import DeblurNet
from deblur.video import EncoderOptions, Source, TransformResult, VideoInfo, transform_video

__all__ = ["DeblurResult", "deblur_file"]


@dataclass(frozen=True)
class DeblurResult:
    frames: int
    seconds: float
    info: VideoInfo
    compiled: bool = False  # the steps ran through torch.compile (asked for, and it worked)
    precision: str = "fp32"  # what ran: "auto" resolved to the device's pick, or its fp32 fallback
    precision_note: str | None = None  # with "auto": the pick, why, and the start-up check's outcome
    timestamp_repair: str | None = None  # what was repaired in the input's timestamps (one line)
    format_note: str | None = None  # what of the input's format the output keeps (one line)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else float("inf")


def deblur_file(
    source: Source,
    destination: str | os.PathLike[str],
    model: DeblurNet,
    *,
    device: str | torch.device | None = "auto",
    encoder: EncoderOptions | None = None,
    on_frame: Callable[[int, VideoInfo], None] | None = None,
    name: str | None = None,
    precision: str = "fp32",
    compiled: bool = False,
) -> DeblurResult:
    """Deblur ``source`` into ``destination`` (written atomically), one frame at a time.

    ``name`` is what error messages call the source (default: its path). ``compiled`` runs the
    step through ``torch.compile`` (see ``engine.compiled_step``: pays on long videos).
    """
    start = time.perf_counter()
    engine = OnlineDeblurrer(model, device=device, precision=precision, compiled=compiled)
    result: TransformResult = transform_video(
        source, destination, engine, encoder=encoder, on_frame=on_frame, name=name
    )
    return DeblurResult(
        frames=result.frames,
        seconds=time.perf_counter() - start,
        info=result.info,
        compiled=engine.runs_compiled,
        precision=engine.precision,
        precision_note=engine.precision_note,
        timestamp_repair=result.timestamp_repair,
        format_note=result.format_note,
    )
