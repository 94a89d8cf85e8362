"""No secret in what the jobs write or print: AWS keys and the endpoint's API key, set in the environment
of the run, must not appear in manifests, records, checkpoints (provenance, training state, Ray Train's
own files) or the text the CLI prints."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from deblur import storage
from deblur.checkpoint import load_checkpoint, save_checkpoint
from deblur.cli import main
from media import write_test_video
from tiny import tiny_model

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.long]


def test_no_secret_in_outputs_or_cli_text(
    s3_bucket: str,
    tmp_path: Path,
    test_api_key: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The driver's secrets; the session's Ray workers have the S3 secret key and the endpoint key too
    # (the environment they were started with).
    monkeypatch.setenv("DEBLUR_API_KEY", f"api-key-{uuid.uuid4().hex}")
    monkeypatch.setenv("AWS_SESSION_TOKEN", f"session-token-{uuid.uuid4().hex}")  # sent, ignored by moto
    secrets = {
        "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"],
        "AWS_SESSION_TOKEN": os.environ["AWS_SESSION_TOKEN"],
        "DEBLUR_API_KEY": os.environ["DEBLUR_API_KEY"],
        test_api_key[0]: test_api_key[1],
    }
    storage._boto3_client.cache_clear()  # a client made before the token was set would not send it
    try:
        _run_jobs_and_scan(s3_bucket, tmp_path, secrets, capsys)
    finally:
        storage._boto3_client.cache_clear()  # nor keep sending it after the test


def _run_jobs_and_scan(
    s3_bucket: str, tmp_path: Path, secrets: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    for i in range(2):
        video = write_test_video(tmp_path / f"v{i}.mp4", width=48, height=40, frames=60, fps=240, audio=False)
        storage.upload_file(video, f"{s3_bucket}/raw/v{i}.mp4")
    data, runs, out = f"{s3_bucket}/data", f"{s3_bucket}/runs", f"{s3_bucket}/deblurred"
    settings = ["taus=[3]", "stride_max=1.01", "scale=1.0", "clip_frames=8", "window_frames=8", "min_window_frames=5"]
    assert (
        main(
            ["synth", f"{s3_bucket}/raw", data, *[a for s in settings for a in ("--set", s)], "--cpus-per-task", "0.5"]
        )
        == 0
    )
    train = ["steps=2", "checkpoint_every=2", "eval_every=2", "log_every=1", "cpus_per_worker=0.5"]
    model = f"{s3_bucket}/model.safetensors"
    args = ["train", data, "--storage", runs, "--name", "secrets", "--preset", "tiny", "--export", model]
    assert main([*args, *[a for s in train for a in ("--set", s)]]) == 0
    checkpoint = tmp_path / "tiny.safetensors"
    save_checkpoint(tiny_model(), checkpoint)
    args = [
        "batch",
        f"{s3_bucket}/raw",
        out,
        "--checkpoint",
        str(checkpoint),
        "--actors",
        "1",
        "--cpus-per-actor",
        "0.5",
    ]
    assert main([*args, "--device", "cpu", "-q"]) == 0
    printed = capsys.readouterr()

    objects = storage.list_files(s3_bucket)
    written = {uri: storage.read_bytes(uri) for uri in objects if "/raw/" not in uri}
    kinds = {Path(uri).name for uri in written}
    # What was scanned: the synthesis manifest and records, Ray Train's run files, the training
    # checkpoint (safetensors with provenance, train_state.pt), the exported model, the batch
    # manifest and records.
    assert {"manifest.json", "model.safetensors", "train_state.pt", "v0.mp4.json"} <= kinds, sorted(kinds)
    assert any(uri.endswith("/_deblur/manifest.json") for uri in written)
    assert load_checkpoint(model).provenance["run"] == "secrets"
    for name, secret in secrets.items():
        assert secret, name
        for uri, content in written.items():
            assert secret.encode() not in content, f"{name} found in {uri}"
        assert secret not in printed.out and secret not in printed.err, f"{name} printed by the CLI"
