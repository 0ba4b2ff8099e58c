"""What a run says while it trains and when it ends: ``Progress``, ``BatchEnd``, ``EpochEnd`` and ``RunFinished``
(how it ended, why in a sentence, a typed ``Stop``), and ``RunResult``: what it measured (``RunFacts``) and its
model. The one vocabulary of the engine, the workers, the runners, run.json and the pages. And ``Setup``: what every
run starts from, and the one place a finished run's ``RunResult`` is built."""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ..core.measure import Score
from ..data.images import ImageSet
from ..models.model import TransferModel, count_params
from .config import FROZEN_BODY_MODES, Status, TrainConfig


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
    score: Score | None = None  # the accuracy to show: on how many held-out images, how sure (``tlcore.core.measure``)
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


def heldout_of(probs: dict[int, torch.Tensor], labels: torch.Tensor, digests: list[str]
               ) -> tuple[tuple[str, int, tuple[float, ...]], ...]:
    """``RunFacts.heldout`` from each scored image's out-of-fold probabilities."""
    return tuple((digests[i], int(labels[i]), tuple(round(v, 5) for v in p.tolist())) for i, p in probs.items())


@dataclass
class Setup:
    """What every mode starts from (``train._setup``): the trainable images, the split, the device and the model."""

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

    def result(self, history: Sequence[EpochEnd], best_epoch: int, **facts: Any) -> RunResult:
        """The run's result, built here for every mode: what it shares with this setup (its model, classes, config,
        images, time so far) and its best epoch's validation figures; ``facts``, the fields only the run knows (the
        parameters it trained, what ran the frozen part and how, its score), and any it sets otherwise (a frozen
        body's ``train_indices``: every image it was fitted on in the end)."""
        return RunResult(**{
            "model_ref": self.model, "classes": tuple(self.data.classes), "config": self.cfg, "history": tuple(history),
            "best_epoch": best_epoch, "val_accuracy": history[best_epoch - 1].val_acc,
            "train_seconds": time.perf_counter() - self.start, "num_images": len(self.train_idx) + len(self.val_idx),
            "train_indices": tuple(self.train_idx), "val_indices": tuple(self.val_idx),
            "total_params": count_params(self.model), "freeze_depth": self.depth, **facts})
