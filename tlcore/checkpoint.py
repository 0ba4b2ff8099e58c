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
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .backbones import Preprocess, get_backbone_spec
from .data import ZipLimits, check_zip_total, zip_member_problem
from .errors import TLError
from .model import TransferModel, build_model
from .train import EpochEnd, RunResult, TrainConfig

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


def run_metadata(result: RunResult, status: str = "completed", extra: dict | None = None) -> dict:
    spec = get_backbone_spec(result.config.backbone)
    return {
        "format": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "status": status,
        "classes": list(result.classes), "backbone": spec.name, "backbone_title": spec.title,
        "preprocess": dataclasses.asdict(spec.preprocess), "config": dataclasses.asdict(result.config),
        "metrics": {"val_accuracy": result.val_accuracy, "best_epoch": result.best_epoch,
                    "train_seconds": result.train_seconds, "num_images": result.num_images,
                    "trainable_params": result.trainable_params, "total_params": result.total_params,
                    "freeze_depth": result.freeze_depth},
        "history": [e.to_json() for e in result.history],
        "split": {"train": list(result.train_indices), "val": list(result.val_indices)},
        **(extra or {}),
    }


def atomic_write(path: Path, write: Callable[[str], object]) -> None:
    """Make ``path`` appear complete or not at all: ``write(tmp)`` next to it, flush to disk, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_weights_and_meta(folder: str | Path, model: TransferModel, meta: dict) -> Path:
    """Write ``model``'s state_dict and ``meta`` into ``folder``, each file atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write(folder / WEIGHTS, lambda p: save_file(state, p))
    atomic_write(folder / META, lambda p: Path(p).write_text(json.dumps(meta, indent=1)))
    return folder


def save_run(result: RunResult, folder: str | Path, status: str = "completed", extra: dict | None = None) -> Path:
    """Write a finished run (weights and metadata) to ``folder``; returns the folder."""
    return write_weights_and_meta(folder, result.model, run_metadata(result, status, extra))


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
    model = build_model(backbone, len(classes), pretrained=False)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise TLError(f"The weights in {folder.name} do not fit a {backbone} model with {len(classes)} "
                      f"classes ({str(e).splitlines()[0]}).") from None
    model.eval()
    return SavedRun(model, classes, backbone, get_backbone_spec(backbone).preprocess, meta)


def result_from_saved(saved: SavedRun) -> RunResult:
    """A ``RunResult`` view of a loaded run (for the pages that show runs)."""
    m = saved.meta.get("metrics", {})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in saved.meta.get("config", {}).items() if k in known})
    return RunResult(
        model=saved.model, classes=saved.classes, config=config,
        history=tuple(EpochEnd(**e) for e in saved.meta.get("history", [])),
        best_epoch=int(m.get("best_epoch", 0)), val_accuracy=m.get("val_accuracy"),
        train_seconds=float(m.get("train_seconds", 0.0)), num_images=int(m.get("num_images", 0)),
        train_indices=tuple(saved.meta.get("split", {}).get("train", [])),
        val_indices=tuple(saved.meta.get("split", {}).get("val", [])),
        trainable_params=int(m.get("trainable_params", 0)), total_params=int(m.get("total_params", 0)),
        freeze_depth=int(m.get("freeze_depth", 0)))


def archive_run(folder: str | Path) -> bytes:
    """The run folder as zip bytes (for a download button)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(Path(folder).iterdir()):
            if path.is_file():
                zf.write(path, path.name)
    return buf.getvalue()


#: A saved run's zip holds two files; the largest backbone's weights are about 330 MB.
RUN_ZIP_LIMITS = ZipLimits(member_bytes=1 << 30, total_bytes=1 << 30)


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: str) -> None:
    """Stream one member to ``path`` (never the whole member in memory at once)."""
    with zf.open(info) as src, open(path, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)


def unpack_run_archive(data: bytes, folder: str | Path) -> SavedRun:
    """Load a run from zip bytes a user uploads; only our two files are read, nothing executes."""
    folder = Path(folder)
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
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


def _checked_write(path: Path, write: Callable[[str], float]) -> float:
    """``write(tmp)`` exports and checks a file; only a file that passed its check appears at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial{path.suffix}")
    try:
        diff = write(str(tmp))
        os.replace(tmp, path)
        return diff
    finally:
        tmp.unlink(missing_ok=True)


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

    return _checked_write(Path(path), write)


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

    return _checked_write(Path(path), write)
