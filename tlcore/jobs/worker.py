"""A training worker process: ``python -m tlcore.jobs.worker FD THREADS MAX_THREADS``.

``tlcore.jobs.runner.LocalRunner`` starts it with one end of a connection (file descriptor ``FD``) and
talks to it in messages, each a tuple:

* server → worker: ``("job", job id, JobSpec)``, ``("stop", job id)``, ``("share", busy workers)``,
  ``None`` (exit);
* worker → server: ``("ready", pid)`` once warmed up, ``("event", job id, Event)`` while training,
  ``("idle", job id)`` after each job.

A reader thread takes the server's messages while the main thread trains, so Stop acts before the
next batch. When the server goes away (its end closes, or a send finds it gone) the worker stops its
run, saves it as interrupted with its best epoch, and exits: it never trains for nobody. Its own
entry point means it imports only ``tlcore``, never the app's script.
"""
from __future__ import annotations

import ctypes
import logging
import os
import queue
import sys
import threading
from multiprocessing.connection import Connection

from ..core.storage import memory_budget_mb, set_memory_budget
from .spec import receive, run_job, send

log = logging.getLogger(__name__)


class _Inbox:
    """The server's messages, read on a thread of their own: jobs queue up, stop and share act at once."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.jobs: queue.Queue = queue.Queue()
        self.stop_id = 0  # the job the server asked to stop
        self.busy = 1  # how many workers train now (this one's thread share)
        self.gone = False  # the server's end closed
        self.warming = True  # only loading what a later job would load (the server may end it at once)
        threading.Thread(target=self._read, name="tlcore-worker-inbox", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                message = receive(self.conn)
            except (EOFError, OSError):
                message = None
                self.gone = True
            if message is None:
                if self.warming:  # nothing to keep: end now, not once the warm-up is done
                    os._exit(0)
                self.jobs.put(None)
                return
            if message[0] == "stop":
                self.stop_id = message[1]
            elif message[0] == "share":
                self.busy = max(1, message[1])
            else:
                self.jobs.put(message)


def _warm_up(threads: int, max_threads: int) -> None:
    """The default backbone's pretrained body and its runtime, so a first run starts at once."""
    import torch

    from ..models.backbones import DEFAULT_BACKBONE, get_backbone_spec
    from ..models.runtime import frozen_forward

    size = get_backbone_spec(DEFAULT_BACKBONE).preprocess.input_size
    for n in sorted({max_threads, threads}):  # the runtime compiles once per thread count
        torch.set_num_threads(n)
        frozen_forward(DEFAULT_BACKBONE, torch.zeros((1, 3, size, size), dtype=torch.uint8))


def _warm_up_while_idle() -> None:
    """The sentence model that reads class names (``zeroshot.suggest_mapping``), which every upload's data check
    uses, loaded once the worker is ready and has nothing to do: a worker's first check loaded it under the class's
    load and held the class's first checks and runs for 16 s (importing transformers; 250 MB each worker then
    holds anyway). Not in ``_warm_up``: a class arriving as the server starts waited 6 s longer for it there."""
    from ..models.zeroshot import suggest_mapping

    try:
        suggest_mapping(["cat"])
    except Exception as e:  # noqa: BLE001  an optimisation: a check loads it itself
        log.warning("worker could not load the sentence model: %s", e)


def serve(conn: Connection, threads: int, max_threads: int) -> None:
    """Take jobs from ``conn`` one at a time until told to exit or the server is gone.

    Before every batch it takes the cores the other busy workers leave free: all ``max_threads`` on a
    quiet server, its share of them when the class is training (never fewer than ``threads``)."""
    import torch

    # a worker keeps features and preprocessed images for the runs it trains, never a model for viewing
    set_memory_budget(memory_budget_mb() / 2, {"stacks": 0.5, "features": 0.5, "models": 0.0})
    inbox = _Inbox(conn)

    def share() -> None:
        want = max(threads, max_threads // inbox.busy)
        if want != torch.get_num_threads():
            torch.set_num_threads(want)

    def tell(message: object) -> None:
        """Send to the server; once it is gone, nothing (the run then stops at its next batch)."""
        if inbox.gone:
            return
        try:
            send(conn, message)
        except (BrokenPipeError, EOFError, OSError):
            inbox.gone = True

    try:
        _warm_up(threads, max_threads)
    except Exception as e:  # noqa: BLE001  a warm-up is an optimisation: runs still work (and report) without it
        log.warning("worker could not warm up: %s", e)
    torch.set_num_threads(threads)
    tell(("ready", os.getpid()))
    if inbox.jobs.empty():
        _warm_up_while_idle()
    inbox.warming = False
    while (message := inbox.jobs.get()) is not None and not inbox.gone:
        _, job_id, spec = message

        def should_stop() -> bool:
            share()
            return inbox.stop_id == job_id or inbox.gone  # noqa: B023

        share()
        run_job(spec, should_stop, lambda event: tell(("event", job_id, event)), lambda: inbox.gone)  # noqa: B023
        tell(("idle", job_id))
        if inbox.jobs.empty():
            _give_back_memory()


def _give_back_memory() -> None:
    """Hand the heap a finished job freed back to the system (glibc keeps it for the process otherwise): an idle
    worker of a class's server held 2.9 GB after six students' runs. Its caches (features, stacks) stay."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def main(argv: list[str]) -> None:
    fd, threads, max_threads = (int(a) for a in argv[:3])
    logging.basicConfig(level=logging.WARNING, format="tlcore worker %(process)d: %(message)s")
    conn = Connection(fd)
    try:
        serve(conn, threads, max_threads)
    except (BrokenPipeError, EOFError, OSError):  # the server is gone mid-send: nothing left to tell
        pass


if __name__ == "__main__":
    main(sys.argv[1:])
