"""Shared fixtures: small real video files, tiny checkpoints, a real local S3 server, one local Ray."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deblur.checkpoint import save_checkpoint
from deblur.local_s3 import LocalS3Server, exported
from deblur.storage import ensure_bucket
from media import write_test_video
from tiny import tiny_model

SESSION_TIMEOUT_S = 4.0  # of the test endpoint's sessions
RESUME_S = 2.0  # how long a dropped stream's session waits for it to come back

# An endpoint configured with api_key_env=TEST_API_KEY_ENV requires this key.
TEST_API_KEY_ENV = "DEBLUR_TEST_API_KEY"
TEST_API_KEY = "test-key-0123456789"


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
    with LocalS3Server() as server, exported(server.environment()):
        yield server


@pytest.fixture
def s3_bucket(local_s3: LocalS3Server) -> str:
    """A fresh, empty bucket: ``s3://test-<random>``."""
    uri = f"s3://test-{uuid.uuid4().hex[:12]}"
    ensure_bucket(uri)
    return uri


@pytest.fixture(scope="session")
def ray_session(local_s3: LocalS3Server) -> Iterator[None]:
    """One local Ray instance per test session (starting one costs 3-4 s on this machine).

    Workers inherit this process's environment, so the endpoint tests' API key is set here.
    """
    import ray

    os.environ[TEST_API_KEY_ENV] = TEST_API_KEY
    # With the dashboard, as on a real cluster: Ray Train's placement-group cleaner needs its
    # state API (see deblur.cluster.connect_ray).
    ray.init(num_cpus=2, include_dashboard=True, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests that use the endpoint run last, in their order: the session's one endpoint is
    then started once, and its replicas hold no CPU while the training and batch tests run."""
    items.sort(key=lambda item: "serve_endpoint" in getattr(item, "fixturenames", ()))


@pytest.fixture(scope="session")
def test_api_key() -> tuple[str, str]:
    """(name of the env var, key) that Ray workers of this session see."""
    return TEST_API_KEY_ENV, TEST_API_KEY


@pytest.fixture(scope="session")
def serve_endpoint(
    tmp_path_factory: pytest.TempPathFactory, local_s3: object, test_api_key: tuple[str, str]
) -> Iterator[dict]:
    """The endpoint on the session's Ray, twice: open at /, with an API key at /keyed.

    Once per session (starting it costs some 17 s here), for the tests that
    ``pytest_collection_modifyitems`` puts last; an app a module adds beside it, the module deletes.

    A tiny model, small limits (2 MB uploads, 320x240 frames) and a short session timeout, so that
    every limit can be tested with small inputs; jobs may use s3://serve-allowed/jobs only.
    """
    import torch
    from ray import serve

    from deblur.local_s3 import find_free_port
    from deblur.serving import build_app

    torch.manual_seed(0)
    checkpoint = tmp_path_factory.mktemp("serve") / "tiny.safetensors"
    save_checkpoint(tiny_model(), checkpoint)
    bucket = "s3://serve-allowed"
    ensure_bucket(bucket)
    ensure_bucket("s3://serve-other")
    port = find_free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    common = {
        "checkpoint": str(checkpoint),
        "device": "cpu",
        "precision": "fp32",  # outputs are compared with the fp32 engine bit for bit
        "session_cpus": 0.25,
        "session_timeout_s": SESSION_TIMEOUT_S,
        "resume_s": RESUME_S,
        "max_upload_mb": 2,
        "max_width": 320,
        "max_height": 240,
        "allowed_prefixes": [f"{bucket}/jobs"],
        "job_min_chunk_seconds": 0.5,  # so that a test's short video can be split
    }
    serve.run(build_app(common), name="deblur", route_prefix="/")
    env, key = test_api_key
    serve.run(build_app({**common, "api_key_env": env}), name="keyed", route_prefix="/keyed")
    try:
        yield {
            "url": f"http://127.0.0.1:{port}",
            "checkpoint": checkpoint,
            "bucket": bucket,
            "key": key,
            "session_timeout_s": SESSION_TIMEOUT_S,
            "resume_s": RESUME_S,
        }
    finally:
        serve.shutdown()
