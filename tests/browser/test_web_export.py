"""The exported web app, opened from disk in chromium with networking off, gives the app's predictions.

Real images (the bundled face photos, two non-square JPEG photos) and generated photos of every shape the app
meets (square to 5:1 and 1:5, 20x300, 12 megapixels, EXIF orientations 3/6/8, a colour profile, RGBA, LA and
palette transparency, PNG, GIF, WebP) are classified by the page's ``window.tlsClassify`` and by the app's own ``tlcore.predict``: the
same class for every image and probabilities within 1e-3 for the float32 model; the page's decoded image and the
network's input (``window.tlsPixels``) are the app's pixels. For the int8 model the agreement is printed.
"""
from __future__ import annotations

import base64
import io
import json
import mimetypes
import shutil

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from tests.browser.studio import BUSY_MS, CHROMIUM, FLAGS, SHOTS
from tests.conftest import ROOT, cli

DATA = ROOT / "assets" / "samples" / "faces"
FILES = sorted(DATA.glob("*/*.png"))[::10] + [ROOT / "assets" / "chelsea.jpg", ROOT / "assets" / "coffee.jpg"]


# ---- generated photos of every shape


def _photo(w: int, h: int, seed: int) -> Image.Image:
    """A photo-like RGB image: a bundled photo fitted to ``w x h``, thin lines (hair, fur, text), sensor noise."""
    rng = np.random.default_rng(seed)
    src = Image.open(ROOT / "assets" / ("chelsea.jpg" if seed % 2 else "coffee.jpg")).convert("RGB")
    img = ImageOps.fit(src, (w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        ends = [(int(rng.integers(0, w)), int(rng.integers(0, h))) for _ in range(2)]
        draw.line(ends, fill=tuple(int(v) for v in rng.integers(0, 256, 3)), width=max(1, min(w, h) // 200))
    pixels = np.asarray(img, dtype=np.int16) + rng.integers(-6, 7, (h, w, 1), dtype=np.int16)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _cutout_mask(w: int, h: int) -> Image.Image:
    """A cut-out's alpha: an ellipse with a soft edge, and a half-transparent corner."""
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).ellipse([w // 8, h // 8, w - w // 8, h - h // 8], fill=255)
    alpha = np.asarray(mask.filter(ImageFilter.GaussianBlur(max(1, min(w, h) // 40)))).copy()
    alpha[: h // 6, : w // 3] = 90
    return Image.fromarray(alpha)


def _encoded(img: Image.Image, fmt: str, orientation: int | None = None, **options) -> bytes:
    if orientation:
        exif = Image.Exif()
        exif[0x0112] = orientation  # what a phone writes instead of turning the pixels
        options["exif"] = exif.tobytes()
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def _wide_gamut_profile() -> bytes:
    """An ICC profile unlike sRGB (its red and blue primaries swapped), as phones embed Display P3: the app reads
    a photo's numbers and ignores its profile, so the page must too (any conversion would show at once)."""
    import struct

    from PIL import ImageCms

    icc = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    count = struct.unpack(">I", icc[128:132])[0]
    tags = {bytes(icc[132 + 12 * i:136 + 12 * i]): struct.unpack(">II", icc[136 + 12 * i:144 + 12 * i])
            for i in range(count)}
    (r, r_size), (b, b_size) = tags[b"rXYZ"], tags[b"bXYZ"]
    icc[r:r + r_size], icc[b:b + b_size] = icc[b:b + b_size], icc[r:r + r_size]
    icc[84:100] = bytes(16)  # the profile ID no longer holds
    return bytes(icc)


def generated_photos() -> dict[str, bytes]:
    """File name -> bytes, for every shape the app meets."""
    out = {}
    for k, (w, h) in enumerate([(800, 800), (4000, 3000), (1200, 1600), (1920, 1080), (1000, 500), (1200, 400),
                                (2000, 500), (500, 2000), (2500, 500), (400, 2000), (20, 300), (100, 75)]):
        out[f"{w}x{h}.jpg"] = _encoded(_photo(w, h, k), "JPEG", quality=90)
    for o in (3, 6, 8):
        out[f"exif{o}-1600x1200.jpg"] = _encoded(_photo(1600, 1200, 20 + o), "JPEG", o, quality=90)
    out["exif6-4032x3024.jpg"] = _encoded(_photo(4032, 3024, 30), "JPEG", 6, quality=85)  # an iPhone photo
    out["exif6-800x600.png"] = _encoded(_photo(800, 600, 31), "PNG", 6)
    out["icc-1200x900.jpg"] = _encoded(_photo(1200, 900, 32), "JPEG", quality=90, icc_profile=_wide_gamut_profile())
    for w, h in ((600, 900), (1600, 400)):
        rgba = _photo(w, h, w).convert("RGBA")
        rgba.putalpha(_cutout_mask(w, h))
        out[f"rgba-{w}x{h}.png"] = _encoded(rgba, "PNG")
    out["rgba-700x500.webp"] = _encoded(rgba.resize((700, 500)), "WEBP", lossless=True)
    la = _photo(500, 500, 42).convert("LA")
    la.putalpha(_cutout_mask(500, 500))
    out["la-500x500.png"] = _encoded(la, "PNG")
    palette = _photo(400, 300, 43).quantize(255)  # index 255 is the transparent one
    index = np.asarray(palette).copy()
    index[np.asarray(_cutout_mask(400, 300)) < 128] = 255
    transparent = Image.fromarray(index, "P")
    transparent.putpalette(palette.getpalette()[:765] + [0, 255, 0])
    out["p-400x300.png"] = _encoded(transparent, "PNG", transparency=255)
    out["p-400x300.gif"] = _encoded(transparent, "GIF", transparency=255)
    out["rgb-300x1200.png"] = _encoded(_photo(300, 1200, 44), "PNG")
    out["300x20.png"] = _encoded(_photo(300, 20, 45), "PNG")
    out["1000x700.webp"] = _encoded(_photo(1000, 700, 47), "WEBP", quality=85)
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for name, data in generated_photos().items():
        (folder / name).write_bytes(data)
    return sorted(folder.iterdir())


def _data_url(path) -> str:
    return f"data:{mimetypes.guess_type(path.name)[0]};base64,{base64.b64encode(path.read_bytes()).decode()}"


def _tlcore(*args: str) -> dict:
    out = cli(*args)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def _app_predictions(run, files=FILES) -> dict[str, dict[str, float]]:
    import tlcore

    saved = tlcore.load_run(run)
    images = [tlcore.decode_image(f.name, f.read_bytes()) for f in files]
    return {f.name: p.probabilities for f, p in zip(files, tlcore.predict(saved.model, images, saved.classes,
                                                                           saved.preprocess))}


def _page_predictions(index, url: str | None = None, phone: bool = False, photos=(), pixels=None
                      ) -> tuple[dict[str, dict[str, float]], float, float]:
    """The page's predictions for ``FILES`` and ``photos``, its model load time and its slowest prediction on
    ``FILES`` (ms); prints the times. ``pixels``, a dict, receives ``window.tlsPixels`` of each photo for the
    page's preprocessing and EfficientNet-Lite0's (bicubic 256 -> 224)."""
    from playwright.sync_api import sync_playwright

    requests, errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            *FLAGS, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",  # a test-pattern webcam
            *(["--host-resolver-rules=MAP phone.test 127.0.0.1"] if phone else [])])
        context = browser.new_context(offline=url is None, viewport={"width": 412, "height": 900})  # a phone's width
        page = context.new_page()
        page.on("request", lambda r: requests.append(r.url))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url or index.as_uri())
        page.wait_for_function("window.tlsLoadMs !== undefined || /could not/.test(document.body.innerText)",
                               timeout=BUSY_MS)
        assert page.evaluate("window.tlsLoadMs") is not None, page.inner_text("#status")
        out, times, photo_ms = {}, [], {}
        for f in [*FILES, *photos]:
            r = page.evaluate("async u => { const t = performance.now(); const r = await window.tlsClassify(u);"
                              " r.ms = performance.now() - t; r.run = window.tlsRunMs; return r; }", _data_url(f))
            out[f.name] = r["probabilities"]
            assert r["label"] == max(r["probabilities"], key=r["probabilities"].get)
            if f in FILES:
                times.append((r["ms"], r["run"]))
            else:
                photo_ms[f.name] = r["ms"]
        if pixels is not None:
            from tlcore.models.backbones import get_backbone_spec

            lite0 = get_backbone_spec("efficientnet_lite0").preprocess
            other = {"input_size": lite0.input_size, "resize_size": lite0.resize_size,
                     "interpolation": lite0.interpolation}
            for f in photos:
                pixels[f.name] = (page.evaluate("u => window.tlsPixels(u)", _data_url(f)),
                                  page.evaluate("([u, p]) => window.tlsPixels(u, p)", [_data_url(f), other]))
        if photo_ms:
            print("the page on generated photos (ms, decoding and resizing included): "
                  + ", ".join(f"{n} {ms:.0f}" for n, ms in photo_ms.items()))
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


def _rgb(shape_and_b64) -> np.ndarray:
    w, h, b64 = shape_and_b64
    return np.frombuffer(base64.b64decode(b64), np.uint8).reshape(h, w, 3)


def test_f32_page_matches_the_app(run, photos, tmp_path):
    import tlcore
    from tlcore.data.images import decode_image, image_to_tensor, preprocess_pixels
    from tlcore.models.backbones import get_backbone_spec

    info = _tlcore("export", str(run), "--format", "web", "--data", str(DATA), "--out", str(tmp_path / "web"))
    assert info["max_diff"] <= 1e-4
    pixels: dict = {}
    page, load_ms, slowest = _page_predictions(tmp_path / "web" / "index.html", photos=photos, pixels=pixels)
    files = [*FILES, *photos]
    app = _app_predictions(run, files)
    diff = {f: max(abs(page[f][c] - app[f][c]) for c in app[f]) for f in app}
    same = {f: max(page[f], key=page[f].get) == max(app[f], key=app[f].get) for f in app}
    for f in app:
        print(f"{f:24s} max probability difference {diff[f]:.1e}{'' if same[f] else '  A DIFFERENT LABEL'}")
    worst = max(diff.values())
    print(f"f32: the same label on {sum(same.values())} of {len(app)} images ({len(photos)} generated), "
          f"max probability difference {worst:.1e}, load {load_ms:.0f} ms, slowest prediction {slowest:.0f} ms")
    assert all(same.values()), [f for f in same if not same[f]]
    assert worst <= 1e-3, {f: d for f, d in diff.items() if d > 1e-3}
    assert load_ms > 0 and slowest > 0  # printed above; speed is the benchmark's to judge, never a test's

    # The reason: the page's pixels are the app's, decoded (EXIF, alpha over white, the shorter side at most
    # BASE_SIZE) and as the network sees them, for this run's preprocessing and for EfficientNet-Lite0's.
    pres = (tlcore.load_run(run).preprocess, get_backbone_spec("efficientnet_lite0").preprocess)
    for f in photos:
        img = decode_image(f.name, f.read_bytes())
        expected = [np.asarray(img)] + [preprocess_pixels(image_to_tensor(img), pre).permute(1, 2, 0).numpy()
                                        for pre in pres]
        got = [_rgb(pixels[f.name][0]["decoded"]), _rgb(pixels[f.name][0]["input"]), _rgb(pixels[f.name][1]["input"])]
        for what, e, g in zip(("decoded", "input", "EfficientNet-Lite0 input"), expected, got):
            assert e.shape == g.shape, (f.name, what, e.shape, g.shape)
            off = np.abs(e.astype(int) - g.astype(int))
            # Exact here (chromium 150, Pillow 13, torch 2.14); a level on a few pixels is left to another decoder.
            assert off.max() <= 1 and (off > 0).mean() <= 1e-3, (f.name, what, int(off.max()), int((off > 0).sum()))


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


def test_the_app_serves_the_page_to_phones(run, tmp_path, app_url):
    """Published under the app's static folder and opened over plain http from a network name (as a phone on
    the classroom network would): the page classifies, offers photos instead of the camera, and only the
    published folder is served."""
    import urllib.error
    import urllib.request

    import tlcore
    from tlcore.studio.report import open_run_folder

    web = tlcore.export_web(*open_run_folder(run, DATA), tmp_path / "web")
    path = tlcore.publish_web(web, ROOT / "static", run)  # into the running server's folder: served at once
    try:
        base = app_url.replace("127.0.0.1", "phone.test") + "/app/static/"
        with urllib.request.urlopen(f"{app_url}/app/static/{path.replace('index.html', 'model.js')}") as r:
            assert r.headers["Content-Type"].split(";")[0] in ("text/javascript", "application/javascript")
        for other in ("tls-web/", "../app.py", "tls-web/x/index.html"):
            try:
                urllib.request.urlopen(f"{app_url}/app/static/{other}")
                raise AssertionError(f"{other} was served")
            except urllib.error.HTTPError as e:
                assert e.code in (400, 404)
        page, _, _ = _page_predictions(None, base + path, phone=True)
    finally:
        shutil.rmtree(ROOT / "static" / path.split("/")[0] / path.split("/")[1], ignore_errors=True)
    app = _app_predictions(run)
    assert all(max(page[f], key=page[f].get) == max(app[f], key=app[f].get) for f in app)
