"""Training on Ray: the loop of every Ray Train worker and ``run_training``.

``run_training`` wraps the loop in a ``TorchTrainer`` (DDP: gloo on CPU, NCCL on GPU) fed by
the synthesis job's shards through Ray Data (``deblur.data.reader``), with checkpoints (model,
optimizer, schedule, step, RNG) in object storage; the same run name resumes from its latest
checkpoint, and worker failures restart from there (``FailureConfig``). ``deblur.train.tune``
runs grids of such runs with Ray Tune. The step itself, and everything
testable without a cluster, is in ``deblur.train.step``.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deblur.model import DeblurNet, ModelConfig, build_model
from deblur.train.step import (
    DeterministicError,
    TrainConfig,
    TrainingError,
    choose_autocast,
    initialise_from,
    load_training_state,
    make_optimizer,
    optimize_step,
    psnr_of,
    replica_spread,
    save_training_state,
)

__all__ = [
    "TrainingRun",
    "run_training",
    "train_loop_per_worker",
    "worker_threads",
]


# ---------------------------------------------------------------------------------------------
# The loop run by every Ray Train worker
# ---------------------------------------------------------------------------------------------


def _batches(shard: Any, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Endless batches from a worker's dataset shard (each pass draws new random crops)."""
    epoch = 0
    while True:
        produced = 0
        # The shuffle buffer mixes crops of different windows (each window gives several in a row).
        batches = shard.iter_batches(
            batch_size=batch_size, batch_format="numpy", drop_last=True, local_shuffle_buffer_size=8 * batch_size
        )
        for batch in batches:
            produced += 1
            yield batch
        if produced == 0:
            raise TrainingError(f"the training data gave no full batch of {batch_size} (epoch {epoch})")
        epoch += 1


def _worker_batches(worker: _Worker, step: int) -> Iterator[dict[str, np.ndarray]]:
    """Batches read by this worker itself (``reader: worker``); a resumed run draws new samples."""
    import ray.train

    from deblur.data.reader import worker_batches

    config = worker.config
    return worker_batches(
        worker.dataset,
        batch_size=config.per_worker_batch,
        rank=worker.rank,
        world_size=ray.train.get_context().get_world_size(),
        seed=[config.seed, worker.rank, step],
        frames=config.sequence_frames,
        crop=config.crop,
        flips=True,
        samples=config.samples_per_window,
        noise_sigma=config.noise_sigma,
        sharp_fraction=config.sharp_fraction,
    )


def _validate(model: DeblurNet, dataset: str, config: TrainConfig, device: torch.device) -> dict[str, float]:
    from deblur.evaluate import evaluate_model

    report = evaluate_model(model, dataset, device=device, limit=config.eval_clips or None)
    return {"val_psnr": float(report.overall["psnr"]), "val_input_psnr": float(report.overall["input_psnr"])}


