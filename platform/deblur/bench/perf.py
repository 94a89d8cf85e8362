"""The model against the device's limit: its step alone, its convolutions one by one, where a
step's time goes, reduced precision's quality, and a process's peak memory.

The measurements ``deblur bench perf`` makes of the model (``figures`` turns them into the table's
rows); each returns numbers and prints nothing, ``describe_*`` put them into words.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

from deblur.bench.roofline import best_rate

__all__ = [
    "describe_breakdown",
    "describe_ceiling",
    "measure_conv_ceiling",
    "measure_model",
    "measure_precision_quality",
    "measure_step_breakdown",
    "peak_rss_of",
]


def measure_model(
    model: Any, *, width: int, height: int, frames: int = 6, precision: str = "fp32", compiled: bool = False
) -> dict[str, float]:
    """The model's step alone (no conversion, no I/O): fps and GFLOP/s at one frame size.

    ``compiled``: the step as ``--compile`` runs it (``engine.compiled_step``).
    """
    import torch

    from deblur.engine import OnlineDeblurrer, compiled_step
    from deblur.model import count_macs_per_pixel

    engine = OnlineDeblurrer(model, device="cpu", precision=precision)
    net = engine.model
    step = compiled_step(net) if compiled else net.step
    window = torch.rand(1, model.config.num_frames, 3, height, width).contiguous()
    # The engine's precision context: without it a bf16 engine's step runs in fp32.
    with torch.inference_mode(), engine.autocast():
        state = net.init_state(1, height, width)
        # Warm-up: step 0 (which int8 runs in fp32: nothing to blend yet) and step 1 (which
        # compiles the int8 or torch.compile graph for this size); the steady state (n > 0) counts.
        for _ in range(2):
            _, state = step(window, state)
        times = []
        for _ in range(frames):
            started = time.perf_counter()
            _, state = step(window, state)
            times.append(time.perf_counter() - started)
    seconds = sorted(times)[len(times) // 2]
    macs = count_macs_per_pixel(model)
    gflop = 2 * macs * width * height / 1e9
    return {"fps": 1 / seconds, "gflops": gflop / seconds, "gflop_per_frame": gflop, "seconds": seconds}


def measure_step_breakdown(model: Any, *, width: int, height: int, frames: int = 6) -> dict[str, Any]:
    """Where a steady-state fp32 step's time goes: each conv timed inside the step, and the rest.

    Forward hooks take the time around every conv and transposed conv of the engine's model (its
    layout, its padding: the blending conv's replicate padding counts as its own); the medians of
    ``frames`` steps. ``other_seconds`` is the step's median less its convs': the element-wise work
    (ReLU, adds, concatenation, tanh, lerp) that ``measure_conv_ceiling`` leaves out.
    """
    import torch
    from torch import nn

    from deblur.engine import OnlineDeblurrer
    from deblur.model import conv_macs

    net = OnlineDeblurrer(model, device="cpu").model
    names = {module: name for name, module in net.named_modules()}
    times: dict[str, list[float]] = {}
    flops: dict[str, float] = {}
    started: dict[Any, float] = {}

    def before(module: Any, inputs: tuple[Any, ...]) -> None:
        started[module] = time.perf_counter()

    def after(module: Any, inputs: tuple[Any, ...], output: Any) -> None:
        times.setdefault(names[module], []).append(time.perf_counter() - started[module])
        flops[names[module]] = 2 * conv_macs(module, inputs[0], output)

    window = torch.rand(1, model.config.num_frames, 3, height, width)
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    steps = []
    with torch.inference_mode():
        state = net.init_state(1, height, width)
        for _ in range(2):  # step 0 has nothing to blend; the steady state counts
            _, state = net.step(window, state)
        handles = [m.register_forward_pre_hook(before) for m in convs]
        handles += [m.register_forward_hook(after) for m in convs]
        try:
            for _ in range(frames):
                began = time.perf_counter()
                _, state = net.step(window, state)
                steps.append(time.perf_counter() - began)
        finally:
            for handle in handles:
                handle.remove()
    layers = []
    for name, samples in times.items():
        seconds = sorted(samples)[len(samples) // 2]
        layers.append(
            {"layer": name, "gflop": flops[name] / 1e9, "seconds": seconds, "gflops": flops[name] / seconds / 1e9}
        )
    step = sorted(steps)[len(steps) // 2]
    conv_seconds = sum(layer["seconds"] for layer in layers)
    return {"seconds": step, "conv_seconds": conv_seconds, "other_seconds": step - conv_seconds, "layers": layers}


def describe_breakdown(breakdown: dict[str, Any], roofline: float) -> str:
    step, convs = breakdown["seconds"], breakdown["conv_seconds"]
    slow = sorted(
        (layer for layer in breakdown["layers"] if layer["gflops"] < 0.8 * roofline), key=lambda x: x["gflops"]
    )
    parts = [f"{layer['layer']} {layer['gflops']:.0f} GFLOP/s ({layer['seconds'] * 1e3:.0f} ms)" for layer in slow]
    rates = [layer["gflops"] for layer in breakdown["layers"]]
    return (
        f"{step * 1e3:.0f} ms: convolutions {convs * 1e3:.0f} ms ({convs / step:.0%}, "
        f"{min(rates):.0f}-{max(rates):.0f} GFLOP/s), element-wise work {breakdown['other_seconds'] * 1e3:.0f} ms"
        + (f"; convs below 80% of the roofline: {', '.join(parts)}" if parts else "")
    )


def measure_conv_ceiling(
    model: Any, *, width: int, height: int, batch: int = 1, training: bool = False, min_time: float = 0.2
) -> dict[str, Any]:
    """The model's convolutions timed one by one at the shapes of one step: the ceiling of a step.

    Every conv and transposed conv of a steady-state step runs by itself on a tensor of its input's
    shape and memory layout, best of 5 rounds as the roofline is; element-wise work (ReLU, adds,
    concatenation, the blending's tanh and lerp) is left out. All the step's FLOPs over the summed
    times is what the step would reach if it did nothing but these kernels back to back, so the
    model's ratio to the roofline cannot exceed this one's. ``training``: each layer's forward and
    backward (the gradients training takes: weights, bias, and the input where it needs one),
    counted as 3x the forward FLOPs as the training figure is; modules as ``train`` runs them
    (channels-last), at ``batch`` sequences of ``height`` x ``width`` crops.
    """
    import torch

    from deblur.engine import OnlineDeblurrer
    from deblur.model import zero_dead_weights

    if training:
        # Zeroed dead weights, as training keeps them (``optimize_step``): subnormals slow x86 16x.
        net = zero_dead_weights(copy.deepcopy(model)).train().to(memory_format=torch.channels_last)
    else:
        net = OnlineDeblurrer(model, device="cpu").model
    calls = _conv_calls(net, batch=batch, height=height, width=width, training=training)
    timed = [_one_call(*call, training=training) for call in calls]
    # Rounds over all the layers, not each layer's repeats in a row: this VM's speed drifts over
    # seconds, and a slow spell then costs a layer one of its samples, not all of them.
    best = [0.0] * len(timed)
    for _ in range(5):
        for index, (_, run_once, flops) in enumerate(timed):
            best[index] = max(best[index], best_rate(run_once, flops, repeats=1, min_time=min_time))
    layers = [
        {"layer": name, "gflop": flops / 1e9, "gflops": rate}
        for (name, _, flops), rate in zip(timed, best, strict=True)
    ]
    seconds = sum(layer["gflop"] / layer["gflops"] for layer in layers)
    return {"gflops": sum(layer["gflop"] for layer in layers) / seconds, "seconds": seconds, "layers": layers}


def _conv_calls(net: Any, *, batch: int, height: int, width: int, training: bool) -> list[tuple[Any, ...]]:
    """Every conv call of a steady-state step of ``net``: (layer, module, input shape, channels-last,
    input needs its gradient, multiply-adds)."""
    import torch
    from torch import nn

    from deblur.model import conv_macs

    names = {module: name for name, module in net.named_modules()}
    calls: list[tuple[str, Any, Any, bool, bool, int]] = []

    def record(module: Any, inputs: tuple[Any, ...], output: Any) -> None:
        x = inputs[0]
        layout = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        calls.append((names[module], module, x.shape, layout, x.requires_grad, conv_macs(module, x, output)))

    window = torch.rand(batch, net.config.num_frames, 3, height, width)
    convs = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.inference_mode(not training):
        state = net.init_state(batch, height, width)
        _, state = net.step(window, state)  # step 0 has no h~ to blend: the steady state counts
        state = type(state)(*(t.detach() if t is not None else None for t in state))
        handles = [m.register_forward_hook(record) for m in convs]
        try:
            net.step(window, state)
        finally:
            for handle in handles:
                handle.remove()
    return calls


def _one_call(
    name: str, module: Any, shape: Any, channels_last: bool, needs_grad: bool, macs: int, *, training: bool
) -> tuple[str, Callable[[], None], float]:
    """One conv call by itself on a fresh input of its shape and layout: (layer, the call, its FLOPs)."""
    import torch

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.rand(shape).contiguous(memory_format=fmt)
    if training:
        x.requires_grad_(needs_grad)
        wrt = [x, *module.parameters()] if needs_grad else list(module.parameters())
        grad = torch.rand_like(module(x))

        def run() -> None:
            torch.autograd.grad(module(x), wrt, grad)

        return name, run, 3 * 2 * macs

    def infer() -> None:
        with torch.inference_mode():
            module(x)

    return name, infer, 2 * macs


def describe_ceiling(ceiling: dict[str, Any], roofline: float) -> str:
    """The ceiling's ratio, and the layers that run below 80% of the roofline with their share."""
    seconds = ceiling["seconds"]
    slow = [layer for layer in ceiling["layers"] if layer["gflops"] < 0.8 * roofline]
    slow.sort(key=lambda layer: layer["gflops"])
    parts = [
        f"{layer['layer']} {layer['gflops']:.0f} GFLOP/s ({layer['gflop'] / layer['gflops'] / seconds:.0%} of the time)"
        for layer in slow
    ]
    return f"{ceiling['gflops']:.0f} GFLOP/s, {ceiling['gflops'] / roofline:.0%} of the roofline" + (
        f"; below 80% of it: {', '.join(parts)}" if parts else ""
    )


def peak_rss_of(code: str) -> float:
    """Peak resident memory (MiB) of a fresh Python process running ``code``."""
    import json
    import subprocess
    import sys

    # VmHWM, the high-water mark of this process image: ru_maxrss would not do, Linux keeps it
    # across exec, so the child would report the (large) benchmark process it was forked from.
    wrapped = code + (
        "\nimport json, re\n"
        "print(json.dumps(int(re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1))))"
    )
    out = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1]) / 1024


