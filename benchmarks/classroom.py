"""Classroom load test: ``python -m benchmarks.classroom [--sessions 30] [--browsers 6] [--images 60]``.

Two parts, both against the real engine and worker processes:

* an engine-level simulation of ``--sessions`` students on one server: each has a project with its
  own images (handwritten digits, 3 classes) and presses Start (feature extraction) at about the
  same moment, while a poller per student calls the job's snapshot once a second, as the Train
  page does; it also measures training throughput of a fine-tune watched by three pollers and
  unwatched;
* ``--browsers`` real browser sessions (Playwright + Debian chromium) against one real
  ``streamlit run`` server: all pick a zip of their own images at the same moment; each, once its images
  are in, goes to Train and presses Start and waits for its finished model; then all start a 2-epoch
  fine-tune and wait for that.

It prints the figures (per session, min / median / max: the upload, upload to the finished model, Start to it;
time until every run is done, runs stuck, server exceptions, server peak RSS, throughput watched
vs unwatched) and one JSON object on stdout. ``tests/engine/test_classroom.py`` and the browser
tests run short versions in CI (they check outcomes, never timings).
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import io
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "assets" / "samples" / "digits"


def student_files(student: int, images: int, classes: int = 3) -> list[tuple[str, bytes, str]]:
    """A student's own images: ``images`` digits from ``classes`` classes, a different selection each."""
    per_class = max(1, images // classes)
    out = []
    for c in range(classes):
        files = sorted((DIGITS / str(c)).glob("*.png"))
        start = (student * 7) % max(1, len(files) - per_class + 1)
        for f in files[start:start + per_class]:
            out.append((f"s{student}_{f.name}", f.read_bytes(), f"digit {c}"))
    return out


def zip_of(files: list[tuple[str, bytes, str]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data, label in files:
            zf.writestr(f"{label}/{name}", data)
    return buf.getvalue()


def _peak_rss_mb(pid: int | None = None) -> float:
    status = Path(f"/proc/{pid or 'self'}/status")
    if not status.exists():
        return float("nan")
    kb = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
    return kb / 1024


def _spread(values: list[float]) -> dict:
    if not values:
        return {"min": None, "median": None, "max": None}
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


# ----------------------------------------------------------------------------- engine-level


def abuse(backbone: str) -> tuple[dict, list]:
    """One student who does everything a class must survive, from one laptop: a 200,000 x 40 strip, a zip
    bomb, a 500-epoch run, ten extra projects each asking for runs. Returns what the limits did and the
    projects (their runs are stopped at the end)."""
    import io

    from PIL import Image

    import tlcore

    me = "ip:10.9.9.9"
    out = {"limited": [], "runs_accepted": 0}
    mine = [tlcore.Project.create() for _ in range(11)]
    for p in mine:
        p.images.add(student_files(99, 6))
        p.backbone = backbone
        tlcore.SERVER.projects.hold(p, f"abuser-{p.name}")
    buf = io.BytesIO()
    Image.new("RGB", (200_000, 40), (200, 30, 30)).save(buf, "PNG")
    out["strip_rejected"] = mine[0].images.add([("strip.png", buf.getvalue(), "c0")])
    bomb = io.BytesIO()
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        for k in range(2000):
            z.writestr(f"a/{k}.png", b"\0" * 2**20)
    try:
        incoming = tlcore.load_zip(bomb.getvalue(), room=mine[0].images.room())
        out["bomb"] = f"{len(incoming)} images kept, {len(incoming.rejected)} refused"
    except tlcore.TLError as e:
        out["bomb"] = str(e)
    long = tlcore.TrainConfig(backbone=backbone, mode="scratch", epochs=500, batch_size=1)
    for p in mine:
        for config in (long, dataclasses.replace(long, epochs=200), dataclasses.replace(long, epochs=200),
                       dataclasses.replace(long, epochs=200)):
            try:
                p.start_run(config, owner=me)
                out["runs_accepted"] += 1
            except tlcore.LimitError as e:
                out["limited"].append(str(e).split(" on this server")[0])
    return out, mine


def simulate(sessions: int, images: int, backbone: str = "efficientnet_lite0", timeout: float = 600,
             throughput: bool = True, abuser: bool = False) -> dict:
    """``sessions`` students start feature extraction together; pollers read snapshots once a second. With
    ``abuser``, one more student first does everything the server's limits are for (``abuse``)."""
    import tlcore

    abused, mine = abuse(backbone) if abuser else ({}, [])

    projects = []
    for k in range(sessions):
        p = tlcore.Project.create()
        p.images.add(student_files(k, images))
        p.backbone = backbone
        p.save()
        projects.append(p)
    started: dict[int, float] = {}
    finished_at: dict[int, float] = {}
    errors: list[str] = []
    stop = threading.Event()

    def poll(k: int) -> None:  # one student's Train page
        p = projects[k]
        while not stop.is_set():
            try:
                for r in p.active_runs():
                    r.job.snapshot()
                if p.finished_runs() and k not in finished_at:
                    finished_at[k] = time.time()
            except Exception as e:  # counted as a server exception
                errors.append(f"{type(e).__name__}: {e}")
            time.sleep(1.0)

    t0 = time.time()
    records = []
    for k, p in enumerate(projects):
        started[k] = time.time()
        records.append(p.start_run(tlcore.TrainConfig(backbone=backbone, mode="feature-extraction")))
    pollers = [threading.Thread(target=poll, args=(k,), daemon=True) for k in range(sessions)]
    for t in pollers:
        t.start()
    deadline = t0 + timeout
    while len(finished_at) < sessions and time.time() < deadline:
        time.sleep(0.5)
    all_done = time.time() - t0
    stop.set()
    stuck = sessions - len(finished_at)
    own_data = all(r.result is not None and {i.name.split("_")[0] for i in r.images.items} == {f"s{k}"}
                   and set(r.val_digests) <= {i.digest for i in p.images.items}
                   for k, (r, p) in enumerate(zip(records, projects)))
    report = {
        "sessions": sessions, "images_per_session": images, "backbone": backbone,
        "start_to_model_s": _spread([finished_at[k] - started[k] for k in finished_at]),
        "all_done_s": all_done, "stuck": stuck, "exceptions": len(errors), "own_data_only": own_data,
        "server_peak_rss_mb": _peak_rss_mb(),
        "failed": [r.reason for r in records if r.status not in ("completed",) and r.result is None],
    }
    if abuser:
        for p in mine:
            p.stop_all("by the load test")
        report["abuser"] = {**abused, "strip_rejected": [r.reason for r in abused["strip_rejected"]],
                            "limited": sorted(set(abused["limited"]))}
    if throughput:
        report["throughput"] = watched_vs_unwatched(projects[0], backbone)
    return report


def watched_vs_unwatched(project, backbone: str, watchers: int = 3) -> dict:
    """Images/s of a 2-epoch fine-tune with nobody watching and with ``watchers`` pollers at 1 Hz."""
    import tlcore

    out = {}
    for label, n in (("unwatched", 0), ("watched", watchers)):
        record = project.start_run(tlcore.TrainConfig(backbone=backbone, mode="fine-tune", epochs=2, batch_size=16))
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set() and record.live:
                record.job.snapshot()
                time.sleep(1.0)

        threads = [threading.Thread(target=watch, daemon=True) for _ in range(n)]
        for t in threads:
            t.start()
        record.job.join(600)
        stop.set()
        project.finished_runs()
        res = record.result
        assert res is not None, record.reason
        per_epoch = [b.seconds - a.seconds for a, b in zip(res.history, res.history[1:])] or [res.history[0].seconds]
        out[label] = len(res.train_indices) / min(per_epoch)  # steady-state images/s
    out["ratio"] = out["watched"] / out["unwatched"]
    return out


# ----------------------------------------------------------------------------- real browsers


def _parents() -> dict[int, int]:
    """Each process's parent now, from /proc."""
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    return out


def _below(roots: set[int], parents: dict[int, int]) -> set[int]:
    """``roots`` and every process below them."""
    found, todo = set(roots), list(roots)
    while todo:
        p = todo.pop()
        kids = {c for c, pp in parents.items() if pp == p} - found
        found |= kids
        todo += kids
    return found


def _tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and every process below it (a server, its workers, a timing's child)."""
    total = 0.0
    for p in _below({pid}, _parents()):
        try:
            total += _cpu_seconds(p)
        except (OSError, ValueError, IndexError):
            continue
    return total


def wait_until_warm(url: str, pid: int, timeout: float = 300) -> float:
    """The teacher opens the app before the class arrives: one visit starts the workers, which warm up (torch,
    the runtime's compilation) and time the default backbone. Returns the seconds until the server and everything
    it started use under a tenth of a core over 3 s (a condition, not a fixed wait)."""
    urllib.request.urlopen(url + "/_stcore/health", timeout=30)
    from playwright.sync_api import sync_playwright

    from tests.browser.studio import CHROMIUM

    t0 = time.time()
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = b.new_page()
        page.goto(url + "/teacher")
        page.get_by_role("heading").first.wait_for(timeout=timeout * 1000)
        b.close()
    while time.time() < t0 + timeout:
        c0, w0 = _tree_cpu_seconds(pid), time.time()
        time.sleep(3)
        if (_tree_cpu_seconds(pid) - c0) / (time.time() - w0) < 0.1:
            break
    return time.time() - t0


def chromium_pids() -> set[int]:
    """Every chromium process on this machine now."""
    out = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "comm").read_text().startswith("chrom"):
                out.add(int(entry.name))
        except OSError:
            continue
    return out


def browser_pids(before: set[int]) -> set[int]:
    """Every process of the chromium started since ``before`` (``chromium_pids()`` then): its root (the new chromium
    process whose parent is no chromium) and every process below it; not another browser's, which may start a
    renderer meanwhile."""
    pids, parents = chromium_pids(), _parents()
    return _below({p for p in pids - before if parents.get(p) not in pids}, parents)


def yield_cpu(pids: set[int]) -> None:
    """Put these processes' scheduling groups at the lowest priority, as if they ran on other devices. Under Linux's
    autogroup scheduling each session shares the CPU equally whatever its processes' nice values, and chromium
    makes sessions of its own (the browser, its zygote): each group's nice is set (``/proc/PID/autogroup``). The
    tabs opened later are forked by the zygote, in its group."""
    for pid in pids:
        try:
            Path(f"/proc/{pid}/autogroup").write_text("19")
        except OSError:  # gone, or no autogroup in this kernel: nothing to lower
            continue


def browsers(n: int, images: int, timeout: float = 360, finetune: bool = True, warm: bool = False,
             own_devices: bool = False) -> dict:
    """``n`` real chromium sessions against one real server; see the module docstring. ``warm``: the class arrives
    once the server has warmed up (``wait_until_warm``), as in a lesson; else at once (a server just started).
    ``own_devices``: the browsers take only the CPU the server leaves (``yield_cpu``): in a class they run on the
    students' devices; here six of them shared the server's two cores and took 1.5-1.9 of them.

    Each student acts as soon as their own page shows the next step (Playwright's async API, one task each): a
    loop that looked at the six pages in turn added up to 8 s between a page showing "Added" and its Start
    being pressed. It runs in a thread of its own, so a caller may hold Playwright's sync API meanwhile."""
    from tests.browser.studio import start_app

    proc, url, home = start_app(TLS_TEST_BACKBONES="")  # its output goes to home / "server.log"
    zips = []
    for k in range(n):
        path = home / f"student{k}.zip"
        path.write_bytes(zip_of(student_files(k, images)))
        zips.append(path)
    report: dict = {"browsers": n, "images_per_session": images, "own_devices": own_devices}
    try:
        if warm:
            report["warm_up_s"] = wait_until_warm(url, proc.pid)
        with ThreadPoolExecutor(1) as pool:  # its failure raised here
            pool.submit(asyncio.run, _class(url, home, zips, timeout, finetune, own_devices, report)).result()
    finally:
        report["server_peak_rss_mb"] = _peak_rss_mb(proc.pid)
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:  # a busy machine: the figures are in, the server must not linger
            proc.kill()
            proc.wait()
    text = (home / "server.log").read_text(errors="replace")
    report["server_tracebacks"] = text.count("Traceback (most recent call last)")
    return report


async def _class(url: str, home: Path, zips: list[Path], timeout: float, finetune: bool, own_devices: bool,
                 report: dict) -> None:
    """The browser part of ``browsers``: one chromium, a page per student, the timings into ``report``."""
    from playwright.async_api import async_playwright

    from tests.browser.studio import CHROMIUM, FLAGS

    async with async_playwright() as pw:
        before = chromium_pids()
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        pages = []
        for _ in zips:
            pg = await b.new_page(viewport={"width": 1300, "height": 900})
            pg.set_default_timeout(timeout * 1000)
            await pg.goto(f"{url}/data")
            await pg.get_by_role("heading", name="2 · Your data").wait_for()
            await pg.get_by_role("tab", name="Upload a zip").click()
            pages.append(pg)
        if own_devices:
            yield_cpu(browser_pids(before))
        report["fe"] = await _upload_and_train(pages, zips, timeout)
        report["fe"]["server_side_s"] = _server_side(home, report["fe"]["t0"])
        if finetune:
            for pg in pages:
                await pg.get_by_role("link", name="Freeze").first.click()
                await pg.get_by_role("heading", name="3 · Freeze or fine-tune").wait_for()
                slider = pg.get_by_role("slider").first
                await slider.focus()
                for _ in range(4):
                    await slider.press("ArrowRight")  # the last stages learn: a fine-tune
                await pg.wait_for_timeout(500)
                await pg.get_by_role("link", name="Train").first.click()
                await pg.get_by_role("button", name="Start training").wait_for()
                await pg.get_by_text("Advanced settings").click()
                epochs = pg.get_by_role("spinbutton", name="Epochs")
                await epochs.fill("2")
                await epochs.press("Enter")
                await pg.wait_for_timeout(500)
            report["finetune"] = await _press_start_and_wait(pages, timeout, "Finished 2 epochs")
        await b.close()


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def watch_cost(tabs: int = 3, window: float = 20.0) -> dict:
    """Server CPU while a fine-tune trains with nobody watching and with ``tabs`` Train pages open, and the
    run's throughput in both cases; then the server's CPU once the run has ended with the tabs still open."""
    from playwright.sync_api import sync_playwright

    from tests.browser.studio import CHROMIUM, FLAGS, start_app

    proc, url, home = start_app(TLS_TEST_BACKBONES="")
    out: dict = {"tabs": tabs, "window_s": window}
    try:
        with sync_playwright() as pw:
            b = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            pg = b.new_page(viewport={"width": 1300, "height": 900})
            pg.set_default_timeout(120_000)
            pg.goto(f"{url}/data")
            pg.get_by_role("button", name="Load digits").click()
            pg.get_by_text("Added 200 images").wait_for()
            pg.get_by_role("link", name="Freeze").first.click()
            slider = pg.get_by_role("slider").first
            slider.focus()
            for _ in range(4):
                slider.press("ArrowRight")
            pg.wait_for_timeout(500)
            pg.get_by_role("link", name="Train").first.click()
            pg.get_by_text("Advanced settings").click()
            epochs = pg.get_by_role("spinbutton", name="Epochs")
            epochs.fill("40")
            epochs.press("Enter")
            pg.wait_for_timeout(500)
            pg.get_by_role("button", name="Start training").click()
            pg.get_by_text(re.compile(r"Epoch \d+, batch")).first.wait_for()
            project_url = pg.url
            pg.get_by_role("link", name="Data").first.click()  # nobody watches the run now
            pg.get_by_role("heading", name="2 · Your data").wait_for()
            def measure() -> float:
                c0, t0 = _cpu_seconds(proc.pid), time.time()
                time.sleep(window)
                return (_cpu_seconds(proc.pid) - c0) / (time.time() - t0)

            out["server_cpu_unwatched"] = measure()
            viewers = [b.new_page(viewport={"width": 1300, "height": 900}) for _ in range(tabs)]
            for v in viewers:
                v.set_default_timeout(120_000)  # as the first tab's: a busy server opens a fresh tab slowly
                v.goto(project_url.replace("/data", "/train"))
                v.get_by_text(re.compile(r"Epoch \d+, batch")).first.wait_for()
            out["server_cpu_watched"] = measure()
            out["cpu_per_tab"] = (out["server_cpu_watched"] - out["server_cpu_unwatched"]) / tabs
            print(f"watch: {out}", file=sys.stderr, flush=True)
            viewers[0].get_by_role("button", name="Stop").click()
            viewers[0].get_by_text("Stopped by the user").first.wait_for()
            out["server_cpu_after_end"] = measure()
            b.close()
    finally:
        proc.terminate()
        proc.wait(15)
    return out


async def _upload_and_train(pages, zips: list[Path], timeout: float, done_text: str = "the best epoch") -> dict:
    """Every student picks their zip at the same moment; each, as soon as the page says their images are in,
    goes to Train and presses Start. Times per student: the upload (the zip picked -> "Added N images"),
    upload -> model shown, and Start -> model shown."""
    t0 = time.time()
    added, started, shown = {}, {}, {}

    async def student(k: int, pg, path: Path) -> None:
        await pg.locator("[data-testid='stFileUploader'] input[type=file]").first.set_input_files(str(path))
        await pg.get_by_text(re.compile(r"Added \d+ images")).first.wait_for()
        added[k] = time.time()
        await pg.get_by_role("link", name="Train").first.click()
        await pg.get_by_role("button", name="Start training").click()
        started[k] = time.time()
        await pg.get_by_text(done_text).first.wait_for()
        shown[k] = time.time()

    await _each(pages, [student(k, pg, path) for k, (pg, path) in enumerate(zip(pages, zips))], timeout, shown)
    return {"upload_s": _spread([added[k] - t0 for k in added]),
            "upload_to_model_s": _spread([shown[k] - added[k] for k in shown]),
            "start_to_model_s": _spread([shown[k] - started[k] for k in shown]),
            "all_done_s": time.time() - t0, "stuck": len(pages) - len(shown),
            "t0": t0, "per_student_s": {k: [round(d.get(k, t0) - t0, 2) for d in (added, started, shown)]
                                        for k in range(len(pages))}}  # (images in, Start pressed, model shown)


async def _each(pages, students, timeout: float, done: dict) -> None:
    """Run every student's steps at once, for at most ``timeout``; a screenshot of what each stuck one sees."""
    tasks = [asyncio.ensure_future(s) for s in students]
    await asyncio.wait(tasks, timeout=timeout)
    for task in tasks:
        if not task.done():
            task.cancel()
        elif task.exception() is not None:
            print(f"a student's steps failed: {task.exception()!r}", file=sys.stderr)
    for k, pg in enumerate(pages):
        if k not in done:  # what a stuck student sees
            await pg.screenshot(path=str(ROOT / "test-output" / f"classroom-stuck-{k}.png"), full_page=True)


def _server_side(home: Path, t0: float) -> dict:
    """When the server had each student's photos on disk and each feature-extraction model saved, in seconds from
    the zips being picked, read from the files' times: what the browsers show later adds their own delay (six of
    them share the server's two cores here, where a class's run on the students' own devices)."""
    saved, models = [], []
    for folder in (home / "projects").iterdir():
        if images := [p.stat().st_mtime for p in (folder / "images").glob("*.png")]:
            saved.append(max(images) - t0)
        models += [p.stat().st_mtime - t0 for p in folder.glob("runs/*/run.json")
                   if "feature extraction" in json.loads(p.read_text()).get("label", "")]
    return {"photos_saved": _spread(saved), "model_saved": _spread(models)}


async def _press_start_and_wait(pages, timeout: float, done_text: str) -> dict:
    """Every student presses Start; the time until each page shows its finished model."""
    t0 = time.time()
    took: dict[int, float] = {}

    async def student(k: int, pg) -> None:
        await pg.get_by_role("button", name="Start training").click()
        await pg.get_by_text(done_text).first.wait_for()
        took[k] = time.time() - t0

    await _each(pages, [student(k, pg) for k, pg in enumerate(pages)], timeout, took)
    return {"start_to_model_s": _spread(list(took.values())), "all_done_s": time.time() - t0,
            "stuck": len(pages) - len(took)}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.classroom", description=__doc__.split("\n")[0])
    ap.add_argument("--sessions", type=int, default=30, help="simulated students (0: skip)")
    ap.add_argument("--browsers", type=int, default=6, help="real browser students (0: skip)")
    ap.add_argument("--images", type=int, default=60, help="images per student")
    ap.add_argument("--watch", type=int, default=3, help="tabs watching one run, for the cost of watching (0: skip)")
    ap.add_argument("--abuser", action="store_true", help="one more student who tries everything the limits stop")
    ap.add_argument("--cold", action="store_true", help="the browser students arrive as the server starts (by default "
                                                        "once it has warmed up, as when a teacher opens it first)")
    ap.add_argument("--own-devices", action="store_true", help="the browsers get the lowest CPU priority, as if each "
                                                               "ran on a student's own device (by default they share "
                                                               "the server's cores equally)")
    args = ap.parse_args()
    os.environ.setdefault("TLS_HOME", __import__("tempfile").mkdtemp(prefix="tls-classroom-"))
    out: dict = {}
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    if args.browsers:
        r = out["browsers"] = browsers(args.browsers, args.images, warm=not args.cold, own_devices=args.own_devices)
        if "warm_up_s" in r:
            log(f"the server warmed up (workers, the default backbone's timing) in {r['warm_up_s']:.1f} s before the "
                "class arrived")
        for part in ("fe", "finetune"):
            for what, name in (("upload_s", "zip picked -> images in"), ("upload_to_model_s", "images in -> model shown"),
                               ("start_to_model_s", "Start -> model shown")):
                if what in r.get(part, {}):
                    s = r[part][what]
                    log(f"{args.browsers} browsers, {part}: {name} min/median/max "
                        f"{s['min']:.1f}/{s['median']:.1f}/{s['max']:.1f} s")
            if part in r:
                log(f"{args.browsers} browsers, {part}: all done {r[part]['all_done_s']:.1f} s; stuck {r[part]['stuck']}")
            if "server_side_s" in r.get(part, {}):
                side = r[part]["server_side_s"]
                log(f"  on the server's disk, from the zips picked: photos saved min/median/max "
                    f"{side['photos_saved']['min']:.1f}/{side['photos_saved']['median']:.1f}/"
                    f"{side['photos_saved']['max']:.1f} s; models saved {side['model_saved']['min']:.1f}/"
                    f"{side['model_saved']['median']:.1f}/{side['model_saved']['max']:.1f} s")
        log(f"server peak RSS {r['server_peak_rss_mb']:.0f} MB; tracebacks {r['server_tracebacks']}")
    if args.sessions:
        r = out["simulated"] = simulate(args.sessions, args.images, abuser=args.abuser)
        if args.abuser:
            log(f"abuser: {json.dumps(r['abuser'])}")
        s = r["start_to_model_s"]
        log(f"{args.sessions} simulated sessions: Start -> model min/median/max {s['min']:.1f}/{s['median']:.1f}/"
            f"{s['max']:.1f} s; all done {r['all_done_s']:.1f} s; stuck {r['stuck']}; exceptions {r['exceptions']}; "
            f"server peak RSS {r['server_peak_rss_mb']:.0f} MB")
        t = r["throughput"]
        log(f"fine-tune throughput: unwatched {t['unwatched']:.1f} img/s, watched by 3 {t['watched']:.1f} img/s "
            f"(ratio {t['ratio']:.2f})")
    if args.watch:
        r = out["watch"] = watch_cost(args.watch)
        log(f"server CPU while a fine-tune trains: nobody watching {r['server_cpu_unwatched']:.1%} of a core, "
            f"{args.watch} tabs watching {r['server_cpu_watched']:.1%} ({r['cpu_per_tab']:.1%} per tab); "
            f"after the run ended, tabs still open: {r['server_cpu_after_end']:.1%}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
