"""The Data page's review panel: images the model doubts, largest doubt first, each fixed or kept in one click.

The check (``tlcore.check_data``) changes nothing. It runs in a training worker, never in this server, once per
set of images, classes and backbone; its result stays in the project's folder. The marks live there too
(``tlcore.Review``): a kept image is not shown again, every action can be undone, and both survive class
filters and reloads.
"""
from __future__ import annotations

import streamlit as st

import tlcore
from pages import insight
from pages.common import explain, session, student
from tlcore import thumbnail

SHOWN = 12  # findings shown at once (the rest follow as these are dealt with)
ALL = "All classes"
TITLES = {"label": "Maybe in the wrong class", "duplicate": "The same picture twice",
          "outlier": "Unlike every class"}
ICONS = {"label": ":material/swap_horiz:", "duplicate": ":material/content_copy:", "outlier": ":material/help:"}


def _wait(proj: tlcore.Project, config: tlcore.TrainConfig) -> None:
    """Progress while a worker checks (polled each second); the whole page reruns once it has ended."""
    s = insight.state(proj, "data-check", config)
    if not s.running:
        st.rerun()
    insight.show_progress(s, "Checking your images with the backbone")


def _act(proj: tlcore.Project, action: str, finding: tlcore.Finding, target: str | None = None) -> None:
    """A click on Move / Remove / Keep (a widget callback: the page then shows the data as it is now)."""
    review = tlcore.Review.load(proj.folder)
    try:
        if action == "move":
            review.move(proj, finding, target)
        elif action == "remove":
            review.remove(proj, finding)
        else:
            review.keep(finding)
    except tlcore.TLError as e:
        session().note("data_check", str(e))
    session().data.last_upload = None  # the last upload's report is no longer news


def _undo(proj: tlcore.Project, action_id: int) -> None:
    try:
        tlcore.Review.load(proj.folder).undo(proj, action_id)
    except tlcore.TLError as e:
        session().note("data_check", str(e))


def _checked(proj: tlcore.Project) -> tlcore.DataCheck | None:
    """The check of ``proj``'s images: started in a worker when they are new; while it runs, progress (polled)
    and the last check of this project (what it flagged and is still there); None when there is none yet."""
    backbone = tlcore.check_backbone(proj.backbone)
    if backbone != proj.backbone:
        st.caption(f"Checked with {tlcore.get_backbone_spec(backbone).title}: the chosen backbone's weights are "
                   "not on this server yet (they download when you train).")
    config = tlcore.TrainConfig(backbone=backbone)
    s = insight.state(proj, "data-check", config)
    if s.result is None and not s.running and s.error is None:  # new images: check them, in a worker
        try:
            s = tlcore.SERVER.analyses.start(proj.folder, "data-check", proj.images, config, student())
        except tlcore.TLError as e:
            s = tlcore.AnalysisState(None, False, None, str(e))
    if s.error is not None:
        st.info(f"The data check needs the backbone's features: {s.error}", icon=":material/info:")
        return None
    state = session()
    if s.result is not None:
        state.data.check = (proj.name, s.result)
    else:  # until it ends, the last check of these images shows (what it flagged and is still there)
        st.fragment(_wait, run_every=1.0)(proj, config)
        if state.data.check is None or state.data.check[0] != proj.name:
            return None
    return state.data.check[1]


def panel(proj: tlcore.Project) -> None:
    """The review panel of ``proj``'s images (call it once the project has two classes with images)."""
    st.subheader("Check your data")
    explain("The model looks for images that may be in the **wrong class** (each judged by a model trained "
            "without it), the **same picture twice** (in two classes it contradicts itself), and pictures "
            "**unlike every class**. Nothing changes until you click; every click can be undone below.")
    result = _checked(proj)
    if result is None:
        return
    review = tlcore.Review.load(proj.folder)
    if new := review.announce(result):
        st.toast(f"The data check found {new} new image{'s' * (new != 1)} to look at: see **Check your data**.",
                 icon=":material/rule:")
    if msg := session().take_note("data_check"):
        st.error(msg, icon=":material/error:")
    images = proj.images
    pending = review.pending(result, images)
    if images.classes and st.session_state.get("data_check_class", ALL) not in [ALL, *images.classes]:
        st.session_state["data_check_class"] = ALL  # its class was renamed or deleted
    show = st.selectbox("Show", [ALL, *images.classes], key="data_check_class",
                        format_func=lambda c: c if c == ALL else f"class '{c}'")
    shown = [f for f in pending if show == ALL or f.given == show]
    if not pending:
        st.success(f"Nothing to check: the model finds no doubtful image among {result.images}.",
                   icon=":material/verified:")
    elif not shown:
        st.caption(f"Nothing to check in '{show}'; {len(pending)} in other classes.")
    else:
        st.markdown(f"**{len(shown)} image{'s' * (len(shown) != 1)} to check**, largest doubt first.")
    by_digest = {i.digest: i for i in images.items}
    for f in shown[:SHOWN]:
        item = by_digest[f.digest]
        with st.container(border=True):
            pic, twin, text = st.columns([1, 1, 5], vertical_alignment="center")
            pic.image(thumbnail(item, 96), width=96, alt=f"to check: class {f.given}: {item.name}")
            if f.other in by_digest:
                twin.image(thumbnail(by_digest[f.other], 96), width=96, caption="the other copy",
                           alt=f"the other copy: class {by_digest[f.other].label}: {by_digest[f.other].name}")
            text.markdown(f"{ICONS[f.kind]} **{TITLES[f.kind]}** · **{item.name}** in **{f.given}** "
                          f"(doubt {f.doubt:.0%})  \n{f.reason}")
            b1, b2, b3 = text.columns(3)
            if f.suggested is not None and f.suggested in images.classes:
                b1.button(f"Move to {f.suggested}", key=f"data_check_move_{f.digest}", on_click=_act,
                          args=(proj, "move", f, f.suggested), icon=":material/drive_file_move:")
            b2.button("Remove", key=f"data_check_remove_{f.digest}", on_click=_act, args=(proj, "remove", f),
                      icon=":material/delete:")
            b3.button("Keep", key=f"data_check_keep_{f.digest}", on_click=_act, args=(proj, "keep", f),
                      icon=":material/check:", help="It is right as it is: it will not be shown again.")
    if len(shown) > SHOWN:
        st.caption(f"…and {len(shown) - SHOWN} more, shown as you deal with these.")
    if review.actions:
        fixed, kept = len(review.fixed), len(review.kept)
        with st.expander(f"Your review: {fixed} fixed, {kept} kept · undo any", icon=":material/undo:"):
            for a in reversed(review.actions):
                what, undo = st.columns([5, 1], vertical_alignment="center")
                what.markdown(a.text())
                undo.button("Undo", key=f"data_check_undo_{a.id}", on_click=_undo, args=(proj, a.id))
    if summary := review.summary():
        st.caption(summary)
