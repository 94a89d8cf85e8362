"""The HTTP ingress: ``DeblurApi``, a FastAPI app under Ray Serve (autoscaled), and ``build_app``.

    GET  /                              the viewer page (upload, side by side, download)
    GET  /v1/health, /v1/ready          liveness, readiness (model loaded)
    GET  /v1/metrics                    open sessions, frames/s, push latency (this replica)
    POST /v1/videos                     body: a video file -> the deblurred video (streamed back)
    GET  /v1/videos/progress/{token}    frames done, fps, ETA of an upload sent with ?progress=token
    GET  /v1/sample                     a synthetic blurry sample video (for the page)
    POST /v1/jobs                       {"input": "s3://...", "output": "s3://..."} -> {"job_id"}
    GET  /v1/jobs/{id}                  status of a job
    POST /v1/sessions                   -> {"session_id"}
    POST /v1/sessions/{id}/frames?seq=N body: one frame (raw RGB with width/height, or PNG/JPEG)
                                        -> the frames that became ready (m frames behind)
    DELETE /v1/sessions/{id}            close: the last m frames
    WS   /v1/sessions/{id}/stream       the same stream over a WebSocket

The ingress only parses, checks and routes; the work runs in the actors of ``deblur.serving.actors``.
Importing this module imports Ray Serve: ``deblur.serving`` imports it only when an app is built.
"""

import asyncio
import contextlib
import functools
import json
import logging
import re
import secrets
import tempfile
import time
import uuid
from importlib import resources
from pathlib import Path
from typing import Any

import ray

# FastAPI reads the routes' type hints at run time (Serve wraps the methods, so string annotations
# would not resolve): this module does not use ``from __future__ import annotations``.
from fastapi import Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi_offline import FastAPIOffline
from ray import serve
from ray.exceptions import RayActorError

from deblur.serving.actors import (
    NAMESPACE,
    SESSION_GROUPS,
    SESSION_ID,
    SESSION_PREFIX,
    STATUS_METHODS,
    SessionActor,
    SessionError,
    named_actors,
    request_session_nodes,
)
from deblur.serving.admission import RETRY_AFTER_S, Admission, ClusterCapacity, QueueFullError
from deblur.serving.config import ServingConfig, http_host, open_endpoint_warning, shown_source
from deblur.serving.jobs import JOB_PREFIX, JobActor
from deblur.serving.stream import refuse, run_stream
from deblur.serving.wire import (
    API_VERSION,
    FRAME_BODY,
    JOB_BODY,
    MAX_JOB_CHUNKS,
    VIDEO_BODY,
    ApiError,
    PushStats,
    check_api_key,
    check_format,
    check_uri,
    check_video_limits,
    decode_frame,
    frames_json,
    issued_session,
    make_sample_video,
    new_session_id,
    progress_json,
    read_body,
    remove_tree,
    stream_file,
)

__all__ = ["DeblurApi", "api", "build_app"]

logger = logging.getLogger("deblur.serving")

# /docs and /redoc from assets in the fastapi-offline package, not a CDN: they work offline.
api = FastAPIOffline(
    title="deblur",
    version=API_VERSION,
    description="Online video deblurring (STRCNN+DTB, Kim et al. ICCV 2017). "
    "Send an API key as `X-API-Key` when the server has one.",
)


