"""Every step at a projector's 1024x768 and a phone's 390x844, in a real browser: nothing clipped, nothing past the
right edge, no page that scrolls sideways; and axe-core finds no critical or serious WCAG 2.1 AA violation.

One server, one session: the bundled digits loaded, one quick model trained, then each step visited once and
looked at in both sizes (the viewport is resized in place, so what a page made, e.g. the Test page's prediction,
stays). Screenshots of each go to test-output/screenshots/fit-*.png.
"""
from __future__ import annotations

import re

from tests.browser.studio import BUSY_MS, CHROMIUM, DRAWN, FLAGS, SHOTS, TEACHER_PASSWORD, main_text
from tests.conftest import ROOT

SIZES = {"projector": (1024, 768), "phone": (390, 844)}
WAIT = BUSY_MS  # every wait's failsafe (tests.browser.studio)
STEPS = {  # step bar title -> the heading that only its page shows
    "Backbone": "1 · Choose a backbone", "Data": "2 · Your data", "Freeze": "3 · Freeze or fine-tune",
    "Train": "4 · Train", "Evaluate": "5 · Evaluate", "Test": "6 · Test on new images",
    "Export": "7 · Export and projects", "Compare": "Compare strategies"}

# What a reader sees cut or off the screen, measured in the page: the page's sideways scroll, every visible element
# of the app whose box runs past the viewport's right edge (unless an ancestor clips it and fits itself, which the
# next rule then judges), every box that scrolls sideways inside (a table that needs a swipe), every box that runs
# out of its column (a picture over its neighbour), and every text cut short (an ellipsis, text wider than its box
# that its box hides, or a field's value wider than the field: a model picker cannot wrap). Off-screen helpers (the
# "Skip to main content" link before it is focused) are not seen. A table (st.dataframe) that scrolls sideways in its
# own frame is a swipe too, on a phone as anywhere.
MEASURE = """() => {
  const W = document.documentElement.clientWidth, out = [];
  const name = el => (el.getAttribute('data-testid') || el.tagName.toLowerCase())
      + ': ' + (el.innerText || el.getAttribute('aria-label') || el.getAttribute('alt') || '').trim().slice(0, 60);
  const clips = el => { const s = getComputedStyle(el); return s.overflowX !== 'visible'; };
  const inside = (el, right, stop) => {  // clipped by an ancestor (below stop) that itself ends before `right`
    for (let a = el.parentElement; a && a !== stop && a !== document.body; a = a.parentElement)
      if (clips(a) && a.getBoundingClientRect().right <= right + 1) return true;
    return false;
  };
  const sideways = document.documentElement.scrollWidth - W;
  if (sideways > 1) out.push(`the page scrolls sideways by ${sideways}px`);
  for (const el of document.querySelectorAll('[data-testid="stAppViewContainer"] *')) {
    const r = el.getBoundingClientRect(), s = getComputedStyle(el);
    if (r.width <= 1 || r.height <= 1 || r.right <= 0 || r.bottom <= 0 || s.visibility === 'hidden') continue;
    if (s.clipPath !== 'none' || s.clip.startsWith('rect(0')) continue;  // text for screen readers only ("add icon")
    if (el.closest('[aria-hidden="true"], .hoverlayer, [role="tooltip"]')) continue;
    if (r.right > W + 1 && !inside(el, W, null)) out.push(`past the right edge by ${Math.round(r.right - W)}px: ${name(el)}`);
    const col = el.parentElement && el.parentElement.closest('[data-testid="stColumn"]');
    if (col) {
      const c = col.getBoundingClientRect();
      if ((r.right > c.right + 1 || r.left < c.left - 1) && !inside(el, c.right, col))
        out.push(`out of its column by ${Math.round(Math.max(r.right - c.right, c.left - r.left))}px: ${name(el)}`);
    }
    if ((s.overflowX === 'auto' || s.overflowX === 'scroll') && el.scrollWidth > el.clientWidth + 1)
      out.push(`scrolls sideways inside by ${el.scrollWidth - el.clientWidth}px: ${name(el)}`);
    if (el.tagName === 'INPUT' && el.value && el.scrollWidth > el.clientWidth + 1)
      out.push(`text cut short: ${name(el)} "${el.value.slice(0, 80)}"`);
    const text = [...el.childNodes].some(n => n.nodeType === 3 && n.textContent.trim())
        && !s.fontFamily.includes('Material');  // an icon's ligature ("add") is a glyph, not text
    if (el.scrollWidth > el.clientWidth + 1 && (s.textOverflow === 'ellipsis' || (text && clips(el))))
      out.push(`text cut short: ${name(el)}`);
  }
  for (const chart of document.querySelectorAll('.stPlotlyChart')) {  // a chart's titles never run into each other
    const boxes = [...chart.querySelectorAll('.annotation-text, .gtitle')].map(t => [t, t.getBoundingClientRect()])
        .filter(([, r]) => r.width > 1);
    for (const [i, [a, p]] of boxes.entries()) for (const [b, q] of boxes.slice(i + 1))
      if (p.left < q.right - 1 && q.left < p.right - 1 && p.top < q.bottom - 1 && q.top < p.bottom - 1)
        out.push(`titles run into each other: "${a.textContent}" and "${b.textContent}"`);
  }
  return [...new Set(out)];
}"""


