"""Training (paper Sec. 5.2, 5.3): the per-worker loop in plain PyTorch, run by Ray Train.

Per step: a batch of 13-frame sequences (128x128 crops, state starting at zero for each sequence),
the recurrent model unrolled over the whole sequence with gradients through every step, and the
loss of Eq. 4,

    L = sum_n 1/N ||L_n - S_n||^2  +  lambda ||W||^2          (lambda = 1e-5, N = pixels per frame)

where ||W||^2 sums the squares of every convolution weight (biases and beta are not decayed).
Adam at 1e-4, multiplied by 0.96 every 10k steps.

``run_training`` wraps the loop in a ``TorchTrainer`` (DDP: gloo on CPU, NCCL on GPU) fed by
the synthesis job's shards through Ray Data, with checkpoints (model, optimizer, schedule, step,
RNG) in object storage; the same run name resumes from its latest checkpoint, and worker
failures restart from there (``FailureConfig``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from deblur.model import DeblurNet, ModelConfig, build_model, zero_dead_weights

__all__ = [
    "PRESETS",
    "TrainConfig",
    "TrainingError",
    "choose_autocast",
    "compute_loss",
    "load_train_config",
    "run_training",
    "run_tuning",
    "train_loop_per_worker",
]

# Explicit registry of the shipped presets (flat YAML files inside the package).
PRESETS: dict[str, str] = {
    "paper": "paper.yaml",
    "cpu-small": "cpu-small.yaml",
    "cpu-real": "cpu-real.yaml",
    "tiny": "tiny.yaml",
}

_MODEL_KEYS = {f.name for f in fields(ModelConfig)}


class TrainingError(RuntimeError):
    """Training cannot go on (bad data, a non-finite loss); the message says where."""


class _DeterministicError(TrainingError):
    """A deterministic stop that every worker reaches at the same point (a non-finite loss or
    parameters, a checkpoint of another model): a restart would only repeat it, so the workers
    end the run themselves instead of failing and being retried (``train_loop_per_worker``)."""


@dataclass(frozen=True)
class TrainConfig:
    # model (ModelConfig)
    variant: str = "strcnn_dtb"
    m: int = 1
    width: int = 64
    feature_channels: int = 32
    num_blocks: int = 4
    residual: bool = True
    # optimisation (Sec. 5.3)
    steps: int = 300_000
    batch_size: int = 8  # per step, summed over all workers
    sequence_frames: int = 13
    crop: int = 128
    samples_per_window: int = 4  # random crops drawn from each stored window per pass over the data
    noise_sigma: float = 0.0  # up to this sigma (8-bit levels) of Gaussian noise on a sample's blurry frames
    lr: float = 1e-4
    lr_decay: float = 0.96
    lr_decay_every: int = 10_000
    weight_decay: float = 1e-5  # lambda of Eq. 4
    grad_clip: float = 0.0  # 0: off (the paper does not clip)
    amp: bool = True  # mixed precision where it pays: GPUs, and CPUs with AMX (choose_autocast)
    seed: int = 0
    # Weights a new run starts from (fine-tuning): a checkpoint path or URI, "bundled" for the
    # package's model, "" for a random initialisation. A resumed run takes its own checkpoint.
    init: str = ""
    # bookkeeping
    log_every: int = 100
    checkpoint_every: int = 5_000
    eval_every: int = 5_000
    eval_clips: int = 4  # evaluation clips scored at each validation (0: all)
    keep_checkpoints: int = 3
    # cluster
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    torch_threads: int = 0  # 0: one per reserved CPU
    max_failures: int = 3

    def __post_init__(self) -> None:
        for f in fields(self):
            object.__setattr__(self, f.name, _checked_setting(f.name, getattr(self, f.name), str(f.type)))
        for name, low in _AT_LEAST.items():
            if getattr(self, name) < low:
                raise ValueError(f"training setting {name} must be at least {low}, got {getattr(self, name)}")
        for name in ("lr", "cpus_per_worker"):
            if getattr(self, name) <= 0:
                raise ValueError(f"training setting {name} must be positive, got {getattr(self, name)}")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"training setting lr_decay must be in (0, 1], got {self.lr_decay}")
        if self.batch_size % self.num_workers:
            raise ValueError(f"batch_size {self.batch_size} must divide evenly over {self.num_workers} workers")
        if self.sequence_frames < 2 * self.m + 1:
            raise ValueError(f"sequence_frames {self.sequence_frames} is shorter than one window (2m+1)")
        ModelConfig(**self.model_dict())  # validates variant, m, widths

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def model_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k in _MODEL_KEYS}

    @property
    def per_worker_batch(self) -> int:
        return self.batch_size // self.num_workers


# Lower bounds of the numeric settings (lr, lr_decay and cpus_per_worker are checked on their own).
_AT_LEAST: dict[str, float] = {
    "m": 0,
    "steps": 1,
    "batch_size": 1,
    "sequence_frames": 1,
    "crop": 1,
    "samples_per_window": 1,
    "noise_sigma": 0,
    "lr_decay_every": 1,
    "weight_decay": 0,
    "grad_clip": 0,
    "seed": 0,
    "log_every": 1,
    "checkpoint_every": 1,
    "eval_every": 1,
    "eval_clips": 0,
    "keep_checkpoints": 1,
    "num_workers": 1,
    "torch_threads": 0,
    "max_failures": -1,  # Ray Train: -1 retries forever
}


def _checked_setting(name: str, value: Any, kind: str) -> Any:
    """``value`` as a setting of type ``kind`` (the field's annotation), or a ValueError naming ``name``."""
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        if isinstance(value, str):
            # YAML 1.1 (PyYAML) reads "1e-4" as a string: accept any number Python reads as one.
            with contextlib.suppress(ValueError):
                value = float(value)
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ValueError(f"training setting {name}={value!r}: expected {'a number' if kind == 'float' else kind}")
    return value


def load_train_config(preset: str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A shipped preset by name (``paper``, ``cpu-small``, ``tiny``) or a YAML file, plus overrides."""
    from deblur.config import load_preset

    values: dict[str, Any] = {}
    if preset is not None:
        if preset in PRESETS:
            path = Path(str(resources.files("deblur") / "presets" / PRESETS[preset]))
        elif Path(preset).is_file():
            path = Path(preset)
        else:
            raise ValueError(f"unknown preset {preset!r}: use one of {sorted(PRESETS)} or a YAML file")
        values = load_preset(path)
    return TrainConfig.from_dict({**values, **(overrides or {})})


# ---------------------------------------------------------------------------------------------
# The loss and one step (plain PyTorch)
# ---------------------------------------------------------------------------------------------


def weight_norm(model: nn.Module) -> Tensor:
    """||W||^2 of Eq. 4: every convolution weight; biases and the blending beta are not decayed."""
    squares = [p.pow(2).sum() for name, p in model.named_parameters() if p.ndim > 1 and name.endswith("weight")]
    return torch.stack(squares).sum()


def compute_loss(model: nn.Module, blurry: Tensor, sharp: Tensor, *, weight_decay: float) -> tuple[Tensor, Tensor]:
    """Eq. 4 over a batch of sequences: (loss, mse).

        E = sum_n 1/N_mse ||S_n - L_n||^2 + lambda ||W||^2

    taken literally: the squared error of each output frame (summed over its colour channels) per
    pixel, summed over the frames of the sequence, averaged over the batch. The scale matters:
    against a plain mean over frames and channels the data term would be 3 (F - 2m) times smaller
    and lambda = 1e-5 would dominate the loss at initialisation (||W||^2 is a few hundred), so the
    network would first learn to shrink its weights. ``mse`` is the plain per-value mean, for PSNR.

    blurry, sharp: (B, F, 3, H, W) in [0, 1]. The model deblurs frames m..F-1-m (those with a whole
    window inside the sequence), the state starting at zero.
    """
    core = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    m = core.m
    outputs = model(blurry)  # (B, F-2m, 3, H, W)
    squared = (outputs.float() - sharp[:, m : sharp.shape[1] - m].float()) ** 2
    b, _, _, h, w = squared.shape
    data = squared.sum() / (b * h * w)  # sum over frames and channels, mean over pixels and batch
    return data + weight_decay * weight_norm(core), squared.mean()


def to_model_input(frames: Tensor | np.ndarray, device: torch.device) -> Tensor:
    """(B, F, H, W, 3) uint8 -> (B, F, 3, H, W) float in [0, 1] on ``device``."""
    tensor = torch.as_tensor(frames).to(device, non_blocking=True)
    return tensor.permute(0, 1, 4, 2, 3).float().div_(255.0)


def psnr_of(mse: float) -> float:
    return 10.0 * math.log10(1.0 / mse) if mse > 0 else float("inf")


def parameters_finite(model: nn.Module) -> bool:
    return bool(torch.stack([torch.isfinite(p.detach()).all() for p in model.parameters()]).all())


def _all_workers_agree(flag: bool, device: torch.device) -> bool:
    """``flag`` on every worker of a DDP group (one tiny all-reduce), so that all stop at the same step."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item() > 0)


def replica_spread(model: nn.Module) -> float:
    """Largest difference of any parameter between the workers of a DDP group (0 when alone).

    DDP keeps the replicas identical (same start, averaged gradients); this measures it, with two
    all-reduces of the parameters at the steps that report."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return 0.0
    flat = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])
    high, low = flat.clone(), flat.clone()
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    return float((high - low).max())


def _batch_windows(batch: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(str(k) for k in batch.get("key", [])))


def optimize_step(
    ddp_model: nn.Module,
    model: DeblurNet,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: torch.amp.GradScaler,
    batch: dict[str, Any],
    *,
    config: TrainConfig,
    device: torch.device,
    amp: bool = False,
    amp_dtype: torch.dtype = torch.float16,
    where: str = "",
) -> tuple[float, float]:
    """One Adam step on a batch ``{"blurry", "sharp", "key"}`` of (B, F, H, W, 3) uint8: (loss, mse).

    A non-finite loss, or parameters that the step made non-finite, stop training with the step
    (``where``) and the windows of the batch (``key``) in the message. Under DDP every worker
    stops at that same step: the loss check is agreed on before the gradient all-reduce, and the
    parameters are identical on every worker.
    """
    blurry = to_model_input(batch["blurry"], device)
    sharp = to_model_input(batch["sharp"], device)
    model.train()
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
        loss, mse = compute_loss(ddp_model, blurry, sharp, weight_decay=config.weight_decay)
    where = where or "this step"
    finite = bool(torch.isfinite(loss))
    if not _all_workers_agree(finite, device):
        reason = f"loss is {loss.item()} at {where}" if not finite else f"another worker's loss is not finite ({where})"
        raise _DeterministicError(f"{reason} (batch windows {_batch_windows(batch)})")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if config.grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    # The L2 term shrinks weights that the data no longer moves towards zero until they are
    # subnormal, and x86 CPUs take a microcode assist for every product with one: fp32 steps of
    # the bundled model's weights as saved took 32 s against 2.0 s with them zeroed (batch 4 of
    # 13x64x64, 2 threads); torch.set_flush_denormal does not reach oneDNN's kernels (270 ms
    # against 290 ms for one 3x3 conv's forward+backward; 6 ms zeroed). Such a weight changes no
    # output, so it is set to zero, as inference does; every DDP worker does the same.
    zero_dead_weights(model)
    if not parameters_finite(model):
        raise _DeterministicError(
            f"parameters are not finite after {where} (batch windows {_batch_windows(batch)}, loss {loss.item()})"
        )
    return loss.item(), mse.item()


def choose_autocast(amp: bool, device: torch.device) -> torch.dtype | None:
    """The dtype training autocasts to, or None for plain fp32.

    GPUs: bf16 where supported, else fp16 (with loss scaling). CPUs: bf16 only with AMX tiles,
    where a step ran 2.4x faster than fp32 (``hardware.cpu_has_amx_bf16``); elsewhere bf16 is
    slower than fp32 on a CPU. Weights, optimiser state and the loss stay fp32 either way.
    """
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        from deblur.hardware import cpu_has_amx_bf16

        return torch.bfloat16 if cpu_has_amx_bf16() else None
    return None


def make_optimizer(model: nn.Module, config: TrainConfig) -> tuple[torch.optim.Optimizer, Any]:
    """Adam and the step decay of Sec. 5.3 (x0.96 every 10k steps by default)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_decay_every, gamma=config.lr_decay)
    return optimizer, scheduler


# ---------------------------------------------------------------------------------------------
# Training state: what a checkpoint holds
# ---------------------------------------------------------------------------------------------


def save_training_state(
    directory: Path,
    *,
    model: DeblurNet,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    step: int,
    config: TrainConfig,
    provenance: dict[str, Any],
) -> None:
    """``model.safetensors`` (a normal deblur checkpoint) + ``train_state.pt`` (tensors only).

    Parameters that are not finite are refused: such a checkpoint would poison every resume.
    """
    from deblur.checkpoint import save_checkpoint

    if not parameters_finite(model):
        raise TrainingError(f"step {step}: the model's parameters are not finite; no checkpoint written")
    directory.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, directory / "model.safetensors", provenance={**provenance, "step": step})
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "config": json.dumps(config.to_dict()),
    }
    tmp = directory / ".train_state.pt.partial"
    torch.save(state, tmp)
    os.replace(tmp, directory / "train_state.pt")


