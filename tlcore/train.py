"""Training as a generator of typed events, in four modes on the same data, split and seed.

* feature extraction: the pretrained body is frozen; each image goes through it once (on the
  fastest runtime installed, features cached by backbone, preprocessing and image content) and
  only the new head is trained;
* fine-tuning: the first ``freeze_depth`` stages stay frozen, the rest and the head train, the
  body at a lower learning rate than the head (discriminative rates). The frozen stages run once
  per image and augmented view (a fixed pool of ``augment_views`` views per image, drawn from
  each epoch) instead of every epoch;
* from scratch: the same architecture from random weights, everything trains;
* few-shot: no gradient steps at all; the head is the nearest-class-mean (prototype) classifier
  on the cached features, ready from one image per class;
* zero-shot: no training image at all; the backbone's own ImageNet head, its probabilities summed
  per class through a mapping of class names to ImageNet classes (``tlcore.zeroshot``).

The loop checks ``should_stop`` before every batch (a cooperative stop acts within one batch),
keeps the best epoch's weights, stops early when validation stops improving, and ends a run
whose loss is not finite as failed with the reason, never with a crash.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import DEFAULT_BACKBONE, Preprocess, frozen_body, get_backbone_spec, weights_digest
from .data import ImageSet, check_trainable, stratified_split, to_float, trainable_subset
from .errors import TLError
from .measure import LogisticFit, Pair, Score, out_of_fold, repeated_folds, shot_draws, span_basis
from .model import CHANNELS_LAST, TransferModel, build_model, count_params, freeze, set_train_mode
from .runtime import frozen_forward, runtime_for
from .storage import ByteLRU, budgeted

Mode = Literal["zero-shot", "few-shot", "feature-extraction", "fine-tune", "scratch"]
MODES: tuple[Mode, ...] = ("zero-shot", "few-shot", "feature-extraction", "fine-tune", "scratch")  # the ladder
MODE_TITLES: dict[str, str] = {  # each mode's name in words, the one place the pages and labels take it from
    "zero-shot": "zero-shot", "few-shot": "few-shot prototypes", "feature-extraction": "feature extraction",
    "fine-tune": "fine-tuning", "scratch": "from scratch"}
FROZEN_BODY_MODES = ("zero-shot", "few-shot", "feature-extraction")
UNTRAINED_MODES = ("zero-shot", "few-shot")  # no gradient step: a head computed, not trained
# A linear head on fixed features takes large steps; networks that train the body need smaller ones.
DEFAULT_LR: dict[str, float] = {"feature-extraction": 1e-2, "few-shot": 1e-2, "zero-shot": 1e-2, "fine-tune": 3e-3,
                                "scratch": 3e-3}
Status = Literal["completed", "stopped", "failed"]  # how a run ends (``RunFinished.status``)
# The one status vocabulary of a run, at every layer (job snapshot, run.json, the app's run): waiting for a
# worker, training, ended, or "interrupted" (the server stopped while it trained; its best epoch is kept).
RunState = Literal["queued", "running", "interrupted", Status]


@dataclass(frozen=True)
class TrainConfig:
    backbone: str = DEFAULT_BACKBONE
    mode: Mode = "feature-extraction"
    freeze_depth: int | None = None  # fine-tune: leading stages kept frozen; None = half of them
    epochs: int = 20  # upper bound; early stopping may end sooner
    batch_size: int = 32  # clamped to the number of training images
    lr: float | None = None  # head learning rate (whole network's from scratch); None: DEFAULT_LR[mode]
    backbone_lr_mult: float = 0.1  # fine-tune: body lr = lr * this; pretrained weights need small steps
    weight_decay: float = 1e-4  # mild L2 on all trained weights (AdamW)
    val_fraction: float = 0.2  # share of each class held out to measure generalisation
    seed: int = 0  # same seed, same split, same initial head, same result
    augment: bool = True  # flips, random resized crops, colour jitter (feature extraction: its views below)
    patience: int = 0  # early stopping: epochs without validation improvement; 0 = off
    device: str = "auto"  # "auto" picks CUDA, then Apple MPS, then the CPU
    max_images_per_class: int | None = None  # data-efficiency studies: use at most this many per class
    augment_views: int = 4  # views per image (one unaugmented) computed once by the frozen stages of a fine-tune
    # or (up to VIEWS_MAX_IMAGES images) the frozen body of feature extraction
    # zero-shot: class -> {ImageNet class: weight} (runs before the weights: class -> [ImageNet classes], weight 1
    # each; ``zeroshot.mapping_weights``); None: suggested
    zero_shot_map: dict[str, dict[str, float]] | dict[str, list[str]] | None = None
    # How the run is scored (``tlcore.measure``): k-fold cross-validation over every image. None: 5 folds for
    # frozen-body modes (a head on cached features: milliseconds a fold), 0 for modes that train the body
    # (each fold is a whole training; 0 scores them on the validation split). Comparisons ask for 3.
    score_folds: int | None = None
    score_repeats: int = 5  # frozen-body modes: repeats of the folds (or draws in a study), a steadier mean

    def validate(self) -> None:
        """Raise ``TLError`` for settings that cannot make a sensible run."""
        if self.mode not in MODES:
            raise TLError(f"Unknown mode {self.mode!r}: use one of {', '.join(MODES)}.")
        if self.epochs < 1:
            raise TLError(f"Epochs must be at least 1 (got {self.epochs}).")
        if self.batch_size < 1:
            raise TLError(f"The batch size must be at least 1 (got {self.batch_size}).")
        if self.lr is not None and not 0 < self.lr <= 1:
            raise TLError(f"A learning rate of {self.lr:g} cannot train: use a value between 0.00001 and 0.1 "
                          f"(0.001 is a good start).")
        if not 0 < self.backbone_lr_mult <= 1:
            raise TLError("The backbone learning-rate factor must be in (0, 1].")
        if not 0 <= self.val_fraction < 1:
            raise TLError(f"The validation share must be at least 0 and below 1 (got {self.val_fraction}).")
        if self.patience < 0:
            raise TLError("Early-stopping patience cannot be negative.")
        if self.score_folds is not None and self.score_folds != 0 and self.score_folds < 2:
            raise TLError(f"Scoring by cross-validation needs at least 2 folds, or 0 for none (got {self.score_folds}).")
        if self.score_repeats < 1:
            raise TLError(f"Score repeats must be at least 1 (got {self.score_repeats}).")
        if self.max_images_per_class is not None and self.max_images_per_class < 1:
            raise TLError(f"Images per class must be at least 1 (got {self.max_images_per_class}).")
        if self.augment_views < 1:
            raise TLError(f"Augmented views per image must be at least 1 (got {self.augment_views}).")
        spec = get_backbone_spec(self.backbone)
        if spec.frozen_only and self.mode not in FROZEN_BODY_MODES:
            strongest = max(spec.members, key=lambda m: get_backbone_spec(m).imagenet_top1 or 0)
            raise TLError(f"{spec.title} can only be used frozen (zero-shot, few-shot or feature extraction): "
                          f"training its {len(spec.members)} networks together would take far too long here. To "
                          f"{'fine-tune' if self.mode == 'fine-tune' else 'train from scratch'}, choose one of "
                          f"them on the Backbone page ({get_backbone_spec(strongest).title} is the strongest).")
        n = len(spec.stage_names)
        if self.freeze_depth is not None and not 0 <= self.freeze_depth <= n:
            raise TLError(f"Freeze depth must be between 0 and {n} for {self.backbone} (got {self.freeze_depth}).")

    def resolved_score_folds(self) -> int:
        if self.score_folds is not None:
            return self.score_folds
        return 5 if self.mode in FROZEN_BODY_MODES else 0

    def resolved_lr(self) -> float:
        return DEFAULT_LR[self.mode] if self.lr is None else self.lr

    def resolved_freeze_depth(self) -> int:
        """Stages frozen in this run: all for feature extraction, none from scratch."""
        n = len(get_backbone_spec(self.backbone).stage_names)
        if self.mode in FROZEN_BODY_MODES:
            return n
        if self.mode == "scratch":
            return 0
        return n // 2 if self.freeze_depth is None else self.freeze_depth


@dataclass(frozen=True)
class Progress:
    """Work before the epochs start (e.g. computing embeddings)."""

    what: str
    done: int
    total: int
    eta_s: float


@dataclass(frozen=True)
class BatchEnd:
    epoch: int  # 1-based
    batch: int  # 1-based within the epoch
    num_batches: int
    loss: float
    images_per_sec: float
    fraction: float  # of the whole run's batches
    eta_s: float


@dataclass(frozen=True)
class EpochEnd:
    epoch: int
    epochs: int
    train_loss: float
    train_acc: float
    val_loss: float | None  # None when there is no validation set
    val_acc: float | None
    seconds: float  # wall clock since the run started
    best: bool  # this epoch's weights are the best so far (kept)
    model: TransferModel | None = field(default=None, repr=False, compare=False)  # live; checkpoint it now

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "model"}


class ModelRef(Protocol):
    """Where a run's model can be loaded from when it is needed (``checkpoint.DiskModel``)."""

    def load(self) -> TransferModel: ...


