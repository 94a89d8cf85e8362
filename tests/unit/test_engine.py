"""The online engine: latency m, edge repetition, padding, state isolation."""

from __future__ import annotations

import gc
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deblur.engine import OnlineDeblurrer, deblur_frames, prepare_model
from deblur.hardware import cpu_has_amx_bf16
from deblur.model import DEAD_WEIGHT, DeblurNet
from deblur.precision import slow_precision_warning

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


def live_tensor_bytes() -> int:
    """Bytes of every tensor storage alive in this process (PyTorch's allocations are invisible to tracemalloc)."""
    gc.collect()
    storages: dict[int, int] = {}
    for obj in gc.get_objects():
        if issubclass(type(obj), torch.Tensor):
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


@pytest.mark.parametrize("variant", ["cnn", "strcnn_dtb"])
def test_memory_does_not_grow_with_the_video(variant: str) -> None:
    engine = OnlineDeblurrer(seeded_model(variant=variant, m=2), device="cpu")
    frames = random_frames(8, h=48, w=64)
    held = []
    for i in range(200):
        engine.push(frames[i % len(frames)])  # outputs dropped, as a writer that has encoded them would
        if i + 1 in (20, 200):
            held.append(live_tensor_bytes())
    # One frame as the engine holds it is 37 KB: a leak of anything per frame would show 180 times over.
    assert held[0] > 5 * 48 * 64 * 3 * 4  # the window is there: the measure sees the engine's tensors
    assert held[1] == held[0]


def test_the_callers_model_is_never_changed() -> None:
    model = seeded_model()  # fresh: training mode, default layout
    before = {k: (v.clone(), v.data_ptr(), v.stride()) for k, v in model.state_dict().items()}
    frames = random_frames(5)
    out = np.stack(list(deblur_frames(model, frames, device="cpu")))
    assert model.training
    for key, value in model.state_dict().items():
        assert (value.data_ptr(), value.stride()) == before[key][1:], key
        torch.testing.assert_close(value, before[key][0], rtol=0, atol=0)
    np.testing.assert_array_equal(out, reference(model, frames))


def test_engines_on_different_devices_do_not_share_a_model() -> None:
    # "meta" stands in for a second device on a machine without CUDA: moving the caller's model
    # there would leave the first engine without weights.
    model = seeded_model()
    frames = random_frames(5)
    on_cpu = OnlineDeblurrer(model, device="cpu")
    elsewhere = OnlineDeblurrer(model, device="meta")
    assert next(elsewhere.model.parameters()).device.type == "meta"
    assert next(model.parameters()).device.type == "cpu"
    np.testing.assert_array_equal(np.stack(list(on_cpu.run(frames))), reference(model, frames))


def test_a_prepared_model_is_shared_not_copied() -> None:
    model = seeded_model()
    prepared = prepare_model(model, "cpu")
    assert prepared is not model and not prepared.training
    assert prepared.encoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert prepare_model(prepared, "cpu") is prepared
    a, b = OnlineDeblurrer(prepared, device="cpu"), OnlineDeblurrer(prepared, device="cpu")
    assert a.model is prepared and b.model is prepared  # no copy per engine (or per frame)
    frames = random_frames(6)
    np.testing.assert_array_equal(np.stack(list(a.run(frames))), reference(model, frames))


def test_weights_training_shrank_to_nothing_are_zeroed_in_the_engines_copy_only() -> None:
    # Such weights (Adam plus the L2 term) make CPUs compute in subnormals, many times slower.
    model = seeded_model().eval().to(memory_format=torch.channels_last)
    weight = model.decoder.blocks[0].conv1.weight
    with torch.no_grad():
        weight[0, 0, 0] = torch.tensor([1e-40, -1e-36, 1e-31])  # subnormal, tiny, tiny
        weight[0, 0, 1, :2] = torch.tensor([DEAD_WEIGHT * 10, -0.25])  # both kept
    kept = weight.detach().clone()
    prepared = prepare_model(model, "cpu")
    assert prepared is not model  # eval and channels-last, but not ready to run fast: copied
    got = prepared.decoder.blocks[0].conv1.weight[0, 0]
    assert got[0].tolist() == [0.0, 0.0, 0.0]
    assert got[1, :2].tolist() == pytest.approx([DEAD_WEIGHT * 10, -0.25], rel=1e-6, abs=0.0)
    torch.testing.assert_close(weight.detach(), kept, rtol=0, atol=0)  # the caller's model is untouched
    assert prepare_model(prepared, "cpu") is prepared
    frames = random_frames(5)
    np.testing.assert_array_equal(
        np.stack(list(OnlineDeblurrer(prepared, device="cpu").run(frames))), reference(model, frames)
    )


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


def test_a_compiled_engine_gives_the_eager_frames_and_shares_its_compiled_code() -> None:
    model = prepare_model(seeded_model(), "cpu")
    frames = random_frames(5, h=16, w=24)
    eager = np.stack(list(deblur_frames(model, frames, device="cpu")))
    first = OnlineDeblurrer(model, device="cpu", compiled=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="torch.compile failed")  # no silent fallback to eager
        compiled = np.stack(list(first.run(frames)))
    # Inductor may reorder float sums: at most one level of 255 apart, and nearly always equal.
    assert compiled.shape == eager.shape
    assert np.abs(compiled.astype(int) - eager.astype(int)).max() <= 1
    assert np.mean(compiled == eager) > 0.99
    assert first.runs_compiled and not OnlineDeblurrer(model, device="cpu").runs_compiled
    second = OnlineDeblurrer(model, device="cpu", compiled=True)
    assert second._step is first._step  # one compiled step per prepared model, not per video


def test_bf16_on_the_cpu_stays_close_to_fp32_and_warns_only_without_amx() -> None:
    model = seeded_model()
    frames = random_frames(6, 16, 20)
    fp32 = np.stack(list(deblur_frames(model, frames, device="cpu"))).astype(int)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bf16 = np.stack(list(deblur_frames(model, frames, device="cpu", precision="bf16"))).astype(int)
    warned = any("no AMX-BF16" in str(w.message) for w in caught)
    assert warned == (not cpu_has_amx_bf16())
    # bf16 keeps 8 bits of mantissa in the convolutions; state, blending and output stay fp32.
    assert np.abs(bf16 - fp32).max() <= 3 and np.abs(bf16 - fp32).mean() < 0.5


def test_a_precision_that_would_not_pay_on_this_cpu_is_named() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    amx = "flags\t\t: fpu avx512f avx512_vnni amx_bf16 amx_int8\n"
    avx2 = "flags\t\t: fpu sse avx2 fma\n"
    assert slow_precision_warning("bf16", cpu, amx) is None and slow_precision_warning("int8", cpu, amx) is None
    assert "no AMX-BF16" in slow_precision_warning("bf16", cpu, avx2)
    assert "no int8 dot-product" in slow_precision_warning("int8", cpu, avx2)
    assert slow_precision_warning("fp32", cpu, avx2) is None and slow_precision_warning("bf16", gpu, avx2) is None
    # Unreadable flags (not Linux): int8 is not warned about, bf16 is (as cpu_has_amx_bf16 says no).
    no_flags = "model name\t: a CPU without a flags line\n"
    assert slow_precision_warning("int8", cpu, no_flags) is None
    assert slow_precision_warning("bf16", cpu, no_flags) is not None
