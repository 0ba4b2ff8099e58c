"""Clean your data with the model: likely wrong labels, near-duplicates and outliers, and the user's review
of them (kept or fixed, every action undoable), saved in the project's folder.

Likely label errors follow confident learning (Northcutt, Jiang & Chuang, JAIR 2021), written here (cleanlab
itself is AGPL), with a second, label-free opinion where the class names allow one:

1. out-of-sample probabilities ``p[i, j]`` of every image: stratified k-fold cross-validation of the
   feature-extraction head on the cached frozen features (every fold's logistic regression in one batched
   fit, ``measure.fit_logistic``), so each image is judged by a model that never saw its label;
2. where every class's name means ImageNet classes (``tlcore.models.zeroshot``: "bird", "fruit", "kitty") and the
   backbone has its ImageNet head, the zero-shot probabilities of the same cached features, which never saw
   any label, averaged with ``p`` (equal weights), if zero-shot gives most images their label (at least halfway
   from chance to all: names like "face" / "background" meaning face powder and the like are not asked). A head fitted on 100 photos with 10 wrong labels learns some
   of them; the names do not: on tuxpaint's real photos with 10 of 100 moved (``benchmarks/data_check.py``),
   38 of 50 moved photos in the top 10 over five seeds, against 26 of 50 for the head alone;
3. a threshold per class, ``t[j]``: the mean of ``p[i, j]`` over the images labelled ``j`` (how sure the
   model is of that class's own images on average: per class, so a hard class is not over-flagged). An image
   counts as confidently of class ``j`` when ``p[i, j] >= t[j]``, the likeliest such class when several are;
   it is a likely label error when that class is not its label and its likeliest class is not its label
   either (cleanlab's ``'both'``). With the names' opinion the thresholds are dropped: its likeliest class
   not being its label is enough (cleanlab's ``'predicted_neq_given'``; on the photos above 38 of 50 against
   34 with the thresholds; the head alone, on the tests' tiny images, needs them against false alarms);
4. ranked by self-confidence, ``p[i, given]``, lowest first, with that class as the suggestion.

Near-duplicates: the same picture twice, once as its file, once resized or re-encoded, is found by a small
grey-level signature of its pixels (16 x 16, centred, unit length: resizing and recompressing barely move
it) and by the cosine of its centred frozen features; identical pixels are said so. A duplicate across two
classes is a contradiction. Outliers: images farther from every class's centre (the median of its images'
unit-length features) than 2.5 times the median image lies from its own class's centre.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from ..core.errors import TLError
from ..core.measure import fit_logistic, repeated_folds
from ..core.storage import atomic_write
from ..data.images import ImageItem, ImageSet, image_to_tensor, tensor_to_image, trainable_subset
from ..engine.events import Progress
from ..engine.features import embed
from ..engine.heads import HEAD_C  # the feature-extraction head's regularisation
from ..engine.train import drive
from ..models.backbones import DEFAULT_BACKBONE, get_backbone_spec

CHECK_FOLDS = 5  # out-of-fold probabilities by 5-fold cross-validation (as cleanlab does)
SIGNATURE_SIDE = 16  # pixel signature: grey levels at 16 x 16
# Signatures at least this alike: the same picture (resized, re-encoded). Measured: resized and JPEG copies of the
# bundled digits and faces >= 0.9996; distinct images of one class <= 0.987 (digits are 8 x 8 scans, much alike).
PIXEL_SIMILAR = 0.995
# Or centred frozen features this alike with signatures >= 0.95 (a slightly changed copy). Distinct faces reach 0.985.
FEATURE_SIMILAR, FEATURE_PIXEL_SIMILAR = 0.99, 0.95
# The head is fitted on centred features of length FEATURE_SCALE (every image weighs alike): on the bundled digits
# with 10 % of labels flipped this finds more flips than raw features (0.86 against 0.82 of the top 20, 4 seeds).
FEATURE_SCALE = 10.0
# An outlier lies this many times farther from every class's centre than the median image from its own. Measured
# (pretrained features): clean bundled digits and faces and the tests' tiny images reach 2.0; a photo of a cat or
# a coffee cup among the digits 5.0, a checkerboard among the tiny images 15.
OUTLIER_RATIO = 2.5
MIN_OUTLIER_IMAGES = 6  # fewer images say nothing about what is typical

@dataclass(frozen=True)
class Finding:
    """One image the check asks the user to look at, and why."""

    kind: str  # "label" (likely in the wrong class) | "duplicate" | "outlier"
    digest: str  # the image (``ImageItem.digest``)
    name: str
    given: str  # its class now
    doubt: float  # 0-1, larger first: 1 - p(given) for a label, 1 for a duplicate across classes, ...
    reason: str  # in words, for the user
    suggested: str | None = None  # the class the model suggests (label errors)
    other: str | None = None  # the other copy's digest (duplicates)
    other_name: str | None = None


@dataclass(frozen=True)
class DataCheck:
    """What a check of one image set found: each list ranked, largest doubt first."""

    label_errors: tuple[Finding, ...]
    duplicates: tuple[Finding, ...]
    outliers: tuple[Finding, ...]
    images: int  # images checked
    judged: int  # of them, images with out-of-fold probabilities (a class's single image has none)
    seconds: float

    def findings(self) -> list[Finding]:
        """One finding per image (its largest doubt), largest doubt first: the review panel's order."""
        best: dict[str, Finding] = {}
        for f in self.duplicates + self.label_errors + self.outliers:
            if f.digest not in best or f.doubt > best[f.digest].doubt:
                best[f.digest] = f
        return sorted(best.values(), key=lambda f: -f.doubt)

    def to_json(self) -> dict:
        """The CLI's line (``file``: the image's name; ``score``: its doubt)."""
        def row(f: Finding) -> dict:
            out = {"file": f.name, "given": f.given, "score": round(f.doubt, 4), "reason": f.reason}
            if f.suggested is not None:
                out["suggested"] = f.suggested
            if f.other is not None:
                out["other"] = f.other_name
            return out

        return {"images": self.images, "judged": self.judged, "seconds": round(self.seconds, 3),
                "label_errors": [row(f) for f in self.label_errors], "duplicates": [row(f) for f in self.duplicates],
                "outliers": [row(f) for f in self.outliers], "flagged": len(self.findings())}

    def to_record(self) -> dict:
        """Everything, for ``from_record`` (the worker's result.json; ``to_json`` is the CLI's shorter line)."""
        return asdict(self)

    @classmethod
    def from_record(cls, d: dict) -> DataCheck:
        found = {k: tuple(Finding(**f) for f in d[k]) for k in ("label_errors", "duplicates", "outliers")}
        return cls(**found, images=int(d["images"]), judged=int(d["judged"]), seconds=float(d["seconds"]))


