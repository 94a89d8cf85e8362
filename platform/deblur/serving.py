"""The HTTP endpoint (Ray Serve): whole videos, S3 jobs and live sessions, one recurrent actor per video.

Every video in flight is one sequential, stateful Ray actor (``SessionActor``) holding an
``OnlineDeblurrer``: its recurrent state runs through the video and is never shared. The HTTP
ingress (``DeblurApi``, a FastAPI app under Ray Serve, autoscaled) only parses, checks and routes:

    GET  /                              the viewer page (upload, side by side, download)
    GET  /v1/health, /v1/ready          liveness, readiness (model loaded)
    GET  /v1/metrics                    open sessions, frames/s, push latency (this replica)
    POST /v1/videos                     body: a video file -> the deblurred video (streamed back)
    GET  /v1/sample                     a synthetic blurry sample video (for the page)
    POST /v1/jobs                       {"input": "s3://...", "output": "s3://..."} -> {"job_id"}
    GET  /v1/jobs/{id}                  status of a job
    POST /v1/sessions                   -> {"session_id"}
    POST /v1/sessions/{id}/frames?seq=N body: one frame (raw RGB with width/height, or PNG/JPEG)
                                        -> the frames that became ready (m frames behind)
    DELETE /v1/sessions/{id}            close: the last m frames
    WS   /v1/sessions/{id}/stream       the same stream over a WebSocket

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
video --precision``) applies to every actor, each quantizing its model once. Everything the
ingress calls is plain Python (``decode_frame``, ``parse_control``, ``check_uri``,
``check_video_limits``, ``ServingConfig``...), testable without a cluster.
"""

import asyncio
import base64
import collections
import hmac
import io
import json
import os
import re
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

# FastAPI reads the routes' type hints at run time (Serve wraps the methods, so string annotations
# would not resolve): this module does not use ``from __future__ import annotations``.
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

__all__ = [
    "API_VERSION",
    "ServingConfig",
    "SessionActor",
    "build_app",
    "check_uri",
    "check_video_limits",
    "decode_frame",
    "encode_frame",
    "parse_control",
]

API_VERSION = "v1"
NAMESPACE = "deblur"
SESSION_PREFIX = "deblur-session-"
JOB_PREFIX = "deblur-job-"
FORMATS = ("raw", "png")  # how deblurred frames travel back
_SESSION_ID = re.compile(r"[0-9a-f]{32}")  # uuid4().hex: anything else names no session


@dataclass(frozen=True)
class ServingConfig:
    """Settings of the endpoint: the ``args`` of the Serve application (serve/config.yaml)."""

    checkpoint: str | None = None  # None: the bundled default model
    device: str = "auto"
    api_key_env: str = "DEBLUR_API_KEY"  # name of the env var holding the key; unset var = no auth
    max_upload_mb: float = 1024.0
    max_frames: int = 54_000  # 30 minutes at 30 fps
    max_width: int = 3840
    max_height: int = 2160
    session_timeout_s: float = 300.0
    upload_timeout_s: float = 60.0  # an upload that sends no data for this long is cut off (408)
    session_start_timeout_s: float = 60.0  # a session actor not started by then (cluster full): 503
    max_sessions: int | None = None  # open sessions of this application at once; more: 503. None: no limit
    session_cpus: float = 1.0
    session_gpus: float | None = None  # None: 1 when the cluster has GPUs, else 0 (CPU fallback)
    allowed_prefixes: tuple[str, ...] = ()  # s3:// prefixes jobs may read and write; () = none
    job_ttl_s: float = 3600.0
    crf: int = 18
    precision: str = "fp32"  # as `deblur video --precision`: fp32, int8 (CPU), bf16, fp16 (CUDA)

    def __post_init__(self) -> None:
        from deblur.engine import PRECISIONS

        for prefix in self.allowed_prefixes:
            if not prefix.startswith("s3://") or len(prefix.rstrip("/")) <= len("s3://"):
                raise ValueError(f"allowed_prefixes: {prefix!r} is not an s3://bucket[/prefix]")
        positive = ("session_timeout_s", "upload_timeout_s", "session_start_timeout_s", "max_upload_mb")
        if any(getattr(self, name) <= 0 for name in positive):
            raise ValueError(f"{', '.join(positive)} must be positive")
        if self.max_sessions is not None and (
            not isinstance(self.max_sessions, int) or isinstance(self.max_sessions, bool) or self.max_sessions < 1
        ):
            raise ValueError(f"max_sessions must be a positive integer or null, got {self.max_sessions!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: unknown {self.precision!r}; choose one of {', '.join(PRECISIONS)}")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "ServingConfig":
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown serving setting(s) {unknown}; known: {sorted(known)}")
        if "allowed_prefixes" in values:
            prefixes = values["allowed_prefixes"]
            values["allowed_prefixes"] = tuple([prefixes] if isinstance(prefixes, str) else prefixes or ())
        return cls(**values)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) or None


