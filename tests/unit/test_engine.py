"""The online engine: latency m, edge repetition, padding, state isolation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deblur.engine import OnlineDeblurrer, deblur_frames
from deblur.model import DeblurNet

TINY = {"width": 8, "feature_channels": 4, "num_blocks": 1}


def random_frames(n: int, h: int = 11, w: int = 13, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def seeded_model(**kwargs: object) -> DeblurNet:
    torch.manual_seed(0)
    return DeblurNet(**{**TINY, **kwargs})  # type: ignore[arg-type]


def reference(model: DeblurNet, frames: list[np.ndarray]) -> np.ndarray:
    """The whole clip at once through forward(), edges repeated m times, padded to even size."""
    h, w = frames[0].shape[:2]
    clip = torch.stack([torch.from_numpy(f).permute(2, 0, 1).float() / 255 for f in frames])
    clip = F.pad(clip, (0, w % 2, 0, h % 2), mode="replicate")
    m = model.m
    clip = torch.cat([clip[:1].expand(m, -1, -1, -1), clip, clip[-1:].expand(m, -1, -1, -1)])
    with torch.no_grad():
        out = model(clip[None])[0, :, :, :h, :w]
    return out.clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("m", [0, 1, 2])
def test_latency_is_m_frames_and_every_frame_comes_out(m: int) -> None:
    engine = OnlineDeblurrer(seeded_model(m=m), device="cpu")
    frames = random_frames(6)
    ready = [len(engine.push(f)) for f in frames]
    assert ready == [0] * m + [1] * (6 - m)
    assert len(engine.finish()) == m
    assert engine.frames_emitted == 6


@pytest.mark.parametrize("variant", ["cnn", "strcnn", "strcnn_dtb"])
@pytest.mark.parametrize("m", [1, 2])
def test_matches_whole_clip_forward_with_edges_repeated(variant: str, m: int) -> None:
    model = seeded_model(variant=variant, m=m)
    frames = random_frames(7)
    online = np.stack(list(deblur_frames(model, frames, device="cpu")))
    assert online.shape == (7, 11, 13, 3) and online.dtype == np.uint8
    np.testing.assert_array_equal(online, reference(model, frames))


@pytest.mark.parametrize("n", [1, 2])
def test_videos_shorter_than_the_window(n: int) -> None:
    model = seeded_model(m=2)
    frames = random_frames(n)
    out = list(deblur_frames(model, frames, device="cpu"))
    assert len(out) == n
    np.testing.assert_array_equal(np.stack(out), reference(model, frames))


def test_state_never_leaks_between_engines() -> None:
    model = seeded_model()
    a, b = random_frames(6, seed=1), random_frames(6, seed=2)
    alone_a = list(deblur_frames(model, a, device="cpu"))
    alone_b = list(deblur_frames(model, b, device="cpu"))
    ea, eb = OnlineDeblurrer(model, device="cpu"), OnlineDeblurrer(model, device="cpu")
    got_a: list[np.ndarray] = []
    got_b: list[np.ndarray] = []
    for fa, fb in zip(a, b, strict=True):  # interleaved, sharing one model
        got_a += ea.push(fa)
        got_b += eb.push(fb)
    got_a += ea.finish()
    got_b += eb.finish()
    np.testing.assert_array_equal(np.stack(got_a), np.stack(alone_a))
    np.testing.assert_array_equal(np.stack(got_b), np.stack(alone_b))


def test_memory_holds_only_the_window() -> None:
    engine = OnlineDeblurrer(seeded_model(m=2), device="cpu")
    for frame in random_frames(40):
        engine.push(frame)
        assert len(engine._window) <= 5


def test_bad_frames_and_reuse_are_refused() -> None:
    engine = OnlineDeblurrer(seeded_model(), device="cpu")
    with pytest.raises(ValueError, match="RGB uint8"):
        engine.push(np.zeros((8, 8), np.uint8))
    engine.push(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="the video is 8x8"):
        engine.push(np.zeros((8, 10, 3), np.uint8))
    engine.finish()
    with pytest.raises(RuntimeError, match="new one per video"):
        engine.push(np.zeros((8, 8, 3), np.uint8))


def test_unavailable_cuda_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="no CUDA device"):
        OnlineDeblurrer(seeded_model(), device="cuda")
