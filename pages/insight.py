"""What the Backbone, Freeze and Train pages share for the jobs that look before training (``tlcore.analysis.tasks``):
start one on the runner, show its progress while it runs, its reason if it failed. Never computes anything."""
from __future__ import annotations

import streamlit as st

import tlcore
from pages.common import format_seconds, session, student


def state(proj: tlcore.Project, task: str, config: tlcore.TrainConfig) -> tlcore.AnalysisState:
    return tlcore.SERVER.analyses.state(proj.folder, task, proj.images, config)


def start(proj: tlcore.Project, task: str, config: tlcore.TrainConfig) -> None:
    """Queue the job (once: a second click, tab or rerun finds it queued or done)."""
    tlcore.SERVER.analyses.forget(proj.folder, task, proj.images, config)  # a failed one is tried again
    try:
        tlcore.SERVER.analyses.start(proj.folder, task, proj.images, config, student())
    except tlcore.TLError as e:
        session().note(f"insight:{task}", str(e))


def show_progress(s: tlcore.AnalysisState, what: str) -> None:
    """A progress bar while the job runs (it runs in a training worker, not in this server)."""
    p = s.progress
    if p is None:
        st.progress(0.0, text=f"{what}: waiting for a free worker…")
    else:
        eta = "" if p.eta_s != p.eta_s else f" · about {format_seconds(p.eta_s)} left"  # NaN until measured
        st.progress(min(1.0, p.done / max(1, p.total)), text=f"{what}: {p.what.lower()} {p.done}/{p.total}{eta}")


def show_error(task: str, s: tlcore.AnalysisState) -> None:
    if message := session().take_note(f"insight:{task}") or s.error:
        st.error(message, icon=":material/error:")


def result_or_start(proj: tlcore.Project, task: str, config: tlcore.TrainConfig, polling: bool, what: str,
                    button: dict) -> object | None:
    """The shared top of a look's polling fragment: its result once on disk; until then its error, its
    progress while a worker runs it, or the button (``st.button`` arguments) that queues it. A click inside a
    fragment reruns only the fragment, so the whole page reruns when the job starts or ends, to poll or stop."""
    s = state(proj, task, config)
    if polling != s.running:
        st.rerun()
    show_error(task, s)
    if s.running:
        show_progress(s, what)
    elif s.result is None:
        st.button(**button, on_click=start, args=(proj, task, config))
    return s.result

