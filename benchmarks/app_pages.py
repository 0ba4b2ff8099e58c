"""App-level figures for the benchmark (``python -m tlcore.bench`` runs this in its own process, so
that the engine never imports streamlit): ``python -m benchmarks.app_pages [--images N]``.

Prints one JSON object: seconds from ``streamlit run`` to the first page served, and the median
rerun time of the Data and Train pages (AppTest) with N generated images loaded.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def startup_seconds() -> float:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless=true",
                             "--server.address=127.0.0.1", f"--server.port={port}"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).status == 200:
                    return time.perf_counter() - t
            except OSError:
                if time.perf_counter() - t > 120:
                    raise
                time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(10)


def rerun_seconds(n: int) -> dict[str, float]:
    """Median rerun time of the Data and Train pages with ``n`` images loaded."""
    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.testing.v1 import AppTest

    if "TLS_HOME" not in os.environ:  # before tlcore reads its settings
        os.environ["TLS_HOME"] = tempfile.mkdtemp(prefix="tls-bench-")
    from tlcore.bench import generated_files

    # As on a running server, the legacy pages/ mode is off (see tests/app/conftest.py). This is a
    # process of its own, so the patch needs no undoing.
    original = PagesManager.__init__

    def init(self, *a, **k):
        original(self, *a, **k)
        PagesManager.uses_pages_directory = False

    PagesManager.__init__ = init
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()
    at.session_state["tls"].project.images.add(generated_files(n, size=(160, 120)))
    out = {}
    for page in ("data", "train"):
        at.switch_page(f"pages/{page}.py").run()
        times = []
        for _ in range(5):
            t = time.perf_counter()
            at.run()
            times.append(time.perf_counter() - t)
        assert not at.exception, at.exception
        out[page] = sorted(times)[len(times) // 2]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.app_pages")
    ap.add_argument("--images", type=int, default=500)
    n = ap.parse_args().images
    print(json.dumps({"startup_seconds": startup_seconds(), "rerun_seconds": rerun_seconds(n)}))


if __name__ == "__main__":
    main()
