"""``deblur bench perf``: every figure of the performance issue, in one run, with the machine.

Each row of the table is a ``Figure``: its name, the function that measures it and the goal it is
held to. A measure prints what it found, keeps its numbers in ``PerfRun.results`` and returns the
table's cell; figures that come out of one run (bf16 speed and quality, the Ray runs) share it
through ``PerfRun.once``. To add a figure, write its measure and put it in ``perf_figures``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from deblur.bench.batch import run_batch_benchmark
from deblur.bench.inputs import bench_model_path, bench_videos
from deblur.bench.perf import (
    describe_breakdown,
    describe_ceiling,
    measure_conv_ceiling,
    measure_model,
    measure_precision_quality,
    measure_step_breakdown,
    peak_rss_of,
)
from deblur.bench.report import perf_table, write_perf_table
from deblur.bench.roofline import describe_machine, measure_roofline
from deblur.bench.serve import run_serve_benchmark
from deblur.bench.train import measure_training_step, run_train_benchmark, training_runs

__all__ = ["Figure", "PerfRun", "perf_figures", "run_perf_benchmark"]


@dataclass
class PerfRun:
    """What the figures of one run share: the model, a working directory, the numbers so far."""

    checkpoint: str
    directory: Path
    quick: bool
    echo: Callable[[str], None]
    results: dict[str, Any] = field(default_factory=dict)
    _shared: dict[str, Any] = field(default_factory=dict)

    @property
    def roofline(self) -> float:
        """The device's fp32 limit, GFLOP/s (measured by the first figure)."""
        return float(self.results["roofline"]["roofline"])

    def roofline_of(self, precision: str) -> float:
        """The device's limit in ``precision``, GFLOP/s, measured the first time it is asked for."""
        if precision == "fp32":
            return self.roofline
        limit = self.once(f"roofline_{precision}", lambda: measure_roofline(self.echo, precision=precision))
        self.results[f"roofline_{precision}"] = limit
        return float(limit["roofline"])

    @property
    def frames(self) -> int:
        """Steps timed per model figure."""
        return 3 if self.quick else 6

    @property
    def model(self) -> Any:
        """The checkpoint's model, loaded once and shared by the speed figures."""
        return self.once("model", self.fresh_model)

    def fresh_model(self) -> Any:
        from deblur.checkpoint import load_model

        return load_model(self.checkpoint)

    def once(self, key: str, measure: Callable[[], Any]) -> Any:
        """``measure()`` the first time ``key`` is asked for, its result after: one run, several rows."""
        if key not in self._shared:
            self._shared[key] = measure()
        return self._shared[key]


@dataclass(frozen=True)
class Figure:
    """One row of the table: what is measured, how, and its goal ("" where there is none)."""

    name: str
    measure: Callable[[PerfRun], str]  # prints, keeps its numbers in run.results, returns the cell
    goal: str = ""


