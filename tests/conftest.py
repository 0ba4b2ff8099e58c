"""Shared fixtures: an isolated home for projects, and tiny generated images."""
from __future__ import annotations

import atexit
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Before tlcore or the app is imported anywhere: projects go to a throwaway folder and the tiny
# test backbone is offered by the app.
# Each of pytest-xdist's processes has a home of its own (not its controller's); what a test starts shares its test's.
if os.environ.get("TLS_TEST_HOME_OF") != (worker := os.environ.get("PYTEST_XDIST_WORKER", "")):
    os.environ.update(TLS_HOME=tempfile.mkdtemp(prefix="tls-test-home-"), TLS_TEST_HOME_OF=worker)
    atexit.register(shutil.rmtree, os.environ["TLS_HOME"], ignore_errors=True)
os.environ["TLS_TEST_BACKBONES"] = "1"
# Tests start "endless" runs (10,000 epochs) to stop them; test_limits sets the limits it checks.
os.environ.setdefault("TLS_MAX_EPOCHS", "1000000")
# Exports of pretrained bodies go to a fresh cache; fixed f32 precision keeps results deterministic.
if "TLCORE_CACHE_DIR" not in os.environ:  # what the servers and workers a test starts share; removed at exit
    os.environ["TLCORE_CACHE_DIR"] = tempfile.mkdtemp(prefix="tls-test-cache-")
    atexit.register(shutil.rmtree, os.environ["TLCORE_CACHE_DIR"], ignore_errors=True)
os.environ["TLCORE_INFERENCE_PRECISION"] = "f32"
import tlcore  # noqa: E402,F401  first, with the variables above: this process's torch then loads as the app's does

ROOT = Path(__file__).resolve().parent.parent
COLORS = [(220, 40, 40), (40, 40, 220), (40, 200, 40)]


def eventually(done: Callable[[], object], timeout: float = 60, what: str = "", every: float = 0.05) -> object:
    """Wait until ``done()`` is true and return its value; fail, saying ``what`` was awaited, after ``timeout``
    seconds. The one way tests wait: for a condition, never for a fixed time (they must pass on a busy machine)."""
    deadline = time.monotonic() + timeout
    while not (value := done()):
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g} s for {what or 'a condition'}")
        time.sleep(every)
    return value


def cli(*args: str, process: bool = False) -> subprocess.CompletedProcess:
    """``python -m tlcore ARGS``: in this process (a new one spends about 5 s importing torch and the backbones),
    or with ``process`` as a user runs it, in a process of its own."""
    if process:
        return subprocess.run([sys.executable, "-m", "tlcore", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
    from tlcore.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse: --help (0) and usage errors (2)
            code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
    return subprocess.CompletedProcess(["tlcore", *args], code, out.getvalue(), err.getvalue())


def png_bytes(color: tuple[int, int, int], size: int = 40, seed: int = 0, fmt: str = "PNG") -> bytes:
    """A noisy image around ``color``: classes are separable by colour, images are all different."""
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(color)[None, None, :] + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def class_files(n_per_class: int = 8, classes: int = 3) -> list[tuple[str, bytes, str]]:
    return [(f"c{c}_{i}.png", png_bytes(COLORS[c], seed=100 * c + i), f"class{c}")
            for c in range(classes) for i in range(n_per_class)]


@pytest.fixture
def setenv(monkeypatch):
    """``setenv(NAME, value)`` (None unsets) for one test, as whoever starts the server would set it: tlcore reads
    its settings again now, and again after the test, when the variable is as it was."""
    from tlcore.core.settings import reload

    def set_(name: str, value: str | None) -> None:
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
        reload()

    yield set_
    monkeypatch.undo()
    reload()


@pytest.fixture
def tiny_set():
    from tlcore import ImageSet

    s = ImageSet()
    assert s.add(class_files()) == []
    return s


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    for name, data, label in class_files():
        (tmp_path / "data" / label).mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / label / name).write_bytes(data)
    return tmp_path / "data"
