"""What the real-browser tests share: a Streamlit server of the app on a free port (``start_app``), Debian's
chromium, screenshots, and the steps several tests take (a long run training, the folder behind a link).
The fixtures that use them are in ``conftest.py``."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from tests.conftest import ROOT, eventually

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = ROOT / "test-output" / "screenshots"
#: Every browser wait's failsafe (ms), as the AppTests' ``BUSY``: never a pace. A test that passes takes what the work
#: takes; beside a class's load (three browser students training on the same two cores) a Train page's run and its
#: curves took over two minutes to show, where alone they take seconds. Only a hung wait runs this long.
BUSY_MS = 900_000
# chromium as root on a headless machine, nothing fetched from outside (the tests never touch the internet)
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run", "--disable-sync", "--disable-quic"]
TEACHER_PASSWORD = "fit-check"  # the shared server's (conftest's app_url): its Teacher page opens
NO_BROWSER = not Path(CHROMIUM).exists() and not os.environ.get("TLS_REQUIRE_BROWSER")  # conftest skips them then


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(address: str = "127.0.0.1", **env_extra: str):
    """Streamlit on a free port, listening on ``address`` (0.0.0.0: also on this machine's network address,
    as in a classroom); returns the process, its local URL and its home folder."""
    port = _free_port()
    # its home inside the test session's (removed at exit, tests/conftest.py); a benchmark's, in its own
    env = {**os.environ, "TLS_HOME": tempfile.mkdtemp(prefix="tls-browser-", dir=os.environ.get("TLS_HOME")),
           "TLS_TEST_BACKBONES": "1",
           # an edit to tlcore while a test runs (others work in this checkout) made Streamlit re-import it, and the
           # runner could no longer pickle a job ("not the same object as tlcore.jobs.spec.JobSpec"): nothing trained
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
        eventually(healthy, BUSY_MS / 1000, "the server", every=0.5)
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


#: The page has drawn what it shows: every chart drawn, no transition running (a rerun's elements fade back in;
#: a spinner's endless animation does not count).
DRAWN = ("() => [...document.querySelectorAll('.stPlotlyChart')].every(c => c.querySelector('.main-svg')) && "
         "document.getAnimations().every(a => a.playState !== 'running' "
         "|| a.effect.getComputedTiming().iterations === Infinity)")


def shot(page, name: str) -> None:
    """A screenshot of the whole page, once it is drawn (``DRAWN``); a live page may never be still (the
    Backbone page's timings redraw each second while another student trains): after 5 s, as it is. A screenshot
    is for looking at, never a check."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    SHOTS.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(PlaywrightTimeout):
        page.wait_for_function(DRAWN, timeout=5000)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)



def start_long_training(pg, url: str) -> str:
    """Tiny backbone, faces sample, from scratch for 400 epochs of single images; once it trains, returns
    the key in the project's link."""
    pg.goto(url + "/")
    pg.get_by_role("heading", name="1 · Choose a backbone").wait_for()
    # by the button's own key: a card's heading is on the page before its button (a page streams), so a locator
    # of "the block with the heading and a button" could match the whole column while the card was half drawn
    pg.locator(".st-key-backbone_use_tiny-test").get_by_role("button", name="Use this backbone").click()
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
        pg.get_by_text(re.compile(r"Epoch ([2-9]|\d\d+), batch")).first.wait_for(timeout=BUSY_MS)
    except Exception as e:
        raise AssertionError("the long run did not train; the Train page says:\n" + main_text(pg)) from e
    key = pg.url.split("p=")[1].split("&")[0]
    return key


def folder_of(home: Path, key: str) -> Path:
    """The project folder a link's key leads to (links carry keys, never names)."""
    import json

    return next(p.parent for p in (home / "projects").glob("*/project.json")
                if json.loads(p.read_text()).get("key") == key)
