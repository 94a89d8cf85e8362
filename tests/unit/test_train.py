"""The training loop's pieces without a cluster: Eq. 4, one step, presets, checkpoint state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from deblur.hardware import cpu_has_amx_bf16
from deblur.train.driver import _describe_failure
from deblur.train.step import (
    TrainConfig,
    TrainingError,
    choose_autocast,
    compute_loss,
    load_train_config,
    load_training_state,
    make_optimizer,
    optimize_step,
    save_training_state,
    weight_norm,
)
from deblur.train.tune import TABLE1_SPACE, run_tuning
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
    # ||W||^2: the weights of every convolution, transposed ones included, found by module type.
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]
    assert any(isinstance(m, nn.ConvTranspose2d) for m in convs)
    conv_weights = [m.weight for m in convs]
    torch.testing.assert_close(weight_norm(model), sum((w**2).sum() for w in conv_weights))
    torch.testing.assert_close(loss, data_term + 1e-5 * sum((w**2).sum() for w in conv_weights))
    torch.testing.assert_close(data_term, mse * frames * channels)
    # Decayed are those weights and nothing else. With lambda = 1 the decay term is most of the loss,
    # so a bias or beta counted in it would show; and its gradient is 2 w for each of those weights,
    # nothing for any bias or for the blending beta.
    heavy, _ = compute_loss(model, blurry, sharp, weight_decay=1.0)
    squares = sum((w**2).sum() for w in conv_weights)
    assert squares > data_term
    torch.testing.assert_close(heavy - data_term, squares)
    model.zero_grad()
    weight_norm(model).backward()
    decayed = {id(w) for w in conv_weights}
    names = [n for n, _ in model.named_parameters()]
    assert "blending.beta_logit" in names and any(n.endswith("bias") for n in names)
    for name, p in model.named_parameters():
        if id(p) in decayed:
            torch.testing.assert_close(p.grad, 2 * p.detach(), msg=lambda m, name=name: f"{name}: {m}")
        else:
            assert p.grad is None or not p.grad.any(), f"{name} is decayed"


@pytest.mark.parametrize("amp_dtype", [None, torch.bfloat16], ids=["fp32", "bf16-autocast"])
def test_loss_falls_over_twenty_steps(amp_dtype: torch.dtype | None) -> None:
    torch.manual_seed(0)
    config = load_train_config("tiny", {"lr": 5e-3, "steps": 20})
    model = tiny_model(residual=True)
    optimizer, scheduler = make_optimizer(model, config)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    rng = np.random.default_rng(0)
    batches = [synthetic_batch(rng) for _ in range(4)]
    amp = {"amp": amp_dtype is not None, "amp_dtype": amp_dtype or torch.float16}
    losses = [
        optimize_step(model, model, optimizer, scheduler, scaler, batches[i % 4], config=config, device=CPU, **amp)[1]
        for i in range(20)
    ]
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast leaves the weights fp32
    # Same batch (index 0) at step 1 and at step 17: the error on it fell.
    assert losses[16] < 0.85 * losses[0], losses


def test_cpu_training_autocasts_to_bf16_only_with_amx() -> None:
    sapphire_rapids = "flags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile amx_int8\n"
    assert cpu_has_amx_bf16(sapphire_rapids)
    assert not cpu_has_amx_bf16("flags\t\t: fpu avx512f avx512_bf16 avx512_vnni\n")  # bf16 without AMX is slower
    assert not cpu_has_amx_bf16("model name\t: no flags line\n")
    assert choose_autocast(False, CPU) is None
    assert choose_autocast(True, CPU) == (torch.bfloat16 if cpu_has_amx_bf16() else None)


def _one_cpu_step(model: Any, optimizer: Any, scheduler: Any, batch: dict, config: Any, *, where: str) -> Any:
    """One optimizer step of ``model`` on the CPU without AMP, as the training loop calls it."""
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    return optimize_step(model, model, optimizer, scheduler, scaler, batch, config=config, device=CPU, where=where)


def test_a_step_zeroes_weights_that_decayed_to_nothing_and_keeps_the_rest() -> None:
    # Subnormal weights made fp32 steps 16x slower on x86; below DEAD_WEIGHT a weight changes no output.
    from deblur.engine import DEAD_WEIGHT

    config = load_train_config("tiny")
    model = tiny_model()
    weight = model.decoder.blocks[0].conv1.weight
    with torch.no_grad():
        weight[0, 0, 0, :3] = torch.tensor([1e-35, -1e-40, 10 * DEAD_WEIGHT])
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    # lr 0: Adam leaves every weight as it is, so only the zeroing can change one.
    optimizer = torch.optim.Adam(model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    _one_cpu_step(model, optimizer, scheduler, synthetic_batch(np.random.default_rng(0)), config, where="step 1")
    assert weight[0, 0, 0, :3].tolist() == [0.0, 0.0, pytest.approx(10 * DEAD_WEIGHT)]
    expected = before["decoder.blocks.0.conv1.weight"]
    expected[0, 0, 0, :2] = 0.0
    for name, p in model.named_parameters():
        assert torch.equal(p, expected if name == "decoder.blocks.0.conv1.weight" else before[name]), name


def test_non_finite_loss_names_the_step_and_the_windows() -> None:
    config = load_train_config("tiny")
    model = tiny_model()
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    optimizer, scheduler = make_optimizer(model, config)
    batch = synthetic_batch(np.random.default_rng(0))
    batch["key"] = np.array(["a.mp4/clip-000/window-0", "b.mp4/clip-002/window-16"])
    with pytest.raises(
        TrainingError, match=r"loss is nan at step 7 \(batch windows \['a.mp4/clip-000/window-0', 'b.mp4/clip-002/wi"
    ):
        _one_cpu_step(model, optimizer, scheduler, batch, config, where="step 7")


def test_non_finite_parameters_stop_training_and_are_never_checkpointed(tmp_path: Path) -> None:
    config = load_train_config("tiny")
    torch.manual_seed(0)
    model = tiny_model()
    # A parameter outside the forward pass: the loss stays finite, the parameters after the step do not.
    model.register_parameter("spare", torch.nn.Parameter(torch.tensor([float("inf")])))
    optimizer, scheduler = make_optimizer(model, config)
    batch = {**synthetic_batch(np.random.default_rng(0)), "key": np.array(["v.mp4/clip-001/window-8"] * 2)}
    with pytest.raises(
        TrainingError, match=r"parameters are not finite after step 3 \(batch windows \['v.mp4/clip-001"
    ):
        _one_cpu_step(model, optimizer, scheduler, batch, config, where="step 3")
    with pytest.raises(TrainingError, match="parameters are not finite; no checkpoint written"):
        save_training_state(
            tmp_path / "ckpt",
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            step=3,
            config=config,
            provenance={},
        )
    assert not (tmp_path / "ckpt").exists()


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


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"steps": "abc"}, "training setting steps='abc': expected int"),
        ({"steps": 2.5}, "training setting steps=2.5: expected int"),
        ({"lr": "x"}, "training setting lr='x': expected a number"),
        ({"lr": float("nan")}, "training setting lr=nan: expected a number"),
        ({"amp": 1}, "training setting amp=1: expected bool"),
        ({"variant": 3}, "training setting variant=3: expected str"),
        ({"lr": 0}, "training setting lr must be positive, got 0.0"),
        ({"lr_decay": 1.5}, r"training setting lr_decay must be in \(0, 1\], got 1.5"),
        ({"keep_checkpoints": 0}, "training setting keep_checkpoints must be at least 1, got 0"),
        ({"samples_per_window": 0}, "training setting samples_per_window must be at least 1, got 0"),
        ({"weight_decay": -1e-5}, "training setting weight_decay must be at least 0"),
        ({"cpus_per_worker": 0}, "training setting cpus_per_worker must be positive"),
        ({"max_failures": -2}, "training setting max_failures must be at least -1, got -2"),
    ],
)
def test_overrides_are_type_and_range_checked(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_train_config("tiny", overrides)


def test_numbers_are_read_as_numbers() -> None:
    # PyYAML reads "1e-4" (as in `--set lr=1e-4`) as a string; a float setting takes it as a number.
    config = load_train_config("tiny", {"lr": "1e-4", "cpus_per_worker": 1, "max_failures": -1})
    assert config.lr == 1e-4 and isinstance(config.cpus_per_worker, float) and config.max_failures == -1
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_default_tune_grid_sweeps_table1_and_the_optimiser() -> None:
    assert TABLE1_SPACE["variant"] == ["cnn", "strcnn", "strcnn_dtb"] and TABLE1_SPACE["m"] == [1, 2, 3]
    assert len(set(TABLE1_SPACE["lr"])) >= 2 and len(set(TABLE1_SPACE["weight_decay"])) >= 2
    # Every value of a grid is checked before Ray is involved.
    with pytest.raises(ValueError, match="training setting lr='fast': expected a number"):
        run_tuning(load_train_config("tiny"), dataset="unused", storage_path="unused", name="x", space={"lr": ["fast"]})


def test_a_ray_train_failure_becomes_one_line_naming_each_worker() -> None:
    from ray.train import ControllerError, WorkerGroupError

    error = WorkerGroupError(
        "long text with a traceback",
        {1: RuntimeError("disk full\n  Traceback ..."), 0: TrainingError("data: no full batch")},
    )
    assert _describe_failure(error) == (
        "worker 0: TrainingError: data: no full batch; worker 1: RuntimeError: disk full"
    )
    assert _describe_failure(ControllerError(ValueError("bad\nmore"))) == "ValueError: bad"


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
    # Adam's moments and step counts are restored too (the loss of the next step is computed before
    # the optimizer acts, so only the state and the weights after a step can show a missing restore).
    state, state2 = optimizer.state_dict(), optimizer2.state_dict()
    assert state["param_groups"] == state2["param_groups"]
    assert state["state"].keys() == state2["state"].keys() and state["state"]
    for index, values in state["state"].items():
        for key, value in values.items():
            assert torch.equal(value, state2["state"][index][key]), (index, key)
    # Both continue identically: same loss, and the same weights after the step.
    a = optimize_step(model, model, optimizer, scheduler, scaler, batch, config=config, device=CPU)
    b = optimize_step(restored, restored, optimizer2, scheduler2, scaler, batch, config=config, device=CPU)
    assert a == b
    for (name, p), q in zip(model.named_parameters(), restored.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert scheduler2.last_epoch == scheduler.last_epoch == 4

    other = tiny_model(variant="strcnn")
    with pytest.raises(TrainingError, match="the run trains strcnn"):
        load_training_state(tmp_path, model=other, optimizer=make_optimizer(other, config)[0], scheduler=scheduler)


def test_a_resumed_run_decays_its_learning_rate_on_its_own_schedule(tmp_path: Path) -> None:
    config = load_train_config("tiny", {"lr": 1e-3, "lr_decay": 0.5, "lr_decay_every": 2})
    model = tiny_model()
    optimizer, scheduler = make_optimizer(model, config)
    for _ in range(3):  # the rate halved at step 2
        optimizer.step()
        scheduler.step()
    save_training_state(
        tmp_path, model=model, optimizer=optimizer, scheduler=scheduler, step=3, config=config, provenance={}
    )
    longer = load_train_config("tiny", {"lr": 1e-3, "lr_decay": 0.1, "lr_decay_every": 5})
    optimizer2, scheduler2 = make_optimizer(model, longer)
    assert load_training_state(tmp_path, model=model, optimizer=optimizer2, scheduler=scheduler2) == 3
    rates = []
    for _ in range(3):  # steps 4, 5, 6: the new period (5) and factor (0.1), from the rate reached
        optimizer2.step()
        scheduler2.step()
        rates.append(optimizer2.param_groups[0]["lr"])
    assert rates == pytest.approx([5e-4, 5e-5, 5e-5])
