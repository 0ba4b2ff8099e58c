"""The real-browser tests' fixtures: one shared server for the session, one chromium per module, and a page in it."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser.studio import BUSY_MS, CHROMIUM, FLAGS, NO_BROWSER, TEACHER_PASSWORD, start_app, stop_app

HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def app_url():
    """One plain server for every test that needs nothing special of it (each test's page is a session, with a
    project, of its own): a server's start costs about 30 s of CPU (its web process, two workers warming up)."""
    proc, url, _ = start_app(TLS_TEACHER_PASSWORD=TEACHER_PASSWORD)
    yield url
    stop_app(proc)  # a busy server may take longer than 10 s to stop: then it is killed


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(browser):
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.set_default_timeout(BUSY_MS)
    yield pg
    pg.close()


def pytest_collection_modifyitems(config, items) -> None:
    """Without Debian's chromium (and unless TLS_REQUIRE_BROWSER asks for it) every test here is skipped."""
    if NO_BROWSER:
        skip = pytest.mark.skip(reason="Debian's chromium is not installed (apt-get install chromium)")
        for item in items:
            if HERE in Path(item.path).parents:
                item.add_marker(skip)
