"""How fast a backbone is on this machine, and what an epoch will cost at a given freeze depth."""
from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass

import torch

from ..core.errors import TLError
from ..engine.config import FROZEN_BODY_MODES, TrainConfig
from ..engine.features import AUGMENT_DRAWS, augment, fe_views
from ..engine.heads import score_repeats
from ..engine.train import resolve_device
from ..models.backbones import get_backbone_spec
from ..models.model import to_float
from ..models.runtime import frozen_forward, runtime_for


@dataclass(frozen=True)
class SpeedProfile:
    """Measured forward cost per image: through the pretrained weights on the fast runtime (what feature
    extraction and frozen stages pay) and in torch (what the stages that learn pay), split by stage."""

    backbone: str
    ms_per_image: float  # inference through the frozen pretrained body, on ``runtime``
    torch_ms_per_image: float  # the same forward pass in torch (random weights: speed does not depend on them)
    stage_share: tuple[float, ...]  # fraction of the torch forward time spent in each stage
    runtime: str  # what ran ``ms_per_image`` (torch where the weights are not on this machine)
    batch: int = 8  # both figures: one pass over a batch of this many images, divided by it
    augment_ms_per_image: float = 0.0  # one augmented view (``features.augment``), what views pay besides the forward

    def text(self) -> str:
        """Both figures, said as what they are: "3 ms/image in torch · 23 ms/image on openvino (batches of 8)".
        The torch figure is measured for every backbone the same way: the one to compare backbones by."""
        def ms(v: float) -> str:
            return f"{v:.1f}" if v < 10 else f"{v:.0f}"

        fast = "" if self.runtime == "torch" else f" · {ms(self.ms_per_image)} ms/image on {self.runtime}"
        return f"{ms(self.torch_ms_per_image)} ms/image in torch{fast} (batches of {self.batch})"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> SpeedProfile:
        return cls(**{**d, "stage_share": tuple(d["stage_share"])})


_measuring = threading.Lock()
#: Where the web server's timings run (``measure_speed_elsewhere``); None: in this process.
_elsewhere: Callable[[str], SpeedProfile] | None = None
log = logging.getLogger(__name__)


DEFAULT_TIMING = (8, 3)
"""The timing every estimate uses: a batch of 8 images, the fastest of 3 passes. Kept per process, and the one
that ``measure_speed_elsewhere`` sends to a worker."""


def measure_speed_elsewhere(via: Callable[[str], SpeedProfile] | None) -> None:
    """The web server's choice, made once at start-up: time each backbone with ``via(name)`` (the runner's
    ``time_on_runner``: a job in a worker, as every other piece of work), never in the server's own
    interpreter; None times it here. The measurement builds the backbone and exports it to the fast runtime,
    which held the server's interpreter long enough that a teacher's *Start the challenge* waited over 90 s
    behind it on a busy machine. Only the default timing (8 images, 3 repeats) goes elsewhere."""
    global _elsewhere
    _elsewhere = via


def timing(backbone: str) -> Generator[None, None, SpeedProfile]:
    """The default timing as an analysis task (``tlcore.analysis.tasks``): what a worker runs for
    ``measure_speed_elsewhere``'s runner."""
    return _measure_speed(backbone, *DEFAULT_TIMING)
    yield  # a generator, as every task


def measure_speed(backbone: str, batch: int = DEFAULT_TIMING[0], repeats: int = DEFAULT_TIMING[1]) -> SpeedProfile:
    """Time the backbone's forward pass on random images; per-stage shares from module hooks. Measured
    once per process: concurrent callers (a class pressing Start together) wait for the one measurement
    rather than each timing the backbone while the others do. The fastest of ``repeats`` passes counts
    (other work on the machine only ever slows a pass down); ``Calibration`` corrects the rest from the
    runs that finish. After ``measure_speed_elsewhere(via)`` the default timing runs through ``via``."""
    if (batch, repeats) == DEFAULT_TIMING and (known := _known.get(backbone)) is not None:
        return known  # without waiting for another backbone's measurement (a race times several)
    with _measuring:
        if (batch, repeats) == DEFAULT_TIMING and (known := _known.get(backbone)) is not None:
            return known  # refined by ``refine_speed_when_quiet`` since, perhaps
        profile = _measured(backbone, batch, repeats, _elsewhere)
        if (batch, repeats) == DEFAULT_TIMING:
            _known[backbone] = profile
    return profile


