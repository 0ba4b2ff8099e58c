"""tlcore: the Transfer Learning Studio engine. Never imports streamlit.

This file is the whole public surface: the app's pages and the CLI use only what is imported
here (a test holds the pages to it). Modules, one job each:

* ``backbones``  registry of pretrained bodies, their preprocessing, stages and weights;
* ``data``       checked, decoded images (folders, zips, uploads) and the train/validation split;
* ``model``      body + new head, freezing by stage;
* ``train``      training as a generator of typed events, in five modes;
* ``zeroshot``   a classifier from class names alone (ImageNet classes weighed and summed per class);
* ``evaluate``   metrics, predictions, Grad-CAM, the backbone's own ImageNet guesses;
* ``checkpoint`` runs on disk (safetensors + JSON) and checked TorchScript/ONNX exports;
* ``runner``     training in worker processes (submit, snapshot, stop), fair scheduling;
* ``runtime``    the fastest installed runtime for frozen pretrained weights;
* ``compare``    strategies side by side on one split, embedding maps;
* ``verdict``    the lesson in words: two models compared photo by photo, the ladder's first line;
* ``classlab``   the class as the lab: every student's ladders, studies and challenge entries pooled;
* ``clean``      the data check (likely wrong labels, duplicates, outliers) and the user's review of it;
* ``profile``    measured speed, epoch-time estimates;
* ``project``    a user's saved work (images, settings, runs) and the live projects of a server;
* ``report``     a self-contained HTML report of a run;
* ``charts``     the training curves, one colour per series in the app and the report;
* ``webexport``  a run's model as a web app that runs in any browser, offline (ONNX Runtime Web);
* ``challenge``  the teacher's hidden test set and the class leaderboard;
* ``lesson``     the server's addresses for students, the class kit, the class's progress, teacher links;
* ``transfer``   before training: LogME, ImageNet closeness, a linear probe per stage, each stage's maps;
* ``lrfind``     the learning-rate range test;
* ``analysis``   those as runner jobs, their results on disk;
* ``cli``, ``bench``.
"""
from .core.settings import yield_idle_cores

yield_idle_cores()  # before anything imports torch (its threads then sleep, not spin, while they wait)

from .analysis.clean import Action, DataCheck, Finding, Review, check_backbone, check_data, check_key, review_summary
from .analysis.compare import (
                        COMPARE_EPOCHS,
                        DEFAULT_SHOTS,
                        STRATEGY_TITLES,
                        available_shots,
                        race_facts,
                        shared_split,
                        shots_note,
                        top1_finding,
)
from .analysis.lrfind import LrFind, lr_find
from .analysis.profile import (
                        SpeedProfile,
                        SpeedUnknown,
                        estimate_epoch_seconds,
                        estimate_run_seconds,
                        known_speed,
                        measure_speed,
                        measure_speed_elsewhere,
                        refine_speed_when_quiet,
)
from .analysis.transfer import StageProbe, TransferScore, logme, probe_stages, stage_maps, transfer_score
from .analysis.verdict import Verdict, headline, ladder_verdicts, names_worth, photos_changed, study_finding, versus
from .core.errors import BadImageError, TLError, WeightsUnavailableError
from .core.limits import LimitError, Limits, folder_mb
from .core.measure import Paired, Score, accuracy_interval, paired
from .core.settings import Settings, settings
from .data.images import (
                        IMAGE_SUFFIXES,
                        ImageItem,
                        ImageSet,
                        Rejected,
                        check_trainable,
                        decode_image,
                        load_data,
                        load_folder,
                        load_zip,
                        sklearn_digits,
                        stratified_split,
                        thumbnail,
)
from .engine.checkpoint import (
                        RunMeta,
                        SavedRun,
                        archive_run,
                        export_onnx,
                        export_torchscript,
                        load_run,
                        save_run,
                        unpack_run_archive,
)
from .engine.config import FROZEN_BODY_MODES, MODE_TITLES, MODES, TrainConfig
from .engine.evaluate import Evaluation, Familiarity, Prediction, evaluate, grad_cam, imagenet_top, overlay_cam, predict
from .engine.events import BatchEnd, EpochEnd, Event, Progress, RunFinished, RunResult
from .engine.features import FEATURES, VIEWS_MAX_IMAGES, fe_views
from .engine.train import run_to_end, train
from .jobs.analyses import AnalysisState, LiveAnalyses, time_on_runner
from .jobs.runner import LocalRunner, get_runner, set_runner
from .jobs.spec import Job, JobSnapshot, JobSpec, Runner
from .models.backbones import (
                        DEFAULT_BACKBONE,
                        BackboneSpec,
                        Body,
                        Preprocess,
                        create_body,
                        ensure_weights,
                        frozen_body,
                        get_backbone_spec,
                        imagenet_categories,
                        import_weights,
                        list_backbones,
                        register_backbone,
                        stage_param_counts,
)
from .models.model import TransferModel, build_model, count_params, freeze
from .models.zeroshot import edit_mapping, mapping_method, mapping_weights, suggest_mapping, unmapped
from .studio.challenge import Challenge, Entry, HiddenSets, create_challenge, current_challenge
from .studio.charts import SERIES_COLOURS, training_figures
from .studio.classlab import ClassSummary, PairResult, class_summary
from .studio.lesson import (
                        ClassKit,
                        StudentProgress,
                        TeacherKeys,
                        class_progress,
                        create_kit,
                        current_kit,
                        folder_zip,
                        lan_addresses,
                        server_urls,
)
from .studio.project import Project, import_run
from .studio.registry import ProjectRegistry
from .studio.report import USAGE, report_html
from .studio.server import SERVER, Server
from .studio.run_views import (
                        ComparisonKind,
                        RunRecord,
                        RunViews,
                        describe,
                        embedding_map,
                        export_model,
                        familiarity,
                        model_card,
                        run_archive,
                        validation_report,
)
from .studio.webexport import WebExport, export_web, lan_url, publish_web

