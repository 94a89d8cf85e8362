"""The online engine: decoded frames in, one at a time; deblurred frames out.

Frame n leaves as soon as frame n+m has arrived (latency m frames). At the start and
the end of a video the window repeats the edge frame. The recurrent state runs
through the whole video; memory holds 2m+1 frames and the state, whatever the
video's length. This is the one place that turns frames into deblurred frames: the
CLI, the batch job and the endpoint all go through it, so their outputs agree.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
import warnings
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from deblur.model import DEAD_WEIGHT, DeblurNet, RecurrentState, has_dead_weights, zero_dead_weights
from deblur.precision import PRECISIONS, check_precision, choose_precision, slow_precision_warning
from deblur.tiling import step_radius, tiled_step

# PRECISIONS, check_precision (deblur.precision) and DEAD_WEIGHT, zero_dead_weights (deblur.model)
# are named here too, for the callers that import them from the engine.
__all__ = [
    "DEAD_WEIGHT",
    "PRECISIONS",
    "OnlineDeblurrer",
    "check_precision",
    "compiled_step",
    "deblur_frames",
    "keep_freed_memory",
    "prepare_model",
    "resolve_device",
    "zero_dead_weights",
]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' (or None) picks CUDA when present, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but no CUDA device is available")
    return device


@functools.cache
def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed activation buffers instead of unmapping them (Linux only).

    A 640x480 step allocates several 20-80 MB activations and frees them again. Above 32 MB
    glibc hands each one to mmap and back to the OS when freed, so every step page-faults its
    activations in afresh (measured here: 4x the page faults, 1 s of system time per 10 steps,
    about 10% of the throughput). Raising the mmap and trim thresholds to 1 GiB keeps them in
    the heap for reuse; the process's memory is still bounded by its largest step. Returns
    whether the setting was applied (False on other C libraries and systems); once per process.
    """
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc (e.g. musl)
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    limit = ctypes.c_int(1 << 30)
    return bool(mallopt(m_mmap_threshold, limit)) and bool(mallopt(m_trim_threshold, limit))


def prepare_model(model: DeblurNet, device: str | torch.device | None = "auto") -> DeblurNet:
    """``model`` as the engine runs it: eval mode, on ``device``, 4-D weights channels-last.

    Channels-last is about twice as fast for these convs on CPUs and on tensor cores; weights
    that training shrank to nothing are zeroed (``zero_dead_weights``: subnormal arithmetic). A model
    already prepared so is returned as it is, and engines then share it (inference never writes
    to it); any other is copied once, so an engine never changes its caller's model (one being
    trained keeps its mode and layout) and engines on different devices never move one model
    between them. Prepare once to let many engines share one copy.
    """
    device = resolve_device(device)
    if _is_prepared(model, device):
        return model
    return zero_dead_weights(copy.deepcopy(model).eval().to(device, memory_format=torch.channels_last))


def _is_prepared(model: DeblurNet, device: torch.device) -> bool:
    if model.training:
        return False
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.device.type != device.type or (device.index is not None and tensor.device.index != device.index):
            return False
        if tensor.dim() == 4 and not tensor.is_contiguous(memory_format=torch.channels_last):
            return False
    return not has_dead_weights(model)


# The start-up check of precision "auto": the first frames against fp32, and the least PSNR
# between the two outputs that keeps the faster precision (bf16 and int8 stay above 55 dB on
# the bundled model; see docs/performance.md).
STARTUP_CHECK_FRAMES = 3
STARTUP_CHECK_DB = 45.0

# Frames of more pixels than 1080p run in tiles of at most TILE_EDGE a side (``deblur.tiling``):
# the whole-frame step's full-size activations grow past what a GPU or a batch actor holds.
TILE_ABOVE_PIXELS = 1920 * 1088
TILE_EDGE = 1920