def refine_speed_when_quiet(backbone: str, quiet: Callable[[], bool], tries: int = 3, every_s: float = 30.0
                            ) -> threading.Thread:
    """Time ``backbone`` again, ``tries`` times, each when ``quiet()`` says nothing trains (checked every
    ``every_s`` seconds), keeping each figure's fastest. A server's first timing runs as the class arrives
    (workers warming up, uploads being read): in chromium one such timing put a 45 s ladder at 1 min 40 s."""
    def refine() -> None:
        done = 0
        while done < tries:
            time.sleep(every_s)
            if not quiet():
                continue
            try:
                fresh = _time_backbone(backbone, *DEFAULT_TIMING, _elsewhere)
            except Exception as e:  # noqa: BLE001  the first timing stays
                log.warning("could not time %s again: %s", backbone, e)
                return
            with _measuring:
                old = _known.get(backbone)
                _known[backbone] = fresh if old is None else _fastest(old, fresh)
            done += 1
    thread = threading.Thread(target=refine, name="tlcore-speed-refine", daemon=True)
    thread.start()
    return thread


def _fastest(a: SpeedProfile, b: SpeedProfile) -> SpeedProfile:
    """Each figure's smaller value (other work only ever slows a timing down); the stage shares of the
    faster torch pass."""
    return dataclasses.replace(
        a, ms_per_image=min(a.ms_per_image, b.ms_per_image),
        torch_ms_per_image=min(a.torch_ms_per_image, b.torch_ms_per_image),
        augment_ms_per_image=min(a.augment_ms_per_image, b.augment_ms_per_image),
        stage_share=(a if a.torch_ms_per_image <= b.torch_ms_per_image else b).stage_share)


class SpeedUnknown(TLError):
    """The backbone's speed is not measured in this process yet (a measurement has started)."""


_known: dict[str, SpeedProfile] = {}
_started: set[str] = set()


def known_speed(backbone: str) -> SpeedProfile:
    """The backbone's measured speed without waiting for it: a click's path (queueing a run, its wait
    estimate) never builds a backbone. Raises ``SpeedUnknown`` until it is measured, having started the
    measurement off this thread once."""
    if (profile := _known.get(backbone)) is not None:
        return profile
    with _measuring_started:
        if backbone not in _started:
            _started.add(backbone)
            threading.Thread(target=_measure_quietly, args=(backbone,), name="tlcore-speed", daemon=True).start()
    raise SpeedUnknown(f"The speed of {backbone} on this server is being measured.")


def _measure_quietly(backbone: str) -> None:
    try:
        measure_speed(backbone)
    except Exception as e:  # a backbone that cannot be timed here: estimates stay guesses
        log.warning("could not measure the speed of %s: %s", backbone, e)


_measuring_started = threading.Lock()


def _time_backbone(backbone: str, batch: int, repeats: int, via: Callable[[str], SpeedProfile] | None
                   ) -> SpeedProfile:
    """One timing (through ``via`` when given, for the default batch and repeats); ``_measured`` keeps the first
    per process."""
    if via is None or (batch, repeats) != DEFAULT_TIMING:
        return _measure_speed(backbone, batch, repeats)
    try:
        return via(backbone)
    except Exception as e:  # noqa: BLE001  a worker that could not time it: timed here rather than never
        log.warning("timing %s in a worker failed (%s); timing it here", backbone, e)
        return _measure_speed(backbone, batch, repeats)


_measured = functools.lru_cache(maxsize=32)(_time_backbone)  # the first timing per process