def measure_precision_quality(
    model: Any, *, precision: str, clips: int = 3, seconds: float = 1.0, seed: int = 77
) -> dict[str, float]:
    """Mean PSNR of ``precision`` and of fp32 on held-out synthetic clips, and their difference.

    The clips are rendered here (corpus seed ``seed``: not a training seed) and blurred with Eq. 1
    at tau 7, 11 and 15, so any machine can measure it without a dataset.
    """
    from deblur.demo import make_sample
    from deblur.engine import OnlineDeblurrer
    from deblur.evaluate import frame_psnr

    psnr: dict[str, list[float]] = {"fp32": [], precision: []}
    for index in range(clips):
        tau = (7, 11, 15)[index % 3]
        blurry, sharp, _ = make_sample(seconds=seconds, seed=seed + index, tau=tau, stride=tau + 4)
        for name in psnr:
            outputs = OnlineDeblurrer(model, device="cpu", precision=name).run(blurry)
            psnr[name] += [frame_psnr(o, s) for o, s in zip(outputs, sharp, strict=True)]
    fp32, reduced = (sum(v) / len(v) for v in (psnr["fp32"], psnr[precision]))
    return {"psnr_fp32": fp32, f"psnr_{precision}": reduced, "psnr_change": reduced - fp32, "frames": len(psnr["fp32"])}
