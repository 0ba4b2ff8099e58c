"""A lesson in real browsers: the teacher sets a class kit and a challenge; three students join from the address
the Teacher page shows, give their names, train and enter; the teacher follows them and puts the board on a
1024x768 projector (whole board in view, a reload needs no password)."""
from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.studio import BUSY_MS, SHOTS, shot, start_app, stop_app
from tests.engine.test_challenge import hidden_zip

STUDENTS = ("Ada", "Bea", "Chen")


def tried(action) -> bool:
    try:
        action()
        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def server():
    proc, url, _ = start_app(address="0.0.0.0", TLS_TEACHER_PASSWORD="class-2b")  # reachable on the network
    yield url
    stop_app(proc)


def test_a_lesson_from_join_link_to_projector(server, browser, tmp_path):
    hidden = tmp_path / "hidden.zip"
    hidden.write_bytes(hidden_zip(("0", "1")))
    teacher = browser.new_page(viewport={"width": 1400, "height": 1000})
    teacher.set_default_timeout(BUSY_MS)
    teacher.goto(server + "/teacher")
    for _ in range(3):  # a busy server's first session may redraw the form under the click: try again
        teacher.get_by_label("Teacher password").fill("class-2b")
        teacher.get_by_role("button", name="Open").click()
        if tried(lambda: teacher.get_by_text("Join the class").wait_for(timeout=20_000)):
            break
    data = teacher.locator("[data-testid='stSelectbox']").filter(has_text="Data").locator("input")
    kit_button = teacher.get_by_role("button", name="Use as the class kit")
    expect(kit_button).to_be_visible()
    assert kit_button.get_attribute("data-testid") != "stBaseButton-primaryFormSubmit"  # not a red button
    for _ in range(3):  # nothing is preselected: one misclick cannot set the class's data
        data.click()
        if tried(lambda: teacher.get_by_role("option", name="the digits sample").click(timeout=10_000)):
            break
    backbone = teacher.locator("[data-testid='stSelectbox']").filter(has_text="Backbone").locator("input")
    for _ in range(3):  # the open list can close under a redraw of the page's live parts
        backbone.click()
        if tried(lambda: teacher.get_by_role("option", name="Tiny test net", exact=True).click(timeout=10_000)):
            break
    expect(backbone).to_have_value("Tiny test net", timeout=BUSY_MS)
    teacher.get_by_role("button", name="Use as the class kit").click()
    teacher.get_by_text("students who join now start from it").wait_for()
    teacher.get_by_label("Challenge name").fill("Zero or one?")
    uploader = teacher.locator("[data-testid='stFileUploader']").filter(has_text="Hidden test set")
    uploader.locator("input[type=file]").set_input_files(str(hidden))
    uploader.get_by_text("hidden.zip").wait_for()  # uploaded before the form is sent
    teacher.get_by_role("button", name="Start the challenge").click()
    try:
        teacher.get_by_text("is open").wait_for()
    except Exception:
        shot(teacher, "lesson-failed-challenge")
        raise
    join = teacher.locator("code", has_text="?kit=1").first.inner_text().strip()
    assert join.startswith("http://") and "127.0.0.1" not in join and "localhost" not in join
    assert join.split("//")[1].split("/")[0].endswith(":" + server.rsplit(":", 1)[1])  # the server's real port
    teacher.locator("[data-testid='stImage'] img").first.wait_for()  # the QR code
    teacher.get_by_text("Join the class").scroll_into_view_if_needed()
    shot(teacher, "lesson-1-teacher-join")

    students = []
    for name in STUDENTS:  # each on their own device: a fresh browser context, from the address shown
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        pg = context.new_page()
        pg.set_default_timeout(BUSY_MS)
        pg.goto(join)
        pg.get_by_text("Type your name so your teacher can find your work").wait_for()  # in the main area
        box = pg.get_by_label("Your name (your teacher sees your work under it)")
        box.fill(name)
        box.press("Enter")
        pg.get_by_text("Type your name so your teacher can find your work").wait_for(state="detached")
        expect(pg.get_by_label("Your name", exact=True)).to_have_value(name)  # the sidebar's box says it too
        students.append((name, context, pg))
    for name in STUDENTS:
        teacher.get_by_text(f"{name} · 5 classes, 200 images").wait_for()  # named, with the kit's images
    shot(teacher, "lesson-2-teacher-progress")

    for name, _, pg in students:
        pg.get_by_role("link", name="Train").first.click()
        pg.get_by_role("button", name="Start training").click()
    for name, _, pg in students:
        try:
            pg.get_by_text("the best epoch", exact=False).first.wait_for(timeout=BUSY_MS)  # a busy machine
        except Exception:
            shot(pg, f"lesson-failed-train-{name}")
            raise
        pg.get_by_role("link", name="Evaluate").first.click()
        expect(pg.get_by_label("Your name on the leaderboard")).to_have_value(name, timeout=BUSY_MS)  # given once
        pg.get_by_role("button", name="Enter this model").click()
        pg.get_by_text("Rank ", exact=False).first.wait_for()
    progress = teacher.locator("[data-testid='stTable']").filter(has_text="needs help")
    for name in STUDENTS:  # by name, each on the last step (the table's cells)
        progress.locator("td", has_text=name).first.wait_for(state="attached")
    expect(progress.locator("td", has_text="Challenge")).to_have_count(3, timeout=BUSY_MS)
    # The teacher's tab (and below, the projector's) opened no project: the class is its three students.
    expect(progress.locator("td", has_text="project-")).to_have_count(0)
    progress.scroll_into_view_if_needed()
    shot(teacher, "lesson-3-teacher-after")

    href = teacher.get_by_role("link", name="Projector view of the leaderboard").get_attribute("href")
    projector = browser.new_page(viewport={"width": 1024, "height": 768})
    projector.set_default_timeout(BUSY_MS)
    projector.goto(href if href.startswith("http") else server + "/" + href.lstrip("/"))
    assert "t=" not in href  # the projector's address holds the board's key, not the teacher's
    for attempt in ("first", "after a reload"):  # its own key: no password on a reload
        table = projector.locator("[data-testid='stTable']").first  # the board (the class's pooled results follow)
        for name in STUDENTS:
            table.get_by_text(name, exact=True).wait_for()
        rows = [[td.inner_text().strip() for td in tr.locator("td").all()] for tr in table.locator("tbody tr").all()]
        assert sorted(r[1] for r in rows) == sorted(STUDENTS), rows  # one row per student, nobody else
        for a in rows:  # the same score, the same rank
            assert all(a[0] == b[0] for b in rows if b[2] == a[2]), rows
        box = table.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 1024 and box["y"] + box["height"] <= 768, (attempt, box)
        assert not projector.locator("[data-testid='stSidebar']").is_visible()
        assert projector.get_by_label("Teacher password").count() == 0
        projector.screenshot(path=str(SHOTS / f"lesson-4-projector-{attempt.split()[0]}.png"))
        projector.reload()
    teacher.reload()  # the teacher's tab and the projector, opened again: still no project of their own
    teacher.get_by_text("Join the class").wait_for()
    progress = teacher.locator("[data-testid='stTable']").filter(has_text="needs help")
    expect(progress.locator("td", has_text="Challenge")).to_have_count(3, timeout=BUSY_MS)
    expect(progress.locator("td", has_text="project-")).to_have_count(0)
    for _, context, _ in students:
        context.close()
