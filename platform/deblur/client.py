"""Python client of the deblur HTTP endpoint (``deblur.serving``): whole videos, S3 jobs, live sessions.

    client = DeblurClient("http://127.0.0.1:8000", api_key=None)
    client.deblur_video("in.mp4", "out.mp4")                 # upload, streamed back
    with client.session() as session:                        # live: m frames of latency
        for frame in frames:
            for sharp in session.push(frame):
                ...
        tail = session.close()
    for sharp in client.stream(frames):                      # the same over a WebSocket
        ...
    job = client.submit_job("s3://in/a.mp4", "s3://out/a.mp4"); client.wait_job(job)

Errors from the server raise ``EndpointError`` with its status and message.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

__all__ = ["DeblurClient", "EndpointError", "Session"]

# Frames a stream sends beyond the m the model needs before it answers: within the server's
# window (serving.stream.WINDOW), so that neither side waits for the other.
IN_FLIGHT = 2


class EndpointError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message = status, message


def _raise_for(response: Any) -> None:
    if response.status_code < 400:
        return
    try:
        message = response.json().get("detail", response.text)
    except ValueError:
        message = response.text
    raise EndpointError(response.status_code, str(message))


def _decode(item: dict[str, Any], fmt: str) -> np.ndarray:
    data = base64.b64decode(item["data"])
    if fmt == "raw":
        return np.frombuffer(data, np.uint8).reshape(item["height"], item["width"], 3)
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


class Session:
    """One live session: push frames in order, get deblurred frames back (m behind), close."""

    def __init__(self, client: DeblurClient, info: dict[str, Any], fmt: str) -> None:
        self.client, self.info, self.fmt = client, info, fmt
        self.id: str = info["session_id"]
        self.seq = 0
        self.closed = False

    def push(self, frame: np.ndarray) -> list[np.ndarray]:
        if self.fmt == "raw":
            h, w = frame.shape[:2]
            body, kind, params = (
                np.ascontiguousarray(frame, np.uint8).tobytes(),
                "application/octet-stream",
                {
                    "width": w,
                    "height": h,
                },
            )
        else:
            from PIL import Image

            buffer = io.BytesIO()
            Image.fromarray(frame).save(buffer, format="PNG", compress_level=1)
            body, kind, params = buffer.getvalue(), "image/png", {}
        response = self.client._http.post(
            f"/v1/sessions/{self.id}/frames",
            params={"seq": self.seq, **params},
            content=body,
            headers={"Content-Type": kind},
        )
        _raise_for(response)
        self.seq += 1
        payload = response.json()
        return [_decode(item, payload["format"]) for item in payload["frames"]]

    def status(self) -> dict[str, Any]:
        response = self.client._http.get(f"/v1/sessions/{self.id}")
        _raise_for(response)
        return response.json()

    def close(self) -> list[np.ndarray]:
        """End the session: the last m frames."""
        self.closed = True
        response = self.client._http.delete(f"/v1/sessions/{self.id}", params={"output": self.fmt})
        _raise_for(response)
        payload = response.json()
        return [_decode(item, payload["format"]) for item in payload["frames"]]

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        # Left without close() (an exception, or the frames were not wanted): free the server's
        # actor now rather than at its idle timeout. An error here must not hide the caller's.
        if not self.closed:
            import httpx

            with contextlib.suppress(EndpointError, httpx.HTTPError):
                self.close()


class DeblurClient:
    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 600.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("DEBLUR_API_KEY")
        headers = {"X-API-Key": self.api_key} if self.api_key else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DeblurClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- service ----------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        response = self._http.get("/v1/health")
        _raise_for(response)
        return response.json()

    def ready(self) -> dict[str, Any]:
        response = self._http.get("/v1/ready")
        _raise_for(response)
        return response.json()

    def metrics(self) -> dict[str, Any]:
        response = self._http.get("/v1/metrics")
        _raise_for(response)
        return response.json()

    # -- whole videos -----------------------------------------------------------------------

    def deblur_video(
        self, source: str | os.PathLike[str], destination: str | os.PathLike[str], *, lossless: bool = False
    ) -> int:
        """Upload a video file (streamed), write the deblurred video (streamed); returns its frames."""
        source, destination = Path(source), Path(destination)
        tmp = destination.with_name(f".{destination.name}.partial")

        def chunks() -> Iterator[bytes]:
            with source.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    yield chunk

        params = {"filename": source.name, "lossless": str(lossless).lower()}
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(source.stat().st_size)}
        with self._http.stream("POST", "/v1/videos", params=params, content=chunks(), headers=headers) as response:
            if response.status_code >= 400:
                response.read()
                _raise_for(response)
            try:
                with tmp.open("wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
                os.replace(tmp, destination)
            finally:
                tmp.unlink(missing_ok=True)
            return int(response.headers.get("X-Deblur-Frames", "0"))

    # -- S3 jobs ----------------------------------------------------------------------------

    def submit_job(self, source: str, destination: str) -> str:
        response = self._http.post("/v1/jobs", json={"input": source, "output": destination})
        _raise_for(response)
        return response.json()["job_id"]

    def job(self, job_id: str) -> dict[str, Any]:
        response = self._http.get(f"/v1/jobs/{job_id}")
        _raise_for(response)
        return response.json()

    def wait_job(self, job_id: str, *, timeout: float = 3600.0, poll: float = 1.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            state = self.job(job_id)
            if state["status"] != "running":
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still running after {timeout:g} s")
            time.sleep(poll)

    # -- live sessions ----------------------------------------------------------------------

    def session(self, *, fmt: str = "raw", on_queue: Callable[[int], None] | None = None) -> Session:
        """Open a session; ``fmt`` is how frames travel: ``raw`` RGB (fast, exact) or ``png``.

        When every session is taken the server queues the request: this waits in the queue, calling
        ``on_queue(position)`` (1 = next) each time it asks again, until the session opens.
        """
        if fmt not in ("raw", "png"):
            raise ValueError(f"fmt must be raw or png, got {fmt!r}")
        response = self._http.post("/v1/sessions")
        while response.status_code == 202:
            queued = response.json()
            if on_queue is not None:
                on_queue(int(queued["position"]))
            time.sleep(float(response.headers.get("retry-after", queued.get("retry_after_s", 1))))
            response = self._http.post("/v1/sessions", params={"ticket": queued["ticket"]})
        _raise_for(response)
        return Session(self, response.json(), fmt)

    def stream(
        self, frames: Iterable[np.ndarray], *, fmt: str = "raw", on_queue: Callable[[int], None] | None = None
    ) -> Iterator[np.ndarray]:
        """Deblur frames through a session's WebSocket; yields exactly as many frames as it got.
        ``on_queue`` as in ``session``."""
        from websockets.sync.client import connect

        session = self.session(fmt=fmt, on_queue=on_queue)
        ws_url = self.url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        headers = {"X-API-Key": self.api_key} if self.api_key else None
        # A caller that stops reading (or fails) closes the socket, which ends the session on the server.
        with connect(f"{ws_url}/v1/sessions/{session.id}/stream", additional_headers=headers, max_size=None) as ws:
            configured = False
            pending = 0
            for frame in frames:
                h, w = frame.shape[:2]
                if not configured:
                    ws.send(json.dumps({"format": fmt, "width": w, "height": h}))
                    configured = True
                ws.send(_to_wire(frame, fmt))
                pending += 1
                # The server answers frame n after frame n+m. Up to IN_FLIGHT more are sent ahead, so
                # that the next frame is there when the session finishes one.
                while pending > session.info["m"] + IN_FLIGHT:
                    yield self._receive(ws, fmt, h, w)
                    pending -= 1
            ws.send(json.dumps({"type": "finish"}))
            while True:
                message = ws.recv()
                if isinstance(message, str):
                    control = json.loads(message)
                    if control.get("type") == "error":
                        raise EndpointError(int(control["status"]), control["detail"])
                    return
                yield _from_wire(message, fmt, h, w)

    @staticmethod
    def _receive(ws: Any, fmt: str, h: int, w: int) -> np.ndarray:
        message = ws.recv()
        if isinstance(message, str):
            control = json.loads(message)
            raise EndpointError(int(control.get("status", 500)), control.get("detail", message))
        return _from_wire(message, fmt, h, w)


def _to_wire(frame: np.ndarray, fmt: str) -> bytes:
    if fmt == "raw":
        return np.ascontiguousarray(frame, np.uint8).tobytes()
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _from_wire(data: bytes, fmt: str, h: int, w: int) -> np.ndarray:
    if fmt == "raw":
        return np.frombuffer(data, np.uint8).reshape(h, w, 3)
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
