"""The teacher's page in a real browser beside a student's: it follows the class live, without reloads
(its project list was once drawn only when the page loaded), and shows the challenge's leaderboard."""
from __future__ import annotations

import re

import pytest

from tests.browser.studio import BUSY_MS, CHROMIUM, FLAGS, SHOTS, shot, start_app, stop_app
from tests.engine.test_challenge import hidden_zip


@pytest.fixture(scope="module")
def app_home():
    proc, url, home = start_app(TLS_TEACHER_PASSWORD="class-2b")
    yield url, home
    stop_app(proc)


@pytest.fixture(scope="module")
def app_url(app_home):
    return app_home[0]


def test_teacher_page_follows_students_live_and_ranks_entries(app_url, tmp_path):
    from playwright.sync_api import sync_playwright

    hidden = tmp_path / "hidden.zip"
    hidden.write_bytes(hidden_zip(("0", "1")))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        teacher, student = (browser.new_page(viewport={"width": 1400, "height": 1000}) for _ in range(2))
        for pg in (teacher, student):
            pg.set_default_timeout(BUSY_MS)
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
        student.get_by_text("the best epoch", exact=False).first.wait_for(timeout=BUSY_MS)
        # One run, one figure: "k of N" on Train, Evaluate, the model picker and the Teacher page alike.
        metric = student.locator("[data-testid='stMetric']").filter(has_text="Right on photos it had not trained on")
        figure = metric.locator("[data-testid='stMetricValue']").inner_text().strip()
        assert re.fullmatch(r"\d+ of \d+", figure), figure
        teacher.get_by_text(re.compile(rf"best: .*feature extraction · {figure} right on photos")).wait_for()

        student.get_by_role("link", name="Evaluate").first.click()
        student.get_by_role("heading", name="5 · Evaluate").wait_for()
        metric = student.locator("[data-testid='stMetric']").filter(has_text="Right on photos it had not trained on")
        assert metric.locator("[data-testid='stMetricValue']").inner_text().strip() == figure
        picked = student.get_by_role("combobox", name="Model").input_value()
        assert f"· {figure} right ·" in picked, picked  # the model picker says the same
        student.get_by_label("Your name on the leaderboard").fill("Ada")
        student.get_by_role("button", name="Enter this model").click()
        student.get_by_text("Rank 1 of 1").wait_for()
        teacher.locator("[data-testid='stTable']").filter(has_text="right on the hidden photos").first.wait_for()
        teacher.get_by_text("What the class found").wait_for()
        shot(teacher, "teacher-leaderboard")
        browser.close()


def teacher_at_a_projector(p, url: str):
    """Chromium at a projector's 1024x768 on the Teacher page, the password given: (browser, page)."""
    browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
    page = browser.new_page(viewport={"width": 1024, "height": 768})
    page.set_default_timeout(BUSY_MS)
    page.goto(url + "/teacher")
    page.get_by_label("Teacher password").fill("class-2b")
    page.get_by_role("button", name="Open").click()
    return browser, page


