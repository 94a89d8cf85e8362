from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from deblur.bench import figures
from deblur.bench.figures import Figure, perf_figures, run_perf_benchmark
from deblur.bench.perf import measure_conv_ceiling, measure_model, measure_step_breakdown
from deblur.bench.report import perf_table, replace_marked_block
from deblur.bench.train import measure_training_step
from deblur.model import DeblurNet, ModelConfig, build_model, count_macs_per_pixel
from deblur.train.step import load_train_config, optimize_step
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

    monkeypatch.setattr("deblur.train.step.optimize_step", counted)
    step = measure_training_step(config, steps=3)
    # Two warm-up steps, then the timed ones, each on a whole batch of the config's shape.
    assert steps == [(2, 5, 16, 16, 3)] * 5
    model = build_model(ModelConfig(**config.model_dict()))
    flop = 2 * (5 - 2 * config.m) * 16 * 16 * count_macs_per_pixel(model) * 2 * 3
    assert step["samples_per_s"] == pytest.approx(2 / step["seconds"])
    assert step["gflops"] == pytest.approx(flop / step["seconds"] / 1e9)
    with pytest.raises(ValueError, match="amp=False"):
        measure_training_step(load_train_config("tiny", {"amp": True}), steps=1)


def test_the_perf_table_has_one_row_per_figure_in_order_with_its_goal() -> None:
    quick = perf_figures(quick=True, amx=False)
    assert [figure.name for figure in quick] == [
        "roofline (best of fp32 matmul, 3x3 conv)",
        "model alone fp32 640x480",
        "model alone fp32 1280x720",
        "conv layers alone 640x480, each by itself (ceiling of a step)",
        "int8 speed-up over fp32, 640x480",
        "int8 PSNR change vs fp32 (held-out clips)",
        "whole file 640x480 vs model alone",
        "peak memory 1000 vs 100 frames, 160x120",
        "peak memory, one 3840x2160 frame fp32: tiled (default) vs whole",
        "100 frames 1280x720 (Table 2)",
    ]
    assert [figure.goal for figure in quick][1:5] == [">= 90%", ">= 90%", "", ">= 2x"]
    with_amx = [(figure.name, figure.goal) for figure in perf_figures(quick=True, amx=True)]
    assert [name for name, _ in with_amx[6:8]] == [
        "bf16 (AMX) speed-up over fp32, 640x480",
        "bf16 PSNR change vs fp32 (held-out clips)",
    ]
    # The precision auto runs here, against the roofline of that precision: bf16 with AMX, int8 with VNNI.
    for auto in ("bf16", "int8"):
        rows = [(f.name, f.goal) for f in perf_figures(quick=True, amx=auto == "bf16", auto=auto)]
        first = 8 if auto == "bf16" else 6
        assert [name.split(" (")[0] for name, _ in rows[first : first + 3]] == [
            f"roofline {auto}",
            f"model alone {auto} 640x480",
            f"model alone {auto} 1280x720",
        ]
        assert [goal for _, goal in rows[first : first + 3]] == ["", ">= 7 fps, >= 70%", ">= 70%"]
    full = [figure.name for figure in perf_figures(quick=False, amx=False)]
    assert full[5] == "model alone fp32 640x480, `--compile`"
    # Training, the batch job and serving come last, in full runs only.
    assert full[-6:] == [
        "batch 320x240, 1 actor(s)",
        "batch 320x240, 2 actor(s)",
        "batch 320x240, one video split across 2 actors",
        "serving 320x240, 1 stream(s)",
        "serving 320x240, 2 stream(s)",
        "serving 320x240, 4 stream(s)",
    ]
    goals = {f.name: f.goal for f in perf_figures(quick=False, amx=False)}
    assert goals["batch 320x240, one video split across 2 actors"] == "<= 0.6x one actor"
    assert goals["serving 320x240, 1 stream(s)"] == ">= 90% of offline"
    assert goals["serving 320x240, 2 stream(s)"] == ">= 1.6x one stream"
    assert {name for name in full if name.startswith("training fp32")} == {
        "training fp32, 1 worker(s)",
        "training fp32, 2 worker(s)",
    }


