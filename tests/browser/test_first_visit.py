"""What a visitor sees first, in a real browser: no list of the app's raw file names while a freshly started
server runs its first page, and a read-only link that opens Evaluate without a "Page not found" box."""
from __future__ import annotations

import time

import pytest

from tests.browser.studio import BUSY_MS, shot, start_app, stop_app


@pytest.fixture(scope="module")
def server():
    proc, url, _ = start_app(address="0.0.0.0")  # the read-only link names this machine's network address
    yield url
    stop_app(proc)


def test_the_first_visit_after_a_start_never_lists_the_raw_page_files(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(server + "/", wait_until="commit")  # the server's first session: Streamlit's pages/-folder mode
    seen, deadline = set(), time.time() + 90
    while time.time() < deadline:
        seen.update(t.strip() for t in page.locator("[data-testid='stSidebarNav'] a").all_inner_texts())
        if page.get_by_role("heading", name="1 · Choose a backbone").count():
            break
        page.wait_for_timeout(50)
    page.get_by_role("heading", name="1 · Choose a backbone").wait_for()
    seen.update(t.strip() for t in page.locator("[data-testid='stSidebarNav'] a").all_inner_texts())
    assert not seen & {"app", "common", "backbone", "data check"}, f"the sidebar listed the files: {sorted(seen)}"
    page.close()


def test_the_read_only_link_opens_evaluate_without_page_not_found(server, browser):
    owner = browser.new_page(viewport={"width": 1400, "height": 1000})
    owner.set_default_timeout(BUSY_MS)
    owner.goto(server + "/")
    owner.get_by_role("heading", name="1 · Choose a backbone").wait_for()
    owner.get_by_role("button", name="Share read-only").click()
    link = owner.locator("[data-testid='stPopoverBody'] code").first.inner_text().strip()
    assert "127.0.0.1" not in link and "localhost" not in link and "?view=" in link
    fresh = browser.new_context(viewport={"width": 1400, "height": 1000})  # a fresh browser: nothing remembered
    visitor = fresh.new_page()
    visitor.set_default_timeout(BUSY_MS)
    visitor.goto(link)
    visitor.get_by_role("heading", name="5 · Evaluate").wait_for()
    visitor.get_by_text("read-only", exact=False).first.wait_for()
    visitor.wait_for_timeout(2000)  # Streamlit's box came with the first run; give it time to show
    shot(visitor, "read-only-link")
    assert not visitor.get_by_text("Page not found").count()
    assert "view=" in visitor.url
    fresh.close()
    owner.close()
