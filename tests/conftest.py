"""Shared fixtures: small real video files, tiny checkpoints, a real local S3 server, one local Ray."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deblur.checkpoint import save_checkpoint
from deblur.local_s3 import LocalS3Server
from deblur.storage import ensure_bucket
from media import write_test_video
from tiny import tiny_model


@pytest.fixture
def make_video(tmp_path: Path) -> Callable[..., Path]:
    def make(name: str = "input.mp4", **kwargs: object) -> Path:
        return write_test_video(tmp_path / name, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    """A small strcnn_dtb checkpoint with non-trivial weights (seeded)."""
    import torch

    torch.manual_seed(0)
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(tiny_model(), path, provenance={"purpose": "test"})
    return path


@pytest.fixture(scope="session")
def local_s3() -> Iterator[LocalS3Server]:
    """One real S3 server (moto, over HTTP on 127.0.0.1) for the session.

    Its settings go into os.environ so that boto3, pyarrow (through deblur.storage) and the
    workers of a Ray instance started afterwards all reach it.
    """
    with LocalS3Server() as server:
        saved = {k: os.environ.get(k) for k in server.environment()}
        os.environ.update(server.environment())
        try:
            yield server
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture
def s3_bucket(local_s3: LocalS3Server) -> str:
    """A fresh, empty bucket: ``s3://test-<random>``."""
    uri = f"s3://test-{uuid.uuid4().hex[:12]}"
    ensure_bucket(uri)
    return uri


@pytest.fixture(scope="session")
def ray_session(local_s3: LocalS3Server) -> Iterator[None]:
    """One local Ray instance per test session (starting one costs 3-4 s on this machine)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()
