"""Images in, checked and decoded once: folders, zips and uploads become an ``ImageSet``.

Every file is checked on its own. A bad one becomes a ``Rejected(file, reason)`` and is skipped;
the good ones are kept. Zips are read in memory and never extracted, so no entry can write
outside anything. Decoded images are stored as uint8 tensors with their shorter side capped at
``BASE_SIZE`` and reused across epochs, runs and backbones.
"""
from __future__ import annotations

import functools
import hashlib
import io
import os
import stat
import struct
import threading
import warnings
import weakref
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..core.errors import BadImageError, TLError
from ..core.storage import ByteLRU, budgeted
from ..models.backbones import Preprocess

try:  # HEIC/HEIF, the iPhone camera's format, through pillow-heif; without it HEIC is simply not readable
    import pillow_heif

    pillow_heif.register_heif_opener()
except ImportError:
    pass

BASE_SIZE = 320  # decoded images keep at most this shorter side (enough for a 300 px crop)
MIN_SIDE = 8  # smaller images carry no usable picture
MAX_ASPECT = 4  # a longer side beyond this many shorter sides is cropped (centred): the model sees the centre
MAX_PIXELS = 80_000_000  # larger images are refused before decoding (decompression bombs)
MAX_FILE_BYTES = 50 * 2**20  # per image file
MAX_ZIP_TOTAL_BYTES = 2 * 2**30  # sum of uncompressed sizes a zip may declare
MAX_ZIP_RATIO = 200  # a member compressing better than this is treated as a zip bomb
MAX_ZIP_MEMBERS = 20_000  # files in one zip (its directory alone costs memory per member)
#: The photo formats we read (the name users see -> its file suffixes), each only where the installed Pillow (with
#: pillow-heif for HEIC) can decode it: the one list behind the uploaders' file types, the class kit's files and
#: the message for an unreadable file. Every format goes through the same checks and bounds (``decode_image``).
IMAGE_FORMATS: dict[str, tuple[str, ...]] = {
    name: suffixes for name, suffixes in {
        "JPEG": (".jpg", ".jpeg"), "PNG": (".png",), "WebP": (".webp",), "BMP": (".bmp",), "GIF": (".gif",),
        "TIFF": (".tif", ".tiff"), "HEIC/HEIF": (".heic", ".heif"), "AVIF": (".avif",),
    }.items() if set(suffixes) <= Image.registered_extensions().keys()}  # a plugin registers what it decodes
IMAGE_SUFFIXES = {s for suffixes in IMAGE_FORMATS.values() for s in suffixes}
NOT_AN_IMAGE = f"this is not an image file, or not a format we can read (readable formats: {', '.join(IMAGE_FORMATS)})"


def _is_image_name(name: str) -> bool:
    return PurePosixPath(name.replace("\\", "/")).suffix.lower() in IMAGE_SUFFIXES

Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # PIL's own guard, in case a format hides its size


@dataclass(frozen=True)
class ZipLimits:
    """What a zip a user uploads may hold before a member is read (zip bombs, huge files)."""

    member_bytes: int  # largest uncompressed member
    total_bytes: int  # sum of the uncompressed sizes the zip declares
    ratio: float = MAX_ZIP_RATIO  # members compressing better than this are refused
    members: int = MAX_ZIP_MEMBERS


IMAGE_ZIP_LIMITS = ZipLimits(MAX_FILE_BYTES, MAX_ZIP_TOTAL_BYTES)


def zip_member_problem(info: zipfile.ZipInfo, limits: ZipLimits) -> str | None:
    """Why a zip member must not be read (unsafe path, link, too large, a bomb), or None if it may.

    Python's zipfile never returns more than a member's declared size, so checking the
    declared sizes here bounds the memory that reading it takes.
    """
    path = PurePosixPath(info.filename.replace("\\", "/"))
    parts = tuple(p for p in path.parts if p not in ("", "."))
    if path.is_absolute() or ".." in parts or (parts and ":" in parts[0]):
        return "unsafe path in zip (absolute or '..'); skipped"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link in zip; skipped"
    if info.file_size > limits.member_bytes:
        return (f"the file is {info.file_size / 2**20:.0f} MB; the limit is "
                f"{limits.member_bytes // 2**20} MB")
    if info.file_size > limits.ratio * max(info.compress_size, 1):
        return "compressed suspiciously well (possible zip bomb); skipped"
    return None


