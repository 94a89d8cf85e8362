"""What crosses the wire, as plain functions tested without a cluster: frames in and out, WebSocket
control messages, S3 URIs, the limits, ``ApiError`` (an HTTP status with a message), and the
push figures of /v1/metrics."""

import asyncio
import base64
import collections
import hashlib
import hmac
import io
import json
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np

from deblur.serving.config import ServingConfig

__all__ = [
    "API_VERSION",
    "FORMATS",
    "FRAME_BODY",
    "JOB_BODY",
    "MAX_JOB_CHUNKS",
    "VIDEO_BODY",
    "ApiError",
    "FrameLimit",
    "PushStats",
    "check_api_key",
    "check_format",
    "check_uri",
    "check_video_limits",
    "decode_frame",
    "encode_frame",
    "frames_json",
    "issued_session",
    "make_sample_video",
    "new_session_id",
    "parse_control",
    "progress_json",
    "read_body",
    "remove_tree",
    "stream_file",
]

API_VERSION = "v1"

# Request bodies the routes read themselves (streamed, size-limited), declared for /docs so that
# "Try it out" can send them.
_BINARY = {"schema": {"type": "string", "format": "binary"}}
VIDEO_BODY = {
    "requestBody": {
        "required": True,
        "description": "a video file (MP4, MOV, MKV, WebM, AVI...); name it with ?filename=",
        "content": {"application/octet-stream": _BINARY, "video/mp4": _BINARY},
    }
}
FRAME_BODY = {
    "requestBody": {
        "required": True,
        "description": "one frame: PNG or JPEG, or raw RGB bytes (height x width x 3) with ?width=&height=",
        "content": {"image/png": _BINARY, "image/jpeg": _BINARY, "application/octet-stream": _BINARY},
    }
}
MAX_JOB_CHUNKS = 64
JOB_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "input": {"type": "string", "example": "s3://bucket/in/video.mp4"},
                        "output": {"type": "string", "example": "s3://bucket/out/video.mp4"},
                        "chunks": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_JOB_CHUNKS,
                            "description": "cut a long video at keyframes into this many pieces, deblurred at once "
                            "(each warmed up over the frames before it); default 1, the paper's online setting",
                        },
                    },
                    "required": ["input", "output"],
                    "additionalProperties": False,
                }
            }
        },
    }
}
FORMATS = ("raw", "png")  # how deblurred frames travel back


