"""The data check in a real browser: a zip with a misfiled digit and a resized copy in the other class is
uploaded; the toast and the review panel name both; Move fixes the misfiled one, Undo puts it back.
Saves test-output/screenshots/2b-data-check.png."""
from __future__ import annotations

import io
import zipfile

from PIL import Image

from tests.browser.studio import BUSY_MS, shot
from tests.conftest import ROOT

DIGITS = ROOT / "assets" / "samples" / "digits"


def _zip(path) -> None:
    zeros, ones = sorted((DIGITS / "0").glob("*.png"))[:15], sorted((DIGITS / "1").glob("*.png"))[:16]
    with zipfile.ZipFile(path, "w") as zf:
        for f in zeros:
            zf.write(f, f"digits/0/{f.name}")
        for f in ones[:15]:
            zf.write(f, f"digits/1/{f.name}")
        zf.write(ones[15], "digits/0/misfiled.png")  # a one among the zeros
        buf = io.BytesIO()
        Image.open(zeros[0]).resize((96, 96)).save(buf, "PNG")
        zf.writestr("digits/1/bigger.png", buf.getvalue())  # a zero, resized, among the ones


def test_the_review_panel_in_a_real_browser(app_url, page, tmp_path):
    _zip(tmp_path / "digits.zip")
    page.goto(f"{app_url}/data")
    page.get_by_role("heading", name="2 · Your data").wait_for()
    page.get_by_role("tab", name="Upload a zip").click()
    page.locator("[data-testid='stFileUploader'] input[type=file]").first.set_input_files(str(tmp_path / "digits.zip"))
    page.get_by_role("heading", name="0 · 16 images").wait_for()
    # the toast, once a training worker has checked them (a fresh server's workers may still be starting)
    page.get_by_text("new images to look at").first.wait_for(timeout=BUSY_MS)
    page.get_by_role("heading", name="Check your data").wait_for()
    page.get_by_text("The same picture twice").first.wait_for()
    page.get_by_text("0/misfiled.png").first.wait_for()
    page.get_by_text("0/misfiled.png").first.scroll_into_view_if_needed()
    shot(page, "2b-data-check")
    page.get_by_role("button", name="Move to 1").first.click()
    page.get_by_role("heading", name="1 · 17 images").wait_for()
    page.get_by_text("Your review: 1 fixed, 0 kept").click()
    page.get_by_role("button", name="Undo").first.click()
    page.get_by_role("heading", name="0 · 16 images").wait_for()


def test_a_file_that_is_not_a_picture_is_named_not_dropped(app_url, page, tmp_path):
    """Issue 38: a .txt picked in a class's uploader was dropped by the browser without a word. Every file
    reaches the app's own checks, which keep the pictures and say which file was not one and why."""
    (tmp_path / "notes.txt").write_text("not a picture")
    digit = tmp_path / "new-zero.png"
    Image.open(sorted((DIGITS / "0").glob("*.png"))[0]).resize((40, 40)).rotate(20).save(digit)  # not in the sample
    page.goto(f"{app_url}/data")
    page.get_by_role("heading", name="2 · Your data").wait_for()
    page.get_by_role("button", name="Load digits").click()
    page.get_by_role("heading", name="0 · 40 images").wait_for()
    uploader = page.locator("[data-testid='stFileUploader']").filter(has_text="Add images to '0'")
    uploader.locator("input[type=file]").set_input_files([str(tmp_path / "notes.txt"), str(digit)])
    page.get_by_text("1 file not used: see why").wait_for()
    page.get_by_text("this is not an image file").wait_for()
    assert page.get_by_text("notes.txt").count() >= 1
    page.get_by_role("heading", name="0 · 41 images").wait_for()  # the picture is kept
