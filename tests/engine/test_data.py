"""Data: every bad input is named with its reason, everything good is kept, nothing escapes a zip."""
from __future__ import annotations

import io
import os
import stat
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tlcore
from tests.conftest import COLORS, class_files, png_bytes
from tlcore.data.images import MAX_FILE_BYTES, decode_image, load_zip, stratified_split


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _rgb(w: int = 40, h: int = 30) -> Image.Image:
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (255, 0, 0)  # left half red: lets tests see orientation
    return Image.fromarray(arr)


def _bomb_png() -> bytes:
    """A tiny PNG whose header claims 100,000 x 100,000 pixels."""
    data = _save(Image.new("L", (8, 8)), "PNG")
    ihdr = data.find(b"IHDR")
    body = struct.pack(">II", 100_000, 100_000) + data[ihdr + 12:ihdr + 17]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + body) & 0xFFFFFFFF)
    return data[:ihdr + 4] + body + crc + data[ihdr + 21:]


def _exif_rotated_jpeg() -> bytes:
    img = _rgb(60, 30)  # stored landscape, EXIF says: rotate 90 degrees to show it upright
    exif = Image.Exif()
    exif[0x0112] = 6
    return _save(img, "JPEG", exif=exif.tobytes())


BAD = {  # name -> (bytes, words the reason must contain)
    "empty.jpg": (b"", "empty"),
    "notes.jpg": (b"this is a text file, not a photo", "not an image"),
    "truncated.jpg": (_save(_rgb(200, 200), "JPEG")[:300], "damaged or truncated"),
    "one-pixel.png": (_save(Image.new("RGB", (1, 1)), "PNG"), "only 1x1"),
    "bomb.png": (_bomb_png(), "limit"),
    "huge-file.png": (b"\x89PNG" + b"\0" * (MAX_FILE_BYTES + 1), "limit is 50 MB"),
}

GOOD = {  # name -> bytes; each must decode to an upright RGB image
    "alpha.png": _save(Image.new("RGBA", (40, 30), (255, 0, 0, 0)), "PNG"),
    "palette.png": _save(_rgb().convert("P"), "PNG"),
    "animated.gif": _save(_rgb(), "GIF", save_all=True, append_images=[Image.new("RGB", (40, 30), "blue")]),
    "cmyk.jpg": _save(_rgb().convert("CMYK"), "JPEG"),
    "sixteen-bit.png": _save(Image.fromarray(np.full((30, 40), 40000, np.uint16)), "PNG"),
    "grey.png": _save(_rgb().convert("L"), "PNG"),
    "photo.webp": _save(_rgb(), "WEBP"),
    "with spaces and ünïcödé 猫.png": _save(_rgb(), "PNG"),
    "rotated.jpg": _exif_rotated_jpeg(),
}


@pytest.mark.parametrize("name", BAD)
def test_bad_files_are_rejected_by_name_with_a_reason(name):
    data, words = BAD[name]
    with pytest.raises(tlcore.BadImageError) as e:
        decode_image(name, data)
    assert e.value.file == name and words in e.value.reason
    assert str(e.value).startswith(name)


@pytest.mark.parametrize("name", GOOD)
def test_odd_but_valid_files_decode_to_rgb(name):
    img = decode_image(name, GOOD[name])
    assert img.mode == "RGB" and min(img.size) >= 8


def test_alpha_goes_over_white_and_sixteen_bit_keeps_its_level():
    assert decode_image("a.png", GOOD["alpha.png"]).getpixel((5, 5)) == (255, 255, 255)
    level = decode_image("s.png", GOOD["sixteen-bit.png"]).getpixel((5, 5))[0]
    assert abs(level - 40000 / 65535 * 255) <= 1


def test_exif_rotation_is_applied():
    img = decode_image("rotated.jpg", GOOD["rotated.jpg"])
    assert img.size == (30, 60)  # portrait, as the camera meant it
    top, bottom = img.getpixel((15, 5)), img.getpixel((15, 55))
    assert top[0] > 200 and bottom[0] < 60  # the red half (left when stored) is on top once rotated


def test_mixed_upload_keeps_good_files_and_reports_bad_ones():
    s = tlcore.ImageSet()
    files = [(n, d, "odd") for n, d in GOOD.items()] + [(n, d[0], "odd") for n, d in BAD.items()]
    rejected = s.add(files)
    assert len(s) == len(GOOD)
    assert {r.file for r in rejected} == set(BAD)
    assert all(r.reason for r in rejected)
    assert s.stack(tlcore.get_backbone_spec("tiny-test").preprocess).shape == (len(GOOD), 3, 32, 32)