def load_training_state(
    directory: Path,
    *,
    model: DeblurNet,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    name: str | None = None,
) -> int:
    """Restore a checkpoint written by ``save_training_state``; returns its step.

    ``name``: how errors call the checkpoint (e.g. its URI; default: ``directory``).
    """
    from deblur.checkpoint import load_checkpoint

    loaded = load_checkpoint(directory / "model.safetensors")
    if loaded.config != model.config:
        have, want = loaded.config, model.config
        raise _DeterministicError(
            f"{name or directory}: checkpoint is {have.variant} m={have.m} width={have.width}, "
            f"the run trains {want.variant} m={want.m} width={want.width}"
        )
    model.load_state_dict(loaded.model.state_dict())
    # weights_only: the state holds tensors, numbers and strings, so loading never runs code.
    state = torch.load(directory / "train_state.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


def initialise_from(model: DeblurNet, source: str) -> None:
    """Load the weights of checkpoint ``source`` ("bundled": the package's model) into ``model``."""
    from deblur.checkpoint import CheckpointError, load_checkpoint

    try:
        loaded = load_checkpoint(None if source == "bundled" else source)
    except CheckpointError as error:
        raise _DeterministicError(f"init={source}: {error}") from error
    if loaded.config != model.config:
        have, want = loaded.config, model.config
        raise _DeterministicError(
            f"init={source}: checkpoint is {have.variant} m={have.m} width={have.width}, "
            f"the run trains {want.variant} m={want.m} width={want.width}"
        )
    model.load_state_dict(loaded.model.state_dict())


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


def _validate(model: DeblurNet, dataset: str, config: TrainConfig, device: torch.device) -> dict[str, float]:
    from deblur.evaluate import evaluate_model

    report = evaluate_model(model, dataset, device=device, limit=config.eval_clips or None)
    return {"val_psnr": float(report.overall["psnr"]), "val_input_psnr": float(report.overall["input_psnr"])}


def _gathered_stop(error: _DeterministicError) -> str:
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


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any] | None:
    """Ray Train entry point: ``loop_config`` = {"train": TrainConfig dict, "dataset": prefix, ...}.

    Returns ``{"error": message}`` (rank 0's return value reaches the driver) when training
    stops for a reason a restart would repeat (``_DeterministicError``); anything else raises,
    and Ray Train restarts the workers from the latest checkpoint up to ``max_failures`` times.
    """
    import ray.train
    import ray.train.torch

    from deblur import storage

    config = TrainConfig.from_dict(loop_config["train"])
    context = ray.train.get_context()
    rank = context.get_world_rank()
    torch.set_num_threads(worker_threads(config))
    from deblur.engine import keep_freed_memory

    keep_freed_memory()  # every step allocates and frees the same activations (see its docstring)
    # Data randomness (windows, crops, flips) lives in Ray Data's sampler; this seeds initialisation.
    torch.manual_seed(config.seed + rank)

    model = build_model(ModelConfig(**config.model_dict()))
    optimizer, scheduler = make_optimizer(model, config)
    step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            try:
                step = load_training_state(
                    Path(directory),
                    model=model,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    name=storage.to_uri(checkpoint.path, loop_config.get("storage_path", "")),
                )
            except _DeterministicError as error:
                # Every worker loads the same checkpoint and stops here, before any collective.
                return {"error": str(error)}
    if checkpoint is None and config.init:
        try:
            initialise_from(model, config.init)
        except _DeterministicError as error:
            return {"error": str(error)}
    start_step = step
    device = ray.train.torch.get_device()
    model = model.to(device).to(memory_format=torch.channels_last)
    ddp_model = ray.train.torch.prepare_model(model, move_to_device=False) if context.get_world_size() > 1 else model
    autocast_dtype = choose_autocast(config.amp, device)
    amp, amp_dtype = autocast_dtype is not None, autocast_dtype or torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype == torch.float16)

    writer = None
    log_dir = Path(tempfile.mkdtemp(prefix="deblur-tb-"))
    if rank == 0:
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(str(log_dir))
    provenance = {"purpose": "training", "dataset": loop_config["dataset"], "run": loop_config.get("run")}

    if step >= config.steps:
        # Resumed a finished run: say so (every worker, so their report counts stay equal).
        ray.train.report({"step": step, "start_step": start_step})
        return None
    batches = _batches(ray.train.get_dataset_shard("train"), config.per_worker_batch)
    window_loss, window_mse, window_count, started = 0.0, 0.0, 0, time.perf_counter()
    waited = 0.0  # seconds of the window spent waiting for data: says whether a run is input-bound
    # Totals from the first log step on (start-up excluded): the window figures above swing with
    # whether a window holds one of the data reader's restarts at each pass over the data.
    since_first_log: dict[str, float] | None = None
    while step < config.steps:
        asked = time.perf_counter()
        batch = next(batches)
        waited += time.perf_counter() - asked
        try:
            loss, mse = optimize_step(
                ddp_model,
                model,
                optimizer,
                scheduler,
                scaler,
                batch,
                config=config,
                device=device,
                amp_dtype=amp_dtype,
                amp=amp,
                where=f"step {step + 1} on worker {rank}",
            )
        except _DeterministicError as error:
            # Every worker stops at this step (optimize_step agrees on it); nothing is reported
            # or saved, so the latest checkpoint stays the last good state.
            if writer is not None:
                writer.close()
            return {"error": f"{_gathered_stop(error)}; the latest checkpoint is left as it was"}
        step += 1
        window_loss += loss
        window_mse += mse
        window_count += 1

        log_now = step % config.log_every == 0 or step == config.steps
        save_now = step % config.checkpoint_every == 0 or step == config.steps
        eval_now = step % config.eval_every == 0 or step == config.steps
        if not (log_now or save_now or eval_now):
            continue
        elapsed = time.perf_counter() - started
        metrics: dict[str, Any] = {
            "step": step,
            "start_step": start_step,  # > 0 after a resume: the step this worker group restarted from
            "loss": window_loss / max(1, window_count),
            "train_psnr": psnr_of(window_mse / max(1, window_count)),
            "lr": scheduler.get_last_lr()[0],
            "samples_per_s": window_count * config.batch_size / max(elapsed, 1e-9),
            "data_wait": waited / max(elapsed, 1e-9),  # fraction of the time spent waiting for batches
            "replica_spread": replica_spread(model),  # every worker calls it: it is collective
        }
        if since_first_log is None:
            since_first_log = {"samples": 0.0, "seconds": 0.0, "waited": 0.0}
        else:
            since_first_log["samples"] += window_count * config.batch_size
            since_first_log["seconds"] += elapsed
            since_first_log["waited"] += waited
            metrics["mean_samples_per_s"] = since_first_log["samples"] / max(since_first_log["seconds"], 1e-9)
            metrics["mean_data_wait"] = since_first_log["waited"] / max(since_first_log["seconds"], 1e-9)
        window_loss, window_mse, window_count, started, waited = 0.0, 0.0, 0, time.perf_counter(), 0.0
        if eval_now and rank == 0:
            model.eval()
            metrics.update(_validate(model, loop_config["dataset"], config, device))
        if writer is not None:
            for key, value in metrics.items():
                if key != "step":
                    writer.add_scalar(key, value, step)
            writer.flush()
            # One line per log step in the job's output (Ray forwards worker stdout to the driver).
            shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k not in ("step", "start_step"))
            print(f"[train] step {step}/{config.steps} {shown}", flush=True)
        if save_now:
            with tempfile.TemporaryDirectory(prefix="deblur-ckpt-") as directory:
                if rank == 0:
                    save_training_state(
                        Path(directory),
                        model=model,
                        optimizer=optimizer,
                        scheduler=scheduler,
                        step=step,
                        config=config,
                        provenance=provenance,
                    )
                    _copy_tensorboard(log_dir, Path(directory) / "tensorboard")
                    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))
                else:
                    ray.train.report(metrics)
        else:
            ray.train.report(metrics)
    if writer is not None:
        writer.close()
    return None


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
    from deblur.data import count_training_windows, read_training_dataset

    dataset, storage_path = storage.absolute(dataset), storage.absolute(storage_path)
    connect_ray()
    train_data = read_training_dataset(
        dataset,
        frames=config.sequence_frames,
        crop=config.crop,
        seed=config.seed,
        samples_per_window=config.samples_per_window,
        noise_sigma=config.noise_sigma,
    )
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
        datasets={"train": train_data},
        dataset_config=_ingest_config(config, count_training_windows(dataset)),
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


