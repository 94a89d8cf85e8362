"""Benchmarks: commands that print measured figures with the machine they came from.

deblur bench data     high-speed frames/s: decode only, then Ray Data synthesis with 1 and 2 workers
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["describe_machine", "run_data_benchmark"]


def describe_machine() -> str:
    import torch

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages * size / 2**30:.0f} GiB"
    except (ValueError, OSError):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs{memory}, {gpu}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, {platform.system()} {platform.release()}"
    )


def _timed(fn: Callable[[], int]) -> tuple[int, float]:
    started = time.perf_counter()
    count = fn()
    return count, time.perf_counter() - started


def run_data_benchmark(
    *,
    videos: int = 4,
    seconds: float = 4.0,
    width: int = 640,
    height: int = 360,
    seed: int = 0,
    cache: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Frames/s of decode-only vs synthesis (1 and 2 workers) on the same corpus in local S3.

    Every measured path reads the videos from the S3 server over HTTP and decodes them with one
    decoder thread per video, so the ratios compare like with like.
    """
    import ray

    from deblur import storage
    from deblur.corpus import CorpusConfig, generate_corpus
    from deblur.data import DataConfig, synthesize_dataset
    from deblur.local_s3 import LocalS3Server
    from deblur.video import read_frames

    echo(f"machine: {describe_machine()}")
    corpus_dir = (
        Path(cache or tempfile.mkdtemp(prefix="deblur-bench-")) / f"corpus-{videos}x{seconds}s-{width}x{height}-{seed}"
    )
    config = CorpusConfig.from_dict({"width": width, "height": height, "seconds": seconds})
    if not corpus_dir.is_dir() or len(list(corpus_dir.glob("*.mp4"))) < videos:
        echo(f"generating {videos} x {seconds} s of {width}x{height} at 240 fps into {corpus_dir} ...")
        generate_corpus(str(corpus_dir), videos=videos, seed=seed, config=config)
    results: dict[str, Any] = {}
    with LocalS3Server() as server:
        saved = {k: os.environ.get(k) for k in server.environment()}
        os.environ.update(server.environment())
        try:
            storage.ensure_bucket("s3://bench")
            for path in sorted(corpus_dir.glob("*.mp4"))[:videos]:
                storage.upload_file(path, f"s3://bench/raw/{path.name}")
            uris = storage.list_files("s3://bench/raw")

            def decode_all() -> int:
                count = 0
                for uri in uris:
                    with storage.open_input(uri) as handle:
                        count += sum(1 for _ in read_frames(handle, name=uri, threads=1))
                return count

            frames, elapsed = _timed(decode_all)
            results["decode_fps"] = frames / elapsed
            echo(
                f"decode only, 1 process, 1 thread per video: {frames} frames in {elapsed:.1f} s = "
                f"{results['decode_fps']:.0f} frames/s"
            )
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
            try:
                # Warm-up: start worker processes and import torch/PyAV in them before timing.
                synthesize_dataset("s3://bench/raw", "s3://bench/warm", config=DataConfig(), workers=2)
                for workers in (1, 2):
                    out = f"s3://bench/out-{workers}"
                    processed, elapsed = _timed(
                        lambda out=out, workers=workers: (
                            synthesize_dataset(
                                "s3://bench/raw", out, config=DataConfig(), workers=workers, cpus_per_task=1.0
                            ).processed
                        )
                    )
                    if processed != len(uris):
                        raise RuntimeError(f"synthesis processed {processed} of {len(uris)} videos")
                    fps = frames / elapsed
                    results[f"synth_fps_{workers}"] = fps
                    echo(
                        f"synthesis with {workers} Ray worker(s): {frames} frames in {elapsed:.1f} s = "
                        f"{fps:.0f} frames/s ({fps / results['decode_fps']:.0%} of decode)"
                    )
            finally:
                ray.shutdown()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
    results["speedup_2_over_1"] = results["synth_fps_2"] / results["synth_fps_1"]
    echo(
        f"summary: synthesis (1 worker) at {results['synth_fps_1'] / results['decode_fps']:.0%} of decode speed "
        f"(goal >= 80%); 2 workers {results['speedup_2_over_1']:.2f}x one (goal >= 1.7x)"
    )
    return results