def test_large_images_are_shrunk_once():
    big = _save(Image.new("RGB", (4000, 3000), "white"), "JPEG")
    s = tlcore.ImageSet()
    s.add([("big.jpg", big, "a")])
    assert min(s.items[0].pixels.shape[1:]) == tlcore.data.images.BASE_SIZE


def test_duplicates_in_a_class_are_skipped():
    s = tlcore.ImageSet()
    data = png_bytes(COLORS[0])
    assert s.add([("a.png", data, "x")]) == []
    rejected = s.add([("copy.png", data, "x")])
    assert len(s) == 1 and "already in class" in rejected[0].reason


def _zip(entries: dict[str, bytes], symlink: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def test_zip_layout_and_unsafe_entries(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = {f"dataset/{label}/{name}": data for name, data, label in class_files(3, 2)}
    good["dataset/class0/nested/deeper.png"] = png_bytes(COLORS[0], seed=999)
    data = _zip({**good,
                 "../evil.png": png_bytes(COLORS[0], seed=1),
                 "/abs/evil.png": png_bytes(COLORS[0], seed=2),
                 "__MACOSX/dataset/class0/._c0_0.png": b"junk",
                 "dataset/.DS_Store": b"junk",
                 "dataset/class1/.hidden.png": b"junk",
                 "dataset/readme.txt": b"loose file"}, symlink="dataset/class0/link.png")
    before = set(os.listdir(tmp_path))
    s = load_zip(data)
    assert set(os.listdir(tmp_path)) == before  # nothing was written anywhere
    assert not (tmp_path.parent / "evil.png").exists()
    assert s.classes == ["class0", "class1"] and s.counts() == {"class0": 4, "class1": 3}
    reasons = {r.file: r.reason for r in s.rejected}
    assert "unsafe path" in reasons["../evil.png"] and "unsafe path" in reasons["/abs/evil.png"]
    assert "symbolic link" in reasons["dataset/class0/link.png"]
    assert "not an image file" in reasons["dataset/readme.txt"]
    assert not any("MACOSX" in f or "DS_Store" in f or "hidden" in f for f in reasons)


def test_a_stray_file_beside_the_wrapper_folder_and_notes_in_a_zip_are_listed_not_mixed_in():
    """Issue 21: a zip with one stray file next to its wrapper folder became one mixed class named after the
    wrapper, and a notes.txt was dropped without being listed among the refused files."""
    good = {f"photos/{label}/{name}": data for name, data, label in class_files(3, 2)}
    s = load_zip(_zip({**good, "stray.png": png_bytes(COLORS[0], seed=77), "notes.txt": b"my notes",
                       "photos/class0/notes.txt": b"more notes", "photos/docs/notes.txt": b"a folder of notes"}))
    assert s.classes == ["class0", "class1"] and s.counts() == {"class0": 3, "class1": 3}  # no 'photos', no 'docs'
    reasons = {r.file: r.reason for r in s.rejected}
    assert "not inside a class folder" in reasons["stray.png"]
    for notes in ("notes.txt", "photos/class0/notes.txt", "photos/docs/notes.txt"):
        assert "not an image file" in reasons[notes], notes


def test_zip_bomb_and_non_zip_are_refused():
    bomb = _zip({"a/huge.png": b"\0" * (20 * 2**20), "a/ok.png": png_bytes(COLORS[0]), "b/ok.png": png_bytes(COLORS[1])})
    s = load_zip(bomb)
    assert len(s) == 2 and "zip bomb" in s.rejected[0].reason
    with pytest.raises(tlcore.TLError, match="not a readable zip"):
        load_zip(b"PK\x03\x04 broken")
    with pytest.raises(tlcore.TLError, match="No class folders"):
        load_zip(_zip({"loose.png": png_bytes(COLORS[0])}))


def test_folder_loading(class_folder):
    (class_folder / "stray.png").write_bytes(png_bytes(COLORS[0], seed=5))
    (class_folder / "class0" / "broken.jpg").write_bytes(b"nope")
    s = tlcore.load_data(class_folder)
    assert s.counts() == {"class0": 8, "class1": 8, "class2": 8}
    assert {r.file for r in s.rejected} == {"stray.png", str(Path("class0") / "broken.jpg")}
    with pytest.raises(tlcore.TLError, match="does not exist"):
        tlcore.load_data(class_folder / "missing")


def test_class_rules():
    s = tlcore.ImageSet()
    s.add_class("cat")
    for bad in ("", "   ", "CAT", "a/b", ".."):
        with pytest.raises(tlcore.TLError):
            s.add_class(bad)
    with pytest.raises(tlcore.TLError, match="at least two classes"):
        tlcore.check_trainable(s)
    s.add([("a.png", png_bytes(COLORS[0]), "cat")])
    with pytest.raises(tlcore.TLError, match="only 'cat' has images"):
        tlcore.check_trainable(s)
    s.add([("b.png", png_bytes(COLORS[1]), "dog")])
    s.add_class("empty")
    warnings = tlcore.check_trainable(s)
    assert any("no images" in w for w in warnings) and any("single image" in w for w in warnings)
    s.rename_class("dog", "puppy")
    assert s.classes == ["cat", "puppy", "empty"] and s.counts()["puppy"] == 1
    s.remove_class("empty")
    assert s.classes == ["cat", "puppy"]


def test_split_is_stratified_seeded_and_copes_with_single_images():
    import torch

    labels = torch.tensor([0] * 10 + [1] * 5 + [2])
    train, val = stratified_split(labels, 0.2, seed=3)
    assert (train, val) == stratified_split(labels, 0.2, seed=3)
    assert sorted(train + val) == list(range(16)) and not set(train) & set(val)
    assert [int((labels[val] == c).sum()) for c in range(3)] == [2, 1, 0]
    assert 15 in train  # the single image of class 2 trains
    assert stratified_split(labels, 0.2, seed=4) != (train, val)
    with pytest.raises(tlcore.TLError):
        stratified_split(labels, 1.5, 0)


def test_a_zip_merged_into_classes_of_other_case_joins_them():
    s = tlcore.ImageSet(classes=["Cat"])
    s.add([("a.png", png_bytes(COLORS[0], seed=1), "Cat")])
    other = load_zip(_zip({"cat/b.png": png_bytes(COLORS[0], seed=2), "cat/a.png": png_bytes(COLORS[0], seed=1),
                           "Dog/c.png": png_bytes(COLORS[1], seed=3)}))
    rejected = s.merge(other)
    assert s.classes == ["Cat", "Dog"]
    assert s.counts() == {"Cat": 2, "Dog": 1}  # no KeyError: every item's label is a class
    assert sorted(s.labels().tolist()) == [0, 0, 1]
    assert [r.file for r in rejected] == ["cat/a.png"] and "already in class 'Cat'" in rejected[0].reason


def test_zip_limits_are_declared_once_and_shared():
    from tlcore.data.images import IMAGE_ZIP_LIMITS, ZipLimits, zip_member_problem

    info = zipfile.ZipInfo("a/b.png")
    info.file_size, info.compress_size = 60 * 2**20, 59 * 2**20
    assert "limit is 50 MB" in zip_member_problem(info, IMAGE_ZIP_LIMITS)
    assert zip_member_problem(info, ZipLimits(2**30, 2**30)) is None
    info.compress_size = 2**10
    assert "zip bomb" in zip_member_problem(info, ZipLimits(2**30, 2**30))


def test_one_image_in_two_classes_is_refused_by_name_and_images_can_be_moved_or_removed():
    s = tlcore.ImageSet()
    cat = png_bytes(COLORS[0], seed=1)
    s.add([("cat.png", cat, "cat"), ("dog.png", png_bytes(COLORS[1], seed=2), "dog")])
    [r] = s.add([("cat-again.png", cat, "dog")])
    assert r.file == "cat-again.png" and "already in class 'cat'" in r.reason and "cannot teach two" in r.reason
    assert s.counts() == {"cat": 1, "dog": 1}
    dog = next(i.digest for i in s.items if i.label == "dog")
    assert s.move([dog], "cat") == 1 and s.counts() == {"cat": 2, "dog": 0}
    assert s.discard([dog]) == 1 and s.counts() == {"cat": 1, "dog": 0}
    with pytest.raises(tlcore.TLError, match="no class"):
        s.move([dog], "bird")


def test_preprocessed_stacks_stay_within_their_byte_budget(monkeypatch):
    from tlcore.core.storage import ByteLRU
    from tlcore.data.images import _drop_stack

    budget = ByteLRU(2 * 8 * 3 * 32 * 32, keep_one=True, on_evict=_drop_stack)  # two stacks of 8 tiny images
    monkeypatch.setattr(tlcore.data.images, "STACKS", budget)
    pre = tlcore.get_backbone_spec("tiny-test").preprocess
    sets = []
    for k in range(3):
        s = tlcore.ImageSet()
        s.add([(f"{k}-{i}.png", png_bytes(COLORS[i % 3], seed=100 * k + i), f"c{i % 3}") for i in range(8)])
        sets.append(s)
        first = s.stack(pre)
    assert budget.bytes <= budget.max_bytes
    assert pre.key not in sets[0]._stacks and pre.key in sets[2]._stacks  # least recently used went first
    assert torch.equal(sets[0].stack(pre), sets[0].stack(pre)) and first.shape[0] == 8  # recomputed on demand


def test_an_extremely_thin_image_costs_a_bounded_amount_of_memory(monkeypatch):
    """A 23 KB PNG of 200,000 x 40 pixels passed the checks and was scaled up whole (3.3 GB) to give its
    shorter side the model's size; only its centre is ever seen by the model."""
    import tlcore.data.images as data_mod

    buf = io.BytesIO()
    Image.new("RGB", (200_000, 40), (200, 30, 30)).save(buf, "PNG")
    img = decode_image("strip.png", buf.getvalue())
    assert img.size == (160, 40)  # the centre, at most 4:1
    seen = []
    real = torch.nn.functional.interpolate
    monkeypatch.setattr(torch.nn.functional, "interpolate",
                        lambda x, *a, **k: seen.append(tuple(x.shape[-3:])) or real(x, *a, **k))
    pre = tlcore.get_backbone_spec(tlcore.DEFAULT_BACKBONE).preprocess
    out = data_mod.preprocess_pixels(torch.zeros(3, 40, 100_000, dtype=torch.uint8), pre)
    assert out.shape == (3, pre.input_size, pre.input_size) and seen == [(3, 40, 80)]
    tall = data_mod.preprocess_pixels(torch.zeros(3, 5000, 300, dtype=torch.uint8), pre)
    assert tall.shape == out.shape and seen[-1] == (3, 600, 300)


def test_a_zip_reads_one_member_at_a_time_and_limits_every_member_and_the_count():
    from tlcore.data.images import ZipLimits, open_zip

    # 1 MiB of zeros per member passed the ratio check (it looked only above 1 MiB) and all were held at once.
    many = _zip({f"a/{k}.png": b"\0" * 2**20 for k in range(20)} | {"a/ok.png": png_bytes(COLORS[0]),
                                                                    "b/ok.png": png_bytes(COLORS[1])})
    s = load_zip(many)
    assert len(s) == 2 and sum("zip bomb" in r.reason for r in s.rejected) == 20
    with pytest.raises(tlcore.TLError, match="more than 10 files; the limit is 10"):
        open_zip(_zip({f"a/{k}.png": b"x" for k in range(11)}), ZipLimits(2**20, 2**20, members=10), "the zip")


MEMORY_CASES = r"""
import io, resource, sys, zipfile
from PIL import Image
import tlcore
from tlcore.data.images import load_zip, preprocess_pixels
from tests.conftest import COLORS, png_bytes
pre = tlcore.get_backbone_spec(tlcore.DEFAULT_BACKBONE).preprocess
buf = io.BytesIO()
Image.new("RGB", (200_000, 40), (200, 30, 30)).save(buf, "PNG")
strip = buf.getvalue()
bomb = io.BytesIO()
with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
    for k in range(2000):
        z.writestr(f"a/{k}.png", b"\0" * 2**20)
    z.writestr("a/strip.png", strip)
    z.writestr("a/ok.png", png_bytes(COLORS[0]))
    z.writestr("b/ok.png", png_bytes(COLORS[1]))
bomb = bomb.getvalue()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
s = load_zip(bomb)
assert len(s) == 3, (len(s), s.rejected[:3])
s.stack(pre)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
"""


def test_a_zip_bomb_and_a_thin_strip_cost_little_memory_in_a_fresh_process():
    """2,000 members of 1 MiB of zeros (a 2.2 MB zip) cost 2.7 GB; a 200,000 x 40 strip 3.3 GB."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", MEMORY_CASES], cwd=root, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) < 300  # MB above the process's peak before the upload


STREAMING = r"""
import dataclasses, resource
import tlcore
from tlcore.models.backbones import Preprocess, get_backbone_spec, register_backbone
from tlcore.data.images import ImageSet, make_item
from tlcore.engine.features import embed
from tests.conftest import COLORS, png_bytes
# the tiny body behind a real backbone's input size: what a stack would cost is real, the forward pass is cheap
spec = register_backbone(dataclasses.replace(get_backbone_spec("tiny-test"), name="tiny-224",
                                             preprocess=Preprocess(224, 256, (0.5,) * 3, (0.25,) * 3, "bilinear")))
s = ImageSet([make_item(f"{k}.png", png_bytes(COLORS[k % 3], size=24, seed=k), f"c{k % 3}") for k in range(3000)])
def run(imageset):
    gen = embed(imageset, "tiny-224")
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value
# a feature-extraction model: its evaluation is frozen work too (features through the runtime, then the head)
model = tlcore.run_to_end(s.subset(range(376)), tlcore.TrainConfig(backbone="tiny-224", mode="feature-extraction",
                                                                   epochs=3)).result.model
assert model.body.shared_pretrained
# 376 images first (the same batch shapes as 3000: 32s and 24, 64s and 56): one-off memory is in the peak before.
run(s.subset(range(376)))
tlcore.evaluate(model, s.subset(range(376)), s.classes, spec.preprocess)
tlcore.FEATURES.clear()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
feats = run(s)
ev = tlcore.evaluate(model, s, s.classes, spec.preprocess)
assert feats.shape == (3000, 32) and len(ev.labels) == 3000
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) // 1024)
"""


def test_frozen_work_streams_so_memory_grows_by_features_not_by_a_preprocessed_stack():
    """Features of 30,000 images took 12.3 GB: the whole 224 px stack (150 KB an image) was kept. Here the
    2,624 images beyond the first 376 would add 390 MB as a stack; streamed, what stays is 32 floats each."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", STREAMING], cwd=root, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout.split()[-1]) < 60  # MB above the peak after the first 376


