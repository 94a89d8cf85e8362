"""``deblur bench serve``: K concurrent live streams, total frames/s against offline deblurring.

Each stream goes over the session WebSocket (``DeblurClient.stream``), as a live client sends it;
offline is the same frames through the online engine in this process, start to finish, as
``deblur video`` runs them. The gaps between a stream's outputs (p50/p99) are set against the
bare model step, so the difference is what serving adds.
"""

from __future__ import annotations

import itertools
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deblur.bench.inputs import bench_model_path
from deblur.bench.roofline import describe_machine

__all__ = ["run_serve_benchmark"]

REPLICA_CPUS = 0.25  # the ingress replica's reservation (build_app's deployment)


def run_serve_benchmark(
    *,
    sessions: tuple[int, ...] = (1, 2, 4),
    frames: int = 90,
    width: int = 320,
    height: int = 240,
    cache: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """K concurrent live streams over WebSockets on loopback: total frames/s against offline
    deblurring (the engine in this process, every thread, the same frames start to finish, auto's
    start-up check included as in ``deblur video``), and the gaps between a stream's outputs.

    One session alone runs as the endpoint can run it alone: an actor with every CPU the ingress
    replica leaves, one thread per core. For K > 1 every session actor reserves an equal share
    of what the largest K needs, one thread each, so all K start at once. The first gaps of each
    stream (auto's start-up check) are not counted; with fewer than 100 samples p99 is the max,
    and is reported as such.
    """
    import numpy as np
    import ray
    from ray import serve

    from deblur.local_s3 import find_free_port
    from deblur.serving import build_app

    echo(f"machine: {describe_machine()}")
    directory = Path(cache or tempfile.mkdtemp(prefix="deblur-bench-serve-"))
    directory.mkdir(parents=True, exist_ok=True)
    checkpoint = bench_model_path(directory)
    rng = np.random.default_rng(0)
    clip = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(frames)]
    cpus = os.cpu_count() or 1
    if frames < 3 or not sessions or min(sessions) < 1 or cpus <= REPLICA_CPUS:
        raise ValueError(f"need frames >= 3, sessions >= 1 and more than {REPLICA_CPUS} CPU; got {frames}, {sessions}")
    bare, _ = _offline(checkpoint, clip, threads=1)
    _, offline = _offline(checkpoint, clip, threads=cpus)
    echo(f"bare engine step at {width}x{height}, precision auto, 1 thread: median {bare * 1000:.1f} ms")
    echo(
        f"offline ({frames} frames through the engine in this process, precision auto, {cpus} threads, "
        f"start to finish): {offline:.2f} frames/s"
    )
    results: dict[str, Any] = {"bare_ms": bare * 1000, "offline_fps": offline}
    free = cpus - REPLICA_CPUS
    shared = round(min(1.0, free / max(sessions)), 4)
    ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    try:
        port = find_free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for k in sessions:
            alone = k == 1
            settings = {
                "checkpoint": checkpoint,
                "device": "cpu",
                "session_cpus": free if alone else shared,
                "session_threads": cpus if alone else 1,
            }
            serve.run(build_app(settings), name=f"bench{k}", route_prefix=f"/bench{k}")
            echo(
                f"{k} session(s): each actor {settings['session_cpus']:g} CPU, {settings['session_threads']} thread(s)"
            )
            results[k] = _concurrent_sessions(f"http://127.0.0.1:{port}/bench{k}", clip, k, bare=bare, echo=echo)
            results[k].update(session_cpus=settings["session_cpus"], session_threads=settings["session_threads"])
            serve.delete(f"bench{k}")
        serve.shutdown()
    finally:
        ray.shutdown()
    one = results[sessions[0]]["frames_per_s"] if sessions[0] == 1 else None
    for k in sessions:
        versus = f", {results[k]['frames_per_s'] / one:.2f}x one stream" if one and k > 1 else ""
        echo(f"summary: {k} stream(s) {results[k]['frames_per_s'] / offline:.0%} of offline{versus}")
    echo("goals: one stream alone >= 90% of offline; two streams together >= 1.6x one")
    return results