class OnlineDeblurrer:
    """Streams RGB uint8 frames (H, W, 3) through a DeblurNet with latency m.

    ``push(frame)`` returns the frames that became ready (zero or one);
    ``finish()`` returns the last m frames. One instance is one video: its state is
    never shared, and a finished instance refuses more frames. The model goes through
    ``prepare_model``: the caller's model is never changed.
    """

    def __init__(
        self,
        model: DeblurNet,
        *,
        device: str | torch.device | None = "auto",
        precision: str = "fp32",
        compiled: bool = False,
        check_db: float = STARTUP_CHECK_DB,
        cpuinfo: str | None = None,
        tile: int | None = None,
    ) -> None:
        # ``tile``: None tiles frames above TILE_ABOVE_PIXELS in tiles of TILE_EDGE; 0 never tiles;
        # an even N > 0 always runs tiles of at most N a side. The output is the same either way.
        if tile is not None and (tile < 0 or tile % 2):
            raise ValueError(f"tile must be 0 or an even number of pixels, got {tile}")
        self.tile_request = tile
        self.tile = 0  # the tile edge in use, decided at the first frame
        self.device = resolve_device(device)
        self.requested = check_precision(precision, self.device)
        # ``auto``: the device's fastest precision, run beside fp32 on the first frames (_checked).
        self.precision_note: str | None = None
        self._shadow: OnlineDeblurrer | None = None
        if precision == "auto":
            precision, why = choose_precision(self.device, cpuinfo)
            self.precision_note = f"precision auto: {precision} ({why})"
            if precision != "fp32":
                # A model quantized ahead (quantize_model) keeps its float original for the fp32 twin.
                reference = getattr(model, "float_model", model)
                self._shadow = OnlineDeblurrer(
                    reference, device=self.device, precision="fp32", compiled=compiled, tile=tile
                )
        self.precision = precision
        self.check_db = check_db
        self._check_left = STARTUP_CHECK_FRAMES
        self._closest = math.inf
        if self.device.type == "cpu":
            keep_freed_memory()
        # int8's own warning comes from quantize_model, which may also be called without an engine.
        slow = slow_precision_warning(precision, self.device) if precision == "bf16" else None
        if slow:
            warnings.warn(slow, stacklevel=2)
        if precision == "int8":
            from deblur.quantize import quantize_model

            # An already quantized model (quantize_model) is used as it is: quantizing takes seconds.
            self.model = model if getattr(model, "quantized", False) else quantize_model(model)
        else:
            self.model = prepare_model(model, self.device)
        # bf16/fp16: autocast keeps the state, the blending arithmetic and the output in fp32.
        self._autocast = precision in ("bf16", "fp16")
        self._dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        self._step = compiled_step(self.model) if compiled and precision != "int8" else self.model.step
        self.m = model.m
        self._window: deque[Tensor] = deque(maxlen=2 * self.m + 1)  # newest last
        self._state: RecurrentState | None = None
        self._size: tuple[int, int] | None = None  # (H, W) of the video
        self._received = 0
        self._emitted = 0
        self._finished = False

    def autocast(self) -> torch.autocast:
        """The precision context a step runs in: bf16/fp16 autocast, or a disabled one (fp32, int8)."""
        return torch.autocast(self.device.type, dtype=self._dtype, enabled=self._autocast)

    @property
    def frames_received(self) -> int:
        return self._received

    @property
    def frames_emitted(self) -> int:
        return self._emitted

    @property
    def runs_compiled(self) -> bool:
        """Whether steps run compiled (asked for, and compiling did not fall back to eager)."""
        return _COMPILED.get(self.model) is self._step

    def push(self, frame: np.ndarray) -> list[np.ndarray]:
        if self._shadow is not None:
            reference = self._shadow.push(frame)
            return self._checked(self._push(frame), reference)
        return self._push(frame)

    def finish(self) -> list[np.ndarray]:
        """Emit the frames still waiting for their future neighbours (edge repeated)."""
        if self._shadow is not None:
            reference = self._shadow.finish()
            return self._checked(self._finish(), reference)
        return self._finish()

    def _checked(self, outputs: list[np.ndarray], reference: list[np.ndarray]) -> list[np.ndarray]:
        """The start-up check of ``auto``: outputs against fp32's on the first frames. Below
        ``check_db``, this engine becomes its fp32 twin (same frames, same state) from here on."""
        for out, ref in zip(outputs, reference, strict=True):
            mse = float(np.mean((out.astype(np.float32) - ref.astype(np.float32)) ** 2))
            self._closest = min(self._closest, 10 * math.log10(255.0**2 / mse) if mse > 0 else math.inf)
        if self._closest < self.check_db:
            tried, closest, limit, shadow = self.precision, self._closest, self.check_db, self._shadow
            assert shadow is not None
            self.__dict__.update(shadow.__dict__)  # everything the fp32 twin holds: model, window, state
            self.requested = "auto"
            self.precision_note = (
                f"precision auto: {tried} deviated from fp32 ({closest:.1f} dB < {limit:g} dB "
                "on the first frames): fell back to fp32"
            )
            return reference
        self._check_left -= len(outputs)
        if self._check_left <= 0:
            self._shadow = None
            shown = "identical" if math.isinf(self._closest) else f"within {self._closest:.1f} dB"
            self.precision_note = f"{self.precision_note}; first frames {shown} of fp32"
        return outputs

    def _push(self, frame: np.ndarray) -> list[np.ndarray]:
        if self._finished:
            raise RuntimeError("this engine has finished its video; create a new one per video")
        tensor = self._to_tensor(frame)
        self._window.append(tensor)
        self._received += 1
        if self._received <= self.m:
            return []  # frame n = received-1-m does not exist yet
        # Frame n = received-1-m: its window n-m..n+m ends at the newest frame.
        return [self._emit(self._received - 1 - self.m)]

    def _finish(self) -> list[np.ndarray]:
        if self._finished:
            return []
        self._finished = True
        return [self._emit(n) for n in range(self._emitted, self._received)]

    def run(self, frames: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for frame in frames:
            yield from self.push(frame)
        yield from self.finish()

    # -- internals -------------------------------------------------------------------

    def _to_tensor(self, frame: np.ndarray) -> Tensor:
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 frame (H, W, 3), got {frame.dtype} {frame.shape}")
        h, w = frame.shape[:2]
        if self._size is None:
            self._size = (h, w)
            self.tile = choose_tile(h, w, self.tile_request)
        elif self._size != (h, w):
            raise ValueError(f"frame {self._received} is {w}x{h}, the video is {self._size[1]}x{self._size[0]}")
        x = torch.from_numpy(np.ascontiguousarray(frame)).to(self.device)
        x = x.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)  # (1, 3, H, W)
        pad_h, pad_w = (-h) % self.model.stride, (-w) % self.model.stride
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        return x

    def _window_tensor(self, n: int) -> Tensor:
        # The deque holds frames first..last; indices outside [0, last_received] repeat
        # the edge frame.
        last = self._received - 1
        first = last - len(self._window) + 1
        idx = [min(max(i, 0), last) for i in range(n - self.m, n + self.m + 1)]
        frames = [self._window[i - first] for i in idx]
        return torch.stack(frames, dim=1)

    @torch.inference_mode()
    def _emit(self, n: int) -> np.ndarray:
        window = self._window_tensor(n)  # (1, 2m+1, 3, Hp, Wp)
        if self._state is None:
            _, _, _, hp, wp = window.shape
            self._state = self.model.init_state(1, hp, wp, device=self.device)
        with self.autocast():
            if self.tile:
                halo = step_radius(self.model.config)
                out, self._state = tiled_step(self._step, window, self._state, tile=self.tile, halo=halo)
            else:
                out, self._state = self._step(window, self._state)
        out = out.float()
        h, w = self._size  # type: ignore[misc]
        out = out[0, :, :h, :w].clamp_(0.0, 1.0).mul_(255.0).round_()
        self._emitted += 1
        return out.to(torch.uint8).permute(1, 2, 0).contiguous().cpu().numpy()


