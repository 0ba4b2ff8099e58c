"""Saving and loading runs, and exporting models that are checked against the in-app model.

A run folder holds ``model.safetensors`` (a state_dict: tensors only, nothing that executes) and
``run.json`` (classes, backbone, preprocessing, config, metrics, history). Loading rebuilds the
architecture from the backbone registry without downloading anything and loads strictly.
"""
from __future__ import annotations

import copy
import dataclasses
import io
import json
import math
import shutil
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .backbones import Preprocess, frozen_body, get_backbone_spec, weights_digest
from .data import ZipLimits, check_zip_total, open_zip, zip_member_problem
from .errors import TLError
from .measure import Score
from .model import TransferModel, build_model
from .storage import ByteLRU, atomic_write, budgeted
from .train import FROZEN_BODY_MODES, EpochEnd, RunResult, TrainConfig

FORMAT = "tlcore-run/1"
WEIGHTS = "model.safetensors"
META = "run.json"


@dataclass(frozen=True)
class SavedRun:
    """A model with everything needed to use it."""

    model: TransferModel = field(repr=False)
    classes: tuple[str, ...]
    backbone: str
    preprocess: Preprocess
    meta: dict


def _pretrained_digest(config: TrainConfig) -> str | None:
    """The pretrained weights a run started from (None from scratch): a saved body that was frozen
    can then refer to them instead of being written again."""
    return None if config.mode == "scratch" else weights_digest(config.backbone)


def run_metadata(result: RunResult, status: str = "completed", extra: dict | None = None) -> dict:
    spec = get_backbone_spec(result.config.backbone)
    return {
        "format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "status": status,
        "classes": list(result.classes), "backbone": spec.name, "backbone_title": spec.title,
        "preprocess": dataclasses.asdict(spec.preprocess), "config": dataclasses.asdict(result.config),
        "metrics": {"val_accuracy": result.val_accuracy, "best_epoch": result.best_epoch,
                    "train_seconds": result.train_seconds, "num_images": result.num_images,
                    "trainable_params": result.trainable_params, "total_params": result.total_params,
                    "freeze_depth": result.freeze_depth, "runtime": result.runtime, "how": result.how,
                    "score": None if result.score is None else result.score.to_json()},
        "heldout": [list(h) for h in result.heldout],
        "history": [e.to_json() for e in result.history],
        "split": {"train": list(result.train_indices), "val": list(result.val_indices)},
        "weights_digest": _pretrained_digest(result.config),
        **(extra or {}),
    }


def partial_meta(config: TrainConfig, classes: list[str], epoch: EpochEnd, extra: dict | None = None) -> dict:
    """Metadata of a run still in progress: enough to reload and evaluate its best epoch after a crash.
    Its weights file holds only what trained (``partial.frozen_stages`` stages come from the
    pretrained weights named by ``weights_digest``)."""
    spec = get_backbone_spec(config.backbone)
    return {"format": FORMAT, "status": "interrupted", "classes": list(classes), "backbone": config.backbone,
            "preprocess": dataclasses.asdict(spec.preprocess), "config": dataclasses.asdict(config),
            "metrics": {"val_accuracy": epoch.val_acc, "best_epoch": epoch.epoch, "train_seconds": epoch.seconds},
            "history": [epoch.to_json()], "weights_digest": _pretrained_digest(config),
            "partial": {"frozen_stages": config.resolved_freeze_depth()}, **(extra or {})}


def trained_state(model: TransferModel, frozen_stages: int) -> dict[str, torch.Tensor]:
    """The state a run changed, as CPU copies: the head, and the body's stages from ``frozen_stages``
    on (the whole model when nothing was frozen; the head alone for a frozen body)."""
    body = model.body
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("body.net.") and body.stage_of(k[len("body.net."):]) < frozen_stages:
            continue
        out[k] = v.detach().cpu().contiguous().clone()
    return out


