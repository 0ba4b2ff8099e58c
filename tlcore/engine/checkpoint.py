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
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..core.errors import TLError
from ..core.measure import Score
from ..core.storage import ByteLRU, atomic_write, budgeted
from ..data.images import ZipLimits, check_zip_total, open_zip, zip_member_problem
from ..models.backbones import Preprocess, frozen_body, get_backbone_spec, weights_digest
from ..models.model import TransferModel, build_model
from .config import FROZEN_BODY_MODES, RunState, TrainConfig
from .events import EpochEnd, ModelRef, RunFacts, RunResult

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
    meta: RunMeta  # its run.json


def _pretrained_digest(config: TrainConfig) -> str | None:
    """The pretrained weights a run started from (None from scratch): a saved body that was frozen
    can then refer to them instead of being written again."""
    return None if config.mode == "scratch" else weights_digest(config.backbone)


#: RunFacts fields run.json keeps at its top level (the rest, the metrics, go under "metrics" by name).
_LAID_OUT = {"classes", "config", "history", "heldout", "train_indices", "val_indices", "score"}


def _tuples(value):
    """A JSON value with its lists as tuples, as the frozen facts hold them."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


@dataclass(frozen=True)
class RunMeta(RunFacts):
    """A run on disk: this type *is* ``run.json`` (``to_json`` writes it, ``read`` is its one loader), for a
    finished run, a best-epoch checkpoint written during training (``partial_frozen_stages`` set) and an
    imported run alike. Its facts are the engine's (``RunFacts``: a new metric needs no change here); entries
    a newer version adds are ignored when reading, damaged ones are a ``TLError``."""

    status: RunState = "completed"  # "interrupted" while it is a checkpoint of a run still training
    reason: str = ""  # how it ended, in words (as the engine said it)
    label: str = ""  # the app's name for the run
    created: str = ""
    val_digests: tuple[str, ...] = ()  # its validation images by content (found again after a restart)
    weights_digest: str | None = None  # the pretrained weights it started from (None: from scratch)
    partial_frozen_stages: int | None = None  # a checkpoint: these leading stages come from those weights

    @property
    def backbone(self) -> str:
        return self.config.backbone

    @classmethod
    def of(cls, result: RunResult, status: RunState = "completed", reason: str = "", label: str = "",
           val_digests: tuple[str, ...] = ()) -> RunMeta:
        """A finished run's metadata."""
        return cls(**_facts(result), status=status, reason=reason, label=label,
                   created=time.strftime("%Y-%m-%dT%H:%M:%S"), val_digests=tuple(val_digests),
                   weights_digest=_pretrained_digest(result.config))

    @classmethod
    def checkpoint(cls, config: TrainConfig, classes: list[str], epoch: EpochEnd, label: str = "",
                   val_digests: tuple[str, ...] = ()) -> RunMeta:
        """A run still in progress: enough to reload and evaluate its best epoch after a crash. Its weights
        file holds only what trained (``partial_frozen_stages`` stages come from the pretrained weights)."""
        return cls(tuple(classes), config, history=(dataclasses.replace(epoch, model=None),), best_epoch=epoch.epoch,
                   val_accuracy=epoch.val_acc, train_seconds=epoch.seconds, status="interrupted", label=label,
                   created=time.strftime("%Y-%m-%dT%H:%M:%S"), val_digests=tuple(val_digests),
                   weights_digest=_pretrained_digest(config), partial_frozen_stages=config.resolved_freeze_depth())

    def result(self, model_ref: TransferModel | ModelRef) -> RunResult:
        """The engine's view of this run, with its model (or where to load it from)."""
        score = self.score or (None if self.val_accuracy is None else Score.of(
            self.val_accuracy, len(self.val_indices), "the validation split"))
        return RunResult(**{**_facts(self), "score": score}, model_ref=model_ref)

    def to_json(self) -> dict:
        spec = get_backbone_spec(self.backbone)
        out = {
            "format": FORMAT, "created": self.created, "status": self.status, "reason": self.reason,
            "label": self.label, "classes": list(self.classes), "backbone": self.backbone,
            "backbone_title": spec.title, "preprocess": dataclasses.asdict(spec.preprocess),
            "config": dataclasses.asdict(self.config),
            "metrics": {**{k: v for k, v in _facts(self).items() if k not in _LAID_OUT},
                        "score": None if self.score is None else self.score.to_json()},
            "heldout": [[d, t, list(p)] for d, t, p in self.heldout],
            "history": [e.to_json() for e in self.history],
            "split": {"train": list(self.train_indices), "val": list(self.val_indices)},
            "val_digests": list(self.val_digests), "weights_digest": self.weights_digest}
        if self.partial_frozen_stages is not None:
            out["partial"] = {"frozen_stages": self.partial_frozen_stages}
        return out

    @classmethod
    def from_json(cls, meta: dict, where: str = META) -> RunMeta:
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise TLError(f"{where} is not a Transfer Learning Studio run (it has no 'format': '{FORMAT}').")
        try:
            classes = tuple(str(c) for c in meta["classes"])
            config = dict(meta.get("config") or {})
            config.setdefault("backbone", str(meta["backbone"]))
        except (KeyError, TypeError):
            raise TLError(f"{where} lacks its classes or backbone.") from None
        try:
            m = meta.get("metrics") or {}
            split = meta.get("split") or {}
            known = {f.name for f in dataclasses.fields(TrainConfig)}
            epoch_fields = {f.name for f in dataclasses.fields(EpochEnd)} - {"model"}
            metrics = {f.name: _tuples(m[f.name]) for f in dataclasses.fields(RunFacts)
                       if f.name in m and f.name not in _LAID_OUT}
            partial = meta.get("partial") if isinstance(meta.get("partial"), dict) else None
            return cls(
                classes, TrainConfig(**{k: v for k, v in config.items() if k in known}),
                history=tuple(EpochEnd(**{k: v for k, v in e.items() if k in epoch_fields})
                              for e in meta.get("history", [])),
                score=Score.from_json(m.get("score")),
                heldout=tuple((str(d), int(t), tuple(float(p) for p in probs)) for d, t, probs in meta.get("heldout", [])),
                train_indices=tuple(split.get("train", [])), val_indices=tuple(split.get("val", [])),
                **metrics, status=str(meta.get("status", "completed")), reason=str(meta.get("reason", "")),
                label=str(meta.get("label", "")), created=str(meta.get("created", "")),
                val_digests=tuple(str(d) for d in meta.get("val_digests", [])),
                weights_digest=meta.get("weights_digest"),
                partial_frozen_stages=None if partial is None else int(partial["frozen_stages"]))
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise TLError(f"The run's {META} has a missing or wrong entry ({type(e).__name__}: {e}).") from None

    @classmethod
    def read(cls, folder: str | Path) -> RunMeta:
        """The one loader of ``run.json``."""
        path = Path(folder) / META
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise TLError(f"{Path(folder).name} is not a Transfer Learning Studio run: {META} is missing or "
                          f"unreadable ({e}).") from None
        return cls.from_json(meta, f"{Path(folder).name}/{META}")