def _measure_speed(backbone: str, batch: int, repeats: int) -> SpeedProfile:
    spec = get_backbone_spec(backbone)
    body = spec.build().eval().to(resolve_device()).to(memory_format=torch.channels_last)
    device = next(body.parameters()).device
    size = spec.preprocess.input_size
    pixels = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)  # what both runtimes are timed on

    def x() -> torch.Tensor:  # as frozen_forward feeds them: scaled to [0, 1], inside the timed pass
        return to_float(pixels, device)
    spent = [0.0] * len(body.stages)
    starts: dict[int, float] = {}
    handles = []
    for k, stage in enumerate(body.stages):
        for prefix in stage.prefixes:
            try:
                module = body.net.get_submodule(prefix)
            except AttributeError:
                continue  # a bare parameter (e.g. ViT's class token) costs no time of its own
            handles.append(module.register_forward_pre_hook(lambda *_a, k=k: starts.__setitem__(k, time.perf_counter())))
            handles.append(module.register_forward_hook(
                lambda *_a, k=k: spent.__setitem__(k, spent[k] + time.perf_counter() - starts[k])))
    with torch.inference_mode():
        body(x())  # warm-up (allocations, kernel choice)
        spent = [0.0] * len(body.stages)
        passes = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            body(x())
            passes.append(time.perf_counter() - t0)
        total = min(passes) * repeats
    for h in handles:
        h.remove()
    staged = sum(spent) or 1.0
    torch_ms = 1000 * total / (repeats * batch)
    fast_ms, runtime = torch_ms, "torch"
    if spec.availability() != "download" and runtime_for(device) != "torch":
        frozen_forward(backbone, pixels, device=device)  # warm-up (and the one-off export)
        passes = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            frozen_forward(backbone, pixels, device=device)
            passes.append(time.perf_counter() - t0)
        fast_ms, runtime = 1000 * min(passes) / batch, runtime_for(device)
    passes = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        augment(pixels, torch.rand(batch, AUGMENT_DRAWS))
        passes.append(time.perf_counter() - t0)
    return SpeedProfile(backbone, fast_ms, torch_ms, tuple(s / staged for s in spent), runtime, batch,
                        1000 * min(passes) / batch)


RUN_OVERHEAD_S = 1.5  # a worker taking a run that trains the body, loading and saving it (calibrated with it)
#: the same for a frozen-body run (its head alone is saved): 0.05-0.1 s through the workers on this 2-core
#: machine (2026-12-05); 1.5 s put a single feature extraction of 21 photos at 2.1 s for 0.7 s measured
FROZEN_RUN_OVERHEAD_S = 0.1


def run_overhead_s(config: TrainConfig) -> float:
    """Seconds of a run that are neither its features nor its training: a worker's hand-off, load and save."""
    return FROZEN_RUN_OVERHEAD_S if config.mode in FROZEN_BODY_MODES else RUN_OVERHEAD_S


class Calibration:
    """How much longer (or shorter) than the speed model's figure the runs that train the body took on
    this server lately. It absorbs what the one-off measurement cannot know: this CPU's backward pass, a
    server busy with more than its workers (workers sharing the cores are the runner's forecast's to add: a
    run's seconds here are its work, each stretch weighed by its share of the cores). Estimates are the
    model's figure times ``factor()``: the geometric
    mean of the last ``window`` runs' measured / modelled seconds, with the model's own figure (1.0)
    counted as one run more. So one run that happened to be slow (a worker's first fine-tune of a backbone
    exports its prefix; the benchmark once saw a single run move the next ladder's estimate to 2.4 times
    its time) moves the estimates half way, and a server that stays busy moves them nearly all of it."""

    def __init__(self, window: int = 8) -> None:
        self._ratios: collections.deque[float] = collections.deque(maxlen=window)
        self._lock = threading.Lock()

    def observe(self, config: TrainConfig, num_images: int, seconds: float) -> None:
        """A completed run of ``config`` on ``num_images`` images took ``seconds`` from start to saved (as if
        alone: ``JobTracker.work_done``)."""
        if config.mode in FROZEN_BODY_MODES:
            return  # seconds of work, mostly cached features: nothing to learn about training speed
        try:  # on the runner's event thread: never a measurement there
            modelled = _trained_seconds(config, num_images, known_speed(config.backbone))
        except SpeedUnknown:
            return
        if modelled > 0:
            self.add_ratio((seconds - RUN_OVERHEAD_S) / modelled)

    def add_ratio(self, ratio: float) -> None:
        """A run took ``ratio`` times the speed model's figure (kept within 0.1-10)."""
        with self._lock:
            self._ratios.append(min(10.0, max(0.1, ratio)))

    def factor(self) -> float:
        with self._lock:
            return math.exp(sum(math.log(r) for r in self._ratios) / (len(self._ratios) + 1))

    def reset(self) -> None:
        with self._lock:
            self._ratios.clear()


CALIBRATION = Calibration()


def _trained_seconds(config: TrainConfig, num_images: int, speed: SpeedProfile) -> float:
    """The speed model's seconds of a run that trains the body: its trainings (one, plus one per fold of
    its cross-validation, each on (k - 1) / k of the images) before calibration."""
    views = config.augment_views if config.augment else 1
    folds = config.resolved_score_folds()
    total = 0.0
    for n in [num_images] + [num_images * (folds - 1) / folds] * folds if folds else [num_images]:
        once, per_epoch = estimate_epoch_seconds(speed, round(n), config.mode, config.resolved_freeze_depth(), views)
        total += once + per_epoch * config.epochs
    return total


