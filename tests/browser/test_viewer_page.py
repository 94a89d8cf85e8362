"""The viewer page in a real headless Chromium (Debian's chromium, driven by Playwright)."""

from __future__ import annotations

import shutil
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
