"""The Ray actors behind the endpoint: one ``SessionActor`` per video in flight, one ``JobActor`` per S3 job.

Actors are named and detached in namespace ``deblur``, so any ingress replica reaches them. Nothing
here imports Ray at module level: the actors import it when they run.
"""

import collections
import contextlib
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from deblur.serving.config import ServingConfig
from deblur.serving.wire import ApiError, FrameLimit

__all__ = [
    "NAMESPACE",
    "SESSION_GROUPS",
    "SESSION_ID",
    "SESSION_PREFIX",
    "STATUS_METHODS",
    "BadFrameError",
    "OutOfOrderError",
    "SessionActor",
    "SessionClosedError",
    "SessionError",
    "kill_self",
    "named_actors",
    "request_session_nodes",
]

NAMESPACE = "deblur"
REPLAY_FRAMES = 8  # outputs kept for a stream that resumes (in transit at a drop: a few; 4K: 25 MB each)
SESSION_PREFIX = "deblur-session-"
SESSION_ID = re.compile(r"[0-9a-f]{40}")  # wire.new_session_id: anything else names no session
# A session actor runs its calls one at a time, in the order they were sent (Ray's default
# concurrency group of a threaded actor: one thread), so pushes may be sent ahead without waiting;
# its status calls have a thread of their own, answered while a push or an upload runs.
SESSION_GROUPS = {"status": 1}
STATUS_METHODS = ("progress", "status")


class SessionError(Exception):
    """Raised inside a session actor; carries the HTTP status the ingress answers with."""

    status = 400


class OutOfOrderError(SessionError):
    status = 409


class BadFrameError(SessionError):
    status = 422


class SessionClosedError(SessionError):
    status = 410


def named_actors() -> list[str]:
    """Names of the live named actors in ``NAMESPACE`` (sessions and jobs of every application)."""
    import ray

    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a.get("namespace") == NAMESPACE]


def kill_self() -> None:
    """Ends the calling actor for good (no restart)."""
    import ray

    ray.kill(ray.get_runtime_context().current_actor, no_restart=True)


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
        # The last outputs, for a stream that reconnects after losing some in transit (resume).
        self.recent: collections.deque[tuple[int, np.ndarray]] = collections.deque(maxlen=REPLAY_FRAMES)
        self.orphaned_until: float | None = None
        self.work_started: float | None = (
            None  # when an upload began, for its progress  # a dropped stream's grace period, for a resume
        )
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
            outputs = [(first + i, out) for i, out in enumerate(ready)]
            self.recent.extend(outputs)
            return outputs

    def finish(self) -> list[tuple[int, np.ndarray]]:
        with self.lock:
            self._check_open()
            first = self.engine.frames_emitted
            tail = self.engine.finish()
            self.closed = "closed by the client"
            # Let this call's reply go out, then free the actor (and its GPU memory).
            threading.Timer(2.0, kill_self).start()
            return [(first + i, out) for i, out in enumerate(tail)]

    def deblur_upload(
        self, data: bytes, name: str, suffixes: tuple[str, str], lossless: bool, crf: int, max_frames: int
    ) -> tuple[bytes, int]:
        """A whole uploaded video decoded, deblurred and encoded here, not in the ingress (whose
        fraction of a CPU would bound it): (the output file's bytes, its frames)."""
        from deblur.video import EncoderOptions, VideoError, transform_video

        with self.lock, tempfile.TemporaryDirectory(prefix="deblur-upload-") as tmpdir:
            self._check_open()
            source, target = Path(tmpdir) / f"input{suffixes[0]}", Path(tmpdir) / f"output{suffixes[1]}"
            source.write_bytes(data)
            processor = FrameLimit(self.engine, max_frames, name)
            self.work_started = time.monotonic()
            try:
                result = transform_video(
                    source, target, processor, encoder=EncoderOptions(lossless=lossless, crf=crf), name=name
                )
            except (VideoError, ApiError) as error:  # bad input or over a limit: the message names it
                raise BadFrameError(str(error).replace(str(source), name)) from error
            self.last_active = time.monotonic()
            return target.read_bytes(), result.frames

    def progress(self) -> dict[str, Any]:
        """Frames done and the rate, answered while an upload runs (in the "status" concurrency group)."""
        done = self.engine.frames_emitted
        seconds = time.monotonic() - self.work_started if self.work_started is not None else 0.0
        return {"frames_done": done, "fps": done / seconds if seconds > 0 else 0.0}

    def abandon(self, grace_s: float = 0.0) -> None:
        """The client went away without finishing: end the session and free the actor, at once or,
        with ``grace_s``, unless the stream resumes within that time."""
        with self.lock:
            self._check_open()
            if grace_s > 0:
                self.orphaned_until = time.monotonic() + grace_s
                return
            self.closed = "abandoned by its client"
            threading.Timer(0.5, kill_self).start()

    def resume(self, received: int) -> tuple[int, list[tuple[int, np.ndarray]]]:
        """A stream back after a drop, which had received ``received`` outputs: (the next frame seq
        it must send, the outputs it missed). Frames the session has are never deblurred again."""
        with self.lock:
            self._check_open()
            emitted = self.engine.frames_emitted
            if not 0 <= received <= emitted:
                raise OutOfOrderError(f"session {self.session_id}: {emitted} frames were sent out, not {received}")
            missed = [(i, frame) for i, frame in self.recent if i >= received]
            if len(missed) < emitted - received:
                raise SessionClosedError(
                    f"session {self.session_id}: output {received} is no longer kept (the last {REPLAY_FRAMES} are)"
                )
            self.orphaned_until = None
            self.last_active = time.monotonic()
            return self.next_seq, missed

    def status(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "frames_received": self.engine.frames_received,
            "frames_emitted": self.engine.frames_emitted,
            "next_seq": self.next_seq,
            "waiting_for_resume": self.orphaned_until is not None,
            "idle_s": round(time.monotonic() - self.last_active, 3),
            "closed": self.closed,
        }

    def _check_open(self) -> None:
        if self.closed:
            raise SessionClosedError(f"session {self.session_id} is {self.closed}")

    def _watchdog(self) -> None:
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            with self.lock:
                if self.closed:
                    return
                if self.orphaned_until is not None and time.monotonic() > self.orphaned_until:
                    self.closed = "abandoned by its client"
                    kill_self()
                    return
                if time.monotonic() - self.last_active > self.timeout:
                    self.closed = f"closed after {self.timeout:g} s without frames"
                    kill_self()
                    return


def request_session_nodes(bundle: dict[str, float], count: int) -> None:
    """Ask the Ray autoscaler, where there is one, for room for ``count`` session actors of ``bundle``."""
    from ray.autoscaler.sdk import request_resources

    with contextlib.suppress(Exception):  # no autoscaler (a fixed or local cluster): nothing to ask
        request_resources(bundles=[bundle] * count)