def out_of_fold_probabilities(x: torch.Tensor, y: torch.Tensor, num_classes: int, folds: int = CHECK_FOLDS,
                              seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``([N, C]`` probabilities, ``[N]`` judged): each image's class probabilities from a logistic head fitted
    on the folds that hold it out (all folds in one batched fit). An image of a class with a single image is
    never held out: it is not judged (its row is 0)."""
    pairs = repeated_folds(y, folds, 1, seed)
    probs = torch.zeros(len(y), num_classes)
    judged = torch.zeros(len(y), dtype=torch.bool)
    if not pairs:
        return probs, judged
    masks = torch.zeros(len(pairs), len(y))
    for f, (train, _test) in enumerate(pairs):
        masks[f, train] = 1
    w, b = fit_logistic(x, y, num_classes, HEAD_C, 200, masks=masks)
    for f, (_train, test) in enumerate(pairs):
        probs[test] = F.softmax(x[test] @ w[f].T + b[f], 1)
        judged[test] = True
    return probs, judged


def likely_label_errors(probs: torch.Tensor, y: torch.Tensor, judged: torch.Tensor, thresholds: bool = True
                        ) -> list[tuple[int, int, float]]:
    """Likely label errors: ``(image, suggested class, self-confidence)``, lowest self-confidence first; with
    ``thresholds``, confident learning's per-class thresholds too (see the module's notes)."""
    likeliest = probs.argmax(1)
    flagged, suggested = judged & (likeliest != y), likeliest
    if thresholds:
        t = torch.full((probs.shape[1],), float("inf"))
        for j in range(probs.shape[1]):
            own = judged & (y == j)
            if own.any():
                t[j] = probs[own, j].mean()
        above = probs >= t[None, :]
        suggested = torch.where(above, probs, torch.full_like(probs, -1.0)).argmax(1)
        flagged = flagged & above.any(1) & (suggested != y)
    self_conf = probs[torch.arange(len(y)), y]
    out = [(int(i), int(suggested[i]), float(self_conf[i])) for i in flagged.nonzero().flatten()]
    return sorted(out, key=lambda t: t[2])


def named_probabilities(feats: torch.Tensor, classes: list[str] | tuple[str, ...], backbone: str
                        ) -> torch.Tensor | None:
    """Zero-shot's class probabilities ``[N, C]`` of the frozen features ``feats`` (the backbone's ImageNet head,
    weighted per class by the suggested mapping), or None where a class's name means no ImageNet class or the
    backbone has no ImageNet head: a second opinion that never saw a label."""
    from ..engine.evaluate import _head_probabilities
    from ..models.zeroshot import suggest_mapping, unmapped, zero_shot_model

    mapping = suggest_mapping(classes)
    if unmapped(classes, mapping):
        return None
    try:
        model = zero_shot_model(backbone, classes, mapping)
    except TLError:  # no ImageNet head
        return None
    return _head_probabilities(model, feats)


def pixel_signature(item: ImageItem) -> torch.Tensor:
    """A 16 x 16 grey-level signature of an image, centred and of unit length (``[256]``)."""
    grey = item.pixels.float().mean(0, keepdim=True)
    small = TF.resize(grey, [SIGNATURE_SIDE, SIGNATURE_SIDE], antialias=True).flatten()
    return F.normalize(small - small.mean(), dim=0)


def _pixel_digest(item: ImageItem) -> str:
    p = item.pixels.contiguous()
    return hashlib.sha1(str(tuple(p.shape)).encode() + p.numpy().tobytes()).hexdigest()


def similar_pairs(items: list[ImageItem], feats: torch.Tensor) -> list[tuple[int, int, str]]:
    """Pairs ``(i, j, how)`` with ``i < j`` that show the same picture: identical pixels, a pixel signature
    at least ``PIXEL_SIMILAR`` alike, or centred features at least ``FEATURE_SIMILAR`` alike with signatures at
    least ``FEATURE_PIXEL_SIMILAR`` alike (features alone would pair a resized digit with nothing, and distinct
    faces with each other)."""
    if len(items) < 2:
        return []
    sig = torch.stack([pixel_signature(i) for i in items])
    pix = sig @ sig.T
    f = F.normalize(feats.float() - feats.float().mean(0), dim=1)
    feat = f @ f.T
    close = torch.triu((pix >= PIXEL_SIMILAR) | ((feat >= FEATURE_SIMILAR) & (pix >= FEATURE_PIXEL_SIMILAR)), diagonal=1)
    digests = {}
    out = []
    for i, j in close.nonzero().tolist():
        a = digests.setdefault(i, _pixel_digest(items[i]))
        b = digests.setdefault(j, _pixel_digest(items[j]))
        how = ("identical pixels" if a == b else
               f"the same picture, resized or re-encoded ({float(pix[i, j]):.0%} alike)" if pix[i, j] >= PIXEL_SIMILAR
               else f"the same picture to the backbone ({float(feat[i, j]):.1%} alike)")
        out.append((i, j, how))
    return out


def outlier_ratios(feats: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(each image's distance to the nearest class centre over the median image's distance to its own class's
    centre, that nearest class). Features are unit length; a class's centre is its images' coordinate-wise
    median, which one odd image does not move (a mean would, and hide it)."""
    f = F.normalize(feats.float(), dim=1)
    present = torch.bincount(y, minlength=num_classes) > 0
    centres = torch.stack([f[y == c].median(0).values if present[c] else torch.zeros(f.shape[1])
                           for c in range(num_classes)])
    dist = torch.cdist(f, centres)
    dist[:, ~present] = float("inf")
    own = dist[torch.arange(len(y)), y]
    nearest, cls = dist.min(1)
    return nearest / own.median().clamp(min=1e-6), cls


