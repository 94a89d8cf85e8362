"""A real S3-compatible server on 127.0.0.1 for tests and the local default (moto's standalone server).

It speaks S3 over HTTP, so boto3 and pyarrow (which ignores in-process mocks) both reach it the
way they reach AWS. It keeps objects in memory (those over 64 MB in temporary files) and does not
check credentials: it is for local use only, never a place for data you want to keep.

    python -m deblur.local_s3 --port 9000        # foreground; prints the environment to export

The server is moto's, from the ``local`` extra (``pip install 'deblur-platform[local]'``); without it,
starting one is a one-line ``LocalS3UnavailableError`` that says so.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from deblur.storage import ENDPOINT_ENV, StorageError

# moto accepts any key; these only have to be present so that botocore and pyarrow sign requests.
LOCAL_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "deblur-local", "AWS_SECRET_ACCESS_KEY": "deblur-local-secret"}


# moto spills each object over 5 MB into a temporary file (in /tmp, on disk here) and reads it
# back to answer: for the 12 MB training shards that is 20% of the server's CPU time, on the cores
# the jobs it serves run on. Objects up to 64 MB stay in memory instead.
_SERVER_ENVIRONMENT = {"MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(64 << 20)}


# What ``python -m moto.server`` needs: moto, and the web server of its ``server`` extra.
_SERVER_MODULES = ("moto", "flask")
INSTALL_HINT = "pip install 'deblur-platform[local]'"


class LocalS3UnavailableError(StorageError):
    """The local S3 server cannot start here: moto's server is not installed.

    A ``StorageError``, so commands that start one (``deblur bench``) print it as one line."""


def server_available() -> bool:
    """Whether moto's standalone server can run in this environment (nothing is imported)."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in _SERVER_MODULES)
    except (ImportError, ValueError):
        return False


def require_local_server() -> None:
    """Raise ``LocalS3UnavailableError``, with the command that installs it, when moto's server is missing."""
    if not server_available():
        raise LocalS3UnavailableError(f"the local S3 server needs the local extra (moto[server]): {INSTALL_HINT}")


def find_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalS3Server:
    """Start ``moto.server`` in a subprocess; ``with LocalS3Server() as s3: s3.endpoint_url``."""

    def __init__(self, *, port: int | None = None, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port or find_free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def environment(self) -> dict[str, str]:
        """The variables that point boto3, pyarrow (through deblur.storage) and Ray workers here."""
        return {ENDPOINT_ENV: self.endpoint_url, "AWS_REGION": "us-east-1", **LOCAL_CREDENTIALS}

    def start(self, *, timeout: float = 30.0) -> LocalS3Server:
        require_local_server()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **_SERVER_ENVIRONMENT},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"local S3 server exited with code {self._process.returncode} (port {self.port})")
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"local S3 server did not answer on {self.endpoint_url} within {timeout:.0f} s")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def cpu_seconds(self) -> float | None:
        """CPU time the server process has used so far (Linux ``/proc``; None elsewhere).

        The server runs on the same cores as the jobs it serves; benchmarks report its share.
        """
        if self._process is None:
            return None
        try:
            fields = Path(f"/proc/{self._process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def reset(self) -> None:
        """Drop every bucket and object."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def __enter__(self) -> LocalS3Server:
        return self.start()

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.stop()


@contextlib.contextmanager
def exported(variables: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``variables`` set for the block (Ray workers started inside inherit them)."""
    saved = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def local_object_store(*, reuse: bool = True) -> Iterator[str]:
    """Yield an S3 endpoint URL: the configured one (``DEBLUR_S3_ENDPOINT``) when ``reuse``, else a
    local server started for the block, with its settings in ``os.environ`` meanwhile."""
    if reuse and os.environ.get(ENDPOINT_ENV):
        yield os.environ[ENDPOINT_ENV]
        return
    with LocalS3Server() as server, exported(server.environment()):
        yield server.endpoint_url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deblur.local_s3", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("DEBLUR_LOCAL_S3_PORT", "9000")))
    args = parser.parse_args(argv)
    try:
        server = LocalS3Server(port=args.port).start()
    except LocalS3UnavailableError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 1
    for key, value in server.environment().items():
        print(f"export {key}={value}", flush=True)
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while not stop and server._process is not None and server._process.poll() is None:
            time.sleep(0.5)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
