"""The Ray Serve endpoint on a local Ray: real HTTP (httpx), WebSockets, real videos, the local S3 server."""

from __future__ import annotations

import io
import json
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path

import httpx
import numpy as np
import pytest
import ray
from PIL import Image
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from deblur import storage
from deblur.checkpoint import load_model
from deblur.cli import main
from deblur.client import DeblurClient, EndpointError
from deblur.engine import deblur_frames
from deblur.video import read_frames
from media import pattern_frame, stream_facts, write_test_video
from tiny import torch_threads

pytestmark = pytest.mark.usefixtures("ray_session")


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with no pixel data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.25)


def named_sessions(app: str) -> list[str]:
    import ray

    prefix = f"deblur-session-{app}/"
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)]


@pytest.fixture(scope="module")
def int8_endpoint(serve_endpoint: dict) -> Iterator[str]:
    """A third app: int8 sessions, one session at a time and no queue, videos of at most 10 frames,
    short-lived jobs."""
    from ray import serve

    from deblur.serving import build_app

    config = {
        "checkpoint": str(serve_endpoint["checkpoint"]),
        "device": "cpu",
        "precision": "int8",
        "session_cpus": 0.25,
        "max_sessions": 1,
        "max_queue": 0,
        "max_frames": 10,
        "max_upload_mb": 2,
        "max_width": 320,
        "max_height": 240,
        "allowed_prefixes": [f"{serve_endpoint['bucket']}/jobs"],
        "job_ttl_s": 30.0,
    }
    serve.run(build_app(config), name="int8", route_prefix="/int8")
    try:
        yield f"{serve_endpoint['url']}/int8"
    finally:
        serve.delete("int8")  # the session's endpoint goes on; this app's replicas must not


def offline_int8(checkpoint: Path, frames: list[np.ndarray]) -> list[np.ndarray]:
    with torch_threads(1):  # as in a session actor with under one CPU
        return list(deblur_frames(load_model(checkpoint), frames, device="cpu", precision="int8"))


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


def test_a_session_left_by_an_exception_is_closed_at_once(serve_endpoint: dict) -> None:
    with DeblurClient(serve_endpoint["url"]) as client:
        with pytest.raises(KeyError), client.session() as session:
            session.push(video_frames(1, 16, 16)[0])
            raise KeyError("the caller failed")
        # At once, not at the idle timeout: closed now, its actor on its way out.
        try:
            closed = session.status()["closed"]
        except EndpointError as gone:
            closed = gone.status
        assert closed in ("closed by the client", 410), closed
        wait_for(lambda: f"deblur-session-deblur/{session.id}" not in named_sessions("deblur"), "actor gone", 10)


def test_a_stream_the_caller_stops_reading_ends_its_session(serve_endpoint: dict) -> None:
    before = set(named_sessions("deblur"))
    with DeblurClient(serve_endpoint["url"]) as client:
        stream = client.stream(iter(video_frames(8, 16, 16)))
        next(stream)
        (actor,) = set(named_sessions("deblur")) - before
        stream.close()  # the caller stops: the socket closes without finish
        status = f"/v1/sessions/{actor.rsplit('/', 1)[1]}"

        def ended() -> bool:
            r = client._http.get(status)
            return r.status_code == 410 or r.json()["closed"] == "abandoned by its client"

        # Before the idle timeout would have closed it.
        wait_for(ended, "the abandoned session ended", serve_endpoint["session_timeout_s"] * 0.75)
        wait_for(lambda: actor not in named_sessions("deblur"), "the abandoned session's actor gone", 10)