def test_three_ladders_pool_on_the_teacher_page_and_the_projector_at_1024x768(app_home):
    """Three students' saved ladders (as the app saves them: project.json and each run's run.json) pool on the
    Teacher page and the projector view of a 1024x768 projector, nothing wider than the screen; the CLI's
    ``class`` summary says the same."""
    import json

    from playwright.sync_api import expect, sync_playwright

    from tests.conftest import cli
    from tests.engine.test_classlab import LADDER, save_project

    url, home = app_home
    for name, rights in (("ada", (9, 10, 12, 11, 5)), ("ben", (8, 9, 13, 12, 6)), ("cy", (10, 11, 11, 12, 8))):
        save_project(home / "projects", f"pooled-{name}", dict(zip(LADDER, rights)))
    done = cli("class", "--home", str(home), process=True)  # its own process: --home sets that process's home
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["ladders"] >= 3 and summary["headline"].startswith("pretrained beat from scratch")
    with sync_playwright() as p:
        browser, page = teacher_at_a_projector(p, url)
        page.get_by_text(f"Together: {summary['headline']}.").wait_for()
        shot(page, "teacher-class-lab")
        page.get_by_role("link", name="Projector view of the leaderboard").click()
        page.get_by_role("link", name="Back to the Teacher page").wait_for()
        # While the projector page's first run draws, the Teacher page's section is still shown (stale): wait
        # until only the projector's own one is left before reading it.
        expect(page.get_by_text("What the class found")).to_have_count(1, timeout=BUSY_MS)
        page.get_by_text(f"Together: {summary['headline']}.").wait_for()
        page.get_by_role("cell", name="pretrained vs from scratch").first.wait_for()  # one row per pair
        assert page.get_by_role("cell", name="feature extraction vs from scratch").count() >= 1
        wide = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert wide <= 0, f"the projector view scrolls sideways by {wide}px at 1024x768"
        shot(page, "projector-class-lab")
        browser.close()


def test_a_board_of_30_students_fits_a_1024x768_projector_beside_the_join_qr(app_home):
    """30 entries (one student entered twice; scores in ties) on the projector: one row per student, every row in
    view at 1024x768, equal scores with equal ranks, the join QR beside, nothing wider than the screen."""
    import json
    import time

    from playwright.sync_api import expect, sync_playwright

    url, home = app_home
    entries = [{"student": f"Student {k:02d}", "project": f"p{k:02d}", "run_id": f"r{k}", "strategy": "feature extraction",
                "mode": "feature-extraction", "train_images": 40, "accuracy": (12 - k % 5) / 12,
                "recall": {"0": 1.0, "1": 0.5}, "entered": 1000.0 + k, "right": 12 - k % 5, "hidden": 12}
               for k in range(30)]
    entries.append({**entries[0], "run_id": "r0-again", "accuracy": 6 / 12, "right": 6, "entered": 2000.0})
    folder = home / "challenges" / "zz-thirty"  # the newest challenge: the one the board shows
    folder.mkdir(parents=True)
    (folder / "challenge.json").write_text(json.dumps({"id": "zz-thirty", "name": "Thirty students", "classes": ["0", "1"],
                                                       "counts": {"0": 6, "1": 6}, "created": time.time() + 60,
                                                       "entries": entries}))
    with sync_playwright() as p:
        browser, page = teacher_at_a_projector(p, url)
        page.get_by_role("link", name="Projector view of the leaderboard").click()
        page.get_by_role("link", name="Back to the Teacher page").wait_for()
        board = page.locator("[data-testid='stTable']").filter(has_text="Student")
        expect(board.locator("tbody tr")).to_have_count(30, timeout=BUSY_MS)  # the Teacher page's stale copy is gone
        rows = [[td.inner_text().strip() for td in tr.locator("td").all()] for tr in board.locator("tbody tr").all()]
        assert sorted(r[1] for r in rows) == [f"Student {k:02d}" for k in range(30)]  # one row each
        for a in rows:
            assert all(a[0] == b[0] for b in rows if b[2] == a[2]), rows  # the same score, the same rank
        assert {r[0] for r in rows} == {"1", "7", "13", "19", "25"}  # six students a score: ranks 1, 7, 13...
        for tr in board.locator("tbody tr").all():
            box = tr.bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= 1024 and box["y"] + box["height"] <= 768, box
        qr = page.get_by_role("img", name=re.compile("QR code of .*kit=1"))
        box = qr.bounding_box()
        assert box["x"] + box["width"] <= 1024 and box["y"] + box["height"] <= 768, box
        page.get_by_text("?kit=1").first.wait_for()  # the join address beside it
        wide = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert wide <= 0, f"the projector view scrolls sideways by {wide}px at 1024x768"
        page.screenshot(path=str(SHOTS / "projector-30-students.png"))
        browser.close()