@dataclass(frozen=True)
class RunFacts:
    """What a run is and what it measured: the fields a finished run (``RunResult``) and its run.json
    (``checkpoint.RunMeta``) share by inheritance. A new run metric is one field here, set where the engine
    measures it (see ``peak_rss_mb`` in ``train``) and shown by a page; run.json stores and loads it by itself."""

    classes: tuple[str, ...]
    config: TrainConfig
    history: tuple[EpochEnd, ...] = ()
    best_epoch: int = 0
    val_accuracy: float | None = None
    train_seconds: float = 0.0
    num_images: int = 0
    train_indices: tuple[int, ...] = ()  # into the training ImageSet
    val_indices: tuple[int, ...] = ()
    trainable_params: int = 0
    total_params: int = 0
    freeze_depth: int = 0
    runtime: str = "torch"  # what ran the frozen pretrained part (openvino, onnxruntime or torch)
    how: str = ""  # how the frozen part was run, in words
    score: Score | None = None  # the accuracy to show: on how many held-out images, how sure (``tlcore.measure``)
    # The predictions ``score`` counts, one per scored image, each by a model that did not train on it: (image
    # digest, true class, probabilities). A frozen-body model trains on every image in the end, so the Evaluate
    # page shows these instead of its own guesses; empty when the score is on the validation split.
    heldout: tuple[tuple[str, int, tuple[float, ...]], ...] = ()
    peak_rss_mb: float | None = None  # the training process's peak memory during the run (None: not measured)
    #: Few-shot: (photos per class, accuracy on every other photo) from 1 to one fewer than the smallest class has
    #: (at most ``SHOT_CURVE_MAX``),
    #: so zero-shot can be said in photos per class (``verdict.names_worth``).
    shot_curve: tuple[tuple[int, float], ...] = ()

    def outcomes(self) -> dict[str, bool]:
        """Image digest -> whether the held-out prediction the score counts was right (for paired comparisons)."""
        return {d: max(range(len(p)), key=p.__getitem__) == t for d, t, p in self.heldout}


@dataclass(frozen=True)
class RunResult(RunFacts):
    """A finished run in memory: its facts and its model."""

    model_ref: TransferModel | ModelRef | None = field(default=None, repr=False, compare=False)  # or where to load it

    @property
    def model(self) -> TransferModel:
        """The trained model (a saved run's is loaded on first use and may be evicted and reloaded)."""
        assert self.model_ref is not None
        return self.model_ref if isinstance(self.model_ref, TransferModel) else self.model_ref.load()


#: Who stopped a run, unless told otherwise (the runner says "by the teacher" when the teacher did).
BY_THE_USER = "by the user"


@dataclass(frozen=True)
class Stop:
    """How a run that ended before its last epoch was stopped, as data: ``when`` ("during epoch 3"), what is
    ``kept`` (a clause, or ""), ``by`` whom or what ("by the user", "by the teacher", a server limit's words).
    A run's reason is its ``sentence()``, written here once; whoever learns more (who pressed Stop) replaces a field."""

    when: str
    kept: str = ""
    by: str = BY_THE_USER

    def sentence(self) -> str:
        """E.g. "Stopped by the teacher during epoch 3; the best epoch's weights are kept." """
        return f"Stopped {self.by} {self.when}" + (f"; {self.kept}." if self.kept else ".")


@dataclass(frozen=True)
class RunFinished:
    status: Status
    reason: str
    result: RunResult | None = field(default=None, repr=False)
    stop: Stop | None = None  # a stopped run's cause (``reason`` is its sentence)

    @classmethod
    def stopped(cls, when: str, kept: str = "") -> RunFinished:
        """A run stopped (by the user, unless the runner learns otherwise) ``when``, keeping ``kept``, with no result."""
        stop = Stop(when, kept)
        return cls("stopped", stop.sentence(), stop=stop)

    def stopped_by(self, by: str) -> RunFinished:
        """The same end, stopped ``by`` someone or something else; a run that was not stopped is unchanged."""
        if self.stop is None:
            return self
        stop = dataclasses.replace(self.stop, by=by)
        return dataclasses.replace(self, reason=stop.sentence(), stop=stop)


Event = Progress | BatchEnd | EpochEnd | RunFinished


def resolve_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


# ----------------------------------------------------------------------------- feature cache


# Embeddings of pretrained bodies, ``(feature key, image digest) -> [D]``, a quarter of the process's budget.
# Pretrained weights never change, so an image's features are computed once per backbone, preprocessing
# and runtime and then reused by every later epoch, run, comparison and session.
FEATURES: ByteLRU[tuple[str, str], torch.Tensor] = budgeted("features", 1 / 4)


def cached_features(key: str, digests: list[str]) -> list[torch.Tensor | None]:
    """Each image's features under ``key`` if ``FEATURES`` holds them."""
    return [FEATURES.get((key, d)) for d in digests]


def keep_features(key: str, digests: list[str], feats: torch.Tensor) -> None:
    for d, f in zip(digests, feats):
        f = f.clone()  # not a view that would keep the whole batch alive
        FEATURES.put((key, d), f, f.nbytes)


def feature_key(backbone: str, pre: Preprocess, runtime: str) -> str:
    return f"{backbone}|{weights_digest(backbone)[:16]}|{pre.key}|{runtime}"


def _preprocessed_batches(imageset: ImageSet, pre: Preprocess, indices: list[int], batch_size: int
                          ) -> Iterator[tuple[list[int], torch.Tensor]]:
    """``indices`` in batches, each with its images preprocessed (``ImageSet.preprocessed``). The next batch is
    preprocessed on a thread while the caller runs this one through the backbone: a runtime's inference releases
    the GIL, and one image's resize keeps one core busy, so most of the preprocessing hides behind the inference
    (300 images on 2 cores: 0.71-0.83 s serially, 0.66-0.72 s so, against 0.55-0.61 s for the forward pass alone)."""
    batches = [indices[lo:lo + batch_size] for lo in range(0, len(indices), batch_size)]
    if not batches:
        return
    with ThreadPoolExecutor(1, thread_name_prefix="tlcore-preprocess") as pool:
        ahead = pool.submit(imageset.preprocessed, pre, batches[0])
        for k, idx in enumerate(batches):
            stack = ahead.result()
            if k + 1 < len(batches):
                ahead = pool.submit(imageset.preprocessed, pre, batches[k + 1])
            yield idx, stack


