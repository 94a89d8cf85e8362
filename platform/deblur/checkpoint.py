"""Model checkpoints: weights, architecture config and provenance in one file.

The format is safetensors: a JSON header and raw tensor bytes, so loading a
checkpoint never executes code (unlike pickle). The header's metadata carries
``format``, ``config`` (ModelConfig as JSON) and ``provenance`` (JSON: what made
it). Loading rebuilds the model from the config and checks that every tensor is
there with the right shape, naming what does not match.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import struct
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from deblur import __version__
from deblur.model import DeblurNet, ModelConfig, build_model

__all__ = [
    "FORMAT",
    "CheckpointError",
    "LoadedCheckpoint",
    "bundled_checkpoint_path",
    "load_checkpoint",
    "load_model",
    "read_checkpoint_bytes",
    "save_checkpoint",
]

FORMAT = "deblur-checkpoint/1"
BUNDLED_NAME = "strcnn_dtb_m1.safetensors"


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable, or does not match its config."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    model: DeblurNet
    config: ModelConfig
    provenance: dict[str, Any]
    source: str


def bundled_checkpoint_path() -> Path | None:
    """The default model shipped inside the package, or None while none is shipped."""
    path = Path(str(resources.files("deblur") / "weights" / BUNDLED_NAME))
    return path if path.is_file() else None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def default_provenance(**extra: Any) -> dict[str, Any]:
    return {
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "deblur_version": __version__,
        "torch_version": torch.__version__,
        "git_commit": _git_commit(),
        **extra,
    }


def checkpoint_bytes(model: DeblurNet, *, provenance: dict[str, Any] | None = None) -> bytes:
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "config": json.dumps(model.config.to_dict(), sort_keys=True),
        "provenance": json.dumps(provenance if provenance is not None else default_provenance(), sort_keys=True),
    }
    return save_safetensors(tensors, metadata=metadata)


def save_checkpoint(model: DeblurNet, path: str | os.PathLike[str], *, provenance: dict[str, Any] | None = None) -> str:
    """Write to a local path or s3:// URI atomically: a crash never leaves a truncated checkpoint."""
    from deblur import storage

    storage.write_bytes(path, checkpoint_bytes(model, provenance=provenance))
    return os.fspath(path)


def _header_metadata(data: bytes, source: str) -> dict[str, str]:
    # safetensors layout: u64 little-endian header length, then a JSON header.
    if len(data) < 8:
        raise CheckpointError(f"{source}: not a checkpoint (file is {len(data)} bytes)")
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        raise CheckpointError(f"{source}: not a safetensors checkpoint, or truncated")
    try:
        header = json.loads(data[8 : 8 + length])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{source}: not a safetensors checkpoint ({exc})") from exc
    metadata = header.get("__metadata__") or {}
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{source}: not a deblur checkpoint (metadata format is {metadata.get('format')!r}, expected {FORMAT!r})"
        )
    return metadata


def read_checkpoint_bytes(data: bytes, *, source: str = "<bytes>") -> LoadedCheckpoint:
    metadata = _header_metadata(data, source)
    try:
        config = ModelConfig.from_dict(json.loads(metadata["config"]))
        provenance = json.loads(metadata.get("provenance", "{}"))
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{source}: bad config in checkpoint: {exc}") from exc
    try:
        tensors = load_safetensors(data)
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{source}: corrupt tensor data ({exc})") from exc

    model = build_model(config)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(
        f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in tensors and tensors[k].shape != v.shape
    )
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s) {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} tensor(s) {unexpected[:5]}")
        if wrong:
            parts.append(f"wrong shape: {wrong[:5]}")
        raise CheckpointError(
            f"{source}: weights do not match the config ({config.variant}, m={config.m}, "
            f"width={config.width}): " + "; ".join(parts)
        )
    model.load_state_dict(tensors, strict=True)
    return LoadedCheckpoint(model=model.eval(), config=config, provenance=provenance, source=source)


def load_checkpoint(source: str | os.PathLike[str] | None = None) -> LoadedCheckpoint:
    """Load a checkpoint file; ``None`` means the bundled default model."""
    if source is None:
        bundled = bundled_checkpoint_path()
        if bundled is None:
            raise CheckpointError(
                "no bundled default model ships with this version yet: pass --checkpoint PATH "
                "(a .safetensors file written by deblur)"
            )
        source = bundled
    from deblur import storage

    name = os.fspath(source)
    if not storage.is_s3(name):
        path = Path(name)
        if not path.exists():
            raise CheckpointError(f"{name}: no such checkpoint file")
        if path.is_dir():
            raise CheckpointError(f"{name}: is a directory, expected a .safetensors checkpoint file")
    try:
        data = storage.read_bytes(name)
    except storage.StorageError as exc:
        raise CheckpointError(f"{name}: cannot read checkpoint ({exc})") from exc
    return read_checkpoint_bytes(data, source=name)


def load_model(source: str | os.PathLike[str] | None = None) -> DeblurNet:
    """The model of a checkpoint (``None``: the bundled default), in eval mode on the CPU."""
    return load_checkpoint(source).model
