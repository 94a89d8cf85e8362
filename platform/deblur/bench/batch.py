"""``deblur bench batch``: archive deblurring, videos/s and frames/s with 1 and 2 actors, and one long
video on one actor against the same video split across two (``--split-long-videos``)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deblur.bench.inputs import bench_model_path, bench_videos
from deblur.bench.roofline import describe_machine

__all__ = ["run_batch_benchmark"]


def run_batch_benchmark(
    *,
    videos: int = 4,
    frames: int = 30,
    width: int = 320,
    height: int = 240,
    long_frames: int = 600,
    cache: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """``deblur batch`` on the local S3 server: videos/s and frames/s with 1 and 2 actors (1 CPU each)."""
    import ray

    from deblur import storage
    from deblur.batch import BatchConfig, run_batch
    from deblur.local_s3 import local_object_store

    echo(f"machine: {describe_machine()}")
    directory = Path(cache or tempfile.mkdtemp(prefix="deblur-bench-batch-"))
    directory.mkdir(parents=True, exist_ok=True)
    sources = bench_videos(directory, videos=videos, frames=frames, width=width, height=height)
    (long_video,) = bench_videos(directory, videos=1, frames=long_frames, width=width, height=height, keyframe_every=30)
    checkpoint = bench_model_path(directory)
    echo(f"{videos} videos x {frames} frames of {width}x{height}, model {checkpoint}")
    results: dict[str, Any] = {}
    with local_object_store(reuse=False):
        storage.ensure_bucket("s3://bench")
        for path in sources:
            storage.upload_file(path, f"s3://bench/in/{path.name}")
        storage.upload_file(long_video, f"s3://bench/long/{long_video.name}")
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        try:
            for actors in (1, 2):
                config = BatchConfig(checkpoint=checkpoint, actors=actors, cpus_per_actor=1.0)
                run = run_batch("s3://bench/in", f"s3://bench/out-{actors}", config=config, progress=False)
                done = sum(r.get("frames") or 0 for r in run.records)
                if run.summary["ok"] != videos:
                    raise RuntimeError(f"batch benchmark: {run.summary}")
                results[actors] = {"videos_per_s": videos / run.seconds, "frames_per_s": done / run.seconds}
                echo(
                    f"{actors} actor(s), 1 CPU each: {videos} videos, {done} frames in {run.seconds:.1f} s = "
                    f"{videos / run.seconds:.3f} videos/s, {done / run.seconds:.2f} frames/s "
                    "(includes starting the actors and loading the model)"
                )
            results["long"] = _long_video(checkpoint, long_frames, echo)
        finally:
            ray.shutdown()
    echo(f"summary: 2 actors {results[2]['frames_per_s'] / results[1]['frames_per_s']:.2f}x the frames/s of one")
    long = results["long"]
    echo(
        f"summary: one long video split across 2 actors took {long[2] / long[1]:.2f}x the time of one actor "
        "(goal <= 0.6)"
    )
    return results


def _long_video(checkpoint: str, frames: int, echo: Callable[[str], None]) -> dict[int, float]:
    """Wall seconds for one video: one actor, then cut in two at a keyframe (warm-up 8) on two."""
    from deblur.batch import BatchConfig, run_batch

    seconds = {}
    for actors in (1, 2):
        config = BatchConfig(
            checkpoint=checkpoint,
            actors=actors,
            cpus_per_actor=1.0,
            split_long_videos=actors > 1,
            min_chunk_seconds=frames / 30 / 2 * 0.9,
        )
        run = run_batch("s3://bench/long", f"s3://bench/long-out-{actors}", config=config, progress=False)
        (record,) = run.records
        if record["status"] != "ok" or record.get("chunks", 1) != actors:
            raise RuntimeError(f"batch benchmark, long video: {record}")
        seconds[actors] = run.seconds
        echo(
            f"one video of {frames} frames, {actors} actor(s){' (split in 2, warm-up 8)' if actors > 1 else ''}: "
            f"{run.seconds:.1f} s = {frames / run.seconds:.2f} frames/s (includes starting the actors)"
        )
    return seconds
