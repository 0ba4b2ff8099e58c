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
  per class through a mapping of class names to ImageNet classes (``tlcore.models.zeroshot``).

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
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import TLError
from ..core.measure import Score, out_of_fold, repeated_folds, shot_draws
from ..core.settings import settings
from ..data.images import ImageSet, check_trainable, stratified_split, trainable_subset
from ..models.backbones import frozen_body, get_backbone_spec
from ..models.model import CHANNELS_LAST, TransferModel, build_model, count_params, freeze, set_train_mode, to_float
from ..models.runtime import frozen_forward, runtime_for
from .config import FROZEN_BODY_MODES, UNTRAINED_MODES, Status, TrainConfig, split_method
from .events import BatchEnd, EpochEnd, Event, Progress, RunFinished, Setup, Stop, heldout_of
from .features import AUGMENT_DRAWS, augment, embed_views, fe_views
from .heads import head_run, untrained_run


def resolve_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast(device: torch.device):
    """bf16 autocast on a GPU; nothing on the CPU (the training loop's and the rate finder's steps)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()



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


def pixel_plan(model: TransferModel, data: ImageSet, cfg: TrainConfig, device: torch.device) -> Plan:
    """Train on the images' pixels every epoch (nothing frozen to cache): each batch is preprocessed pixels,
    augmented when the run asks for it."""
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
    return int(settings().prefix_cache_mb * 2**20)


def prefix_plan(model: TransferModel, data: ImageSet, train_idx: list[int], val_idx: list[int], cfg: TrainConfig,
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
        return pixel_plan(model, data, cfg, device)
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


def _setup(imageset: ImageSet, cfg: TrainConfig, split: tuple[list[int], list[int]] | None) -> Setup:
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
        from ..models.zeroshot import mapping_weights, suggest_mapping, zero_shot_model

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
    return Setup(cfg, data, labels, list(train_idx), list(val_idx), device, model, depth, start)


def _frozen_run(s: Setup, should_stop: Callable[[], bool]) -> Iterator[Event]:
    """Zero-shot, few-shot and feature extraction: features once (cached), then a head computed or fitted."""
    k = fe_views(s.cfg, len(s.data), len(s.data.classes)) if s.cfg.mode == "feature-extraction" else 0
    every = yield from embed_views(s.data, s.cfg.backbone, k, s.device, should_stop)
    if every is None:
        yield RunFinished.stopped("while computing features, before any training")
        return
    feats, views = every[0].to(s.device), every[1:] if k else None
    if s.cfg.mode in UNTRAINED_MODES:
        yield untrained_run(s, feats)
    else:
        yield from head_run(s, feats, should_stop, views)


def _plan(s: Setup, should_stop: Callable[[], bool]) -> Generator[Progress, None, Plan | None]:
    """How batches reach the layers that learn: the cached outputs of the frozen leading stages when the
    body can be split there, else pixels through the whole network. None if stopped meanwhile."""
    if s.depth > 0 and s.model.body.splittable:
        return (yield from prefix_plan(s.model, s.data, s.train_idx, s.val_idx, s.cfg, s.depth, s.device,
                                        should_stop))
    return pixel_plan(s.model, s.data, s.cfg, s.device)


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


def _loop(s: Setup, plan: Plan, should_stop: Callable[[], bool]) -> Generator[Event, None, RunFinished]:
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
            with autocast(s.device):
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


def _finish(s: Setup, plan: Plan, history: list[EpochEnd], best: _Best, status: Status, reason: str,
            stop: Stop | None = None) -> RunFinished:
    """The run's end: the best epoch's weights restored, the model back on the CPU, its result."""
    if best.state is not None:
        plan.trained.load_state_dict(best.state)
    s.model.eval()
    s.model.cpu()  # free accelerator memory
    if not history:
        return RunFinished(status, reason, stop=stop)
    top = history[best.epoch - 1]
    return RunFinished(status, reason, stop=stop, result=s.result(
        history, best.epoch, trainable_params=count_params(s.model, trainable_only=True), runtime=plan.runtime,
        how=plan.how, score=None if top.val_acc is None else Score.of(top.val_acc, len(s.val_idx), split_method(s.cfg))))


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
              if not cfg.max_images_per_class else split_method(cfg) + " (a second draw, last epoch)")
    score, held = out_of_fold(pairs, lambda _tr, _te: next(it), labels, method)
    return RunFinished(finished.status, finished.reason, dataclasses.replace(
        finished.result, score=score, heldout=heldout_of(held, labels, [i.digest for i in data.items])))


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
