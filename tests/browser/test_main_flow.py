"""One real-browser run of the main flow: streamlit on 127.0.0.1, Debian's chromium, Playwright.

Uploads real image files through the browser, trains, sees a prediction, and saves screenshots
(of every page) to test-output/screenshots/.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, eventually

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = ROOT / "test-output" / "screenshots"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists() and not os.environ.get("TLS_REQUIRE_BROWSER"),
                                reason="Debian's chromium is not installed (apt-get install chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(address: str = "127.0.0.1", **env_extra: str):
    """Streamlit on a free port, listening on ``address`` (0.0.0.0: also on this machine's network address,
    as in a classroom); returns the process, its local URL and its home folder."""
    port = _free_port()
    env = {**os.environ, "TLS_HOME": tempfile.mkdtemp(prefix="tls-browser-"), "TLS_TEST_BACKBONES": "1",
           # an edit to tlcore while a test runs (others work in this checkout) made Streamlit re-import it, and the
           # runner could no longer pickle a job ("not the same object as tlcore.jobs.JobSpec"): nothing trained
           "STREAMLIT_SERVER_FILE_WATCHER_TYPE": "none", **env_extra}
    # its output goes to a file: a pipe nobody reads fills (64 KB of the workers' progress bars over a module's
    # tests) and then blocks the server and its workers mid-write
    with open(Path(env["TLS_HOME"]) / "server.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless=true",
                                 f"--server.address={address}", f"--server.port={port}",
                                 "--browser.gatherUsageStats=false"], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
    https = "STREAMLIT_SERVER_SSL_CERT_FILE" in env_extra
    url = f"{'https' if https else 'http'}://127.0.0.1:{port}"
    def healthy() -> bool:
        try:
            urllib.request.urlopen(url + "/_stcore/health", timeout=2,
                                   context=ssl._create_unverified_context() if https else None)
            return True
        except OSError:
            return False

    try:
        eventually(healthy, 90, "the server", every=0.5)
    except AssertionError:
        proc.kill()
        raise RuntimeError("streamlit did not start:\n" + server_log(Path(env["TLS_HOME"]))) from None
    return proc, url, Path(env["TLS_HOME"])


def main_text(page) -> str:
    """What the page's main area says (a failure's message: the aria snapshot of a long page is cut)."""
    return page.locator("[data-testid='stMain']").inner_text()[:6000]


def server_log(home: Path, tail: int = 3000) -> str:
    """The end of the output of the server started with ``home`` (``start_app``), for a failure's message."""
    return (home / "server.log").read_bytes()[-tail:].decode(errors="replace")