__all__ = [
    # backbones
    "DEFAULT_BACKBONE", "BackboneSpec", "Body", "Preprocess", "create_body", "ensure_weights", "frozen_body",
    "get_backbone_spec", "imagenet_categories", "import_weights", "list_backbones", "register_backbone",
    "stage_param_counts",
    # data
    "IMAGE_SUFFIXES", "ImageItem", "ImageSet", "Rejected", "check_trainable", "decode_image", "load_data",
    "load_folder", "load_zip", "sklearn_digits", "stratified_split", "thumbnail",
    # errors
    "BadImageError", "TLError", "WeightsUnavailableError",
    # what one student may use of a shared server
    "LimitError", "Limits", "folder_mb", "Settings", "settings",
    # model and training
    "FEATURES", "FROZEN_BODY_MODES", "MODE_TITLES", "MODES", "BatchEnd", "EpochEnd", "Event", "Progress", "RunFinished", "RunResult", "TrainConfig", "VIEWS_MAX_IMAGES", "fe_views",
    "TransferModel", "build_model", "count_params", "freeze", "run_to_end", "train",
    # the class challenge
    "Challenge", "Entry", "HiddenSets", "create_challenge", "current_challenge",
    # running a lesson: addresses for students, the class kit, the class's progress, teacher links
    "ClassKit", "StudentProgress", "class_progress", "create_kit", "current_kit", "folder_zip", "lan_addresses",
    "server_urls", "TeacherKeys",
    # the stakeholder report
    "USAGE", "report_html",
    # the training curves (one colour per series, in the app and the report)
    "SERIES_COLOURS", "training_figures",
    # the web app export
    "WebExport", "export_web", "lan_url", "publish_web",
    # zero-shot
    "edit_mapping", "mapping_method", "mapping_weights", "suggest_mapping", "unmapped",
    # honest numbers
    "Paired", "Score", "accuracy_interval", "paired",
    # the lesson in words: photo-by-photo verdicts, the ladder's first line, what the class names were worth
    "Verdict", "headline", "ladder_verdicts", "names_worth", "photos_changed", "study_finding", "versus",
    # the class as the lab: every project's ladders, studies and challenge entries pooled
    "ClassSummary", "PairResult", "class_summary",
    # evaluation
    "Evaluation", "Familiarity", "Prediction", "evaluate", "grad_cam", "imagenet_top", "overlay_cam", "predict",
    # runs on disk
    "SavedRun", "archive_run", "export_onnx", "export_torchscript", "load_run", "RunMeta", "save_run",
    "unpack_run_archive",
    # training in worker processes
    "Job", "JobSnapshot", "JobSpec", "LocalRunner", "Runner", "get_runner", "set_runner",
    # the data check and its review
    "Action", "DataCheck", "Finding", "Review", "check_backbone", "check_data", "check_key", "review_summary",
    # comparisons and speed
    "COMPARE_EPOCHS", "DEFAULT_SHOTS", "STRATEGY_TITLES", "SpeedProfile", "SpeedUnknown", "available_shots", "shots_note", "estimate_epoch_seconds", "estimate_run_seconds",
    "known_speed", "measure_speed", "measure_speed_elsewhere", "time_on_runner", "refine_speed_when_quiet", "race_facts", "shared_split", "top1_finding",
    # before training: which backbone fits, how general each stage is, what each sees, the learning rate
    "AnalysisState", "LiveAnalyses", "LrFind", "StageProbe", "TransferScore", "logme", "lr_find",
    "probe_stages", "stage_maps", "transfer_score",
    # the web server's state in one owner: projects, analyses, teacher keys, hidden challenge sets
    "SERVER", "Server",
    # projects (what the app's pages work on)
    "ComparisonKind", "Project", "ProjectRegistry", "RunRecord", "RunViews", "describe", "embedding_map", "export_model", "familiarity", "import_run",
    "model_card",
    "run_archive", "validation_report",
]