@api.exception_handler(ApiError)
async def api_error(_: Request, error: ApiError) -> JSONResponse:
    # A body cut off unread (too large, stalled): without "close" the HTTP server would keep the
    # connection and read the rest of the upload only to discard it.
    headers = {"Connection": "close"} if error.status in (408, 413) else {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    return JSONResponse({"detail": error.message}, status_code=error.status, headers=headers)


# Serve pickles the class by value when it is decorated: whatever its methods use must be defined
# above this line.
PROGRESS_TOKEN = re.compile(r"[0-9a-f]{8,64}")
INGRESS_CPUS = 0.25  # each replica's num_cpus below (a literal there: the infra tests read it)


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25},
    autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 16},
    max_ongoing_requests=64,
)
@serve.ingress(api)
class DeblurApi:
    """The ingress deployment; ``settings`` are a ``ServingConfig`` as a dict."""

    def __init__(self, settings: dict[str, Any], secret: bytes | None = None) -> None:
        import torch

        from deblur.checkpoint import load_checkpoint
        from deblur.precision import check_precision, choose_precision

        self.config = ServingConfig.from_dict(settings)
        loaded = load_checkpoint(self.config.checkpoint)  # fail at start, not per request
        self.model_info = {
            "variant": loaded.config.variant,
            "m": loaded.config.m,
            "source": shown_source(loaded.source),  # a file's name, never the server's path
            "precision": self.config.precision,
        }
        gpus = self.config.session_gpus
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        self.session_gpus = gpus
        # The actors' device, as they will resolve it: int8 needs CPU actors, fp16 GPU ones.
        device = self.config.device if self.config.device != "auto" else ("cuda" if gpus else "cpu")
        check_precision(self.config.precision, torch.device(device))
        if self.config.precision == "auto":  # what the actors will pick (each checks it on its first frames)
            chosen, why = choose_precision(torch.device(device))
            self.model_info["precision_auto"] = f"{chosen} ({why})"
        # Sessions are named after the application: one application (its key, its model) never
        # reaches another's sessions, and max_sessions counts its own.
        self.session_prefix = f"{SESSION_PREFIX}{serve.get_replica_context().app_name}/"
        self.threads = self.config.session_threads or max(1, int(self.config.session_cpus))
        self.stats = PushStats()
        self.secret = secret or secrets.token_bytes(16)  # build_app gives all replicas one
        self.sample: Path | None = None
        self.uploads: dict[str, tuple[Any, int | None]] = {}  # progress token -> (actor, frames declared)
        self._capacity = ClusterCapacity(
            ray.cluster_resources,
            fixed=self.config.max_sessions,
            session_cpus=self.config.session_cpus,
            session_gpus=self.session_gpus,
            reserved_cpus=INGRESS_CPUS,
        )
        self.admission = Admission(
            capacity=self._capacity,
            open_sessions=self._count_sessions,
            max_queue=self.config.max_queue,
            wait_s=self.config.queue_wait_s,
        )
        warning = open_endpoint_warning(http_host(), self.config)
        if warning:
            logger.warning(warning)

    # -- helpers ------------------------------------------------------------------------

    def _authorize(self, request: Request | WebSocket) -> None:
        check_api_key(request.headers, request.query_params if isinstance(request, WebSocket) else {}, self.config)

    def _actor_options(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "namespace": NAMESPACE,
            "lifetime": "detached",
            "num_cpus": self.config.session_cpus,
            "num_gpus": self.session_gpus,
            "max_restarts": 0,
        }

    def _admit(self, ticket: str | None) -> Any:
        """None: start now; else the 202 answer with the request's place in the queue."""
        try:
            queued = self.admission.try_enter(ticket)
        except QueueFullError as error:
            raise ApiError(503, str(error), retry_after=RETRY_AFTER_S * 5) from None
        if queued is None:
            return None
        bundle = {"GPU": self.session_gpus} if self.session_gpus else {"CPU": self.config.session_cpus}
        request_session_nodes(bundle, self._count_sessions() + queued.waiting)
        return JSONResponse(queued.body(), status_code=202, headers={"Retry-After": str(RETRY_AFTER_S)})

    def _count_sessions(self) -> int:
        prefix = self.session_prefix
        return sum(n.startswith(prefix) and bool(SESSION_ID.fullmatch(n[len(prefix) :])) for n in named_actors())

    async def _open_session(self) -> tuple[str, Any, dict[str, Any]]:
        """A started session actor and its ``ready()`` info; 503 when none can start (no actor is left)."""
        limit = self.config.max_sessions
        # Replicas count apart: at the same instant two of them may each take the last place.
        if limit is not None and self._count_sessions() >= limit:
            raise ApiError(503, f"{limit} sessions are open, the limit (max_sessions): try again later")
        session_id = new_session_id(self.secret)
        actor = (
            ray.remote(concurrency_groups=SESSION_GROUPS)(SessionActor)
            .options(**self._actor_options(self.session_prefix + session_id))
            .remote(session_id, self.config.to_dict(), self.threads)
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
            if not SESSION_ID.fullmatch(session_id):
                raise ValueError(session_id)
            return ray.get_actor(self.session_prefix + session_id, namespace=NAMESPACE)
        except ValueError:
            if issued_session(session_id, self.secret):
                raise ApiError(
                    410, f"session {session_id} has ended: it was closed, timed out, or its actor died"
                ) from None
            raise ApiError(404, f"session {session_id} does not exist") from None

    async def _call(self, session_id: str, method: str, *args: Any) -> Any:
        call = getattr(self._session(session_id), method)
        if method in STATUS_METHODS:  # answered beside a running push or upload
            call = call.options(concurrency_group="status")
        return await self._result(session_id, call.remote(*args))

    async def _result(self, session_id: str, call: Any) -> Any:
        """The outcome of a session actor's call, its errors as ``ApiError``."""
        try:
            return await call
        except SessionError as error:
            # Ray re-raises the actor's exception wrapped; its message is on the cause.
            cause = getattr(error, "cause", None) or error
            raise ApiError(error.status, str(cause)) from error
        except RayActorError as error:
            raise ApiError(
                410, f"session {session_id} is lost: its actor died ({type(error).__name__}); open a new session"
            ) from error

    async def _abandon(self, session_id: str) -> None:
        """A stream gone without finishing: its actor is freed after ``resume_s`` (unless the
        stream resumes), not at the idle timeout."""
        with contextlib.suppress(ApiError):
            await self._call(session_id, "abandon", self.config.resume_s)

    async def _read_body(self, request: Request, limit: int, path: Path | None = None) -> bytes | int:
        return await read_body(request, limit, path, stall_s=self.config.upload_timeout_s)

    # -- routes -------------------------------------------------------------------------

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> HTMLResponse:
        return HTMLResponse((resources.files("deblur") / "web" / "index.html").read_bytes())

    @api.get(f"/{API_VERSION}/health")
    async def health(self) -> dict[str, Any]:
        return {"status": "ok"}

    @api.get(f"/{API_VERSION}/ready")
    async def ready(self) -> dict[str, Any]:
        sessions = {"open": self._count_sessions(), "max": self._capacity(), "queued": self.admission.waiting}
        return {"status": "ready", "model": self.model_info, "session_gpus": self.session_gpus, "sessions": sessions}

    @api.get(f"/{API_VERSION}/metrics")
    async def metrics(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        names = named_actors()
        return {
            "open_sessions": self._count_sessions(),  # of this application
            "max_sessions": self._capacity(),
            "queued": self.admission.waiting,  # in this replica's queue
            "jobs": sum(n.startswith(JOB_PREFIX) for n in names),  # running, or finished and kept
            **self.stats.summary(),
        }

    @api.post(f"/{API_VERSION}/sessions", status_code=201)
    async def open_session(self, request: Request, ticket: str | None = None) -> Any:
        """201: a session. 202: queued, with its place and a ticket: ask again with ``?ticket=``."""
        self._authorize(request)
        queued = self._admit(ticket)
        if queued is not None:
            return queued
        _, _, info = await self._open_session()
        return {**info, "timeout_s": self.config.session_timeout_s}

    @api.get(f"/{API_VERSION}/sessions/{{session_id}}")
    async def session_status(self, session_id: str, request: Request) -> dict[str, Any]:
        self._authorize(request)
        return await self._call(session_id, "status")

    @api.post(f"/{API_VERSION}/sessions/{{session_id}}/frames", openapi_extra=FRAME_BODY)
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
        fmt = check_format(output or ("raw" if "octet-stream" in kind or "raw" in kind else "png"))
        started = time.perf_counter()
        ready = await self._call(session_id, "push", seq, frame)
        self.stats.add(time.perf_counter() - started, len(ready))
        return {"session_id": session_id, "seq": seq, "format": fmt, "frames": frames_json(ready, fmt)}

    @api.delete(f"/{API_VERSION}/sessions/{{session_id}}")
    async def close_session(self, session_id: str, request: Request, output: str = "png") -> dict[str, Any]:
        self._authorize(request)
        check_format(output)  # before finishing: a refused close leaves the session open
        tail = await self._call(session_id, "finish")
        self.stats.add(None, len(tail))
        return {"session_id": session_id, "closed": True, "format": output, "frames": frames_json(tail, output)}

    @api.websocket(f"/{API_VERSION}/sessions/{{session_id}}/stream")
    async def stream(self, websocket: WebSocket, session_id: str) -> None:
        """The session as a WebSocket stream (protocol: ``deblur.serving.stream``)."""
        await websocket.accept()
        try:
            self._authorize(websocket)
            actor = self._session(session_id)
        except ApiError as error:
            await refuse(websocket, error)
            return
        await run_stream(
            websocket,
            actor=actor,
            result=functools.partial(self._result, session_id),
            abandon=functools.partial(self._abandon, session_id),
            stats=self.stats,
            config=self.config,
        )

    @api.post(f"/{API_VERSION}/videos", openapi_extra=VIDEO_BODY)
    async def deblur_video(
        self, request: Request, lossless: bool = False, filename: str = "video.mp4", progress: str | None = None
    ) -> StreamingResponse:
        """Body: a video file. Answer: the deblurred video (same frames, timing and audio)."""
        from deblur.video import VideoError, probe_video

        self._authorize(request)
        if progress is not None and not PROGRESS_TOKEN.fullmatch(progress):
            raise ApiError(422, "progress must be 8-64 hex digits (a token the client makes up)")
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
            try:  # the body is in: wait for a place inside the request
                await self.admission.enter()
            except QueueFullError as error:
                raise ApiError(503, str(error), retry_after=RETRY_AFTER_S * 5) from None
            _, actor, _ = await self._open_session()
            if progress is not None:
                self.uploads[progress] = (actor, info.frames)
            try:
                data = await asyncio.to_thread(source.read_bytes)
                output, frames = await actor.deblur_upload.remote(
                    data, filename, (suffix, target.suffix), lossless, self.config.crf, self.config.max_frames
                )
            except SessionError as error:
                raise ApiError(error.status, str(getattr(error, "cause", None) or error)) from error
            except RayActorError as error:
                raise ApiError(503, f"the actor deblurring {filename} died; try again") from error
            finally:
                self.uploads.pop(progress or "", None)
                ray.kill(actor)
            await asyncio.to_thread(target.write_bytes, output)
            self.stats.add(None, frames)
        except BaseException:
            remove_tree(workdir)
            raise
        media = {".mkv": "video/x-matroska", ".mov": "video/quicktime", ".nut": "application/octet-stream"}
        return StreamingResponse(
            stream_file(target, workdir),
            media_type=media.get(target.suffix, "video/mp4"),
            headers={
                "Content-Disposition": f'attachment; filename="deblurred{target.suffix}"',
                "Content-Length": str(target.stat().st_size),
                "X-Deblur-Frames": str(frames),
            },
        )

    @api.get(f"/{API_VERSION}/videos/progress/{{token}}")
    async def upload_progress(self, token: str, request: Request) -> dict[str, Any]:
        """The progress of an upload sent with ``?progress=token``, while it runs on this replica."""
        self._authorize(request)
        if token not in self.uploads:
            raise ApiError(404, "no upload with this progress token is running here")
        actor, total = self.uploads[token]
        return progress_json(await actor.progress.options(concurrency_group="status").remote(), total)

    @api.get(f"/{API_VERSION}/sample")
    async def sample(self) -> Response:
        if self.sample is None or not self.sample.exists():
            self.sample = await asyncio.to_thread(make_sample_video)
        return Response(self.sample.read_bytes(), media_type="video/mp4")

    @api.post(f"/{API_VERSION}/jobs", status_code=202, openapi_extra=JOB_BODY)
    async def submit_job(self, request: Request) -> dict[str, Any]:
        from deblur import storage

        self._authorize(request)
        try:
            body = json.loads(await self._read_body(request, 64 * 1024) or b"{}")
        except ValueError as error:
            raise ApiError(422, f"the body must be JSON: {error}") from error
        if not isinstance(body, dict) or set(body) - {"input", "output", "chunks"}:
            raise ApiError(422, 'the body must be {"input": "s3://...", "output": "s3://..."[, "chunks": N]}')
        chunks = body.get("chunks", 1)
        if not isinstance(chunks, int) or isinstance(chunks, bool) or not 1 <= chunks <= MAX_JOB_CHUNKS:
            raise ApiError(422, f"chunks must be an integer from 1 to {MAX_JOB_CHUNKS}, got {chunks!r}")
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
            job_id, source, destination, self.config.to_dict(), self.threads, work, chunks
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


def build_app(args: dict[str, Any] | None = None) -> Any:
    """Serve application builder: ``import_path: deblur.serving:build_app`` with ``args`` = ServingConfig."""
    config = ServingConfig.from_dict(args)  # a bad setting fails here, before any replica starts
    # One secret for all replicas of this deployment: any of them can tell an id it issued.
    return DeblurApi.bind(config.to_dict(), secrets.token_bytes(16))
