from __future__ import annotations

import warnings

import pytest
import torch

from deblur.bench import (
    measure_conv_ceiling,
    measure_model,
    measure_step_breakdown,
    measure_training_step,
    replace_marked_block,
)
from deblur.model import DeblurNet, ModelConfig, build_model, count_macs_per_pixel
from deblur.train import load_train_config, optimize_step
from tiny import tiny_model


def test_replace_marked_block_rewrites_only_between_its_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(
        "intro\n<!-- a:begin -->\nold a\n<!-- a:end -->\nmiddle\n<!-- b:begin -->\nold b\n<!-- b:end -->\ntail\n"
    )
    replace_marked_block(readme, "a", "new a\nsecond line")
    replace_marked_block(readme, "a", "newer a")  # a second run replaces, never appends
    assert readme.read_text() == (
        "intro\n<!-- a:begin -->\nnewer a\n<!-- a:end -->\nmiddle\n<!-- b:begin -->\nold b\n<!-- b:end -->\ntail\n"
    )


def test_replace_marked_block_names_the_file_when_markers_are_missing(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n<!-- a:begin -->\n")
    with pytest.raises(ValueError, match=r"README\.md.*a:end"):
        replace_marked_block(readme, "a", "x")
    assert readme.read_text() == "no markers here\n<!-- a:begin -->\n"


@pytest.mark.parametrize(("precision", "autocast"), [("fp32", False), ("bf16", True)])
def test_model_benchmark_steps_in_the_engines_precision(monkeypatch, precision, autocast):
    # The bf16 figure once timed fp32 steps: the benchmark called the step outside autocast.
    seen = []
    step = DeblurNet.step

    def recording_step(self, window, state):
        seen.append(torch.is_autocast_enabled("cpu"))
        return step(self, window, state)

    monkeypatch.setattr(DeblurNet, "step", recording_step)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16 on a CPU without AMX warns that it is slow
        result = measure_model(tiny_model(), width=16, height=16, frames=1, precision=precision)
    # Two warm-up steps and the one timed (count_macs_per_pixel's own steps follow, untimed).
    assert seen[:3] == [autocast] * 3
    assert result["fps"] > 0


@pytest.mark.parametrize("training", [False, True])
def test_conv_ceiling_times_every_conv_of_a_step_once_at_its_cost(training):
    model = tiny_model()
    ceiling = measure_conv_ceiling(model, width=16, height=8, batch=2, training=training, min_time=0.0)
    convs = [name for name, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    # A steady-state step calls every conv once, the blending conv included (step 0 skips it).
    assert sorted(layer["layer"] for layer in ceiling["layers"]) == sorted(convs)
    flops = 2 * count_macs_per_pixel(model) * 2 * 16 * 8 * (3 if training else 1) / 1e9
    assert sum(layer["gflop"] for layer in ceiling["layers"]) == pytest.approx(flops)
    assert all(layer["gflops"] > 0 for layer in ceiling["layers"])
    slowest = min(layer["gflops"] for layer in ceiling["layers"])
    assert slowest <= ceiling["gflops"] <= max(layer["gflops"] for layer in ceiling["layers"])


def test_step_breakdown_times_every_conv_inside_the_step_and_leaves_the_rest():
    model = tiny_model()
    breakdown = measure_step_breakdown(model, width=16, height=8, frames=3)
    convs = [name for name, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert sorted(layer["layer"] for layer in breakdown["layers"]) == sorted(convs)
    assert sum(layer["gflop"] for layer in breakdown["layers"]) == pytest.approx(
        2 * count_macs_per_pixel(model) * 16 * 8 / 1e9
    )
    assert 0 < breakdown["conv_seconds"] < breakdown["seconds"]
    assert breakdown["other_seconds"] == pytest.approx(breakdown["seconds"] - breakdown["conv_seconds"])


def test_training_step_benchmark_runs_the_training_step_and_counts_its_flops(monkeypatch):
    config = load_train_config("tiny", {"batch_size": 2, "sequence_frames": 5, "crop": 16})
    steps = []

    def counted(*args, **kwargs):
        steps.append(args[-1]["blurry"].shape)
        return optimize_step(*args, **kwargs)

    monkeypatch.setattr("deblur.train.optimize_step", counted)
    step = measure_training_step(config, steps=3)
    # Two warm-up steps, then the timed ones, each on a whole batch of the config's shape.
    assert steps == [(2, 5, 16, 16, 3)] * 5
    model = build_model(ModelConfig(**config.model_dict()))
    flop = 2 * (5 - 2 * config.m) * 16 * 16 * count_macs_per_pixel(model) * 2 * 3
    assert step["samples_per_s"] == pytest.approx(2 / step["seconds"])
    assert step["gflops"] == pytest.approx(flop / step["seconds"] / 1e9)
    with pytest.raises(ValueError, match="amp=False"):
        measure_training_step(load_train_config("tiny", {"amp": True}), steps=1)