def _facts(run: RunFacts) -> dict:
    """A run's ``RunFacts`` fields by name (shallow: the values themselves, not copies)."""
    return {f.name: getattr(run, f.name) for f in dataclasses.fields(RunFacts)}


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

    def __init__(self, folder: str | Path, config: TrainConfig, classes: list[str], label: str = "",
                 val_digests: tuple[str, ...] = (), min_interval: float = 1.0) -> None:
        self.folder, self.config, self.classes = Path(folder), config, classes
        self.label, self.val_digests = label, val_digests
        self.min_interval = min_interval
        self.depth = config.resolved_freeze_depth()
        self._pending: tuple[dict[str, torch.Tensor], RunMeta] | None = None
        self._last = -math.inf
        self.writes = 0

    def __call__(self, event: object) -> None:
        if isinstance(event, EpochEnd) and event.best and event.model is not None:
            self._pending = (trained_state(event.model, self.depth),
                             RunMeta.checkpoint(self.config, self.classes, event, self.label, self.val_digests))
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


def _write(folder: Path, state: dict[str, torch.Tensor], meta: RunMeta) -> Path:
    """Write a state_dict and its metadata into ``folder``, each file atomically (weights first)."""
    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(meta.to_json(), indent=1)
    atomic_write(folder / WEIGHTS, lambda p: save_file(state, p))
    atomic_write(folder / META, lambda p: Path(p).write_text(text))
    return folder