def test_the_default_config_queues_streams_after_a_dropped_one_instead_of_refusing_them(serve_endpoint: dict) -> None:
    """serve/config.yaml's defaults on a 2-core machine: two sessions of 0.875 CPU beside the ingress."""
    from ray import serve

    from deblur.serving import build_app

    serve.run(build_app({}), name="defaults", route_prefix="/defaults")
    url = f"{serve_endpoint['url']}/defaults"
    frames = video_frames(12, 128, 96)
    try:
        with DeblurClient(url) as client:
            dropped = client.session()
            with connect(f"{url.replace('http', 'ws', 1)}/v1/sessions/{dropped.id}/stream", max_size=None) as ws:
                ws.send(json.dumps({"format": "raw", "width": 128, "height": 96}))
                for frame in frames[:4]:
                    ws.send(frame.tobytes())
                ws.recv(timeout=60)  # the first deblurred frame: the session is at work
            # ... and dropped without finish. Now two streams at once.
            results: dict[str, list[np.ndarray] | BaseException] = {}
            positions: dict[str, list[int]] = {"a": [], "b": []}

            def run(name: str) -> None:
                try:
                    with DeblurClient(url) as own:
                        results[name] = list(own.stream(iter(frames), on_queue=positions[name].append))
                except BaseException as error:  # reported below
                    results[name] = error

            began = time.monotonic()
            threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=150)
            took = time.monotonic() - began
        assert all(isinstance(results.get(n), list) and len(results[n]) == 12 for n in "ab"), results
        assert took < 120, f"two streams of 12 frames took {took:.0f} s"
        assert positions["a"] or positions["b"], "one of the two should have waited in the queue"
        for a, b in zip(results["a"], results["b"], strict=True):  # type: ignore[arg-type]
            np.testing.assert_array_equal(a, b)
    finally:
        serve.delete("defaults")


