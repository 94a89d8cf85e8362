"""The paper's three networks: shapes, recurrence, Eq. 3, parameter and MAC counts."""

from __future__ import annotations

import pytest
import torch

from deblur.model import VARIANTS, DeblurNet, ModelConfig, TemporalBlending, summarize_model

TINY = {"width": 8, "feature_channels": 4, "num_blocks": 1}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("m", [1, 2, 3])
def test_step_and_forward_shapes(variant: str, m: int) -> None:
    model = DeblurNet(variant=variant, m=m, **TINY)
    clip = torch.rand(2, 2 * m + 4, 3, 12, 10)
    state = model.init_state(2, 12, 10)
    frame, state = model.step(clip[:, : 2 * m + 1], state)
    assert frame.shape == (2, 3, 12, 10)
    assert state.feature is not None and state.feature.shape == (2, 4, 6, 5)
    assert (state.blended is not None) == (variant == "strcnn_dtb")
    assert model(clip).shape == (2, 4, 3, 12, 10)  # T - 2m outputs


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_forward_equals_looping_step(variant: str) -> None:
    torch.manual_seed(0)
    model = DeblurNet(variant=variant, m=1, **TINY)
    clip = torch.rand(1, 7, 3, 8, 8)
    state = model.init_state(1, 8, 8)
    looped = []
    for n in range(1, 6):
        frame, state = model.step(clip[:, n - 1 : n + 2], state)
        looped.append(frame)
    assert torch.equal(model(clip), torch.stack(looped, dim=1))


def test_only_recurrent_variants_carry_the_past() -> None:
    """Changing frame 0 changes a much later output only when state is carried."""
    torch.manual_seed(0)
    clip = torch.rand(1, 8, 3, 8, 8)
    altered = clip.clone()
    altered[:, 0] = 1.0 - altered[:, 0]
    for variant in VARIANTS:
        torch.manual_seed(1)
        model = DeblurNet(variant=variant, m=1, **TINY)
        with torch.no_grad():
            last, last_altered = model(clip)[:, -1], model(altered)[:, -1]
        carried = not torch.allclose(last, last_altered)
        assert carried == VARIANTS[variant].recurrent, variant


def test_parameter_counts_differ_only_by_the_blending_conv() -> None:
    """Paper Sec. 6.1: the same parameters, but for the one DTB conv (and its beta)."""
    counts = {v: sum(p.numel() for p in DeblurNet(variant=v).parameters()) for v in VARIANTS}
    assert counts["cnn"] == counts["strcnn"]
    blending = TemporalBlending(channels=64)
    extra = sum(p.numel() for p in blending.parameters())
    assert extra == 128 * 64 * 5 * 5 + 1  # 5x5 conv over [h~, h] (A and B of Eq. 3, no bias) plus beta
    assert counts["strcnn_dtb"] - counts["strcnn"] == extra


def test_blending_weight_lies_between_beta_and_one() -> None:
    torch.manual_seed(0)
    blend = TemporalBlending(channels=4, beta_init=0.3)
    with torch.no_grad():
        blend.conv.weight.mul_(50.0)  # drive tanh to saturation somewhere
        h, h_prev = torch.randn(2, 4, 9, 7) * 3, torch.randn(2, 4, 9, 7) * 3
        blended, w = blend(h, h_prev)
    beta = float(blend.beta.detach())
    assert w.shape == h.shape
    assert float(w.min()) >= beta - 1e-6 and float(w.max()) <= 1.0
    assert float(w.max()) == 1.0  # the min(1, .) clamp is reached
    # Eq. 2 exactly.
    torch.testing.assert_close(blended, w * h + (1 - w) * h_prev)
    # Eq. 3 has no bias: where both feature maps are zero, tanh is 0 and the weight is exactly beta.
    zeros = torch.zeros_like(h)
    with torch.no_grad():
        _, w0 = blend(zeros, zeros)
    torch.testing.assert_close(w0, torch.full_like(w0, beta))


def test_blending_border_matches_interior_for_constant_features() -> None:
    """Replicate padding: a constant feature map gives the same weight at the border."""
    blend = TemporalBlending(channels=3)
    h = torch.ones(1, 3, 9, 9) * 0.7
    with torch.no_grad():
        _, w = blend(h, h * 0.5)
    torch.testing.assert_close(w, w[:, :, 4:5, 4:5].expand_as(w))


@pytest.mark.parametrize("direction", [-1.0, 1.0])
def test_beta_stays_in_unit_interval_under_training(direction: float) -> None:
    blend = TemporalBlending(channels=2)
    opt = torch.optim.SGD(blend.parameters(), lr=100.0)
    for _ in range(50):
        opt.zero_grad()
        (direction * blend.beta).backward()
        opt.step()
        assert 0.0 <= float(blend.beta.detach()) <= 1.0
    assert float(blend.beta.detach()) < 0.01 if direction > 0 else float(blend.beta.detach()) > 0.99


def test_summary_of_the_paper_model() -> None:
    summary = summarize_model(DeblurNet(variant="strcnn_dtb", m=1))
    assert 0.85e6 < summary.parameters < 0.95e6  # "about 0.93 M"
    assert 230e3 < summary.macs_per_pixel < 260e3  # "about 250 K"
    # One more frame pair adds 2 x 3 input channels to the 5x5 first conv: 2*3*64*25 MACs/pixel.
    wider = summarize_model(DeblurNet(variant="strcnn_dtb", m=2))
    assert wider.macs_per_pixel - summary.macs_per_pixel == 2 * 3 * 64 * 25


def test_config_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ValueError, match="unknown model config key"):
        ModelConfig.from_dict({"variant": "cnn", "depth": 3})
    with pytest.raises(ValueError, match="unknown variant"):
        ModelConfig(variant="rnn")
    with pytest.raises(ValueError, match="m must be"):
        ModelConfig(m=-1)


def test_window_of_wrong_length_is_rejected() -> None:
    model = DeblurNet(m=1, **TINY)
    with pytest.raises(ValueError, match=r"window must be \(B, 3, 3, H, W\)"):
        model.step(torch.rand(1, 5, 3, 8, 8), model.init_state(1, 8, 8))
    with pytest.raises(ValueError, match="not a multiple of 2"):
        model.init_state(1, 7, 8)
