"""tlcore: the Transfer Learning Studio engine. Never imports streamlit.

Modules, one job each: ``backbones`` (registry, weights), ``data`` (checked, decoded images),
``model`` (body + head, freezing), ``train`` (event generator), ``evaluate`` (metrics, predictions,
Grad-CAM), ``checkpoint`` (save/load/export), ``jobs`` (background training), ``compare``
(strategies side by side), ``project`` (a user's saved work), ``cli``.
"""
from .backbones import (DEFAULT_BACKBONE, BackboneSpec, Body, Preprocess, create_body, ensure_weights,
                        get_backbone_spec, imagenet_categories, import_weights, list_backbones,
                        register_backbone)
from .checkpoint import (SavedRun, archive_run, export_onnx, export_torchscript, load_run, read_meta, save_run,
                         unpack_run_archive)
from .data import (ImageItem, ImageSet, Rejected, check_trainable, decode_image, load_data, load_folder, load_zip,
                   stratified_split)
from .errors import BadImageError, TLError, WeightsUnavailableError
from .evaluate import Evaluation, Prediction, evaluate, grad_cam, imagenet_top, overlay_cam, predict
from .jobs import SLOTS, JobSnapshot, SlotPool, TrainingJob
from .model import TransferModel, build_model, count_params, freeze
from .train import (FEATURES, MODES, BatchEnd, EpochEnd, Event, Progress, RunFinished, RunResult, TrainConfig,
                    run_to_end, train)

__all__ = [
    "DEFAULT_BACKBONE", "FEATURES", "MODES", "BackboneSpec", "BadImageError", "BatchEnd", "Body", "EpochEnd",
    "Evaluation", "Event", "ImageItem", "ImageSet", "JobSnapshot", "Prediction", "Preprocess", "Progress",
    "Rejected", "RunFinished", "RunResult", "SLOTS", "SavedRun", "SlotPool", "TLError", "TrainConfig",
    "TrainingJob", "TransferModel", "WeightsUnavailableError", "archive_run", "build_model", "check_trainable",
    "count_params", "create_body", "decode_image", "ensure_weights", "evaluate", "export_onnx",
    "export_torchscript", "freeze", "get_backbone_spec", "grad_cam", "imagenet_categories", "imagenet_top",
    "import_weights", "list_backbones", "load_data", "load_folder", "load_run", "load_zip", "overlay_cam", "predict",
    "read_meta", "register_backbone", "run_to_end", "save_run", "stratified_split", "train",
    "unpack_run_archive",
]