class Checkpointer:
    """Keeps a running run's best epoch on disk, cheaply: only what trained (the head alone when the
    body is frozen), and at most once per ``min_interval`` seconds (a best epoch that comes sooner
    waits, as a copy in memory, for the next event after the interval). Feed it every event."""

    def __init__(self, folder: str | Path, config: TrainConfig, classes: list[str], extra: dict | None = None,
                 min_interval: float = 1.0) -> None:
        self.folder, self.config, self.classes, self.extra = Path(folder), config, classes, extra
        self.min_interval = min_interval
        self.depth = config.resolved_freeze_depth()
        self._pending: tuple[dict[str, torch.Tensor], dict] | None = None
        self._last = -math.inf
        self.writes = 0

    def __call__(self, event: object) -> None:
        if isinstance(event, EpochEnd) and event.best and event.model is not None:
            self._pending = (trained_state(event.model, self.depth),
                             partial_meta(self.config, self.classes, event, self.extra))
        if self._pending is not None and time.monotonic() - self._last >= self.min_interval:
            self.flush()

    def flush(self) -> None:
        """Write the pending best epoch now, if there is one."""
        if self._pending is None:
            return
        state, meta = self._pending
        self._pending = None
        _write(self.folder, state, meta)
        self._last = time.monotonic()
        self.writes += 1


