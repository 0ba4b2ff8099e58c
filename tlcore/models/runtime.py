"""Forward passes through frozen pretrained weights, on the fastest runtime installed.

Pretrained weights never change, so a backbone's body (or the leading stages a fine-tune keeps
frozen) is exported to ONNX once, cached on disk, and run by OpenVINO when it is installed, else
by ONNX Runtime: on a CPU they fold batch-norm into the convolutions and fuse the activations,
which plain PyTorch does not (``python -m tlcore.bench`` measures all three side by side). On
CUDA or Apple GPUs, and whenever an export fails, PyTorch runs the shared ``frozen_body``.

Everything goes through one function, ``frozen_forward``; ``runtime_for`` says which runtime it
uses. Environment variables (all optional):

* ``TLCORE_RUNTIME``: ``openvino``, ``onnxruntime`` or ``torch`` forces one;
* ``TLCORE_INFERENCE_PRECISION``: ``f32`` fixes OpenVINO's precision (the tests do, so results are
  deterministic); by default OpenVINO picks (bf16 on CPUs that have it, about 2x faster);
* ``TLCORE_CACHE_DIR``: where exports are cached (default ``~/.cache/tlcore``).
"""
from __future__ import annotations

import functools
import importlib.util
import json
import logging
import threading
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..core.settings import VARIABLES, settings
from ..core.storage import atomic_write
from .backbones import frozen_body, get_backbone_spec, sha256_file, weights_digest
from .model import to_float

Runtime = Literal["openvino", "onnxruntime", "torch"]
log = logging.getLogger(__name__)


@functools.cache
def _installed() -> tuple[Runtime, ...]:
    found: list[Runtime] = [r for r in ("openvino", "onnxruntime") if importlib.util.find_spec(r) is not None]
    return (*found, "torch")


def installed_runtimes() -> list[Runtime]:
    """The CPU runtimes that can be used here, fastest first, then torch. Looked up once a process: each lookup
    reads the disk (0.5 ms), and ``runtime_for`` is asked once a batch."""
    return list(_installed())


def runtime_for(device: torch.device | str = "cpu") -> Runtime:
    """The runtime ``frozen_forward`` uses on ``device`` (torch on GPUs)."""
    forced = settings().runtime
    if forced:
        if forced not in installed_runtimes():
            raise ValueError(f"{VARIABLES['runtime']}={forced} is not installed here; use one of {installed_runtimes()}")
        return forced  # type: ignore[return-value]
    if torch.device(device).type != "cpu":
        return "torch"
    return installed_runtimes()[0]


def cache_dir() -> Path:
    return settings().cache_dir / "runtime"