class ApiError(Exception):
    """An HTTP error with a status and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class SessionError(Exception):
    """Raised inside a session actor; carries the HTTP status the ingress answers with."""

    status = 400


class OutOfOrderError(SessionError):
    status = 409


class BadFrameError(SessionError):
    status = 422


class SessionClosedError(SessionError):
    status = 410


# ---------------------------------------------------------------------------------------------
# Frames on the wire (plain functions: tested without a cluster)
# ---------------------------------------------------------------------------------------------


def decode_frame(
    body: bytes, content_type: str, *, width: int | None, height: int | None, config: ServingConfig
) -> np.ndarray:
    """A pushed frame as RGB uint8 (H, W, 3): raw RGB bytes with their size, or a PNG/JPEG image."""
    kind = content_type.split(";")[0].strip().lower()
    if kind in ("application/octet-stream", "image/x-raw-rgb"):
        if not width or not height or width < 1 or height < 1:
            raise ApiError(422, "a raw RGB frame needs positive width and height query parameters")
        _check_size(width, height, config)
        if len(body) != width * height * 3:
            raise ApiError(422, f"a {width}x{height} raw RGB frame has {width * height * 3} bytes, got {len(body)}")
        return np.frombuffer(body, np.uint8).reshape(height, width, 3).copy()
    if kind in ("image/png", "image/jpeg"):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(body)) as image:
                _check_size(image.width, image.height, config)  # before decoding the pixels
                return np.asarray(image.convert("RGB"))
        except Image.DecompressionBombError as error:
            # PIL refuses a header that declares a giant image (a few bytes can claim 10^9 pixels).
            raise ApiError(
                422, f"the {kind} image is too large ({error}); the limit is {config.max_width}x{config.max_height}"
            ) from error
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise ApiError(422, f"not a readable {kind} image ({error})") from error
    raise ApiError(415, f"unsupported frame type {kind!r}: use image/png, image/jpeg or application/octet-stream")


def _check_size(width: int, height: int, config: ServingConfig) -> None:
    if width > config.max_width or height > config.max_height:
        raise ApiError(422, f"frame {width}x{height} exceeds the limit {config.max_width}x{config.max_height}")


def check_video_limits(info: Any, config: ServingConfig, *, name: str) -> None:
    """The resolution and declared length of a probed video (``VideoInfo``) against the limits (422)."""
    try:
        _check_size(info.width, info.height, config)
    except ApiError as error:
        raise ApiError(422, f"{name}: {error.message}") from None
    if info.frames is not None and info.frames > config.max_frames:
        raise ApiError(422, f"{name}: {info.frames} frames exceeds the limit of {config.max_frames}")


def _check_format(fmt: str | None) -> str:
    if fmt not in FORMATS:
        raise ApiError(422, f"output must be raw or png, got {fmt!r}")
    return fmt


def parse_control(text: str) -> dict[str, Any]:
    """A WebSocket text message: ``{"type": "finish"}``, or settings ``{"format", "width", "height"}``."""
    try:
        control = json.loads(text)
    except ValueError as error:
        raise ApiError(400, f"a text message must be JSON ({error})") from error
    if not isinstance(control, dict):
        raise ApiError(400, f"a text message must be a JSON object, got {type(control).__name__}")
    known = {"type", "format", "width", "height"}
    if set(control) - known:
        raise ApiError(422, f"unknown key(s) {sorted(set(control) - known)} in a text message; known: {sorted(known)}")
    if control.get("type", "settings") not in ("settings", "finish"):
        raise ApiError(422, f"type must be settings or finish, got {control['type']!r}")
    if "format" in control:
        _check_format(control["format"])
    for key in ("width", "height"):
        value = control.get(key)
        if key in control and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise ApiError(422, f"{key} must be a positive integer, got {value!r}")
    return control


def encode_frame(frame: np.ndarray, fmt: str) -> bytes:
    if fmt == "raw":
        return np.ascontiguousarray(frame).tobytes()
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def check_uri(uri: str, config: ServingConfig, *, what: str) -> str:
    """Only s3:// URIs under an allowed prefix (a prefix match on whole path segments)."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        raise ApiError(422, f"{what} must be an s3:// URI, got {uri!r}")
    if ".." in uri.split("/"):
        raise ApiError(403, f"{what} {uri}: '..' is not allowed in keys")
    for prefix in config.allowed_prefixes:
        base = prefix.rstrip("/")
        if uri == base or uri.startswith(base + "/"):
            return uri
    raise ApiError(403, f"{what} {uri} is outside the allowed prefixes {list(config.allowed_prefixes)}")


