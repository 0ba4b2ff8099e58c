"""What every page shares: the session's project, the step bar, guards, cached resources, charts."""
from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import streamlit as st
from PIL import Image

import tlcore
from tlcore import SERVER, Project, RunRecord

LOG = logging.getLogger("tls.pages")
ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"
SESSION_KEY = "tls"  # the one session-state key of the app's own state (``Session``)
LAST_PAGE_RUN = [time.monotonic()]  # when any session's page last ran (``open_session``): is the class busy?
PAGES_QUIET_S = 20.0


@dataclass(slots=True)
class Recording:
    """Data: hold-to-record's state while the camera records."""

    added: int = 0  # frames added since recording started
    note: str = ""  # why the last frame was skipped
    insecure: str | None = None  # the page's origin, once the browser refused the camera on it


@dataclass(slots=True)
class DataState:
    """The Data page and its check."""

    upload_gen: int = 0  # bumped after each upload, for a fresh, empty uploader
    last_upload: tuple[int, list[tuple[str, str]]] | None = None  # (added, [(file, why not)])
    confirm_sample: str | None = None  # the sample waiting for "replace or new project?"
    recording: Recording = field(default_factory=Recording)
    undo: tuple[str, str, list[tlcore.ImageItem]] | None = None  # (project, class, images) of the last removal
    check: tuple[str, tlcore.DataCheck] | None = None  # (project, its last finished check), shown while one runs


@dataclass(slots=True)
class LiveTest:
    """Test: the live camera's state."""

    result: dict[str, object] | None = None  # the last frame's prediction, as the camera widget draws it
    cam: str | None = None  # the last Grad-CAM overlay (a data URL)
    cam_at: float = 0.0  # when it was made (time.monotonic): at most one a second
    error: dict[str, str] | None = None  # the browser refused the camera: {"error": ..., "origin": ...}


@dataclass(slots=True)
class CompareState:
    """The Compare page."""

    groups: dict[tlcore.ComparisonKind, str] = field(default_factory=dict)  # the group started here, by kind
    # runs scored on the challenge set, (challenge, project key, run id) -> its score or why not
    challenge_marks: dict[tuple[str, str, str], tlcore.Score | str] = field(default_factory=dict)


@dataclass(slots=True)
class TestState:
    """The Test page."""

    # (run id, file, its hash) -> (its prediction, the heat map over it)
    predictions: dict[tuple[str, str, int], tuple[tlcore.Prediction, Image.Image]] = field(default_factory=dict)
    live: LiveTest = field(default_factory=LiveTest)


@dataclass(slots=True)
class ExportState:
    """The Export page."""

    web_export: tuple[str, tlcore.WebExport, Path] | None = None  # (run id, the export, its zip)
    report_html: tuple[str, str] | None = None  # (run id, the report's HTML)


@dataclass(slots=True)  # a misspelt field is an error, not a new attribute
class Session:
    """What one browser session keeps between reruns, behind one key (``session()``), one field per page
    that keeps anything. Widget values stay Streamlit's, under keys that start with their page's name
    (``data_``, ``train_``, ...)."""

    project: Project | None  # None until a page needs one (``project()``)
    read_only: bool = False  # opened from a ?view= link: look and test, never change
    page: str = ""  # the url path of the page being shown
    teacher_key: str | None = None  # the teacher's key, once the password was typed (Teacher page)
    notes: dict[str, str] = field(default_factory=dict)  # one-shot messages a callback leaves for the next run
    visited: set[str] = field(default_factory=set)  # the steps' pages opened (url paths): Evaluate, Test, Export done
    camera_seen: dict[str, tuple[str, int]] = field(default_factory=dict)  # live_camera: the last message per widget
    data: DataState = field(default_factory=DataState)
    measured: set[str] = field(default_factory=set)  # Backbone: backbones whose speed this session asked for
    # Freeze: ((backbone, image digest), its maps per stage or why not)
    freeze_maps: tuple[tuple[str, str], list[tuple[str, np.ndarray]] | str] | None = None
    figures: dict[tuple[str, int], tuple[object, object]] = field(default_factory=dict)  # Train: (run, version) -> (loss, acc)
    compare: CompareState = field(default_factory=CompareState)
    test: TestState = field(default_factory=TestState)
    export: ExportState = field(default_factory=ExportState)

    def note(self, topic: str, text: str) -> None:
        self.notes[topic] = text

    def take_note(self, topic: str) -> str | None:
        return self.notes.pop(topic, None)


