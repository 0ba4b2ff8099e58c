"""The teacher's page: how students join, the class kit, the class's progress, runs to stop, the challenge."""
import functools
import io
import time

import segno
import streamlit as st

import tlcore
from pages.common import ASSETS, describe_snapshot, explain, open_session, session
from tlcore import SERVER

open_session()  # a deep link to /teacher on a freshly started server runs this page alone: app.py takes over
password = tlcore.settings().teacher_password
projector = SERVER.teacher.board_ok(st.query_params.get("board"))  # the projector's own key: the board, nothing else
if not password:
    st.title("Teacher")
    st.info("The teacher page is off. To turn it on, start the server with a password, e.g. "
            "`TLS_TEACHER_PASSWORD=choose-one streamlit run app.py`, then open this page and type it.",
            icon=":material/lock:")
    st.stop()


def log_out() -> None:
    SERVER.teacher.logout(session().teacher_key)
    session().teacher_key = None
    for k in ("t", "board"):
        st.query_params.pop(k, None)


def log_in(password: str) -> None:
    """The password typed (a callback, so a click on Open survives a busy server's redraw: see start_button)."""
    if key := SERVER.teacher.login(st.session_state["teacher_password"], password):
        session().teacher_key = st.query_params["t"] = key
    else:
        session().note("teacher_login", "That is not the teacher password.")


def board_rows(challenge: tlcore.Challenge, pct) -> list[dict]:
    """One row per student (their best entry); equal scores share a rank."""
    return [{"rank": challenge.rank(e.accuracy), "student": e.student,
             "right on the hidden photos": f"{e.text()} ({e.accuracy:.0%})", "strategy": e.strategy,
             "training images": e.train_images, **{f"recall · {c}": pct(e.recall.get(c)) for c in challenge.classes}}
            for e in challenge.best_entries()]


PROJECTOR_ROWS, PROJECTOR_COLUMNS, PAGE_TURN_S = 15, 2, 10  # 30 students on one 1024x768 screen; more turn pages