def run_perf_benchmark(
    *,
    quick: bool = False,
    cache: str | None = None,
    readme: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """``deblur bench perf``: every figure of the performance issue, in one run, with the machine.

    ``readme`` rewrites the table between ``<!-- bench:perf:begin -->`` and ``<!-- bench:perf:end -->``
    of that file with the figures of this run.
    """
    import torch

    from deblur.hardware import cpu_has_amx_bf16
    from deblur.precision import choose_precision

    machine = describe_machine()
    echo(f"machine: {machine}; torch threads {torch.get_num_threads()}")
    directory = Path(cache or tempfile.mkdtemp(prefix="deblur-bench-perf-"))
    directory.mkdir(parents=True, exist_ok=True)
    run = PerfRun(checkpoint=bench_model_path(directory), directory=directory, quick=quick, echo=echo)
    run.results["machine"] = machine
    auto, why = choose_precision(torch.device("cpu"))
    echo(f"precision auto here: {auto} ({why})")
    figures = perf_figures(quick=quick, amx=cpu_has_amx_bf16(), auto=auto)
    rows = [(figure.name, figure.measure(run), figure.goal) for figure in figures]
    table = perf_table(machine, rows)
    echo("\n" + table)
    run.results["table"] = table
    if readme:
        write_perf_table(readme, table)
        echo(f"table written into {readme}")
    return run.results


def perf_figures(*, quick: bool, amx: bool, auto: str = "fp32") -> list[Figure]:
    """The table's rows in order: the limit, the model against it, then the pipeline against the model.

    ``quick`` leaves out ``--compile`` and everything that trains or starts Ray; ``amx``: the CPU
    multiplies bf16 in AMX tiles (without them bf16 is slower than fp32, and not measured);
    ``auto``: what ``--precision auto`` runs here, held to the roofline of that precision.
    """
    figures = [
        Figure("roofline (best of fp32 matmul, 3x3 conv)", roofline),
        Figure("model alone fp32 640x480", partial(model_alone, width=640, height=480), ">= 90%"),
        Figure("model alone fp32 1280x720", partial(model_alone, width=1280, height=720), ">= 90%"),
        Figure("conv layers alone 640x480, each by itself (ceiling of a step)", step_ceiling),
        Figure("int8 speed-up over fp32, 640x480", int8_speedup, ">= 2x"),
    ]
    if not quick:
        figures.append(Figure("model alone fp32 640x480, `--compile`", compiled, ">= 90%"))
    figures.append(Figure("int8 PSNR change vs fp32 (held-out clips)", int8_psnr, ">= -0.1 dB"))
    if amx:
        figures.append(Figure("bf16 (AMX) speed-up over fp32, 640x480", bf16_speedup, ">= 2x"))
        figures.append(Figure("bf16 PSNR change vs fp32 (held-out clips)", bf16_psnr, ">= -0.1 dB"))
    if auto in ("bf16", "int8"):  # the default precision, against its own limit
        what = "bf16 matmul, 3x3 conv (AMX)" if auto == "bf16" else "int8 matmul, 3x3 convs (OpenVINO)"
        figures.append(Figure(f"roofline {auto} (best of {what})", partial(precision_roofline, precision=auto)))
        for (width, height), goal in (((640, 480), ">= 7 fps, >= 70%"), ((1280, 720), ">= 70%")):
            measure = partial(model_alone, width=width, height=height, precision=auto)
            figures.append(Figure(f"model alone {auto} {width}x{height} (auto here)", measure, goal))
    figures += [
        Figure("whole file 640x480 vs model alone", whole_file, ">= 90%"),
        Figure("peak memory 1000 vs 100 frames, 160x120", memory, "within 5%"),
        Figure("peak memory, one 3840x2160 frame fp32: tiled (default) vs whole", memory_4k),
        Figure("100 frames 1280x720 (Table 2)", table_2, "paper: 12.6 s on GPU"),
    ]
    if not quick:
        figures += _training_and_ray_figures()
    return figures


def _training_and_ray_figures() -> list[Figure]:
    """Training (its ceiling, its step alone, Ray Train), the batch job and serving: full runs only."""
    from deblur.train.step import load_train_config

    figures = [
        Figure(
            "conv layers alone, forward+backward at the training shape (ceiling of fp32 training)",
            partial(training_ceiling, config=load_train_config("cpu-small")),
        )
    ]
    # The step itself, without Ray around it, at that shape and at the paper's (Sec. 5.3:
    # batch 8 of 13x128x128, where the convolutions are larger and run nearer their best).
    for key, preset in (("train_step_small", "cpu-small"), ("train_step_paper", "paper")):
        shape = load_train_config(preset, {"amp": False})
        what = f"batch {shape.batch_size} of {shape.sequence_frames}x{shape.crop}x{shape.crop}"
        step = partial(training_step, key=key, config=shape, what=what)
        figures.append(Figure(f"training step alone fp32, {what}, one process (no Ray)", step))
    for workers, precision in training_runs():
        goal = ">= 80%" if precision == "fp32" else ""
        measure = partial(ray_training, workers=workers, precision=precision)
        figures.append(Figure(f"training {precision}, {workers} worker(s)", measure, goal))
    figures += [Figure(f"batch 320x240, {actors} actor(s)", partial(batch, actors=actors)) for actors in (1, 2)]
    figures += [Figure("batch 320x240, one video split across 2 actors", batch_split, "<= 0.6x one actor")]
    serve_goals = {1: ">= 90% of offline", 2: ">= 1.6x one stream", 4: ""}
    figures += [
        Figure(f"serving 320x240, {k} stream(s)", partial(serving, sessions=k), goal) for k, goal in serve_goals.items()
    ]
    return figures


# ---------------------------------------------------------------------------------------------
# The limit and the model against it
# ---------------------------------------------------------------------------------------------


def roofline(run: PerfRun) -> str:
    run.results["roofline"] = measure_roofline(run.echo)
    return f"{run.roofline:.0f} GFLOP/s"


def precision_roofline(run: PerfRun, *, precision: str) -> str:
    unit = "GOP/s" if precision == "int8" else "GFLOP/s"
    return f"{run.roofline_of(precision):.0f} {unit}"


def model_alone(run: PerfRun, *, width: int, height: int, precision: str = "fp32") -> str:
    """The model's step at one size, against the roofline of its own precision."""
    fig = measure_model(run.model, width=width, height=height, frames=run.frames, precision=precision)
    suffix = "" if precision == "fp32" else f"_{precision}"
    run.results[f"model_{width}x{height}{suffix}"] = fig
    ratio = fig["gflops"] / run.roofline_of(precision)
    run.echo(
        f"model alone, {precision}, {width}x{height}: {fig['fps']:.2f} fps, {fig['gflops']:.0f} GFLOP/s "
        f"({fig['gflop_per_frame']:.0f} GFLOP/frame), {ratio:.0%} of the {precision} roofline"
    )
    return f"{fig['fps']:.2f} fps, {ratio:.0%} of roofline"


def _ceiling(run: PerfRun, key: str, what: str, ceiling: dict[str, Any]) -> str:
    run.results[key] = ceiling
    run.echo(f"conv layers alone, {what}: {describe_ceiling(ceiling, run.roofline)}")
    return f"{ceiling['gflops'] / run.roofline:.0%} of roofline"


def step_ceiling(run: PerfRun) -> str:
    """What the model's own kernels allow, and (printed, no row) where a whole step's time goes.

    The gap between this and the model's ratio is the step's element-wise work; the gap between
    this and 100% is convolutions oneDNN runs below its best.
    """
    what = "640x480, each timed by itself (the ceiling of a step)"
    cell = _ceiling(run, "conv_ceiling_640x480", what, measure_conv_ceiling(run.model, width=640, height=480))
    breakdown = measure_step_breakdown(run.model, width=640, height=480, frames=run.frames)
    run.results["step_breakdown_640x480"] = breakdown
    run.echo(f"inside a step, fp32, 640x480 (each conv timed in place): {describe_breakdown(breakdown, run.roofline)}")
    return cell


def _against_fp32(run: PerfRun, measure: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], float, str]:
    """``measure()``'s figure, and its fps over fp32's timed just before and just after it.

    These shared VMs drift by 20-30% within minutes (one run here timed fp32 at 0.86 fps and,
    minutes later, --compile at 1.15 and a whole file at 1.22 fps), so every ratio against
    fp32 divides by fp32 figures taken around it, not by the one at the top. One taken only
    before was not enough either: a run had fp32 at 0.73 fps just before a whole file that
    ran at 0.93 ("128% of the model alone"). The two are printed: far apart, the ratio is
    not to be trusted.
    """
    before = measure_model(run.model, width=640, height=480, frames=3)["fps"]
    figure = measure()
    after = measure_model(run.model, width=640, height=480, frames=3)["fps"]
    ratio = figure["fps"] / ((before + after) / 2)
    return figure, ratio, f"{before:.2f} and {after:.2f} fps"


