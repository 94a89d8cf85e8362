"""``deblur bench train``: Ray Train samples/s and GFLOP/s with 1 and 2 workers (and bf16 on AMX),
and the training step alone in one process, the figure the Ray run is read against."""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deblur.bench.roofline import describe_machine

__all__ = ["measure_training_step", "run_train_benchmark", "training_gflop_per_sample", "training_runs"]


def training_gflop_per_sample(config: Any) -> float:
    """Forward plus backward of one training sample, counted as 3x the forward multiply-adds x 2
    of every frame the sequence deblurs (``count_macs_per_pixel`` of ``config``'s network)."""
    from deblur.model import ModelConfig, build_model, count_macs_per_pixel

    macs = count_macs_per_pixel(build_model(ModelConfig(**config.model_dict())))
    return (config.sequence_frames - 2 * config.m) * config.crop**2 * macs * 2 * 3 / 1e9


def training_runs() -> list[tuple[int, str]]:
    """The (workers, precision) runs of ``run_train_benchmark`` on this machine.

    fp32 with 1 and 2 workers: the figures the fp32 roofline is the limit of. Where the CPU has
    AMX, also bf16 autocast (what training on it uses, ``choose_autocast``), reported on its own
    line: its FLOPs do not run on the fp32 units of the roofline.
    """
    import torch

    from deblur.train.step import choose_autocast

    runs = [(1, "fp32"), (2, "fp32")]
    if choose_autocast(True, torch.device("cpu")) is not None:
        runs.append((1, "bf16"))
    return runs


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

    from deblur.data.corpus import CorpusConfig, generate_corpus
    from deblur.data.dataset import DataConfig
    from deblur.data.synth_job import synthesize_dataset
    from deblur.local_s3 import local_object_store

    echo(f"machine: {describe_machine()}")
    directory = Path(cache or tempfile.mkdtemp(prefix="deblur-bench-train-"))
    results: dict[str, Any] = {}
    with local_object_store(reuse=False):
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        try:
            # Big enough that a pass over the data is many steps (11 windows x 8 crops: 22 steps
            # at batch 4), as in a real run: with 3 two-second videos a pass was 3 steps, and
            # restarting the reader every 3 steps made training wait for data 40% of the time.
            # Each restart still costs seconds (about 3 here), one in every 22 steps.
            raw = directory / "raw-8x4s"
            if not raw.is_dir():
                generate_corpus(str(raw), videos=8, seed=1, config=CorpusConfig(width=320, height=192, seconds=4.0))
            data = str(directory / "data-8x4s")
            data_config = DataConfig.from_dict({"eval_fraction": 0.3, "scale": 1.0})
            synthesize_dataset(str(raw), data, config=data_config, cpus_per_task=1.0)
            for workers, precision in training_runs():
                figures = _train_run(workers, precision, steps=steps, data=data, directory=directory, echo=echo)
                results[workers if precision == "fp32" else f"{workers}-{precision}"] = figures
        finally:
            ray.shutdown()
    return results


def _train_run(
    workers: int, precision: str, *, steps: int, data: str, directory: Path, echo: Callable[[str], None]
) -> dict[str, Any]:
    """One Ray Train run of ``steps`` steps: its samples/s, GFLOP/s and share of time waiting for data."""
    from deblur.train.driver import run_training
    from deblur.train.step import load_train_config

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
            "amp": precision == "bf16",
        },
    )
    name = f"w{workers}-{precision}-{time.time_ns()}"
    run = run_training(config, dataset=data, storage_path=str(directory / "runs"), name=name)
    samples_per_s = float(run.metrics["mean_samples_per_s"])
    data_wait = float(run.metrics["mean_data_wait"])
    gflops = samples_per_s * training_gflop_per_sample(config)
    echo(
        f"{workers} worker(s) x {2 // workers} thread(s), {precision}, batch {config.batch_size} of "
        f"{config.sequence_frames}x{config.crop}x{config.crop}: {samples_per_s:.2f} samples/s, "
        f"{gflops:.1f} GFLOP/s (forward+backward, steps {log_every + 1}-{steps}), "
        f"{data_wait:.0%} of the time waiting for data"
    )
    return {
        "workers": workers,
        "precision": precision,
        "samples_per_s": samples_per_s,
        "gflops": gflops,
        "data_wait": data_wait,
    }


def measure_training_step(config: Any, *, steps: int = 4) -> dict[str, float]:
    """fp32 training steps in this process, no Ray: samples/s and GFLOP/s at ``config``'s shape.

    The step a Ray Train worker runs (``optimize_step``: forward over the sequence, Eq. 4,
    backward, Adam, dead weights zeroed), on random uint8 sequences of ``config.batch_size`` x
    ``config.sequence_frames`` x ``config.crop``^2, with this process's torch threads and nothing
    beside it: no data reader, no Ray processes. Against the Ray Train figure, it says what the
    run around the step costs; against the conv ceiling, what the step's own element-wise work
    and optimizer cost. Median of ``steps`` steps after two warm-up steps; GFLOP/s counted as
    ``run_train_benchmark`` counts them (``training_gflop_per_sample``).
    """
    import numpy as np
    import torch

    from deblur.engine import keep_freed_memory
    from deblur.model import ModelConfig, build_model
    from deblur.train.step import make_optimizer, optimize_step

    if config.amp:
        raise ValueError("measure_training_step times fp32 steps: pass a config with amp=False")
    keep_freed_memory()  # as every Ray Train worker does before its first step
    torch.manual_seed(config.seed)
    model = build_model(ModelConfig(**config.model_dict())).to(memory_format=torch.channels_last)
    optimizer, scheduler = make_optimizer(model, config)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    rng = np.random.default_rng(config.seed)
    shape = (config.batch_size, config.sequence_frames, config.crop, config.crop, 3)
    batch = {key: rng.integers(0, 256, shape, dtype=np.uint8) for key in ("blurry", "sharp")}
    device = torch.device("cpu")
    times = []
    for index in range(2 + steps):
        started = time.perf_counter()
        optimize_step(model, model, optimizer, scheduler, scaler, batch, config=config, device=device)
        if index >= 2:
            times.append(time.perf_counter() - started)
    seconds = statistics.median(times)
    samples_per_s = config.batch_size / seconds
    return {
        "seconds": seconds,
        "samples_per_s": samples_per_s,
        "gflops": samples_per_s * training_gflop_per_sample(config),
    }
