"""HEIC/HEIF (the iPhone camera's format, through pillow-heif) and AVIF (Pillow's own) read like JPEG wherever a
photo enters: one upload, a zip, a folder, the class kit; with the same checks and bounds as every other format,
and the error for a format we cannot read names the ones we can (issue 39)."""
from __future__ import annotations

import io
import re
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image, features

import tlcore
from tests.conftest import ROOT
from tlcore.data.images import (
    IMAGE_FORMATS,
    IMAGE_SUFFIXES,
    NOT_AN_IMAGE,
    decode_image,
    image_to_tensor,
    load_data,
    load_zip,
)

try:
    import pillow_heif  # noqa: F401  (tlcore.data.images registers its opener)
    HEIC = True
except ImportError:
    HEIC = False
AVIF = features.check("avif")

FORMATS = [pytest.param("HEIF", ".heic", marks=pytest.mark.skipif(not HEIC, reason="pillow-heif is not installed")),
           pytest.param("AVIF", ".avif", marks=pytest.mark.skipif(not AVIF, reason="this Pillow has no AVIF"))]
TOLERANCE = 4  # mean absolute difference (0-255) a lossy codec may add to these smooth pictures


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _picture(w: int = 64, h: int = 48, alpha: bool = False) -> Image.Image:
    """Left half red, right half blue, a soft vertical gradient; with ``alpha`` the right half is transparent."""
    arr = np.zeros((h, w, 4 if alpha else 3), np.uint8)
    ramp = np.linspace(0, 60, h, dtype=np.float64)[:, None]
    arr[:, : w // 2, 0] = 230 - ramp
    arr[:, w // 2:, 2] = 200 + ramp / 2
    if alpha:
        arr[:, : w // 2, 3] = 255  # the right half stays transparent: it must come out white
    return Image.fromarray(arr, "RGBA" if alpha else "RGB")


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


CASES = {  # name -> (picture, save options): each is saved as PNG and in the format under test
    "plain": (_picture(), {}),
    "exif-rotated": (_picture(), {"exif": _exif(6)}),  # stored landscape; upright it is portrait, red on top
    "alpha": (_picture(alpha=True), {}),
}


def _pair(fmt: str, case: str) -> tuple[bytes, bytes]:
    """(the format's bytes, a PNG's bytes) of the same picture."""
    img, options = CASES[case]
    return _save(img, fmt, quality=90, **options), _save(img, "PNG", **options)


def _mean_diff(a: Image.Image | torch.Tensor, b: Image.Image | torch.Tensor) -> float:
    a, b = (image_to_tensor(x) if isinstance(x, Image.Image) else x for x in (a, b))
    assert a.shape == b.shape
    return (a.float() - b.float()).abs().mean().item()


def _bomb(fmt: str, width: int, height: int) -> bytes:
    """A tiny HEIF/AVIF file whose 'ispe' box (the image's size, read before decoding) claims ``width x height``
    (a 64 x 64 picture: no 'clap' box crops what it claims)."""
    data = _save(_picture(64, 64), fmt)
    for m in re.finditer(b"ispe", data):
        data = data[:m.start() + 8] + struct.pack(">II", width, height) + data[m.start() + 16:]
    return data


def test_the_one_list_reads_heic_and_avif_and_the_uploaders_offer_them():
    assert IMAGE_SUFFIXES == {s for suffixes in IMAGE_FORMATS.values() for s in suffixes}
    assert list(IMAGE_FORMATS)[:6] == ["JPEG", "PNG", "WebP", "BMP", "GIF", "TIFF"]
    offered = {s.strip(".") for s in tlcore.IMAGE_SUFFIXES}  # what the pages pass as the uploaders' type=
    assert ({"heic", "heif"} <= offered) == HEIC and ("avif" in offered) == AVIF
    for page in ("test.py", "backbone.py"):  # each uploader of photos takes its types from the list
        assert "IMAGE_SUFFIXES" in (ROOT / "pages" / page).read_text()
    # the Data page's uploaders take every file: the app's own checks keep the photos and name each file that is
    # not one (a browser's type filter dropped a .txt without a word)
    assert "type=" not in "".join(line for line in (ROOT / "pages" / "data.py").read_text().splitlines()
                                  if "file_uploader" in line)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("fmt, suffix", FORMATS)
def test_a_photo_decodes_like_the_png_of_the_same_pixels(fmt, suffix, case):
    data, png = _pair(fmt, case)
    for max_side in (tlcore.data.images.BASE_SIZE, None):  # None: the CLI's predict
        img, want = decode_image(f"photo{suffix}", data, max_side), decode_image("photo.png", png, max_side)
        assert img.mode == "RGB" and img.size == want.size
        assert _mean_diff(img, want) < TOLERANCE
    if case == "exif-rotated":
        assert img.size == (48, 64) and img.getpixel((24, 5))[0] > 150 > img.getpixel((24, 58))[0]
    if case == "alpha":
        assert min(img.getpixel((56, 24))) > 240  # transparent: white, as for a PNG


@pytest.mark.parametrize("fmt, suffix", FORMATS)
def test_upload_zip_folder_and_class_kit_take_a_class_of_these_photos(fmt, suffix, tmp_path):
    """A class folder of .heic photos was refused whole ("this is not an image file")."""
    files = {f"{case}{suffix}": _pair(fmt, case) for case in CASES}
    files[f"upper{suffix.upper()}"] = files[f"plain{suffix}"]  # .HEIC: read (then skipped as a duplicate)
    want = {name: image_to_tensor(decode_image("x.png", png)) for name, (_, png) in files.items()}
    bomb = _bomb(fmt, 10_000, 10_000)
    other = {f"o{k}.png": _save(_picture().rotate(90 * k), "PNG") for k in range(2)}

    def check(s: tlcore.ImageSet, prefix: str = "") -> None:
        assert s.counts() == {"other": 2, "phone": 3}  # 'upper' has the same bytes as 'plain': a duplicate
        for item in s.items:
            if item.label == "phone":
                assert _mean_diff(item.pixels, want[item.name.removeprefix(prefix)]) < TOLERANCE
        reasons = {r.file.removeprefix(prefix): r.reason for r in s.rejected}
        assert "megapixels" in reasons[f"bomb{suffix}"] and "already in class" in reasons[f"upper{suffix.upper()}"]

    upload = tlcore.ImageSet()
    upload.add([(n, d, "phone") for n, (d, _) in files.items()] + [(f"bomb{suffix}", bomb, "phone")]
               + [(n, d, "other") for n, d in other.items()])
    check(upload)

    entries = {f"phone/{n}": d for n, (d, _) in files.items()} | {f"phone/bomb{suffix}": bomb}
    entries |= {f"other/{n}": d for n, d in other.items()}
    for path, data in entries.items():
        (tmp_path / "data" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / path).write_bytes(data)
    check(load_data(tmp_path / "data"), "phone/")  # a folder (the CLI's evaluate, the samples)

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, data in entries.items():
            zf.writestr(path, data)
    check(load_zip(buf.getvalue()), "phone/")  # the Data page's zip, the class kit, the challenge's hidden set

    from tlcore.studio.lesson import folder_zip  # a bundled sample made into the kit's zip keeps these files

    with zipfile.ZipFile(io.BytesIO(folder_zip(tmp_path / "data"))) as zf:
        assert set(zf.namelist()) == set(entries)


@pytest.mark.parametrize("fmt, suffix", FORMATS)
def test_a_bomb_sized_photo_is_refused_from_its_header_before_decoding(fmt, suffix, monkeypatch):
    good = _save(_picture(64, 64), fmt)
    monkeypatch.setattr(type(Image.open(io.BytesIO(good))), "load", lambda self: pytest.fail("it was decoded"))
    sizes = [(10_000, 10_000)] + [(100_000, 100_000)] * (fmt == "HEIF")  # libavif refuses the second itself
    for width, height in sizes:
        with pytest.raises(tlcore.BadImageError) as e:
            decode_image(f"bomb{suffix}", _bomb(fmt, width, height))
        assert "decompression bomb" in e.value.reason and "80 megapixels" in e.value.reason


def test_an_unreadable_format_names_the_formats_we_read():
    with pytest.raises(tlcore.BadImageError) as e:
        decode_image("photo.jxl", b"a format nobody reads")
    listed = "JPEG, PNG, WebP, BMP, GIF, TIFF" + ", HEIC/HEIF" * HEIC + ", AVIF" * AVIF
    assert e.value.reason == NOT_AN_IMAGE and f"readable formats: {listed})" in e.value.reason


def test_without_pillow_heif_the_app_works_and_heic_is_not_offered():
    code = ("import sys; sys.modules['pillow_heif'] = None\n"  # its import fails, as when it is not installed
            "from tlcore.data.images import IMAGE_SUFFIXES, NOT_AN_IMAGE\n"
            "assert '.heic' not in IMAGE_SUFFIXES and 'HEIC' not in NOT_AN_IMAGE and '.png' in IMAGE_SUFFIXES\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