def _gathered_stop(error: DeterministicError) -> str:
    """Every worker's account of a stop, one line (all workers call this at the same point)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return str(error)
    messages: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(messages, str(error))
    own = [m for m in messages if m and not m.startswith("another worker")]
    return "; ".join(dict.fromkeys(own)) or str(error)


def worker_threads(config: TrainConfig) -> int:
    """Torch threads of one Train worker: ``torch_threads``, else one per whole CPU it holds."""
    return config.torch_threads or max(1, round(config.cpus_per_worker))


@dataclass
class _Worker:
    """What one Train worker holds through its loop."""

    config: TrainConfig
    rank: int
    model: DeblurNet
    ddp_model: nn.Module  # ``model`` itself when the run has one worker
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    device: torch.device
    amp: bool
    amp_dtype: torch.dtype
    dataset: str
    provenance: dict[str, Any]
    start_step: int  # > 0 after a resume: the step this worker group restarted from
    log_dir: Path
    writer: Any = None  # rank 0's TensorBoard writer


def _start_worker(config: TrainConfig, loop_config: dict[str, Any]) -> _Worker:
    """The model (restored from the run's checkpoint, or from ``config.init``) and its optimiser.

    Raises ``DeterministicError`` when the checkpoint or the initial weights cannot be used: every
    worker loads the same ones and stops here, before any collective.
    """
    import ray.train
    import ray.train.torch

    from deblur import storage
    from deblur.engine import keep_freed_memory

    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.set_num_threads(worker_threads(config))
    keep_freed_memory()  # every step allocates and frees the same activations (see its docstring)
    # Data randomness (windows, crops, flips) lives in the reader's sampler; this seeds initialisation.
    torch.manual_seed(config.seed + rank)

    model = build_model(ModelConfig(**config.model_dict()))
    optimizer, scheduler = make_optimizer(model, config)
    step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            name = storage.to_uri(checkpoint.path, loop_config.get("storage_path", ""))
            step = load_training_state(
                Path(directory), model=model, optimizer=optimizer, scheduler=scheduler, name=name
            )
    elif config.init:
        initialise_from(model, config.init)
    device = ray.train.torch.get_device()
    model = model.to(device).to(memory_format=torch.channels_last)
    ddp_model = ray.train.torch.prepare_model(model, move_to_device=False) if context.get_world_size() > 1 else model
    autocast_dtype = choose_autocast(config.amp, device)
    worker = _Worker(
        config=config,
        rank=rank,
        model=model,
        ddp_model=ddp_model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16),
        device=device,
        amp=autocast_dtype is not None,
        amp_dtype=autocast_dtype or torch.float16,
        dataset=loop_config["dataset"],
        provenance={"purpose": "training", "dataset": loop_config["dataset"], "run": loop_config.get("run")},
        start_step=step,
        log_dir=Path(tempfile.mkdtemp(prefix="deblur-tb-")),
    )
    if rank == 0:
        from tensorboardX import SummaryWriter

        worker.writer = SummaryWriter(str(worker.log_dir))
    return worker


class _Window:
    """Loss and speed over the steps since the last report, and totals from the first report on.

    The window figures swing with whether a window holds one of the data reader's restarts at
    each pass over the data; the totals leave start-up out (they begin at the first report).
    """

    def __init__(self) -> None:
        self.loss = self.mse = self.waited = 0.0  # waited: seconds spent waiting for data
        self.count = 0
        self.started = time.perf_counter()
        self.totals: dict[str, float] | None = None

    def add(self, loss: float, mse: float) -> None:
        self.loss += loss
        self.mse += mse
        self.count += 1

    def metrics(self, worker: _Worker, step: int) -> dict[str, Any]:
        """What a log step reports (every worker calls it: ``replica_spread`` is collective); then a new window."""
        elapsed = time.perf_counter() - self.started
        samples = self.count * worker.config.batch_size
        metrics: dict[str, Any] = {
            "step": step,
            "start_step": worker.start_step,
            "loss": self.loss / max(1, self.count),
            "train_psnr": psnr_of(self.mse / max(1, self.count)),
            "lr": worker.scheduler.get_last_lr()[0],
            "samples_per_s": samples / max(elapsed, 1e-9),
            "data_wait": self.waited / max(elapsed, 1e-9),  # fraction of the time spent waiting for batches
            "replica_spread": replica_spread(worker.model),
        }
        if self.totals is None:
            self.totals = {"samples": 0.0, "seconds": 0.0, "waited": 0.0}
        else:
            self.totals["samples"] += samples
            self.totals["seconds"] += elapsed
            self.totals["waited"] += self.waited
            metrics["mean_samples_per_s"] = self.totals["samples"] / max(self.totals["seconds"], 1e-9)
            metrics["mean_data_wait"] = self.totals["waited"] / max(self.totals["seconds"], 1e-9)
        self.loss = self.mse = self.waited = 0.0
        self.count = 0
        self.started = time.perf_counter()
        return metrics


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any] | None:
    """Ray Train entry point: ``loop_config`` = {"train": TrainConfig dict, "dataset": prefix, ...}.

    Returns ``{"error": message}`` (rank 0's return value reaches the driver) when training
    stops for a reason a restart would repeat (``DeterministicError``); anything else raises,
    and Ray Train restarts the workers from the latest checkpoint up to ``max_failures`` times.
    """
    import ray.train

    config = TrainConfig.from_dict(loop_config["train"])
    try:
        worker = _start_worker(config, loop_config)
    except DeterministicError as error:
        return {"error": str(error)}
    step = worker.start_step
    if step >= config.steps:
        # Resumed a finished run: say so (every worker, so their report counts stay equal).
        ray.train.report({"step": step, "start_step": step})
        return None
    batches = (
        _worker_batches(worker, step)
        if config.reader == "worker"
        else _batches(ray.train.get_dataset_shard("train"), config.per_worker_batch)
    )
    window = _Window()
    while step < config.steps:
        asked = time.perf_counter()
        batch = next(batches)
        window.waited += time.perf_counter() - asked
        try:
            loss, mse = optimize_step(
                worker.ddp_model,
                worker.model,
                worker.optimizer,
                worker.scheduler,
                worker.scaler,
                batch,
                config=config,
                device=worker.device,
                amp_dtype=worker.amp_dtype,
                amp=worker.amp,
                where=f"step {step + 1} on worker {worker.rank}",
            )
        except DeterministicError as error:
            # Every worker stops at this step (optimize_step agrees on it); nothing is reported
            # or saved, so the latest checkpoint stays the last good state.
            if worker.writer is not None:
                worker.writer.close()
            return {"error": f"{_gathered_stop(error)}; the latest checkpoint is left as it was"}
        step += 1
        window.add(loss, mse)
        log_now = step % config.log_every == 0 or step == config.steps
        save_now = step % config.checkpoint_every == 0 or step == config.steps
        eval_now = step % config.eval_every == 0 or step == config.steps
        if log_now or save_now or eval_now:
            _report(worker, window.metrics(worker, step), step, evaluate=eval_now, save=save_now)
    if worker.writer is not None:
        worker.writer.close()
    return None


def _report(worker: _Worker, metrics: dict[str, Any], step: int, *, evaluate: bool, save: bool) -> None:
    """Validation (rank 0), TensorBoard and the job's output (rank 0), the report and checkpoint (all)."""
    import ray.train

    if evaluate and worker.rank == 0:
        worker.model.eval()
        metrics.update(_validate(worker.model, worker.dataset, worker.config, worker.device))
    if worker.writer is not None:
        for key, value in metrics.items():
            if key != "step":
                worker.writer.add_scalar(key, value, step)
        worker.writer.flush()
        # One line per log step in the job's output (Ray forwards worker stdout to the driver).
        shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k not in ("step", "start_step"))
        print(f"[train] step {step}/{worker.config.steps} {shown}", flush=True)
    if not save:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="deblur-ckpt-") as directory:
        if worker.rank == 0:
            save_training_state(
                Path(directory),
                model=worker.model,
                optimizer=worker.optimizer,
                scheduler=worker.scheduler,
                step=step,
                config=worker.config,
                provenance=worker.provenance,
            )
            _copy_tensorboard(worker.log_dir, Path(directory) / "tensorboard")
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
        else:
            ray.train.report(metrics)


