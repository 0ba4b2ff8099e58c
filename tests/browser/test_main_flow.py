"""One real-browser run of the main flow: streamlit on 127.0.0.1, Debian's chromium, Playwright.

Uploads real image files through the browser, trains, sees a prediction, and saves screenshots
(of every page) to test-output/screenshots/.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.browser.studio import BUSY_MS, folder_of, main_text, shot, start_app, start_long_training, stop_app
from tests.conftest import ROOT, eventually


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
    page.get_by_text("the best epoch").first.wait_for(timeout=BUSY_MS)
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
    length = page.evaluate("history.length")
    page.go_back()
    try:
        page.get_by_role("heading", name="7 · Export and projects").wait_for()
    except Exception as e:  # a stall seen once in four CI runs, never reproduced since: say where the browser is
        shot(page, "8-back-stalled")
        raise AssertionError(f"Back did not return to Export: at {page.url}, history {length} -> "
                             f"{page.evaluate('history.length')} entries; the page says:\n{main_text(page)}") from e
    assert "?p=" in page.url

    # A reload keeps everything: the project comes back from the address.
    page.reload()
    page.get_by_role("link", name="Data").first.click()
    page.get_by_role("heading", name="zero · 15 images").wait_for()





def test_a_closed_tab_stops_its_training_and_keeps_the_work(browser):
    """The server notices a session has gone (here after a 1 s grace period) and stops its job."""
    import json

    proc, url, home = start_app(TLS_SESSION_GRACE_S="1", TLS_SWEEP_INTERVAL_S="1")
    try:
        pg = browser.new_page()
        pg.set_default_timeout(BUSY_MS)
        key = start_long_training(pg, url)
        project = folder_of(home, key).name
        t_closed = time.time()
        pg.close()  # the tab goes away mid-training
        manifest = home / "projects" / project / "project.json"
        runs = eventually(lambda: [r for r in json.loads(manifest.read_text())["runs"] if r["status"] == "stopped"],
                          BUSY_MS / 1000, "the closed tab's run to stop")
        print(f"job stopped {time.time() - t_closed:.1f} s after the tab closed")
        assert (home / "projects" / project / "runs" / runs[0]["id"] / "model.safetensors").exists()
    finally:
        stop_app(proc)  # a busy server may take longer than 10 s to stop: then it is killed


def test_a_server_restart_mid_training_keeps_the_project_and_the_best_epoch(browser):
    proc, url, home = start_app()
    pg = browser.new_page()
    pg.set_default_timeout(BUSY_MS)
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
        stop_app(proc)  # a busy server may take longer than 10 s to stop: then it is killed


def test_several_students_at_once_each_get_their_own_model():
    """Two real browser sessions on one server upload their own zips and train at the same moment (the
    short form of ``python -m benchmarks.classroom``): both see a finished model, no server traceback."""
    from benchmarks.classroom import browsers

    report = browsers(2, 24, timeout=BUSY_MS / 1000, finetune=False)
    assert report["fe"]["stuck"] == 0, report
    assert report["server_tracebacks"] == 0, report


def test_the_load_tests_own_devices_browsers_yield_the_cpu_to_the_server(browser):
    """``python -m benchmarks.classroom --own-devices``: every process of its chromium, the tabs opened afterwards too,
    is in a scheduling group at nice 19 (Playwright and chromium start sessions of their own, each an autogroup
    that would share the CPU equally with the server whatever its processes' nice values)."""
    from benchmarks.classroom import browser_pids, chromium_pids, yield_cpu
    from tests.browser.studio import CHROMIUM, FLAGS

    if not Path("/proc/self/autogroup").exists():
        pytest.skip("this kernel schedules without autogroups: the browsers' own nice values apply")

    def group_nice(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/autogroup").read_text().split(" nice ")[1].strip()
        except (OSError, IndexError):
            return "gone"

    before = chromium_pids()  # the session's own browser (``browser``), that other tests share
    b = browser.browser_type.launch(executable_path=CHROMIUM, args=FLAGS)  # a second one, as the load test starts
    try:
        b.new_page().set_content("<h1>first</h1>")
        yield_cpu(browser_pids(before))
        b.new_page().set_content("<h1>a tab opened later</h1>")
        niceness = {pid: group_nice(pid) for pid in browser_pids(before)}
    finally:
        b.close()
    assert len(niceness) >= 3 and set(niceness.values()) - {"gone"} == {"19"}, niceness


def test_enter_adds_a_class_and_nothing_is_deleted_by_one_click(browser, app_url):
    """In a real browser: Enter in the class name adds the class; Delete and a sample over existing data
    ask first (moving and removing images: tests/engine/test_data.py)."""
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.set_default_timeout(BUSY_MS)
    try:
        pg.goto(app_url + "/data")
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


def test_each_step_is_one_entry_in_the_browsers_history(browser, app_url):
    """A click on a step adds one entry to the browser's history, so Back returns to the step before. A link that
    dropped the project's key from the address made the page write it back: two entries for one step, and Back
    stayed on the page (the main flow's Back from Compare waited there)."""
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.set_default_timeout(BUSY_MS)
    try:
        pg.goto(app_url + "/data")
        pg.get_by_role("heading", name="2 · Your data").wait_for()
        pg.get_by_role("button", name="Load digits").click()
        pg.get_by_role("heading", name=re.compile(r"^0 · \d+ images")).first.wait_for()
        steps = (("Freeze", "3 · Freeze or fine-tune"), ("Train", "4 · Train"), ("Compare", "Compare strategies"))
        lengths = [pg.evaluate("history.length")]
        for link, heading in steps:
            pg.get_by_role("link", name=link).first.click()
            pg.get_by_role("heading", name=heading).wait_for()
            pg.wait_for_function("() => new URLSearchParams(location.search).has('p')")
            lengths.append(pg.evaluate("history.length"))
        assert [b - a for a, b in zip(lengths, lengths[1:])] == [1, 1, 1], lengths
        for _, heading in reversed((("Data", "2 · Your data"), *steps[:-1])):
            pg.go_back()
            pg.get_by_role("heading", name=heading).wait_for()
            assert "p=" in pg.url
    finally:
        pg.close()
