"""Which precision a step runs in: fp32, int8, bf16 or fp16, checked against the device.

fp32 runs anywhere. int8 runs on CPUs only (OpenVINO's int8 kernels, ``deblur.quantize``) and
pays only with 8-bit dot-product instructions; bf16 runs on either, and on a CPU pays only with
AMX-BF16 tiles; fp16 needs CUDA. What the CPU has is read from its flags (``deblur.hardware``).
No torch, no Ray: the settings that name a precision check it without importing either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from deblur.hardware import cpu_has_amx_bf16, read_cpu_flags

if TYPE_CHECKING:
    import torch

__all__ = [
    "INT8_INSTRUCTIONS",
    "PRECISIONS",
    "check_precision",
    "choose_precision",
    "cpu_int8_instructions",
    "slow_precision_warning",
]

# "auto" picks one of the others for the device (choose_precision); the engine checks the pick
# against fp32 on the first frames and falls back to fp32 when it deviates.
PRECISIONS = ("auto", "fp32", "int8", "bf16", "fp16")

# CPU flags (Linux /proc/cpuinfo names) of the instructions that make int8 convolutions fast:
# 8-bit dot products (VNNI) and AMX tiles. Without them OpenVINO's int8 kernels fall back to
# AVX2 multiply-adds: measured 1.06x over fp32 on a 2-core AVX2 EPYC, against 2.1-2.7x on a
# Xeon with AVX-512 VNNI.
INT8_INSTRUCTIONS = ("amx_int8", "avx512_vnni", "avx_vnni")


def check_precision(precision: str, device: torch.device) -> str:
    """fp32 anywhere; int8 on CPUs (x86 quantized kernels); fp16 on CUDA; bf16 on either; auto anywhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "int8" and device.type != "cpu":
        raise ValueError("precision int8 runs on the CPU only (use fp16 or bf16 on a GPU)")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device (use int8 or bf16 on a CPU)")
    return precision


INT8_PACKAGES = ("openvino", "onnx", "onnxruntime")  # the int8 extra


def missing_int8_packages() -> list[str]:
    from importlib.util import find_spec

    return [name for name in INT8_PACKAGES if find_spec(name) is None]


def require_int8_packages() -> None:
    """A one-line ValueError naming the int8 extra where its packages are missing."""
    missing = missing_int8_packages()
    if missing:
        raise ValueError(
            f"--precision int8 needs the int8 extra ({', '.join(missing)} not installed): "
            "pip install 'deblur-platform[int8]'"
        )


def choose_precision(device: torch.device, cpuinfo: str | None = None) -> tuple[str, str]:
    """What ``auto`` runs on ``device``, and why: the fastest precision whose output stays within
    0.01 dB of fp32 on this kind of hardware (README, Performance).

    bf16 on a GPU that has it (fp16 on others); on a CPU, bf16 with AMX-BF16 tiles, int8 with
    8-bit dot products (VNNI) but no AMX, and fp32 elsewhere.
    """
    if device.type == "cuda":
        import torch

        if torch.cuda.is_bf16_supported():
            return "bf16", "a GPU with bf16"
        return "fp16", "a GPU without bf16"
    if device.type != "cpu":
        return "fp32", f"a {device.type} device"
    if cpu_has_amx_bf16(cpuinfo):
        return "bf16", "the CPU has AMX-BF16 tiles"
    if cpu_int8_instructions(cpuinfo) and not missing_int8_packages():
        return "int8", "the CPU has int8 dot products (VNNI) and no AMX"
    return "fp32", "the CPU has neither AMX nor VNNI"


def cpu_int8_instructions(cpuinfo: str | None = None) -> list[str] | None:
    """Which of ``INT8_INSTRUCTIONS`` this CPU has (``cpuinfo``: the text of /proc/cpuinfo).

    None where the flags cannot be read (no /proc/cpuinfo: not Linux).
    """
    flags = read_cpu_flags(cpuinfo)
    return None if flags is None else [name for name in INT8_INSTRUCTIONS if name in flags]


def slow_precision_warning(precision: str, device: torch.device, cpuinfo: str | None = None) -> str | None:
    """Why ``precision`` on ``device`` would be no faster than fp32 on this CPU, or None.

    int8 without 8-bit dot products runs at about the speed of fp32 and only costs accuracy; bf16
    without AMX-BF16 tiles runs slower than fp32. Where the flags cannot be read (not Linux), int8
    is given the benefit of the doubt and bf16 is not (``hardware.cpu_has_amx_bf16``).
    """
    if device.type != "cpu":
        return None
    if precision == "int8" and cpu_int8_instructions(cpuinfo) == []:
        return (
            "this CPU has no int8 dot-product instructions (none of "
            f"{', '.join(INT8_INSTRUCTIONS)}): int8 will run at about the speed of fp32 here"
        )
    if precision == "bf16" and not cpu_has_amx_bf16(cpuinfo):
        return "this CPU has no AMX-BF16 tiles: bf16 will run slower than fp32 here"
    return None
