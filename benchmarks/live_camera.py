"""Live camera benchmark: predictions per second in a real browser with a fake webcam, alone and
while another training run (a fine-tune, in its own process) uses the CPU.

    python -m benchmarks.live_camera [--seconds 20] [--sessions 1,3,6]

Then the same with several sessions at once (each a browser tab of its own Streamlit session on the same
model, as a class trying the teacher's model), predictions per second per session. Prints one JSON line. Needs Debian's chromium (as the browser tests do).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.browser.fake_camera import make_clip
from tests.browser.studio import CHROMIUM, FLAGS, start_app, stop_app
from tests.browser.test_live_camera import component, trained_digits
from tests.conftest import ROOT


def rate(page, seconds: float) -> float:
    cam = component(page)
    start = int(cam.locator("body").get_attribute("data-ack") or 0)
    t0 = time.time()
    page.wait_for_timeout(seconds * 1000)
    return (int(cam.locator("body").get_attribute("data-ack") or 0) - start) / (time.time() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--sessions", default="3,6", help="numbers of sessions live at once, after the single one")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="tls-live-"))
    clip = tmp / "clip.y4m"
    make_clip(clip, [("0", 3), ("1", 3)])
    proc, url, _ = start_app()
    other = None
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS + [
                "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                f"--use-file-for-fake-video-capture={clip}"])
            page = b.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(120_000)
            trained_digits(page, url)
            page.get_by_role("link", name="Test").first.click()
            page.get_by_text("Live camera: predictions as you move").click()
            component(page).get_by_role("button", name="Start live prediction").click()
            component(page).locator("body[data-predicted='0'], body[data-predicted='1']").wait_for()
            alone = rate(page, args.seconds)
            # Another run trains meanwhile: a fine-tune of the whole backbone, in its own process.
            other = subprocess.Popen([sys.executable, "-m", "tlcore", "train", str(ROOT / "assets/samples/faces"),
                                      "--out", str(tmp / "other"), "--mode", "fine-tune", "--epochs", "50"],
                                     cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(8)  # past its start-up, into its training epochs
            busy = rate(page, args.seconds)
            still = other.poll() is None
            other.kill()
            other = None
            component(page).get_by_role("button", name="Stop").click()
            together = {}
            key = page.url.split("p=")[1].split("&")[0]
            for n in (int(x) for x in args.sessions.split(",") if x):
                pages = [b.new_page(viewport={"width": 1200, "height": 900}) for _ in range(n)]
                for pg in pages:
                    pg.set_default_timeout(120_000)
                    pg.goto(f"{url}/test?p={key}")
                    pg.get_by_text("Live camera: predictions as you move").click()
                    component(pg).get_by_role("button", name="Start live prediction").click()
                for pg in pages:
                    component(pg).locator("body[data-predicted='0'], body[data-predicted='1']").wait_for()
                starts = [int(component(pg).locator("body").get_attribute("data-ack") or 0) for pg in pages]
                t0 = time.time()
                pages[0].wait_for_timeout(args.seconds * 1000)
                ends = [int(component(pg).locator("body").get_attribute("data-ack") or 0) for pg in pages]
                per = [(e - s_) / (time.time() - t0) for s_, e in zip(starts, ends)]
                together[n] = {"per_session_min": round(min(per), 2), "per_session_mean": round(sum(per) / n, 2),
                               "total": round(sum(per), 1)}
                for pg in pages:
                    pg.close()
            b.close()
    finally:
        if other is not None:
            other.kill()
        stop_app(proc)
    print(json.dumps({"predictions_per_s_alone": round(alone, 2),
                      "predictions_per_s_while_another_run_trains": round(busy, 2),
                      "other_run_was_still_training": still, "sessions_at_once": together}))


if __name__ == "__main__":
    main()
