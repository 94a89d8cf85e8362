"""The HTTP endpoint (Ray Serve): whole videos, S3 jobs and live sessions, one recurrent actor per video.

Every video in flight is one sequential, stateful Ray actor (``SessionActor``) holding an
``OnlineDeblurrer``: its recurrent state runs through the video and is never shared. The HTTP
ingress (``DeblurApi``, a FastAPI app under Ray Serve, autoscaled) only parses, checks and routes.

Session actors are named and detached (namespace ``deblur``), so any replica of the application
can reach any of its sessions (the name carries the application's name: another application, with
another key or model, cannot) and a replica that dies takes no session with it. An idle session
closes itself after ``session_timeout_s``; a session whose actor is gone answers 410, never a silent
restart from an empty state. Frames must arrive with consecutive ``seq`` numbers (409 otherwise).
A session whose actor cannot start within ``session_start_timeout_s`` (the cluster is full), or one
past ``max_sessions``, answers 503 and leaves no actor behind.

Limits (413/422), an optional API key (401) and S3 prefix confinement (403) are checked in the
ingress, before any work; an S3 job's video is probed by its actor against the same limits (a
refused job ends ``failed`` with the reason). ``precision`` (fp32, int8, bf16, fp16, as ``deblur
video --precision``) applies to every actor, each quantizing its model once.

    config.py   ServingConfig, the application's ``args``
    wire.py     frames, control messages, URIs, limits, ApiError: plain Python, tested without a cluster
    actors.py   SessionActor (one video in flight)
    jobs.py     JobActor and the S3 job's tasks (whole, or in chunks)
    app.py      the ingress deployment (DeblurApi) and build_app; imports Ray Serve

Importing this package imports neither Ray nor FastAPI: ``build_app`` loads ``app`` when called.
"""

from typing import Any

from deblur.serving.actors import SessionActor
from deblur.serving.config import ServingConfig
from deblur.serving.wire import (
    API_VERSION,
    ApiError,
    check_uri,
    check_video_limits,
    decode_frame,
    encode_frame,
    parse_control,
)

__all__ = [
    "API_VERSION",
    "ApiError",
    "ServingConfig",
    "SessionActor",
    "build_app",
    "check_uri",
    "check_video_limits",
    "decode_frame",
    "encode_frame",
    "parse_control",
]


def build_app(args: dict[str, Any] | None = None) -> Any:
    """Serve application builder: ``import_path: deblur.serving:build_app`` with ``args`` = ServingConfig.

    ``deblur.serving.app.build_app``, imported on the first call.
    """
    from deblur.serving.app import build_app as build

    return build(args)
