"""``deblur bench batch``: archive deblurring, videos/s and frames/s with 1 and 2 actors."""

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
    checkpoint = bench_model_path(directory)
    echo(f"{videos} videos x {frames} frames of {width}x{height}, model {checkpoint}")
    results: dict[str, Any] = {}
    with local_object_store(reuse=False):
        storage.ensure_bucket("s3://bench")
        for path in sources:
            storage.upload_file(path, f"s3://bench/in/{path.name}")
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
        finally:
            ray.shutdown()
    echo(f"summary: 2 actors {results[2]['frames_per_s'] / results[1]['frames_per_s']:.2f}x the frames/s of one")
    return results
