"""The viewer page in a real headless Chromium (Debian's chromium, driven by Playwright)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from media import write_test_video

pytestmark = [pytest.mark.usefixtures("ray_session"), pytest.mark.slow]

# Flags for a root sandbox without network: no sandbox, no GPU, no background connections.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's chromium is needed for the browser tests: apt-get install chromium (scripts/dev.sh does)")
    return path


def test_upload_deblur_and_see_the_result(serve_endpoint: dict, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    video = write_test_video(tmp_path / "clip.mp4", width=64, height=48, frames=12, audio=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(serve_endpoint["url"] + "/")
            assert page.title().startswith("deblur")
            page.set_input_files("#file", str(video))
            page.wait_for_function("document.getElementById('run').disabled === false")
            page.click("#run")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('Done')", timeout=120_000)
            assert page.text_content("#status").startswith("Done: 12 frames")
            # The browser decoded the result: its metadata (size, duration) is known.
            page.wait_for_function("document.getElementById('output').readyState >= 1", timeout=30_000)
            size = page.evaluate(
                "[document.getElementById('output').videoWidth, document.getElementById('output').videoHeight]"
            )
            assert size == [64, 48]
            assert page.get_attribute("#download", "hidden") is None
            href = page.get_attribute("#download", "href")
            assert href and href.startswith("blob:")
            assert errors == []
        finally:
            browser.close()


def test_progress_compare_and_live_mode(serve_endpoint: dict, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    long = write_test_video(tmp_path / "long.mp4", width=160, height=120, frames=240, audio=False)
    short = write_test_video(tmp_path / "short.mp4", width=64, height=48, frames=12, audio=False)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(serve_endpoint["url"] + "/")
            # Every status line the page shows, as it shows it.
            page.evaluate(
                """window.seen = [];
                new MutationObserver(() => window.seen.push(document.getElementById('status').textContent))
                    .observe(document.getElementById('status'),
                             {childList: true, characterData: true, subtree: true});"""
            )
            page.set_input_files("#file", str(long))
            page.click("#run")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('Done')", timeout=180_000)
            progress = [line for line in page.evaluate("window.seen") if " / 240 frames, " in line]
            assert progress, page.evaluate("window.seen")  # frames done of 240, fps, time left, from the actor
            # Compare: the wipe shows the deblurred video left of the line; the slider scrubs all players.
            assert page.is_visible("#compare")
            page.fill("#wipe", "30")
            page.dispatch_event("#wipe", "input")
            assert page.evaluate("document.getElementById('wiped').style.clipPath") == "inset(0px 70% 0px 0px)"
            page.wait_for_function("document.getElementById('output').readyState >= 1", timeout=30_000)
            page.fill("#scrub", "500")
            page.dispatch_event("#scrub", "input")
            times = page.evaluate(
                "['input', 'output', 'wipebase', 'wiped'].map((id) => document.getElementById(id).currentTime)"
            )
            assert min(times) > 3.0 and max(times) - min(times) < 0.05, times  # 8 s of video: all near 4 s
            # Live: the short file's frames pushed over the WebSocket, each deblurred frame drawn as it comes.
            page.set_input_files("#file", str(short))
            page.click("#golive")
            page.wait_for_function(
                "document.getElementById('status').textContent.startsWith('Live done')", timeout=120_000
            )
            assert page.text_content("#status") == "Live done: 12 frames deblurred of 12 sent."
            live = [
                line for line in page.evaluate("window.seen") if line.startswith("Live: ") and "deblurred of" in line
            ]
            assert len(live) >= 11  # one line per frame that came back before the last
            drawn = page.evaluate(
                "Array.from(document.getElementById('liveout').getContext('2d').getImageData(0, 0, 64, 48).data)"
                ".filter((v, i) => i % 4 !== 3).some((v) => v > 0)"
            )
            assert drawn
            assert errors == []
        finally:
            browser.close()


def test_the_api_docs_render_with_no_network(serve_endpoint: dict) -> None:
    from playwright.sync_api import sync_playwright

    base = serve_endpoint["url"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            blocked: list[str] = []

            def offline(route) -> None:  # only the endpoint itself answers, as on a machine with no network
                if route.request.url.startswith(base):
                    route.continue_()
                else:
                    blocked.append(route.request.url)
                    route.abort()

            page.route("**/*", offline)
            page.goto(base + "/docs")
            # Swagger UI drew the operations from /openapi.json, including the upload's body.
            page.wait_for_selector("#operations-default-deblur_video_v1_videos_post", timeout=30_000)
            assert page.locator(".opblock").count() >= 8
            assert blocked == []
        finally:
            browser.close()


def test_a_bad_upload_shows_the_servers_message(serve_endpoint: dict, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"this is not a video" * 50)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(serve_endpoint["url"] + "/")
            page.set_input_files("#file", str(junk))
            page.click("#run")
            page.wait_for_function("document.getElementById('status').className === 'error'", timeout=60_000)
            text = page.text_content("#status")
            assert text.startswith("Error 422") and "junk.mp4" in text
        finally:
            browser.close()


@pytest.fixture(scope="module")
def prefixed_endpoint(serve_endpoint: dict, test_api_key: tuple[str, str]) -> Iterator[str]:
    """The app under a route prefix, with an API key and limits that let the sample (480x270) through.
    The page must call the API beside itself: an absolute /v1/... would reach the app at /, whose
    320x240 limit refuses the sample."""
    from ray import serve

    from deblur.serving import build_app

    config = {
        "checkpoint": str(serve_endpoint["checkpoint"]),
        "device": "cpu",
        "session_cpus": 0.25,
        "max_width": 640,
        "max_height": 480,
        "api_key_env": test_api_key[0],
    }
    serve.run(build_app(config), name="prefixed", route_prefix="/viewer")
    try:
        yield f"{serve_endpoint['url']}/viewer"
    finally:
        serve.delete("prefixed")  # the session's endpoint goes on; this app's replicas must not


@pytest.mark.parametrize("trailing_slash", [False, True])
def test_the_sample_under_a_route_prefix(prefixed_endpoint: str, serve_endpoint: dict, trailing_slash: bool) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            page.goto(prefixed_endpoint + ("/" if trailing_slash else ""))
            assert page.title().startswith("deblur")
            page.click("#sample")
            # The server renders the sample on first use: seconds on a free machine, minutes on a busy one.
            page.wait_for_function(
                "document.getElementById('status').textContent.startsWith('Ready: sample.mp4')", timeout=400_000
            )
            page.fill("#key", serve_endpoint["key"])
            page.click("#run")
            page.wait_for_function(
                "/^(Done|Error)/.test(document.getElementById('status').textContent)", timeout=120_000
            )
            status = page.text_content("#status")
            assert status.startswith("Done: 15 frames"), status
            page.wait_for_function("document.getElementById('output').readyState >= 1", timeout=30_000)
            size = page.evaluate(
                "[document.getElementById('output').videoWidth, document.getElementById('output').videoHeight]"
            )
            assert size == [480, 270]
            api_calls = [url for url in requests if "/v1/" in url]
            assert api_calls and all(url.startswith(prefixed_endpoint + "/v1/") for url in api_calls), api_calls
            assert errors == []
        finally:
            browser.close()
