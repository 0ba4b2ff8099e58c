"""What a run is asked to do: the five modes (the ladder), their names in words, how a run ends, and
``TrainConfig`` (one run's settings, validated before it starts)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..core.errors import TLError
from ..models.backbones import DEFAULT_BACKBONE, get_backbone_spec

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
    # How the run is scored (``tlcore.core.measure``): k-fold cross-validation over every image. None: 5 folds for
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


def split_method(cfg: TrainConfig) -> str:
    if cfg.max_images_per_class is not None:
        return f"every image outside the {cfg.max_images_per_class} per class it trained on"
    return "the validation split (which also chose the best epoch)"
