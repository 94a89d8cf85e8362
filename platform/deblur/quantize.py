"""Reduced-precision inference: int8 on x86 CPUs (PyTorch's x86 quantization backend).

``quantize_model(model)`` returns a copy of a DeblurNet in which the heavy convolutions run in
int8: both residual trunks (about 60 % of the multiply-adds), the blending conv of Eq. 3 (about
20 %) and the upsampling deconvolution (about 7 %). Weights are quantized per output channel
(symmetric), activations per tensor with ranges observed on a calibration set; the cheap layers, the blending arithmetic
(tanh, |.|, min, Eq. 2) and the recurrent state stay in float. The copy has the same ``step`` /
``init_state`` interface, so the online engine runs it unchanged.

Calibration uses frames of synthetic scenes from ``deblur.corpus`` (real photographs, the same
kind of content the bundled model was trained on) unless the caller passes its own windows.
Pure PyTorch, no Ray.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.ao.nn.quantized import FloatFunctional

from deblur.model import DeblurNet, ResidualBlock, TemporalBlending

__all__ = ["calibration_windows", "quantize_model"]


class _QuantBlock(nn.Module):
    """ResidualBlock with a quantized add (int8 in, int8 out)."""

    def __init__(self, block: ResidualBlock) -> None:
        super().__init__()
        self.conv1, self.relu, self.conv2 = block.conv1, nn.ReLU(), block.conv2
        self.skip = FloatFunctional()

    def forward(self, x: Tensor) -> Tensor:
        return self.skip.add(x, self.conv2(self.relu(self.conv1(x))))


class _QuantTrunk(nn.Module):
    """Float in, int8 residual blocks, float out: a drop-in for the trunk's ``nn.Sequential``."""

    def __init__(self, blocks: nn.Sequential) -> None:
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.blocks = nn.Sequential(*[_QuantBlock(b) for b in blocks])
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x: Tensor) -> Tensor:
        return self.dequant(self.blocks(self.quant(x)))

    def fuse(self) -> None:
        for block in self.blocks:
            torch.ao.quantization.fuse_modules(block, [["conv1", "relu"]], inplace=True)


class _QuantConv(nn.Module):
    """One float-in, float-out conv (or deconv) run in int8; replicate padding done in float first."""

    def __init__(self, conv: nn.Conv2d | nn.ConvTranspose2d) -> None:
        super().__init__()
        self.pad = None
        conv = copy.deepcopy(conv)
        if isinstance(conv, nn.Conv2d) and conv.padding_mode == "replicate":
            # Quantized convs pad with zeros only: pad by replication in float, then convolve unpadded.
            ph, pw = conv.padding  # type: ignore[misc]
            self.pad = (pw, pw, ph, ph)
            conv.padding, conv.padding_mode = (0, 0), "zeros"
        self.quant = torch.ao.quantization.QuantStub()
        self.conv = conv
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x: Tensor) -> Tensor:
        if self.pad is not None:
            x = F.pad(x, self.pad, mode="replicate")
        return self.dequant(self.conv(self.quant(x)))


def calibration_windows(model: DeblurNet, *, frames: int = 12, size: tuple[int, int] = (192, 256)) -> list[Tensor]:
    """Blurred windows (1, 2m+1, 3, H, W) of a synthetic scene, for the activation observers."""
    from deblur.corpus import CorpusConfig, render_video
    from deblur.synthesis import ClipParams, synthesize_clip

    height, width = size
    config = CorpusConfig(width=width, height=height, seconds=(frames * 12 + 11) / 240)
    sharp_frames, _ = render_video(config, seed=12345, index=0)
    blurry = [b for b, _ in synthesize_clip(sharp_frames, ClipParams(tau=11, stride=12))]
    tensors = [torch.from_numpy(b).permute(2, 0, 1).float().div(255) for b in blurry]
    m = model.m
    windows = []
    for n in range(len(tensors)):
        idx = [min(max(i, 0), len(tensors) - 1) for i in range(n - m, n + m + 1)]
        windows.append(torch.stack([tensors[i] for i in idx])[None])
    return windows


def quantize_model(model: DeblurNet, *, calibration: Iterable[Tensor] | None = None) -> DeblurNet:
    """An int8 copy of ``model`` for x86 CPUs (the original is left as it is)."""
    torch.backends.quantized.engine = "x86"
    qmodel = copy.deepcopy(model).cpu().eval()
    qmodel.encoder.blocks = _QuantTrunk(qmodel.encoder.blocks)
    qmodel.decoder.blocks = _QuantTrunk(qmodel.decoder.blocks)
    qmodel.decoder.up = _QuantConv(qmodel.decoder.up)
    if isinstance(qmodel.blending, TemporalBlending):
        qmodel.blending.conv = _QuantConv(qmodel.blending.conv)
    for trunk in (qmodel.encoder.blocks, qmodel.decoder.blocks):
        trunk.fuse()
    qconfig = torch.ao.quantization.get_default_qconfig("x86")
    # Quantized transposed convolutions take per-tensor weight scales only.
    per_tensor = torch.ao.quantization.QConfig(
        activation=qconfig.activation, weight=torch.ao.quantization.default_weight_observer
    )
    for module in qmodel.modules():
        if isinstance(module, (_QuantTrunk, _QuantConv)):
            module.qconfig = qconfig
    qmodel.decoder.up.qconfig = per_tensor
    torch.ao.quantization.prepare(qmodel, inplace=True)
    windows = list(calibration) if calibration is not None else calibration_windows(model)
    with torch.inference_mode():
        state = None
        for window in windows:
            if state is None:
                state = qmodel.init_state(1, window.shape[-2], window.shape[-1])
            _, state = qmodel.step(window, state)
    torch.ao.quantization.convert(qmodel, inplace=True)
    qmodel.quantized = True  # type: ignore[assignment]
    return qmodel