# ---------------------------------------------------------------------------------------------
# Ray Tune: each trial is a Ray Train run
# ---------------------------------------------------------------------------------------------

# The paper's Table 1 grid (variant x number of input frames) plus the optimiser's two knobs, the
# learning rate (the paper's 1e-4 and the faster cpu-small one) and lambda of Eq. 4 (the paper's
# 1e-5 and ten times that): 36 trials, most of them stopped early by ASHA.
TABLE1_SPACE: dict[str, list[Any]] = {
    "variant": ["cnn", "strcnn", "strcnn_dtb"],
    "m": [1, 2, 3],
    "lr": [1e-4, 5e-4],
    "weight_decay": [1e-5, 1e-4],
}


def _validation_reports_to_tune() -> Any:
    """A ``TuneReportCallback`` that passes on only the reports that carry a validation PSNR.

    Workers report at every log step, but only evaluation steps carry ``val_psnr``, the metric
    Tune's scheduler ranks trials by; Tune rejects a result without it. Filtering here keeps the
    Train side unchanged (every worker reports equally often) and lets ASHA compare trials only
    on fresh validations.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    class ValidationReports(TuneReportCallback):
        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            if metrics and "val_psnr" in metrics[0]:
                TuneReportCallback.after_report(self, run_context, metrics, checkpoint)

    return ValidationReports()


def _tune_trial(trial: dict[str, Any]) -> None:
    """One Tune trial: drives a Ray Train run whose reports are passed on to Tune."""
    import ray.tune

    config = TrainConfig.from_dict({**trial["base"], **trial["params"]})
    name = f"{trial['name']}-{ray.tune.get_context().get_trial_id()}"
    run_training(
        config,
        dataset=trial["dataset"],
        storage_path=trial["storage_path"],
        name=name,
        callbacks=[_validation_reports_to_tune()],
    )


@dataclass(frozen=True)
class TuningResult:
    rows: list[dict[str, Any]]  # one per trial, best first
    table: str  # Markdown

    @property
    def best(self) -> dict[str, Any]:
        return self.rows[0]


def run_tuning(
    base: TrainConfig,
    *,
    dataset: str,
    storage_path: str,
    name: str,
    space: dict[str, list[Any]] | None = None,
    max_concurrent: int = 1,
    grace_steps: int | None = None,
    trial_cpus: float = 0.1,
) -> TuningResult:
    """Grid-search ``space`` (default: Table 1's variants x m) with early stopping of poor trials.

    Every trial trains ``base`` with its overrides as its own Ray Train run (DDP, checkpoints,
    resume all as in ``run_training``). ASHA stops trials whose validation PSNR falls behind at
    ``grace_steps``, 2x, 4x, ... (default: the first validation). The Tune driver of each trial
    needs almost no CPU (``trial_cpus``): the work happens in its Train workers.
    """
    space = space or TABLE1_SPACE
    unknown = sorted(set(space) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise ValueError(f"unknown training setting(s) in the search space: {unknown}")
    # Every value checked (and typed) here, so a bad one fails before any trial starts.
    space = {
        key: [getattr(TrainConfig.from_dict({**base.to_dict(), key: value}), key) for value in values]
        for key, values in space.items()
    }
    import ray.tune
    from ray.tune.schedulers import ASHAScheduler

    from deblur import storage
    from deblur.cluster import connect_ray

    dataset, storage_path = storage.absolute(dataset), storage.absolute(storage_path)
    connect_ray()
    filesystem, path = storage.filesystem_for(storage_path)
    grid = {key: ray.tune.grid_search(list(values)) for key, values in space.items()}
    scheduler = ASHAScheduler(
        time_attr="step",
        metric="val_psnr",
        mode="max",
        max_t=base.steps,
        grace_period=grace_steps or base.eval_every,
        reduction_factor=2,
    )
    tuner = ray.tune.Tuner(
        ray.tune.with_resources(_tune_trial, {"CPU": trial_cpus}),
        param_space={
            "base": base.to_dict(),
            "params": grid,
            "dataset": dataset,
            "storage_path": storage_path,
            "name": name,
        },
        tune_config=ray.tune.TuneConfig(scheduler=scheduler, max_concurrent_trials=max_concurrent),
        run_config=ray.tune.RunConfig(name=name, storage_path=path, storage_filesystem=filesystem),
    )
    grid_result = tuner.fit()
    rows = []
    for result in grid_result:
        metrics = result.metrics or {}
        rows.append(
            {
                **result.config["params"],
                "step": metrics.get("step"),
                "val_psnr": metrics.get("val_psnr"),
                "val_input_psnr": metrics.get("val_input_psnr"),
                "stopped_early": (metrics.get("step") or 0) < base.steps,
                "error": None if result.error is None else str(result.error).splitlines()[0],
            }
        )
    rows.sort(key=lambda r: -(r["val_psnr"] if r["val_psnr"] is not None else float("-inf")))
    return TuningResult(rows=rows, table=format_tuning_table(rows, list(space)))


def format_tuning_table(rows: list[dict[str, Any]], keys: list[str]) -> str:
    header = [*keys, "steps", "val PSNR", "input PSNR", "note"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for row in rows:
        psnr = "-" if row["val_psnr"] is None else f"{row['val_psnr']:.2f}"
        base = "-" if row["val_input_psnr"] is None else f"{row['val_input_psnr']:.2f}"
        note = row["error"] or ("stopped early" if row["stopped_early"] else "")
        cells = [str(row[k]) for k in keys] + [str(row["step"]), psnr, base, note]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
