"""Reduced-precision inference: int8 on CPUs, through OpenVINO's int8 (VNNI) kernels.

``quantize_model(model)`` returns an ``Int8Model`` with the DeblurNet interface the online engine
uses (``init_state``, ``step``, ``m``, ``stride``). How it is made:

1. The recurrent step (window, F_{n-1}, h~_{n-1}) -> (L_n, F_n, h~_n) is exported to ONNX.
2. ONNX Runtime's static quantizer puts quantize/dequantize pairs around every convolution:
   weights int8, symmetric, per output channel; activations uint8, per tensor, with ranges
   observed while the fp32 model deblurs calibration windows (with the real recurrent state).
   Everything else (the blending arithmetic of Eq. 2-3, the residual adds, the state) stays f32.
3. OpenVINO compiles that graph for the frame size of the video; its CPU plugin runs the
   quantized convolutions as int8 kernels (VNNI on this CPU) and the rest in f32 (the
   precision hint keeps it from switching to bf16 where the CPU has it).

The first step of a video, which has no h~_{n-1} yet (Eq. 3 blends h_0 with itself), runs the
fp32 model: one frame per video, and the exported graph needs no special case.

Why not PyTorch's own x86 int8 backend: measured here it gave 0.93-1.34x over fp32 channels-last;
this path gives 2.1-2.7x (``deblur bench perf``).

Calibration uses frames of synthetic scenes from ``deblur.data.corpus`` (real photographs, the same
kind of content the bundled model was trained on) unless the caller passes its own windows.
No Ray.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from deblur.model import DeblurNet, ModelConfig, RecurrentState, zero_dead_weights
from deblur.precision import require_int8_packages, slow_precision_warning

__all__ = ["Int8Model", "calibration_windows", "quantize_model"]


class _Step(nn.Module):
    """DeblurNet.step with tensors in and out (what ONNX export needs); steps n >= 1 only."""

    def __init__(self, model: DeblurNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, window: Tensor, feature: Tensor, blended: Tensor | None = None) -> tuple[Tensor, ...]:
        image, state = self.model.step(window, RecurrentState(feature=feature, blended=blended))
        outputs = [image, state.feature]
        if state.blended is not None:
            outputs.append(state.blended)
        return tuple(outputs)


def calibration_windows(model: DeblurNet, *, frames: int = 12, size: tuple[int, int] = (192, 256)) -> list[Tensor]:
    """Blurred windows (1, 2m+1, 3, H, W) of a synthetic scene, for the activation ranges."""
    from deblur.data.blur import ClipParams, synthesize_clip
    from deblur.data.corpus import CorpusConfig, render_video

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


def _export(model: DeblurNet, example: dict[str, Tensor], path: Path) -> None:
    full, half = {2: "height", 3: "width"}, {2: "half_height", 3: "half_width"}
    axes = {"window": {3: "height", 4: "width"}, "feature": half, "image": full, "feature_out": half}
    outputs = ["image", "feature_out"]
    if "blended" in example:
        axes |= {"blended": half, "blended_out": half}
        outputs.append("blended_out")
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter (no onnxscript needed) warns that it is deprecated and about
        # constant folding it skips; neither matters for this graph.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Step(model).eval(),
            tuple(example.values()),
            str(path),
            input_names=list(example),
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )


def _calibration_feeds(model: DeblurNet, windows: list[Tensor]) -> list[dict[str, np.ndarray]]:
    """The exported step's inputs as the fp32 model sees them, steps n >= 1 of each window run."""
    feeds = []
    with torch.inference_mode():
        state = model.init_state(1, windows[0].shape[-2], windows[0].shape[-1])
        for n, window in enumerate(windows):
            if n > 0:
                feed = {"window": window, "feature": state.feature}
                if model.blending is not None:
                    feed["blended"] = state.blended
                feeds.append({k: v.numpy().copy() for k, v in feed.items()})  # type: ignore[union-attr]
            _, state = model.step(window, state)
    return feeds


def _quantize_onnx(source: Path, target: Path, feeds: list[dict[str, np.ndarray]]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    prepared = source.with_name("prepared.onnx")
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(target),
        _Reader(),
        quant_format=QuantFormat.QDQ,  # what OpenVINO turns into int8 convolutions
        op_types_to_quantize=["Conv", "ConvTranspose"],
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )


class Int8Model:
    """A DeblurNet's steps n >= 1 as an OpenVINO int8 graph; step 0 on the fp32 model.

    Compiled once per frame size (a video has one), on the CPU with ``threads`` threads
    (default: PyTorch's thread count, which the engine, batch actors and replicas set to their CPUs).
    """

    quantized = True

    def __init__(self, float_model: DeblurNet, graph: Any, *, threads: int | None = None) -> None:
        import openvino as ov

        self.float_model = float_model
        self.config: ModelConfig = float_model.config
        self.m = float_model.m
        self.stride = float_model.stride
        self.blending = float_model.blending is not None
        self.threads = threads
        self._core = ov.Core()
        self._graph = graph  # an openvino.Model with dynamic height and width
        self._compiled: dict[tuple[int, int], Any] = {}

    def init_state(
        self, batch: int, height: int, width: int, *, device: Any = None, dtype: Any = None
    ) -> RecurrentState:
        return self.float_model.init_state(batch, height, width, device=device, dtype=dtype)

    def _request(self, height: int, width: int) -> Any:
        key = (height, width)
        if key not in self._compiled:
            graph = self._graph.clone()
            shapes = {"window": [1, self.config.num_frames, 3, height, width]}
            shapes["feature"] = [1, self.config.feature_channels, height // 2, width // 2]
            if self.blending:
                shapes["blended"] = [1, self.config.width, height // 2, width // 2]
            graph.reshape(shapes)
            compiled = self._core.compile_model(
                graph,
                "CPU",
                {
                    "PERFORMANCE_HINT": "LATENCY",
                    "INFERENCE_PRECISION_HINT": "f32",
                    "INFERENCE_NUM_THREADS": self.threads or torch.get_num_threads(),
                    # Pinned threads of two processes land on the same core on Linux: two batch
                    # actors or sessions on one machine would share one core.
                    "ENABLE_CPU_PINNING": False,
                },
            )
            self._compiled[key] = compiled.create_infer_request()
        return self._compiled[key]

    def step(self, window: Tensor, state: RecurrentState) -> tuple[Tensor, RecurrentState]:
        """As ``DeblurNet.step``: window (B=1, 2m+1, 3, H, W) -> L_n (1, 3, H, W), next state."""
        if self.blending and state.blended is None:
            return self.float_model.step(window, state)  # step 0: nothing to blend with yet
        assert state.feature is not None
        feeds = {"window": window, "feature": state.feature}
        if self.blending:
            feeds["blended"] = state.blended  # type: ignore[assignment]
        request = self._request(window.shape[-2], window.shape[-1])
        request.infer({k: np.ascontiguousarray(v.detach().cpu().numpy()) for k, v in feeds.items()})
        # Copies: the request reuses its output buffers at the next step.
        image = torch.from_numpy(request.get_output_tensor(0).data.copy())
        feature = torch.from_numpy(request.get_output_tensor(1).data.copy())
        blended = torch.from_numpy(request.get_output_tensor(2).data.copy()) if self.blending else None
        return image, RecurrentState(feature=feature, blended=blended)


def quantize_model(
    model: DeblurNet, *, calibration: Iterable[Tensor] | None = None, threads: int | None = None
) -> Int8Model:
    """An int8 version of ``model`` for CPUs (the original is left as it is).

    Warns (``UserWarning``) on a CPU without 8-bit dot-product instructions, where int8 runs at
    about the speed of fp32 and only costs accuracy.
    """
    require_int8_packages()  # before calibration, which takes seconds
    slow = slow_precision_warning("int8", torch.device("cpu"))
    if slow:
        warnings.warn(slow, stacklevel=2)
    float_model = zero_dead_weights(copy.deepcopy(model).cpu().eval())  # see zero_dead_weights
    windows = list(calibration) if calibration is not None else calibration_windows(float_model)
    if len(windows) < 2:
        raise ValueError("calibration needs at least 2 windows (step 0 runs in fp32 and is not calibrated)")
    feeds = _calibration_feeds(float_model, windows)
    example = {k: torch.from_numpy(v) for k, v in feeds[0].items()}
    with tempfile.TemporaryDirectory(prefix="deblur-int8-") as tmp:
        exported, quantized = Path(tmp) / "step.onnx", Path(tmp) / "step-int8.onnx"
        _export(float_model, example, exported)
        _quantize_onnx(exported, quantized, feeds)
        import openvino as ov

        graph = ov.Core().read_model(str(quantized))
    return Int8Model(float_model, graph, threads=threads)