# ---------------------------------------------------------------------------------------------
# The actors (Ray imported only when they are created)
# ---------------------------------------------------------------------------------------------


class SessionActor:
    """One video in flight: the online engine, its recurrent state, and strict frame order."""

    def __init__(self, session_id: str, config: dict[str, Any], threads: int) -> None:
        import torch

        from deblur.checkpoint import load_model
        from deblur.engine import OnlineDeblurrer

        torch.set_num_threads(max(1, threads))
        settings = ServingConfig.from_dict(config)
        self.session_id = session_id
        # int8: the engine quantizes the model here, once for the whole session.
        self.engine = OnlineDeblurrer(
            load_model(settings.checkpoint), device=settings.device, precision=settings.precision
        )
        self.timeout = settings.session_timeout_s
        self.next_seq = 0
        self.closed: str | None = None
        self.created = self.last_active = time.monotonic()
        self.lock = threading.Lock()
        threading.Thread(target=self._watchdog, daemon=True).start()

    def ready(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "m": self.engine.m,
            "device": str(self.engine.device),
            "precision": self.engine.precision,
        }

    def push(self, seq: int, frame: np.ndarray) -> list[tuple[int, np.ndarray]]:
        with self.lock:
            self._check_open()
            if seq != self.next_seq:
                raise OutOfOrderError(f"session {self.session_id}: expected frame seq={self.next_seq}, got seq={seq}")
            try:
                ready = self.engine.push(frame)
            except ValueError as error:
                raise BadFrameError(f"session {self.session_id}: {error}") from error
            self.next_seq += 1
            self.last_active = time.monotonic()
            first = self.engine.frames_emitted - len(ready)
            return [(first + i, out) for i, out in enumerate(ready)]

    def finish(self) -> list[tuple[int, np.ndarray]]:
        with self.lock:
            self._check_open()
            first = self.engine.frames_emitted
            tail = self.engine.finish()
            self.closed = "closed by the client"
            self._exit_soon()
            return [(first + i, out) for i, out in enumerate(tail)]

    def status(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "frames_received": self.engine.frames_received,
            "frames_emitted": self.engine.frames_emitted,
            "next_seq": self.next_seq,
            "idle_s": round(time.monotonic() - self.last_active, 3),
            "closed": self.closed,
        }

    def _check_open(self) -> None:
        if self.closed:
            raise SessionClosedError(f"session {self.session_id} is {self.closed}")

    def _exit_soon(self) -> None:
        # Let this call's reply go out, then free the actor (and its GPU memory).
        threading.Timer(2.0, self._kill_self).start()

    def _kill_self(self) -> None:
        import ray

        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    def _watchdog(self) -> None:
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            with self.lock:
                if self.closed:
                    return
                if time.monotonic() - self.last_active > self.timeout:
                    self.closed = f"closed after {self.timeout:g} s without frames"
                    self._kill_self()
                    return