def session() -> Session:
    """This browser session's state (``project()`` creates it on the session's first run)."""
    return st.session_state[SESSION_KEY]


# -- Streamlit internals: no public API does these, so they live here alone ----------------------------------

def session_id() -> str:
    """This browser session's id (the registry counts who holds a project): no public API names it."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else "no-session"


def session_alive(sid: str) -> bool:
    """Whether a browser session is still connected (the sweeper's question): no public API answers it.
    Without a running server (AppTest) nobody can tell, and nothing is let go."""
    from streamlit.runtime import Runtime

    return not Runtime.exists() or Runtime.instance().is_active_session(sid)


def keep_every_click() -> None:
    """Run a click's callbacks to their end, even when a newer request (the next change on the page) arrives while
    they are about to run. Streamlit (1.67) takes a rerun request at a yield point and then, before it applies that
    request's widget states, yields again (``SafeSessionState.on_script_will_rerun``; any session-state read inside
    a callback too): a newer request found there replaces the one taken, and a button's trigger, which the browser
    sends once, is gone with no error. A Compare page busy while others trained lost a click this way in 2 or 3 of 6
    suite runs; a 20-line app (a button, a number changed right after its click) lost 6 of 30 (12 of 30 with
    ``runner.fastReruns`` off) and none after this. Here a rerun's widget states and callbacks are applied without
    yielding; the newer request is taken just after them (``code_to_exec`` checks for one before the page runs).
    Idempotent; the server calls it at start (app.py)."""
    from streamlit.runtime.state.safe_session_state import SafeSessionState

    if getattr(SafeSessionState.on_script_will_rerun, "keeps_clicks", False):
        return

    def on_script_will_rerun(self, fresh_widget_states, **kwargs) -> None:
        with self._lock:
            yield_check = self._yield_callback
            object.__setattr__(self, "_yield_callback", lambda: None)  # no yield point until the callbacks are done
            try:
                self._state.on_script_will_rerun(fresh_widget_states, **kwargs)
            finally:
                object.__setattr__(self, "_yield_callback", yield_check)

    on_script_will_rerun.keeps_clicks = True  # type: ignore[attr-defined]
    SafeSessionState.on_script_will_rerun = on_script_will_rerun


def leave_legacy_pages_mode() -> bool:
    """A deep link (e.g. /data) on a freshly started server makes Streamlit run that page as an old-style
    pages/ script, without app.py, because this folder is called pages/ (the product's layout). Switch the
    server to app.py's st.navigation for good, as its first st.navigation call would; True if it was needed.
    No public setting turns the old mode off, so this is the one place that sets a private attribute."""
    from streamlit.runtime.pages_manager import PagesManager

    if not PagesManager.uses_pages_directory:
        return False
    PagesManager.uses_pages_directory = False
    return True

# ------------------------------------------------------------------------------------------------------------

PAGES = {  # file -> (title, icon); the order is the order of the steps
    "pages/backbone.py": ("Backbone", ":material/hub:"),
    "pages/data.py": ("Data", ":material/photo_library:"),
    "pages/freeze.py": ("Freeze", ":material/ac_unit:"),
    "pages/train.py": ("Train", ":material/model_training:"),
    "pages/evaluate.py": ("Evaluate", ":material/analytics:"),
    "pages/test.py": ("Test", ":material/image_search:"),
    "pages/export.py": ("Export", ":material/download:"),
    "pages/compare.py": ("Compare", ":material/compare:"),
}


def student() -> str:
    """Who a run is for, so that every tab and project of one student share one turn for the workers and one
    queue limit: the browser's network address (one laptop, one student), or on this machine's own browsers
    (the teacher's laptop, the tests) the project."""
    ip = st.context.ip_address
    return f"project:{session().project.name}" if not ip or ip in ("127.0.0.1", "::1") else f"ip:{ip}"


VIEW_PAGES = ("pages/evaluate.py", "pages/test.py")  # all a read-only link offers: looking and testing


def open_session() -> Session:
    """This browser session's state, created on its first run from the link in the address: ``?p=KEY`` to work
    on a project, ``?view=KEY`` to look and test only, ``?kit=1`` (the join link) for a new copy of the class
    kit. Without a link the project waits until a student's page asks for it (``project()``): the Teacher page
    and the projector never create one (each would be listed as a student in the class's progress)."""
    if leave_legacy_pages_mode():
        st.rerun()  # now through app.py
    LAST_PAGE_RUN[0] = time.monotonic()
    if SESSION_KEY not in st.session_state:
        proj, readonly = None, False
        key = st.query_params.get("p") or st.query_params.get("view")
        if key:
            try:
                proj, readonly = SERVER.projects.open_link(key, session_id())
            except tlcore.TLError as e:
                st.toast(f"Could not open the project: {e}", icon=":material/warning:")
        elif "kit" in st.query_params and (kit := tlcore.current_kit()) is not None:  # the join link
            kit.start(proj := SERVER.projects.create(session_id()))
        st.session_state[SESSION_KEY] = Session(proj, readonly)
        start_sweeper()
        start_workers()
    return session()


def has_project() -> bool:
    """Whether this session holds a project yet (a teacher's may not: see ``open_session``)."""
    return open_session().project is not None


def project() -> Project:
    """The session's project (created on first use; a reload reopens it, running jobs included, from the
    link in the address). A project's name opens nothing: only its unguessable key does."""
    state = open_session()
    sid = session_id()
    proj = state.project = SERVER.projects.hold(state.project, sid) if state.project else SERVER.projects.create(sid)
    _show_link(proj)
    return proj


def save_settings(**changes) -> None:
    """Change the session's project settings and save them. Pages call it from widget callbacks, when a
    person changes a widget, so a second, stale tab of the project never writes its old values back."""
    proj = session().project
    proj.settings = dataclasses.replace(proj.settings, **changes)
    proj.save()


def setting(name: str, key: str, cast=None) -> dict:
    """Widget keyword arguments that save the widget's value ``key`` as setting ``name`` when it changes."""
    return {"key": key, "on_change": lambda: save_settings(**{name: (cast or (lambda v: v))(st.session_state[key])})}


def read_only() -> bool:
    """This session was given a read-only link: it may look and test, never change."""
    return SESSION_KEY in st.session_state and session().read_only


KEEP_PARAMS = ("t", "board")  # the teacher's key and the projector view survive a reload of the Teacher page


def link_params(proj: Project) -> dict[str, str]:
    """The address's query of this session's pages: the project's link (or its read-only one) and what the
    Teacher page keeps. Every page link carries it: a link without it cleared the address's query, the page then
    wrote it back, and the browser's history got two entries for one step (Back then stayed on the page)."""
    param, value = ("view", proj.view_key) if read_only() else ("p", proj.key)
    return {param: value, **{k: st.query_params[k] for k in KEEP_PARAMS if k in st.query_params}}


def step_link(page: str, label: str, icon: str, **kwargs: Any) -> None:
    """A link to one of the project's pages that keeps the address's query (``link_params``)."""
    st.page_link(page, label=label, icon=icon, query_params=link_params(session().project), **kwargs)


def _show_link(proj: Project) -> None:
    if st.query_params.to_dict() != (want := link_params(proj)):
        st.query_params.from_dict(want)


def switch_project(link: str | None, create: bool = False) -> None:
    """Open another project from its link (or the key in it), or create a new one, for this session."""
    if create:
        proj, readonly = SERVER.projects.create(session_id(), link), False
    else:
        key = (link or "").strip().rsplit("=", 1)[-1].split("&")[0]
        proj, readonly = SERVER.projects.open_link(key, session_id())
    state = session()
    state.project, state.read_only = proj, readonly
    _show_link(proj)


def save_student(key: str) -> None:
    """The name the student typed (widget ``key``), on their project."""
    proj = session().project
    proj.student = " ".join(str(st.session_state[key]).split())[:40]
    proj.save()
    st.session_state[f"student_name_{proj.name}"] = proj.student  # the sidebar's box says it too


def project_link(proj: Project) -> str:
    """The project's private link (the address of this page, as a student's device reaches it)."""
    return public_url(f"?p={proj.key}")


def share_links(proj: Project) -> None:
    """The project's own link to bookmark and its read-only link to share, in the main area, where a phone (whose
    sidebar is folded away) shows them too."""
    with st.expander("Bookmark and share", icon=":material/share:"):
        st.markdown("**Your project's link**: bookmark it (or keep it) to come back from any device; whoever has "
                    "it can change the project.")
        st.code(project_link(proj), language=None, wrap_lines=True)
        st.markdown("**Read-only link**: anyone with it can look at the models and test them, not change anything.")
        st.code(view_link(proj), language=None, wrap_lines=True)


def ask_name(proj: Project) -> None:
    """First on a student's page while their project has no name: the name (in the main area, since a phone
    folds the sidebar away) and the links to keep."""
    with st.container(border=True, key="ask_name"):
        st.info("Type your name so your teacher can find your work.", icon=":material/badge:")
        key = f"student_name_first_{proj.name}"
        st.text_input("Your name (your teacher sees your work under it)", max_chars=40, key=key,
                      on_change=save_student, args=(key,))
        share_links(proj)


def start_from_kit() -> None:
    """A new project for this session holding its own copy of the class kit."""
    switch_project(None, create=True)
    tlcore.current_kit().start(session().project)


def public_url(path: str = "") -> str:
    """``path`` on this server as a student's device reaches it (never localhost; see tlcore.server_urls)."""
    return tlcore.server_urls(st.get_option("server.port"), bool(st.get_option("server.sslCertFile")), path)[0]


def view_link(proj: Project) -> str:
    """The project's read-only link. It opens the app's main page, which is Evaluate for a read-only visitor
    (a path such as /evaluate is not among a read-only session's pages: Streamlit said "Page not found")."""
    return public_url(f"?view={proj.view_key}")


@st.cache_resource
def start_workers() -> bool:
    """Once per server: the training workers start with the first visitor, not with the first run."""
    runner = tlcore.get_runner()
    if isinstance(runner, tlcore.LocalRunner):
        runner.start()
    tlcore.measure_speed_elsewhere(tlcore.time_on_runner)  # the one-off export and timing run in a worker, as all work

    def measure() -> None:  # once the workers' warm-up no longer keeps the cores busy
        if isinstance(runner, tlcore.LocalRunner):
            runner.wait_ready(120)
        tlcore.measure_speed(tlcore.DEFAULT_BACKBONE)
        # the class arriving slowed it; timed again when nothing trains and no page has run for a while: a timing
        # child (8 s of a core) started while six students uploaded, and their first runs waited for it
        tlcore.refine_speed_when_quiet(tlcore.DEFAULT_BACKBONE,
                                       lambda: runner.idle() and time.monotonic() - LAST_PAGE_RUN[0] > PAGES_QUIET_S)

    # The default backbone's speed (for time estimates and queue waits), measured before anyone asks.
    threading.Thread(target=measure, daemon=True).start()
    return True


@st.cache_resource
def start_sweeper() -> threading.Thread:
    """Once per server: every 30 s, let go of projects whose browser sessions have all gone (their
    jobs stop, keeping the best epoch; empty projects are deleted) after a 5-minute grace period."""
    grace, interval = tlcore.settings().session_grace_s, tlcore.settings().sweep_interval_s

    def loop() -> None:
        while True:
            time.sleep(interval)
            SERVER.projects.sweep(session_alive, grace)

    thread = threading.Thread(target=loop, name="tls-session-sweeper", daemon=True)
    thread.start()
    return thread


def step_status(proj: Project, visited: set[str] = frozenset()) -> dict[str, tuple[bool, bool, str]]:
    """Per page: (done, ready, what is missing first). Done: the step's work is there (images in two classes,
    a model trained with these settings, a finished ladder, a page of the model looked at: ``visited`` url
    paths); ready: it can be done now."""
    counts = proj.images.counts()
    has_data = sum(n > 0 for n in counts.values()) >= 2
    has_run = bool(proj.finished_runs())
    compared = any(r.kind == "ladder" for r in proj.finished_runs())
    need_data = "add images to at least two classes on the Data page"
    need_run = "train a model on the Train page"
    return {
        "pages/backbone.py": (True, True, ""),
        "pages/data.py": (has_data, True, ""),
        "pages/freeze.py": (has_run, True, ""),
        "pages/train.py": (has_run, has_data, need_data),
        "pages/evaluate.py": (has_run and "evaluate" in visited, has_run, need_run),
        "pages/test.py": (has_run and "test" in visited, has_run, need_run),
        "pages/export.py": (has_run and "export" in visited, has_run, need_run),
        "pages/compare.py": (compared, has_data, need_data),
    }


def step_bar(current: str) -> None:
    """A row of steps: done ones ticked, the ones that can be done now as an open circle, the others locked
    (what to do first in the tooltip); the current one marked by its own icon."""
    if read_only():
        return  # a read-only visitor has two pages, not the steps
    state = session()
    state.visited.add(Path(current).stem)
    status = step_status(project(), state.visited)
    # One row that wraps (a projector's 1024 px: one row of whole words; a phone: two or three rows, never one
    # link per line); app.py's CSS keeps it compact (.st-key-step_bar).
    with st.container(horizontal=True, gap=None, key="step_bar"):
        for file, (title, icon) in PAGES.items():
            done, ready, missing = status[file]
            mark = (":material/check_circle:" if done else ":material/radio_button_unchecked:" if ready
                    else ":material/lock:")
            label = f"**{title}**" if file == current else title
            step_link(file, label, mark if file != current else icon,
                      help=None if ready else f"To do first: {missing}.")


def start_button(label: str, key: str, start: Callable[[], object], busy: Callable[[], bool], busy_label: str,
                 **button) -> None:
    """A button that starts work (a run, a ladder, an export), which never loses a click and answers it at once.

    ``if st.button(...)`` sees a click only in the one script run that the click asked for, and only once that
    run reaches the button's line; a rerun that replaces it before then (a second click, a changed widget, a
    resent connection: seconds on a page that is slow because others train) starts without the click, which
    vanishes without a word. A callback runs before any page code of the click's run, so the click is taken
    even if that run never gets further. ``start`` raises ``TLError`` to refuse (shown beneath the button until its
    next click); while ``busy()`` the button is disabled and says ``busy_label`` (a second click finds it busy too)."""

    def clicked() -> None:
        session().take_note(key)  # an answer to an earlier click goes with the new one
        if busy():
            return  # a double click, or a second tab: the work has started already
        try:
            start()
        except tlcore.TLError as e:
            session().note(key, str(e))
        except Exception as e:  # said beneath the button, where it stays; a raise showed it once
            LOG.exception("%s could not start", key)
            session().note(key, f"This could not start ({type(e).__name__}: {e}). Press the button again; if it "
                                "happens again, tell your teacher (the server's log has the details).")

    now_busy = busy()
    st.button(busy_label if now_busy else label, key=key, on_click=clicked,
              **{**button, "disabled": now_busy or button.get("disabled", False)})
    # read, not taken: a run that shows it may be replaced at once by the next (an impatient student's change), and
    # the answer to a click must outlast it; the next click of the button clears it
    if message := session().notes.get(key):
        st.error(message, icon=":material/error:")


def give_focus_back(key: str) -> None:
    """Give the keyboard focus back to the button of widget ``key`` once it can take it, if nothing holds it: a busy
    button is disabled (``start_button``), which drops the focus of the key that pressed it to the page, and the next
    Tab then started from the top of the page. The page does not scroll for it; a student who has moved on keeps
    where they are."""
    st.html(f"""<script>(() => {{
      const give = (tries) => {{
        const b = document.querySelector('.st-key-{key} button');
        if (document.activeElement && document.activeElement !== document.body) return;
        if (b && !b.disabled) b.focus({{preventScroll: true}});
        else if (tries > 0) setTimeout(() => give(tries - 1), 100);
      }};
      give(20);
    }})()</script>""", unsafe_allow_javascript=True)


def work_button(label: str, key: str, busy_label: str, **button) -> bool:
    """A button for work this page does itself, now (an export): True in the run that takes the click, where
    the button is drawn disabled, saying ``busy_label``, while the page does the work beneath it (then reruns).
    The click is recorded by a callback, as in ``start_button``, and taken by the first run that reaches this
    line, so a rerun that replaced the click's own run does not lose it."""
    asked = session().take_note(key) is not None
    st.button(busy_label if asked else label, key=key, on_click=session().note, args=(key, "asked"),
              **{**button, "disabled": asked or button.get("disabled", False)})
    return asked


def speed_if_known(backbone: str) -> tlcore.SpeedProfile | None:
    """The backbone's speed on this server, or None while a worker times it (asked once; a page never waits)."""
    try:
        return tlcore.known_speed(backbone)
    except tlcore.SpeedUnknown:
        return None


def polled(view: Callable[..., None], polling: bool, *args: object, every: float = 1.0) -> None:
    """Draw ``view(*args, polling)`` in a fragment that reruns every ``every`` seconds while ``polling`` (its work
    runs in a worker: only the fragment redraws). Once the work has ended, the view calls ``st.rerun()``: one full
    rerun shows the result everywhere on the page and, ``polling`` now false, stops the polling."""
    st.fragment(view, run_every=every if polling else None)(*args, polling)


def require_data(proj: Project) -> None:
    """Stop the page with guidance when there is nothing to train on."""
    try:
        tlcore.check_trainable(proj.images)
    except tlcore.TLError as e:
        st.info(f"{e}", icon=":material/info:")
        step_link("pages/data.py", "Go to the Data page", ":material/photo_library:")
        st.stop()


def require_run(proj: Project) -> RunRecord:
    """The run this page shows: the newest finished one, unless the user picked another here (comparison
    runs are offered only when asked for); stops the page with guidance when there is none."""
    runs = proj.finished_runs()
    page = session().page
    if any(r.group for r in runs) and not st.toggle("Include comparison runs", key=f"run_all_{page}"):
        runs = [r for r in runs if not r.group] or runs
    if not runs:
        st.info("There is no trained model yet. Train one first: it takes seconds with feature extraction.",
                icon=":material/info:")
        if read_only():
            st.caption("This is a read-only view: the project's owner trains its models.")
        else:
            step_link("pages/train.py", "Go to the Train page", ":material/model_training:")
        st.stop()
    ids = [r.id for r in runs]
    key = f"run_pick_{page}"
    if st.session_state.get(key) not in ids:  # nothing picked on this page (or it was deleted): the newest
        st.session_state[key] = ids[-1]
    run_id = st.selectbox("Model", ids, key=key, format_func=lambda i: run_choice(proj.run(i), proj.backbone))
    return proj.run(run_id)


def run_title(r: RunRecord | None) -> str:
    if r is None:
        return "?"
    score = r.result.score if r.result is not None else None
    acc_s = "" if score is None else f" · {score.right} of {score.n} right"
    return f"{r.id.split('-')[1]} · {r.label}{acc_s} · {r.status}"


def run_choice(r: RunRecord, backbone: str) -> str:
    """A finished run as a model picker offers it, short enough for a phone's 390 px (the picker's box cannot wrap):
    its number and score first, then its strategy; the project's own ``backbone`` goes without saying, and so does
    "completed" (only a stopped run says so)."""
    score = r.result.score if r.result is not None else None
    own = tlcore.get_backbone_spec(backbone).title + ", "
    label = r.label.removeprefix(own) if r.config.backbone == backbone else r.label
    return " · ".join([r.id.split("-")[1], *([f"{score.right} of {score.n} right"] if score else []), label,
                       *([r.status] if r.status != "completed" else [])])


ACCURACY_LABEL = "Right on photos it had not trained on"  # a run's one score, named the same on every page


def score_metric(where, score: tlcore.Score | None) -> None:
    """A run's one score as a metric: "11 of 15", "73 % · likely 45–92 %" beneath, how it was measured on hover."""
    if score is None:
        where.metric(ACCURACY_LABEL, "n/a", help="No photo was held out to measure it on.")
        return
    lo, hi = score.interval
    where.metric(ACCURACY_LABEL, f"{score.right} of {score.n}", f"{score.accuracy:.0%} · likely {lo:.0%}–{hi:.0%}",
                 delta_color="off", delta_arrow="off",
                 help=f"Each photo was classified by a model that had not trained on it ({score.method}). "
                      "Likely: with 95 in 100 sets of photos like these, the true accuracy lies in this range; "
                      "the fewer photos, the wider it is.")


def file_caption(name: str) -> str:
    """A file's whole name, to go under a small picture: places to wrap after each ``_ - .`` (a 72 px thumbnail holds
    about ten letters; names cut to twelve, "digit_0_008.", could not be told apart)."""
    return re.sub(r"([_.-])", "\\1\u200b", Path(name).name)


def explain(text: str) -> None:
    st.markdown(f":gray[{text}]")


def describe_snapshot(snap: tlcore.JobSnapshot) -> tuple[float, str]:
    """Progress fraction and a one-line status for a job."""
    if snap.state == "queued":
        return 0.0, (f"Waiting for a free training worker: position {snap.queue_position} in the queue, "
                     f"about {format_seconds(snap.wait_s)} to go.")
    if snap.last_batch is not None and snap.finished is None:
        b = snap.last_batch
        return b.fraction, (f"Epoch {b.epoch}, batch {b.batch}/{b.num_batches} · loss {b.loss:.3f} · "
                            f"{b.images_per_sec:.0f} images/s · about {format_seconds(b.eta_s)} left")
    if snap.progress is not None and snap.finished is None:
        p = snap.progress
        eta = "" if p.eta_s != p.eta_s else f" · about {format_seconds(p.eta_s)} left"  # NaN until measured
        return p.done / max(1, p.total), f"{p.what}: {p.done}/{p.total} images{eta}"
    if snap.finished is not None:
        return 1.0, snap.finished.reason
    return 0.0, "Starting…"


def format_seconds(s: float) -> str:
    if s < 60:
        return f"{s:.0f} s"
    return f"{int(s // 60)} min {int(s % 60):02d} s"