def projector_board(challenge: tlcore.Challenge) -> None:
    """The board for a projector: rank, student, score, strategy in side-by-side columns of 15 rows, 30 students a
    screen; a longer board shows its pages in turn, one every 10 s."""
    rows = [{"rank": challenge.rank(e.accuracy), "student": e.student, "right": e.text(), "strategy": e.strategy}
            for e in challenge.best_entries()]
    per_page = PROJECTOR_ROWS * PROJECTOR_COLUMNS
    pages = -(-len(rows) // per_page)
    page = int(time.time() // PAGE_TURN_S) % pages
    shown = rows[page * per_page:(page + 1) * per_page]
    for k, col in enumerate(st.columns(PROJECTOR_COLUMNS)):
        if chunk := shown[k * PROJECTOR_ROWS:(k + 1) * PROJECTOR_ROWS]:
            col.table(chunk, hide_index=True)
    if pages > 1:
        st.caption(f"Page {page + 1} of {pages} ({len(rows)} students): the next turns in {PAGE_TURN_S} s.")


@st.fragment(run_every=3.0)
def board(projector: bool) -> None:
    """The live leaderboard, refreshed every 3 s: one row per student; on the projector, 30 to a screen."""
    challenge = tlcore.current_challenge()
    if challenge is None:
        st.info("No challenge yet: upload a hidden test set below.", icon=":material/emoji_events:")
        return
    st.subheader(f":material/emoji_events: {challenge.name}")
    if not projector:
        st.caption(f"Hidden test set: {sum(challenge.counts.values())} images of "
                   f"{', '.join(f'{c} ({n})' for c, n in challenge.counts.items())}. Students enter a model from "
                   "their Evaluate page; nobody sees these images. One row per student: their best entry.")
    if not challenge.entries:
        st.info("No entries yet.")
    elif projector:
        projector_board(challenge)
    else:  # a table whose cells wrap: a phone shows every column (a dataframe's canvas needed a sideways swipe)
        st.table(board_rows(challenge, lambda v: "–" if v is None else f"{v:.0%}"), hide_index=True)
    if not projector:
        st.caption("Look at the strategy and the number of training images beside each score: a pretrained "
                   "backbone with a few images usually beats a network trained from scratch.")


@st.fragment(run_every=5.0)
def class_lab() -> None:
    """Every student's ladders, studies and challenge entries pooled, refreshed every 5 s (no photo shown)."""
    summary = tlcore.class_summary(tlcore.current_challenge())
    table = functools.partial(st.table, hide_index=True)  # cells that wrap: whole on a projector and a phone alike
    st.subheader(":material/science: What the class found")
    if not summary.ladders:
        st.info("When students run the ladder on their Compare page, the class's results pool here: for each pair "
                "of strategies, in how many projects one beat the other, photo by photo.", icon=":material/science:")
    else:
        if line := summary.headline():
            st.success(f"Together: {line}.", icon=":material/school:")
        st.caption(f"{summary.ladders} ladder{'s' * (summary.ladders != 1)} of {summary.projects} projects. Each project "
                   "compares its strategies on its own photos, photo by photo; the class's average difference has its "
                   "95 % range: the more projects, the narrower.")
        table([p.row() for p in summary.pairs])
    if summary.study:
        st.markdown("**How many photos do you need?** (the class's studies, pooled: right of all photos scored)")
        table(summary.study_rows())
    if summary.challenge:
        st.markdown("**On the teacher's hidden photos**, by strategy (every entry pooled)")
        table(summary.challenge_rows())


def join_qr(url: str, scale: int) -> bytes:
    png = io.BytesIO()
    segno.make(url, error="m").save(png, kind="png", scale=scale, border=2)
    return png.getvalue()


https = bool(st.get_option("server.sslCertFile"))
join = tlcore.server_urls(st.get_option("server.port"), https, "?kit=1")
if projector:  # app.py draws no sidebar or step bar for it
    # no sidebar either: arriving from the Teacher page (whose sidebar has a link), Streamlit kept its empty strip
    st.html("<style>header, [data-testid='stToolbar'], [data-testid='stSidebar'], "
            "[data-testid='stSidebarCollapsedControl'] {display: none !important}"
            ".block-container {padding: 0.5rem 1rem !important; max-width: 100% !important}"
            "[data-testid='stTable'] table {font-size: 0.95rem; width: 100%}"
            "[data-testid='stTable'] td, [data-testid='stTable'] th {padding: 0.15rem 0.4rem !important}"
            "[data-testid='stMarkdownContainer'] p, [data-testid='stCaptionContainer'] {font-size: 1.1rem}"
            "h3 {font-size: 1.8rem !important; padding: 0.2rem 0 !important}</style>")
    left, right = st.columns([5, 1])
    with left:
        board(projector)
    right.image(join_qr(join[0], 5), caption="Scan to join", width="stretch", alt=f"QR code of {join[0]}")
    right.markdown(f"**Join the class:**\n\n`{join[0]}`")
    class_lab()
    st.page_link("pages/teacher.py", label="Back to the Teacher page", icon=":material/arrow_back:")
    st.stop()

if not SERVER.teacher.ok(session().teacher_key) and SERVER.teacher.ok(st.query_params.get("t")):
    session().teacher_key = st.query_params["t"]  # the teacher's own link: a reload needs no password
if not SERVER.teacher.ok(session().teacher_key):
    st.title("Teacher")
    with st.form("teacher_login"):
        st.text_input("Teacher password", type="password", key="teacher_password")
        st.form_submit_button("Open", icon=":material/lock_open:", on_click=log_in, args=(password,))
    if error := session().take_note("teacher_login"):
        st.error(error)
    st.stop()

a, b = st.columns([5, 1], vertical_alignment="bottom")
a.title("Teacher")
b.button("Log out", key="teacher_logout", on_click=log_out, icon=":material/logout:",
         help="Forgets this tab's teacher link: the password is needed again.")

# ----------------------------------------------------------------------------- how students join
with st.container(border=True):
    text, qr = st.columns([3, 2], vertical_alignment="center")
    text.markdown(f"### :material/group_add: Join the class\nOn your laptop, tablet or phone, open\n\n"
                  f"## `{join[0]}`")
    if len(join) > 1:
        text.caption("Or, on another network of this machine: " + " · ".join(f"`{u}`" for u in join[1:]))
    text.markdown(":material/photo_camera: The camera works only over **HTTPS** or on localhost: "
                  + ("this server has a certificate; each browser accepts it once." if https else
                     "start the server with a certificate (`python -m tlcore cert`, see the README) to use it."))
    qr.image(join_qr(join[0], 10), caption="Scan to join", width=320, alt=f"QR code of {join[0]}")

# ----------------------------------------------------------------------------- the class kit
kit = tlcore.current_kit()
with st.expander("Class kit" + (f": {kit.name}" if kit else ""), icon=":material/inventory_2:", expanded=kit is None):
    if kit:
        st.markdown(f"Every student who joins gets their own copy of **{kit.name}**: "
                    f"{', '.join(f'{c} ({n})' for c, n in kit.counts.items())}"
                    + (f" · backbone {tlcore.get_backbone_spec(kit.backbone).title}" if kit.backbone else "")
                    + (f" · {tlcore.STRATEGY_TITLES[kit.mode]}" if kit.mode else "") + ".")
    explain("The data (and optionally the backbone and strategy) every student starts from: the join link and "
            "the sidebar's *Start from the class kit* open a new project with a copy of it.")
    samples = sorted(p.name for p in (ASSETS / "samples").iterdir() if p.is_dir())
    backbones = tlcore.list_backbones(include_test=tlcore.settings().test_backbones)
    with st.form("teacher_kit"):
        source = st.selectbox("Data", [*samples, "a zip of my own"], key="teacher_kit_source", index=None,
                              placeholder="Choose the class's data…",
                              format_func=lambda s: s if s.startswith("a zip") else f"the {s} sample")
        upload = st.file_uploader("Your zip (one folder per class)", type=["zip"], key="teacher_kit_zip")
        c, d = st.columns(2)
        backbone = c.selectbox("Backbone", [None, *(s.name for s in backbones)], key="teacher_kit_backbone",
                               format_func=lambda n: "the students choose" if n is None else
                               tlcore.get_backbone_spec(n).title)
        mode = d.selectbox("Strategy", [None, *tlcore.STRATEGY_TITLES], key="teacher_kit_mode",
                           format_func=lambda m: "the students choose" if m is None else tlcore.STRATEGY_TITLES[m])
        if st.form_submit_button("Replace the class kit" if kit else "Use as the class kit",
                                 icon=":material/inventory_2:"):
            try:
                if source is None:
                    raise tlcore.TLError("Choose the data first: nothing was changed.")
                if source in samples:
                    made = tlcore.create_kit(source, tlcore.folder_zip(ASSETS / "samples" / source), backbone, mode)
                elif upload is None:
                    raise tlcore.TLError("Choose the zip first.")
                else:
                    made = tlcore.create_kit(upload.name.removesuffix(".zip"), upload.getvalue(), backbone, mode)
                st.success(f"The class kit is **{made.name}**: students who join now start from it.")
            except tlcore.TLError as e:
                st.error(str(e), icon=":material/error:")

# ----------------------------------------------------------------------------- the challenge
board(projector)
st.page_link("pages/teacher.py", label="Projector view of the leaderboard", icon=":material/fit_screen:",
             query_params={"board": SERVER.teacher.board_key},
             help="The leaderboard alone, large, for the projector. Its address opens the board only, never this page.")
class_lab()

with st.expander("New challenge", icon=":material/upload:", expanded=tlcore.current_challenge() is None):
    explain("A .zip with one folder per class of images the students never see (e.g. 10 photos per class). "
            "Students' class names must match the folder names (capitals do not matter).")
    with st.form("teacher_challenge"):
        name = st.text_input("Challenge name", placeholder="e.g. Fruit or vegetable?", key="teacher_ch_name")
        hidden = st.file_uploader("Hidden test set (.zip)", type=["zip"], key="teacher_ch_zip")
        if st.form_submit_button("Start the challenge", type="primary", icon=":material/flag:"):
            try:
                if hidden is None:
                    raise tlcore.TLError("Choose the zip of hidden images first.")
                made = tlcore.create_challenge(name, hidden.getvalue(), SERVER.hidden)
                st.success(f"Challenge **{made.name}** is open: {', '.join(made.classes)}.")
            except tlcore.TLError as e:
                st.error(str(e), icon=":material/error:")

# ----------------------------------------------------------------------------- the class's progress
stuck_min = st.number_input("Flag students without images after (minutes)", 1, 90, 5, key="teacher_stuck_min")


@st.fragment(run_every=3.0)
def projects(stuck_min: float) -> None:
    """Every project on this server, refreshed every 3 s: each student's progress, then runs to stop."""
    live = [p for p in (SERVER.projects.get(n) for n in SERVER.projects.live()) if p is not None]
    challenge = tlcore.current_challenge()
    entered = {e.project for e in challenge.entries} if challenge else set()
    st.subheader("Class progress")
    rows = tlcore.class_progress(live, entered, stuck_min * 60)
    st.table([{"student": r.student, "step": r.step, "images": r.images, "runs": r.runs,  # cells wrap on a phone
               "best: right on photos it had not trained on": "" if r.best is None else
               f"{r.best.right} of {r.best.n} ({r.best.accuracy:.0%})",
               "needs help": f"no images after {stuck_min} min" if r.idle else ""} for r in rows],
             hide_index=True)
    limits = tlcore.settings().limits
    for proj in (p for p in live if len(p.images) or p.runs):
        finished = [r for r in proj.finished_runs() if r.result.score is not None]
        best = max(finished, key=lambda r: (r.result.score.accuracy, r.result.score.n), default=None)
        counts = proj.images.counts()
        with st.container(border=True):
            a, b = st.columns([3, 2])
            a.markdown(f"**{proj.student or proj.name}** · {len(counts)} classes, {sum(counts.values())} images"
                       + (f" ({', '.join(f'{c}: {n}' for c, n in counts.items())})" if counts else ""))
            b.markdown("best: " + (f"{best.label} · **{best.result.score.right} of {best.result.score.n}** right on "
                                   "photos it had not trained on" if best else "no model yet"))
            st.caption(f"Uses {len(proj.images)} of {limits.images_per_project:,} images · "
                       f"{tlcore.folder_mb(proj.folder):,.0f} of {limits.project_mb:,} MB · "
                       f"{len(proj.active_runs())} of {limits.queued_runs} runs queued or training · "
                       f"{len(proj.runs)} runs in all (limits: README, *Settings*) · project {proj.name}")
            for r in proj.active_runs():
                c, d = st.columns([4, 1], vertical_alignment="center")
                c.caption(f"{r.label}: {describe_snapshot(r.job.snapshot())[1]}")
                d.button("Stop", key=f"teacher_stop_{proj.name}_{r.id}", on_click=r.job.stop, args=("by the teacher",),
                         icon=":material/stop:", help="Stops this run (its best epoch is kept) to free the server for others.")


projects(stuck_min)