def _offline(checkpoint: str, clip: list[Any], *, threads: int) -> tuple[float, float]:
    """The online engine in this process with ``threads`` threads (1: as a session actor): the
    median step past auto's start-up check, and frames/s over the whole clip, finish included."""
    import numpy as np
    import torch

    from deblur.checkpoint import load_model
    from deblur.engine import STARTUP_CHECK_FRAMES, OnlineDeblurrer

    torch.set_num_threads(threads)
    # In the precision the sessions run (the endpoint's default, auto), past auto's start-up check.
    engine = OnlineDeblurrer(load_model(checkpoint), device="cpu", precision="auto")
    times = []
    began = time.perf_counter()
    for frame in clip:
        started = time.perf_counter()
        engine.push(frame)
        times.append(time.perf_counter() - started)
    engine.finish()
    return float(np.median(times[STARTUP_CHECK_FRAMES + 1 :])), len(clip) / (time.perf_counter() - began)


def _concurrent_sessions(
    url: str, clip: list[Any], k: int, *, bare: float, echo: Callable[[str], None]
) -> dict[str, Any]:
    """``k`` streams at once, each sending ``clip``: gaps between outputs and total frames/s."""
    from deblur.client import DeblurClient  # imported before the clock starts

    latencies: list[float] = []
    spans: list[tuple[float, float]] = []  # each session's first push to its close
    errors: list[BaseException] = []
    lock = threading.Lock()
    args = (DeblurClient, url, clip, latencies, spans, errors, lock)
    threads = [threading.Thread(target=_one_session, args=args) for _ in range(k)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"serve benchmark, {k} session(s): {len(errors)} failed: {errors[0]}")
    # Streaming throughput: from the first frame pushed to the last frame back, sessions started.
    elapsed = max(end for _, end in spans) - min(start for start, _ in spans)
    samples = len(latencies)
    p50, p99 = _percentile(latencies, 0.5), _percentile(latencies, 0.99)
    # Below 100 samples the 99th percentile is the largest one: say so.
    p99_label = "p99" if samples >= 100 else f"p99 (= max of {samples} samples)"
    frames = len(clip)
    echo(
        f"{k} concurrent stream(s): gap between outputs over {samples} frames p50 {p50 * 1000:.1f} ms, "
        f"{p99_label} {p99 * 1000:.1f} ms; over the bare step at p50 {(p50 - bare) * 1000:+.1f} ms; "
        f"{k * frames / elapsed:.2f} frames/s in total (first frame sent to last frame back, session start excluded)"
    )
    return {
        "p50_ms": p50 * 1000,
        "p99_ms": p99 * 1000,
        "samples": samples,
        "p99_is_max": samples < 100,
        "frames_per_s": k * frames / elapsed,
    }


def _one_session(
    client_type: Any,
    url: str,
    clip: list[Any],
    latencies: list[float],
    spans: list[tuple[float, float]],
    errors: list[BaseException],
    lock: threading.Lock,
) -> None:
    """One stream through ``client_type`` (``DeblurClient``): the gaps between its outputs, or its error."""
    from deblur.engine import STARTUP_CHECK_FRAMES

    began = time.perf_counter()

    def timed() -> Any:  # the clip, noting when the first frame goes out (the session is open by then)
        nonlocal began
        began = time.perf_counter()
        yield from clip

    try:
        with client_type(url) as client:
            arrivals = [time.perf_counter() for _ in client.stream(timed(), fmt="raw")]
            ended = time.perf_counter()
        if len(arrivals) != len(clip):
            raise RuntimeError(f"a stream of {len(clip)} frames returned {len(arrivals)}")
        mine = [b - a for a, b in itertools.pairwise(arrivals)]
    except BaseException as error:  # reported by the caller: a failed session is no measurement
        with lock:
            errors.append(error)
        return
    with lock:
        latencies.extend(mine[STARTUP_CHECK_FRAMES + 1 :])  # the first frames run auto's check
        spans.append((began, ended))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
