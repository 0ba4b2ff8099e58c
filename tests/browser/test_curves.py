"""Train and validation keep one colour each in the Train page's curves, live and finished, as the browser
draws them under Streamlit's theme (issue 21: validation was red in Loss and light blue in Accuracy while
training, light blue was "train" in Loss, and the colours swapped when the run ended)."""
from __future__ import annotations

from tests.browser.studio import BUSY_MS, SHOTS, start_long_training

# each chart's title and its drawn lines (name -> colour), as plotly.js resolved them
DRAWN = """() => Object.fromEntries([...document.querySelectorAll('.js-plotly-plot')].map(gd => [
  gd._fullLayout.title.text.replace(/<[^>]+>/g, ''), Object.fromEntries(gd._fullData.map(t => [t.name, t.line && t.line.color]))]))"""


def _curves(pg) -> dict:
    pg.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot')].some(gd => gd._fullData && "
                         "gd._fullData.some(t => t.name.startsWith('validation')))", timeout=BUSY_MS)
    charts = pg.evaluate(DRAWN)  # the validation line says how many photos it rests on: "validation (40 photos)"
    return {title: {name.split(" (")[0]: colour for name, colour in lines.items()}
            for title, lines in charts.items() if title in ("Loss", "Accuracy per epoch")}


def test_train_and_validation_keep_their_colours_live_and_finished(browser, app_url):
    pg = browser.new_page(viewport={"width": 1400, "height": 1000})
    pg.set_default_timeout(BUSY_MS)
    try:
        start_long_training(pg, app_url)
        live = _curves(pg)
        SHOTS.mkdir(parents=True, exist_ok=True)
        pg.screenshot(path=str(SHOTS / "4-train-live-curves.png"), full_page=True)
        pg.get_by_role("button", name="Stop", exact=True).click()
        pg.get_by_text("Stopped by the user").first.wait_for(timeout=BUSY_MS)
        finished = _curves(pg)
        pg.screenshot(path=str(SHOTS / "4-train-finished-curves.png"), full_page=True)
    finally:
        pg.close()
    assert set(live) == {"Loss", "Accuracy per epoch"} and set(finished) == {"Loss", "Accuracy per epoch"}, (live, finished)
    colours = {}
    for charts in (live, finished):
        for lines in charts.values():
            for name in ("train", "validation"):
                colours.setdefault(name, set()).add(lines[name])
    assert len(colours["train"]) == 1 and len(colours["validation"]) == 1, (live, finished)
    assert colours["train"] != colours["validation"]
