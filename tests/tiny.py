"""Tiny models for fast tests: the real architecture at a few channels, and the thread setting
that actors and session replicas with under one CPU run them with."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from deblur.model import DeblurNet


def tiny_model(**overrides: object) -> DeblurNet:
    config: dict[str, object] = {"width": 8, "feature_channels": 4, "num_blocks": 1, **overrides}
    return DeblurNet(**config)  # type: ignore[arg-type]


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch threads, then restore the previous setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