def embed(imageset: ImageSet, backbone: str, device: torch.device | str = "cpu",
          should_stop: Callable[[], bool] = lambda: False, batch_size: int = 32
          ) -> Generator[Progress, None, torch.Tensor | None]:
    """Pretrained features ``[N, D]`` of every image, from the cache where possible, else through
    the fastest runtime (``frozen_forward``). Yields ``Progress`` while it computes; returns None if
    stopped."""
    pre = get_backbone_spec(backbone).preprocess
    key = feature_key(backbone, pre, runtime_for(device))
    digests = [i.digest for i in imageset.items]
    cached = cached_features(key, digests)
    missing = [k for k, f in enumerate(cached) if f is None]
    if missing:
        start = time.perf_counter()
        yield Progress("Computing features", 0, len(missing), math.nan)
        done = 0
        for idx, stack in _preprocessed_batches(imageset, pre, missing, batch_size):
            if should_stop():
                return None
            feats = frozen_forward(backbone, stack, device=device, batch_size=batch_size)
            keep_features(key, [digests[k] for k in idx], feats)
            for k, f in zip(idx, feats):
                cached[k] = f
            done += len(idx)
            rate = done / (time.perf_counter() - start)
            yield Progress("Computing features", done, len(missing), (len(missing) - done) / rate)
    return torch.stack(cached) if cached else torch.zeros((0, get_backbone_spec(backbone).feature_dim))  # type: ignore[arg-type]


AUGMENT_DRAWS = 8  # uniform numbers one augmented view is drawn from (crop area, aspect, x, y, flip, colour x3)


def augment(batch: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Augmented views of a uint8 batch ``[B, 3, H, W]``: a random resized crop (60-100 % of the area, aspect
    3:4 to 4:3, resized back to H x W), a horizontal flip (half of the time) and colour jitter (brightness,
    contrast and saturation each times 0.8-1.2), image ``i`` drawn from ``draws[i]`` (``[B, AUGMENT_DRAWS]``
    uniform in [0, 1)). One vectorised pass for the whole batch (an affine grid, then per-image factors):
    torchvision's per-image ``ColorJitter`` on uint8 cost several times the backbone's forward pass."""
    n = len(batch)
    area = 0.6 + 0.4 * draws[:, 0]
    aspect = torch.exp(math.log(3 / 4) + math.log(16 / 9) * draws[:, 1])
    w, h = (area * aspect).sqrt().clamp(max=1.0), (area / aspect).sqrt().clamp(max=1.0)  # fractions of the side
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = w * torch.where(draws[:, 4] < 0.5, -1.0, 1.0)
    theta[:, 0, 2] = (1 - w) * (2 * draws[:, 2] - 1)
    theta[:, 1, 1] = h
    theta[:, 1, 2] = (1 - h) * (2 * draws[:, 3] - 1)
    x = batch.float()
    x = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), mode="bilinear",
                      padding_mode="border", align_corners=False)
    # Brightness b, then contrast c about the mean grey m, then saturation s about each pixel's grey g: all
    # linear, so together x -> s c b x + (1 - s) c b g + (1 - c) b m, one pass.
    b, c, s = (0.8 + 0.4 * draws[:, 5:8]).T.reshape(3, n, 1, 1, 1)
    grey = 0.299 * x[:, :1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:]
    x = x * (s * c * b) + grey * ((1 - s) * c * b) + grey.mean((2, 3), keepdim=True) * ((1 - c) * b)
    return x.clamp(0, 255).round().to(torch.uint8)


#: Feature extraction on up to this many images, at most VIEWS_MAX_PER_CLASS per class on average, also uses
#: ``augment_views - 1`` augmented views of each image (flips, crops, colour; their features computed once and
#: cached like the image's own): its head is the average of two logistic regressions, one on the images alone
#: and one on the images with their views (``_Head``). On the benchmark's small real datasets (section 9)
#: the views raised accuracy where images vary in place and size (digits: +4 points at 3-5 per class); alone,
#: the fit with views fell up to 3 points below the images-only fit on some draws, the average never more than
#: half a point. Beyond a class's data they cost more than they bring.
VIEWS_MAX_IMAGES = 120
VIEWS_MAX_PER_CLASS = 10


def _view_draws(digest: str, k: int) -> torch.Tensor:
    """The draws of view ``k`` of one image, from a seed of its content and ``k``: the same view whenever and
    wherever it is computed (so a cached view and a recomputed one agree)."""
    return torch.rand(AUGMENT_DRAWS, generator=torch.Generator().manual_seed(int(digest[:12], 16) * 64 + k))


def embed_views(imageset: ImageSet, backbone: str, views: int, device: torch.device | str = "cpu",
                should_stop: Callable[[], bool] = lambda: False, batch_size: int = 32
                ) -> Generator[Progress, None, torch.Tensor | None]:
    """Pretrained features ``[views, N, D]`` of ``views`` augmented views of every image, cached like
    ``embed``'s. Yields ``Progress`` while it computes; returns None if stopped."""
    pre = get_backbone_spec(backbone).preprocess
    base = feature_key(backbone, pre, runtime_for(device))
    # The image itself (key ``base``, as ``embed`` keeps it) from the same preprocessed batch as its views,
    # where it is not cached yet: ``embed`` after this preprocesses nothing again.
    keys = [base] + [f"{base}|view{k}|v2" for k in range(views)]  # v2: views of ``augment``
    digests = [i.digest for i in imageset.items]
    cached = [cached_features(key, digests) for key in keys]
    todo = [i for i in range(len(digests)) if any(c[i] is None for c in cached[1:])]
    if todo:
        start = time.perf_counter()
        yield Progress("Computing features of the images and their augmented views", 0, len(todo), math.nan)
        done = 0
        for idx, stack in _preprocessed_batches(imageset, pre, todo, batch_size):
            if should_stop():
                return None
            for k, key in enumerate(keys):
                if k == 0:  # the image itself, where it is missing
                    at = [j for j, i in enumerate(idx) if cached[0][i] is None]
                    idx_k, batch = [idx[j] for j in at], stack[at]
                else:
                    idx_k = idx
                    batch = augment(stack, torch.stack([_view_draws(digests[i], k - 1) for i in idx]))
                if not idx_k:
                    continue
                feats = frozen_forward(backbone, batch, device=device, batch_size=batch_size)
                keep_features(key, [digests[i] for i in idx_k], feats)
                for i, f in zip(idx_k, feats):
                    cached[k][i] = f
            done += len(idx)
            rate = done / (time.perf_counter() - start)
            yield Progress("Computing features of the images and their augmented views", done, len(todo), (len(todo) - done) / rate)
    if not digests:
        return torch.zeros((views, 0, get_backbone_spec(backbone).feature_dim))
    return torch.stack([torch.stack(c) for c in cached[1:]])  # type: ignore[arg-type]


def fe_views(cfg: TrainConfig, num_images: int, classes: int | None = None) -> int:
    """Augmented views per image (besides the image) a feature-extraction run of ``cfg`` on ``num_images``
    images of ``classes`` classes (None: not known, as if few per class) fits its head on."""
    few = classes is None or num_images <= VIEWS_MAX_PER_CLASS * classes
    return cfg.augment_views - 1 if cfg.augment and num_images <= VIEWS_MAX_IMAGES and few else 0


# ----------------------------------------------------------------------------- training


def run_split(labels: torch.Tensor, cfg: TrainConfig) -> tuple[list[int], list[int]]:
    """The (train, validation) indices a run of ``cfg`` uses when none is given: the seeded stratified split,
    or in a data-efficiency study (``max_images_per_class`` = k) k images per class drawn at random, every
    other image held out."""
    if cfg.max_images_per_class is not None:
        draws = shot_draws(labels, cfg.max_images_per_class, 1, cfg.seed)
        if draws:
            return draws[0]
        return sorted(range(len(labels))), []
    return stratified_split(labels, cfg.val_fraction, cfg.seed)


def train(imageset: ImageSet, config: TrainConfig, should_stop: Callable[[], bool] = lambda: False,
          split: tuple[list[int], list[int]] | None = None) -> Iterator[Event]:
    """Train a classifier on ``imageset``; yields events and always ends with ``RunFinished``.

    ``split`` (train, val indices into the set) overrides the seeded stratified split, so that
    several runs can share one split exactly.
    """
    peak = PeakMemory()
    try:
        for event in _train(imageset, config, should_stop, split):
            if isinstance(event, RunFinished) and event.result is not None:
                event = dataclasses.replace(event, result=dataclasses.replace(event.result, peak_rss_mb=peak.mb()))
            yield event
    except TLError as e:
        yield RunFinished("failed", str(e))
    except Exception as e:  # a run must end with a reason, not take the app down
        yield RunFinished("failed", f"Training failed unexpectedly: {type(e).__name__}: {e}")


class PeakMemory:
    """This process's peak resident memory from now on, in MB (Linux: the kernel's high-water mark, reset at
    the start; elsewhere the process's lifetime peak, or None)."""

    def __init__(self) -> None:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
        except OSError:
            pass

    @staticmethod
    def mb() -> float | None:
        try:
            with open("/proc/self/status") as f:
                return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
        except (OSError, StopIteration, ValueError):
            try:
                import resource

                return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if os.uname().sysname == "Darwin" else 1024)
            except (ImportError, OSError):
                return None


