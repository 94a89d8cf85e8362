"""``ServingConfig``: the endpoint's settings, the ``args`` of the Serve application (serve/config.yaml)."""

from __future__ import annotations

import os
from typing import Annotated, Any, ClassVar

from pydantic import BeforeValidator, Field, StrictInt, StrictStr, model_validator

from deblur.settings import Number, Settings

__all__ = ["ServingConfig", "http_host", "open_endpoint_warning", "shown_source"]

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _prefix_list(value: Any) -> Any:
    # YAML may give one prefix as a plain string, or null for none.
    return (value,) if isinstance(value, str) else () if value is None else value


class ServingConfig(Settings):
    """Settings of the endpoint: the ``args`` of the Serve application (serve/config.yaml)."""

    label: ClassVar[str] = "serving"

    checkpoint: StrictStr | None = None  # None: the bundled default model
    device: StrictStr = "auto"
    api_key_env: StrictStr = "DEBLUR_API_KEY"  # name of the env var holding the key; unset var = no auth
    max_upload_mb: Number = Field(1024.0, gt=0)
    max_frames: StrictInt = Field(54_000, ge=1)  # 30 minutes at 30 fps
    max_width: StrictInt = Field(3840, ge=1)
    max_height: StrictInt = Field(2160, ge=1)
    session_timeout_s: Number = Field(300.0, gt=0)
    resume_s: Number = Field(10.0, ge=0)  # a WebSocket dropped without finish: its session waits this long for a resume
    upload_timeout_s: Number = Field(60.0, gt=0)  # an upload that sends no data for this long is cut off (408)
    # A session actor not started by then: 503. Longer than adding a node, for autoscaled clusters.
    session_start_timeout_s: Number = Field(300.0, gt=0)
    # Open sessions (and uploads) of this application at once; None: what the cluster's CPUs (or
    # GPUs) hold in session actors of session_cpus (session_gpus), at least one. More wait in a queue
    # of at most max_queue, each for at most queue_wait_s; past that, 503.
    max_sessions: StrictInt | None = Field(None, ge=1)
    max_queue: StrictInt = Field(16, ge=0)
    queue_wait_s: Number = Field(600.0, gt=0)
    # 0.875: two sessions of one thread beside the ingress's 0.25 on a 2-CPU node, which streams more
    # frames in total than one session with every thread (docs/performance.md, live streams)
    session_cpus: Number = Field(0.875, gt=0)
    session_threads: StrictInt | None = Field(None, ge=1)  # torch threads per session; None: one per whole CPU
    session_gpus: Number | None = Field(None, ge=0)  # None: 1 when the cluster has GPUs, else 0 (CPU fallback)
    # s3:// prefixes jobs may read and write; () = none
    allowed_prefixes: Annotated[tuple[StrictStr, ...], BeforeValidator(_prefix_list)] = ()
    job_ttl_s: Number = Field(3600.0, gt=0)
    job_min_chunk_seconds: Number = Field(10.0, gt=0)  # a job split in chunks: the shortest chunk
    crf: StrictInt = Field(18, ge=0, le=51)
    precision: StrictStr = "auto"  # as `deblur video --precision`: fp32, int8 (CPU), bf16, fp16 (CUDA)

    @model_validator(mode="after")
    def _known_values(self) -> ServingConfig:
        from deblur.precision import PRECISIONS

        for prefix in self.allowed_prefixes:
            if not prefix.startswith("s3://") or len(prefix.rstrip("/")) <= len("s3://"):
                raise ValueError(f"allowed_prefixes: {prefix!r} is not an s3://bucket[/prefix]")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: unknown {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        return self

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> ServingConfig:  # type: ignore[override]
        return super().from_dict(values or {})

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) or None


def open_endpoint_warning(host: str | None, config: ServingConfig) -> str | None:
    """One line for the start-up log when anyone who reaches ``host`` may use the endpoint: no API
    key, and bound beyond loopback (or where the host cannot be read). None when it is closed."""
    if config.api_key() is not None or host in LOOPBACK:
        return None
    where = f"bound to {host}" if host else "bound to an address this replica cannot read"
    return (
        f"no API key: ${config.api_key_env} is not set and the endpoint is {where}, so every client "
        f"that reaches it may use it; set ${config.api_key_env}, or bind 127.0.0.1"
    )


def shown_source(source: str) -> str:
    """A checkpoint's source as responses show it: a local file by its name, never the server's path."""
    return source if "://" in source else os.path.basename(source)


def http_host() -> str | None:
    """The host Serve's HTTP proxies bind, or None where it cannot be read (Serve keeps it private)."""
    try:
        from ray.serve.context import _get_global_client

        return _get_global_client().http_config.host
    except Exception:  # a private API: a change in it only loses the host in the warning
        return None
