"""``ServingConfig``: the endpoint's settings, the ``args`` of the Serve application (serve/config.yaml)."""

import os
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["ServingConfig"]


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
    precision: str = "auto"  # as `deblur video --precision`: fp32, int8 (CPU), bf16, fp16 (CUDA)

    def __post_init__(self) -> None:
        from deblur.precision import PRECISIONS

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