@dataclass
class Plan:
    """How one mode trains; the loop in ``_train`` is the same for every mode.

    Three kinds: the head on cached features (feature extraction), the unfrozen stages and the head
    on the cached outputs of the frozen leading stages (fine-tune), and the whole network on pixels
    (from scratch, and fine-tunes that cannot cache their frozen stages).
    """

    forward: nn.Module  # inputs -> logits
    get_batch: Callable[[list[int], bool], torch.Tensor]  # (indices into the data, training?) -> inputs
    param_groups: list[dict]  # what the optimiser updates, each group with its learning rate
    trained: nn.Module  # the state a best epoch snapshots and the end of the run restores
    set_train: Callable[[], None]  # training mode (frozen batch-norm keeps its ImageNet statistics)
    runtime: str = "torch"  # what ran the frozen pretrained part, once
    how: str = ""  # how the frozen part ran, in words (shown with the run)


def _body_groups(model: TransferModel, cfg: TrainConfig) -> list[dict]:
    """The head at the run's rate; the body's trainable stages lower when fine-tuning (discriminative rates)."""
    lr = cfg.resolved_lr()
    groups = [{"params": list(model.head.parameters()), "lr": lr}]
    body = [p for p in model.body.parameters() if p.requires_grad]
    if body:
        groups.append({"params": body, "lr": lr if cfg.mode == "scratch" else lr * cfg.backbone_lr_mult})
    return groups


def _pixel_plan(model: TransferModel, data: ImageSet, cfg: TrainConfig, device: torch.device) -> Plan:
    stack = data.stack(get_backbone_spec(cfg.backbone).preprocess)

    def get_batch(idx: list[int], train: bool) -> torch.Tensor:
        batch = stack[idx]
        if train and cfg.augment:
            batch = augment(batch, torch.rand(len(idx), AUGMENT_DRAWS))
        return to_float(batch, device)

    return Plan(model, get_batch, _body_groups(model, cfg), model, lambda: set_train_mode(model),
                "torch", "every epoch ran the whole network in torch")


class _Rest(nn.Module):
    """The stages after the frozen prefix, and the head: prefix outputs -> logits."""

    def __init__(self, model: TransferModel, depth: int) -> None:
        super().__init__()
        self.model, self.depth = model, depth

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.head(self.model.body.forward_range(h, self.depth))


def prefix_cache_budget() -> int:
    """Bytes the frozen-prefix outputs of one fine-tune may take (``TLCORE_PREFIX_CACHE_MB``, default 1024)."""
    return int(float(os.environ.get("TLCORE_PREFIX_CACHE_MB", 1024)) * 2**20)


