"""Tiny models for fast tests: the real architecture at a few channels."""

from __future__ import annotations

from deblur.model import DeblurNet


def tiny_model(**overrides: object) -> DeblurNet:
    config: dict[str, object] = {"width": 8, "feature_channels": 4, "num_blocks": 1, **overrides}
    return DeblurNet(**config)  # type: ignore[arg-type]
