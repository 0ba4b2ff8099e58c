"""The stakeholder report opens correctly in chromium with networking off: charts drawn, images shown."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.browser.test_main_flow import CHROMIUM, SHOTS, pytestmark  # noqa: F401
from tests.conftest import ROOT


def test_the_report_is_self_contained(tmp_path):
    from playwright.sync_api import sync_playwright

    data = ROOT / "assets" / "samples" / "digits"
    run = tmp_path / "run"
    for args in (["train", str(data), "--out", str(run), "--epochs", "3"],
                 ["report", str(run), "--data", str(data), "--out", str(tmp_path / "report.html")]):
        out = subprocess.run([sys.executable, "-m", "tlcore", *args], cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1])["bytes"] > 1_000_000  # plotly's script is inside
    requests, errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync", "--disable-quic"])
        context = browser.new_context(offline=True, viewport={"width": 1200, "height": 900})
        page = context.new_page()
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((tmp_path / "report.html").as_uri())
        page.wait_for_selector(".js-plotly-plot .main-svg")
        assert page.locator(".js-plotly-plot").count() >= 3  # loss, accuracy, confusion matrix
        broken = page.evaluate("[...document.images].filter(i => !i.complete || i.naturalWidth === 0).length")
        assert page.locator("img").count() >= 20 and broken == 0
        text = page.inner_text("body")
        for expected in ("The task", "How it was trained", "validation accuracy", "precision", "Some it got right",
                         "Model card", "load_run"):
            assert expected in text, expected
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "report.png"), full_page=True)
        browser.close()
    assert errors == []
    assert all(u.startswith(("file:", "data:")) for u in requests), [u for u in requests if not u.startswith("file:")]
