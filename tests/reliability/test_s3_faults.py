"""Object storage that misbehaves: 5xx and throttling bursts, a server that crashes and comes back.

The code under test talks to a fault-injecting proxy (``s3_faults.FaultProxy``) in front of a real
S3 server (moto over HTTP), through ``DEBLUR_S3_ENDPOINT``: boto3 (retries "adaptive", 10 attempts)
and pyarrow (AwsStandardS3RetryStrategy, 10 attempts) must absorb the faults, and nothing partial
may be left behind. Batch jobs run as a second driver of the test session's Ray, so that the job's
workers (and only they) use the proxy.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from s3_faults import FaultProxy, RecordingS3Server

from deblur import storage
from deblur.checkpoint import load_model, save_checkpoint
from deblur.engine import deblur_frames
from deblur.local_s3 import LocalS3Server
from deblur.video import read_frames
from faults import run_driver
from media import write_test_video
from tiny import tiny_model


@pytest.fixture
def proxy(local_s3: LocalS3Server, monkeypatch: pytest.MonkeyPatch) -> FaultProxy:
    with FaultProxy(local_s3.endpoint_url) as proxy:
        monkeypatch.setenv("DEBLUR_S3_ENDPOINT", proxy.url)
        yield proxy


def _objects(prefix: str) -> list[str]:
    return [storage.relative_key(u, prefix) for u in storage.list_files(prefix)]


def test_storage_operations_survive_5xx_bursts_and_leave_nothing_partial(
    proxy: FaultProxy, s3_bucket: str, tmp_path: Path
) -> None:
    data = os.urandom(300_000)

    # boto3 PUT, through 503 SlowDown and 500 InternalError in turn.
    proxy.fail(count=3)
    storage.write_bytes(f"{s3_bucket}/a/blob.bin", data)
    # pyarrow (the reads of the batch job and of training): its HEAD and ranged GETs.
    proxy.fail(count=3)
    assert storage.read_bytes(f"{s3_bucket}/a/blob.bin") == data

    # An atomic commit (upload to a staging key, server-side copy, delete): faults on the copy.
    local = tmp_path / "video.bin"
    local.write_bytes(data)
    proxy.fail(count=2, when=lambda method, path: method == "PUT" and path.endswith("/final/video.bin"))
    storage.commit_file(local, f"{s3_bucket}/final/video.bin", staging_uri=f"{s3_bucket}/staging/video.bin")
    assert storage.read_bytes(f"{s3_bucket}/final/video.bin") == data

    # A multipart upload (over 16 MiB): faults on its parts.
    big = tmp_path / "big.bin"
    big.write_bytes(np.random.default_rng(0).bytes(17 << 20))
    proxy.fail(count=2, when=lambda method, path: "partNumber=" in path)
    storage.upload_file(big, f"{s3_bucket}/big/big.bin")
    digest = hashlib.sha256(storage.read_bytes(f"{s3_bucket}/big/big.bin")).hexdigest()
    assert digest == hashlib.sha256(big.read_bytes()).hexdigest()

    assert proxy.faults_done and len(proxy.injected()) == 3 + 3 + 2 + 2
    assert {e.status for e in proxy.injected()} == {503, 500}
    # Nothing partial: exactly the objects written, no staging key, no unfinished multipart upload.
    assert _objects(s3_bucket) == ["a/blob.bin", "big/big.bin", "final/video.bin"]
    bucket = storage.split_s3_uri(s3_bucket)[0]
    assert storage.s3_client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_a_refusal_is_not_retried_and_writes_nothing(proxy: FaultProxy, s3_bucket: str) -> None:
    """403 AccessDenied (wrong credentials or policy) is final: one clear error naming the URI."""
    proxy.fail(count=1, statuses=(403,), when=lambda method, path: method == "PUT")
    with pytest.raises(storage.StorageError, match=f"cannot write {s3_bucket}/x.bin.*AccessDenied"):
        storage.write_bytes(f"{s3_bucket}/x.bin", b"payload")
    assert [e.status for e in proxy.log if e.path.endswith("/x.bin")] == [403]  # not retried
    assert not storage.exists(f"{s3_bucket}/x.bin")


def test_a_synthesis_upload_refused_in_the_background_fails_the_video_and_leaves_nothing(
    proxy: FaultProxy, s3_bucket: str, tmp_path: Path
) -> None:
    """Shards are uploaded while the next one is synthesized; the second one's upload is refused."""
    from deblur.data.dataset import DataConfig
    from deblur.data.synth_job import plan_tasks, process_video

    source = write_test_video(tmp_path / "clip.mp4", width=48, height=40, frames=130, fps=240, audio=False)
    storage.upload_file(source, f"{s3_bucket}/raw/clip.mp4")
    # One 8-pair window per shard: two shards, the first uploaded before the second is made.
    settings = {"taus": [7], "stride_max": 1.01, "scale": 1.0, "clip_frames": 16, "eval_fraction": 0}
    config = DataConfig.from_dict({**settings, "window_frames": 8, "min_window_frames": 8, "shard_target_bytes": 1})
    out = f"{s3_bucket}/data"
    (task,), _ = plan_tasks(f"{s3_bucket}/raw", out, config)
    proxy.fail(count=1, statuses=(403,), when=lambda method, path: method == "PUT" and "shard-00001" in path)
    record = process_video(task)
    assert record["status"] == "failed" and "shard-00001.parquet" in record["error"], record
    assert record["outputs"] == [] and _objects(out) == []  # the first shard deleted again, no record
    assert proxy.faults_done
    (task,), _ = plan_tasks(f"{s3_bucket}/raw", out, config)  # the next run retries it
    record = process_video(task)
    assert record["status"] == "ok" and record["outputs"] == [
        "train/clip.mp4/shard-00000.parquet",
        "train/clip.mp4/shard-00001.parquet",
    ]
    assert _objects(out) == ["records/clip.mp4.json", *record["outputs"]]