def open_zip(source: str | Path | bytes, limits: ZipLimits, name: str) -> zipfile.ZipFile:
    """A zip opened for reading, once its end record declares no more members than ``limits`` allow
    (checked before Python builds its directory, which costs memory per member)."""
    try:
        if isinstance(source, bytes):
            tail = source[-(2**16 + 22):]
        else:
            with open(source, "rb") as f:
                f.seek(max(0, os.path.getsize(source) - (2**16 + 22)))
                tail = f.read()
        at = tail.rfind(b"PK\x05\x06")
        declared = struct.unpack("<H", tail[at + 10:at + 12])[0] if at >= 0 and len(tail) >= at + 12 else 0
        if declared > limits.members:  # 0xFFFF: a zip64 count, beyond any limit here
            raise TLError(f"{name} holds more than {limits.members:,} files; the limit is {limits.members:,}. "
                          "Split it into smaller zips.")
        return zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (zipfile.BadZipFile, OSError) as e:
        raise TLError(f"{name} is not a readable zip file ({e}).") from None


def check_zip_total(infos: list[zipfile.ZipInfo], limits: ZipLimits, name: str) -> None:
    """Raise ``TLError`` when a zip declares more members or uncompressed bytes than ``limits`` allow."""
    if len(infos) > limits.members:
        raise TLError(f"{name} holds {len(infos):,} files; the limit is {limits.members:,}. Split it into smaller zips.")
    total = sum(i.file_size for i in infos)
    if total > limits.total_bytes:
        raise TLError(f"{name} would unpack to {total / 2**30:.1f} GB; the limit is "
                      f"{limits.total_bytes / 2**30:.1f} GB. Split it into smaller zips.")


@dataclass(frozen=True)
class Rejected:
    """A file that was not used, and why (shown to the user)."""

    file: str
    reason: str


@dataclass(frozen=True)
class ImageItem:
    """One decoded image: RGB uint8 ``[3, H, W]`` with ``min(H, W) <= BASE_SIZE``."""

    name: str
    label: str
    digest: str  # SHA-1 of the file's bytes: identity for caches and duplicates
    pixels: torch.Tensor = field(repr=False, compare=False)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode to 8-bit RGB: alpha over white, 16-bit scaled down, CMYK/palette converted."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / hi * 255.0, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def too_large(name: str, size: int) -> BadImageError:
    """The error for a file above the per-image size limit."""
    return BadImageError(name, f"the file is {size / 2**20:.0f} MB; the limit is {MAX_FILE_BYTES // 2**20} MB")