def run_job(job_id: str, source: str, destination: str, config: dict[str, Any], threads: int) -> dict[str, Any]:
    """Deblur one S3 object into another (as ``batch.deblur_object`` does, within the endpoint's
    limits and at its precision): the outcome, ``status`` "ok" with a record or "failed" with an error.

    It runs as a Ray task with the job's CPU or GPU, so the resources are free once it returns.
    """
    import torch

    from deblur import storage
    from deblur.checkpoint import load_model
    from deblur.engine import OnlineDeblurrer
    from deblur.video import EncoderOptions, VideoError, probe_video, transform_video

    settings = ServingConfig.from_dict(config)
    torch.set_num_threads(max(1, threads))
    started = time.perf_counter()
    try:
        # The limits of an upload: the header before any work, then the frames as they come (a
        # container need not declare how many it holds).
        with storage.open_input(source) as handle:
            info = probe_video(handle, name=source)
        check_video_limits(info, settings, name=source)
        model = load_model(settings.checkpoint)
        engine = OnlineDeblurrer(model, device=settings.device, precision=settings.precision)
        processor = _FrameLimit(engine, settings.max_frames, source)
        with tempfile.TemporaryDirectory(prefix="deblur-job-") as tmpdir:
            local = Path(tmpdir) / f"output{PurePosixPath(destination).suffix or '.mp4'}"
            with storage.open_input(source) as handle:
                encoder = EncoderOptions(crf=settings.crf)
                result = transform_video(handle, local, processor, encoder=encoder, name=source)
            storage.commit_file(local, destination, staging_uri=f"{destination}.staging-{job_id}")
    except (VideoError, ApiError) as error:  # bad input or over a limit: the message names the input
        return {"status": "failed", "error": str(error)}
    except Exception as error:  # reported to the client, never a silent failure
        return {"status": "failed", "error": f"{type(error).__name__}: {error}"}
    seconds = time.perf_counter() - started
    record = {
        "source": source,
        "destination": destination,
        "frames": result.frames,
        "width": result.info.width,
        "height": result.info.height,
        "video_fps": str(result.info.fps),
        "precision": settings.precision,
        "seconds": round(seconds, 3),
        "fps": round(result.frames / seconds, 3) if seconds > 0 else None,
    }
    return {"status": "ok", "record": record, "error": None}


class JobActor:
    """Remembers one S3 job for ``job_ttl_s`` after it ends, then removes itself.

    The work is a task (``run_job``) with the job's CPU or GPU; the actor itself holds none, so a
    finished job kept for polling costs no compute.
    """

    def __init__(
        self,
        job_id: str,
        source: str,
        destination: str,
        config: dict[str, Any],
        threads: int,
        resources: dict[str, float],
    ) -> None:
        import ray

        self.ttl = ServingConfig.from_dict(config).job_ttl_s
        self.state: dict[str, Any] = {"job_id": job_id, "status": "running", "input": source, "output": destination}
        self.started = time.time()
        self._work = (
            ray.remote(run_job).options(**resources, max_retries=0).remote(job_id, source, destination, config, threads)
        )
        threading.Thread(target=self._wait, daemon=True).start()

    def _wait(self) -> None:
        import ray

        try:
            outcome = ray.get(self._work)
        except Exception as error:  # the task's worker died: a failure to report, never a silent one
            outcome = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
        self.state.update(outcome, seconds=round(time.time() - self.started, 3))
        threading.Timer(self.ttl, self._kill_self).start()

    def status(self) -> dict[str, Any]:
        return dict(self.state)

    def _kill_self(self) -> None:
        import ray

        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)


# ---------------------------------------------------------------------------------------------
# The HTTP ingress
# ---------------------------------------------------------------------------------------------


class _Stats:
    """Push latencies and frame times of the last minute, for /v1/metrics (this replica)."""

    def __init__(self) -> None:
        self.events: collections.deque[tuple[float, float, int]] = collections.deque(maxlen=100_000)
        self.frames_total = 0

    def add(self, latency: float, frames: int) -> None:
        self.events.append((time.monotonic(), latency, frames))
        self.frames_total += frames

    def summary(self) -> dict[str, Any]:
        now = time.monotonic()
        recent = [(lat, n) for t, lat, n in self.events if now - t <= 60.0]
        latencies = sorted(lat for lat, _ in recent)

        def pct(q: float) -> float | None:
            return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 3) if latencies else None

        return {
            "frames_total": self.frames_total,
            "frames_per_s_last_minute": round(sum(n for _, n in recent) / 60.0, 3),
            "push_latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "count": len(latencies)},
        }


def _page() -> bytes:
    return (resources.files("deblur") / "web" / "index.html").read_bytes()


