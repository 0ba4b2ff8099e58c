"""In a real browser, the looks before training poll until their worker job is done. Their buttons sit inside
fragments, and a click there reruns only the fragment: the page must start polling all the same (it did not:
"waiting for a free worker…" stayed on screen with the result on disk)."""
from __future__ import annotations

from tests.browser.studio import BUSY_MS, shot


def test_backbone_scores_and_stage_probe_show_when_their_jobs_end(app_url, page):
    page.goto(app_url)
    page.get_by_role("heading", name="1 · Choose a backbone").wait_for()
    page.get_by_role("link", name="Data").first.click()
    page.get_by_role("button", name="Load faces").click()  # 200 images, each scored by every offline backbone
    page.get_by_role("heading", name="not_face · 100 images").first.wait_for()

    page.get_by_role("link", name="Backbone").first.click()
    page.get_by_role("button", name="Score every offline backbone on my images").click()
    page.get_by_text("images best").first.wait_for(timeout=BUSY_MS)  # "X fits your 200 images best"
    shot(page, "insight-backbone")

    page.get_by_role("link", name="Freeze").first.click()
    page.get_by_role("button", name="Probe each stage with my images").click()
    page.get_by_text("Your data is best served from stage").first.wait_for(timeout=BUSY_MS)
    shot(page, "insight-freeze")