def estimate_run_seconds(config: TrainConfig, num_images: int, features_cached: bool = False,
                         wait: bool = True, classes: int | None = None) -> float:
    """Seconds a whole run of ``config`` on ``num_images`` images should take here, from a worker taking
    it to the run saved; ``features_cached``: a frozen-body run whose images' features were computed by
    an earlier run (of the same comparison). ``wait=False`` (a click's path) raises ``SpeedUnknown``
    rather than measure the backbone. ``classes``: how many classes the images are in (feature extraction
    uses augmented views only with few images per class)."""
    speed = measure_speed(config.backbone) if wait else known_speed(config.backbone)
    if config.mode in FROZEN_BODY_MODES:  # prototypes and their cross-validation: milliseconds
        views = fe_views(config, num_images, classes) if config.mode == "feature-extraction" else 0  # never cached before
        forwards = (0 if features_cached else num_images) + num_images * views
        return (run_overhead_s(config) + estimate_epoch_seconds(speed, forwards, config.mode, 0)[0]
                + num_images * views * speed.augment_ms_per_image / 1000
                + (head_fit_seconds(num_images, views, classes) if config.mode == "feature-extraction" else 0.0))
    return run_overhead_s(config) + _trained_seconds(config, num_images, speed) * CALIBRATION.factor()


#: Feature extraction's head: its fits and their repeated cross-validation (``heads.head_run``) cost about this
#: much per row (an image or a view) and class, per repeat of the score's folds plus HEAD_FIT_FIXED_REPEATS for the
#: fits on the training split and on every image, plus a fixed part. Fitted on this project's 2-core machine to
#: 24 runs on cached features (2026-12-06, quiet, after the fits stopped at scikit-learn's tolerance): 10-300 images
#: of 2, 3, 5 and 10 classes of four real sets, with and without views; measured / this model 0.43-1.40 (photo
#: crops, whose classes part at once, converge fastest); the model before, fitted when the fits ran 300 times
#: stricter, gave 2-6 times these runs' time.
HEAD_FIT_S_PER_ROW_CLASS = 1.48e-5
HEAD_FIT_FIXED_REPEATS = 1.74
HEAD_FIT_FIXED_S = 0.031


def head_fit_seconds(num_images: int, views: int, classes: int | None) -> float:
    """Seconds of a feature-extraction head's fits on ``num_images`` images with ``views`` views each."""
    repeats = score_repeats(num_images, TrainConfig.score_repeats)
    return HEAD_FIT_FIXED_S + HEAD_FIT_S_PER_ROW_CLASS * num_images * (1 + views) * (classes or 5) * (
        HEAD_FIT_FIXED_REPEATS + repeats)


def estimate_epoch_seconds(profile: SpeedProfile, num_images: int, mode: str, freeze_depth: int,
                           views: int = 4) -> tuple[float, float]:
    """(seconds once before the first epoch, seconds per epoch) of training on ``num_images``.

    Frozen work runs once, on the fast runtime: the whole body for feature extraction, the frozen
    leading stages (``views`` augmented views per image) for a fine-tune. Stages that learn cost
    ``LEARNING_COST`` times their torch forward pass (backward, update and train-mode overhead:
    augmentation, dropout, batch-norm statistics): fitted on EfficientNet-Lite0, 2-core CPU, to single
    fine-tune and scratch runs (benchmark section 9); ``Calibration`` follows the server's real runs from there.
    """
    if mode in FROZEN_BODY_MODES:
        return num_images * profile.ms_per_image / 1000, 0.0
    frozen_share = 0.0 if mode == "scratch" else sum(profile.stage_share[:freeze_depth])
    once = (num_images * views * (profile.ms_per_image * frozen_share + profile.augment_ms_per_image) / 1000
            if frozen_share else 0.0)
    per_epoch = num_images * profile.torch_ms_per_image / 1000 * (1 - frozen_share) * LEARNING_COST[mode == "scratch"]
    return once, per_epoch


#: What a learning stage costs per image and epoch, in its torch forward passes: (fine-tune, from scratch).
#: One factor (3.5) for both put every fine-tune of benchmark section 9 at 0.74-0.82 of its time (2026-12-05;
#: eight runs, with this machine's speed profile as the benchmark and as a fresh process measured it), while
#: scratch runs stayed at 0.85-1.16 with a fresh profile: a fine-tune's later, narrower stages cost more per
#: forward pass to train than the early, wide ones a scratch run trains too.
LEARNING_COST = (4.3, 3.5)