def build_app(args: dict[str, Any] | None = None) -> Any:
    """Serve application builder: ``import_path: deblur.serving:build_app`` with ``args`` = ServingConfig."""
    import ray
    from ray import serve
    from ray.exceptions import RayActorError

    config = ServingConfig.from_dict(args)
    api = FastAPI(
        title="deblur",
        version=API_VERSION,
        description="Online video deblurring (STRCNN+DTB, Kim et al. ICCV 2017). "
        "Send an API key as `X-API-Key` when the server has one.",
    )

    @api.exception_handler(ApiError)
    async def api_error(_: Request, error: ApiError) -> JSONResponse:
        # A body cut off unread (too large, stalled): without "close" the HTTP server would keep the
        # connection and read the rest of the upload only to discard it.
        headers = {"Connection": "close"} if error.status in (408, 413) else None
        return JSONResponse({"detail": error.message}, status_code=error.status, headers=headers)

    @serve.deployment(
        ray_actor_options={"num_cpus": 0.25},
        autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 16},
        max_ongoing_requests=64,
    )
    @serve.ingress(api)
    class DeblurApi:
        def __init__(self, settings: dict[str, Any]) -> None:
            import torch

            from deblur.checkpoint import load_checkpoint
            from deblur.engine import check_precision

            self.config = ServingConfig.from_dict(settings)
            loaded = load_checkpoint(self.config.checkpoint)  # fail at start, not per request
            self.model_info = {
                "variant": loaded.config.variant,
                "m": loaded.config.m,
                "source": loaded.source,
                "precision": self.config.precision,
            }
            gpus = self.config.session_gpus
            if gpus is None:
                gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
            self.session_gpus = gpus
            # The actors' device, as they will resolve it: int8 needs CPU actors, fp16 GPU ones.
            device = self.config.device if self.config.device != "auto" else ("cuda" if gpus else "cpu")
            check_precision(self.config.precision, torch.device(device))
            # Sessions are named after the application: one application (its key, its model) never
            # reaches another's sessions, and max_sessions counts its own.
            self.session_prefix = f"{SESSION_PREFIX}{serve.get_replica_context().app_name}/"
            self.threads = max(1, int(self.config.session_cpus))
            self.stats = _Stats()
            self.sample: Path | None = None

        # -- helpers ------------------------------------------------------------------------

        def _authorize(self, request: Request | WebSocket) -> None:
            key = self.config.api_key()
            if key is None:
                return
            given = request.headers.get("x-api-key")
            auth = request.headers.get("authorization", "")
            if given is None and auth.lower().startswith("bearer "):
                given = auth[7:].strip()
            if given is None and isinstance(request, WebSocket):
                given = request.query_params.get("api_key")
            # Constant time: how long a wrong key takes must not tell how much of it was right.
            if given is None or not hmac.compare_digest(given.encode(), key.encode()):
                raise ApiError(401, "missing or wrong API key (send it as X-API-Key)")

        def _actor_options(self, name: str) -> dict[str, Any]:
            return {
                "name": name,
                "namespace": NAMESPACE,
                "lifetime": "detached",
                "num_cpus": self.config.session_cpus,
                "num_gpus": self.session_gpus,
                "max_restarts": 0,
            }

        def _count_sessions(self) -> int:
            names = [
                a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a.get("namespace") == NAMESPACE
            ]
            prefix = self.session_prefix
            return sum(n.startswith(prefix) and bool(_SESSION_ID.fullmatch(n[len(prefix) :])) for n in names)

        async def _open_session(self) -> tuple[str, Any, dict[str, Any]]:
            """A started session actor and its ``ready()`` info; 503 when none can start (no actor is left)."""
            limit = self.config.max_sessions
            # Replicas count apart: at the same instant two of them may each take the last place.
            if limit is not None and self._count_sessions() >= limit:
                raise ApiError(503, f"{limit} sessions are open, the limit (max_sessions): try again later")
            session_id = uuid.uuid4().hex
            actor = (
                ray.remote(SessionActor)
                .options(**self._actor_options(self.session_prefix + session_id))
                .remote(session_id, asdict(self.config), self.threads)
            )
            wait = self.config.session_start_timeout_s
            try:
                info = await asyncio.wait_for(actor.ready.remote(), wait)
            except TimeoutError:
                # Still pending (the cluster is full): never leave it to start later, unused.
                ray.kill(actor, no_restart=True)
                raise ApiError(
                    503,
                    f"no room for a new session: its actor ({self.config.session_cpus:g} CPU, "
                    f"{self.session_gpus:g} GPU) did not start within {wait:g} s; try again later",
                ) from None
            except RayActorError as error:
                raise ApiError(503, f"a new session's actor failed to start ({error}); try again later") from error
            except BaseException:  # e.g. the client went away: the actor is nobody's
                ray.kill(actor, no_restart=True)
                raise
            return session_id, actor, info

        def _session(self, session_id: str) -> Any:
            try:
                if not _SESSION_ID.fullmatch(session_id):
                    raise ValueError(session_id)
                return ray.get_actor(self.session_prefix + session_id, namespace=NAMESPACE)
            except ValueError:
                raise ApiError(
                    410, f"session {session_id} does not exist: it was closed, timed out, or its actor died"
                ) from None

        async def _call(self, session_id: str, method: str, *args: Any) -> Any:
            actor = self._session(session_id)
            try:
                return await getattr(actor, method).remote(*args)
            except SessionError as error:
                # Ray re-raises the actor's exception wrapped; its message is on the cause.
                cause = getattr(error, "cause", None) or error
                raise ApiError(error.status, str(cause)) from error
            except RayActorError as error:
                raise ApiError(
                    410, f"session {session_id} is lost: its actor died ({type(error).__name__}); open a new session"
                ) from error

        async def _read_body(self, request: Request, limit: int, path: Path | None = None) -> bytes | int:
            declared = request.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise ApiError(413, f"request body of {int(declared)} bytes exceeds the limit of {limit} bytes")
            size = 0
            chunks: list[bytes] = []
            sink = path.open("wb") if path is not None else None
            chunks_in = request.stream().__aiter__()
            try:
                while True:
                    # A client that stops sending (slow-loris) would hold the upload open forever.
                    try:
                        chunk = await asyncio.wait_for(anext(chunks_in), self.config.upload_timeout_s)
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        raise ApiError(
                            408, f"no request data for {self.config.upload_timeout_s:g} s: the upload was cut off"
                        ) from None
                    size += len(chunk)
                    if size > limit:
                        raise ApiError(413, f"request body exceeds the limit of {limit} bytes")
                    if sink is not None:
                        sink.write(chunk)
                    else:
                        chunks.append(chunk)
            finally:
                if sink is not None:
                    sink.close()
            return b"".join(chunks) if sink is None else size

        # -- routes -------------------------------------------------------------------------

        @api.get("/", response_class=HTMLResponse, include_in_schema=False)
        async def page(self) -> HTMLResponse:
            return HTMLResponse(_page())

        @api.get(f"/{API_VERSION}/health")
        async def health(self) -> dict[str, Any]:
            return {"status": "ok"}

        @api.get(f"/{API_VERSION}/ready")
        async def ready(self) -> dict[str, Any]:
            return {"status": "ready", "model": self.model_info, "session_gpus": self.session_gpus}

        @api.get(f"/{API_VERSION}/metrics")
        async def metrics(self, request: Request) -> dict[str, Any]:
            self._authorize(request)
            names = [
                a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a.get("namespace") == NAMESPACE
            ]
            return {
                "open_sessions": self._count_sessions(),  # of this application
                "max_sessions": self.config.max_sessions,
                "jobs": sum(n.startswith(JOB_PREFIX) for n in names),  # running, or finished and kept
                **self.stats.summary(),
            }

        @api.post(f"/{API_VERSION}/sessions", status_code=201)
        async def open_session(self, request: Request) -> dict[str, Any]:
            self._authorize(request)
            _, _, info = await self._open_session()
            return {**info, "timeout_s": self.config.session_timeout_s}

        @api.get(f"/{API_VERSION}/sessions/{{session_id}}")
        async def session_status(self, session_id: str, request: Request) -> dict[str, Any]:
            self._authorize(request)
            return await self._call(session_id, "status")

        @api.post(f"/{API_VERSION}/sessions/{{session_id}}/frames")
        async def push_frame(
            self,
            session_id: str,
            request: Request,
            seq: int,
            width: int | None = None,
            height: int | None = None,
            output: str | None = None,
        ) -> dict[str, Any]:
            self._authorize(request)
            self._session(session_id)  # an unknown session is the first thing to report
            limit = self.config.max_width * self.config.max_height * 3 + 1024
            body = await self._read_body(request, limit)
            assert isinstance(body, bytes)
            kind = request.headers.get("content-type", "application/octet-stream")
            frame = decode_frame(body, kind, width=width, height=height, config=self.config)
            fmt = _check_format(output or ("raw" if "octet-stream" in kind or "raw" in kind else "png"))
            started = time.perf_counter()
            ready = await self._call(session_id, "push", seq, frame)
            self.stats.add(time.perf_counter() - started, len(ready))
            return {"session_id": session_id, "seq": seq, "format": fmt, "frames": _frames_json(ready, fmt)}

        @api.delete(f"/{API_VERSION}/sessions/{{session_id}}")
        async def close_session(self, session_id: str, request: Request, output: str = "png") -> dict[str, Any]:
            self._authorize(request)
            _check_format(output)  # before finishing: a refused close leaves the session open
            tail = await self._call(session_id, "finish")
            return {"session_id": session_id, "closed": True, "format": output, "frames": _frames_json(tail, output)}

        @api.websocket(f"/{API_VERSION}/sessions/{{session_id}}/stream")
        async def stream(self, websocket: WebSocket, session_id: str) -> None:
            """Binary messages in: frames (PNG/JPEG, or raw after a {"format": "raw", ...} text
            message); binary messages out: deblurred frames in order. Send {"type": "finish"}
            to receive the last m frames and a {"type": "done"} message. Bad input gets a
            {"type": "error", "status": 4xx, "detail": ...} message, then the socket closes with code
            4000 + status (e.g. 4422) and the detail as its reason."""
            await websocket.accept()
            fmt, width, height, seq = "png", None, None, 0
            try:
                self._authorize(websocket)
                while True:
                    message = await websocket.receive()
                    if message.get("type") == "websocket.disconnect":
                        return
                    if message.get("text") is not None:
                        control = parse_control(message["text"])
                        if control.get("type") == "finish":
                            tail = await self._call(session_id, "finish")
                            for _, frame in tail:
                                await websocket.send_bytes(encode_frame(frame, fmt))
                            await websocket.send_text(json.dumps({"type": "done", "frames": seq}))
                            await websocket.close()
                            return
                        fmt = control.get("format", fmt)
                        width, height = control.get("width", width), control.get("height", height)
                        continue
                    kind = "application/octet-stream" if fmt == "raw" else "image/png"
                    frame = decode_frame(message["bytes"], kind, width=width, height=height, config=self.config)
                    started = time.perf_counter()
                    ready = await self._call(session_id, "push", seq, frame)
                    self.stats.add(time.perf_counter() - started, len(ready))
                    seq += 1
                    for _, out in ready:
                        await websocket.send_bytes(encode_frame(out, fmt))
            except ApiError as error:
                await websocket.send_text(
                    json.dumps({"type": "error", "status": error.status, "detail": error.message})
                )
                # A close reason holds at most 123 bytes of UTF-8.
                reason = error.message.encode()[:123].decode(errors="ignore")
                await websocket.close(code=4000 + error.status, reason=reason)
            except WebSocketDisconnect:
                return

        @api.post(f"/{API_VERSION}/videos")
        async def deblur_video(
            self, request: Request, lossless: bool = False, filename: str = "video.mp4"
        ) -> StreamingResponse:
            """Body: a video file. Answer: the deblurred video (same frames, timing and audio)."""
            from deblur.video import EncoderOptions, VideoError, probe_video, transform_video

            self._authorize(request)
            suffix = Path(filename).suffix.lower() or ".mp4"
            if suffix not in {".mp4", ".mov", ".mkv", ".m4v", ".webm", ".avi", ".nut"}:
                raise ApiError(422, f"unsupported file type {suffix!r}")
            workdir = Path(tempfile.mkdtemp(prefix="deblur-serve-"))
            source = workdir / f"input{suffix}"
            # Browsers play MP4; other containers keep their own.
            target = workdir / f"output{suffix if suffix in {'.mkv', '.mov', '.nut'} else '.mp4'}"
            try:
                await self._read_body(request, self.config.max_upload_bytes, source)
                try:
                    info = await asyncio.to_thread(probe_video, source, name=filename)
                except VideoError as error:
                    raise ApiError(422, str(error)) from error
                check_video_limits(info, self.config, name=filename)
                _, actor, _ = await self._open_session()
                processor = _FrameLimit(_RemoteProcessor(actor, self.stats), self.config.max_frames, filename)
                encoder = EncoderOptions(lossless=lossless, crf=self.config.crf)
                try:
                    await asyncio.to_thread(transform_video, source, target, processor, encoder=encoder, name=filename)
                except VideoError as error:
                    raise ApiError(422, str(error)) from error
                except RayActorError as error:
                    raise ApiError(503, f"the actor deblurring {filename} died; try again") from error
                finally:
                    ray.kill(actor)
            except BaseException:
                _remove(workdir)
                raise
            media = {".mkv": "video/x-matroska", ".mov": "video/quicktime", ".nut": "application/octet-stream"}
            return StreamingResponse(
                _stream_file(target, workdir),
                media_type=media.get(target.suffix, "video/mp4"),
                headers={
                    "Content-Disposition": f'attachment; filename="deblurred{target.suffix}"',
                    "Content-Length": str(target.stat().st_size),
                    "X-Deblur-Frames": str(processor.pushed),
                },
            )

        @api.get(f"/{API_VERSION}/sample")
        async def sample(self) -> Response:
            if self.sample is None or not self.sample.exists():
                self.sample = await asyncio.to_thread(_make_sample_video)
            return Response(self.sample.read_bytes(), media_type="video/mp4")

        @api.post(f"/{API_VERSION}/jobs", status_code=202)
        async def submit_job(self, request: Request) -> dict[str, Any]:
            from deblur import storage

            self._authorize(request)
            try:
                body = json.loads(await self._read_body(request, 64 * 1024) or b"{}")
            except ValueError as error:
                raise ApiError(422, f"the body must be JSON: {error}") from error
            if not isinstance(body, dict) or set(body) - {"input", "output"}:
                raise ApiError(422, 'the body must be {"input": "s3://...", "output": "s3://..."}')
            source = check_uri(body.get("input"), self.config, what="input")
            destination = check_uri(body.get("output"), self.config, what="output")
            if source == destination:
                raise ApiError(422, "input and output must differ")
            if not await asyncio.to_thread(storage.exists, source):
                raise ApiError(404, f"input {source} does not exist")
            # The upload limit holds for jobs too (object_version is "size:etag"); the job's actor
            # checks the resolution and length.
            size = int((await asyncio.to_thread(storage.object_version, source)).split(":", 1)[0])
            if size > self.config.max_upload_bytes:
                raise ApiError(
                    413, f"input {source} has {size} bytes, over the limit of {self.config.max_upload_bytes} bytes"
                )
            job_id = uuid.uuid4().hex
            options = self._actor_options(JOB_PREFIX + job_id)
            work = {"num_cpus": options.pop("num_cpus"), "num_gpus": options.pop("num_gpus")}
            ray.remote(JobActor).options(**options, num_cpus=0).remote(
                job_id, source, destination, asdict(self.config), self.threads, work
            )
            return {"job_id": job_id, "status": "running", "input": source, "output": destination}

        @api.get(f"/{API_VERSION}/jobs/{{job_id}}")
        async def job_status(self, job_id: str, request: Request) -> dict[str, Any]:
            self._authorize(request)
            try:
                actor = ray.get_actor(JOB_PREFIX + job_id, namespace=NAMESPACE)
                return await actor.status.remote()
            except (ValueError, RayActorError):
                raise ApiError(404, f"job {job_id} is unknown or expired") from None

    return DeblurApi.bind(asdict(config))