def int8_speedup(run: PerfRun) -> str:
    int8, speedup, base = _against_fp32(
        run, lambda: measure_model(run.model, width=640, height=480, frames=run.frames, precision="int8")
    )
    run.results["int8_640x480"] = {**int8, "speedup": speedup}
    run.echo(f"model alone, int8, 640x480: {int8['fps']:.2f} fps, {speedup:.2f}x fp32 (fp32 before and after: {base})")
    return f"{speedup:.2f}x"


def compiled(run: PerfRun) -> str:
    fig, gain, base = _against_fp32(
        run, lambda: measure_model(run.model, width=640, height=480, frames=6, compiled=True)
    )
    ratio = fig["gflops"] / run.roofline
    run.results["compiled_640x480"] = {**fig, "speedup": gain}
    run.echo(
        f"model alone, fp32, 640x480, --compile (torch.compile, inductor, frozen weights): "
        f"{fig['fps']:.2f} fps, {ratio:.0%} of the roofline, {gain:.2f}x eager "
        f"(eager before and after: {base})"
    )
    return f"{fig['fps']:.2f} fps, {ratio:.0%} of roofline ({gain:.2f}x eager)"


def int8_psnr(run: PerfRun) -> str:
    quality = measure_precision_quality(run.fresh_model(), precision="int8", clips=1 if run.quick else 3)
    run.results["int8_quality"] = quality
    run.echo(
        f"int8 vs fp32 on {quality['frames']} held-out synthetic frames: PSNR {quality['psnr_int8']:.2f} vs "
        f"{quality['psnr_fp32']:.2f} dB ({quality['psnr_change']:+.3f} dB)"
    )
    return f"{quality['psnr_change']:+.3f} dB"