def decode_image(name: str, data: bytes, max_side: int | None = BASE_SIZE) -> Image.Image:
    """Decode image bytes to an upright RGB PIL image, or raise ``BadImageError`` saying why."""
    if not data:
        raise BadImageError(name, "the file is empty (0 bytes)")
    if len(data) > MAX_FILE_BYTES:
        raise too_large(name, len(data))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size  # from the header, not decoded (HEIC: libheif decodes no more than it declares)
            # AVIF's is its container's; an AV1 stream larger than it is bounded only by libavif (16384 x 16384:
            # a crafted 3 kB file took 0.55 GB while decoding), not by MAX_PIXELS.
            if w * h > MAX_PIXELS:
                raise BadImageError(name, f"the image is {w}x{h} pixels; the limit is {MAX_PIXELS // 1_000_000} megapixels")
            if min(w, h) < MIN_SIDE:
                raise BadImageError(name, f"the image is only {w}x{h} pixels; at least {MIN_SIDE}x{MIN_SIDE} is needed")
            # Decoded whole, never with libjpeg's DCT scaling (``draft``: 2-3x faster on a 12 MP photo, but its
            # pixels differ from a full decode by up to 27 levels, and no browser can repeat it): the exported
            # web app decodes with the browser's own libjpeg-turbo and repeats every step below exactly.
            img.load()
            img = ImageOps.exif_transpose(img)  # phones store rotation in EXIF; show it upright
            img = _to_rgb(img)
    except BadImageError:
        raise
    except UnidentifiedImageError:
        raise BadImageError(name, NOT_AN_IMAGE) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadImageError(name, f"the image claims to be far too large (possible decompression bomb); "
                                  f"the limit is {MAX_PIXELS // 1_000_000} megapixels") from None
    except (OSError, SyntaxError, ValueError, RuntimeError) as e:  # RuntimeError: libheif's own refusals
        raise BadImageError(name, f"the image is damaged or truncated ({e})") from None
    img = _crop_aspect(img, MAX_ASPECT)
    if max_side and min(img.size) > max_side:  # Pillow's box reduce by a whole factor, then its bicubic filter
        scale = max_side / min(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.BICUBIC, reducing_gap=3.0)
    return img


