"""Checkpoints: exact round trip, no code execution, clear errors on mismatch."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from deblur.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from deblur.model import DeblurNet

TINY = {"width": 8, "feature_channels": 4, "num_blocks": 1}


def rewrite_metadata(path: Path, **changes: str) -> None:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    header["__metadata__"].update(changes)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + length :])


def test_round_trip_is_exact(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = DeblurNet(variant="strcnn", m=2, **TINY)
    path = tmp_path / "ck.safetensors"
    save_checkpoint(model, path, provenance={"steps": 7, "data_seed": 3})
    loaded = load_checkpoint(path)
    assert loaded.config == model.config
    assert loaded.provenance == {"steps": 7, "data_seed": 3}
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    assert not list(tmp_path.glob("*.partial"))


def test_default_provenance_names_versions(tmp_path: Path) -> None:
    path = tmp_path / "ck.safetensors"
    save_checkpoint(DeblurNet(**TINY), path)
    provenance = load_checkpoint(path).provenance
    assert {"created", "deblur_version", "torch_version", "git_commit"} <= set(provenance)


def test_config_that_does_not_match_the_weights(tmp_path: Path) -> None:
    path = tmp_path / "ck.safetensors"
    save_checkpoint(DeblurNet(variant="strcnn_dtb", **TINY), path)
    rewrite_metadata(path, config=json.dumps({"variant": "strcnn", **TINY, "m": 1, "residual": True}))
    # The strcnn config has no blending layer: its conv weight and beta are left over.
    with pytest.raises(CheckpointError, match=r"unexpected 2 tensor\(s\).*blending"):
        load_checkpoint(path)
    rewrite_metadata(path, config=json.dumps({"variant": "strcnn_dtb", **TINY, "m": 2, "residual": True}))
    with pytest.raises(CheckpointError, match=r"wrong shape: \['encoder.conv_in.weight"):
        load_checkpoint(path)
    rewrite_metadata(path, config=json.dumps({"variant": "strcnn_dtb", "depth": 9}))
    with pytest.raises(CheckpointError, match="unknown model config key"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a checkpoint"),
        (b"\x00" * 64, "not a safetensors checkpoint"),
        (b"hello world, this is not a checkpoint at all", "not a safetensors checkpoint"),
    ],
)
def test_files_that_are_not_checkpoints(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_foreign_safetensors_and_missing_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a deblur checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)
