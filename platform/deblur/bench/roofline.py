"""The device: what it is (printed with every figure) and its practical limit, the roofline.

Every GFLOP/s figure of ``deblur bench perf`` is read against ``measure_roofline`` in the same
precision: the best of a large matrix multiply and a 3x3 64->64 convolution, the fastest work this
machine does in fp32, in bf16 (AMX tiles on CPUs that have them), or in int8 through OpenVINO
(VNNI or AMX), the runtime ``--precision int8`` uses.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["best_rate", "describe_machine", "measure_roofline"]


def describe_machine() -> str:
    import torch

    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages * size / 2**30:.0f} GiB"
    except (ValueError, OSError):
        pass
    # The vector width sets the fp32 roofline, int8 dot products the int8 speed-up, and AMX-BF16
    # whether bf16 (training's autocast, --precision bf16) beats fp32.
    from deblur.hardware import cpu_has_amx_bf16
    from deblur.precision import cpu_int8_instructions

    int8 = cpu_int8_instructions()
    isa = torch.backends.cpu.get_cpu_capability()
    if int8 is not None:
        isa += f", {'/'.join(int8).upper()}" if int8 else ", no VNNI"
        isa += ", AMX_BF16" if cpu_has_amx_bf16() else ", no AMX_BF16"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu} ({isa}), {os.cpu_count()} logical CPUs{memory}, {gpu}; Python {platform.python_version()}, "
        f"torch {torch.__version__}, {platform.system()} {platform.release()}"
    )


def best_rate(fn: Callable[[], None], flops: float, *, repeats: int = 5, min_time: float = 0.5) -> float:
    """Best GFLOP/s of ``fn`` over ``repeats`` timed batches of at least ``min_time`` seconds."""
    fn()  # warm-up: allocations, kernel selection
    best = 0.0
    for _ in range(repeats):
        count, started = 0, time.perf_counter()
        while True:
            fn()
            count += 1
            elapsed = time.perf_counter() - started
            if elapsed >= min_time:
                break
        best = max(best, flops * count / elapsed / 1e9)
    return best


def measure_roofline(echo: Callable[[str], None] = print, *, precision: str = "fp32") -> dict[str, float]:
    """The device's practical limit in ``precision`` (fp32 or bf16): a large matrix multiply and a
    3x3 64->64 convolution, each on tensors of that type."""
    import torch
    import torch.nn.functional as F

    if precision == "int8":
        return _measure_int8_roofline(echo)
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"no roofline for precision {precision!r}; choose fp32, bf16 or int8")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    results: dict[str, float] = {}
    with torch.inference_mode():
        for n in (1024, 2048, 4096):
            a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
            results[f"matmul_{n}"] = best_rate(lambda a=a, b=b: torch.mm(a, b), 2 * n**3)
        weight = torch.randn(64, 64, 3, 3, dtype=dtype)
        for layout, fmt in (("nchw", torch.contiguous_format), ("nhwc", torch.channels_last)):
            x = torch.randn(1, 64, 240, 320, dtype=dtype).contiguous(memory_format=fmt)
            w = weight.contiguous(memory_format=fmt)
            flops = 2 * 64 * 64 * 9 * 240 * 320
            results[f"conv3x3_{layout}"] = best_rate(lambda x=x, w=w: F.conv2d(x, w, padding=1), flops)
    matmul = max(v for k, v in results.items() if k.startswith("matmul"))
    conv = max(v for k, v in results.items() if k.startswith("conv"))
    results["roofline"] = max(matmul, conv)
    echo(
        f"limit: {precision} matmul {matmul:.0f} GFLOP/s (best of 1024..4096), 3x3 conv 64->64 at 320x240 "
        f"{results['conv3x3_nchw']:.0f} (NCHW) / {results['conv3x3_nhwc']:.0f} (channels-last) GFLOP/s; "
        f"roofline {results['roofline']:.0f} GFLOP/s"
    )
    return results


def _measure_int8_roofline(echo: Callable[[str], None]) -> dict[str, float]:
    """int8 in OpenVINO, as ``--precision int8`` runs: a 2048 matrix multiply and four chained 3x3
    64->64 convolutions at 320x240 (chained so that quantizing the fp32 input is not what is timed),
    each between fake-quantize nodes, which OpenVINO turns into u8 x i8 kernels."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops
    import torch

    core = ov.Core()
    rng = np.random.default_rng(0)

    def quantized(node: Any, low: float, high: float, levels: int = 256) -> Any:
        lo, hi = ops.constant(np.float32(low)), ops.constant(np.float32(high))
        return ops.fake_quantize(node, lo, hi, lo, hi, levels)

    def rate(outputs: Any, inputs: Any, feed: np.ndarray, flops: float) -> float:
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        request = core.compile_model(ov.Model([outputs], [inputs]), "CPU", config).create_infer_request()
        return best_rate(lambda: request.infer([feed]), flops)

    n = 2048
    a = ops.parameter([n, n], ov.Type.f32)
    b = ops.constant(rng.standard_normal((n, n)).astype(np.float32))
    product = ops.matmul(quantized(a, -3.0, 3.0), quantized(b, -3.0, 3.0, 255), False, False)
    results = {"matmul_2048": rate(product, a, rng.standard_normal((n, n)).astype(np.float32), 2 * n**3)}
    x = ops.parameter([1, 64, 240, 320], ov.Type.f32)
    weight = ops.constant(rng.standard_normal((64, 64, 3, 3)).astype(np.float32))
    h = x
    for _ in range(4):
        h = ops.relu(ops.convolution(quantized(h, 0.0, 4.0), quantized(weight, -3.0, 3.0, 255), *[[1, 1]] * 4))
    feed = rng.random((1, 64, 240, 320), dtype=np.float32)
    results["conv3x3_x4"] = rate(h, x, feed, 4 * 2 * 64 * 64 * 9 * 240 * 320)
    results["roofline"] = max(results.values())
    echo(
        f"limit: int8 (OpenVINO) matmul {results['matmul_2048']:.0f} GOP/s (2048), four 3x3 convs 64->64 at "
        f"320x240 {results['conv3x3_x4']:.0f} GOP/s; roofline {results['roofline']:.0f} GOP/s"
    )
    return results