class FrozenPart(nn.Module):
    """Pixels in [0, 1] -> the pretrained body's first ``stages`` stages (None: all, pooled features)."""

    def __init__(self, backbone: str, stages: int | None) -> None:
        super().__init__()
        spec = get_backbone_spec(backbone)
        self.body = frozen_body(backbone)
        self.stages = stages
        self.register_buffer("mean", torch.tensor(spec.preprocess.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.preprocess.std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        return self.body(x) if self.stages is None else self.body.forward_range(x, 0, self.stages)


_export_lock = threading.Lock()


def exported(backbone: str, stages: int | None) -> Path:
    """The ONNX file of ``FrozenPart(backbone, stages)``, exported once and cached on disk.

    The name carries the backbone, its weights' digest, the part and the input size; a sidecar
    records the file's SHA-256, and a file that does not match it (truncated, damaged, half
    written) is exported again rather than trusted.
    """
    size = get_backbone_spec(backbone).preprocess.input_size
    part = "body" if stages is None else f"stages{stages}"
    path = cache_dir() / f"{backbone}-{weights_digest(backbone)[:16]}-{part}-{size}px.onnx"
    check = path.with_suffix(".json")
    with _export_lock:
        try:
            if json.loads(check.read_text())["sha256"] == sha256_file(path):
                return path
        except (OSError, ValueError, KeyError, TypeError):
            pass
        path.parent.mkdir(parents=True, exist_ok=True)
        model = FrozenPart(backbone, stages).eval()
        x = torch.rand(2, 3, size, size)

        def export(tmp: str) -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # The TorchScript-based exporter takes about a second here; the dynamo one ten times that.
                torch.onnx.export(model, (x,), tmp, input_names=["pixels"], output_names=["out"],
                                  dynamic_axes={"pixels": {0: "batch"}, "out": {0: "batch"}}, dynamo=False)

        atomic_write(path, export)
        check.write_text(json.dumps({"sha256": sha256_file(path), "backbone": backbone, "stages": stages,
                                     "input_size": size}))
        return path


@functools.lru_cache(maxsize=16)
def _session(backbone: str, stages: int | None, runtime: Runtime, threads: int, precision: str
             ) -> Callable[[torch.Tensor], np.ndarray]:
    """The exported body on ``runtime``: uint8 pixels ``[N, 3, S, S]`` in (any memory layout; the image sets'
    are channels-last, which OpenVINO reads as they are), float32 out."""
    path = str(exported(backbone, stages))
    if runtime == "openvino":
        import openvino as ov
        from openvino.preprocess import PrePostProcessor

        config: dict = {"INFERENCE_NUM_THREADS": threads}
        if precision == "f32":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        core = ov.Core()
        # The uint8 pixels go in as they are and become [0, 1] floats inside the graph, fused with its first layer:
        # a float copy of every batch before each call cost a tenth of the forward pass (benchmark section 1).
        # The pixels go in channels-last (NHWC), as the image sets keep them: the same features, at the same speed.
        ppp = PrePostProcessor(core.read_model(path))
        ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
        ppp.input().model().set_layout(ov.Layout("NCHW"))
        ppp.input().preprocess().convert_element_type(ov.Type.f32).scale(255.0)
        compiled = core.compile_model(ppp.build(), "CPU", config)
        # One infer request per call: a compiled model is shared, requests are not thread-safe.
        # numpy lays out other pixels (one thread: a torch copy beside an inference slows it)
        return lambda x: compiled.create_infer_request().infer(
            {0: np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())})[0]
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as torch's threads (yield_idle_cores)
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    def run(x: torch.Tensor) -> np.ndarray:
        pixels = np.empty(tuple(x.shape), np.float32)  # planes, whatever the pixels' layout
        return session.run(None, {"pixels": np.divide(x.numpy(), np.float32(255.0), out=pixels)})[0]
    return run


_failed: set[tuple[str, int | None, str]] = set()


def frozen_forward(backbone: str, pixels: torch.Tensor, stages: int | None = None,
                   device: torch.device | str = "cpu", batch_size: int = 32, precision: str | None = None
                   ) -> torch.Tensor:
    """uint8 pixels ``[N, 3, S, S]`` (preprocessed for ``backbone``) through its pretrained body.

    ``stages=None`` gives pooled features ``[N, D]``; ``stages=k`` the output of the first k stages
    (what a fine-tune with k frozen stages feeds to the rest). Float32, on the CPU. Uses
    ``runtime_for(device)``; falls back to torch (once logged) if the export fails. ``precision="f32"``
    computes in float32 whatever the hardware (else ``TLCORE_INFERENCE_PRECISION``, by default the
    runtime's choice: bf16 where the CPU or GPU has it).
    """
    precision = precision or settings().inference_precision
    runtime = runtime_for(device)
    key = (backbone, stages, runtime)
    if runtime != "torch" and key not in _failed:
        try:
            session = _session(backbone, stages, runtime, torch.get_num_threads(), precision)
        except Exception as e:  # an export or compile failure: torch still gives the right answer
            log.warning("%s cannot run %s (%s: %s); using torch", runtime, backbone, type(e).__name__, e)
            _failed.add(key)
        else:
            if pixels.dtype != torch.uint8:
                raise TypeError(f"frozen_forward takes uint8 pixels, not {pixels.dtype}")
            outs = [session(pixels[lo:lo + batch_size]) for lo in range(0, len(pixels), batch_size)]
            # numpy joins the batches: a torch copy after each call (one a batch when features stream) woke torch's
            # sleeping threads and slowed the next call's inference by 8 %
            return torch.from_numpy(outs[0] if len(outs) == 1 else np.concatenate(outs)) if outs else torch.zeros(0)
    return frozen_forward_torch(backbone, pixels, stages, device, batch_size, precision)


def frozen_forward_torch(backbone: str, pixels: torch.Tensor, stages: int | None = None,
                         device: torch.device | str = "cpu", batch_size: int = 32, precision: str = "auto"
                         ) -> torch.Tensor:
    """``frozen_forward`` in PyTorch (GPUs, the fallback, and the reference the parity tests use)."""
    device = torch.device(device)
    part = _torch_part(backbone, stages, device)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and precision != "f32"
                else nullcontext())
    outs = []
    with torch.inference_mode(), autocast:
        for lo in range(0, len(pixels), batch_size):
            x = to_float(pixels[lo:lo + batch_size], device)
            outs.append(part(x).float().cpu())
    return torch.cat(outs) if outs else torch.zeros(0)


@functools.lru_cache(maxsize=8)
def _torch_part(backbone: str, stages: int | None, device: torch.device) -> nn.Module:
    # On the CPU the shared body itself; on a GPU one copy per device (the shared CPU copy never moves).
    part = FrozenPart(backbone, stages).eval()
    if device.type != "cpu":
        import copy

        part = copy.deepcopy(part).to(device)
    return part

