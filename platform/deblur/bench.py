"""Benchmarks: commands that print measured figures with the machine they came from.

deblur bench data     high-speed frames/s: decode only, then Ray Data synthesis with 1 and 2 workers
deblur bench batch    archive deblurring: videos/s and frames/s with 1 and 2 actors
deblur bench serve    live sessions: per-frame latency p50/p99 for K concurrent sessions, overhead
deblur bench train    Ray Train: samples/s and GFLOP/s with 1 and 2 workers
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "describe_machine",
    "run_batch_benchmark",
    "run_data_benchmark",
    "run_serve_benchmark",
    "run_train_benchmark",
]


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
    from deblur.local_s3 import local_object_store
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
    with local_object_store(reuse=False):
        if True:
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
    results["speedup_2_over_1"] = results["synth_fps_2"] / results["synth_fps_1"]
    echo(
        f"summary: synthesis (1 worker) at {results['synth_fps_1'] / results['decode_fps']:.0%} of decode speed "
        f"(goal >= 80%); 2 workers {results['speedup_2_over_1']:.2f}x one (goal >= 1.7x)"
    )
    return results


# ---------------------------------------------------------------------------------------------
# Batch: videos/s and frames/s with 1 and 2 actors
# ---------------------------------------------------------------------------------------------


def _bench_model_path(directory: Path) -> str:
    """The bundled model when there is one, else a freshly initialised strcnn_dtb (same cost)."""
    from deblur.checkpoint import bundled_checkpoint_path, save_checkpoint
    from deblur.model import DeblurNet

    bundled = bundled_checkpoint_path()
    if bundled is not None:
        return str(bundled)
    path = directory / "fresh.safetensors"
    save_checkpoint(DeblurNet(), path)
    return str(path)


def _bench_videos(directory: Path, *, videos: int, frames: int, width: int, height: int) -> list[Path]:
    from deblur.corpus import CorpusConfig, render_video
    from deblur.video import EncoderOptions, write_video

    config = CorpusConfig(width=width, height=height, fps=30, seconds=frames / 30, max_camera_motion=3.0)
    paths = []
    for index in range(videos):
        path = directory / f"bench_{index:02d}.mp4"
        if not path.exists():
            write_video(path, render_video(config, seed=99, index=index)[0], fps=30, encoder=EncoderOptions(crf=18))
        paths.append(path)
    return paths


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
    sources = _bench_videos(directory, videos=videos, frames=frames, width=width, height=height)
    checkpoint = _bench_model_path(directory)
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


# ---------------------------------------------------------------------------------------------
# Serving: per-frame latency of K concurrent sessions, against the bare model step
# ---------------------------------------------------------------------------------------------


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_serve_benchmark(
    *,
    sessions: tuple[int, ...] = (1, 2, 4),
    frames: int = 30,
    width: int = 320,
    height: int = 240,
    cache: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """K concurrent live sessions over HTTP on loopback: per-frame latency p50/p99 and its overhead."""
    import threading

    import numpy as np
    import ray
    import torch
    from ray import serve

    from deblur.checkpoint import load_model
    from deblur.client import DeblurClient
    from deblur.engine import OnlineDeblurrer
    from deblur.local_s3 import find_free_port
    from deblur.serving import build_app

    echo(f"machine: {describe_machine()}")
    directory = Path(cache or tempfile.mkdtemp(prefix="deblur-bench-serve-"))
    directory.mkdir(parents=True, exist_ok=True)
    checkpoint = _bench_model_path(directory)
    rng = np.random.default_rng(0)
    clip = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(frames)]

    # The bare model step: the online engine in this process, one thread (as a session actor).
    torch.set_num_threads(1)
    engine = OnlineDeblurrer(load_model(checkpoint), device="cpu")
    times = []
    for frame in clip:
        started = time.perf_counter()
        engine.push(frame)
        times.append(time.perf_counter() - started)
    bare = float(np.median(times[2:]))
    echo(f"bare engine step at {width}x{height}, 1 thread: median {bare * 1000:.1f} ms")

    results: dict[str, Any] = {"bare_ms": bare * 1000}
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        port = find_free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app({"checkpoint": checkpoint, "device": "cpu", "session_cpus": 0.5}), name="bench")
        url = f"http://127.0.0.1:{port}"
        for k in sessions:
            latencies: list[float] = []
            lock = threading.Lock()

            def one_session(latencies: list[float] = latencies, lock: threading.Lock = lock) -> None:
                with DeblurClient(url) as client:
                    session = client.session(fmt="raw")
                    mine = []
                    for frame in clip:
                        started = time.perf_counter()
                        session.push(frame)
                        mine.append(time.perf_counter() - started)
                    session.close()
                with lock:
                    latencies.extend(mine[2:])  # the first pushes include warm-up

            threads = [threading.Thread(target=one_session) for _ in range(k)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.perf_counter() - started
            p50, p99 = _percentile(latencies, 0.5), _percentile(latencies, 0.99)
            results[k] = {"p50_ms": p50 * 1000, "p99_ms": p99 * 1000, "frames_per_s": k * frames / elapsed}
            echo(
                f"{k} concurrent session(s): per-frame latency p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms; "
                f"overhead over the bare step at p50 {(p50 - bare) * 1000:+.1f} ms; "
                f"{k * frames / elapsed:.2f} frames/s in total (with session start)"
            )
        serve.shutdown()
    finally:
        ray.shutdown()
    return results


# ---------------------------------------------------------------------------------------------
# Training: samples/s and achieved GFLOP/s with 1 and 2 workers
# ---------------------------------------------------------------------------------------------


def run_train_benchmark(
    *,
    steps: int = 30,
    cache: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Ray Train (cpu-small settings) on a small synthesized dataset: samples/s and GFLOP/s.

    GFLOP/s counts forward plus backward as 3x the forward multiply-adds x 2 of every deblurred
    frame (``count_macs_per_pixel``), over the steps after the first report (warm-up excluded).
    """
    import ray

    from deblur.corpus import CorpusConfig, generate_corpus
    from deblur.data import DataConfig, synthesize_dataset
    from deblur.local_s3 import local_object_store
    from deblur.model import DeblurNet, count_macs_per_pixel
    from deblur.train import load_train_config, run_training

    echo(f"machine: {describe_machine()}")
    directory = Path(cache or tempfile.mkdtemp(prefix="deblur-bench-train-"))
    results: dict[str, Any] = {}
    with local_object_store(reuse=False):
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        try:
            raw = directory / "raw"
            if not raw.is_dir():
                generate_corpus(str(raw), videos=3, seed=1, config=CorpusConfig(width=320, height=192, seconds=2.0))
            data = str(directory / "data")
            synthesize_dataset(str(raw), data, config=DataConfig(eval_fraction=0.3, scale=1.0), cpus_per_task=1.0)
            for workers in (1, 2):
                log_every = max(1, steps // 3)
                config = load_train_config(
                    "cpu-small",
                    {
                        "steps": steps,
                        "num_workers": workers,
                        "cpus_per_worker": 2 / workers - 0.25,
                        "torch_threads": 2 // workers,
                        "log_every": log_every,
                        "checkpoint_every": steps,
                        "eval_every": steps,
                        "eval_clips": 1,
                    },
                )
                name = f"w{workers}-{time.time_ns()}"
                run = run_training(config, dataset=data, storage_path=str(directory / "runs"), name=name)
                samples_per_s = float(run.metrics["samples_per_s"])
                outputs = config.sequence_frames - 2 * config.m
                macs = count_macs_per_pixel(DeblurNet(variant=config.variant, m=config.m))
                gflops = samples_per_s * outputs * config.crop**2 * macs * 2 * 3 / 1e9
                results[workers] = {"samples_per_s": samples_per_s, "gflops": gflops}
                echo(
                    f"{workers} worker(s) x {2 // workers} thread(s), batch {config.batch_size} of "
                    f"{config.sequence_frames}x{config.crop}x{config.crop}: {samples_per_s:.2f} samples/s, "
                    f"{gflops:.1f} GFLOP/s (forward+backward, last {log_every} steps)"
                )
        finally:
            ray.shutdown()
    return results