def _bf16(run: PerfRun) -> dict[str, Any]:
    """bf16 autocast, which multiplies in AMX tiles here: speed and quality, printed on one line."""
    bf16, speedup, base = _against_fp32(
        run, lambda: measure_model(run.model, width=640, height=480, frames=run.frames, precision="bf16")
    )
    quality = measure_precision_quality(run.fresh_model(), precision="bf16", clips=1 if run.quick else 3)
    run.results["bf16_640x480"] = figures = {**bf16, "speedup": speedup, **quality}
    run.echo(
        f"model alone, bf16 autocast (AMX), 640x480: {bf16['fps']:.2f} fps, {speedup:.2f}x fp32 "
        f"(fp32 before and after: {base}); PSNR "
        f"{quality['psnr_bf16']:.2f} vs {quality['psnr_fp32']:.2f} dB ({quality['psnr_change']:+.3f} dB)"
    )
    return figures


def bf16_speedup(run: PerfRun) -> str:
    return f"{run.once('bf16', partial(_bf16, run))['speedup']:.2f}x"


def bf16_psnr(run: PerfRun) -> str:
    return f"{run.once('bf16', partial(_bf16, run))['psnr_change']:+.3f} dB"


# ---------------------------------------------------------------------------------------------
# The pipeline against the model: a whole file, memory over a video's length, the paper's row
# ---------------------------------------------------------------------------------------------


def whole_file(run: PerfRun) -> str:
    """A whole file at 640x480: decode, model, encode."""
    from deblur.inference import deblur_file
    from deblur.video import EncoderOptions

    video = bench_videos(run.directory, videos=1, frames=8 if run.quick else 24, width=640, height=480)[0]
    out = run.directory / "out.mp4"
    whole, file_ratio, base = _against_fp32(
        run, lambda: {"fps": deblur_file(video, out, run.fresh_model(), device="cpu", encoder=EncoderOptions()).fps}
    )
    run.results["file_640x480"] = {"fps": whole["fps"], "ratio": file_ratio}
    run.echo(
        f"whole file 640x480 (decode, model, encode): {whole['fps']:.2f} fps, {file_ratio:.0%} of the model alone "
        f"(model alone before and after: {base})"
    )
    return f"{whole['fps']:.2f} fps, {file_ratio:.0%}"


def memory(run: PerfRun) -> str:
    """Memory against video length: the same content, 100 and 1000 frames, fresh processes."""
    peaks = {}
    for n in (100, 1000):
        clip = bench_videos(run.directory / f"len{n}", videos=1, frames=n, width=160, height=120)[0]
        code = (
            "import torch\ntorch.set_num_threads(2)\n"
            "from deblur.checkpoint import load_model\nfrom deblur.inference import deblur_file\n"
            f"deblur_file({str(clip)!r}, {str(run.directory / f'len{n}.mp4')!r}, "
            f"load_model({run.checkpoint!r}), device='cpu')"
        )
        peaks[n] = peak_rss_of(code)
    growth = peaks[1000] / peaks[100] - 1
    run.results["memory"] = {"peak_mib_100": peaks[100], "peak_mib_1000": peaks[1000], "growth": growth}
    run.echo(
        f"peak memory, 160x120: 100 frames {peaks[100]:.0f} MiB, 1000 frames {peaks[1000]:.0f} MiB ({growth:+.1%})"
    )
    return f"{peaks[100]:.0f} -> {peaks[1000]:.0f} MiB ({growth:+.1%})"


