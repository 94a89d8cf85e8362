"""Every entry point against the bad-input corpus (``bad_inputs.CASES``): `deblur video`, `deblur synth`,
`deblur batch` and the HTTP API each answer every file with its documented result, a correct output
or a clear error naming the file, and leave nothing half-written."""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import av
import httpx
import pyarrow.parquet as pq
import pytest
import torch
from bad_inputs import CASES, Case, build_corpus

from deblur import storage
from deblur.checkpoint import save_checkpoint
from deblur.cli import main
from deblur.data.dataset import output_uris
from deblur.video import probe_video
from tiny import tiny_model, torch_threads

BY_NAME = {case.name: case for case in CASES}
# Synthesis at tau = T = 3 with clips and training windows of 4 pairs: 12 source frames make one window.
SYNTH_SETTINGS = {
    "taus": "[3]",
    "stride_max": "1.01",
    "scale": "1.0",
    "clip_frames": "4",
    "window_frames": "4",
    "min_window_frames": "4",
    "eval_fraction": "0",
}
SYNTH_MIN_FRAMES, SYNTH_PAIRS = 12, 4


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    # The model here is tiny: one thread is fastest, and leaves the other core alone.
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_checkpoint(tiny_model(), path)
    return path


@pytest.fixture(scope="module")
def corpus_uri(corpus: dict[str, Path], local_s3: object) -> str:
    import uuid

    bucket = f"s3://corpus-{uuid.uuid4().hex[:8]}"
    storage.ensure_bucket(bucket)
    for name, path in corpus.items():
        storage.upload_file(path, f"{bucket}/in/{name}")
    return f"{bucket}/in"


def facts(path: Path) -> dict[str, object]:
    """Frame count and times, size and rotation of a video (tags of any encoding, unknown codecs)."""
    with av.open(str(path), metadata_errors="replace") as container:
        times = [float(frame.time) for frame in container.decode(video=0)]
    info = probe_video(path)
    return {"frames": len(times), "times": times, "size": (info.width, info.height), "rotation": info.rotation}


def check_deblurred(case: Case, source: Path, output: Path) -> None:
    """A valid case's output: every frame, the input's size, timing and rotation."""
    want, got = facts(source), facts(output)
    assert got["frames"] == case.frames, (case.name, got["frames"])
    assert got["size"] == want["size"] and got["rotation"] == case.rotation == want["rotation"]
    assert got["times"] == want["times"]
    if case.vfr_times is not None:
        assert got["times"] == list(case.vfr_times)  # variable frame intervals kept, not resampled


def check_error(case: Case, message: str, name: str) -> None:
    assert message.startswith(f"{name}: "), message
    assert re.search(case.error, message), (case.name, message)