def _write(folder: Path, state: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write a state_dict and its metadata into ``folder``, each file atomically (weights first)."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / WEIGHTS, lambda p: save_file(state, p))
    atomic_write(folder / META, lambda p: Path(p).write_text(json.dumps(meta, indent=1)))
    return folder


def save_run(result: RunResult, folder: str | Path, status: str = "completed", extra: dict | None = None) -> Path:
    """Write a finished run, complete (every weight, so the folder stands on its own), to ``folder``."""
    return _write(Path(folder), trained_state(result.model, 0), run_metadata(result, status, extra))


def read_meta(folder: str | Path) -> dict:
    path = Path(folder) / META
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise TLError(f"{Path(folder).name} is not a Transfer Learning Studio run: {META} is missing or "
                      f"unreadable ({e}).") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise TLError(f"{Path(folder).name} is not a Transfer Learning Studio run (its {META} has no "
                      f"'format': '{FORMAT}').")
    return meta


def load_run(folder: str | Path) -> SavedRun:
    """Rebuild a saved run's model. Refuses anything that is not a run of ours."""
    folder = Path(folder)
    meta = read_meta(folder)
    try:
        classes = tuple(str(c) for c in meta["classes"])
        backbone = str(meta["backbone"])
    except (KeyError, TypeError):
        raise TLError(f"{folder.name}/{META} lacks its classes or backbone.") from None
    try:
        state = load_file(folder / WEIGHTS)
    except (SafetensorError, OSError, ValueError) as e:
        raise TLError(f"{folder.name}/{WEIGHTS} is missing or not a safetensors file ({e}).") from None
    model = _rebuild(folder, meta, backbone, classes, state)
    model.eval()
    return SavedRun(model, classes, backbone, get_backbone_spec(backbone).preprocess, meta)


def _rebuild(folder: Path, meta: dict, backbone: str, classes: tuple[str, ...], state: dict[str, torch.Tensor]
             ) -> TransferModel:
    """The saved model. A frozen-body run made from the pretrained weights this machine has attaches
    its head to the shared pretrained body (no second copy; inference on the fast runtime); a
    partial checkpoint takes its frozen stages from those weights; anything else loads whole."""
    config = meta.get("config") if isinstance(meta.get("config"), dict) else {}
    digest = meta.get("weights_digest")
    partial = meta.get("partial") if isinstance(meta.get("partial"), dict) else None
    spec = get_backbone_spec(backbone)
    if digest is not None and (config.get("mode") in FROZEN_BODY_MODES or partial):
        if spec.availability() == "download" or weights_digest(backbone) != digest:
            if partial:
                raise TLError(f"{folder.name} was saved during training and needs {spec.title}'s pretrained "
                              f"weights, which are not on this machine (or differ from those it trained with).")
        elif config.get("mode") == "zero-shot":  # nothing trained: the pretrained ImageNet head, regrouped
            from .zeroshot import zero_shot_model

            return zero_shot_model(backbone, classes, config.get("zero_shot_map") or {})
        elif config.get("mode") in FROZEN_BODY_MODES:
            model = TransferModel(frozen_body(backbone), len(classes), spec.preprocess)
            _load(folder, model.head, {k[5:]: v for k, v in state.items() if k.startswith("head.")}, backbone,
                  classes, strict=True)
            return model
        else:
            model = build_model(backbone, len(classes), pretrained=True)
            frozen = set(model.state_dict()) - set(trained_state(model, int(partial["frozen_stages"])))
            missing = _load(folder, model, state, backbone, classes, strict=False)
            if not set(missing) <= frozen:
                raise TLError(f"The weights in {folder.name} lack {sorted(set(missing) - frozen)[:3]}.")
            return model
    model = build_model(backbone, len(classes), pretrained=False)
    _load(folder, model, state, backbone, classes, strict=True)
    return model


def _load(folder: Path, module: torch.nn.Module, state: dict[str, torch.Tensor], backbone: str,
          classes: tuple[str, ...], strict: bool) -> list[str]:
    try:
        result = module.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        raise TLError(f"The weights in {folder.name} do not fit a {backbone} model with {len(classes)} "
                      f"classes ({str(e).splitlines()[0]}).") from None
    if result.unexpected_keys:
        raise TLError(f"The weights in {folder.name} do not fit a {backbone} model: unexpected "
                      f"{result.unexpected_keys[:3]}.")
    return list(result.missing_keys)


class ModelCache:
    """Models of saved runs, loaded from their folders on first use and kept in a ``ByteLRU`` (sized by
    what they hold of their own: a model on the shared pretrained body holds only its head); dropped
    ones load again from disk when needed."""

    def __init__(self, lru: ByteLRU[tuple[str, int], TransferModel]) -> None:
        self._models = lru
        self.loads = 0

    def get(self, folder: Path) -> TransferModel:
        key = (str(folder), (folder / WEIGHTS).stat().st_mtime_ns if (folder / WEIGHTS).exists() else 0)
        model = self._models.get(key)
        if model is None:
            model = load_run(folder).model  # outside any lock: loads take time
            own = model.head if model.body.shared_pretrained else model
            self.loads += 1
            self._models.put(key, model, sum(t.nbytes for t in [*own.parameters(), *own.buffers()]))
        return model

    def clear(self) -> None:
        self._models.clear()


MODELS = ModelCache(budgeted("models", 1 / 2, keep_one=True))  # the web server's: half its budget


@dataclass(frozen=True)
class DiskModel:
    """A saved run's model, loaded (through ``MODELS``) when it is used."""

    folder: Path

    def load(self) -> TransferModel:
        return MODELS.get(self.folder)


def lazy_result(folder: str | Path) -> RunResult:
    """A saved run's result from its ``run.json`` alone; the weights load when the model is first used.
    The weights file is checked to be there and to be safetensors (its header only)."""
    folder = Path(folder)
    meta = read_meta(folder)
    try:
        with safe_open(folder / WEIGHTS, "pt") as f:
            f.keys()
    except (SafetensorError, OSError, ValueError) as e:
        raise TLError(f"{folder.name}/{WEIGHTS} is missing or not a safetensors file ({e}).") from None
    try:
        classes = tuple(str(c) for c in meta["classes"])
    except (KeyError, TypeError):
        raise TLError(f"{folder.name}/{META} lacks its classes.") from None
    return _result_from_meta(meta, DiskModel(folder), classes)


def result_from_saved(saved: SavedRun) -> RunResult:
    """A ``RunResult`` view of a loaded run (for the pages that show runs)."""
    return _result_from_meta(saved.meta, saved.model, saved.classes)


def _result_from_meta(meta: dict, model_ref: TransferModel | DiskModel, classes: tuple[str, ...]) -> RunResult:
    """Fields it does not know (from a newer version) are ignored, damaged ones are a ``TLError``."""
    try:
        m = meta.get("metrics", {})
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        epoch_fields = {f.name for f in dataclasses.fields(EpochEnd)} - {"model"}
        config = TrainConfig(**{k: v for k, v in meta.get("config", {}).items() if k in known})
        history = tuple(EpochEnd(**{k: v for k, v in e.items() if k in epoch_fields}) for e in meta.get("history", []))
        split = meta.get("split", {})
        return RunResult(
            model_ref=model_ref, classes=classes, config=config, history=history,
            best_epoch=int(m.get("best_epoch", 0)), val_accuracy=m.get("val_accuracy"),
            train_seconds=float(m.get("train_seconds", 0.0)), num_images=int(m.get("num_images", 0)),
            train_indices=tuple(split.get("train", [])), val_indices=tuple(split.get("val", [])),
            trainable_params=int(m.get("trainable_params", 0)), total_params=int(m.get("total_params", 0)),
            freeze_depth=int(m.get("freeze_depth", 0)), runtime=str(m.get("runtime", "torch")),
            how=str(m.get("how", "")),
            score=Score.from_json(m.get("score")) or (None if m.get("val_accuracy") is None else Score(
                float(m["val_accuracy"]), len(split.get("val", [])), "the validation split")),
            heldout=tuple((str(d), int(t), tuple(float(p) for p in probs)) for d, t, probs in meta.get("heldout", [])))
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise TLError(f"The run's {META} has a missing or wrong entry ({type(e).__name__}: {e}).") from None


def archive_run(folder: str | Path) -> bytes:
    """The run folder as zip bytes (for a download button)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(Path(folder).iterdir()):
            if path.is_file():
                zf.write(path, path.name)
    return buf.getvalue()


#: A saved run's zip holds two files; the largest backbone's weights are about 330 MB.
RUN_ZIP_LIMITS = ZipLimits(member_bytes=1 << 30, total_bytes=1 << 30, members=100)


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: str) -> None:
    """Stream one member to ``path`` (never the whole member in memory at once)."""
    with zf.open(info) as src, open(path, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)


def unpack_run_archive(data: bytes, folder: str | Path) -> SavedRun:
    """Load a run from zip bytes a user uploads; only our two files are read, nothing executes."""
    folder = Path(folder)
    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise TLError("The file is not a zip of a saved run (download one from the Export page).")
    try:
        with open_zip(data, RUN_ZIP_LIMITS, "This run zip") as zf:
            members = {Path(i.filename).name: i for i in zf.infolist() if not i.is_dir()}
            if META not in members or WEIGHTS not in members:
                raise TLError(f"This zip is not a saved run: it needs {META} and {WEIGHTS}.")
            ours = [members[META], members[WEIGHTS]]
            check_zip_total(ours, RUN_ZIP_LIMITS, "This run zip")
            for info in ours:
                if problem := zip_member_problem(info, RUN_ZIP_LIMITS):
                    raise TLError(f"This zip cannot be loaded: {info.filename}: {problem}.")
            folder.mkdir(parents=True, exist_ok=True)
            for info in ours:
                atomic_write(folder / Path(info.filename).name, lambda p, i=info: _copy_member(zf, i, p))
    except zipfile.BadZipFile:
        raise TLError("The file is not a zip of a saved run (download one from the Export page).") from None
    return load_run(folder)


# ----------------------------------------------------------------------------- export


def _check(reference: torch.Tensor, other: torch.Tensor, what: str, atol: float = 1e-3) -> float:
    diff = (reference - other).abs().max().item() if reference.numel() else 0.0
    if diff > atol or not torch.equal(reference.argmax(1), other.argmax(1)):
        raise TLError(f"The {what} export disagrees with the app's model (max difference {diff:.2e}); "
                      f"it was not saved.")
    return diff


def export_torchscript(model: TransferModel, path: str | Path, check_inputs: torch.Tensor) -> float:
    """Trace to TorchScript, reload the file and compare probabilities on ``check_inputs`` (floats [0, 1]).

    Returns the largest absolute difference in probabilities.
    """
    model = copy.deepcopy(model).eval().cpu()  # a copy: the body may be shared with other runs
    with torch.inference_mode():
        reference = torch.softmax(model(check_inputs), 1)
    traced = torch.jit.trace(model, check_inputs[:1], check_trace=False)

    def write(tmp: str) -> float:
        torch.jit.save(traced, tmp)
        with torch.inference_mode():
            other = torch.softmax(torch.jit.load(tmp)(check_inputs), 1)
        return _check(reference, other, "TorchScript")

    return atomic_write(Path(path), write)  # a file whose check raised never appears at ``path``


def export_onnx(model: TransferModel, path: str | Path, check_inputs: torch.Tensor) -> float:
    """Export to ONNX (dynamic batch), run it with onnxruntime and compare on ``check_inputs``."""
    import onnxruntime as ort

    model = copy.deepcopy(model).eval().cpu()
    with torch.inference_mode():
        reference = torch.softmax(model(check_inputs), 1)

    def write(tmp: str) -> float:
        torch.onnx.export(model, (check_inputs[:2],), tmp, input_names=["pixels"], output_names=["logits"],
                          dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}}, dynamo=True,
                          external_data=False, verbose=False)
        session = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        logits = session.run(None, {"pixels": check_inputs.numpy()})[0]
        return _check(reference, torch.softmax(torch.from_numpy(logits), 1), "ONNX")

    return atomic_write(Path(path), write)  # a file whose check raised never appears at ``path``