def _copy_tensorboard(source: Path, destination: Path) -> None:
    import shutil

    if source.is_dir():
        shutil.copytree(source, destination, dirs_exist_ok=True)


# ---------------------------------------------------------------------------------------------
# The driver side
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingRun:
    name: str
    checkpoint: str | None  # URI of the latest checkpoint directory
    model: str | None  # URI of the exported model.safetensors
    metrics: dict[str, Any]


def _ingest_config(config: TrainConfig, windows: int) -> Any:
    """Ray Train's data ingest with a cap on how far the reader runs ahead of training.

    Uncapped, Ray Data lets the reader fill a large share of the object store with crops that
    training consumes much later. But a cap that makes the reader wait for training costs a CPU
    core: then Ray Data 2.60's scheduling loop in the ``SplitCoordinator`` actor has no task to
    wait on and polls without pause. Measured here, for a 140 MB pass (55 windows x 8 crops of
    13x64x64) read at 0.6 s a batch: the coordinator took 0.57-0.59 of a core at a 64 MiB cap,
    0.04-0.31 at 168 MiB, 0.02-0.05 at 512 MiB. The cpu-small preset trained at 1.5 samples/s
    (20-step windows of 1.0-2.9) at 64 MiB, at 4.0-4.4 (4.3-5.4) at the cap below. So the cap is
    four passes (``windows`` stored windows times ``samples_per_window`` crops), since Ray Data
    gives each operator only part of it; at least 64 MiB, at most 1 GiB. The reader never holds
    more than one pass; a pass too large to fit streams, and pays the polling.
    """
    import ray.train

    options = ray.train.DataConfig.default_ingest_options()
    sample_bytes = 2 * config.sequence_frames * config.crop**2 * 3  # blurry + sharp, uint8
    one_pass = windows * config.samples_per_window * sample_bytes
    cap = min(max(64 << 20, 16 * config.batch_size * sample_bytes, 4 * one_pass), 1 << 30)
    options.resource_limits = options.resource_limits.copy(object_store_memory=float(cap))
    return ray.train.DataConfig(execution_options=options)