class ApiError(Exception):
    """An HTTP error with a status and a message for the client."""

    def __init__(self, status: int, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.retry_after = status, message, retry_after


def check_api_key(headers: Any, query: Any, config: ServingConfig) -> None:
    """401 unless the request carries the server's key (X-API-Key, a bearer token, or for a
    WebSocket, whose browser API sends no headers, ``?api_key=``); nothing when it has none."""
    key = config.api_key()
    if key is None:
        return
    given = headers.get("x-api-key")
    auth = headers.get("authorization", "")
    if given is None and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if given is None:
        given = query.get("api_key")
    # Constant time: how long a wrong key takes must not tell how much of it was right.
    if given is None or not hmac.compare_digest(given.encode(), key.encode()):
        raise ApiError(401, "missing or wrong API key (send it as X-API-Key)")


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
        except UnidentifiedImageError as error:  # its message names the in-memory buffer's repr
            raise ApiError(422, f"not a readable {kind} image (not a {kind.split('/')[1].upper()} file)") from error
        except (OSError, ValueError) as error:
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


def check_format(fmt: str | None) -> str:
    """An output format of deblurred frames, one of ``FORMATS`` (422 otherwise)."""
    if fmt not in FORMATS:
        raise ApiError(422, f"output must be raw or png, got {fmt!r}")
    return fmt


def parse_control(text: str) -> dict[str, Any]:
    """A WebSocket text message: ``{"type": "finish"}``, settings ``{"format", "width", "height"}``,
    or, first on a socket that reconnects to its session, ``{"type": "resume", "received": N}``."""
    try:
        control = json.loads(text)
    except ValueError as error:
        raise ApiError(400, f"a text message must be JSON ({error})") from error
    if not isinstance(control, dict):
        raise ApiError(400, f"a text message must be a JSON object, got {type(control).__name__}")
    known = {"type", "format", "width", "height", "received"}
    if set(control) - known:
        raise ApiError(422, f"unknown key(s) {sorted(set(control) - known)} in a text message; known: {sorted(known)}")
    kind = control.get("type", "settings")
    if kind not in ("settings", "finish", "resume"):
        raise ApiError(422, f"type must be settings, finish or resume, got {control['type']!r}")
    if "format" in control:
        check_format(control["format"])
    for key, least in (("width", 1), ("height", 1), ("received", 0)):
        value = control.get(key)
        if key in control and (not isinstance(value, int) or isinstance(value, bool) or value < least):
            kind_of = "a positive" if least else "a non-negative"
            raise ApiError(422, f"{key} must be {kind_of} integer, got {value!r}")
    if (kind == "resume") != ("received" in control):
        raise ApiError(422, 'a resume message is {"type": "resume", "received": N}, N the frames received')
    return control


def progress_json(state: dict[str, Any], total: int | None) -> dict[str, Any]:
    """An upload's progress for the page: frames done of the total (when the file declares it),
    frames/s, and the seconds left at that rate."""
    done, fps = int(state["frames_done"]), float(state["fps"])
    eta = (total - done) / fps if total and fps > 0 else None
    return {
        "frames_done": done,
        "frames_total": total,
        "fps": round(fps, 2),
        "eta_s": None if eta is None else round(eta),
    }


def encode_frame(frame: np.ndarray, fmt: str) -> bytes:
    if fmt == "raw":
        return np.ascontiguousarray(frame).tobytes()
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def frames_json(frames: list[tuple[int, np.ndarray]], fmt: str) -> list[dict[str, Any]]:
    """Deblurred ``(index, frame)`` pairs as JSON objects, the frame base64-encoded in ``fmt``."""
    return [
        {
            "index": index,
            "width": int(frame.shape[1]),
            "height": int(frame.shape[0]),
            "data": base64.b64encode(encode_frame(frame, fmt)).decode("ascii"),
        }
        for index, frame in frames
    ]


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


class FrameLimit:
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


class PushStats:
    """Push latencies and frame times of the last minute, for /v1/metrics (this replica)."""

    def __init__(self) -> None:
        self.events: collections.deque[tuple[float, float | None, int]] = collections.deque(maxlen=100_000)
        self.frames_total = 0

    def add(self, latency: float | None, frames: int) -> None:
        """A push that took ``latency`` seconds, or (None) frames that came without one: a close's last m."""
        self.events.append((time.monotonic(), latency, frames))
        self.frames_total += frames

    def summary(self) -> dict[str, Any]:
        now = time.monotonic()
        recent = [(lat, n) for t, lat, n in self.events if now - t <= 60.0]
        latencies = sorted(lat for lat, _ in recent if lat is not None)

        def pct(q: float) -> float | None:
            return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 3) if latencies else None

        return {
            "frames_total": self.frames_total,
            "frames_per_s_last_minute": round(sum(n for _, n in recent) / 60.0, 3),
            "push_latency_ms": {"p50": pct(0.5), "p99": pct(0.99), "count": len(latencies)},
        }


def new_session_id(secret: bytes) -> str:
    """A random session id signed with the application's ``secret``: once its session has ended,
    the id still shows it was issued here, so it answers 410 (gone) where a made-up id gets 404."""
    base = uuid.uuid4().hex
    return base + _session_tag(secret, base)


def issued_session(session_id: str, secret: bytes) -> bool:
    """Whether ``session_id`` is one ``new_session_id`` gave out with this ``secret``."""
    base, tag = session_id[:32], session_id[32:]
    return len(session_id) == 40 and hmac.compare_digest(tag, _session_tag(secret, base))


def _session_tag(secret: bytes, base: str) -> str:
    return hmac.new(secret, base.encode(), hashlib.sha256).hexdigest()[:8]


async def read_body(request: Any, limit: int, path: Path | None = None, *, stall_s: float) -> bytes | int:
    """A request's body, at most ``limit`` bytes (413), into ``path`` (its size returned) or memory;
    a client that sends nothing for ``stall_s`` is cut off (408)."""
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
                chunk = await asyncio.wait_for(anext(chunks_in), stall_s)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise ApiError(408, f"no request data for {stall_s:g} s: the upload was cut off") from None
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


async def stream_file(path: Path, workdir: Path) -> AsyncIterator[bytes]:
    """A response body read from ``path``; ``workdir`` is removed once it is sent (or cut off)."""
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                yield chunk
    finally:
        remove_tree(workdir)


def remove_tree(workdir: Path) -> None:
    import shutil

    shutil.rmtree(workdir, ignore_errors=True)


def make_sample_video() -> Path:
    """The viewer page's sample: a second of synthetic blurry video."""
    from deblur.demo import make_sample
    from deblur.video import EncoderOptions, write_video

    blurry, _, fps = make_sample(seconds=1.0, seed=7, tau=11, stride=16)
    path = Path(tempfile.mkdtemp(prefix="deblur-sample-")) / "sample.mp4"
    write_video(path, blurry, fps=fps, encoder=EncoderOptions(crf=16))
    return path