def _prefix_plan(model: TransferModel, data: ImageSet, train_idx: list[int], val_idx: list[int], cfg: TrainConfig,
                 depth: int, device: torch.device, should_stop: Callable[[], bool]
                 ) -> Generator[Progress, None, Plan | None]:
    """Fine-tune on the outputs of the ``depth`` frozen leading stages, computed once: one view per
    validation image, ``augment_views`` augmented views per training image (one without augmentation),
    fp16, within ``prefix_cache_budget()``. Each epoch shows every training image as one of its views,
    drawn at random: a fixed pool of views instead of fresh ones each epoch. Falls back to the pixel
    plan when even one view per image does not fit. Returns None if stopped."""
    stack = data.stack(get_backbone_spec(cfg.backbone).preprocess)
    probe = frozen_forward(cfg.backbone, stack[:1], stages=depth, device=device)
    per_view = probe[0].numel() * 2  # fp16
    views = cfg.augment_views if cfg.augment else 1
    views = min(views, (prefix_cache_budget() // per_view - len(val_idx)) // max(1, len(train_idx)))
    if views < 1:
        return _pixel_plan(model, data, cfg, device)
    torch.manual_seed(cfg.seed + 1)  # the views do not depend on whether the prefix was exported just now
    jobs = [(val_idx, None)] + [(train_idx, v) for v in range(views)]
    total = len(val_idx) + views * len(train_idx)
    cache = torch.empty((total, *probe.shape[1:]), dtype=torch.float16)
    rows: dict[tuple[int, int | None], int] = {}  # (data index, view or None for validation) -> row
    done, start = 0, time.perf_counter()
    yield Progress("Running the frozen stages once", 0, total, math.nan)
    for indices, view in jobs:
        for lo in range(0, len(indices), 32):
            if should_stop():
                return None
            idx = indices[lo:lo + 32]
            batch = stack[idx]
            if view is not None and cfg.augment:
                batch = augment(batch, torch.rand(len(idx), AUGMENT_DRAWS))
            cache[done:done + len(idx)] = frozen_forward(cfg.backbone, batch, stages=depth, device=device).half()
            rows.update({(i, view): done + k for k, i in enumerate(idx)})
            done += len(idx)
            rate = done / (time.perf_counter() - start)
            yield Progress("Running the frozen stages once", done, total, (total - done) / rate)
    pick = torch.Generator().manual_seed(cfg.seed + 2)

    def get_batch(idx: list[int], train: bool) -> torch.Tensor:
        chosen = torch.randint(views, (len(idx),), generator=pick).tolist() if train else [None] * len(idx)
        h = cache[[rows[(i, v)] for i, v in zip(idx, chosen)]]
        return h.to(device).float().contiguous(memory_format=CHANNELS_LAST)

    rest = _Rest(model, depth)
    runtime = runtime_for(device)
    return Plan(rest, get_batch, _body_groups(model, cfg), model, lambda: set_train_mode(model), runtime,
                f"the {depth} frozen stages ran once per image and view ({views} view{'s' * (views > 1)}) on {runtime}")


@dataclass
class _Setup:
    """What every mode starts from: the trainable images, the split, the device and the model."""

    cfg: TrainConfig  # as run (zero-shot: with the class-name mapping it used)
    data: ImageSet
    labels: torch.Tensor
    train_idx: list[int]
    val_idx: list[int]
    device: torch.device
    model: TransferModel
    depth: int  # leading stages frozen
    start: float  # perf_counter at the start of the run

    @property
    def frozen(self) -> bool:
        return self.cfg.mode in FROZEN_BODY_MODES


def _train(imageset: ImageSet, cfg: TrainConfig, should_stop: Callable[[], bool],
           split: tuple[list[int], list[int]] | None) -> Iterator[Event]:
    """Setup, plan, loop: the frozen-body modes fit a head on cached features; the others plan how each
    batch reaches the layers that learn and run the one training loop."""
    s = _setup(imageset, cfg, split)
    if s.frozen:
        yield from _frozen_run(s, should_stop)
        return
    plan = yield from _plan(s, should_stop)
    if plan is None:
        yield RunFinished.stopped("while running the frozen stages, before any training")
        return
    finished = yield from _loop(s, plan, should_stop)
    if finished.status == "completed" and s.cfg.resolved_score_folds() and finished.result is not None:
        finished = yield from _fold_scored(finished, s.data, s.labels, s.cfg, s.device, should_stop)
    yield finished


def _setup(imageset: ImageSet, cfg: TrainConfig, split: tuple[list[int], list[int]] | None) -> _Setup:
    cfg.validate()
    check_trainable(imageset)
    data = trainable_subset(imageset)
    labels = data.labels()
    train_idx, val_idx = split if split is not None else run_split(labels, cfg)
    if not train_idx:
        raise TLError("No images are left for training after the validation split.")
    device = resolve_device(cfg.device)
    spec = get_backbone_spec(cfg.backbone)
    torch.manual_seed(cfg.seed)
    depth = cfg.resolved_freeze_depth()
    start = time.perf_counter()
    if cfg.mode == "zero-shot":  # the backbone's own ImageNet head, summed per class: nothing to train
        from .zeroshot import mapping_weights, suggest_mapping, zero_shot_model

        given = cfg.zero_shot_map or {}
        mapping = {**suggest_mapping([c for c in data.classes if c not in given]), **given}
        cfg = dataclasses.replace(cfg, zero_shot_map={c: mapping_weights(mapping[c]) for c in data.classes})
        model = zero_shot_model(cfg.backbone, data.classes, cfg.zero_shot_map)
        model.head.to(device)
    elif cfg.mode in FROZEN_BODY_MODES:  # the body never changes: one shared pretrained copy (CPU; the runtime runs it)
        body = frozen_body(cfg.backbone)  # built once per process: it may or may not draw random numbers now
        torch.manual_seed(cfg.seed)  # so the new head starts the same wherever and whenever the run trains
        model = TransferModel(body, len(data.classes), spec.preprocess)
        model.head.to(device)
    else:
        model = build_model(cfg.backbone, len(data.classes), pretrained=cfg.mode != "scratch", seed=cfg.seed)
        model.to(device)
    freeze(model, depth)
    return _Setup(cfg, data, labels, list(train_idx), list(val_idx), device, model, depth, start)


def _frozen_run(s: _Setup, should_stop: Callable[[], bool]) -> Iterator[Event]:
    """Zero-shot, few-shot and feature extraction: features once (cached), then a head computed or fitted."""
    k = fe_views(s.cfg, len(s.data), len(s.data.classes)) if s.cfg.mode == "feature-extraction" else 0
    views = (yield from embed_views(s.data, s.cfg.backbone, k, s.device, should_stop)) if k else None  # images' too
    feats = None if k and views is None else (yield from embed(s.data, s.cfg.backbone, s.device, should_stop))
    if feats is None:
        yield RunFinished.stopped("while computing features, before any training")
        return
    args = (s.model, feats.to(s.device), s.labels.to(s.device), s.train_idx, s.val_idx, s.data, s.cfg, s.depth, s.start)
    if s.cfg.mode in UNTRAINED_MODES:
        yield _untrained_run(*args)
    else:
        yield from _head_run(*args, should_stop, views)


def _plan(s: _Setup, should_stop: Callable[[], bool]) -> Generator[Progress, None, Plan | None]:
    """How batches reach the layers that learn: the cached outputs of the frozen leading stages when the
    body can be split there, else pixels through the whole network. None if stopped meanwhile."""
    if s.depth > 0 and s.model.body.splittable:
        return (yield from _prefix_plan(s.model, s.data, s.train_idx, s.val_idx, s.cfg, s.depth, s.device,
                                        should_stop))
    return _pixel_plan(s.model, s.data, s.cfg, s.device)


@dataclass
class _Best:
    """The best epoch so far (by validation accuracy, then loss) and its weights."""

    state: dict[str, torch.Tensor] | None = None
    key: tuple[float, float] | None = None
    epoch: int = 0
    since: int = 0  # epochs since it improved

    def offer(self, epoch: int, key: tuple[float, float], trained: nn.Module) -> bool:
        if self.key is not None and key <= self.key:
            self.since += 1
            return False
        self.key, self.epoch, self.since = key, epoch, 0
        self.state = copy.deepcopy(trained.state_dict())
        return True


def _loop(s: _Setup, plan: Plan, should_stop: Callable[[], bool]) -> Generator[Event, None, RunFinished]:
    """The one training loop: epochs of AdamW steps, validation after each, the best epoch kept, early
    stopping; Stop checked before every batch. Returns how it ended (with the best epoch's result)."""
    cfg, train_idx = s.cfg, s.train_idx
    optimizer = torch.optim.AdamW(plan.param_groups, weight_decay=cfg.weight_decay)
    y_all = s.labels.to(s.device)
    batch_size = min(cfg.batch_size, len(train_idx))
    num_batches = math.ceil(len(train_idx) / batch_size)
    total_batches = num_batches * cfg.epochs
    g = torch.Generator().manual_seed(cfg.seed)
    # Dropout and augmentation draw from the global generator, which getting the features may or may not
    # have used (a cache hit does not): seed it here, so a seed gives one result wherever the run trains.
    torch.manual_seed(cfg.seed)
    history: list[EpochEnd] = []
    best = _Best()
    batches_done = 0
    train_start = time.perf_counter()

    def finish(status: Status, reason: str, stop: Stop | None = None) -> RunFinished:
        return _finish(s, plan, history, best, status, reason, stop)

    for epoch in range(1, cfg.epochs + 1):
        plan.set_train()
        order = [train_idx[i] for i in torch.randperm(len(train_idx), generator=g).tolist()]
        loss_sum, correct, seen = 0.0, 0, 0
        epoch_start = time.perf_counter()
        for b in range(num_batches):
            if should_stop():
                kept = "the best epoch's weights are kept" if history else "no epoch had finished, so nothing is kept"
                stop = Stop(f"during epoch {epoch}", kept)
                return finish("stopped", stop.sentence(), stop)
            idx = order[b * batch_size:(b + 1) * batch_size]
            x, y = plan.get_batch(idx, True), y_all[idx]
            with _autocast(s.device):
                logits = plan.forward(x)
                loss = F.cross_entropy(logits.float(), y)
            if not torch.isfinite(loss):
                return finish("failed", f"The loss became {loss.item()} in epoch {epoch}, batch {b + 1}: training "
                                        f"diverged. The learning rate ({cfg.resolved_lr():g}) is probably too high; "
                                        f"try one ten times smaller.")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
            batches_done += 1
            rate = batches_done / (time.perf_counter() - train_start)
            yield BatchEnd(epoch, b + 1, num_batches, loss.item(), seen / (time.perf_counter() - epoch_start),
                           batches_done / total_batches, (total_batches - batches_done) / rate)
        val_loss, val_acc = _validate(plan, y_all, s.val_idx, batch_size)
        key = (val_acc, -val_loss) if val_acc is not None and val_loss is not None else (0.0, -loss_sum / seen)
        is_best = best.offer(epoch, key, plan.trained)
        history.append(EpochEnd(epoch, cfg.epochs, loss_sum / seen, correct / seen, val_loss, val_acc,
                                time.perf_counter() - s.start, is_best, s.model))
        yield history[-1]
        if cfg.patience and best.since >= cfg.patience:
            break
    reason = (f"Stopped early after epoch {len(history)}: no improvement for {cfg.patience} epochs. "
              if len(history) < cfg.epochs else f"Finished {cfg.epochs} epochs; ")
    return finish("completed", reason + f"the best epoch ({best.epoch}) is kept.")


def _finish(s: _Setup, plan: Plan, history: list[EpochEnd], best: _Best, status: Status, reason: str,
            stop: Stop | None = None) -> RunFinished:
    """The run's end: the best epoch's weights restored, the model back on the CPU, its result."""
    if best.state is not None:
        plan.trained.load_state_dict(best.state)
    s.model.eval()
    s.model.cpu()  # free accelerator memory
    if not history:
        return RunFinished(status, reason, stop=stop)
    top = history[best.epoch - 1]
    return RunFinished(status, reason, stop=stop, result=RunResult(
        model_ref=s.model, classes=tuple(s.data.classes), config=s.cfg, history=tuple(history),
        best_epoch=best.epoch, val_accuracy=top.val_acc, train_seconds=time.perf_counter() - s.start,
        num_images=len(s.train_idx) + len(s.val_idx), train_indices=tuple(s.train_idx),
        val_indices=tuple(s.val_idx), trainable_params=count_params(s.model, trainable_only=True),
        total_params=count_params(s.model), freeze_depth=s.depth, runtime=plan.runtime, how=plan.how,
        score=None if top.val_acc is None else Score.of(top.val_acc, len(s.val_idx), _split_method(s.cfg))))


def _split_method(cfg: TrainConfig) -> str:
    if cfg.max_images_per_class is not None:
        return f"every image outside the {cfg.max_images_per_class} per class it trained on"
    return "the validation split (which also chose the best epoch)"


def _fold_scored(finished: RunFinished, data: ImageSet, labels: torch.Tensor, cfg: TrainConfig,
                 device: torch.device, should_stop: Callable[[], bool]) -> Generator[Event, None, RunFinished]:
    """A run that trains the body, scored on every image: one training per fold (same settings, no
    validation, the last epoch kept: nothing is chosen on the images it is scored on), each fold's model
    predicting its held-out images. Yields ``Progress``; a stop keeps the validation-split score."""
    assert finished.result is not None
    folds = cfg.resolved_score_folds()
    pairs = (shot_draws(labels, cfg.max_images_per_class, 1, cfg.seed + 1) if cfg.max_images_per_class
             else repeated_folds(labels, folds, 1, cfg.seed))
    inner_cfg = dataclasses.replace(cfg, score_folds=0, patience=0)
    pre = get_backbone_spec(cfg.backbone).preprocess
    probs: list[torch.Tensor] = []
    for k, (tr, te) in enumerate(pairs):
        yield Progress(f"Scoring on every image: fold {k + 1} of {len(pairs)}", k, len(pairs), math.nan)
        inner: RunFinished | None = None
        for event in _train(data, inner_cfg, should_stop, (tr, [])):
            if isinstance(event, RunFinished):
                inner = event
        if inner is None or inner.result is None or inner.status != "completed":
            return finished  # stopped (or failed) while scoring: the validation-split score stands
        fold_model = inner.result.model
        fold_model.eval()
        with torch.inference_mode():
            stack = data.subset(te).stack(pre)
            logits = torch.cat([fold_model(to_float(stack[lo:lo + 32], device)).float().cpu()
                                for lo in range(0, len(stack), 32)])
        probs.append(F.softmax(logits, 1))
    it = iter(probs)
    method = (f"{len(pairs)}-fold cross-validation over every image (one training per fold, last epoch)"
              if not cfg.max_images_per_class else _split_method(cfg) + " (a second draw, last epoch)")
    score, held = out_of_fold(pairs, lambda _tr, _te: next(it), labels, method)
    return RunFinished(finished.status, finished.reason, dataclasses.replace(
        finished.result, score=score, heldout=_heldout(held, labels, [i.digest for i in data.items])))


def _heldout(probs: dict[int, torch.Tensor], labels: torch.Tensor, digests: list[str]
             ) -> tuple[tuple[str, int, tuple[float, ...]], ...]:
    """``RunFacts.heldout`` from each scored image's out-of-fold probabilities."""
    return tuple((digests[i], int(labels[i]), tuple(round(v, 5) for v in p.tolist())) for i, p in probs.items())


def set_prototypes(head: torch.nn.Linear, feats: torch.Tensor, labels: torch.Tensor) -> None:
    """Make ``head`` the nearest-class-mean classifier of ``feats`` (every class needs one example).

    ``-|f - p_c|^2 = 2 f.p_c - |p_c|^2 - |f|^2``, and the last term is the same for every class,
    so distances to prototypes are exactly a linear layer: W_c = 2 p_c, b_c = -|p_c|^2, scaled
    by the mean squared distance to one's own prototype so that probabilities are not all 0/1.
    """
    num_classes = head.out_features
    protos = torch.stack([feats[labels == c].mean(0) for c in range(num_classes)])
    spread = ((feats - protos[labels]) ** 2).sum(1).mean().clamp_min(1e-6)
    with torch.no_grad():
        head.weight.copy_(2 * protos / spread)
        head.bias.copy_(-(protos ** 2).sum(1) / spread)


#: Inverse L2 strength of the feature-extraction head (scikit-learn's ``C``; its default is 1). Chosen on the
#: benchmark's small real datasets (section 9, 2026-12-05, 4 datasets x 3/5/10/20 per class x 5 seeds, held-out
#: accuracy against ``LogisticRegression()``): C = 10 was at least as good as C = 1 and 3 in every dataset
#: and shot count, by 1-3 points on the digits; C = 1 fell up to 1 point below the baseline at 20 per class.
HEAD_C = 10.0
HEAD_ITERS_PER_EPOCH = 10  # L-BFGS iterations an "epoch" of the feature-extraction head stands for


def _final_indices(cfg: TrainConfig, train_idx: list[int], val_idx: list[int]) -> list[int]:
    """What a frozen-body model is fitted on in the end: every image, except in a study (its k per class)."""
    return list(train_idx) if cfg.max_images_per_class is not None else sorted(train_idx + val_idx)


#: Up to this many images, a frozen body is scored with up to MAX_SCORE_FOLDS folds (one image per class held
#: out per fold; every fold's model in one batched fit, under a second): 5-fold trains each model on 4/5 of
#: the images and underrates the final model, fitted on them all. Larger sets use 5 folds.
MANY_FOLDS_MAX_IMAGES = 300
MAX_SCORE_FOLDS = 20
#: A frozen body's score repeats its folds (or draws) while repeats x images stay within this: 5 repeats up to
#: 60 images, one from 300. Repeats steady the score of a small set, where which images share a fold matters;
#: on 300 images one partition moves the score by a fraction of its interval, and each repeat cost about as much
#: as the forward pass over the images (benchmark section 1, 2026-12-06).
SCORE_ROWS = 300


def score_repeats(num_images: int, wanted: int = 5) -> int:
    """How many times a frozen body's score repeats its folds (or draws) on ``num_images``: at most ``wanted``,
    while repeats x images stay within ``SCORE_ROWS`` (large sets: fewer repeats, the same images scored)."""
    return max(1, min(wanted, SCORE_ROWS // max(1, num_images)))


Predictor = Callable[[list[Pair]], list[torch.Tensor]]  # (train, test) pairs -> logits of each test part


def _frozen_score(cfg: TrainConfig, labels: torch.Tensor, digests: list[str], predict: Predictor
                  ) -> tuple[Score | None, tuple[tuple[str, int, tuple[float, ...]], ...]]:
    """Score a frozen-body strategy on every image: ``predict(pairs)`` trains one model per (train, test)
    pair of repeated stratified k-fold (per draw of k images per class in a study) and gives the logits of
    each pair's test images. Returns the score and each image's out-of-fold probabilities (averaged over repeats)."""
    y = labels.cpu()
    repeats = score_repeats(len(y), cfg.score_repeats)
    if cfg.max_images_per_class is not None:
        pairs = shot_draws(y, cfg.max_images_per_class, repeats, cfg.seed)
        method = f"{_split_method(cfg)}, {len(pairs)} draw{'s' * (len(pairs) > 1)}"
    else:
        # A class's data: as many folds as the largest class has images, so every fold holds out one image
        # per class and each model trains on all but one image of each class (balanced, unlike leave-one-out).
        folds = cfg.score_folds or (MAX_SCORE_FOLDS if len(y) <= MANY_FOLDS_MAX_IMAGES else 5)
        pairs = repeated_folds(y, folds, repeats, cfg.seed)
        k = len(pairs) // repeats if repeats else len(pairs)
        method = f"{k}-fold cross-validation over every image, {repeats} repeat{'s' * (repeats > 1)}"
    logits = iter(predict(pairs)) if pairs else iter(())
    score, probs = out_of_fold(pairs, lambda _tr, _te: F.softmax(next(logits).float(), 1), y, method,
                               average=cfg.max_images_per_class is None)
    heldout = _heldout(probs, y, digests)
    if score is not None and cfg.max_images_per_class is None and not cfg.score_folds and len(y) <= MANY_FOLDS_MAX_IMAGES:
        score = dataclasses.replace(score, upside=_last_step(y, pairs, repeats, cfg.seed, predict, score.accuracy))
    return score, heldout


LAST_STEP_REPEATS = 2


def _last_step(y: torch.Tensor, pairs: list[Pair], repeats: int, seed: int, predict: Predictor, accuracy: float
               ) -> float:
    """The learning curve's last measured step: ``accuracy`` (models trained on all but one image per class)
    less the accuracy of models trained on all but two per class (folds half as many), at least 0. The final
    model has one more image per class than the scored ones; its gain is likely no larger than this step.
    At most ``LAST_STEP_REPEATS`` repeats: it widens an interval, it is not the score itself."""
    most = int(torch.bincount(y).max())
    test_folds = len(pairs) // max(1, repeats)
    if most < 3 or test_folds < 2 or most > MAX_SCORE_FOLDS:
        return 0.0  # beyond MAX_SCORE_FOLDS per class, folds hold out several per class: one image is no step
    fewer = repeated_folds(y, max(2, (test_folds + 1) // 2), min(repeats, LAST_STEP_REPEATS), seed + 1)
    right = sum(int((logits.argmax(1).cpu() == y[te]).sum()) for (_tr, te), logits in zip(fewer, predict(fewer)))
    return max(0.0, accuracy - right / sum(len(te) for _tr, te in fewer))


def _with_views(x: torch.Tensor, y: torch.Tensor, views: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows a head is fitted on: every image, then (``views`` ``[V, N, D]``) every view of every image."""
    if views is None:
        return x, y
    return torch.cat([x, views.reshape(-1, x.shape[1]).float()]), y.repeat(len(views) + 1)


Fit = tuple[torch.Tensor, torch.Tensor]  # a linear head's (weight, bias), or F of them (``[F, C, D]``, ``[F, C]``)


class _Head:
    """The feature-extraction head's fits, averaged: one logistic regression on the images, and with
    ``views`` (``[V, N, D]``) one on the images with their views. Each of the two fell up to 3 points below
    the other on some small sets (benchmark section 9); their average stayed within half a point of the
    better one. ``masks`` (``[F, N]``): F heads at once (folds), each fitted on the images its mask marks and
    on their views only; ``init``: the fits to start from (a previous ``parts``, repeated per fold); ``bases``:
    ``_Head.bases`` of a set these images are part of (its splits and folds share them)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, views: torch.Tensor | None, num_classes: int,
                 masks: torch.Tensor | None = None, init: list[Fit] | None = None,
                 bases: list[torch.Tensor] | None = None) -> None:
        rows = [(x, y, masks)]
        if views is not None:
            xs, ys = _with_views(x, y, views)
            rows.append((xs, ys, None if masks is None else masks.repeat(1, len(views) + 1)))
        self._fits = [LogisticFit(xr, yr, num_classes, HEAD_C, init=None if init is None else init[i], masks=m,
                                  basis=None if bases is None else bases[i])
                      for i, (xr, yr, m) in enumerate(rows)]
        self.parts: list[Fit] = []

    @staticmethod
    def bases(x: torch.Tensor, y: torch.Tensor, views: torch.Tensor | None) -> list[torch.Tensor]:
        """Each part's ``span_basis`` on the whole set: one QR per part, where each fit did one (30 ms of a
        300-image run's 130 ms of head fits and score)."""
        return [span_basis(x)] + ([] if views is None else [span_basis(_with_views(x, y, views)[0])])

    @property
    def converged(self) -> bool:
        return all(f.converged for f in self._fits)

    def step(self, iters: int) -> Fit:
        """Up to ``iters`` more iterations of each fit; their average."""
        self.parts = [f.step(iters) for f in self._fits]
        return torch.stack([w for w, _b in self.parts]).mean(0), torch.stack([b for _w, b in self.parts]).mean(0)


def _logistic_folds(x: torch.Tensor, y: torch.Tensor, num_classes: int, views: torch.Tensor | None = None,
                    start: list[Fit] | None = None, bases: list[torch.Tensor] | None = None) -> Predictor:
    """Every fold's head (``_Head``) in one batched fit per part; a fold fits on its training images and their
    views, never on a view of an image it is scored on. ``start``: the parts of the head fitted on every image,
    where each fold's L-BFGS starts: a fold lacks one image per class, so its optimum lies near and it
    converges in a fraction of the iterations (the same optimum)."""

    def predict(pairs: list[Pair]) -> list[torch.Tensor]:
        masks = torch.zeros(len(pairs), len(y))
        for f, (tr, _te) in enumerate(pairs):
            masks[f, tr] = 1
        init = None if start is None else [(w.expand(len(pairs), *w.shape).clone(), b.expand(len(pairs), *b.shape).clone())
                                           for w, b in start]
        w, b = _Head(x, y, views, num_classes, masks, init, bases).step(200)
        return [x[te] @ w[f].T + b[f] for f, (_tr, te) in enumerate(pairs)]
    return predict


def _head_run(model: TransferModel, x_all: torch.Tensor, y_all: torch.Tensor, train_idx: list[int],
              val_idx: list[int], data: ImageSet, cfg: TrainConfig, depth: int, start: float,
              should_stop: Callable[[], bool], views: torch.Tensor | None = None) -> Iterator[Event]:
    """Feature extraction: the new head is a multinomial logistic regression on the cached features (and
    those of each image's augmented ``views``, ``[V, N, D]``, if any), with an L2 penalty
    (``HEAD_C``), fitted to convergence by full-batch L-BFGS. Each "epoch" is
    ``HEAD_ITERS_PER_EPOCH`` iterations on the training images, so the live curves show it converge on the
    training and validation images; it stops when the fit has converged. The final head is then fitted
    on every image (the validation images too), and the run is scored by cross-validation."""
    num_classes = len(data.classes)
    linear = model.head[-1]
    x, y = x_all.cpu().float(), y_all.cpu()
    views = None if views is None else views.cpu().float()
    w = b = None
    history: list[EpochEnd] = []
    runtime = runtime_for(x_all.device)
    bases = _Head.bases(x, y, views)
    fit = _Head(x[train_idx], y[train_idx], None if views is None else views[:, train_idx], num_classes, bases=bases)
    for epoch in range(1, cfg.epochs + 1):
        if should_stop():
            if w is None:
                yield RunFinished.stopped(f"during epoch {epoch}", "no epoch had finished, so nothing is kept")
                return
            break
        w, b = fit.step(HEAD_ITERS_PER_EPOCH)  # one L-BFGS run through the epochs
        with torch.no_grad():
            linear.weight.copy_(w.to(linear.weight.device))
            linear.bias.copy_(b.to(linear.bias.device))
            logits = x @ w.T + b
            per_image = F.cross_entropy(logits, y, reduction="none")
            right = logits.argmax(1) == y
        train_loss, train_acc = per_image[train_idx].mean().item(), right[train_idx].float().mean().item()
        val_loss = per_image[val_idx].mean().item() if val_idx else None
        val_acc = right[val_idx].float().mean().item() if val_idx else None
        yield BatchEnd(epoch, 1, 1, train_loss, len(train_idx) / max(1e-9, time.perf_counter() - start),
                       epoch / cfg.epochs, 0.0)
        history.append(EpochEnd(epoch, cfg.epochs, train_loss, train_acc, val_loss, val_acc,
                                time.perf_counter() - start, True, model))  # the newest fit is the one kept
        yield history[-1]
        if fit.converged and epoch >= 2:
            break  # more epochs would change nothing (two at least: a curve, not a dot)
    history = [dataclasses.replace(e, best=e.epoch == len(history)) for e in history]
    final = _final_indices(cfg, train_idx, val_idx)
    assert w is not None and b is not None
    head = _Head(x[final], y[final], None if views is None else views[:, final], num_classes, init=fit.parts,
                 bases=bases)
    w, b = head.step(200)
    with torch.no_grad():
        linear.weight.copy_(w.to(linear.weight.device))
        linear.bias.copy_(b.to(linear.bias.device))
    model.head.requires_grad_(False)
    model.eval()
    score, heldout = _frozen_score(cfg, y, [i.digest for i in data.items],
                                   _logistic_folds(x, y, num_classes, views, start=head.parts, bases=bases))
    seen = (f"once per image and each of its {len(views)} augmented views (flips, crops, colour)"
            if views is not None else "once per image")
    head = ("the average of two logistic regressions, on the images alone and on the images with their views, "
            if views is not None else "a logistic regression ")
    how = (f"the frozen backbone ran {seen} on {runtime}; the head, {head}fitted to convergence (L-BFGS), "
           f"was refitted on all {len(final)} images at the end")
    stop = Stop(f"after epoch {len(history)}", f"the best epoch's head is kept, refitted on all {len(final)} images") \
        if len(history) < cfg.epochs and should_stop() else None
    status, reason = ("stopped", stop.sentence()) if stop else \
        ("completed", f"The head converged in {len(history)} epoch{'s' * (len(history) > 1)}; the best epoch "
                      f"({len(history)}, the last) is kept, refitted on all {len(final)} images.")
    last = history[-1]
    yield RunFinished(status, reason, stop=stop, result=RunResult(
        model_ref=model, classes=tuple(data.classes), config=cfg, history=tuple(history), best_epoch=len(history),
        val_accuracy=last.val_acc, train_seconds=time.perf_counter() - start,
        num_images=len(train_idx) + len(val_idx), train_indices=tuple(final),
        val_indices=tuple(val_idx), trainable_params=count_params(model.head),
        total_params=count_params(model), freeze_depth=depth, runtime=runtime, how=how, score=score, heldout=heldout))


def _untrained_run(model: TransferModel, x_all: torch.Tensor, y_all: torch.Tensor, train_idx: list[int],
                   val_idx: list[int], data: ImageSet, cfg: TrainConfig, depth: int, start: float) -> RunFinished:
    """Few-shot (prototypes from every image in the end, scored by cross-validation) or zero-shot (no image
    at all, scored on every image)."""
    x, y = x_all.cpu().float(), y_all.cpu()
    digests = [i.digest for i in data.items]
    final = _final_indices(cfg, train_idx, val_idx)
    if cfg.mode == "few-shot":
        probe = nn.Linear(x.shape[1], len(data.classes))

        def predict(pairs: list[Pair]) -> list[torch.Tensor]:
            out = []
            for tr, te in pairs:
                head = nn.Linear(x.shape[1], len(data.classes))
                set_prototypes(head, x[tr], y[tr])
                out.append(head(x[te]).detach())
            return out

        set_prototypes(probe, x[train_idx], y[train_idx])  # the curves' point: from the training images only
        curve = _shot_curve(y, cfg.seed, predict) if cfg.max_images_per_class is None else ()
        reason = f"Prototypes computed: one mean feature vector per class, from all {len(final)} images."
    else:
        curve = ()
        from .zeroshot import unmapped

        missing = unmapped(data.classes, cfg.zero_shot_map or {})
        reason = ("Zero-shot: no training image was used; the backbone's ImageNet classes decide." if not missing
                  else f"Zero-shot: ImageNet has no class for {', '.join(missing)}, so those can only be guessed.")
    model.head.requires_grad_(False)
    model.eval()
    with torch.no_grad():
        if cfg.mode == "few-shot":
            logits = probe(x)
            set_prototypes(model.head[-1], x_all[final], y_all[final])
        else:  # nothing to fit: ImageNet decides
            logits = model.head(x_all).float().cpu()
    right = logits.argmax(1) == y
    per_image = F.cross_entropy(logits, y, reduction="none")
    train_acc = right[train_idx].float().mean().item() if train_idx else 0.0
    val_loss = per_image[val_idx].mean().item() if val_idx else None
    val_acc = right[val_idx].float().mean().item() if val_idx else None
    if cfg.mode == "zero-shot":  # trains on nothing: every image is held out
        probs = F.softmax(logits, 1)
        score = Score(int(right.sum()), len(y), "every image (zero-shot trains on none)")
        heldout = _heldout(dict(enumerate(probs)), y, digests)
    else:
        score, heldout = _frozen_score(cfg, y, digests, predict)
    epoch = EpochEnd(1, 1, 0.0, train_acc, val_loss, val_acc, time.perf_counter() - start, True)
    runtime = runtime_for(x_all.device)
    return RunFinished("completed", reason, RunResult(
        model_ref=model, classes=tuple(data.classes), config=cfg, history=(epoch,), best_epoch=1,
        val_accuracy=val_acc, train_seconds=time.perf_counter() - start, num_images=len(train_idx) + len(val_idx),
        train_indices=tuple(final), val_indices=tuple(val_idx), trainable_params=0,
        total_params=count_params(model), freeze_depth=depth, runtime=runtime,
        how=f"the frozen backbone ran once per image on {runtime}", score=score, heldout=heldout, shot_curve=curve))


SHOT_CURVE_DRAWS = 5
SHOT_CURVE_MAX = 20  # photos per class: beyond, zero-shot is said to be worth "20 or more"


def _shot_curve(y: torch.Tensor, seed: int, predict: Predictor) -> tuple[tuple[int, float], ...]:
    """Accuracy against photos per class (1, 2, ... one fewer than the smallest class, at most ``SHOT_CURVE_MAX``): ``SHOT_CURVE_DRAWS``
    draws of k per class each, scored on every other photo."""
    out = []
    for k in range(1, min(SHOT_CURVE_MAX + 1, int(torch.bincount(y).min()))):
        pairs = shot_draws(y, k, SHOT_CURVE_DRAWS, seed)
        right = sum(int((logits.argmax(1) == y[te]).sum()) for (_tr, te), logits in zip(pairs, predict(pairs)))
        out.append((k, round(right / sum(len(te) for _tr, te in pairs), 4)))
    return tuple(out)


def _validate(plan: Plan, y_all: torch.Tensor, val_idx: list[int] | tuple[int, ...], batch_size: int
              ) -> tuple[float | None, float | None]:
    """(loss, accuracy) on the validation images, in eval mode; (None, None) when there are none."""
    if not val_idx:
        return None, None
    plan.forward.eval()
    loss_sum, correct = 0.0, 0
    with torch.inference_mode():
        for lo in range(0, len(val_idx), batch_size):
            idx = list(val_idx[lo:lo + batch_size])
            y = y_all[idx]
            logits = plan.forward(plan.get_batch(idx, False)).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            correct += int((logits.argmax(1) == y).sum())
    return loss_sum / len(val_idx), correct / len(val_idx)


def drive(gen: Generator, on_event: Callable[[Event], None] | None = None):
    """Run an engine generator (``embed``, ``probe_stages``, ``lr_find``...) to its end, each event it yields
    to ``on_event``; returns the generator's return value."""
    while True:
        try:
            event = next(gen)
        except StopIteration as done:
            return done.value
        if on_event is not None:
            on_event(event)


def run_to_end(imageset: ImageSet, config: TrainConfig, on_event: Callable[[Event], None] | None = None,
               split: tuple[list[int], list[int]] | None = None) -> RunFinished:
    """Drive ``train`` to its end (for scripts and tests); returns the final event."""
    for event in train(imageset, config, split=split):
        if on_event is not None:
            on_event(event)
        if isinstance(event, RunFinished):
            return event
    raise AssertionError("train() ended without RunFinished")


def set_threads() -> None:
    """Use every core for intra-op parallelism (torch defaults to physical cores only)."""
    torch.set_num_threads(max(1, os.cpu_count() or 1))