def test_perf_run_measures_each_figure_once_in_order_and_writes_the_readme_table(monkeypatch, tmp_path) -> None:
    measured = []

    def shared(run):  # two rows from one measurement, as bf16 speed and quality are
        measured.append("shared")
        run.results["shared"] = {"a": 1.5, "b": -0.25}
        return run.results["shared"]

    def limit(run):
        measured.append("limit")
        run.results["roofline"] = {"roofline": 200.0}
        run.echo("limit line")
        return f"{run.roofline:.0f} GFLOP/s"

    rows = [
        Figure("limit", limit),
        Figure("first of two", lambda run: f"{run.once('s', lambda: shared(run))['a']:.2f}x", ">= 2x"),
        Figure("second of two", lambda run: f"{run.once('s', lambda: shared(run))['b']:+.2f} dB", ">= -0.1 dB"),
    ]
    monkeypatch.setattr(figures, "perf_figures", lambda quick, amx, auto: rows)
    monkeypatch.setattr(figures, "describe_machine", lambda: "a test machine")
    monkeypatch.setattr(figures, "bench_model_path", lambda directory: str(directory / "model.safetensors"))
    readme = tmp_path / "README.md"
    readme.write_text("# x\n<!-- bench:perf:begin -->\nold\n<!-- bench:perf:end -->\nrest\n")
    printed: list[str] = []
    results = run_perf_benchmark(quick=True, cache=str(tmp_path / "cache"), readme=str(readme), echo=printed.append)
    assert measured == ["limit", "shared"]
    table = results["table"]
    assert table.splitlines()[0].startswith("Measured by `deblur bench perf` on ")
    assert table.splitlines()[0].endswith(": a test machine.")
    assert table.splitlines()[2:] == [
        "| figure | measured | goal |",
        "|---|---|---|",
        "| limit | 200 GFLOP/s |  |",
        "| first of two | 1.50x | >= 2x |",
        "| second of two | -0.25 dB | >= -0.1 dB |",
    ]
    assert printed[0].startswith("machine: a test machine; torch threads ")
    assert printed[1].startswith("precision auto here: ")
    assert printed[2:] == ["limit line", "\n" + table, f"table written into {readme}"]
    assert readme.read_text() == f"# x\n<!-- bench:perf:begin -->\n{table}\n<!-- bench:perf:end -->\nrest\n"
    assert results["machine"] == "a test machine" and results["shared"] == {"a": 1.5, "b": -0.25}


def test_perf_table_renders_markdown_with_the_machine_and_date() -> None:
    table = perf_table("CPU X", [("a", "1 fps", ">= 2"), ("b", "2", "")], date="2026-01-02")
    assert table == (
        "Measured by `deblur bench perf` on 2026-01-02: CPU X.\n\n"
        "| figure | measured | goal |\n|---|---|---|\n| a | 1 fps | >= 2 |\n| b | 2 |  |"
    )


def test_importing_the_bench_package_does_no_work_and_keeps_its_names() -> None:
    # cli.py and scripts/bundle_model.py import these names from deblur.bench itself.
    code = (
        "import sys, deblur.bench as b; "
        "assert 'torch' not in sys.modules and 'ray' not in sys.modules, 'heavy import'; "
        "names = ['describe_machine', 'replace_marked_block', 'run_batch_benchmark', 'run_data_benchmark', "
        "'run_perf_benchmark', 'run_serve_benchmark', 'run_train_benchmark', 'measure_model']; "
        "missing = [n for n in names if not callable(getattr(b, n, None))]; assert not missing, missing"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr


def test_warmup_measures_chunked_against_sequential_frames_after_the_cut() -> None:
    from deblur.bench.warmup import CAP_DB, forgetting
    from deblur.model import DeblurNet

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(14)]
    torch.manual_seed(0)
    cnn = DeblurNet(variant="cnn", width=8, feature_channels=4, num_blocks=1).eval()
    scores = forgetting(cnn, frames, cut=8, after=4, warmups=(0, 1, 4, 8, 16), precision="fp32")
    assert sorted(scores) == [0, 1, 4, 8]  # a warm-up longer than the frames before the cut is left out
    # No recurrent state: one frame before the cut (the window's m = 1) makes it exact...
    assert all(row == [CAP_DB] * 4 for w, row in scores.items() if w >= 1)
    # ...and without it, the cut's first frame sees itself where the previous frame belongs.
    assert scores[0][0] < CAP_DB and scores[0][1:] == [CAP_DB] * 3
    torch.manual_seed(0)
    recurrent = DeblurNet(variant="strcnn_dtb", width=8, feature_channels=4, num_blocks=1).eval()
    state = forgetting(recurrent, frames, cut=8, after=4, warmups=(0, 8), precision="fp32")
    assert max(state[0]) < CAP_DB  # the state carries the start into every frame after the cut
    assert min(state[8]) == CAP_DB  # started at the sequence's own start: the same run
