"""A fake webcam for chromium: a Y4M clip made from real images, one class after another.

Chromium plays it, looping, in place of a camera when started with
``--use-fake-device-for-media-stream --use-fake-ui-for-media-stream --use-file-for-fake-video-capture=F``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import ROOT

W, H, FPS = 320, 240, 10


def _frame(path: Path) -> bytes:
    """One I420 frame: the image, upright and as large as fits, on its own background colour."""
    img = Image.open(path).convert("RGB")
    img.thumbnail((H, H))
    img = img.resize((H, H))
    canvas = Image.new("RGB", (W, H), img.getpixel((0, 0)))
    canvas.paste(img, ((W - H) // 2, 0))
    y, u, v = (np.asarray(c) for c in canvas.convert("YCbCr").split())
    sub = lambda c: c.reshape(H // 2, 2, W // 2, 2).mean(axis=(1, 3)).round().astype(np.uint8)  # noqa: E731
    return b"FRAME\n" + y.tobytes() + sub(u).tobytes() + sub(v).tobytes()


def make_clip(out: Path, segments: list[tuple[str, int]], seconds_each: float = 3.0) -> list[str]:
    """Write a clip of the bundled digits: for each ``(digit, n)`` segment, ``seconds_each`` seconds
    cycling through ``n`` of that digit's images. Returns the class of each segment, in order."""
    frames = []
    for digit, n in segments:
        files = sorted((ROOT / "assets" / "samples" / "digits" / digit).glob("*.png"))[-n:]  # not the first few
        per = max(1, round(seconds_each * FPS / len(files)))
        frames += [_frame(f) for f in files for _ in range(per)]
    out.write_bytes(f"YUV4MPEG2 W{W} H{H} F{FPS}:1 Ip A1:1 C420jpeg\n".encode() + b"".join(frames))
    return [d for d, _ in segments]
