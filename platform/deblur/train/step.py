"""Training (paper Sec. 5.2, 5.3), the part without Ray: settings, the loss, one step, checkpoints.

Per step: a batch of 13-frame sequences (128x128 crops, state starting at zero for each sequence),
the recurrent model unrolled over the whole sequence with gradients through every step, and the
loss of Eq. 4,

    L = sum_n 1/N ||L_n - S_n||^2  +  lambda ||W||^2          (lambda = 1e-5, N = pixels per frame)

where ||W||^2 sums the squares of every convolution weight (biases and beta are not decayed).
Adam at 1e-4, multiplied by 0.96 every 10k steps. ``deblur.train.driver`` runs these steps on
every Ray Train worker.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, StrictBool, StrictInt, StrictStr, model_validator
from torch import Tensor, nn

from deblur.model import DeblurNet, ModelConfig, zero_dead_weights
from deblur.settings import Number, Settings, load_preset

__all__ = [
    "PRESETS",
    "DeterministicError",
    "TrainConfig",
    "TrainingError",
    "choose_autocast",
    "compute_loss",
    "initialise_from",
    "load_train_config",
    "load_training_state",
    "make_optimizer",
    "optimize_step",
    "parameters_finite",
    "psnr_of",
    "replica_spread",
    "save_training_state",
    "to_model_input",
    "weight_norm",
]

# Explicit registry of the shipped presets (flat YAML files inside the package).
PRESETS: dict[str, str] = {
    "paper": "paper.yaml",
    "cpu-small": "cpu-small.yaml",
    "cpu-real": "cpu-real.yaml",
    "tiny": "tiny.yaml",
}


class TrainingError(RuntimeError):
    """Training cannot go on (bad data, a non-finite loss); the message says where."""


class DeterministicError(TrainingError):
    """A deterministic stop that every worker reaches at the same point (a non-finite loss or
    parameters, a checkpoint of another model): a restart would only repeat it, so the workers
    end the run themselves instead of failing and being retried (``train_loop_per_worker``)."""


class TrainConfig(Settings):
    label: ClassVar[str] = "training"

    # model (ModelConfig)
    variant: StrictStr = "strcnn_dtb"
    m: StrictInt = Field(1, ge=0)
    width: StrictInt = Field(64, ge=1)
    feature_channels: StrictInt = Field(32, ge=1)
    num_blocks: StrictInt = Field(4, ge=1)
    residual: StrictBool = True
    # optimisation (Sec. 5.3)
    steps: StrictInt = Field(300_000, ge=1)
    batch_size: StrictInt = Field(8, ge=1)  # per step, summed over all workers
    sequence_frames: StrictInt = Field(13, ge=1)
    crop: StrictInt = Field(128, ge=1)
    samples_per_window: StrictInt = Field(4, ge=1)  # random crops drawn from each stored window per pass over the data
    noise_sigma: Number = Field(0.0, ge=0)  # up to this sigma (8-bit levels) of noise on a sample's blurry frames
    sharp_fraction: Number = Field(0.0, ge=0, le=1)  # samples whose input is their own sharp frames
    # Where samples are read: "ray_data" (a Ray Dataset split across the workers) or "worker"
    # (each worker reads its share of the shards itself, in a thread: no Ray Data on the cores)
    reader: Literal["ray_data", "worker"] = "ray_data"
    lr: Number = Field(1e-4, gt=0)
    lr_decay: Number = Field(0.96, gt=0, le=1)
    lr_decay_every: StrictInt = Field(10_000, ge=1)
    weight_decay: Number = Field(1e-5, ge=0)  # lambda of Eq. 4
    grad_clip: Number = Field(0.0, ge=0)  # 0: off (the paper does not clip)
    amp: StrictBool = True  # mixed precision where it pays: GPUs, and CPUs with AMX (choose_autocast)
    seed: StrictInt = Field(0, ge=0)
    # Weights a new run starts from (fine-tuning): a checkpoint path or URI, "bundled" for the
    # package's model, "" for a random initialisation. A resumed run takes its own checkpoint.
    init: StrictStr = ""
    # bookkeeping
    log_every: StrictInt = Field(100, ge=1)
    checkpoint_every: StrictInt = Field(5_000, ge=1)
    eval_every: StrictInt = Field(5_000, ge=1)
    eval_clips: StrictInt = Field(4, ge=0)  # evaluation clips scored at each validation (0: all)
    keep_checkpoints: StrictInt = Field(3, ge=1)
    # cluster
    num_workers: StrictInt = Field(1, ge=1)
    use_gpu: StrictBool = False
    cpus_per_worker: Number = Field(1.0, gt=0)
    torch_threads: StrictInt = Field(0, ge=0)  # 0: one per reserved CPU
    max_failures: StrictInt = Field(3, ge=-1)  # Ray Train: -1 retries forever

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.batch_size % self.num_workers:
            raise ValueError(f"batch_size {self.batch_size} must divide evenly over {self.num_workers} workers")
        if self.sequence_frames < 2 * self.m + 1:
            raise ValueError(f"sequence_frames {self.sequence_frames} is shorter than one window (2m+1)")
        ModelConfig(**self.model_dict())  # validates variant and widths
        return self

    def model_dict(self) -> dict[str, Any]:
        """The settings of the network (``ModelConfig``)."""
        keys = {f.name for f in fields(ModelConfig)}
        return {k: v for k, v in self.to_dict().items() if k in keys}

    @property
    def per_worker_batch(self) -> int:
        return self.batch_size // self.num_workers


def load_train_config(preset: str | None = None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """A shipped preset by name (``paper``, ``cpu-small``, ``tiny``) or a YAML file, plus overrides."""
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
        raise DeterministicError(f"{reason} (batch windows {_batch_windows(batch)})")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if config.grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()
    # The L2 term shrinks weights that the data no longer moves towards zero until they are
    # subnormal, and x86 CPUs take a microcode assist for every product with one, which makes a
    # step many times slower (docs/performance.md); torch.set_flush_denormal does not reach
    # oneDNN's kernels. Such a weight changes no output, so it is set to zero, as inference
    # does; every DDP worker does the same.
    zero_dead_weights(model)
    if not parameters_finite(model):
        raise DeterministicError(
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

    _load_weights(model, load_checkpoint(directory / "model.safetensors"), name=str(name or directory))
    # weights_only: the state holds tensors, numbers and strings, so loading never runs code.
    state = torch.load(directory / "train_state.pt", map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    # The decay's period and factor are the run's settings, not the checkpoint's: a resumed run
    # may change lr_decay_every or lr_decay from here on. The learning rate reached is kept.
    shape = {k: getattr(scheduler, k) for k in ("step_size", "gamma") if hasattr(scheduler, k)}
    scheduler.load_state_dict(state["scheduler"])
    for key, value in shape.items():
        setattr(scheduler, key, value)
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


def initialise_from(model: DeblurNet, source: str) -> None:
    """Load the weights of checkpoint ``source`` ("bundled": the package's model) into ``model``."""
    from deblur.checkpoint import CheckpointError, load_checkpoint

    try:
        loaded = load_checkpoint(None if source == "bundled" else source)
    except CheckpointError as error:
        raise DeterministicError(f"init={source}: {error}") from error
    _load_weights(model, loaded, name=f"init={source}")


def _load_weights(model: DeblurNet, loaded: Any, *, name: str) -> None:
    """``loaded``'s weights into ``model``; a checkpoint of another network is a deterministic stop."""
    if loaded.config != model.config:
        have, want = loaded.config, model.config
        raise DeterministicError(
            f"{name}: checkpoint is {have.variant} m={have.m} width={have.width}, "
            f"the run trains {want.variant} m={want.m} width={want.width}"
        )
    model.load_state_dict(loaded.model.state_dict())
