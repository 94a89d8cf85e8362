"""Planning a batch run on the local S3 server, without Ray: reruns, record names, unsafe keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deblur import storage
from deblur.batch import (
    BatchConfig,
    _abort_uploads,
    _record_uri,
    _write_json,
    deblur_object,
    plan_batch,
    run_batch,
)
from deblur.batch_worker import failure_record
from deblur.cli import main
from media import write_test_video
from tiny import tiny_model


def bucket_keys(bucket: str) -> set[str]:
    return {storage.relative_key(u, bucket) for u in storage.list_files(bucket)}


def object_writes(bucket: str, prefix: str) -> list[tuple[str, str]]:
    """Every version and delete marker under ``prefix`` (the bucket must be versioned)."""
    name, key = storage.split_s3_uri(f"{bucket}/{prefix}")
    listing = storage.s3_client().list_object_versions(Bucket=name, Prefix=key)
    return sorted((v["Key"], v["VersionId"]) for v in listing.get("Versions", []) + listing.get("DeleteMarkers", []))


def test_record_names_are_unambiguous(s3_bucket: str) -> None:
    out = f"{s3_bucket}/out"
    keys = ["a/b.mp4", "a--b.mp4", "a%2Fb.mp4", "x" * 300 + ".mp4", "y" * 300 + ".mp4"]
    uris = [_record_uri(out, key) for key in keys]
    assert len(set(uris)) == len(keys)
    assert all(u.startswith(f"{out}/_deblur/records/") and "/" not in u.rsplit("records/", 1)[1] for u in uris)
    assert all(len(u.rsplit("/", 1)[1]) < 255 for u in uris)  # a file name on any file system

    # Same bytes, so the same version: with "/" -> "--" naming a/b.mp4's record made a--b.mp4 "done".
    for key in ("a/b.mp4", "a--b.mp4"):
        storage.write_bytes(f"{s3_bucket}/in/{key}", b"same bytes")
    task, other = sorted(plan_batch(f"{s3_bucket}/in", out)[0], key=lambda t: t.key != "a/b.mp4")
    assert task.key == "a/b.mp4"
    storage.write_bytes(task.destination, b"deblurred")
    _write_json(_record_uri(out, task.key), {"key": task.key, "version": task.version, "status": "ok"})
    tasks, done, rejected = plan_batch(f"{s3_bucket}/in", out)
    assert [t.key for t in tasks] == ["a--b.mp4"] and [r["key"] for r in done] == ["a/b.mp4"] and not rejected

    # A record found under a video's name but written for another key is not trusted.
    _write_json(_record_uri(out, "a--b.mp4"), {"key": "a/b.mp4", "version": other.version, "status": "ok"})
    storage.write_bytes(other.destination, b"deblurred")
    assert [t.key for t in plan_batch(f"{s3_bucket}/in", out)[0]] == ["a--b.mp4"]


def test_rerun_skips_bad_input_and_retries_transient_failures(
    s3_bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inp, out = f"{s3_bucket}/in", f"{s3_bucket}/out"
    storage.write_bytes(f"{inp}/corrupt.mp4", b"\x00\x00\x00\x20ftypisom" + b"\x01" * 3000)
    storage.write_bytes(f"{inp}/changed.mp4", b"\x00\x00\x00\x20ftypisom" + b"\x02" * 3000)
    storage.upload_file(write_test_video(tmp_path / "f.mp4", width=32, height=32, frames=3), f"{inp}/flaky.mp4")
    tasks = {t.key: t for t in plan_batch(inp, out)[0]}
    assert set(tasks) == {"corrupt.mp4", "changed.mp4", "flaky.mp4"}

    # What a run records: bad input from the real per-video work, an actor that died past its retries.
    model = tiny_model()
    for key in ("corrupt.mp4", "changed.mp4"):
        record = deblur_object(tasks[key], model, staging_uri=f"{out}/_deblur/staging/x/{key}", device="cpu")
        assert record["status"] == "failed" and record["error_kind"] == "input" and key in record["error"]
        _write_json(_record_uri(out, key), record)
    flaky = tasks["flaky.mp4"]
    died = failure_record(
        flaky.key, flaky.source, flaky.destination, flaky.version, "actor died: ...", kind="transient"
    )
    _write_json(_record_uri(out, "flaky.mp4"), died)
    storage.write_bytes(f"{inp}/changed.mp4", b"\x00\x00\x00\x20ftypisom" + b"\x03" * 3000)  # a new version

    tasks2, done, rejected = plan_batch(inp, out)
    assert sorted(t.key for t in tasks2) == ["changed.mp4", "flaky.mp4"]
    assert [r["key"] for r in done] == ["corrupt.mp4"] and not rejected
    assert sorted(t.key for t in plan_batch(inp, out, retry_failed=True)[0]) == sorted(tasks)

    # The CLI's dry run says the same.
    capsys.readouterr()
    assert main(["batch", inp, out, "--dry-run", "-q"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert sorted(line.split()[1] for line in listed if line.startswith("deblur ")) == [
        f"{inp}/changed.mp4",
        f"{inp}/flaky.mp4",
    ]
    assert [line for line in listed if line.startswith("failed ")] == [f"failed  {inp}/corrupt.mp4: {done[0]['error']}"]
    assert main(["batch", inp, out, "--dry-run", "--retry-failed", "-q"]) == 0
    assert sum(line.startswith("deblur ") for line in capsys.readouterr().out.splitlines()) == 3


def test_unsafe_keys_are_recorded_and_never_written(s3_bucket: str, capsys: pytest.CaptureFixture[str]) -> None:
    bucket, _ = storage.split_s3_uri(s3_bucket)
    unsafe = ["x/../../escape.mp4", "./dot.mp4", "a//empty.mp4", "hash#tag.mp4", "what?.mp4"]
    for key in unsafe:  # boto3 directly: s3:// URIs here cannot even name the last two
        storage.s3_client().put_object(Bucket=bucket, Key=f"in/{key}", Body=b"a video, perhaps")
    before = bucket_keys(s3_bucket)
    assert before == {f"in/{key}" for key in unsafe}

    tasks, done, rejected = plan_batch(f"{s3_bucket}/in", f"{s3_bucket}/out")
    assert not tasks and not done
    assert sorted(r["key"] for r in rejected) == sorted(unsafe)
    for record in rejected:
        assert record["status"] == "failed" and record["error_kind"] == "input" and record["destination"] is None
        assert record["error"].startswith(f"{s3_bucket}/in/{record['key']}: key ")
    assert main(["batch", f"{s3_bucket}/in", f"{s3_bucket}/out", "--dry-run"]) == 0
    assert "failed  " in capsys.readouterr().out

    # Nothing to deblur, so no Ray: the records and the manifest, nothing else, all below out/_deblur.
    run = run_batch(f"{s3_bucket}/in", f"{s3_bucket}/out", progress=False)
    assert run.summary == {"ok": 0, "failed": len(unsafe)} and run.processed == len(unsafe)
    written = bucket_keys(s3_bucket) - before
    assert written == {storage.split_s3_uri(_record_uri(f"{s3_bucket}/out", k))[1] for k in unsafe} | {
        "out/_deblur/manifest.json"
    }
    manifest = json.loads(storage.read_bytes(f"{s3_bucket}/out/_deblur/manifest.json"))
    assert {v["key"]: v["error_kind"] for v in manifest["videos"]} == dict.fromkeys(unsafe, "input")

    # A rerun writes nothing: with versioning on, any write would add a version or a delete marker.
    storage.s3_client().put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    versions = object_writes(s3_bucket, "out/")
    assert versions and {v for _, v in versions} == {"null"}
    again = run_batch(f"{s3_bucket}/in", f"{s3_bucket}/out", progress=False)
    assert again.processed == 0 and again.summary == run.summary and again.manifest_uri == run.manifest_uri
    assert object_writes(s3_bucket, "out/") == versions


def test_unfinished_uploads_of_final_keys_are_aborted(s3_bucket: str) -> None:
    bucket, _ = storage.split_s3_uri(s3_bucket)
    client = storage.s3_client()
    for key in ("out/a/v.mp4", "out/a/v.mp4.other", "elsewhere/v.mp4"):  # as a commit killed mid-copy leaves
        upload = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        client.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"x" * 1024)
    _abort_uploads([f"{s3_bucket}/out/a/v.mp4", f"{s3_bucket}/out/b.mp4"])
    left = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert sorted(u["Key"] for u in left) == ["elsewhere/v.mp4", "out/a/v.mp4.other"]  # only the given keys


def test_precision_is_checked_like_deblur_video() -> None:
    with pytest.raises(ValueError, match="unknown precision 'int4'"):
        BatchConfig(precision="int4")
    assert BatchConfig.from_dict({"precision": "int8"}).precision == "int8"
    with pytest.raises(SystemExit):
        main(["batch", "s3://in-x/p", "s3://out-x/p", "--precision", "int4"])
