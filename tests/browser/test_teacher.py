"""The teacher's page in a real browser beside a student's: it follows the class live, without reloads
(its project list was once drawn only when the page loaded), and shows the challenge's leaderboard."""
from __future__ import annotations

import re

import pytest

from tests.browser.test_main_flow import CHROMIUM, pytestmark, shot, start_app, stop_app  # noqa: F401
from tests.engine.test_challenge import hidden_zip

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--no-first-run", "--disable-sync", "--disable-quic"]


@pytest.fixture(scope="module")
def app_url():
    proc, url, _ = start_app(TLS_TEACHER_PASSWORD="class-2b")
    yield url
    stop_app(proc)


def test_teacher_page_follows_students_live_and_ranks_entries(app_url, tmp_path):
    from playwright.sync_api import sync_playwright

    hidden = tmp_path / "hidden.zip"
    hidden.write_bytes(hidden_zip(("0", "1")))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        teacher, student = (browser.new_page(viewport={"width": 1400, "height": 1000}) for _ in range(2))
        for pg in (teacher, student):
            pg.set_default_timeout(90_000)
        teacher.goto(app_url + "/teacher")
        teacher.get_by_label("Teacher password").fill("class-2b")
        teacher.get_by_role("button", name="Open").click()
        teacher.get_by_label("Challenge name").fill("Zero or one?")
        uploader = teacher.locator("[data-testid='stFileUploader']").filter(has_text="Hidden test set")
        uploader.locator("input[type=file]").set_input_files(str(hidden))
        uploader.get_by_text("hidden.zip").wait_for()
        teacher.get_by_role("button", name="Start the challenge").click()
        teacher.get_by_text("is open").wait_for()

        student.goto(app_url + "/data")
        student.get_by_role("button", name="Load digits").click()
        student.get_by_role("heading", name="0 · 40 images").wait_for()
        teacher.get_by_text("5 classes, 200 images").wait_for()  # no reload: the list refreshes itself
        student.get_by_role("link", name="Train").first.click()
        student.get_by_role("button", name="Start training").click()
        student.get_by_text("the best epoch", exact=False).first.wait_for(timeout=120_000)
        teacher.get_by_text(re.compile(r"best: .*feature extraction · \d+%")).wait_for()

        student.get_by_role("link", name="Evaluate").first.click()
        student.get_by_label("Your name on the leaderboard").fill("Ada")
        student.get_by_role("button", name="Enter this model").click()
        student.get_by_text("Rank 1 of 1").wait_for()
        teacher.locator("[data-testid='stDataFrame']").filter(has_text="training images").wait_for()
        shot(teacher, "teacher-leaderboard")
        browser.close()
