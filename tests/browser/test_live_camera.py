"""The live camera in a real browser with a fake webcam: chromium plays a clip of real digit images
(a "0" segment, then a "1" segment) in place of a camera.

Checks that no page asks for the camera before the user presses Start, that live predictions follow
the clip's class, that hold-to-record adds frames to a class, and that on an insecure origin (a LAN
name over plain http) the app says why the camera is unavailable, while over HTTPS with a certificate
from ``python -m tlcore cert`` it works.
"""
from __future__ import annotations

import itertools
import re
import time

import pytest

from tests.browser.fake_camera import make_clip
from tests.browser.studio import BUSY_MS, CHROMIUM, FLAGS, shot, start_app, stop_app


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("camera") / "clip.y4m"
    make_clip(path, [("0", 3), ("1", 3)], seconds_each=3.0)
    return path


@pytest.fixture(scope="module")
def camera_browser(clip):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS + [
            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-video-capture={clip}",
            "--host-resolver-rules=MAP classroom.test 127.0.0.1", "--ignore-certificate-errors"])
        yield b
        b.close()


def watch_camera_requests(page) -> list[str]:
    """Every call of getUserMedia in any frame of the page, recorded before the page's own scripts run."""
    page.add_init_script("""(() => {
        const md = navigator.mediaDevices; if (!md) return;
        const orig = md.getUserMedia.bind(md);
        md.getUserMedia = (c) => { (window.top.__cameraAsks = window.top.__cameraAsks || []).push(location.href); return orig(c); };
    })()""")
    return []


def camera_asks(page) -> int:
    return page.evaluate("(window.__cameraAsks || []).length")


def component(page, nth: int = 0):
    return page.frame_locator("iframe[title*='live_camera']").nth(nth)


def trained_digits(page, url: str) -> None:
    page.goto(url + "/data")
    page.get_by_role("heading", name="2 · Your data").wait_for()
    page.get_by_role("button", name="Load digits").click()
    page.get_by_role("heading", name="0 · 40 images").wait_for()
    page.get_by_role("link", name="Train").first.click()
    page.get_by_role("button", name="Start training").click()
    page.get_by_text("the best epoch", exact=False).first.wait_for(timeout=BUSY_MS)


def test_live_prediction_follows_the_camera_and_recording_adds_images(app_url, camera_browser):
    page = camera_browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(BUSY_MS)
    watch_camera_requests(page)
    trained_digits(page, app_url)
    assert camera_asks(page) == 0  # Data and Train pages: no camera

    page.get_by_role("link", name="Test").first.click()
    page.get_by_role("heading", name="6 · Test on new images").wait_for()
    page.get_by_text("Live camera: predictions as you move").click()
    cam = component(page)
    cam.get_by_role("button", name="Start live prediction").wait_for()
    page.wait_for_timeout(1000)
    assert camera_asks(page) == 0  # not even with the live camera on screen, until Start
    cam.get_by_role("button", name="Start live prediction").click()
    cam.locator("body[data-predicted='0'], body[data-predicted='1']").wait_for(timeout=BUSY_MS)
    seen = []
    t_end = time.time() + 14  # a little over two loops of the 6 s clip
    while time.time() < t_end:
        seen.append(cam.locator("body").get_attribute("data-predicted"))
        page.wait_for_timeout(100)
    shot(page, "6-test-live-camera")
    assert camera_asks(page) == 1
    runs = [(label, len(list(group))) for label, group in itertools.groupby(seen)]
    steady = [label for label, n in runs if n >= 5]  # half a second or more on one answer
    # The answer follows the clip: long runs of "0" and of "1", switching as the clip does (0, 1, 0, 1...).
    assert {"0", "1"} <= set(steady), runs
    switches = sum(1 for a, b in zip(steady, steady[1:]) if a != b)
    assert switches >= 2, runs
    assert sum(n for label, n in runs if label not in ("0", "1")) <= len(seen) * 0.2, runs
    rate = float(cam.locator("#note").get_attribute("data-rate") or 0)
    print(f"live predictions per second in the browser test: {rate:.1f}")
    cam.get_by_role("button", name="Stop").click()

    # Hold to record on the Data page: frames join the chosen class through the upload checks.
    page.get_by_role("link", name="Data").first.click()
    page.get_by_role("heading", name="0 · 40 images").wait_for()
    page.get_by_role("tab", name="Camera").click()
    rec = component(page)
    rec.get_by_role("button", name="Start the camera").click()
    hold = rec.get_by_role("button", name="Hold to record")
    hold.wait_for()
    page.wait_for_timeout(800)
    hold.hover()
    page.mouse.down()
    page.wait_for_timeout(2500)
    page.mouse.up()
    heading = page.get_by_role("heading", name=re.compile(r"^0 · \d+ images")).first
    page.wait_for_function("() => !document.body.innerText.includes('0 · 40 images')", timeout=BUSY_MS)
    added = int(heading.inner_text().split()[2]) - 40
    assert added >= 3, heading.inner_text()  # ~2.5 s held at about 3 frames a second
    page.get_by_text(f"Added {added} images").wait_for()
    shot(page, "2-data-hold-to-record")
    page.close()


def test_an_insecure_origin_says_why_and_https_works(app_url, camera_browser, tmp_path):
    port = app_url.rsplit(":", 1)[1]
    page = camera_browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(BUSY_MS)
    watch_camera_requests(page)
    page.goto(f"http://classroom.test:{port}/data")  # how a student reaches a teacher's laptop: not secure
    page.get_by_role("heading", name="2 · Your data").wait_for()
    page.get_by_label("New class name").fill("cup")
    page.get_by_role("button", name="Add class").click()
    page.get_by_role("tab", name="Camera").click()
    warning = page.locator("[data-testid='stAlert']").filter(has_text="The camera needs a secure address")
    warning.wait_for()
    assert "http://classroom.test" in warning.inner_text() and "tlcore cert" in warning.inner_text()
    assert camera_asks(page) == 0
    shot(page, "2-data-camera-insecure")
    page.close()

    # The same LAN name over HTTPS with the certificate the README's command makes: the camera works.
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "tlcore", "cert", "--out", str(tmp_path), "--host", "classroom.test"],
                   check=True, capture_output=True)
    proc, url, _ = start_app(STREAMLIT_SERVER_SSL_CERT_FILE=str(tmp_path / "tls-cert.pem"),
                             STREAMLIT_SERVER_SSL_KEY_FILE=str(tmp_path / "tls-key.pem"))
    try:
        page = camera_browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(BUSY_MS)
        page.goto(url.replace("http://127.0.0.1", "https://classroom.test") + "/data")
        page.get_by_role("heading", name="2 · Your data").wait_for()
        page.get_by_label("New class name").fill("cup")
        page.get_by_role("button", name="Add class").click()
        page.get_by_role("tab", name="Camera").click()
        rec = component(page)
        rec.get_by_role("button", name="Start the camera").click()
        rec.get_by_role("button", name="Hold to record").wait_for()
        assert rec.locator("#video").evaluate("v => new Promise(r => setTimeout(() => r(v.videoWidth), 1500))") > 0
        assert not page.get_by_text("The camera needs a secure address").count()
        page.close()
    finally:
        stop_app(proc)
