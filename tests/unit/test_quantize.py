"""Reduced-precision inference: the int8 model follows the fp32 one; precisions are checked per device."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from deblur.engine import OnlineDeblurrer, deblur_frames
from deblur.precision import cpu_int8_instructions
from deblur.quantize import calibration_windows, quantize_model
from media import pattern_frame
from tiny import tiny_model


def test_int8_model_stays_close_to_fp32_and_keeps_the_interface() -> None:
    torch.manual_seed(0)
    model = tiny_model(width=16, feature_channels=8)
    windows = calibration_windows(model, frames=4, size=(48, 64))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quantized = quantize_model(model, calibration=windows)
    # A CPU without int8 dot products is told that int8 will not be faster; one with them is not.
    warned = any("no int8 dot-product instructions" in str(w.message) for w in caught)
    assert warned == (cpu_int8_instructions() == [])
    assert quantized.quantized and not getattr(model, "quantized", False)  # the original is untouched
    frames = [pattern_frame(i, 40, 30) for i in range(6)]
    fp32 = np.stack(list(deblur_frames(model, frames, device="cpu")))
    int8 = np.stack(list(deblur_frames(quantized, frames, device="cpu", precision="int8")))
    assert int8.shape == fp32.shape and int8.dtype == np.uint8
    mse = np.mean((int8.astype(float) - fp32.astype(float)) ** 2)
    assert 10 * np.log10(255**2 / max(mse, 1e-12)) > 35  # within quantization noise of fp32
    # And it really ran int8 kernels: the graph OpenVINO compiled for these frames, as it executes it,
    # runs every convolution of the model in 8-bit integers.
    assert list(quantized._compiled) == [(30, 40)]  # compiled for this frame size, so it ran
    (request,) = quantized._compiled.values()
    executed = request.get_compiled_model().get_runtime_model().get_ordered_ops()
    precisions = [
        op.get_rt_info()["runtimePrecision"].astype(str)
        for op in executed
        if op.get_rt_info()["layerType"].astype(str) == "Convolution"
    ]
    assert precisions == ["u8"] * sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()), precisions


def test_precisions_are_checked_against_the_device() -> None:
    model = tiny_model()
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        OnlineDeblurrer(model, device="cpu", precision="int4")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        OnlineDeblurrer(model, device="cpu", precision="fp16")
    frames = [pattern_frame(i, 16, 16) for i in range(3)]
    bf16 = list(deblur_frames(model, frames, device="cpu", precision="bf16"))
    assert len(bf16) == 3 and bf16[0].dtype == np.uint8


def test_int8_instructions_are_read_from_the_cpu_flags() -> None:
    xeon = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni avx512_bf16\nprocessor\t: 1\n"
    assert cpu_int8_instructions(xeon) == ["avx512_vnni"]
    assert cpu_int8_instructions("flags\t\t: fpu sse avx2 fma amx_int8 avx_vnni\n") == ["amx_int8", "avx_vnni"]
    assert cpu_int8_instructions("flags\t\t: fpu sse avx2 fma\n") == []
    assert cpu_int8_instructions("model name\t: some CPU without a flags line\n") is None