def test_a_class_name_taken_in_other_letters_names_the_class_that_has_it():
    """Issue 38: "There is already a class called 'Mammal'" when the existing one was 'mammal'."""
    from tlcore.data.images import validate_class_name

    with pytest.raises(tlcore.TLError, match=r"called 'mammal' \(capital and small letters count as the same\)"):
        validate_class_name("Mammal", ["insect", "mammal"])
    with pytest.raises(tlcore.TLError, match=r"called 'mammal'\. Choose"):
        validate_class_name(" mammal ", ["mammal"])
    assert validate_class_name("Tool", ["mammal"]) == "Tool"


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_preprocessing_is_torchvisions_resize_and_centre_crop_bit_for_bit(interpolation):
    """``preprocess_pixels`` calls torch's ``interpolate`` itself (torchvision's dispatch cost 40 % of its time):
    the pixels are torchvision's, for landscape, portrait, square, small and odd sizes, one image or a batch."""
    from torchvision.transforms.v2 import functional as TF

    from tlcore.data.images import image_to_tensor, preprocess_pixels
    from tlcore.models.backbones import Preprocess

    mode = TF.InterpolationMode.BICUBIC if interpolation == "bicubic" else TF.InterpolationMode.BILINEAR
    rng = np.random.default_rng(0)
    for h, w, resize, crop in [(240, 320, 256, 224), (320, 240, 256, 224), (300, 300, 232, 224), (17, 29, 256, 224),
                               (481, 333, 288, 288), (100, 199, 73, 64), (224, 224, 224, 224), (1, 2, 64, 64)]:
        pre = Preprocess(input_size=crop, resize_size=resize, mean=(0.5,) * 3, std=(0.5,) * 3,
                         interpolation=interpolation)
        for shape in [(3, h, w), (2, 3, h, w)]:
            x = torch.from_numpy(rng.integers(0, 256, shape, dtype=np.uint8))
            expected = TF.center_crop(TF.resize(x, [resize], interpolation=mode, antialias=True), [crop, crop])
            assert torch.equal(preprocess_pixels(x, pre), expected), (shape, resize, crop)
        photo = image_to_tensor(Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)))  # channels-last
        expected = TF.center_crop(TF.resize(photo.contiguous(), [resize], interpolation=mode, antialias=True),
                                  [crop, crop])
        assert torch.equal(preprocess_pixels(photo, pre), expected), (h, w, resize, crop)