# ---------------------------------------------------------------------------------------------
# deblur video
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_deblur_video(
    case: Case, corpus: dict[str, Path], checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = corpus[case.name]
    out = tmp_path / f"{Path(case.name).stem}.mp4"
    code = main(["video", str(source), "-o", str(out), "--checkpoint", str(checkpoint), "--device", "cpu", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    if case.valid:
        assert code == 0, err
        check_deblurred(case, source, out)
        assert [p.name for p in tmp_path.iterdir()] == [out.name]
    else:
        assert code == 1 and len(err) == 1, err
        assert err[0].startswith("deblur: error: ")
        check_error(case, err[0].removeprefix("deblur: error: "), str(source))
        assert list(tmp_path.iterdir()) == []  # no output, no partial file


# ---------------------------------------------------------------------------------------------
# deblur synth (Ray Data) and deblur batch (Ray actors), on the whole corpus in S3 at once
# ---------------------------------------------------------------------------------------------


@pytest.mark.long
@pytest.mark.usefixtures("ray_session")
def test_deblur_synth(corpus_uri: str, corpus: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = corpus_uri.replace("/in", "/synth")
    settings = [arg for key, value in SYNTH_SETTINGS.items() for arg in ("--set", f"{key}={value}")]
    assert main(["synth", corpus_uri, out, *settings, "--cpus-per-task", "0.5"]) == 0
    err = capsys.readouterr().err
    manifest = json.loads(storage.read_bytes(f"{out}/manifest.json"))
    records = {r["video_id"]: r for r in manifest["videos"]}
    assert set(records) == set(BY_NAME)
    expected_files = {"manifest.json"}
    for name, record in records.items():
        case, uri = BY_NAME[name], f"{corpus_uri}/{name}"
        expected_files.add(f"records/{name}.json")
        assert json.loads(storage.read_bytes(f"{out}/records/{name}.json")) == record
        if case.valid and case.frames >= SYNTH_MIN_FRAMES:
            assert record["status"] == "ok", record
            assert record["pairs"] == SYNTH_PAIRS and len(record["outputs"]) == 1
            (shard,) = output_uris(record, out)
            expected_files.add(record["outputs"][0])
            with storage.open_input(shard) as handle:
                (row,) = pq.read_table(handle).to_pylist()
            size = probe_video(corpus[name])
            assert (row["frames"], row["height"], row["width"]) == (SYNTH_PAIRS, size.height, size.width)
            assert len(row["blurry"]) == len(row["sharp"]) == SYNTH_PAIRS * size.height * size.width * 3
        else:
            # Not a video, or too short for one training window: skipped with the reason, nothing written.
            assert record["status"] == "skipped" and record["outputs"] == [] and record["pairs"] == 0, record
            check_error(case if not case.valid else _too_short(case), record["error"], uri)
            assert f"skipped: {record['error']}" in err
    assert set(storage.list_files(out)) == {f"{out}/{key}" for key in expected_files}  # no stray shard


def _too_short(case: Case) -> Case:
    return Case(case.name, case.build, error="too short for one training window")


@pytest.mark.long
@pytest.mark.usefixtures("ray_session")
def test_deblur_batch(
    corpus_uri: str, corpus: dict[str, Path], checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = corpus_uri.replace("/in", "/batch")
    args = ["--checkpoint", str(checkpoint), "--actors", "2", "--cpus-per-actor", "0.5", "--device", "cpu", "-q"]
    code = main(["batch", corpus_uri, out, *args])
    err = capsys.readouterr().err
    assert code == 1  # some videos failed: the job says so in its exit status
    manifest = json.loads(storage.read_bytes(f"{out}/_deblur/manifest.json"))
    records = {r["key"]: r for r in manifest["videos"]}
    assert set(records) == set(BY_NAME)
    valid = {case.name for case in CASES if case.valid}
    assert manifest["summary"] == {"ok": len(valid), "failed": len(CASES) - len(valid)}
    for name, record in records.items():
        case = BY_NAME[name]
        assert record["attempts"] == 1, record  # bad input is not retried
        if case.valid:
            assert record["status"] == "ok" and record["frames"] == case.frames, record
            local = tmp_path / f"out-{name}"
            storage.download_file(f"{out}/{name}", local)
            check_deblurred(case, corpus[name], local)
        else:
            assert record["status"] == "failed", record
            check_error(case, record["error"], f"{corpus_uri}/{name}")
            assert f"failed: {name}: {record['error']}" in err
    written = {storage.relative_key(u, out) for u in storage.list_files(out)}
    records_written = {f"_deblur/records/{name}.json" for name in BY_NAME}
    assert written == valid | records_written | {"_deblur/manifest.json"}  # no output for a failed video


# ---------------------------------------------------------------------------------------------
# The HTTP API: POST /v1/videos
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work_dirs_before(serve_endpoint: dict) -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("deblur-serve-*")}


@pytest.fixture(scope="module")
def http_answers(
    corpus: dict[str, Path], serve_endpoint: dict, work_dirs_before: set[str]
) -> dict[str, httpx.Response]:
    """Every file of the corpus posted to /v1/videos, three at a time, as a client with a folder
    of videos would: each upload starts its own session actor (seconds here), so one at a time
    took a minute. Each case is then checked by its own test."""
    from concurrent.futures import ThreadPoolExecutor

    def post(name: str) -> httpx.Response:
        response = httpx.post(
            f"{serve_endpoint['url']}/v1/videos",
            params={"filename": name},
            content=corpus[name].read_bytes(),
            timeout=180,
        )
        response.read()
        return response

    with ThreadPoolExecutor(3) as pool:  # 3 sessions of 0.25 CPU beside the replicas: all fit in 2 CPUs
        return dict(zip(BY_NAME, pool.map(post, BY_NAME), strict=True))


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
@pytest.mark.usefixtures("ray_session")
def test_http_api(case: Case, corpus: dict[str, Path], http_answers: dict[str, httpx.Response], tmp_path: Path) -> None:
    source = corpus[case.name]
    response = http_answers[case.name]
    if case.valid:
        assert response.status_code == 200, response.text
        assert int(response.headers["X-Deblur-Frames"]) == case.frames
        suffix = Path(re.search(r'filename="([^"]+)"', response.headers["Content-Disposition"]).group(1)).suffix
        out = tmp_path / f"out{suffix}"
        out.write_bytes(response.content)
        check_deblurred(case, source, out)
    else:
        assert response.status_code == 422, (response.status_code, response.text)
        check_error(case, response.json()["detail"], case.name)


@pytest.mark.usefixtures("ray_session")
def test_http_api_leaves_no_work_files(http_answers: dict[str, httpx.Response], work_dirs_before: set[str]) -> None:
    deadline = time.monotonic() + 10
    while True:
        left = {p.name for p in Path(tempfile.gettempdir()).glob("deblur-serve-*")} - work_dirs_before
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert left == set()