# ---------------------------------------------------------------------------------------------
# Batch jobs through the proxy
# ---------------------------------------------------------------------------------------------


def _job_inputs(tmp_path: Path, prefix: str, count: int = 3) -> tuple[Path, dict[str, Path]]:
    torch.manual_seed(0)
    checkpoint = tmp_path / "tiny.safetensors"
    save_checkpoint(tiny_model(), checkpoint)
    sources = {}
    for i in range(count):
        source = write_test_video(tmp_path / f"v{i}.mp4", width=32, height=24, frames=12 + 2 * i, audio=False)
        storage.upload_file(source, f"{prefix}/v{i}.mp4")
        sources[f"v{i}.mp4"] = source
    return checkpoint, sources


def _check_job_output(out: str, checkpoint: Path, sources: dict[str, Path], tmp_path: Path) -> dict:
    manifest = json.loads(storage.read_bytes(f"{out}/_deblur/manifest.json"))
    assert manifest["summary"] == {"ok": len(sources), "failed": 0}, manifest
    model = load_model(checkpoint)
    for key, source in sources.items():
        local = tmp_path / f"out-{key}"
        storage.download_file(f"{out}/{key}", local)
        expected = list(deblur_frames(model, read_frames(source), device="cpu"))
        got = list(read_frames(local))
        assert len(got) == len(expected)
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_array_equal(g, e)  # lossless: exactly the engine's frames, none lost
    written = sorted(_objects(out))
    records = [f"_deblur/records/{key}.json" for key in sources]
    assert written == sorted([*sources, "_deblur/manifest.json", *records])  # no staging key left
    return manifest


def _batch_args(inp: str, out: str, checkpoint: Path) -> list[str]:
    return [
        "batch", inp, out, "--checkpoint", str(checkpoint), "--actors", "1", "--cpus-per-actor", "0.5",
        "--lossless", "--device", "cpu", "--precision", "fp32", "-q",
    ]  # fmt: skip  # fp32: the outputs are compared with the fp32 engine bit for bit


@pytest.mark.long
@pytest.mark.usefixtures("ray_session")
def test_batch_job_completes_through_5xx_and_throttling(proxy: FaultProxy, s3_bucket: str, tmp_path: Path) -> None:
    checkpoint, sources = _job_inputs(tmp_path, f"{s3_bucket}/in")
    # Faults where each part of the job talks to S3: the actor reading a video (pyarrow), the
    # actor's upload and commit (boto3), the driver writing records (boto3), the listing.
    proxy.fail(seconds=1.5, when=lambda method, path: method == "GET" and "/in/v1.mp4" in path)
    proxy.fail(count=2, when=lambda method, path: method == "PUT" and "/_deblur/staging/" in path)
    proxy.fail(count=2, when=lambda method, path: method == "PUT" and "/_deblur/records/" in path)
    proxy.fail(count=2, statuses=(503,), when=lambda method, path: "list-type=2" in path)
    run = run_driver(
        _batch_args(f"{s3_bucket}/in", f"{s3_bucket}/out", checkpoint), env={"DEBLUR_S3_ENDPOINT": proxy.url}
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "3 ok, 0 failed" in run.stderr
    assert proxy.faults_done, proxy.injected()
    manifest = _check_job_output(f"{s3_bucket}/out", checkpoint, sources, tmp_path)
    assert all(record["attempts"] == 1 for record in manifest["videos"])  # absorbed by the S3 clients


@pytest.mark.long
@pytest.mark.usefixtures("ray_session")
def test_batch_job_survives_an_s3_server_crash_and_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local_s3: LocalS3Server
) -> None:
    with RecordingS3Server(tmp_path / "recording.jsonl") as server, FaultProxy(server.endpoint_url) as proxy:
        monkeypatch.setenv("DEBLUR_S3_ENDPOINT", proxy.url)
        bucket = "s3://restart-test"
        storage.ensure_bucket(bucket)
        checkpoint, sources = _job_inputs(tmp_path, f"{bucket}/in")
        events: dict[str, float] = {}

        def restart() -> None:
            # The endpoint goes away (connections refused and dropped), the server process is
            # killed and started again with its objects, and the endpoint comes back.
            proxy.go_down()
            events["down"] = time.monotonic()
            server.restart()
            time.sleep(max(0.0, 2.0 - (time.monotonic() - events["down"])))  # down for at least 2 s
            proxy.come_up()
            events["up"] = time.monotonic()

        def on_request(method: str, path: str) -> None:
            # After the first video's record is written: mid-job, with two videos to go.
            if "restart" not in events and method == "PUT" and "/_deblur/records/" in path:
                events["restart"] = time.monotonic()
                threading.Thread(target=restart, daemon=True).start()

        proxy.on_request = on_request
        run = run_driver(
            _batch_args(f"{bucket}/in", f"{bucket}/out", checkpoint), env={"DEBLUR_S3_ENDPOINT": proxy.url}
        )
        assert run.returncode == 0, run.stderr[-3000:]
        assert {"restart", "down", "up"} <= set(events), events
        assert events["up"] - events["down"] >= 2.0
        # The job went on after the restart: the other videos' records were written afterwards.
        after = [e for e in proxy.log if e.at > events["up"] and e.status == 200 and e.method == "PUT"]
        assert len([e for e in after if "/_deblur/records/" in e.path]) >= 2, proxy.log
        for key, source in sources.items():
            assert storage.read_bytes(f"{bucket}/in/{key}") == source.read_bytes()  # inputs came back whole
        _check_job_output(f"{bucket}/out", checkpoint, sources, tmp_path)