def check_data(imageset: ImageSet, backbone: str, seed: int = 0) -> DataCheck:
    """Check every image of ``imageset`` with ``backbone``'s pretrained features (computed once per image and
    cached; the rest takes about a second for 500 images). Changes nothing."""
    return drive(checking(imageset, backbone, seed=seed))


def checking(imageset: ImageSet, backbone: str, should_stop: Callable[[], bool] = lambda: False, seed: int = 0
             ) -> Generator[Progress, None, DataCheck | None]:
    """``check_data`` as a job's generator (``tlcore.analysis.tasks``'s "data-check", run in a worker): yields
    ``Progress`` while the features are computed, returns the check (None if stopped)."""
    start = time.perf_counter()
    data = trainable_subset(imageset)
    items = data.items
    classes = data.classes
    if not items:
        return DataCheck((), (), (), 0, 0, 0.0)
    feats = yield from embed(data, backbone, should_stop=should_stop)
    if feats is None:
        return None
    feats = feats.float()
    y = data.labels()
    x = F.normalize(feats - feats.mean(0), dim=1) * FEATURE_SCALE
    probs, judged = (out_of_fold_probabilities(x, y, len(classes), seed=seed) if len(classes) >= 2
                     else (torch.zeros(len(y), len(classes)), torch.zeros(len(y), dtype=torch.bool)))
    named = named_probabilities(feats, classes, backbone) if judged.any() else None
    if named is not None and float((named.argmax(1) == y).float().mean()) < (1 + 1 / len(classes)) / 2:
        named = None  # the names' ImageNet classes disagree with most labels: they do not say what is pictured
    if named is not None:
        probs = torch.where(judged[:, None], (probs + named) / 2, probs)
    who = "the model trained without it and the class names' ImageNet classes give" if named is not None else (
        "the model, trained without it, gives")
    self_conf = probs[torch.arange(len(y)), y]

    labels = []
    for i, j, conf in likely_label_errors(probs, y, judged, thresholds=named is None):
        item = items[i]
        labels.append(Finding("label", item.digest, item.name, item.label, 1 - conf,
                              f"{who} '{item.label}' {conf:.0%} and '{classes[j]}' {float(probs[i, j]):.0%}",
                              suggested=classes[j]))

    duplicates, seen = [], set()
    for i, j, how in similar_pairs(items, feats):
        # The copy to look at: the one the model believes less (the likelier mislabelled one), else the later.
        a, b = (i, j) if judged[i] and judged[j] and self_conf[i] < self_conf[j] else (j, i)
        if items[a].digest in seen:
            a, b = b, a
        if items[a].digest in seen:
            continue
        seen.add(items[a].digest)
        first, second = items[a], items[b]
        across = first.label != second.label
        why = (f"{how} as '{second.name}' in class '{second.label}': one picture cannot teach two classes"
               if across else f"{how} as '{second.name}', also in '{second.label}': it counts twice")
        duplicates.append(Finding("duplicate", first.digest, first.name, first.label, 1.0 if across else 0.6, why,
                                  other=second.digest, other_name=second.name))
    duplicates.sort(key=lambda f: -f.doubt)

    outliers = []
    ratios, near_cls = outlier_ratios(feats, y, len(classes))
    for i in ((ratios > OUTLIER_RATIO).nonzero().flatten().tolist() if len(items) >= MIN_OUTLIER_IMAGES else []):
        item, ratio = items[i], float(ratios[i])
        outliers.append(Finding("outlier", item.digest, item.name, item.label, min(0.95, 1 - 1 / ratio),
                                f"unlike every class: {ratio:.1f} times farther from the nearest class "
                                f"('{classes[int(near_cls[i])]}') than the typical image is from its own"))
    outliers.sort(key=lambda f: -f.doubt)
    return DataCheck(tuple(labels), tuple(duplicates), tuple(outliers), len(items), int(judged.sum()),
                     time.perf_counter() - start)


