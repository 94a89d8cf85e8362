"""``ServingConfig``: the endpoint's settings, the ``args`` of the Serve application (serve/config.yaml)."""

from __future__ import annotations

import os
from typing import Annotated, Any, ClassVar

from pydantic import BeforeValidator, Field, StrictInt, StrictStr, model_validator

from deblur.settings import Number, Settings

__all__ = ["ServingConfig"]


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
    upload_timeout_s: Number = Field(60.0, gt=0)  # an upload that sends no data for this long is cut off (408)
    session_start_timeout_s: Number = Field(60.0, gt=0)  # a session actor not started by then (cluster full): 503
    max_sessions: StrictInt | None = Field(None, ge=1)  # open sessions of this application at once; more: 503
    session_cpus: Number = Field(1.0, gt=0)
    session_gpus: Number | None = Field(None, ge=0)  # None: 1 when the cluster has GPUs, else 0 (CPU fallback)
    # s3:// prefixes jobs may read and write; () = none
    allowed_prefixes: Annotated[tuple[StrictStr, ...], BeforeValidator(_prefix_list)] = ()
    job_ttl_s: Number = Field(3600.0, gt=0)
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
