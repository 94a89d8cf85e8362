"""The work of one batch actor: one video from object storage to object storage.

``deblur_object`` is plain Python (testable without Ray); ``VideoWorker`` is the actor's body,
which ``deblur.batch`` starts as a Ray actor: one model, one video at a time.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from deblur import storage

__all__ = ["ChunkTask", "VideoTask", "VideoWorker", "deblur_chunk_object", "deblur_object", "failure_record"]


@dataclass(frozen=True)
class VideoTask:
    source: str  # URI of the input video
    destination: str  # URI of the output (same key below OUT)
    key: str  # relative key
    version: str  # of the input, for reruns


@dataclass(frozen=True)
class ChunkTask:
    """One chunk of a video split across actors (``deblur.chunks``)."""

    video: VideoTask
    chunk: Any  # deblur.chunks.Chunk
    warmup: int  # frames run before the chunk to warm the recurrent state up


def failure_record(
    key: str, source: str, destination: str | None, version: str | None, error: str, *, kind: str, **extra: Any
) -> dict[str, Any]:
    """The record of a video that failed; ``kind`` "input" (not worth retrying) or "transient"."""
    return {
        "key": key,
        "source": source,
        "destination": destination,
        "version": version,
        "status": "failed",
        "error": error,
        "error_kind": kind,
        **extra,
    }


def deblur_object(
    task: VideoTask,
    model: Any,
    *,
    staging_uri: str,
    device: Any = "auto",
    encoder: Any = None,
    precision: str = "fp32",
    compiled: bool = False,
) -> dict[str, Any]:
    """Deblur one video from object storage to object storage; returns its record.

    Bad input gives ``status="failed"``, ``error_kind="input"`` with the reason (not worth
    retrying). Anything else (storage trouble that outlasted the client's retries, a bug) raises:
    the caller retries. ``precision`` as in ``deblur_file``; an int8 ``model`` may come quantized.
    """
    from deblur.inference import deblur_file
    from deblur.video import VideoError

    record: dict[str, Any] = {
        "key": task.key,
        "source": task.source,
        "destination": task.destination,
        "version": task.version,
        "precision": precision,
        "status": "ok",
        "error": None,
    }
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="deblur-batch-") as tmpdir:
            local = Path(tmpdir) / f"output{PurePosixPath(task.key).suffix or '.mp4'}"
            with storage.open_input(task.source) as handle:
                result = deblur_file(
                    handle,
                    local,
                    model,
                    device=device,
                    encoder=encoder,
                    name=task.source,
                    precision=precision,
                    compiled=compiled,
                )
            storage.commit_file(local, task.destination, staging_uri=staging_uri)
        seconds = time.perf_counter() - started
        record.update(
            frames=result.frames,
            width=result.info.width,
            height=result.info.height,
            video_fps=str(result.info.fps),
            seconds=round(seconds, 3),
            fps=round(result.frames / seconds, 3) if seconds > 0 else None,
            compiled=result.compiled,
            precision=result.precision,
            **({"precision_note": result.precision_note} if result.precision_note else {}),
            **({"timestamp_repair": result.timestamp_repair} if result.timestamp_repair else {}),
            **({"format_note": result.format_note} if result.format_note else {}),
        )
    except VideoError as error:
        record.update(
            status="failed", error=str(error), error_kind="input", seconds=round(time.perf_counter() - started, 3)
        )
    return record


def deblur_chunk_object(
    task: ChunkTask,
    model: Any,
    *,
    part_uri: str,
    device: Any = "auto",
    encoder: Any = None,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Deblur one chunk of a video into ``part_uri`` (a staging key); returns what the join needs.

    Bad input gives ``status="failed"`` with the reason, as ``deblur_object``; a video that cannot
    be split raises ``deblur.chunks.NotSplittableError`` (the caller deblurs it in one piece).
    """
    from deblur.chunks import deblur_chunk
    from deblur.video import VideoError

    video, chunk = task.video, task.chunk
    part: dict[str, Any] = {"key": video.key, "index": chunk.index, "uri": part_uri, "status": "ok", "error": None}
    try:
        with tempfile.TemporaryDirectory(prefix="deblur-chunk-") as tmpdir:
            local = Path(tmpdir) / f"part{PurePosixPath(video.key).suffix or '.mp4'}"
            with storage.open_input(video.source) as handle:
                result = deblur_chunk(
                    handle,
                    local,
                    model,
                    chunk,
                    warmup=task.warmup,
                    device=device,
                    encoder=encoder,
                    precision=precision,
                    name=video.source,
                )
            storage.upload_file(local, part_uri)
        part.update(
            frames=result.frames,
            warmup=result.warmup,
            seconds=round(result.seconds, 3),
            width=result.info.width,
            height=result.info.height,
            video_fps=str(result.info.fps),
            precision=result.precision,
            **({"precision_note": result.precision_note} if result.precision_note else {}),
        )
    except VideoError as error:
        part.update(status="failed", error=str(error), error_kind="input")
    return part


class VideoWorker:
    """The body of a batch actor: one model, one video at a time, state never shared between videos."""

    def __init__(
        self,
        checkpoint: str | None,
        device: str,
        torch_threads: int,
        encoder: dict[str, Any],
        precision: str = "fp32",
        compiled: bool = False,
    ) -> None:
        import torch

        from deblur.checkpoint import load_model
        from deblur.engine import resolve_device
        from deblur.precision import check_precision
        from deblur.video import EncoderOptions

        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        self.device = resolve_device(device)
        self.precision = check_precision(precision, self.device)
        model = load_model(checkpoint)
        if precision == "auto":
            from deblur.precision import choose_precision

            # What auto picks here: int8 is quantized once per actor below, not once per video.
            resolved = choose_precision(self.device)[0]
        else:
            resolved = precision
        if resolved == "int8":
            from deblur.quantize import quantize_model

            # Quantizing (calibration included) takes seconds: once per actor, not once per video.
            # The engine uses an already quantized model as it is.
            model = quantize_model(model.eval())
        else:
            from deblur.engine import prepare_model

            # Prepared once, so every video's engine shares it (and, compiled, its compiled code).
            model = prepare_model(model, self.device)
        self.model = model
        self.compiled = compiled
        self.encoder = EncoderOptions(**encoder)

    def pid(self) -> int:
        return os.getpid()

    def deblur_chunk(self, task: ChunkTask, part_uri: str) -> dict[str, Any]:
        return deblur_chunk_object(
            task, self.model, part_uri=part_uri, device=self.device, encoder=self.encoder, precision=self.precision
        )

    def deblur(self, task: VideoTask, staging_uri: str) -> dict[str, Any]:
        return deblur_object(
            task,
            self.model,
            staging_uri=staging_uri,
            device=self.device,
            encoder=self.encoder,
            precision=self.precision,
            compiled=self.compiled,
        )