def settle(page) -> None:
    """Wait until Streamlit has finished the run and the charts are drawn."""
    from playwright.sync_api import expect

    expect(page.locator("[data-testid='stStatusWidget']")).to_have_count(0, timeout=WAIT)
    expect(page.locator("[data-stale='true']")).to_have_count(0, timeout=WAIT)
    expect(page.locator("[data-testid='stSkeleton']")).to_have_count(0, timeout=WAIT)
    # charts drawn; a rerun's elements fade back in (a CSS transition): measured half-faded, text would fail the
    # contrast rule
    page.wait_for_function(DRAWN, timeout=WAIT)


def look(page, name: str, problems: dict) -> None:
    """At each size: measure, and save a screenshot of the whole page."""
    for size, (w, h) in SIZES.items():
        page.set_viewport_size({"width": w, "height": h})
        page.wait_for_function(f"() => document.documentElement.clientWidth <= {w}")
        settle(page)
        page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        if found := page.evaluate(MEASURE):
            problems[f"{name} at {w}x{h}"] = found
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"fit-{name}-{size}.png"), full_page=True)


def axe(page, name: str, violations: dict) -> None:
    """axe-core's WCAG 2.0/2.1 A and AA rules; the critical and serious violations, by rule."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page, options={"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]},
                                       "resultTypes": ["violations"]})
    for v in results.response["violations"]:
        if v["impact"] in ("critical", "serious"):
            violations.setdefault(name, []).append(
                f"{v['id']} ({v['impact']}, {len(v['nodes'])}x): {v['nodes'][0]['html'][:200]} "
                f"{v['nodes'][0].get('failureSummary', '')[:200]}")


def visit_every_page(page, url: str, problems: dict, violations: dict) -> None:
    """Every step (from the one shown), then the Teacher page and the projector: looked at, measured, axe-checked."""
    from playwright.sync_api import expect

    for title, heading in STEPS.items():
        page.set_viewport_size({"width": 1024, "height": 768})
        page.get_by_role("link", name=re.compile(title)).first.click()
        try:
            page.get_by_role("heading", name=heading).wait_for()
        except Exception as e:  # what the page showed instead, for the failure's message and a look
            page.screenshot(path=str(SHOTS / f"fit-{title}-timeout.png"), full_page=True)
            raise AssertionError(f"the {title} page did not open; the page says:\n{main_text(page)}") from e
        if title == "Data":  # each thumbnail says its whole file name (cut to 12 letters, "digit_0_008.", before)
            settle(page)
            names_js = ("() => [...document.querySelectorAll('[data-testid=stImageContainer]')]"
                        ".filter(c => c.querySelector('img[alt^=\"class \"]'))"
                        ".map(c => [c.querySelector('img').alt, "
                        "(c.querySelector('[data-testid=stImageCaption]') || {innerText: ''})"
                        ".innerText.replaceAll('\\u200b', '')])")
            try:  # waited for: a rerun (the automatic data check's) redraws the thumbnails and their captions
                page.wait_for_function(f"() => {{ const n = ({names_js})(); "
                                       "return n.length > 0 && n.every(([alt, cap]) => alt.endsWith(': ' + cap)); }",
                                       timeout=WAIT)
            except Exception:
                names = page.evaluate(names_js)
                raise AssertionError([n for n in names if not n[0].endswith(": " + n[1])][:5] or "no thumbnails")
        if title == "Test":
            probe = max((ROOT / "assets" / "samples" / "digits" / "1").glob("*.png"))
            page.locator("[data-testid='stFileUploaderDropzoneInput']").first.set_input_files(str(probe))
            page.get_by_text("Grad-CAM: red = looked here").first.wait_for()
        if title == "Compare":  # the trained model as an earlier run: the comparison's table and charts
            box = page.get_by_role("combobox", name="Add earlier runs to the comparison")
            box.click()
            box.press("ArrowDown")
            box.press("Enter")
            box.press("Escape")
            page.locator(".stPlotlyChart").filter(has_text="Trainable").first.wait_for()
            ticks = (page.locator(".stPlotlyChart").filter(has_text="Accuracy per epoch on the validation photos")
                     .locator(".xtick text").all_text_contents())
            assert ticks and all(t.isdigit() for t in ticks), ticks  # whole epochs (were 1, 1.5, 2)
        if title == "Export":
            page.get_by_role("button", name="Make the web app").click()
            page.get_by_text("Scan with a phone").wait_for(timeout=BUSY_MS)
        settle(page)
        axe(page, title, violations)
        look(page, title, problems)

    page.set_viewport_size({"width": 1024, "height": 768})
    page.goto(url + "/teacher")
    page.get_by_label("Teacher password").fill(TEACHER_PASSWORD)
    page.get_by_role("button", name="Open").click()
    page.get_by_role("button", name="Log out").wait_for()
    settle(page)
    axe(page, "Teacher", violations)
    look(page, "Teacher", problems)
    page.set_viewport_size({"width": 1024, "height": 768})
    page.get_by_role("link", name="Projector view of the leaderboard").click()
    page.get_by_role("link", name="Back to the Teacher page").wait_for()
    expect(page.get_by_role("button", name="Log out")).to_have_count(0, timeout=WAIT)  # the Teacher page has gone
    settle(page)
    axe(page, "Projector", violations)
    look(page, "Projector", problems)


def test_every_page_fits_a_projector_and_a_phone_and_passes_axe(app_url):
    from playwright.sync_api import expect, sync_playwright

    problems, violations = {}, {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1024, "height": 768})
        page.set_default_timeout(WAIT)
        page.goto(app_url + "/data")
        page.get_by_role("heading", name=STEPS["Data"]).wait_for()
        page.get_by_role("button", name="Load digits").click()
        page.get_by_role("heading", name="0 · 40 images").wait_for()
        page.goto(page.url.replace("/data", "/train"))
        page.get_by_role("heading", name=STEPS["Train"]).wait_for()
        page.get_by_role("button", name="Start training").focus()
        page.keyboard.press("Enter")  # by keyboard: the disabled button drops the focus while the run trains
        try:
            page.get_by_text("the best epoch").first.wait_for(timeout=BUSY_MS)
        except Exception:
            page.screenshot(path=str(SHOTS / "fit-train-timeout.png"))
            raise
        # the run ended: the focus is back on Start (it was left on the page, and the next Tab began at the top)
        expect(page.get_by_role("button", name="Start training")).to_be_focused(timeout=WAIT)

        visit_every_page(page, app_url, problems, violations)
        browser.close()
    report = "\n".join(f"{where}:\n  " + "\n  ".join(found) for where, found in {**problems, **violations}.items())
    print(report)
    assert not problems and not violations, report
