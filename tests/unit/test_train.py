"""The training loop's pieces without a cluster: Eq. 4, one step, presets, checkpoint state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deblur.train import (
    TrainConfig,
    TrainingError,
    compute_loss,
    load_train_config,
    load_training_state,
    make_optimizer,
    optimize_step,
    save_training_state,
    weight_norm,
)
from tiny import tiny_model

CPU = torch.device("cpu")


def synthetic_batch(rng: np.random.Generator, *, batch: int = 2, frames: int = 5, size: int = 16) -> dict:
    """Blocky random images and their horizontally box-blurred versions: a small, learnable task."""
    coarse = rng.integers(0, 256, (batch, frames, size // 4, size // 4, 3)).astype(np.float32)
    sharp = np.kron(coarse, np.ones((1, 1, 4, 4, 1), np.float32))
    blurry = sum(np.roll(sharp, shift, axis=3) for shift in (-2, -1, 0, 1, 2)) / 5
    return {"blurry": blurry.round().astype(np.uint8), "sharp": sharp.astype(np.uint8)}


def test_eq4_is_mse_plus_lambda_weight_norm() -> None:
    torch.manual_seed(0)
    model = tiny_model()
    blurry, sharp = torch.rand(2, 5, 3, 16, 16), torch.rand(2, 5, 3, 16, 16)
    loss, mse = compute_loss(model, blurry, sharp, weight_decay=1e-5)
    squared = (model(blurry) - sharp[:, 1:4]) ** 2  # (B, 3 frames, 3, H, W)
    expected_mse = torch.mean(squared)
    torch.testing.assert_close(mse, expected_mse)
    # Eq. 4 literally: per frame, the squared error summed over channels per pixel; summed over frames.
    b, frames, channels, h, w = squared.shape
    data_term = sum(squared[i, n].sum() / (h * w) for i in range(b) for n in range(frames)) / b
    conv_weights = [p for n, p in model.named_parameters() if n.endswith("weight") and p.ndim == 4]
    torch.testing.assert_close(loss, data_term + 1e-5 * sum((w**2).sum() for w in conv_weights))
    torch.testing.assert_close(data_term, mse * frames * channels)
    # beta and biases are not decayed
    assert all(p.ndim == 4 for n, p in model.named_parameters() if n.endswith("weight"))
    assert weight_norm(model) > 0


def test_loss_falls_over_twenty_steps() -> None:
    torch.manual_seed(0)
    config = load_train_config("tiny", {"lr": 5e-3, "steps": 20})
    model = tiny_model(residual=True)
    optimizer, scheduler = make_optimizer(model, config)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    rng = np.random.default_rng(0)
    batches = [synthetic_batch(rng) for _ in range(4)]
    losses = [
        optimize_step(model, model, optimizer, scheduler, scaler, batches[i % 4], config=config, device=CPU)[1]
        for i in range(20)
    ]
    # Same batch (index 0) at step 1 and at step 17: the error on it fell.
    assert losses[16] < 0.85 * losses[0], losses


def test_non_finite_loss_names_the_step() -> None:
    config = load_train_config("tiny")
    model = tiny_model()
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    optimizer, scheduler = make_optimizer(model, config)
    batch = synthetic_batch(np.random.default_rng(0))
    with pytest.raises(TrainingError, match="loss is nan at step 7"):
        optimize_step(
            model,
            model,
            optimizer,
            scheduler,
            torch.amp.GradScaler("cuda", enabled=False),
            batch,
            config=config,
            device=CPU,
            where="step 7",
        )


def test_presets_are_complete_and_strict() -> None:
    paper = load_train_config("paper")
    assert (paper.steps, paper.batch_size, paper.crop, paper.sequence_frames) == (300_000, 8, 128, 13)
    assert (paper.lr, paper.lr_decay, paper.lr_decay_every, paper.weight_decay) == (1e-4, 0.96, 10_000, 1e-5)
    assert load_train_config("cpu-small", {"steps": 5}).steps == 5
    with pytest.raises(ValueError, match=r"unknown training setting\(s\) \['learning_rate'\]"):
        load_train_config("cpu-small", {"learning_rate": 1})
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        load_train_config("fast")
    with pytest.raises(ValueError, match="divide evenly"):
        TrainConfig(batch_size=3, num_workers=2)


def test_training_state_round_trips_exactly(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = load_train_config("tiny")
    model = tiny_model()
    optimizer, scheduler = make_optimizer(model, config)
    batch = synthetic_batch(np.random.default_rng(0))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    for _ in range(3):
        optimize_step(model, model, optimizer, scheduler, scaler, batch, config=config, device=CPU)
    save_training_state(
        tmp_path,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        step=3,
        config=config,
        provenance={"purpose": "test"},
    )
    expected_next = torch.rand(3)
    torch.manual_seed(123)

    restored = tiny_model()
    optimizer2, scheduler2 = make_optimizer(restored, config)
    assert load_training_state(tmp_path, model=restored, optimizer=optimizer2, scheduler=scheduler2) == 3
    for (name, a), b in zip(model.state_dict().items(), restored.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert torch.equal(torch.rand(3), expected_next)  # RNG restored
    # Both continue identically.
    a = optimize_step(model, model, optimizer, scheduler, scaler, batch, config=config, device=CPU)
    b = optimize_step(restored, restored, optimizer2, scheduler2, scaler, batch, config=config, device=CPU)
    assert a == b
    assert scheduler2.last_epoch == scheduler.last_epoch == 4

    other = tiny_model(variant="strcnn")
    with pytest.raises(TrainingError, match="the run trains strcnn"):
        load_training_state(tmp_path, model=other, optimizer=make_optimizer(other, config)[0], scheduler=scheduler)