class _RemoteProcessor:
    """``transform_video``'s frame processor backed by a session actor (one frame in flight)."""

    def __init__(self, actor: Any, stats: _Stats) -> None:
        self.actor, self.stats = actor, stats
        self.pushed = 0

    def push(self, frame: np.ndarray) -> list[np.ndarray]:
        import ray

        started = time.perf_counter()
        ready = ray.get(self.actor.push.remote(self.pushed, frame))
        self.stats.add(time.perf_counter() - started, len(ready))
        self.pushed += 1
        return [out for _, out in ready]

    def finish(self) -> list[np.ndarray]:
        import ray

        return [out for _, out in ray.get(self.actor.finish.remote())]


class _FrameLimit:
    """A frame processor that refuses frame ``max_frames + 1`` (of a video that did not declare its length)."""

    def __init__(self, processor: Any, max_frames: int, name: str) -> None:
        self.processor, self.max_frames, self.name = processor, max_frames, name
        self.pushed = 0

    def push(self, frame: np.ndarray) -> list[np.ndarray]:
        if self.pushed >= self.max_frames:
            raise ApiError(422, f"{self.name}: the video has more than {self.max_frames} frames (the limit)")
        self.pushed += 1
        return self.processor.push(frame)

    def finish(self) -> list[np.ndarray]:
        return self.processor.finish()


def _frames_json(frames: list[tuple[int, np.ndarray]], fmt: str) -> list[dict[str, Any]]:
    return [
        {
            "index": index,
            "width": int(frame.shape[1]),
            "height": int(frame.shape[0]),
            "data": base64.b64encode(encode_frame(frame, fmt)).decode("ascii"),
        }
        for index, frame in frames
    ]


async def _stream_file(path: Path, workdir: Path) -> AsyncIterator[bytes]:
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                yield chunk
    finally:
        _remove(workdir)


def _remove(workdir: Path) -> None:
    import shutil

    shutil.rmtree(workdir, ignore_errors=True)


def _make_sample_video() -> Path:
    from deblur.demo import make_sample
    from deblur.video import EncoderOptions, write_video

    blurry, _, fps = make_sample(seconds=1.0, seed=7, tau=11, stride=16)
    path = Path(tempfile.mkdtemp(prefix="deblur-sample-")) / "sample.mp4"
    write_video(path, blurry, fps=fps, encoder=EncoderOptions(crf=16))
    return path