def test_a_dropped_stream_resumes_from_its_last_frame_and_matches_an_uninterrupted_run(serve_endpoint: dict) -> None:
    frames = video_frames(12, 40, 30)
    expected = offline(serve_endpoint["checkpoint"], frames)
    ws_url = serve_endpoint["url"].replace("http", "ws", 1)
    settings = json.dumps({"format": "raw", "width": 40, "height": 30})
    with DeblurClient(serve_endpoint["url"]) as client:
        session = client.session()
        received: list[np.ndarray] = []
        with connect(f"{ws_url}/v1/sessions/{session.id}/stream", max_size=None) as ws:
            ws.send(settings)
            for frame in frames[:6]:
                ws.send(frame.tobytes())
            received.append(np.frombuffer(ws.recv(timeout=30), np.uint8).reshape(30, 40, 3))
            wait_for(lambda: session.status()["next_seq"] == 6, "the server to take all six frames", 30)
        # Dropped without finish, four outputs lost in transit; back within resume_s.
        with connect(f"{ws_url}/v1/sessions/{session.id}/stream", max_size=None) as ws:
            ws.send(settings)
            ws.send(json.dumps({"type": "resume", "received": len(received)}))
            resumed = json.loads(ws.recv(timeout=30))
            assert resumed == {"type": "resumed", "next_seq": 6}
            for frame in frames[resumed["next_seq"] :]:
                ws.send(frame.tobytes())
            ws.send(json.dumps({"type": "finish"}))
            while isinstance(message := ws.recv(timeout=30), bytes):
                received.append(np.frombuffer(message, np.uint8).reshape(30, 40, 3))
            assert json.loads(message)["type"] == "done"
    assert len(received) == len(expected)
    for got, want in zip(received, expected, strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_dropped_stream_not_resumed_frees_its_session_after_resume_s(serve_endpoint: dict) -> None:
    with DeblurClient(serve_endpoint["url"]) as client:
        session = client.session()
        with connect(f"{serve_endpoint['url'].replace('http', 'ws', 1)}/v1/sessions/{session.id}/stream") as ws:
            ws.send(json.dumps({"format": "raw", "width": 16, "height": 16}))
            ws.send(video_frames(1, 16, 16)[0].tobytes())
        wait_for(lambda: session.status()["waiting_for_resume"], "the session to wait", 10)
        wait_for(lambda: session.id not in " ".join(named_sessions("deblur")), "the actor gone after resume_s", 15)


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
        session = client.session()
        session.push(video_frames(1, 16, 16)[0])
        # This session's own actor, not a count: an earlier test's closed session may still be
        # listed for a moment, and leave the count between two reads.
        actor = f"deblur-session-deblur/{session.id}"
        assert actor in named_sessions("deblur") and client.metrics()["open_sessions"] >= 1
        # Not one fixed sleep: on a loaded machine the watchdog and the actor's exit run late.
        # Status calls leave the session's idle clock alone; a push would restart it.
        started, deadline = time.monotonic(), time.monotonic() + serve_endpoint["session_timeout_s"] + 60
        while True:
            try:
                session.status()
            except EndpointError as gone:
                assert gone.status == 410, gone
                break
            assert time.monotonic() < deadline, "the idle session was never closed"
            time.sleep(0.5)
        assert time.monotonic() - started >= serve_endpoint["session_timeout_s"]
        with pytest.raises(EndpointError) as error:
            session.push(video_frames(2, 16, 16)[1])
        assert error.value.status == 410 and session.id in error.value.message
        while actor in named_sessions("deblur"):
            assert time.monotonic() < deadline, "the closed session's actor is still listed"
            time.sleep(0.5)


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
    r = push(0, png_declaring(20_000, 20_000), {"Content-Type": "image/png"})  # a 57-byte "decompression bomb"
    assert r.status_code == 422 and "too large" in detail(r)
    assert push(0, frame.tobytes(), raw, width=20, height=10).status_code == 200
    r = push(2, frame.tobytes(), raw, width=20, height=10)
    assert r.status_code == 409 and "expected frame seq=1" in detail(r)
    other = pattern_frame(1, 22, 10)
    r = push(1, other.tobytes(), raw, width=22, height=10)
    assert r.status_code == 422 and "22x10" in detail(r)
    assert push(1, frame.tobytes(), raw, width=20, height=10).status_code == 200  # the session survived
    r = http.delete(f"/v1/sessions/{sid}", params={"output": "jpeg"})
    assert r.status_code == 422 and "raw or png, got 'jpeg'" in detail(r)
    assert http.get(f"/v1/sessions/{sid}").json()["closed"] is None  # a refused close left it open
    assert http.delete(f"/v1/sessions/{sid}").status_code == 200
    r = push(2, frame.tobytes(), raw, width=20, height=10)
    assert r.status_code == 410 and sid in detail(r)  # closed (an id this app gave out): gone, not unknown
    for made_up in ("0123456789abcdef", "0" * 40, sid[:32] + "00000000"):
        r = http.post(f"/v1/sessions/{made_up}/frames", params={"seq": 0}, content=b"", headers=raw)
        assert r.status_code == 404 and "does not exist" in detail(r), made_up

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
    ready = httpx.get(f"{url}/v1/ready").json()  # a probe: no key
    assert ready["status"] == "ready" and ready["model"]["m"] == 1 and ready["model"]["precision"] == "fp32"
    assert "/" not in ready["model"]["source"]  # the checkpoint's name, not the server's path
    # No max_sessions: what the cluster holds (2 CPUs less a replica's quarter, 0.25 CPU per session).
    assert ready["sessions"] == {"open": ready["sessions"]["open"], "max": 7, "queued": 0}
    with DeblurClient(url, api_key=serve_endpoint["key"]) as client:
        before = client.metrics()
        session = client.session()
        actor = f"deblur-session-keyed/{session.id}"  # its own actor: the count may hold a closing one
        assert actor in named_sessions("keyed") and client.metrics()["open_sessions"] >= 1
        # A session belongs to its application: the open app at / cannot reach the keyed app's session.
        r = httpx.post(f"{serve_endpoint['url']}/v1/sessions/{session.id}/frames", params={"seq": 0}, content=b"")
        assert r.status_code == 404
        frames = video_frames(3, 16, 16)
        out = [f for frame in frames for f in session.push(frame)]
        after = client.metrics()
        # m = 1: the three pushes returned frames 0 and 1; each push was timed.
        assert len(out) == 2 and after["frames_total"] == before["frames_total"] + 2
        latency = after["push_latency_ms"]
        assert latency["count"] == before["push_latency_ms"]["count"] + 3
        assert latency["p50"] > 0 and latency["p99"] >= latency["p50"]
        assert after["frames_per_s_last_minute"] > before["frames_per_s_last_minute"]
        out += session.close()
        assert len(out) == 3
        # A closed session's actor exits a moment after its last reply.
        wait_for(lambda: actor not in named_sessions("keyed"), "the closed session to go")
    r = httpx.post(f"{url}/v1/sessions", headers={"Authorization": f"Bearer {serve_endpoint['key']}"})
    assert r.status_code == 201
    sid = r.json()["session_id"]
    assert httpx.delete(f"{url}/v1/sessions/{sid}", headers={"X-API-Key": serve_endpoint["key"]}).status_code == 200


def test_s3_job_is_submitted_and_polled(serve_endpoint: dict, tmp_path: Path) -> None:
    bucket = serve_endpoint["bucket"]
    source = write_test_video(tmp_path / "job.mp4", width=32, height=24, frames=8, audio=False)
    storage.upload_file(source, f"{bucket}/jobs/in/job.mp4")
    free_before = ray.available_resources().get("CPU", 0.0)
    with DeblurClient(serve_endpoint["url"]) as client:
        job = client.submit_job(f"{bucket}/jobs/in/job.mp4", f"{bucket}/jobs/out/job.mp4")
        state = client.wait_job(job, timeout=120)
        assert state["status"] == "ok", state
        assert state["record"]["frames"] == 8
        # A finished job is kept for polling (job_ttl_s) by an actor that holds no CPU or GPU: the
        # work ran as a task, and its CPU is free again while the job is still there to be polled.
        deadline = time.monotonic() + 30
        while ray.available_resources().get("CPU", 0.0) < free_before - 1e-6 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ray.available_resources().get("CPU", 0.0) >= free_before - 1e-6
        assert client.job(job)["status"] == "ok"
    local = tmp_path / "out.mp4"
    storage.download_file(f"{bucket}/jobs/out/job.mp4", local)
    assert stream_facts(local)["frames"] == 8
    assert [u for u in storage.list_files(f"{bucket}/jobs/out")] == [f"{bucket}/jobs/out/job.mp4"]


def test_an_s3_job_in_chunks_is_cut_deblurred_and_committed_whole(serve_endpoint: dict, tmp_path: Path) -> None:
    from deblur.evaluate import frame_psnr

    bucket = serve_endpoint["bucket"]
    keyframes_every_12 = {"g": "12", "keyint_min": "12", "sc_threshold": "0"}
    source = write_test_video(tmp_path / "long.mp4", width=48, height=32, frames=48, options=keyframes_every_12)
    storage.upload_file(source, f"{bucket}/jobs/split-in/long.mp4")
    outputs = {}
    with DeblurClient(serve_endpoint["url"]) as client:
        for chunks in (1, 2):
            r = client._http.post(
                "/v1/jobs",
                json={
                    "input": f"{bucket}/jobs/split-in/long.mp4",
                    "output": f"{bucket}/jobs/split-{chunks}/long.mp4",
                    "chunks": chunks,
                },
            )
            assert r.status_code == 202, r.text
            state = client.wait_job(r.json()["job_id"], timeout=180)
            assert state["status"] == "ok" and state["record"]["frames"] == 48, state
            assert state["record"].get("chunks", 1) == chunks, state
            outputs[chunks] = tmp_path / f"out{chunks}.mp4"
            storage.download_file(f"{bucket}/jobs/split-{chunks}/long.mp4", outputs[chunks])
        r = client._http.post(
            "/v1/jobs",
            json={"input": f"{bucket}/jobs/split-in/long.mp4", "output": f"{bucket}/jobs/x.mp4", "chunks": 0},
        )
        assert r.status_code == 422 and "chunks must be" in r.json()["detail"]
    assert stream_facts(outputs[2])["times"] == stream_facts(source)["times"]
    # The same video as the job in one piece, within H.264's loss (both are CRF 18, encoded apart);
    # the model-level match of chunks with a sequential run is tests/integration/test_chunks.py's.
    worst = min(frame_psnr(a, b) for a, b in zip(read_frames(outputs[2]), read_frames(outputs[1]), strict=True))
    assert worst >= 30.0, worst
    assert storage.list_files(f"{bucket}/jobs/split-2") == [f"{bucket}/jobs/split-2/long.mp4"]  # no parts left


def test_openapi_documents_the_versioned_api(serve_endpoint: dict) -> None:
    spec = httpx.get(f"{serve_endpoint['url']}/openapi.json").json()
    paths = set(spec["paths"])
    assert {"/v1/videos", "/v1/sessions", "/v1/sessions/{session_id}/frames", "/v1/jobs", "/v1/jobs/{job_id}"} <= paths
    assert spec["info"]["version"] == "v1"
    # The bodies the routes read themselves are declared, so that /docs can send them.
    bodies = {
        path: spec["paths"][path]["post"]["requestBody"]["content"]
        for path in paths
        if path.endswith(("videos", "frames", "jobs"))
    }
    assert bodies["/v1/videos"]["application/octet-stream"]["schema"] == {"type": "string", "format": "binary"}
    assert {"image/png", "image/jpeg", "application/octet-stream"} <= set(bodies["/v1/sessions/{session_id}/frames"])
    assert bodies["/v1/jobs"]["application/json"]["schema"]["required"] == ["input", "output"]


def test_bad_websocket_input_gets_an_error_and_a_4xxx_close(serve_endpoint: dict) -> None:
    url = serve_endpoint["url"]
    sid = httpx.post(f"{url}/v1/sessions").json()["session_id"]
    ws_url = url.replace("http://", "ws://") + f"/v1/sessions/{sid}/stream"
    cases: list[tuple[str | bytes, int, str]] = [
        ("not json", 400, "must be JSON"),
        ("[1, 2]", 400, "JSON object, got list"),
        ('{"format": "raw", "width": "abc", "height": 10}', 422, "width must be a positive integer"),
        ('{"format": "jpeg"}', 422, "raw or png"),
        (b"not a png", 422, "not a readable image/png"),
    ]
    for message, status, words in cases:
        with connect(ws_url) as ws:
            ws.send(message)
            error = json.loads(ws.recv(timeout=30))
            assert error["type"] == "error" and error["status"] == status and words in error["detail"], message
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=30)
            assert ws.close_code == 4000 + status, (message, ws.close_code)
            assert words in (ws.close_reason or ""), (message, ws.close_reason)
    # The replica and the session are unharmed: the session takes its first frame.
    assert httpx.get(f"{url}/v1/health").json() == {"status": "ok"}
    frame = pattern_frame(0, 20, 10)
    r = httpx.post(
        f"{url}/v1/sessions/{sid}/frames",
        params={"seq": 0, "width": 20, "height": 10},
        content=frame.tobytes(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 200
    assert httpx.delete(f"{url}/v1/sessions/{sid}").status_code == 200


def test_deblur_stream_command_live_and_whole(serve_endpoint: dict, tmp_path: Path) -> None:
    url, checkpoint = serve_endpoint["url"], serve_endpoint["checkpoint"]
    source = write_test_video(tmp_path / "in.mp4", width=40, height=30, frames=12, fps=25, audio=True)
    want = stream_facts(source)
    expected = offline(checkpoint, list(read_frames(source)))
    # A live session (over HTTP, then over the WebSocket): the frames at the source's rate, no audio.
    for name, extra in (("live.mp4", []), ("ws.mp4", ["--websocket", "--format", "png"])):
        out = tmp_path / name
        assert main(["stream", str(source), "-o", str(out), "--url", url, "--lossless", "-q", *extra]) == 0
        got = stream_facts(out)
        assert got["frames"] == 12 and got["fps"] == want["fps"] == Fraction(25) and got["size"] == want["size"]
        assert got["times"] == want["times"]  # the source is constant-rate
        assert want["audio"] and got["audio"] == []
        for g, e in zip(read_frames(out), expected, strict=True):
            np.testing.assert_array_equal(g, e)
    # --whole: the server transforms the file, timestamps and audio included.
    whole = tmp_path / "whole.mp4"
    assert main(["stream", str(source), "-o", str(whole), "--url", url, "--whole", "--lossless", "-q"]) == 0
    got = stream_facts(whole)
    for fact in ("frames", "times", "fps", "size", "audio", "audio_packets"):
        assert got[fact] == want[fact], fact
    for g, e in zip(read_frames(whole), expected, strict=True):
        np.testing.assert_array_equal(g, e)
    # Refusals: one line, status 1, nothing written.
    assert main(["stream", str(source), "-o", str(source), "--url", url, "-q"]) == 1
    large = write_test_video(tmp_path / "large.mp4", width=400, height=300, frames=2, audio=False)
    assert main(["stream", str(large), "-o", str(tmp_path / "no.mp4"), "--url", url, "-q"]) == 1
    assert main(["stream", str(large), "-o", str(tmp_path / "no.mp4"), "--url", url, "--whole", "-q"]) == 1
    assert not (tmp_path / "no.mp4").exists()


def test_int8_sessions_and_uploads_give_exactly_the_offline_int8_frames(
    int8_endpoint: str, serve_endpoint: dict, tmp_path: Path
) -> None:
    checkpoint = serve_endpoint["checkpoint"]
    frames = video_frames(8, 40, 30, shift=3)
    expected = offline_int8(checkpoint, frames)
    assert any(not np.array_equal(a, b) for a, b in zip(expected, offline(checkpoint, frames), strict=True))
    with DeblurClient(int8_endpoint) as client:
        assert client.ready()["model"]["precision"] == "int8"
        session = client.session(fmt="raw")
        assert session.info["precision"] == "int8"
        with pytest.raises(EndpointError) as full:  # max_sessions = 1, max_queue = 0
            client.session()
        assert full.value.status == 503 and "queue is full" in full.value.message
        out = [f for frame in frames for f in session.push(frame)] + session.close()
        assert len(out) == len(expected)
        for g, e in zip(out, expected, strict=True):
            np.testing.assert_array_equal(g, e)
        wait_for(lambda: client.metrics()["open_sessions"] == 0, "the closed session to go")
        # A whole-video upload runs in a session actor too, at the same precision.
        source = write_test_video(tmp_path / "in.mp4", width=40, height=30, frames=8, audio=False)
        result = tmp_path / "out.mp4"
        assert client.deblur_video(source, result, lossless=True) == 8
    for g, e in zip(read_frames(result), offline_int8(checkpoint, list(read_frames(source))), strict=True):
        np.testing.assert_array_equal(g, e)


def test_s3_jobs_are_held_to_the_upload_limits(int8_endpoint: str, serve_endpoint: dict, tmp_path: Path) -> None:
    bucket = serve_endpoint["bucket"]
    inputs = {
        "declared.mp4": write_test_video(tmp_path / "declared.mp4", width=32, height=24, frames=12, audio=False),
        # Matroska does not declare its frame count: the limit holds while the frames are decoded.
        "undeclared.mkv": write_test_video(
            tmp_path / "undeclared.mkv", width=32, height=24, frames=12, codec="ffv1", pix_fmt="bgr0", audio=False
        ),
        "wide.mp4": write_test_video(tmp_path / "wide.mp4", width=400, height=300, frames=2, audio=False),
        "ok.mp4": write_test_video(tmp_path / "ok.mp4", width=32, height=24, frames=8, audio=False),
    }
    for name, path in inputs.items():
        storage.upload_file(path, f"{bucket}/jobs/limits-in/{name}")
    expected_errors = {
        "declared.mp4": "12 frames exceeds the limit of 10",
        "undeclared.mkv": "more than 10 frames",
        "wide.mp4": "400x300 exceeds the limit 320x240",
    }
    with DeblurClient(int8_endpoint) as client:
        # All at once, as an archive's videos would come (and each job's start-up is seconds here).
        jobs = {
            name: client.submit_job(f"{bucket}/jobs/limits-in/{name}", f"{bucket}/jobs/limits-out/{name}")
            for name in inputs
        }
        for name, words in expected_errors.items():
            state = client.wait_job(jobs[name], timeout=120)
            source = f"{bucket}/jobs/limits-in/{name}"
            assert state["status"] == "failed" and state["error"].startswith(source) and words in state["error"], state
        state = client.wait_job(jobs["ok.mp4"], timeout=120)
        assert state["status"] == "ok" and state["record"]["frames"] == 8 and state["record"]["precision"] == "int8"
        # Over the upload size: refused at once.
        storage.write_bytes(f"{bucket}/jobs/limits-in/big.mp4", b"\0" * (3 << 20))
        with pytest.raises(EndpointError) as big:
            client.submit_job(f"{bucket}/jobs/limits-in/big.mp4", f"{bucket}/jobs/limits-out/big.mp4")
        assert big.value.status == 413 and "limit" in big.value.message
    assert storage.list_files(f"{bucket}/jobs/limits-out") == [f"{bucket}/jobs/limits-out/ok.mp4"]


def test_a_session_that_cannot_start_answers_503_and_leaves_no_actor(serve_endpoint: dict, tmp_path: Path) -> None:
    """An app whose sessions want more CPU than the cluster has free: opening one waits
    session_start_timeout_s, answers 503 and kills the pending actor."""
    from ray import serve

    from deblur.serving import build_app

    config = {
        "checkpoint": str(serve_endpoint["checkpoint"]),
        "device": "cpu",
        "session_cpus": 2.0,  # the replicas hold part of the 2 CPUs: never free
        "session_start_timeout_s": 3.0,
    }
    serve.run(build_app(config), name="full", route_prefix="/full")
    url = f"{serve_endpoint['url']}/full"
    try:
        began = time.monotonic()
        r = httpx.post(f"{url}/v1/sessions", timeout=60)
        assert r.status_code == 503 and "did not start within 3 s" in r.json()["detail"], r.text
        assert time.monotonic() - began >= 3.0
        wait_for(lambda: named_sessions("full") == [], "the pending session actor to be killed")
        source = write_test_video(tmp_path / "v.mp4", width=16, height=16, frames=3, audio=False)
        r = httpx.post(f"{url}/v1/videos", params={"filename": "v.mp4"}, content=source.read_bytes(), timeout=60)
        assert r.status_code == 503 and "did not start" in r.json()["detail"], r.text
        wait_for(lambda: named_sessions("full") == [], "the upload's pending actor to be killed")
        assert httpx.get(f"{url}/v1/health").json() == {"status": "ok"}
    finally:
        serve.delete("full")