def check_backbone(preferred: str) -> str:
    """The backbone a check uses: ``preferred`` when its weights are on this machine, else the bundled default
    (the Data page's check never starts a download)."""
    return preferred if get_backbone_spec(preferred).availability() != "download" else DEFAULT_BACKBONE


def check_key(imageset: ImageSet, backbone: str) -> str:
    """What a check's result depends on (the backbone, every image and its class): equal keys, equal checks."""
    h = hashlib.sha1(backbone.encode())
    for i in imageset.items:
        h.update(f"{i.digest}\0{i.label}\n".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------- the user's review


class HasImages(Protocol):
    """What a review edits: a project (``tlcore.Project``) or anything with its images, folder and save."""

    images: ImageSet

    @property
    def folder(self) -> Path: ...

    def save(self) -> None: ...


REVIEW_FILE = "review.json"
REMOVED_DIR = "review-removed"  # images removed from the review, kept (lossless) so Undo can bring them back
_LOCK = threading.Lock()  # one review edit at a time in this process (two tabs of one project)


@dataclass(frozen=True)
class Action:
    """One click of the review: ``keep``, ``move`` (``source`` -> ``target``) or ``remove``."""

    id: int
    action: str
    digest: str
    name: str
    kind: str  # the finding's kind
    source: str  # the image's class before
    target: str | None = None  # move: its class after
    time: float = 0.0

    def text(self) -> str:
        what = {"keep": f"kept '{self.name}' in '{self.source}'",
                "move": f"moved '{self.name}' from '{self.source}' to '{self.target}'",
                "remove": f"removed '{self.name}' from '{self.source}'"}[self.action]
        return what[0].upper() + what[1:]


@dataclass
class Review:
    """The marks of one project's review, in ``<project folder>/review.json``: what was kept (never shown
    again), what was fixed, every action (each undoable), and every image a check has flagged so far."""

    folder: Path
    actions: list[Action] = field(default_factory=list)
    flagged: set[str] = field(default_factory=set)
    next_id: int = 1

    @classmethod
    def load(cls, folder: Path) -> Review:
        """The review saved in ``folder`` (an empty one if there is none; a damaged file reads as empty)."""
        path = Path(folder) / REVIEW_FILE
        try:
            d = json.loads(path.read_text())
            actions = [Action(**a) for a in d.get("actions", [])]
            return cls(Path(folder), actions, set(d.get("flagged", [])),
                       int(d.get("next_id", 1 + max((a.id for a in actions), default=0))))
        except (OSError, ValueError, TypeError):
            return cls(Path(folder))

    def _fresh(self) -> None:
        """Take what is on disk now (another tab may have acted since this review was loaded); under ``_LOCK``."""
        disk = Review.load(self.folder)
        self.actions, self.flagged, self.next_id = disk.actions, disk.flagged, disk.next_id

    def save(self) -> None:
        text = json.dumps({"format": "tls-review/1", "actions": [asdict(a) for a in self.actions],
                           "flagged": sorted(self.flagged), "next_id": self.next_id}, indent=1)
        atomic_write(self.folder / REVIEW_FILE, lambda p: Path(p).write_text(text))

    @property
    def kept(self) -> set[str]:
        return {a.digest for a in self.actions if a.action == "keep"}

    @property
    def fixed(self) -> list[Action]:
        return [a for a in self.actions if a.action != "keep"]

    def pending(self, result: DataCheck, images: ImageSet) -> list[Finding]:
        """The findings still to look at, largest doubt first: not kept, image still there in the same class."""
        now = {i.digest: i.label for i in images.items}
        kept = self.kept
        return [f for f in result.findings() if f.digest not in kept and now.get(f.digest) == f.given]

    def announce(self, result: DataCheck) -> int:
        """Note what ``result`` flags; returns how many images it flags that no check had flagged before."""
        with _LOCK:
            self._fresh()
            new = {f.digest for f in result.findings()} - self.flagged - self.kept
            if new:
                self.flagged |= new
                self.save()
        return len(new)

    def summary(self) -> str | None:
        """E.g. "The data check flagged 12 images: 7 fixed (5 moved, 2 removed), 3 kept as they were."
        (None before any check flagged anything)."""
        if not self.flagged:
            return None
        moved = sum(a.action == "move" for a in self.actions)
        removed = sum(a.action == "remove" for a in self.actions)
        n = len(self.flagged)
        return (f"The data check flagged {n} image{'s' * (n != 1)}: {moved + removed} fixed ({moved} moved to "
                f"another class, {removed} removed), {len(self.kept)} kept as they were.")

    # --------------------------------------------------------------------- actions (each saved at once)

    def _add(self, action: str, f: Finding, target: str | None = None) -> Action:
        a = Action(self.next_id, action, f.digest, f.name, f.kind, f.given, target, time.time())
        self.next_id += 1
        self.actions.append(a)
        self.flagged.add(f.digest)
        return a

    def keep(self, f: Finding) -> Action:
        """The image is right as it is: it is not shown again."""
        with _LOCK:
            self._fresh()
            a = self._add("keep", f)
            self.save()
        return a

    def move(self, project: HasImages, f: Finding, target: str) -> Action:
        """Put the image into class ``target`` (the model's suggestion)."""
        with _LOCK:
            self._fresh()
            item = _item(project.images, f)
            if target not in project.images.classes:
                raise TLError(f"There is no class called '{target}' any more: choose another.")
            project.images.move([item.digest], target)
            a = self._add("move", f, target)
            project.save()
            self.save()
        return a

    def remove(self, project: HasImages, f: Finding) -> Action:
        """Take the image out of the project (a lossless copy stays beside the review, for Undo)."""
        with _LOCK:
            self._fresh()
            item = _item(project.images, f)
            image = tensor_to_image(item.pixels)
            atomic_write(self.folder / REMOVED_DIR / f"{item.digest}.png", lambda p: image.save(p, "PNG"))
            project.images.discard([item.digest])
            a = self._add("remove", f)
            project.save()
            self.save()
        return a

    def undo(self, project: HasImages, action_id: int) -> Action:
        """Undo one action (any of them, not only the last): a kept image is shown again, a moved one goes
        back to its class, a removed one comes back."""
        with _LOCK:
            self._fresh()
            a = next((x for x in self.actions if x.id == action_id), None)
            if a is None:
                raise TLError("That review action was already undone.")
            images = project.images
            where = {i.digest: i for i in images.items}
            if a.action == "move":
                item = where.get(a.digest)
                if item is None:
                    raise TLError(f"'{a.name}' is no longer in the project, so it cannot go back to '{a.source}'.")
                if a.source not in images.classes:
                    images.add_class(a.source)
                images.move([a.digest], a.source)
            elif a.action == "remove" and a.digest not in where:
                path = self.folder / REMOVED_DIR / f"{a.digest}.png"
                try:
                    with Image.open(path) as img:
                        pixels = image_to_tensor(img.convert("RGB"))
                except OSError:
                    raise TLError(f"The removed copy of '{a.name}' ({path}) is missing: add the file again "
                                  f"from your computer.") from None
                rejected = images.merge(ImageSet([ImageItem(a.name, a.source, a.digest, pixels)], (), [a.source]))
                if rejected:
                    raise TLError(f"'{a.name}' could not come back: {rejected[0].reason}")
                path.unlink(missing_ok=True)
            self.actions.remove(a)
            if a.action != "keep":
                project.save()
            self.save()
        return a


def _item(images: ImageSet, f: Finding) -> ImageItem:
    item = next((i for i in images.items if i.digest == f.digest), None)
    if item is None:
        raise TLError(f"'{f.name}' is no longer in the project (another tab may have changed it): nothing done.")
    return item


def review_summary(folder: Path) -> str | None:
    """The summary of the review saved in a project folder (None when nothing was flagged)."""
    return Review.load(folder).summary() if (Path(folder) / REVIEW_FILE).exists() else None


__all__ = ["Action", "DataCheck", "Finding", "Review", "check_backbone", "check_data", "check_key", "likely_label_errors",
           "out_of_fold_probabilities", "review_summary", "similar_pairs"]