def save_run(result: RunResult, folder: str | Path, status: RunState = "completed", reason: str = "",
             label: str = "", val_digests: tuple[str, ...] = ()) -> Path:
    """Write a finished run, complete (every weight, so the folder stands on its own), to ``folder``."""
    return _write(Path(folder), trained_state(result.model, 0), RunMeta.of(result, status, reason, label, val_digests))


def load_run(folder: str | Path) -> SavedRun:
    """Rebuild a saved run's model. Refuses anything that is not a run of ours."""
    folder = Path(folder)
    meta = RunMeta.read(folder)
    try:
        state = load_file(folder / WEIGHTS)
    except (SafetensorError, OSError, ValueError) as e:
        raise TLError(f"{folder.name}/{WEIGHTS} is missing or not a safetensors file ({e}).") from None
    model = _rebuild(folder, meta, state)
    model.eval()
    return SavedRun(model, meta.classes, meta.backbone, get_backbone_spec(meta.backbone).preprocess, meta)


def _rebuild(folder: Path, meta: RunMeta, state: dict[str, torch.Tensor]) -> TransferModel:
    """The saved model. A frozen-body run made from the pretrained weights this machine has attaches
    its head to the shared pretrained body (no second copy; inference on the fast runtime); a
    partial checkpoint takes its frozen stages from those weights; anything else loads whole."""
    backbone, classes, mode, digest = meta.backbone, meta.classes, meta.config.mode, meta.weights_digest
    partial = meta.partial_frozen_stages is not None
    spec = get_backbone_spec(backbone)
    if digest is not None and (mode in FROZEN_BODY_MODES or partial):
        if spec.availability() == "download" or weights_digest(backbone) != digest:
            if partial:
                raise TLError(f"{folder.name} was saved during training and needs {spec.title}'s pretrained "
                              f"weights, which are not on this machine (or differ from those it trained with).")
        elif mode == "zero-shot":  # nothing trained: the pretrained ImageNet head, regrouped
            from ..models.zeroshot import zero_shot_model

            return zero_shot_model(backbone, classes, meta.config.zero_shot_map or {})
        elif mode in FROZEN_BODY_MODES:
            model = TransferModel(frozen_body(backbone), len(classes), spec.preprocess)
            _load(folder, model.head, {k[5:]: v for k, v in state.items() if k.startswith("head.")}, backbone,
                  classes, strict=True)
            return model
        else:
            model = build_model(backbone, len(classes), pretrained=True)
            frozen = set(model.state_dict()) - set(trained_state(model, meta.partial_frozen_stages or 0))
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


def lazy_result(folder: str | Path, meta: RunMeta | None = None) -> RunResult:
    """A saved run's result from its ``run.json`` alone (``meta``, if already read); the weights load when the
    model is first used. The weights file is checked to be there and to be safetensors (its header only)."""
    folder = Path(folder)
    meta = meta or RunMeta.read(folder)
    try:
        with safe_open(folder / WEIGHTS, "pt") as f:
            f.keys()
    except (SafetensorError, OSError, ValueError) as e:
        raise TLError(f"{folder.name}/{WEIGHTS} is missing or not a safetensors file ({e}).") from None
    return meta.result(DiskModel(folder))


def result_from_saved(saved: SavedRun) -> RunResult:
    """A ``RunResult`` view of a loaded run (for the pages that show runs)."""
    return saved.meta.result(saved.model)


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
