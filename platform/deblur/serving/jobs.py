"""S3 jobs of the endpoint (``POST /v1/jobs``): one object deblurred into another, within the
endpoint's limits and at its precision, in one piece or in chunks across tasks.

``JobActor`` remembers a job for ``job_ttl_s`` after it ends; the work runs in Ray tasks with the
job's CPU or GPU (``run_job``, or ``run_chunk`` per chunk), so a finished job holds no compute. A
job in chunks is cut at keyframes, each chunk warmed up over the frames before it
(``deblur.chunks``), and the parts are joined and committed whole (``deblur.batch_split``).
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any

from deblur.serving.actors import kill_self
from deblur.serving.config import ServingConfig
from deblur.serving.wire import ApiError, FrameLimit, check_video_limits

__all__ = ["JOB_PREFIX", "JobActor", "run_chunk", "run_job"]

JOB_PREFIX = "deblur-job-"


def run_job(job_id: str, source: str, destination: str, config: dict[str, Any], threads: int) -> dict[str, Any]:
    """Deblur one S3 object into another (as ``batch.deblur_object`` does, within the endpoint's
    limits and at its precision): the outcome, ``status`` "ok" with a record or "failed" with an error.

    It runs as a Ray task with the job's CPU or GPU, so the resources are free once it returns.
    """
    import torch

    from deblur import storage
    from deblur.checkpoint import load_model
    from deblur.engine import OnlineDeblurrer
    from deblur.video import EncoderOptions, VideoError, probe_video, transform_video

    settings = ServingConfig.from_dict(config)
    torch.set_num_threads(max(1, threads))
    started = time.perf_counter()
    try:
        # The limits of an upload: the header before any work, then the frames as they come (a
        # container need not declare how many it holds).
        with storage.open_input(source) as handle:
            info = probe_video(handle, name=source)
        check_video_limits(info, settings, name=source)
        model = load_model(settings.checkpoint)
        engine = OnlineDeblurrer(model, device=settings.device, precision=settings.precision)
        processor = FrameLimit(engine, settings.max_frames, source)
        with tempfile.TemporaryDirectory(prefix="deblur-job-") as tmpdir:
            local = Path(tmpdir) / f"output{PurePosixPath(destination).suffix or '.mp4'}"
            with storage.open_input(source) as handle:
                encoder = EncoderOptions(crf=settings.crf)
                result = transform_video(handle, local, processor, encoder=encoder, name=source)
            storage.commit_file(local, destination, staging_uri=f"{destination}.staging-{job_id}")
    except (VideoError, ApiError) as error:  # bad input or over a limit: the message names the input
        return {"status": "failed", "error": str(error)}
    except Exception as error:  # reported to the client, never a silent failure
        return {"status": "failed", "error": f"{type(error).__name__}: {error}"}
    seconds = time.perf_counter() - started
    record = {
        "source": source,
        "destination": destination,
        "frames": result.frames,
        "width": result.info.width,
        "height": result.info.height,
        "video_fps": str(result.info.fps),
        "precision": settings.precision,
        "seconds": round(seconds, 3),
        "fps": round(result.frames / seconds, 3) if seconds > 0 else None,
        **({"timestamp_repair": result.timestamp_repair} if result.timestamp_repair else {}),
        **({"format_note": result.format_note} if result.format_note else {}),
    }
    return {"status": "ok", "record": record, "error": None}


def run_chunk(task: Any, part_uri: str, config: dict[str, Any], threads: int) -> dict[str, Any]:
    """One chunk of a job (``batch_worker.ChunkTask``) into ``part_uri``: what the join needs."""
    import torch

    from deblur.batch_worker import deblur_chunk_object
    from deblur.checkpoint import load_model
    from deblur.video import EncoderOptions

    settings = ServingConfig.from_dict(config)
    torch.set_num_threads(max(1, threads))
    model = load_model(settings.checkpoint)
    encoder = EncoderOptions(crf=settings.crf)
    return deblur_chunk_object(
        task, model, part_uri=part_uri, device=settings.device, encoder=encoder, precision=settings.precision
    )


class JobActor:
    """Remembers one S3 job for ``job_ttl_s`` after it ends, then removes itself.

    The work is one task (``run_job``), or one per chunk (``run_chunk``), with the job's CPU or GPU;
    the actor itself holds none, so a finished job kept for polling costs no compute.
    """

    def __init__(
        self,
        job_id: str,
        source: str,
        destination: str,
        config: dict[str, Any],
        threads: int,
        resources: dict[str, float],
        chunks: int = 1,
    ) -> None:
        self.args = (job_id, source, destination, config, threads)
        self.resources, self.chunks = resources, chunks
        self.ttl = ServingConfig.from_dict(config).job_ttl_s
        self.state: dict[str, Any] = {"job_id": job_id, "status": "running", "input": source, "output": destination}
        self.started = time.time()
        threading.Thread(target=self._wait, daemon=True).start()

    def _wait(self) -> None:
        import ray

        try:
            outcome = self._in_chunks() if self.chunks > 1 else None
            if outcome is None:  # one piece: asked for, or the video cannot be cut
                outcome = ray.get(ray.remote(run_job).options(**self.resources, max_retries=0).remote(*self.args))
        except Exception as error:  # a task's worker died: a failure to report, never a silent one
            outcome = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
        self.state.update(outcome, seconds=round(time.time() - self.started, 3))
        threading.Timer(self.ttl, kill_self).start()

    def _in_chunks(self) -> dict[str, Any] | None:
        """The job cut in chunks run as parallel tasks; None when it cannot be cut (or joined)."""
        import ray
        from ray.exceptions import RayTaskError

        from deblur import storage
        from deblur.batch_split import SplitVideos, split_video
        from deblur.batch_worker import VideoTask
        from deblur.chunks import NotSplittableError
        from deblur.video import probe_video

        job_id, source, destination, config, threads = self.args
        settings = ServingConfig.from_dict(config)
        with storage.open_input(source) as handle:
            info = probe_video(handle, name=source)
        if info.frames is None:
            return None  # the frame limit needs a declared count to hold for chunks
        try:
            check_video_limits(info, settings, name=source)
        except ApiError as error:
            return {"status": "failed", "error": str(error)}
        video = VideoTask(source=source, destination=destination, key=PurePosixPath(destination).name, version="")
        tasks = split_video(video, actors=self.chunks, warmup=8, min_seconds=settings.job_min_chunk_seconds)
        if tasks is None:
            return None
        split = SplitVideos(f"{destination}.staging-{job_id}", settings.precision)
        split.expect(tasks)
        work = ray.remote(run_chunk).options(**self.resources, max_retries=0)
        refs = [work.remote(task, split.part_uri(task), config, threads) for task in tasks]
        outcome: Any = None
        try:
            parts = ray.get(refs)
        except RayTaskError as error:
            split.drop(video.key)
            if isinstance(getattr(error, "cause", None), NotSplittableError):
                return None  # found while decoding (timestamps that do not increase): in one piece
            raise
        for part in parts:
            if split.wanted(video.key):
                outcome = split.add(part)
        if isinstance(outcome, VideoTask):
            return None
        if outcome is None or outcome["status"] != "ok":
            return {"status": "failed", "error": (outcome or {}).get("error", "the chunks were not joined")}
        record = {k: outcome[k] for k in ("source", "destination", "frames", "width", "height", "video_fps")}
        record.update(precision=outcome["precision"], seconds=outcome["seconds"], fps=outcome["fps"])
        return {"status": "ok", "record": {**record, "chunks": outcome["chunks"]}, "error": None}

    def status(self) -> dict[str, Any]:
        return dict(self.state)