def choose_tile(height: int, width: int, request: int | None) -> int:
    """The tile edge for a video of this size (0: the whole frame), as ``OnlineDeblurrer`` takes ``tile``."""
    if request is not None:
        return request if request and request < max(height, width) else 0
    return TILE_EDGE if height * width > TILE_ABOVE_PIXELS else 0


_COMPILED: weakref.WeakKeyDictionary[DeblurNet, Callable[..., Any]] = weakref.WeakKeyDictionary()


def compiled_step(model: DeblurNet) -> Callable[..., Any]:
    """``model.step`` compiled by ``torch.compile`` (inductor, weights frozen), shared per model.

    Measured here at 640x480: 1.05-1.10x the eager step after 7 s of compilation per frame size
    (and a second graph for step 0, which has no h~_{n-1}), so it pays on long videos and batch
    jobs, not on short clips; hence opt-in (``--compile``). Engines of one prepared model share
    the compiled code. If compiling fails (e.g. no C++ compiler in the image), the step falls back
    to eager with a warning instead of failing the video.
    """
    if model in _COMPILED:
        return _COMPILED[model]
    import torch._inductor.config as inductor

    # Constant weights let inductor prepack them for the CPU's conv kernels (inference only).
    inductor.freezing = True
    compiled = torch.compile(model.step, dynamic=False)
    eager = model.step

    def step(window: Tensor, state: RecurrentState) -> tuple[Tensor, RecurrentState]:
        if _COMPILED.get(model) is eager:
            return eager(window, state)
        try:
            return compiled(window, state)
        except Exception as error:  # inductor/dynamo errors have no common base class
            warnings.warn(f"torch.compile failed ({type(error).__name__}: {error}); running eager", stacklevel=2)
            _COMPILED[model] = eager
            return eager(window, state)

    _COMPILED[model] = step
    return step


def deblur_frames(
    model: DeblurNet,
    frames: Iterable[np.ndarray],
    *,
    device: str | torch.device | None = "auto",
    precision: str = "fp32",
) -> Iterator[np.ndarray]:
    """Deblur an iterable of RGB uint8 frames; yields as many frames as it consumed."""
    yield from OnlineDeblurrer(model, device=device, precision=precision).run(frames)