def _crop_aspect(img: Image.Image, ratio: float) -> Image.Image:
    """The centre of ``img`` with its longer side at most ``ratio`` shorter sides. A 200,000 x 40 strip
    would otherwise be scaled up whole (3 GB) to give its shorter side the model's size."""
    w, h = img.size
    long = max(1, int(ratio * min(w, h)))
    if max(w, h) <= long:
        return img
    left, top = ((w - long) // 2, 0) if w > h else (0, (h - long) // 2)
    return img.crop((left, top, left + min(w, long), top + min(h, long)))


def image_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> uint8 ``[3, H, W]``, channels-last in memory (as PIL keeps it): torch's resize reads that
    twice as fast as planes (``preprocess_pixels``)."""
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


def tensor_to_image(pixels: torch.Tensor) -> Image.Image:
    """uint8 ``[3, H, W]`` -> RGB PIL image (the inverse of ``image_to_tensor``)."""
    return Image.fromarray(pixels.permute(1, 2, 0).numpy())


def make_item(name: str, data: bytes, label: str) -> ImageItem:
    img = decode_image(name, data)
    return ImageItem(name=name, label=label, digest=hashlib.sha1(data).hexdigest(), pixels=image_to_tensor(img))


def thumbnail(item: ImageItem, size: int = 96) -> Image.Image:
    """A small PIL copy of a decoded image, for galleries."""
    img = tensor_to_image(item.pixels)
    img.thumbnail((size, size))
    return img


def preprocess_pixels(pixels: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    """uint8 ``[..., 3, H, W]`` -> uint8 ``[..., 3, S, S]``: resize the shorter side, centre crop, as torchvision's
    ``resize`` and ``center_crop`` do, bit for bit (uint8 in and out, antialiased), calling torch's ``interpolate``
    itself: torchvision's dispatch cost 160 microseconds an image, 40 % of the whole (2026-12-08). Channels-last
    pixels (``image_to_tensor``'s) resize in half the time of planes (120 against 250 microseconds for 320 x 240)
    and give channels-last pixels; the result is a view."""
    h, w = pixels.shape[-2:]
    if max(h, w) > 2 * min(h, w):  # only the centre square is kept: never scale up the rest of a strip
        long = 2 * min(h, w)
        pixels = (pixels[..., (h - long) // 2:(h - long) // 2 + long, :] if h > w else
                  pixels[..., (w - long) // 2:(w - long) // 2 + long])
        h, w = pixels.shape[-2:]
    short, crop = pre.resize_size, pre.input_size
    if short < crop:
        raise ValueError(f"{pre}: the crop is larger than the resized image")
    size = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)  # torchvision's rounding
    out = pixels
    if size != (h, w):
        flat = pixels.reshape(-1, *pixels.shape[-3:])
        if len(flat) == 1 and flat.is_contiguous(memory_format=torch.channels_last):
            # as torchvision does: else torch allocates planes for the result of one channels-last image
            # (pytorch issue 68430), and resizes it at the planes' speed
            flat = flat.as_strided(flat.shape, (flat.numel(), *flat.stride()[1:]))
        out = torch.nn.functional.interpolate(flat, size=size, mode=pre.interpolation, align_corners=False,
                                              antialias=True).reshape(*pixels.shape[:-2], *size)
    top, left = round((size[0] - crop) / 2.0), round((size[1] - crop) / 2.0)
    return out[..., top:top + crop, left:left + crop]


def preprocessed_stack(pixels: list[torch.Tensor], pre: Preprocess) -> torch.Tensor:
    """uint8 ``[N, 3, S, S]``, channels-last: each of ``pixels`` preprocessed. numpy copies each image in: a torch
    copy this size runs on two threads, and while a runtime's inference runs beside it
    (``features._preprocessed_batches``), every thread more it wakes slows that inference (300 images: the
    batches joined by numpy kept the forward pass 4 % faster than ``torch.stack``, 2026-12-08)."""
    size = pre.input_size
    out = torch.empty((len(pixels), 3, size, size), dtype=torch.uint8, memory_format=torch.channels_last)
    rows = out.permute(0, 2, 3, 1).numpy()
    for k, p in enumerate(pixels):
        rows[k] = preprocess_pixels(p, pre).permute(1, 2, 0).numpy()
    return out


def _locked(method: Callable) -> Callable:
    """An ``ImageSet`` edit, done under the set's edit lock (two sessions may edit one project's set)."""
    @functools.wraps(method)
    def locked(self: ImageSet, *args, **kwargs):
        with self._edit:
            return method(self, *args, **kwargs)
    return locked


class ImageSet:
    """Labelled decoded images plus the files that were rejected.

    ``stack(pre)`` gives all images preprocessed for one backbone as one uint8 tensor, computed
    once per preprocessing and kept (that is what makes later epochs and runs cheap).
    """

    def __init__(self, items: Iterable[ImageItem] = (), rejected: Iterable[Rejected] = (),
                 classes: Iterable[str] = ()) -> None:
        self.items: list[ImageItem] = list(items)
        self.rejected: list[Rejected] = list(rejected)
        self._classes: list[str] = list(dict.fromkeys(list(classes) + [i.label for i in self.items]))
        self._stacks: dict[str, torch.Tensor] = {}
        self._lock = threading.Lock()
        self._edit = threading.RLock()  # edits from two tabs of one project never interleave
        #: At most this many images (a project's limit, ``Limits.images_per_project``); None: no limit.
        self.capacity: int | None = None

    def __getstate__(self) -> dict:
        """Pickled (to a training worker) without its lock and preprocessed stacks."""
        return {"items": self.items, "rejected": self.rejected, "classes": self._classes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["items"], state["rejected"], state["classes"])

    @property
    def classes(self) -> list[str]:
        """Class names in a stable order (creation order), including classes with no images yet."""
        return list(self._classes)

    def filled_classes(self) -> int:
        """How many classes hold at least one image."""
        return len({i.label for i in self.items})

    def counts(self) -> dict[str, int]:
        out = {c: 0 for c in self._classes}
        for i in self.items:
            out[i.label] += 1
        return out

    def labels(self) -> torch.Tensor:
        index = {c: k for k, c in enumerate(self._classes)}
        return torch.tensor([index[i.label] for i in self.items], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.items)

    @_locked
    def snapshot(self) -> ImageSet:
        """A copy that later edits of this set do not change (it shares the preprocessed stacks so far)."""
        copy = ImageSet(self.items, self.rejected, self._classes)
        copy._stacks = dict(self._stacks)
        return copy

    def split_sizes(self, val_fraction: float, seed: int) -> tuple[int, int]:
        """(training, validation) image counts of the split a run with these settings would use."""
        train, val = stratified_split(trainable_subset(self).labels(), val_fraction, seed)
        return len(train), len(val)

    def subset(self, indices: Iterable[int]) -> ImageSet:
        """A new set with the given items and the same classes (stacks are recomputed lazily)."""
        return ImageSet([self.items[i] for i in indices], (), self._classes)

    def stack(self, pre: Preprocess) -> torch.Tensor:
        """uint8 ``[N, 3, S, S]`` (channels-last) of every item preprocessed with ``pre`` (cached per preprocessing,
        within the server's byte budget for such stacks: ``STACKS``)."""
        with self._lock:
            cached = self._stacks.get(pre.key)
            if cached is not None and cached.shape[0] == len(self.items):
                STACKS.put((id(self), pre.key), weakref.ref(self), cached.nbytes)
                return cached
            out = preprocessed_stack([item.pixels for item in self.items], pre)
            self._stacks[pre.key] = out
        STACKS.put((id(self), pre.key), weakref.ref(self), out.nbytes)
        return out

    def preprocessed(self, pre: Preprocess, indices: list[int]) -> torch.Tensor:
        """uint8 ``[len(indices), 3, S, S]``: those items preprocessed with ``pre``, from the kept stack when
        there is one, else computed now and not kept. Frozen work streams through this in batches, so what
        stays of a large set is its features (kilobytes an image), never a whole preprocessed stack."""
        with self._lock:
            cached = self._stacks.get(pre.key)
        if cached is not None and cached.shape[0] == len(self.items):
            return torch.from_numpy(cached.permute(0, 2, 3, 1).numpy()[indices]).permute(0, 3, 1, 2)  # numpy's copy
        return preprocessed_stack([self.items[k].pixels for k in indices], pre)

    # --------------------------------------------------------------------- editing (the Data page)

    def room(self) -> int | None:
        """How many more images this set takes (None: no limit)."""
        return None if self.capacity is None else max(0, self.capacity - len(self.items))

    def _full(self) -> str:
        from ..core.settings import settings

        return (f"not added: {settings().limits.message('images_per_project', 'The number of images in one project')}"
                " Remove images you do not need, or start another project.")

    @_locked
    def add_class(self, name: str) -> None:
        name = validate_class_name(name, self._classes)
        self._classes.append(name)

    @_locked
    def rename_class(self, old: str, new: str) -> None:
        new = validate_class_name(new, [c for c in self._classes if c != old])
        self._classes[self._classes.index(old)] = new
        self.items = [ImageItem(i.name, new, i.digest, i.pixels) if i.label == old else i for i in self.items]

    @_locked
    def remove_class(self, name: str) -> None:
        self._classes.remove(name)
        self.items = [i for i in self.items if i.label != name]
        self._stacks.clear()

    @_locked
    def add(self, files: Iterable[tuple[str, bytes, str]]) -> list[Rejected]:
        """Add ``(file name, bytes, label)`` uploads; returns what was rejected (also recorded).

        A file identical to one already in the same class is skipped as a duplicate.
        """
        owner = {i.digest: i.label for i in self.items}
        rejected = []
        for name, data, label in files:
            if label not in self._classes:
                self.add_class(label)
            if self.capacity is not None and len(self.items) >= self.capacity:
                rejected.append(Rejected(name, self._full()))  # refused before it is decoded
                continue
            try:
                item = make_item(name, data, label)
            except BadImageError as e:
                rejected.append(Rejected(name, e.reason))
                continue
            if item.digest in owner:
                rejected.append(Rejected(name, _duplicate_reason(owner[item.digest], label)))
                continue
            owner[item.digest] = label
            self.items.append(item)
        self.rejected.extend(rejected)
        self._stacks.clear()
        return rejected

    @_locked
    def merge(self, other: ImageSet) -> list[Rejected]:
        """Add another set's classes and images (duplicates within a class skipped) and its rejections."""
        existing = {k.casefold(): k for k in self._classes}
        for c in other.classes:  # 'cat' from a zip joins an existing class 'Cat'
            existing.setdefault(c.casefold(), c)
            if existing[c.casefold()] not in self._classes:
                self._classes.append(c)
        incoming = [ImageItem(i.name, existing[i.label.casefold()], i.digest, i.pixels) for i in other.items]
        owner = {i.digest: i.label for i in self.items}
        new, rejected = [], list(other.rejected)
        for i in incoming:
            if i.digest in owner:
                rejected.append(Rejected(i.name, _duplicate_reason(owner[i.digest], i.label)))
            elif self.capacity is not None and len(self.items) + len(new) >= self.capacity:
                rejected.append(Rejected(i.name, self._full()))
            else:
                owner[i.digest] = i.label
                new.append(i)
        self.items.extend(new)
        self.rejected.extend(rejected)
        self._stacks.clear()
        return rejected

    @_locked
    def remove(self, index: int) -> None:
        del self.items[index]
        self._stacks.clear()

    @_locked
    def discard(self, digests: Iterable[str]) -> int:
        """Remove the images with these digests; returns how many went."""
        gone = set(digests)
        before = len(self.items)
        self.items = [i for i in self.items if i.digest not in gone]
        self._stacks.clear()
        return before - len(self.items)

    @_locked
    def restore(self, items: Iterable[ImageItem]) -> int:
        """Put removed images back (Undo), their classes too if those went meanwhile; returns how many came back."""
        have = {i.digest for i in self.items}
        back = [i for i in items if i.digest not in have]
        for label in dict.fromkeys(i.label for i in back):
            if label not in self._classes:
                self._classes.append(label)
        self.items.extend(back)
        self._stacks.clear()
        return len(back)

    @_locked
    def move(self, digests: Iterable[str], label: str) -> int:
        """Put the images with these digests into class ``label``; returns how many moved."""
        if label not in self._classes:
            raise TLError(f"There is no class called '{label}'.")
        chosen = set(digests)
        moved = sum(1 for i in self.items if i.digest in chosen and i.label != label)
        self.items = [ImageItem(i.name, label, i.digest, i.pixels) if i.digest in chosen else i for i in self.items]
        return moved


def _duplicate_reason(existing: str, label: str) -> str:
    if existing == label:
        return f"the same image is already in class '{label}' (skipped)"
    return (f"the same image is already in class '{existing}': one picture cannot teach two classes, so it was "
            f"not added to '{label}'")


def _drop_stack(slot: tuple[int, str], owner: weakref.ref) -> None:
    """``STACKS`` let go of a set's preprocessed stack: the set recomputes it if it needs it again."""
    if (set_ := owner()) is not None:
        set_._stacks.pop(slot[1], None)


# Preprocessed stacks every image set keeps: (set id, preprocessing key) -> the set, a quarter of the budget.
STACKS: ByteLRU[tuple[int, str], weakref.ref] = budgeted("stacks", 1 / 4, keep_one=True, on_evict=_drop_stack)


def validate_class_name(name: str, existing: Iterable[str]) -> str:
    """A class name stripped of spaces; blank, path-like and duplicate names are errors."""
    clean = " ".join(str(name).split())
    if not clean:
        raise TLError("A class name cannot be blank.")
    if "/" in clean or "\\" in clean or clean in (".", ".."):
        raise TLError(f"'{clean}' cannot be a class name: it must not contain '/' or '\\'.")
    if same := next((e for e in existing if e.casefold() == clean.casefold()), None):
        raise TLError(f"There is already a class called '{same}'"
                      f"{' (capital and small letters count as the same)' if same != clean else ''}. "
                      "Choose another name.")
    return clean


def _ignored(parts: tuple[str, ...]) -> bool:
    """macOS resource forks, hidden files and folders (.DS_Store, .git, Thumbs.db) are not data."""
    return any((p.startswith(".") and p != "..") or p == "__MACOSX" for p in parts) or parts[-1] in ("Thumbs.db", "desktop.ini")


Entry = tuple[str, tuple[str, ...], Callable[[], bytes] | BadImageError]


def _files_to_set(entries: Iterator[Entry], room: int | None = None) -> ImageSet:
    """Entries are (display name, path parts relative to the dataset root, a reader of the file's bytes
    or the error that refused it). Files are read and decoded one at a time: memory holds one file's
    bytes at once, never the whole upload's."""
    entries = [e for e in entries if not _ignored(e[1])]
    # A zip of a folder that holds the class folders: look through the single top folder. Loose files beside
    # it (a stray notes.txt or photo) do not count: they are refused below, and never make the wrapper a class.
    nested = [e[1] for e in entries if not isinstance(e[2], BadImageError) and len(e[1]) > 1]
    while nested and len({p[0] for p in nested}) == 1 and any(len(p) > 2 for p in nested):
        top = nested[0][0]
        entries = [(n, p[1:] if len(p) > 1 and p[0] == top and not isinstance(d, BadImageError) else p, d)
                   for n, p, d in entries]
        nested = [p[1:] for p in nested if len(p) > 2]
    imageset = ImageSet()
    imageset.capacity = room
    uploads = []
    for name, parts, data in entries:
        if isinstance(data, BadImageError):
            imageset.rejected.append(Rejected(name, data.reason))
        elif len(parts) < 2:
            imageset.rejected.append(Rejected(name, "not inside a class folder (put each image in a folder "
                                                    "named after its class)" if _is_image_name(name) else NOT_AN_IMAGE))
        else:
            uploads.append((name, data, parts[0]))
    for label in sorted({u[2] for u in uploads}):
        imageset.add_class(label)

    def read() -> Iterator[tuple[str, bytes, str]]:
        for name, reader, label in sorted(uploads, key=lambda u: (u[2], u[0])):
            try:
                yield name, reader(), label
            except BadImageError as e:
                imageset.rejected.append(Rejected(name, e.reason))
    imageset.add(read())
    imageset.capacity = None  # its owner's limit applies when it is merged
    for label, n in imageset.counts().items():
        if not n:  # a folder of notes or broken files is no class (each of its files is listed as refused)
            imageset.remove_class(label)
    if not imageset.classes:
        refused = (f" {len(imageset.rejected):,} file(s) were refused, for example {imageset.rejected[0].file}: "
                   f"{imageset.rejected[0].reason}." if imageset.rejected else "")
        raise TLError("No class folders with images were found. The data must hold one folder per class, "
                      "each with that class's images." + refused)
    return imageset


def load_folder(root: str | Path) -> ImageSet:
    """A folder with one sub-folder per class (images may sit in nested folders below it)."""
    root = Path(root)
    if not root.is_dir():
        raise TLError(f"{root} is not a folder. Give a folder with one sub-folder per class, or a .zip of one.")

    def entries() -> Iterator[Entry]:
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root)
            if path.is_symlink():
                yield str(rel), rel.parts, BadImageError(str(rel), "symbolic links are not followed")
            elif path.is_file():
                size = path.stat().st_size
                if size > MAX_FILE_BYTES:
                    yield str(rel), rel.parts, too_large(str(rel), size)
                else:
                    yield str(rel), rel.parts, path.read_bytes

    return _files_to_set(entries())


def sklearn_digits(per_class: int = 100) -> ImageSet:
    """scikit-learn's handwritten digits 0-9 (8x8 pixels, upscaled to 64x64 PNG; CC BY 4.0, UCI), the first
    ``per_class`` of each: the sample large enough for a data-efficiency study to reach the photo counts where
    learning from scratch starts to catch up (the bundled folder holds 40 of 0-4). Installed with scikit-learn:
    no download."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    files, seen = [], dict.fromkeys(range(10), 0)
    for img, label in zip(digits.images, digits.target.tolist()):
        if seen[label] < per_class:
            seen[label] += 1
            buf = io.BytesIO()
            Image.fromarray((img * 16).clip(0, 255).astype(np.uint8)).resize((64, 64), Image.NEAREST).save(buf, "PNG")
            files.append((f"digit_{label}_{seen[label]:03d}.png", buf.getvalue(), str(label)))
    s = ImageSet()
    s.add(files)
    return s


def load_zip(source: str | Path | bytes, room: int | None = None) -> ImageSet:
    """A zip holding one folder per class. Nothing is extracted to disk; unsafe entries are refused. With
    ``room`` (what a project still takes, ``ImageSet.room()``), images beyond it are refused undecoded."""
    name = "the zip file" if isinstance(source, bytes) else Path(source).name
    with open_zip(source, IMAGE_ZIP_LIMITS, name) as zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        check_zip_total(infos, IMAGE_ZIP_LIMITS, name)

        def reader(info: zipfile.ZipInfo) -> Callable[[], bytes]:
            def read() -> bytes:
                try:
                    return zf.read(info)
                except (zipfile.BadZipFile, OSError, RuntimeError) as e:
                    raise BadImageError(info.filename, f"cannot be read from the zip ({e})") from None
            return read

        def entries() -> Iterator[Entry]:
            for info in infos:
                fname = info.filename
                parts = tuple(p for p in PurePosixPath(fname.replace("\\", "/")).parts if p not in ("", "."))
                if problem := zip_member_problem(info, IMAGE_ZIP_LIMITS):
                    yield fname, parts or (fname,), BadImageError(fname, problem)
                else:
                    yield fname, parts, reader(info)

        return _files_to_set(entries(), room)


def load_data(path: str | Path) -> ImageSet:
    """A class-per-folder directory or a zip of one."""
    path = Path(path)
    if path.is_file() and zipfile.is_zipfile(path):
        return load_zip(path)
    if not path.exists():
        raise TLError(f"{path} does not exist.")
    return load_folder(path)


def stratified_split(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, val): each class split by ``val_fraction``, with a fixed seed.

    A class with at least two images keeps at least one in each part; a class with one image
    trains only. Raises ``TLError`` when there is nothing to train on.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise TLError(f"The validation fraction must be between 0 and 1 (got {val_fraction}).")
    g = torch.Generator().manual_seed(seed)
    train, val = [], []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)].tolist()
        n_val = 0 if len(idx) < 2 or val_fraction == 0 else min(len(idx) - 1, max(1, round(len(idx) * val_fraction)))
        val += idx[:n_val]
        train += idx[n_val:]
    return sorted(train), sorted(val)


def check_trainable(imageset: ImageSet) -> list[str]:
    """Raise ``TLError`` if the set cannot be trained on; return warnings the user should see."""
    counts = imageset.counts()
    filled = [c for c, n in counts.items() if n > 0]
    if len(filled) < 2:
        have = f"only '{filled[0]}' has images" if filled else "no class has images"
        raise TLError(f"Training needs at least two classes with images; {have}. Add images to another class.")
    warnings_ = [f"Class '{c}' has no images and is left out of training." for c, n in counts.items() if n == 0]
    warnings_ += [f"Class '{c}' has a single image: it is used for training only, so its accuracy "
                  f"cannot be measured. Add more images." for c, n in counts.items() if n == 1]
    return warnings_


def trainable_subset(imageset: ImageSet) -> ImageSet:
    """The set without empty classes (they cannot be learned)."""
    counts = imageset.counts()
    if all(counts.values()):
        return imageset  # keep its preprocessed stacks
    return ImageSet(imageset.items, imageset.rejected, [c for c in imageset.classes if counts[c] > 0])
