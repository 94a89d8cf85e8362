"""`deblur batch` on a local Ray cluster and the local S3 server, with real video files."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from deblur import storage
from deblur.batch import BatchConfig, BatchError, run_batch
from deblur.checkpoint import save_checkpoint
from deblur.cli import main
from deblur.model import DeblurNet
from deblur.video import read_frames
from media import stream_facts, write_test_video
from tiny import tiny_model

pytestmark = pytest.mark.usefixtures("ray_session")


def decoded(path_or_uri: str | Path) -> np.ndarray:
    with storage.open_input(str(path_or_uri)) as f:
        return np.stack(list(read_frames(f, name=str(path_or_uri))))


def download(uri: str, tmp_path: Path) -> Path:
    local = tmp_path / f"dl-{abs(hash(uri))}{Path(uri).suffix}"
    storage.download_file(uri, local)
    return local


def test_archive_round_trip_bad_input_and_rerun(s3_bucket: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    checkpoint = f"{s3_bucket}/models/tiny.safetensors"  # loaded from S3 by every actor
    save_checkpoint(tiny_model(), checkpoint, provenance={"purpose": "test"})
    local_checkpoint = tmp_path / "tiny.safetensors"
    storage.download_file(checkpoint, local_checkpoint)

    sources = {
        "a/with_audio.mp4": write_test_video(tmp_path / "1.mp4", width=48, height=32, frames=20, audio=True),
        "a/b/silent.mp4": write_test_video(tmp_path / "2.mp4", width=40, height=30, frames=12, audio=False, fps=25),
        "odd.mov": write_test_video(tmp_path / "3.mov", width=33, height=21, frames=9, audio=False),
        "c/short.mp4": write_test_video(tmp_path / "4.mp4", width=32, height=32, frames=2, audio=False),
    }
    for key, path in sources.items():
        storage.upload_file(path, f"{s3_bucket}/in/{key}")
    storage.write_bytes(f"{s3_bucket}/in/corrupt.mp4", b"\x00\x00\x00\x20ftypisom" + os.urandom(3000))
    storage.write_bytes(f"{s3_bucket}/in/readme.txt", b"not a video")

    config = BatchConfig(checkpoint=checkpoint, actors=2, cpus_per_actor=0.5, lossless=True)
    dry = run_batch(f"{s3_bucket}/in", f"{s3_bucket}/out", config=config, dry_run=True)
    assert sorted(t.key for t in dry.planned) == sorted([*sources, "corrupt.mp4"])
    assert storage.list_files(f"{s3_bucket}/out") == [] if storage.exists(f"{s3_bucket}/out") else True

    run = run_batch(f"{s3_bucket}/in", f"{s3_bucket}/out", config=config, progress=False)
    by_key = {r["key"]: r for r in run.records}
    assert run.summary == {"ok": 4, "failed": 1}
    assert "corrupt.mp4" in by_key["corrupt.mp4"]["error"] and by_key["corrupt.mp4"]["status"] == "failed"
    manifest = json.loads(storage.read_bytes(run.manifest_uri))
    assert manifest["summary"] == {"ok": 4, "failed": 1}
    assert {v["key"] for v in manifest["videos"]} == {*sources, "corrupt.mp4"}

    # Only the mirrored outputs and the control folder were written, nothing else.
    written = {storage.relative_key(u, f"{s3_bucket}/out") for u in storage.list_files(f"{s3_bucket}/out")}
    assert {w for w in written if not w.startswith("_deblur/")} == set(sources)
    assert not any(w.startswith("_deblur/staging") for w in written)

    for key, source in sources.items():
        out = download(f"{s3_bucket}/out/{key}", tmp_path)
        want, got = stream_facts(source), stream_facts(out)
        for fact in ("frames", "times", "fps", "size", "audio", "audio_packets"):
            assert got[fact] == want[fact], (key, fact)
        assert by_key[key]["frames"] == want["frames"]
        # The same frames as `deblur video` on the same file.
        reference = tmp_path / f"ref{Path(key).suffix}"
        args = [str(source), "-o", str(reference), "--checkpoint", str(local_checkpoint), "--lossless", "-q"]
        assert main(["video", *args, "--device", "cpu"]) == 0
        np.testing.assert_array_equal(decoded(out), decoded(reference))

    # A rerun finds everything done and writes nothing.
    before = {u: storage.object_version(u) for u in storage.list_files(f"{s3_bucket}/out") if "_deblur" not in u}
    again = run_batch(f"{s3_bucket}/in", f"{s3_bucket}/out", config=config, progress=False)
    assert [t.key for t in again.planned] == ["corrupt.mp4"]  # only the failed one is tried again
    assert again.processed == 1 and again.summary == {"ok": 4, "failed": 1}
    assert {u: storage.object_version(u) for u in before} == before


def test_bad_prefixes_and_empty_input(s3_bucket: str) -> None:
    with pytest.raises(BatchError, match="overlap"):
        run_batch(f"{s3_bucket}/in", f"{s3_bucket}/in/out", dry_run=True)
    storage.write_bytes(f"{s3_bucket}/in/notes.txt", b"x")
    with pytest.raises(BatchError, match="no videos found"):
        run_batch(f"{s3_bucket}/in", f"{s3_bucket}/out", dry_run=True)
    assert main(["batch", f"{s3_bucket}/nothing-here", f"{s3_bucket}/out2", "--dry-run"]) == 1


@pytest.mark.slow
def test_killed_actor_retries_the_video_from_its_start(s3_bucket: str, tmp_path: Path) -> None:
    torch.manual_seed(1)
    checkpoint = tmp_path / "full.safetensors"
    save_checkpoint(DeblurNet(), checkpoint)  # the full-width network: a few seconds for this video
    source = write_test_video(tmp_path / "long.mp4", width=96, height=64, frames=240, audio=True)
    storage.upload_file(source, f"{s3_bucket}/in/long.mp4")
    pids: list[int] = []
    config = BatchConfig(checkpoint=str(checkpoint), actors=1, cpus_per_actor=1.0, lossless=True)

    def kill_first_actor_mid_video() -> None:
        while not pids:
            time.sleep(0.05)
        time.sleep(2.0)  # the video takes several seconds: this lands in the middle of it
        os.kill(pids[0], signal.SIGKILL)

    killer = threading.Thread(target=kill_first_actor_mid_video)
    killer.start()
    run = run_batch(
        f"{s3_bucket}/in", f"{s3_bucket}/out", config=config, progress=False, on_actor=lambda _, pid: pids.append(pid)
    )
    killer.join()
    assert len(pids) == 2  # the killed actor was replaced
    (record,) = run.records
    assert record["status"] == "ok" and record["attempts"] == 2
    out = download(f"{s3_bucket}/out/long.mp4", tmp_path)
    assert stream_facts(out)["frames"] == 240 and stream_facts(out)["audio"] == stream_facts(source)["audio"]
    reference = tmp_path / "ref.mp4"
    assert main(["video", str(source), "-o", str(reference), "--checkpoint", str(checkpoint), "--lossless", "-q"]) == 0
    np.testing.assert_array_equal(decoded(out), decoded(reference))
    assert not [u for u in storage.list_files(f"{s3_bucket}/out") if "staging" in u]
