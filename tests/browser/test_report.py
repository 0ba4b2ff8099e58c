"""The stakeholder report opens correctly in chromium with networking off: charts drawn, images shown,
train and validation in their own colours, no tick label or class name clipped."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.browser.studio import CHROMIUM, FLAGS, SHOTS
from tests.conftest import ROOT, cli

NAMES = {"0": "zero (nought)", "1": "one", "2": "two", "3": "three", "4": "four"}  # long names must not be cut


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    data = tmp / "data"
    for digit, name in NAMES.items():
        shutil.copytree(ROOT / "assets" / "samples" / "digits" / digit, data / name)
    run = tmp / "run"
    for args in (["train", str(data), "--out", str(run), "--epochs", "3"],
                 ["report", str(run), "--data", str(data), "--out", str(tmp / "report.html")]):
        out = cli(*args)
        assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1])["bytes"] > 1_000_000  # plotly's script is inside
    return tmp, run, data


def _open(p, path):
    browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
    context = browser.new_context(offline=True, viewport={"width": 1200, "height": 900})
    page = context.new_page()
    requests, errors = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(path.as_uri())
    page.wait_for_selector(".js-plotly-plot .main-svg")
    return browser, page, requests, errors


def test_the_report_is_self_contained(trained):
    from playwright.sync_api import sync_playwright

    tmp, _, _ = trained
    with sync_playwright() as p:
        browser, page, requests, errors = _open(p, tmp / "report.html")
        assert page.locator(".js-plotly-plot").count() >= 3  # loss, accuracy, confusion matrix
        broken = page.evaluate("[...document.images].filter(i => !i.complete || i.naturalWidth === 0).length")
        assert page.locator("img").count() >= 20 and broken == 0
        text = page.inner_text("body")
        for expected in ("The task", "How it was trained", "on photos it had not trained on", "precision", "Some it got right",
                         "Model card", "load_run"):
            assert expected in text, expected
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "report.png"), full_page=True)
        browser.close()
    assert errors == []
    assert all(u.startswith(("file:", "data:")) for u in requests), [u for u in requests if not u.startswith("file:")]


# every line's drawn colour, and every tick label that sticks out of its chart (clipped on screen)
DRAWN = """() => [...document.querySelectorAll('.js-plotly-plot')].map(gd => ({
  lines: gd._fullData.filter(t => t.type === 'scatter').map(t => [t.name, t.line.color]),
  clipped: [...gd.querySelectorAll('.xtick text, .ytick text')].filter(t => {
      const r = t.getBoundingClientRect(), box = gd.getBoundingClientRect();
      return r.left < box.left - 0.5 || r.right > box.right + 0.5 || r.top < box.top - 0.5; })
    .map(t => t.textContent)}))"""


def test_the_app_made_report_has_coloured_curves_and_whole_labels(trained):
    """The Export page makes the report inside streamlit's process (its plotly template is the default)."""
    from playwright.sync_api import sync_playwright

    tmp, run, data = trained
    code = ("import sys, streamlit, tlcore.studio.report as r; from pathlib import Path; "
            "Path(sys.argv[3]).write_text(r.report_for_folder(Path(sys.argv[1]), Path(sys.argv[2])))")
    out = subprocess.run([sys.executable, "-c", code, str(run), str(data), str(tmp / "app-report.html")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    with sync_playwright() as p:
        browser, page, _, errors = _open(p, tmp / "app-report.html")
        page.locator(".js-plotly-plot").nth(2).scroll_into_view_if_needed()
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "report-app.png"), full_page=True)
        charts = page.evaluate(DRAWN)
        browser.close()
    assert errors == []
    loss, acc, matrix = charts[:3]
    for chart in (loss, acc):
        colours = {name: colour for name, colour in chart["lines"]}
        assert colours["train"] != colours["validation"], colours
        assert not any(c.startswith(("#000", "rgb(0, 0, 0")) for c in colours.values()), colours  # not black
    assert dict(loss["lines"])["validation"] == dict(acc["lines"])["validation"]
    assert [c["clipped"] for c in charts] == [[]] * len(charts), charts
