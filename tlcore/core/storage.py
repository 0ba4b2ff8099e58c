"""The mechanisms every layer shares: bounded memory (``ByteLRU``), files that appear whole
(``atomic_write``) and the environment of a child process that imports this ``tlcore`` (``child_env``). This
module imports nothing else of ``tlcore`` but its settings.

Budgets belong to the process, not to the module that fills a cache: each cache is made with the
default share of ``TLS_MEMORY_BUDGET_MB`` and whoever owns the process sizes it for its role with
``set_memory_budget`` (the web server at start-up; a training worker for what a worker keeps).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Generic, TypeVar

from .settings import settings

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
T = TypeVar("T")


def memory_budget_mb() -> float:
    """The process's budget for what it keeps in memory (``TLS_MEMORY_BUDGET_MB``, default 2048)."""
    return settings().memory_budget_mb


class ByteLRU(Generic[K, V]):
    """Values by key, the least recently used dropped once their bytes pass ``max_bytes``.

    ``keep_one`` never drops the value just put (a model larger than the budget still gets used);
    ``on_evict(key, value)`` runs outside the lock for every value dropped. Thread-safe."""

    def __init__(self, max_bytes: int, *, keep_one: bool = False,
                 on_evict: Callable[[K, V], None] | None = None) -> None:
        self.max_bytes = max_bytes
        self._keep_one = keep_one
        self._on_evict = on_evict
        self._data: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: K) -> V | None:
        with self._lock:
            hit = self._data.get(key)
            if hit is None:
                return None
            self._data.move_to_end(key)
            return hit[0]

    def put(self, key: K, value: V, nbytes: int) -> None:
        with self._lock:
            old = self._data.pop(key, None)
            self.bytes += nbytes - (old[1] if old is not None else 0)
            self._data[key] = (value, nbytes)
            dropped = self._trim()
        self._evicted(dropped)

    def resize(self, max_bytes: int) -> None:
        """A new budget, effective at once."""
        with self._lock:
            self.max_bytes = max_bytes
            dropped = self._trim()
        self._evicted(dropped)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.bytes = 0

    def _trim(self) -> list[tuple[K, V]]:
        dropped = []
        while self.bytes > self.max_bytes and len(self._data) > (1 if self._keep_one else 0):
            key, (value, n) = self._data.popitem(last=False)
            self.bytes -= n
            dropped.append((key, value))
        return dropped

    def _evicted(self, dropped: list[tuple[K, V]]) -> None:
        if self._on_evict is not None:
            for key, value in dropped:
                self._on_evict(key, value)


_CACHES: dict[str, tuple[ByteLRU, float]] = {}  # name -> (cache, its share of the process's budget)


def budgeted(name: str, share: float, **kwargs) -> ByteLRU:
    """A process-wide cache holding ``share`` of the memory budget (resized by ``set_memory_budget``)."""
    cache: ByteLRU = ByteLRU(int(memory_budget_mb() * 2**20 * share), **kwargs)
    _CACHES[name] = (cache, share)
    return cache


def set_memory_budget(mb: float, shares: dict[str, float] | None = None) -> None:
    """Size this process's caches: ``mb`` in all, split by each cache's default share, or by ``shares``
    (cache name -> fraction; a cache not named keeps its default share). Called by the process's owner."""
    for name, (cache, share) in _CACHES.items():
        cache.resize(int(mb * 2**20 * (shares or {}).get(name, share)))


def atomic_write(path: Path, write: Callable[[str], T]) -> T:
    """Make ``path`` appear complete or not at all: ``write(tmp)`` next to it, flush to disk, rename.
    A ``write`` that raises (a failed check included) leaves nothing; its result is returned. The
    temporary name ends in ``.tmp`` (readers of a folder being written skip those)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        result = write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return result
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_all(files: list[tuple[Path, Callable[[str], object]]]) -> None:
    """``atomic_write`` for several files with one flush to disk for all of them (``os.sync`` where there is one):
    each is written next to its path, all are flushed, then each is renamed. One ``fsync`` per file forced one
    journal commit each: a class's six uploads of 60 photos spent 9 s of their pages waiting on them while the
    workers wrote. A ``write`` that raises leaves none of them."""
    written = []
    try:
        for path, write in files:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.close(fd)
            try:
                write(tmp)
            except Exception:
                Path(tmp).unlink(missing_ok=True)
                raise
            written.append((tmp, path))
        if written:
            if hasattr(os, "sync"):
                os.sync()
            else:  # no global flush (Windows): one per file
                for tmp, _path in written:
                    with open(tmp, "rb+") as f:
                        os.fsync(f.fileno())
        for tmp, path in written:
            os.replace(tmp, path)
    finally:
        for tmp, _path in written:
            Path(tmp).unlink(missing_ok=True)


#: Work that leaves the web process (training workers, a backbone's timing) runs this much below its priority (Unix
#: ``nice``), from its first instruction: pages and a teacher's clicks stay quick however busy the class is.
NICENESS = 10


def below_the_server(argv: list[str]) -> list[str]:
    """``argv`` to run below the web server's priority (``NICENESS``), where ``nice`` exists."""
    return [nice, "-n", str(NICENESS), *argv] if (nice := shutil.which("nice")) else list(argv)


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment for a child that imports this very ``tlcore`` (a training worker, a Ray actor, a
    backbone's timing), wherever it was started from: its folder first on ``PYTHONPATH``; ``extra`` added."""
    code = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (code, os.environ.get("PYTHONPATH")) if p), **extra}
