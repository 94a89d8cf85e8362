"""precision "auto": what it picks on each kind of hardware, its start-up check, and fp32 left as it was."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deblur.checkpoint import save_checkpoint
from deblur.cli import main
from deblur.engine import OnlineDeblurrer, deblur_frames
from deblur.precision import choose_precision
from deblur.video import read_frames
from media import write_test_video
from tiny import tiny_model

AMX = "flags\t\t: fpu sse2 avx2 avx512f avx512_vnni amx_tile amx_bf16 amx_int8\n"
VNNI = "flags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
AVX2 = "flags\t\t: fpu sse2 avx2 fma\n"
CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("cpuinfo", "expected"),
    [(AMX, "bf16"), (VNNI, "int8"), (AVX2, "fp32"), ("no flags line\n", "fp32")],
    ids=["amx", "vnni-no-amx", "avx2", "unreadable"],
)
def test_auto_picks_by_cpu_family(cpuinfo: str, expected: str) -> None:
    precision, why = choose_precision(CPU, cpuinfo)
    assert precision == expected and why


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16"), (False, "fp16")])
def test_auto_on_a_gpu_picks_by_bf16_support(monkeypatch, bf16: bool, expected: str) -> None:
    # No GPU here: the one query the choice makes is answered as a GPU of each kind would.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert choose_precision(torch.device("cuda"))[0] == expected


def _frames(count: int = 6) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(count)]


def _model():
    torch.manual_seed(0)
    return tiny_model()


def test_auto_keeps_its_pick_when_the_first_frames_agree_with_fp32() -> None:
    model, frames = _model(), _frames()
    engine = OnlineDeblurrer(model, device="cpu", precision="auto", cpuinfo=AMX, check_db=30.0)
    out = list(engine.run(frames))
    assert engine.precision == "bf16"
    assert "bf16 (the CPU has AMX-BF16 tiles); first frames within" in engine.precision_note
    fp32 = list(deblur_frames(model, frames, device="cpu", precision="fp32"))
    assert len(out) == len(fp32) and any(not np.array_equal(a, b) for a, b in zip(out, fp32, strict=True))


def test_auto_falls_back_to_fp32_when_the_first_frames_deviate() -> None:
    model, frames = _model(), _frames()
    # No bf16 output is 200 dB from fp32's: the check fails on the first frame.
    engine = OnlineDeblurrer(model, device="cpu", precision="auto", cpuinfo=AMX, check_db=200.0)
    out = list(engine.run(frames))
    assert engine.precision == "fp32"
    assert "bf16 deviated from fp32" in engine.precision_note and "fell back to fp32" in engine.precision_note
    fp32 = list(deblur_frames(model, frames, device="cpu", precision="fp32"))
    for a, b in zip(out, fp32, strict=True):
        np.testing.assert_array_equal(a, b)


def test_auto_on_a_cpu_without_amx_or_vnni_is_plain_fp32() -> None:
    model, frames = _model(), _frames()
    engine = OnlineDeblurrer(model, device="cpu", precision="auto", cpuinfo=AVX2)
    out = list(engine.run(frames))
    assert engine.precision == "fp32" and engine.precision_note.startswith("precision auto: fp32")
    for a, b in zip(out, deblur_frames(model, frames, device="cpu", precision="fp32"), strict=True):
        np.testing.assert_array_equal(a, b)


def test_explicit_fp32_on_the_command_line_is_the_plain_model_bit_for_bit(tmp_path: Path, capsys) -> None:
    model = _model()
    checkpoint = tmp_path / "tiny.safetensors"
    save_checkpoint(model, checkpoint)
    source = write_test_video(tmp_path / "in.mp4", width=32, height=24, frames=5, audio=False)
    out = tmp_path / "out.mp4"
    args = ["video", str(source), "-o", str(out), "--checkpoint", str(checkpoint), "--device", "cpu"]
    assert main([*args, "--precision", "fp32", "--lossless"]) == 0
    assert "precision auto" not in capsys.readouterr().err
    expected = list(deblur_frames(model, list(read_frames(source)), device="cpu", precision="fp32"))
    for a, b in zip(read_frames(out), expected, strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_command_line_defaults_to_auto_and_says_what_it_picked(tmp_path: Path, capsys) -> None:
    checkpoint = tmp_path / "tiny.safetensors"
    save_checkpoint(_model(), checkpoint)
    source = write_test_video(tmp_path / "in.mp4", width=32, height=24, frames=4, audio=False)
    assert main(["video", str(source), "-o", str(tmp_path / "o.mp4"), "--checkpoint", str(checkpoint)]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("precision auto: ")]
    assert len(lines) == 1, lines