def run_training(
    config: TrainConfig,
    *,
    dataset: str,
    storage_path: str,
    name: str,
    export_to: str | None = None,
    callbacks: list[Any] | None = None,
) -> TrainingRun:
    """Train (or resume the run ``name`` under ``storage_path``) on the current Ray cluster.

    ``callbacks`` are Ray Train callbacks (e.g. Tune's ``TuneReportCallback`` inside a trial).
    Raises ``TrainingError`` with the workers' own message when the run fails: at once for a stop
    a restart would repeat (non-finite loss, a checkpoint of another model), else once Ray Train
    has used up ``max_failures`` restarts.
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchConfig, TorchTrainer

    from deblur import storage
    from deblur.cluster import connect_ray
    from deblur.data.reader import count_training_windows, read_training_dataset, training_shards

    dataset, storage_path = storage.absolute(dataset), storage.absolute(storage_path)
    connect_ray()
    data: dict[str, Any] = {}
    if config.reader == "ray_data":
        train_data = read_training_dataset(
            dataset,
            frames=config.sequence_frames,
            crop=config.crop,
            seed=config.seed,
            samples_per_window=config.samples_per_window,
            noise_sigma=config.noise_sigma,
            sharp_fraction=config.sharp_fraction,
        )
        data = {
            "datasets": {"train": train_data},
            "dataset_config": _ingest_config(config, count_training_windows(dataset)),
        }
    else:
        training_shards(dataset)  # a dataset without training shards fails here, not in every worker
    filesystem, path = storage.filesystem_for(storage_path)
    resources_per_worker = {"CPU": config.cpus_per_worker}
    if config.use_gpu:
        resources_per_worker["GPU"] = 1
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": config.to_dict(), "dataset": dataset, "run": name, "storage_path": storage_path},
        scaling_config=ScalingConfig(
            num_workers=config.num_workers, use_gpu=config.use_gpu, resources_per_worker=resources_per_worker
        ),
        torch_config=TorchConfig(backend="nccl" if config.use_gpu else "gloo"),
        run_config=RunConfig(
            name=name,
            storage_path=path,
            storage_filesystem=filesystem,
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=config.keep_checkpoints),
            callbacks=callbacks,
            # Ray sets OMP_NUM_THREADS to the whole CPUs a worker holds (1 for 1.75) before
            # torch starts; torch.set_num_threads raises it again, yet OpenMP started at 1
            # ran a training step 10-15% slower here than one started at the thread count.
            worker_runtime_env={"env_vars": {"OMP_NUM_THREADS": str(worker_threads(config))}},
        ),
        **data,
    )
    try:
        result = trainer.fit()
    except TrainingFailedError as error:
        raise TrainingError(f"run {name} failed: {_describe_failure(error)}") from None
    stop = result.return_value.get("error") if isinstance(result.return_value, dict) else None
    if stop:
        raise TrainingError(f"run {name} stopped: {stop}")
    checkpoint_uri = model_uri = None
    if result.checkpoint is not None:
        checkpoint_uri = storage.to_uri(result.checkpoint.path, storage_path)
        model_uri = storage.join_uri(checkpoint_uri, "model.safetensors")
        if export_to:
            storage.write_bytes(export_to, storage.read_bytes(model_uri))
            model_uri = export_to
    return TrainingRun(name=name, checkpoint=checkpoint_uri, model=model_uri, metrics=dict(result.metrics or {}))


def _describe_failure(error: Exception) -> str:
    """One line from a Ray Train failure: each failed worker's own error, not Ray's traceback."""
    failures = getattr(error, "worker_failures", None)
    if failures:
        parts = [f"worker {rank}: {_first_line(failure)}" for rank, failure in sorted(failures.items())]
        return "; ".join(dict.fromkeys(parts))
    cause = getattr(error, "controller_failure", None)
    return _first_line(cause if cause is not None else error)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return f"{type(error).__name__}: {line}" if line else type(error).__name__
