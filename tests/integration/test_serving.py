"""The Ray Serve endpoint on a local Ray: real HTTP (httpx), WebSockets, real videos, the local S3 server."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from deblur import storage
from deblur.checkpoint import load_model
from deblur.client import DeblurClient, EndpointError
from deblur.engine import deblur_frames
from deblur.video import read_frames
from media import pattern_frame, stream_facts, write_test_video

pytestmark = pytest.mark.usefixtures("ray_session")


def offline(checkpoint: Path, frames: list[np.ndarray]) -> list[np.ndarray]:
    return list(deblur_frames(load_model(checkpoint), frames, device="cpu"))


def video_frames(n: int, width: int, height: int, shift: int = 0) -> list[np.ndarray]:
    return [pattern_frame(i + shift, width, height) for i in range(n)]


def test_two_concurrent_sessions_get_exactly_the_offline_frames(serve_endpoint: dict) -> None:
    videos = {"a": video_frames(12, 40, 30), "b": video_frames(9, 33, 21, shift=50)}
    results: dict[str, list[np.ndarray] | BaseException] = {}

    def run(name: str) -> None:
        try:
            with DeblurClient(serve_endpoint["url"]) as client:
                session = client.session(fmt="raw")
                out: list[np.ndarray] = []
                for frame in videos[name]:
                    out += session.push(frame)
                results[name] = out + session.close()
        except BaseException as error:
            results[name] = error

    threads = [threading.Thread(target=run, args=(name,)) for name in videos]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for name, frames in videos.items():
        got = results[name]
        assert not isinstance(got, BaseException), got
        expected = offline(serve_endpoint["checkpoint"], frames)
        assert len(got) == len(frames)
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_array_equal(g, e)


def test_session_latency_is_m_frames_and_png_works(serve_endpoint: dict) -> None:
    frames = video_frames(5, 24, 16)
    with DeblurClient(serve_endpoint["url"]) as client:
        session = client.session(fmt="png")
        assert session.info["m"] == 1
        assert session.push(frames[0]) == []  # frame 0 needs frame 1
        out = session.push(frames[1])
        assert len(out) == 1
        for frame in frames[2:]:
            out += session.push(frame)
        out += session.close()
    for g, e in zip(out, offline(serve_endpoint["checkpoint"], frames), strict=True):
        np.testing.assert_array_equal(g, e)  # PNG is lossless


def test_websocket_stream_matches_offline(serve_endpoint: dict) -> None:
    frames = video_frames(10, 40, 30, shift=7)
    with DeblurClient(serve_endpoint["url"]) as client:
        got = list(client.stream(frames, fmt="raw"))
    expected = offline(serve_endpoint["checkpoint"], frames)
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_array_equal(g, e)


def test_whole_video_upload_keeps_frames_fps_and_audio(serve_endpoint: dict, tmp_path: Path) -> None:
    source = write_test_video(tmp_path / "in.mp4", width=48, height=32, frames=25, fps=25, audio=True)
    out = tmp_path / "out.mp4"
    with DeblurClient(serve_endpoint["url"]) as client:
        assert client.deblur_video(source, out, lossless=True) == 25
    want, got = stream_facts(source), stream_facts(out)
    for fact in ("frames", "times", "fps", "size", "audio", "audio_packets"):
        assert got[fact] == want[fact], fact
    expected = offline(serve_endpoint["checkpoint"], list(read_frames(source)))
    for g, e in zip(read_frames(out), expected, strict=True):
        np.testing.assert_array_equal(g, e)


def test_idle_session_is_reclaimed(serve_endpoint: dict) -> None:
    with DeblurClient(serve_endpoint["url"]) as client:
        before = client.metrics()["open_sessions"]
        session = client.session()
        session.push(video_frames(1, 16, 16)[0])
        assert client.metrics()["open_sessions"] == before + 1
        time.sleep(serve_endpoint["session_timeout_s"] + 3)
        with pytest.raises(EndpointError) as error:
            session.push(video_frames(2, 16, 16)[1])
        assert error.value.status == 410 and session.id in error.value.message
        assert client.metrics()["open_sessions"] == before


def test_bad_input_gets_a_4xx_with_a_message(serve_endpoint: dict, tmp_path: Path) -> None:
    url = serve_endpoint["url"]
    http = httpx.Client(base_url=url, timeout=60)
    sid = http.post("/v1/sessions").json()["session_id"]
    frame = pattern_frame(0, 20, 10)
    raw = {"Content-Type": "application/octet-stream"}

    def push(seq: int, body: bytes, headers: dict, **params: int) -> httpx.Response:
        return http.post(f"/v1/sessions/{sid}/frames", params={"seq": seq, **params}, content=body, headers=headers)

    def detail(response: httpx.Response) -> str:
        return response.json()["detail"]

    r = push(0, frame.tobytes()[:-1], raw, width=20, height=10)
    assert r.status_code == 422 and "600 bytes" in detail(r)
    r = push(0, frame.tobytes(), raw)
    assert r.status_code == 422 and "width and height" in detail(r)
    r = push(0, b"not a png", {"Content-Type": "image/png"})
    assert r.status_code == 422 and "not a readable image/png" in detail(r)
    r = push(0, b"x", {"Content-Type": "text/plain"})
    assert r.status_code == 415
    big = np.zeros((300, 400, 3), np.uint8)
    r = push(0, big.tobytes(), raw, width=400, height=300)
    assert r.status_code == 413 and "limit" in detail(r)  # more bytes than the largest allowed frame
    big_png = io.BytesIO()
    Image.fromarray(big).save(big_png, format="PNG")  # a small body, but too many pixels
    r = push(0, big_png.getvalue(), {"Content-Type": "image/png"})
    assert r.status_code == 422 and "exceeds the limit 320x240" in detail(r)
    assert push(0, frame.tobytes(), raw, width=20, height=10).status_code == 200
    r = push(2, frame.tobytes(), raw, width=20, height=10)
    assert r.status_code == 409 and "expected frame seq=1" in detail(r)
    other = pattern_frame(1, 22, 10)
    r = push(1, other.tobytes(), raw, width=22, height=10)
    assert r.status_code == 422 and "22x10" in detail(r)
    assert push(1, frame.tobytes(), raw, width=20, height=10).status_code == 200  # the session survived
    assert http.delete(f"/v1/sessions/{sid}").status_code == 200
    r = push(2, frame.tobytes(), raw, width=20, height=10)
    assert r.status_code == 410
    r = http.post("/v1/sessions/0123456789abcdef/frames", params={"seq": 0}, content=b"", headers=raw)
    assert r.status_code == 410 and "does not exist" in detail(r)

    # Uploads: too large, not a video, an image renamed .mp4.
    r = http.post("/v1/videos", content=b"\0" * (3 << 20), params={"filename": "big.mp4"})
    assert r.status_code == 413 and "limit" in detail(r)
    r = http.post("/v1/videos", content=b"garbage" * 100, params={"filename": "junk.mp4"})
    assert r.status_code == 422 and "junk.mp4" in detail(r)
    png = io.BytesIO()
    Image.fromarray(frame).save(png, format="PNG")
    # FFmpeg reads a still image under any name as a one-frame video: that is deblurred, not refused.
    r = http.post("/v1/videos", content=png.getvalue(), params={"filename": "image.mp4"})
    assert r.status_code == 200 and r.headers["X-Deblur-Frames"] == "1"
    r = http.post("/v1/videos", content=b"x", params={"filename": "notes.txt"})
    assert r.status_code == 422 and ".txt" in detail(r)
    large = write_test_video(tmp_path / "large.mp4", width=400, height=300, frames=2, audio=False)
    r = http.post("/v1/videos", content=large.read_bytes(), params={"filename": "large.mp4"})
    assert r.status_code == 422 and "400x300" in detail(r)

    # Jobs: only s3:// URIs under the allowed prefixes.
    bucket = serve_endpoint["bucket"]
    cases = [
        ({"input": "/etc/passwd", "output": f"{bucket}/jobs/o.mp4"}, 422),
        ({"input": "s3://serve-other/x.mp4", "output": f"{bucket}/jobs/o.mp4"}, 403),
        ({"input": f"{bucket}/jobs/x.mp4", "output": "s3://serve-other/o.mp4"}, 403),
        ({"input": f"{bucket}/jobsx/x.mp4", "output": f"{bucket}/jobs/o.mp4"}, 403),
        ({"input": f"{bucket}/jobs/../x.mp4", "output": f"{bucket}/jobs/o.mp4"}, 403),
        ({"input": f"{bucket}/jobs/missing.mp4", "output": f"{bucket}/jobs/o.mp4"}, 404),
        ({"source": "s3://a/b"}, 422),
    ]
    for body, status in cases:
        r = http.post("/v1/jobs", json=body)
        assert r.status_code == status, (body, r.text)
        assert detail(r)
    assert not storage.exists(f"{bucket}/jobs/o.mp4")
    assert http.get("/v1/health").json() == {"status": "ok"}  # and the replica is still up


def test_api_key_is_enforced(serve_endpoint: dict) -> None:
    url = f"{serve_endpoint['url']}/keyed"
    assert httpx.get(f"{url}/v1/health").status_code == 200  # probes need no key
    r = httpx.post(f"{url}/v1/sessions")
    assert r.status_code == 401 and "API key" in r.json()["detail"]
    assert httpx.post(f"{url}/v1/sessions", headers={"X-API-Key": "wrong"}).status_code == 401
    assert httpx.get(f"{url}/v1/metrics").status_code == 401
    with DeblurClient(url, api_key=serve_endpoint["key"]) as client:
        session = client.session()
        frames = video_frames(3, 16, 16)
        out = [f for frame in frames for f in session.push(frame)] + session.close()
        assert len(out) == 3
        assert client.metrics()["open_sessions"] >= 0
    r = httpx.post(f"{url}/v1/sessions", headers={"Authorization": f"Bearer {serve_endpoint['key']}"})
    assert r.status_code == 201


def test_s3_job_is_submitted_and_polled(serve_endpoint: dict, tmp_path: Path) -> None:
    bucket = serve_endpoint["bucket"]
    source = write_test_video(tmp_path / "job.mp4", width=32, height=24, frames=8, audio=False)
    storage.upload_file(source, f"{bucket}/jobs/in/job.mp4")
    with DeblurClient(serve_endpoint["url"]) as client:
        job = client.submit_job(f"{bucket}/jobs/in/job.mp4", f"{bucket}/jobs/out/job.mp4")
        state = client.wait_job(job, timeout=120)
        assert state["status"] == "ok", state
        assert state["record"]["frames"] == 8
    local = tmp_path / "out.mp4"
    storage.download_file(f"{bucket}/jobs/out/job.mp4", local)
    assert stream_facts(local)["frames"] == 8
    assert [u for u in storage.list_files(f"{bucket}/jobs/out")] == [f"{bucket}/jobs/out/job.mp4"]


def test_openapi_documents_the_versioned_api(serve_endpoint: dict) -> None:
    spec = httpx.get(f"{serve_endpoint['url']}/openapi.json").json()
    paths = set(spec["paths"])
    assert {"/v1/videos", "/v1/sessions", "/v1/sessions/{session_id}/frames", "/v1/jobs", "/v1/jobs/{job_id}"} <= paths
    assert spec["info"]["version"] == "v1"