def stop_app(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def app_url():
    proc, url, _ = start_app()
    yield url
    stop_app(proc)  # a busy server may take longer than 10 s to stop: then it is killed


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync", "--disable-quic"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser):
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.set_default_timeout(60_000)
    yield pg
    pg.close()


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(600)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def goto(page, app_url: str, path: str) -> None:
    key = page.url.split("p=")[1].split("&")[0] if "p=" in page.url else ""
    page.goto(f"{app_url}/{path}?p={key}")
    page.get_by_text("Transfer Learning Studio", exact=False).first.wait_for(state="attached")
    page.wait_for_selector("[data-testid='stMain']")


def test_upload_train_predict_in_a_real_browser(app_url, page, tmp_path):
    page.goto(app_url)
    page.get_by_role("heading", name="1 · Choose a backbone").wait_for()
    page.get_by_text("installed, works offline").first.wait_for()  # the default, real EfficientNet-Lite0
    shot(page, "1-backbone")

    # Data: two classes created in the browser, real PNG files uploaded through the file chooser.
    page.get_by_role("link", name="Data").first.click()
    page.get_by_role("heading", name="2 · Your data").wait_for()
    for label in ("zero", "one"):
        page.get_by_label("New class name").fill(label)
        page.get_by_role("button", name="Add class").click()
        page.get_by_role("heading", name=f"{label} · 0 images").wait_for()
    for label, digit in (("zero", "0"), ("one", "1")):
        files = sorted((ROOT / "assets" / "samples" / "digits" / digit).glob("*.png"))[:15]
        broken = tmp_path / f"broken-{digit}.jpg"
        broken.write_text("this is not a photo")
        uploader = page.locator("[data-testid='stFileUploader']").filter(has_text=f"Add images to '{label}'")
        uploader.locator("input[type=file]").set_input_files([str(f) for f in files] + [str(broken)])
        page.get_by_role("heading", name=f"{label} · 15 images").wait_for()
    page.get_by_text("broken-1.jpg").first.wait_for()
    shot(page, "2-data")

    page.get_by_role("link", name="Freeze").first.click()
    page.get_by_role("heading", name="3 · Freeze or fine-tune").wait_for()
    shot(page, "3-freeze")

    page.get_by_role("link", name="Train").first.click()
    page.get_by_role("heading", name="4 · Train").wait_for()
    page.get_by_role("button", name="Start training").click()
    page.get_by_text("the best epoch").first.wait_for(timeout=120_000)
    page.get_by_text("Right on photos it had not trained on").first.wait_for()
    shot(page, "4-train")

    page.get_by_role("link", name="Evaluate").first.click()
    page.get_by_role("heading", name="5 · Evaluate").wait_for()
    page.locator(".gtitle", has_text="Confusion matrix").first.wait_for()
    shot(page, "5-evaluate")

    page.get_by_role("link", name="Test").first.click()
    page.get_by_role("heading", name="6 · Test on new images").wait_for()
    probe = sorted((ROOT / "assets" / "samples" / "digits" / "1").glob("*.png"))[-1]
    page.locator("[data-testid='stFileUploaderDropzoneInput']").first.set_input_files(str(probe))
    page.get_by_text("Grad-CAM: red = looked here").first.wait_for()
    title = page.locator(".gtitle").first.text_content()
    assert title.split(" (")[0] in ("zero", "one")
    shot(page, "6-test")

    page.get_by_role("link", name="Export").first.click()
    page.get_by_role("heading", name="7 · Export and projects").wait_for()
    page.get_by_role("button", name="Download run (.zip)").wait_for()
    shot(page, "7-export")

    page.get_by_role("link", name="Compare").first.click()
    page.get_by_role("heading", name="Compare strategies").wait_for()
    shot(page, "8-compare")

    # The browser's back button returns to the previous step, same project.
    page.go_back()
    page.get_by_role("heading", name="7 · Export and projects").wait_for()
    assert "?p=" in page.url

    # A reload keeps everything: the project comes back from the address.
    page.reload()
    page.get_by_role("link", name="Data").first.click()
    page.get_by_role("heading", name="zero · 15 images").wait_for()


def start_long_training(pg, url: str) -> str:
    """Tiny backbone, faces sample, from scratch for 400 epochs of single images; once it trains, returns
    the key in the project's link."""
    pg.goto(url + "/")
    pg.get_by_role("heading", name="1 · Choose a backbone").wait_for()
    card = pg.locator("[data-testid='stVerticalBlock']").filter(  # the innermost block with both: its card
        has=pg.get_by_role("heading", name="Tiny test net", exact=True)).filter(  # not "Tiny test net B"
        has=pg.get_by_role("button", name="Use this backbone")).last
    card.get_by_role("button", name="Use this backbone").click()
    # chosen: its title gets the selected mark (and the locator above, by the bare title, no longer matches)
    pg.locator("h4").filter(has_text=re.compile(r"^Tiny test net\s*radio_button_checked")).wait_for()
    pg.get_by_role("link", name="Data").first.click()
    pg.get_by_role("button", name="Load faces").click()
    pg.get_by_role("heading", name="not_face · 100 images").first.wait_for()
    pg.get_by_role("link", name="Freeze").first.click()
    pg.get_by_text("From scratch: ignore the pretrained weights").click()
    pg.get_by_text("From scratch", exact=True).first.wait_for()  # the Mode metric says it (not "models")
    pg.get_by_role("link", name="Train").first.click()
    pg.get_by_text("Advanced settings").click()
    for name, value in (("Epochs", "400"), ("Batch size", "1")):  # minutes of work, even for a tiny net
        box = pg.get_by_role("spinbutton", name=name)
        box.fill(value)
        box.press("Enter")
        pg.wait_for_timeout(1000)
    pg.get_by_role("button", name="Start training").click()
    # training for real, and a first epoch done (checkpointed); the tests that use it start it on a server whose
    # long-run worker is free (a long run waits for it while another student's fine-tune holds it)
    try:
        pg.get_by_text(re.compile(r"Epoch ([2-9]|\d\d+), batch")).first.wait_for(timeout=120_000)
    except Exception as e:
        raise AssertionError("the long run did not train; the Train page says:\n" + main_text(pg)) from e
    key = pg.url.split("p=")[1].split("&")[0]
    return key


def folder_of(home: Path, key: str) -> Path:
    """The project folder a link's key leads to (links carry keys, never names)."""
    import json

    return next(p.parent for p in (home / "projects").glob("*/project.json")
                if json.loads(p.read_text()).get("key") == key)


def test_a_closed_tab_stops_its_training_and_keeps_the_work(browser):
    """The server notices a session has gone (here after a 1 s grace period) and stops its job."""
    import json

    proc, url, home = start_app(TLS_SESSION_GRACE_S="1", TLS_SWEEP_INTERVAL_S="1")
    try:
        pg = browser.new_page()
        pg.set_default_timeout(60_000)
        key = start_long_training(pg, url)
        project = folder_of(home, key).name
        t_closed = time.time()
        pg.close()  # the tab goes away mid-training
        manifest = home / "projects" / project / "project.json"
        runs = eventually(lambda: [r for r in json.loads(manifest.read_text())["runs"] if r["status"] == "stopped"],
                          60, "the closed tab's run to stop")
        print(f"job stopped {time.time() - t_closed:.1f} s after the tab closed")
        assert (home / "projects" / project / "runs" / runs[0]["id"] / "model.safetensors").exists()
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_server_restart_mid_training_keeps_the_project_and_the_best_epoch(browser):
    proc, url, home = start_app()
    pg = browser.new_page()
    pg.set_default_timeout(60_000)
    try:
        key = start_long_training(pg, url)
    finally:
        proc.kill()  # no clean shutdown: as a crash or a power cut
        proc.wait(10)
    proc, url, _ = start_app(TLS_HOME=str(home))
    try:
        pg.goto(f"{url}/train?p={key}")
        pg.get_by_text("The server stopped while this run was training").first.wait_for()
        pg.get_by_text("interrupted").first.wait_for()
        pg.get_by_role("link", name="Data").first.click()
        pg.get_by_role("heading", name="not_face · 100 images").first.wait_for()  # the images came back
        pg.get_by_role("link", name="Evaluate").first.click()
        pg.locator(".gtitle", has_text="Confusion matrix").first.wait_for()  # the best epoch so far is usable
        shot(pg, "restart-evaluate")
    finally:
        pg.close()
        proc.terminate()
        proc.wait(10)


def test_several_students_at_once_each_get_their_own_model(browser):
    """Two real browser sessions on one server upload their own zips and train at the same moment (the
    short form of ``python -m tests.classroom``): both see a finished model, no server traceback."""
    from tests.classroom import browsers

    report = browsers(2, 24, timeout=240, finetune=False, browser=browser)
    assert report["fe"]["stuck"] == 0, report
    assert report["server_tracebacks"] == 0, report


def test_enter_adds_a_class_and_nothing_is_deleted_by_one_click(browser):
    """In a real browser: Enter in the class name adds the class; Delete and a sample over existing data
    ask first (moving and removing images: tests/engine/test_data.py)."""
    proc, url, _ = start_app()
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.set_default_timeout(60_000)
    try:
        pg.goto(url + "/data")
        pg.get_by_role("heading", name="2 · Your data").wait_for()
        for label in ("keep", "other"):
            box = pg.get_by_label("New class name")
            box.fill(label)
            box.press("Enter")  # no click on "Add class"
            pg.get_by_role("heading", name=f"{label} · 0 images").wait_for()
        files = sorted((ROOT / "assets" / "samples" / "digits" / "0").glob("*.png"))[:3]
        uploader = pg.locator("[data-testid='stFileUploader']").filter(has_text="Add images to 'keep'")
        uploader.locator("input[type=file]").set_input_files([str(f) for f in files])
        pg.get_by_role("heading", name="keep · 3 images").wait_for()
        pg.get_by_role("button", name="Delete").first.click()  # opens the question, deletes nothing
        pg.get_by_text("Delete class keep and its 3 images?").wait_for()
        pg.keyboard.press("Escape")
        pg.get_by_role("button", name="Load digits").click()  # over existing data: asks
        pg.get_by_text("already has 3 images").wait_for()
        pg.get_by_role("button", name="Cancel").click()
        # .first: while the rerun replaces the page, the old heading and the new one can both be there for a moment
        pg.get_by_role("heading", name="keep · 3 images").first.wait_for()
        shot(pg, "2-data-safety")
    finally:
        pg.close()
        proc.terminate()
        proc.wait(10)
