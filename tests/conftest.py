"""Shared fixtures: small real video files made with PyAV, tiny model checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from deblur.checkpoint import save_checkpoint
from deblur.model import DeblurNet
from media import write_test_video


@pytest.fixture
def make_video(tmp_path: Path) -> Callable[..., Path]:
    def make(name: str = "input.mp4", **kwargs: object) -> Path:
        return write_test_video(tmp_path / name, **kwargs)  # type: ignore[arg-type]

    return make


def tiny_model(**overrides: object) -> DeblurNet:
    config: dict[str, object] = {"width": 8, "feature_channels": 4, "num_blocks": 1, **overrides}
    return DeblurNet(**config)  # type: ignore[arg-type]


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    """A small strcnn_dtb checkpoint with non-trivial weights (seeded)."""
    import torch

    torch.manual_seed(0)
    return save_checkpoint(tiny_model(), tmp_path / "tiny.safetensors", provenance={"purpose": "test"})
