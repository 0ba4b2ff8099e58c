"""The exported web app, opened from disk in chromium with networking off, gives the app's predictions.

Real images (the bundled face photos, and two non-square JPEG photos) are classified by the page's
``window.tlsClassify`` and by the app's own ``tlcore.predict``: the same class for every image and
probabilities within 1e-3 for the float32 model; for the int8 model the agreement is printed.
"""
from __future__ import annotations

import base64
import json
import mimetypes
import shutil
import subprocess
import sys

import pytest

from tests.browser.test_main_flow import CHROMIUM, SHOTS, pytestmark  # noqa: F401
from tests.conftest import ROOT

DATA = ROOT / "assets" / "samples" / "faces"
FILES = sorted(DATA.glob("*/*.png"))[::10] + [ROOT / "assets" / "chelsea.jpg", ROOT / "assets" / "coffee.jpg"]


def _tlcore(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "tlcore", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def _app_predictions(run) -> dict[str, dict[str, float]]:
    import tlcore

    saved = tlcore.load_run(run)
    images = [tlcore.decode_image(f.name, f.read_bytes()) for f in FILES]
    return {f.name: p.probabilities for f, p in zip(FILES, tlcore.predict(saved.model, images, saved.classes,
                                                                           saved.preprocess))}


def _page_predictions(index, url: str | None = None, phone: bool = False
                      ) -> tuple[dict[str, dict[str, float]], float, float]:
    """The page's predictions, its model load time and its slowest prediction (ms); prints the times."""
    from playwright.sync_api import sync_playwright

    requests, errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync", "--disable-quic",
            "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",  # a test-pattern webcam
            *(["--host-resolver-rules=MAP phone.test 127.0.0.1"] if phone else [])])
        context = browser.new_context(offline=url is None, viewport={"width": 412, "height": 900})  # a phone's width
        page = context.new_page()
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url or index.as_uri())
        page.wait_for_function("window.tlsLoadMs !== undefined || /could not/.test(document.body.innerText)",
                               timeout=30_000)
        assert page.evaluate("window.tlsLoadMs") is not None, page.inner_text("#status")
        out, times = {}, []
        for f in FILES:
            data_url = f"data:{mimetypes.guess_type(f.name)[0]};base64,{base64.b64encode(f.read_bytes()).decode()}"
            r = page.evaluate("async u => { const t = performance.now(); const r = await window.tlsClassify(u);"
                              " r.ms = performance.now() - t; r.run = window.tlsRunMs; return r; }", data_url)
            out[f.name] = r["probabilities"]
            assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)
            times.append((r["ms"], r["run"]))
        if not phone:  # from disk the camera is allowed: live bars follow it
            page.click("#cam")
            page.wait_for_function("document.querySelectorAll('#livebars .bar').length === "
                                   "window.TLS_CONFIG.classes.length", timeout=20_000)
        page.set_input_files("#pick", [str(FILES[0]), str(FILES[-1])])  # the page's own picker, camera running
        page.wait_for_function("document.querySelectorAll('.result .bars').length === 2")
        assert "Model card" in page.inner_text("body")
        if phone:  # plain http on a network address: no camera, and the page says why and what works instead
            page.click("#cam")
            assert "HTTPS" in page.inner_text("#camnote") and "Take a photo" in page.inner_text("#camnote")
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "web-export.png"), full_page=True)
        load_ms = page.evaluate("window.tlsLoadMs")
        whole, model = sorted(t for t, _ in times), sorted(m for _, m in times)
        where = index.parent.name if url is None else "served"
        print(f"{where}: load {load_ms:.0f} ms; a prediction {whole[len(whole) // 2]:.0f} ms median, "
              f"{whole[-1]:.0f} ms slowest (the model alone {model[len(model) // 2]:.0f} / {model[-1]:.0f} ms)")
        browser.close()
    assert errors == []
    folder = (url or "file:").rsplit("/", 1)[0]  # only the page's own folder
    assert all(u.startswith(("file:", "data:", "blob:", folder)) for u in requests), [
        u for u in requests if not u.startswith(("file:", "data:", "blob:", folder))]
    return out, load_ms, max(t for t, _ in times)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("web") / "run"
    _tlcore("train", str(DATA), "--backbone", "tiny-test", "--out", str(folder), "--epochs", "3")
    return folder


def test_f32_page_matches_the_app(run, tmp_path):
    info = _tlcore("export", str(run), "--format", "web", "--data", str(DATA), "--out", str(tmp_path / "web"))
    assert info["max_diff"] <= 1e-4
    page, load_ms, slowest = _page_predictions(tmp_path / "web" / "index.html")
    app = _app_predictions(run)
    worst = max(abs(page[f][c] - app[f][c]) for f in app for c in app[f])
    print(f"f32: {len(app)} images, max probability difference {worst:.1e}, load {load_ms:.0f} ms, "
          f"slowest prediction {slowest:.0f} ms")
    assert all(max(page[f], key=page[f].get) == max(app[f], key=app[f].get) for f in app)
    assert worst <= 1e-3
    assert load_ms < 5000 and slowest < 200


def test_int8_page_agrees_with_the_app(run, tmp_path):
    info = _tlcore("export", str(run), "--format", "web", "--quantize", "--data", str(DATA),
                   "--out", str(tmp_path / "web8"))
    assert info["quantized"] and info["agreement"]["n"] > 0
    page, _, _ = _page_predictions(tmp_path / "web8" / "index.html")
    app = _app_predictions(run)
    same = sum(max(page[f], key=page[f].get) == max(app[f], key=app[f].get) for f in app)
    worst = max(abs(page[f][c] - app[f][c]) for f in app for c in app[f])
    print(f"int8: same class as the app on {same} of {len(app)} images, max probability difference {worst:.2e}")
    assert same >= 0.8 * len(app)


def test_the_app_serves_the_page_to_phones(run, tmp_path):
    """Published under the app's static folder and opened over plain http from a network name (as a phone on
    the classroom network would): the page classifies, offers photos instead of the camera, and only the
    published folder is served."""
    import urllib.error
    import urllib.request

    import tlcore
    from tests.browser.test_main_flow import start_app, stop_app
    from tlcore.report import open_run_folder

    web = tlcore.export_web(*open_run_folder(run, DATA), tmp_path / "web")
    path = tlcore.publish_web(web, ROOT / "static", run)
    proc, url, _ = start_app()
    try:
        base = url.replace("127.0.0.1", "phone.test") + "/app/static/"
        with urllib.request.urlopen(f"{url}/app/static/{path.replace('index.html', 'model.js')}") as r:
            assert r.headers["Content-Type"].split(";")[0] in ("text/javascript", "application/javascript")
        for other in ("tls-web/", "../app.py", "tls-web/x/index.html"):
            try:
                urllib.request.urlopen(f"{url}/app/static/{other}")
                raise AssertionError(f"{other} was served")
            except urllib.error.HTTPError as e:
                assert e.code in (400, 404)
        page, _, _ = _page_predictions(None, base + path, phone=True)
    finally:
        stop_app(proc)
        shutil.rmtree(ROOT / "static" / path.split("/")[0] / path.split("/")[1], ignore_errors=True)
    app = _app_predictions(run)
    assert all(max(page[f], key=page[f].get) == max(app[f], key=app[f].get) for f in app)
