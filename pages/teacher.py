"""The teacher's page: every project on this server, runs to stop, and the class challenge."""
import hmac
import os

import streamlit as st

import tlcore
from pages.common import describe_snapshot, explain
from tlcore import PROJECTS

st.title("Teacher")
password = os.environ.get("TLS_TEACHER_PASSWORD", "")
if not password:
    st.info("The teacher page is off. To turn it on, start the server with a password, e.g. "
            "`TLS_TEACHER_PASSWORD=choose-one streamlit run app.py`, then open this page and type it.",
            icon=":material/lock:")
    st.stop()
if not st.session_state.get("tls_teacher"):
    with st.form("teacher_login"):
        typed = st.text_input("Teacher password", type="password", key="teacher_password")
        if st.form_submit_button("Open", icon=":material/lock_open:"):
            if hmac.compare_digest(typed.encode(), password.encode()):
                st.session_state["tls_teacher"] = True
                st.rerun()
            st.error("That is not the teacher password.")
    st.stop()


@st.fragment(run_every=3.0)
def board() -> None:
    """The live leaderboard (for the projector): refreshed every 3 s."""
    challenge = tlcore.current_challenge()
    if challenge is None:
        st.info("No challenge yet: upload a hidden test set below.", icon=":material/emoji_events:")
        return
    st.subheader(f":material/emoji_events: {challenge.name}")
    st.caption(f"Hidden test set: {sum(challenge.counts.values())} images of "
               f"{', '.join(f'{c} ({n})' for c, n in challenge.counts.items())}. Students enter a model from their "
               "Evaluate page; nobody sees these images.")
    rows = [{"rank": k + 1, "student": e.student, "accuracy": e.accuracy, "strategy": e.strategy,
             "training images": e.train_images,
             **{f"recall · {c}": e.recall.get(c) for c in challenge.classes}}
            for k, e in enumerate(challenge.leaderboard())]
    if not rows:
        st.info("No entries yet.")
        return
    pct = st.column_config.ProgressColumn(format="percent", min_value=0, max_value=1)
    st.dataframe(rows, hide_index=True, key="teacher_board",
                 column_config={"accuracy": pct, **{f"recall · {c}": pct for c in challenge.classes}})
    st.caption("Look at the strategy and the number of training images beside each score: a pretrained backbone "
               "with a few images usually beats a network trained from scratch.")


board()

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
                made = tlcore.create_challenge(name, hidden.getvalue())
                st.success(f"Challenge **{made.name}** is open: {', '.join(made.classes)}.")
            except tlcore.TLError as e:
                st.error(str(e), icon=":material/error:")

@st.fragment(run_every=3.0)
def projects() -> None:
    """Every project with images on this server, refreshed every 3 s: best run, runs training or queued."""
    live = [p for p in (PROJECTS.get(n) for n in PROJECTS.live()) if p is not None]
    shown = [p for p in live if len(p.images) or p.runs]
    st.subheader("Projects on this server")
    if not shown:
        st.info("No student has added images yet.")
    if len(live) > len(shown):
        st.caption(f"…and {len(live) - len(shown)} open project(s) with nothing in them yet.")
    limits = tlcore.Limits.from_env()
    for proj in shown:
        finished = [r for r in proj.finished_runs() if r.result.val_accuracy is not None]
        best = max(finished, key=lambda r: r.result.val_accuracy, default=None)
        counts = proj.images.counts()
        with st.container(border=True):
            a, b = st.columns([3, 2])
            a.markdown(f"**{proj.name}** · {len(counts)} classes, {sum(counts.values())} images"
                       + (f" ({', '.join(f'{c}: {n}' for c, n in counts.items())})" if counts else ""))
            b.markdown("best: " + (f"{best.label} · **{best.result.val_accuracy:.0%}**" if best else "no model yet"))
            st.caption(f"Uses {len(proj.images)} of {limits.images_per_project:,} images · "
                       f"{tlcore.folder_mb(proj.folder):,.0f} of {limits.project_mb:,} MB · "
                       f"{len(proj.active_runs())} of {limits.queued_runs} runs queued or training · "
                       f"{len(proj.runs)} runs in all (limits: README, *Settings*)")
            for r in proj.active_runs():
                c, d = st.columns([4, 1], vertical_alignment="center")
                c.caption(f"{r.label}: {describe_snapshot(r.job.snapshot())[1]}")
                d.button("Stop", key=f"teacher_stop_{proj.name}_{r.id}", on_click=r.job.stop, args=("by the teacher",), icon=":material/stop:",
                         help="Stops this run (its best epoch is kept) to free the server for others.")


projects()
