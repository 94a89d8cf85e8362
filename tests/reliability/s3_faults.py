"""A fault-injecting HTTP proxy in front of an S3 server, for the reliability tests (standard library only).

    with FaultProxy(upstream="http://127.0.0.1:PORT") as proxy:
        os.environ["DEBLUR_S3_ENDPOINT"] = proxy.url      # the code under test talks to the proxy
        proxy.fail(count=6, statuses=(503, 500))          # the next 6 requests: SlowDown, InternalError, ...
        proxy.fail(seconds=3.0, when=lambda m, p: m == "PUT")   # every PUT for 3 s from the next one
        proxy.go_down(); ...; proxy.come_up()             # connections refused, then back on the same port

A failed request is answered before anything is forwarded, so the server never sees it (what S3
does when it throttles, and what a client must retry). Every request is logged with its outcome.
``on_request`` is called for each request before it is handled (tests use it to act mid-job).
"""

from __future__ import annotations

import contextlib
import http.client
import itertools
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

Matcher = Callable[[str, str], bool]  # (method, path) -> bool

_ERRORS = {
    403: ("AccessDenied", "Access Denied"),
    500: ("InternalError", "We encountered an internal error. Please try again."),
    502: ("BadGateway", "Bad gateway."),
    503: ("SlowDown", "Please reduce your request rate."),
}
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
}


@dataclass
class _Fault:
    statuses: tuple[int, ...]
    count: int | None  # requests to fail, or None: every request until ``until``
    seconds: float | None
    when: Matcher | None  # the requests it fails (None: any); it starts at the first of them
    started: float | None = None
    failed: int = 0
    cycle: itertools.cycle = field(init=False)

    def __post_init__(self) -> None:
        self.cycle = itertools.cycle(self.statuses)

    def take(self, method: str, path: str) -> int | None:
        """The status to answer this request with, or None to pass it through."""
        now = time.monotonic()
        if self.when is not None and not self.when(method, path):
            return None
        if self.started is None:
            self.started = now
        if self.count is not None and self.failed >= self.count:
            return None
        if self.seconds is not None and now - self.started > self.seconds:
            return None
        self.failed += 1
        return next(self.cycle)

    @property
    def done(self) -> bool:
        if self.started is None:
            return False
        if self.count is not None and self.failed >= self.count:
            return True
        return self.seconds is not None and time.monotonic() - self.started > self.seconds


@dataclass(frozen=True)
class Logged:
    method: str
    path: str
    status: int  # 0: the connection was dropped without an answer
    injected: bool
    at: float = field(default_factory=time.monotonic)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], proxy: FaultProxy) -> None:
        self.proxy = proxy
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.server.proxy._connections.add(self.connection)

    def finish(self) -> None:
        self.server.proxy._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        try:
            self._proxy_request()
        except OSError:  # the client went away, or the proxy is going down
            self.close_connection = True

    def _proxy_request(self) -> None:
        proxy = self.server.proxy
        method, path = self.command, self.path
        body = self._body()
        if proxy.on_request is not None:
            proxy.on_request(method, path)
        status = proxy._decide(method, path)
        if status is not None:
            code, message = _ERRORS.get(status, ("InternalError", "Injected failure."))
            payload = (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f"<Error><Code>{code}</Code><Message>{message}</Message>"
                f"<RequestId>{uuid.uuid4().hex[:16]}</RequestId></Error>"
            ).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(0 if method == "HEAD" else len(payload)))
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(payload)
            proxy._log(Logged(method, path, status, True))
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        if "Content-Length" in self.headers or body:
            headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
            headers["Content-Length"] = str(len(body))
        try:
            upstream = urlparse(proxy.upstream)
            connection = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=120)
            try:
                connection.request(method, path, body=body or None, headers=headers)
                response = connection.getresponse()
                data = response.read()
                reply_headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
                status = response.status
            finally:
                connection.close()
        except OSError:
            # The server is gone (down or restarting): drop the connection, as a dead server would.
            proxy._log(Logged(method, path, 0, False))
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(status)
        for key, value in reply_headers:
            if key.lower() == "content-length" and method != "HEAD":
                continue
            self.send_header(key, value)
        if method != "HEAD":
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if method != "HEAD" and data:
            self.wfile.write(data)
        proxy._log(Logged(method, path, status, False))

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle  # noqa: N815 (http.server names)


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 that passes requests to ``upstream`` unless told to fail them."""

    def __init__(self, upstream: str, *, port: int = 0) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = port
        self.on_request: Matcher | None = None
        self.log: list[Logged] = []
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._server = _Server(("127.0.0.1", self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for connection in list(self._connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._connections.clear()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def go_down(self) -> None:
        """Stop listening and drop every open connection: clients get connection refused/reset."""
        self.stop()

    def come_up(self) -> None:
        """Listen again on the same port."""
        self.start()

    # -- faults -----------------------------------------------------------------------------

    def fail(
        self,
        *,
        count: int | None = None,
        seconds: float | None = None,
        statuses: tuple[int, ...] = (503, 500),
        when: Matcher | None = None,
    ) -> None:
        """Answer the next ``count`` requests that ``when`` matches (default: any request), or all of
        them for ``seconds`` from the first one, with ``statuses`` in turn."""
        if (count is None) == (seconds is None):
            raise ValueError("give exactly one of count and seconds")
        with self._lock:
            self._faults.append(_Fault(statuses=statuses, count=count, seconds=seconds, when=when))

    @property
    def faults_done(self) -> bool:
        with self._lock:
            return all(f.done for f in self._faults)

    def injected(self) -> list[Logged]:
        with self._lock:
            return [entry for entry in self.log if entry.injected]

    def _decide(self, method: str, path: str) -> int | None:
        with self._lock:
            for fault in self._faults:
                status = fault.take(method, path)
                if status is not None:
                    return status
        return None

    def _log(self, entry: Logged) -> None:
        with self._lock:
            self.log.append(entry)


class RecordingS3Server:
    """moto's S3 server with its request recorder on, so that it can crash and come back with its objects.

    moto keeps objects in memory: a plain restart loses them. With ``MOTO_ENABLE_RECORDING`` it
    appends every request it receives to a file; ``restart()`` kills the process (SIGKILL, a crash),
    starts a new one on the same port and replays the file into it. Replaying is exact for single-part
    PUT, COPY and DELETE (what the batch job does with objects under 16 MiB); a multipart upload does
    not survive (its replayed parts name the old upload id).
    """

    def __init__(self, recording: Path) -> None:
        from deblur.local_s3 import LocalS3Server

        self.recording = recording
        self.server = LocalS3Server()

    @property
    def endpoint_url(self) -> str:
        return self.server.endpoint_url

    def start(self) -> RecordingS3Server:
        from deblur.local_s3 import exported

        with exported({"MOTO_ENABLE_RECORDING": "true", "MOTO_RECORDER_FILEPATH": str(self.recording)}):
            self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def crash(self) -> None:
        import os
        import signal

        process = self.server._process
        assert process is not None
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        self.server._process = None

    def restart(self) -> None:
        """Crash, start again on the same port, replay every recorded request."""
        import urllib.request

        self.crash()
        self.start()
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/recorder/replay-recording", method="POST")
        with urllib.request.urlopen(request, timeout=120):
            pass

    def __enter__(self) -> RecordingS3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