def memory_4k(run: PerfRun) -> str:
    """Peak memory of one 3840x2160 step in fresh processes, in tiles (the default) and whole."""
    peaks = {}
    for label, tile in (("tiled", None), ("whole", 0)):
        code = (
            "import numpy as np, torch\ntorch.set_num_threads(2)\n"
            "from deblur.checkpoint import load_model\nfrom deblur.engine import OnlineDeblurrer\n"
            f"engine = OnlineDeblurrer(load_model({run.checkpoint!r}), device='cpu', tile={tile!r})\n"
            "frame = np.random.default_rng(0).integers(0, 256, (2160, 3840, 3), dtype=np.uint8)\n"
            "engine.push(frame)\nengine.push(frame)\n"
        )
        peaks[label] = peak_rss_of(code)
    run.results["memory_4k"] = {"peak_mib_tiled": peaks["tiled"], "peak_mib_whole": peaks["whole"]}
    run.echo(f"peak memory, one 3840x2160 frame fp32: tiled {peaks['tiled']:.0f} MiB, whole {peaks['whole']:.0f} MiB")
    return f"{peaks['tiled']:.0f} MiB vs {peaks['whole']:.0f} MiB"


def table_2(run: PerfRun) -> str:
    """The paper's Table 2 row: 100 frames of 1280x720 (model only; the paper times its network too)."""
    hd = run.results["model_1280x720"]
    run.results["hd_100_frames_s"] = 100 * hd["seconds"]
    run.echo(f"100 frames at 1280x720: {100 * hd['seconds']:.0f} s (paper: ~12.6 s on a GTX 1080)")
    return f"{100 * hd['seconds']:.0f} s"


# ---------------------------------------------------------------------------------------------
# Training, the batch job and serving (full runs only)
# ---------------------------------------------------------------------------------------------


def training_ceiling(run: PerfRun, *, config: Any) -> str:
    """The conv ceiling at the 1-worker run's training shapes: the ceiling of its fp32 figure."""
    ceiling = measure_conv_ceiling(
        run.model, width=config.crop, height=config.crop, batch=config.per_worker_batch, training=True
    )
    what = f"forward+backward, batch {config.per_worker_batch} of {config.crop}x{config.crop} "
    return _ceiling(run, "conv_ceiling_training", what + "(the ceiling of fp32 training)", ceiling)


def training_step(run: PerfRun, *, key: str, config: Any, what: str) -> str:
    import torch

    step = measure_training_step(config)
    run.results[key] = step
    ratio = step["gflops"] / run.roofline
    run.echo(
        f"training step alone, fp32, {what}, in one process (no Ray, no data reader), "
        f"{torch.get_num_threads()} threads: {step['samples_per_s']:.2f} samples/s, "
        f"{step['gflops']:.0f} GFLOP/s, {ratio:.0%} of the roofline"
    )
    return f"{ratio:.0%} of roofline"


def _shared_run(run: PerfRun, key: str, measure: Callable[..., dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
    """One of the Ray benchmarks, run once for all its rows; its figures under ``results[key]``."""

    def once() -> dict[str, Any]:
        run.results[key] = figures = measure(cache=str(run.directory / key), echo=run.echo, **kwargs)
        return figures

    return run.once(key, once)


def ray_training(run: PerfRun, *, workers: int, precision: str) -> str:
    fig = _shared_run(run, "train", run_train_benchmark)[workers if precision == "fp32" else f"{workers}-{precision}"]
    if fig["precision"] == "fp32":
        return f"{fig['samples_per_s']:.2f} samples/s, {fig['gflops'] / run.roofline:.0%} of roofline"
    # bf16 on AMX: its FLOPs are not bounded by the fp32 roofline
    return f"{fig['samples_per_s']:.2f} samples/s, {fig['gflops']:.0f} GFLOP/s"


def batch(run: PerfRun, *, actors: int) -> str:
    return f"{_shared_run(run, 'batch', run_batch_benchmark)[actors]['frames_per_s']:.2f} frames/s"


def batch_split(run: PerfRun) -> str:
    long = _shared_run(run, "batch", run_batch_benchmark)["long"]
    return f"{long[2]:.1f} s against {long[1]:.1f} s on one actor: {long[2] / long[1]:.2f}x"


def serving(run: PerfRun, *, sessions: int) -> str:
    serve = _shared_run(run, "serve", run_serve_benchmark, sessions=(1, 2, 4))
    fig = serve[sessions]
    total = f"{fig['frames_per_s']:.2f} frames/s in total, {fig['frames_per_s'] / serve['offline_fps']:.0%} of offline"
    if sessions > 1:
        total += f", {fig['frames_per_s'] / serve[1]['frames_per_s']:.2f}x one stream"
    return f"{total}; p50 {fig['p50_ms']:.0f} ms (+{fig['p50_ms'] - serve['bare_ms']:.0f} ms over the model)"
