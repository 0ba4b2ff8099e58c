"""Step 2: classes and their images: uploads, a zip, the camera, or a bundled sample."""
import time
from pathlib import Path

import plotly.graph_objects as go
import streamlit as st

import tlcore
from pages import data_check, live_camera
from pages.common import ASSETS, explain, file_caption, project, session, switch_project
from tlcore import thumbnail

proj = project()
images = proj.images
st.title("2 · Your data")
explain("Each **class** is one thing the model should tell apart (cat / dog, ripe / unripe). Give each class "
        "a name and some example images. With a pretrained backbone, 10–20 images per class is often enough; "
        "learning from scratch would need thousands.")

SAMPLES = {"digits": "Handwritten digits 0–4 (40 each, from scikit-learn; CC BY 4.0, UCI)",
           "faces": "Faces vs. not faces (100 each, LFW subset via scikit-image)",
           "ten digits": "Digits 0–9 (100 each, scikit-learn): big enough for the study of how many images you need"}


def upload_gen() -> int:
    return session().data.upload_gen


def report(rejected: list[tlcore.Rejected], added: int) -> None:
    session().data.last_upload = (added, [(r.file, r.reason) for r in rejected])


def add_files(label: str, key: str) -> None:
    files = st.session_state.get(key) or []
    if not isinstance(files, list):
        files = [files]
    before = len(images)
    rejected = images.add([(f.name, f.getvalue(), label) for f in files])
    proj.save()
    report(rejected, len(images) - before)
    session().data.upload_gen += 1  # a fresh, empty uploader


def add_zip() -> None:
    file = st.session_state.get(f"data_zip_{upload_gen()}")
    if file is None:
        return
    before = len(images)
    try:
        rejected = images.merge(tlcore.load_zip(file.getvalue(), room=images.room()))
    except tlcore.TLError as e:
        report([tlcore.Rejected(file.name, str(e))], 0)
    else:
        proj.save()
        report(rejected, len(images) - before)
    session().data.upload_gen += 1


def load_sample(name: str, where: str = "here") -> None:
    """Load a sample; into a project that has images only once the user has chosen (never by one click)."""
    if where == "ask" and images.classes:  # images, or classes named and not filled yet
        session().data.confirm_sample = name
        return
    session().data.confirm_sample = None
    target = proj
    if where == "new":
        switch_project(None, create=True)
        target = project()
    target.images = tlcore.sklearn_digits() if name == "ten digits" else tlcore.load_folder(ASSETS / "samples" / name)
    target.save()
    report(target.images.rejected, len(target.images))


def edited() -> None:
    """Another edit: the last upload's "Added N images" report is no longer news."""
    session().data.last_upload = None


def add_class() -> None:
    try:
        images.add_class(st.session_state.get("data_new_class", ""))
        proj.save()
        st.session_state["data_new_class"] = ""
        edited()
    except tlcore.TLError as e:
        session().note("data_class", str(e))


@st.fragment
def record_frames(proj: tlcore.Project, label: str) -> None:
    """Hold-to-record: each frame goes through the same checks as an upload; only this fragment reruns
    per frame, and the whole page once recording stops (to show the new counts)."""
    state = session().data.recording
    msg = live_camera.take("data_rec")
    if msg and msg.get("jpeg"):
        rejected = proj.images.add([(f"camera-{label}-{time.strftime('%H%M%S')}-{msg['seq']}.jpg", msg["jpeg"], label)])
        if rejected:
            state.note = f"Skipped a frame: {rejected[0].reason}"
        else:
            state.added += 1
            proj.save()
    elif msg and msg.get("stopped") and state.added:
        report([], state.added)
        state.added, state.note = 0, ""
        st.rerun(scope="app")
    elif msg and msg.get("error") == "insecure":
        state.insecure = msg.get("origin", "?")
    if state.insecure is not None:
        st.warning(live_camera.INSECURE.format(origin=state.insecure), icon=":material/no_photography:")
    count = proj.images.counts().get(label, 0)
    live_camera.show("data_rec", "record", interval_ms=round(1000 / tlcore.settings().limits.camera_fps), size=480, note=state.note,
                     count_text=f"{state.added} recorded now · '{label}' has {count} image{'s' * (count != 1)}")


with st.container(border=True):
    st.markdown("**Quick start: a sample dataset**")
    cols = st.columns(len(SAMPLES))
    for col, (name, title) in zip(cols, SAMPLES.items()):
        col.button(f"Load {name}", key=f"data_sample_{name.replace(' ', '_')}", on_click=load_sample, args=(name, "ask"),
                   help=title, icon=":material/dataset:")
        col.caption(title)

if pending := session().data.confirm_sample:
    with st.container(border=True):
        has = (f"{len(images)} images in {len(images.classes)} classes" if len(images) else
               f"the class{'es' * (len(images.classes) != 1)} {', '.join(images.classes)} (no images yet)")
        st.warning(f"This project already has {has}. Loading the {pending} sample here would replace them.",
                   icon=":material/warning:")
        a, b, c = st.columns(3)
        a.button(f"Open {pending} in a new project", type="primary", key="data_sample_new", on_click=load_sample,
                 args=(pending, "new"), icon=":material/create_new_folder:")
        b.button(f"Replace my {len(images)} images" if len(images) else "Replace my classes", key="data_sample_replace", on_click=load_sample,
                 args=(pending, "here"), icon=":material/delete_sweep:")
        c.button("Cancel", key="data_sample_cancel",
                 on_click=lambda: setattr(session().data, "confirm_sample", None))

tab_classes, tab_zip, tab_camera = st.tabs(["Classes and uploads", "Upload a zip", "Camera"])
with tab_classes:
    with st.form("data_new_class_form", border=False):  # Enter in the name field adds the class too
        c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
        c1.text_input("New class name", key="data_new_class", placeholder="e.g. cat")
        c2.form_submit_button("Add class", on_click=add_class, icon=":material/add:", key="data_add_class")
    if msg := session().take_note("data_class"):
        st.error(msg)
with tab_zip:
    explain("A .zip with one folder per class, each holding that class's images. Hidden files and __MACOSX "
            "are ignored; unsafe entries are refused and listed.")
    st.file_uploader("Zip file", key=f"data_zip_{upload_gen()}", on_change=add_zip)
with tab_camera:
    if not images.classes:
        st.info("Add a class first, then record images of it from the camera.")
    else:
        explain("Start the camera, point it at an example of the class and hold **Hold to record**: a few frames "
                "a second join the class (move the object around for variety). The browser asks for the camera "
                "only when you press Start.")
        target = st.selectbox("Record into class", images.classes, key="data_camera_class")
        record_frames(proj, target)

if report_ := session().data.last_upload:
    added, rejected = report_
    if added:
        st.success(f"Added {added} image{'s' * (added != 1)}.", icon=":material/check:")
    if rejected:
        with st.expander(f"{len(rejected)} file{'s' * (len(rejected) != 1)} not used: see why", expanded=True,
                         icon=":material/report:"):
            st.markdown("\n".join(f"- **{f}**: {r}" for f, r in rejected[:100]))
            if len(rejected) > 100:
                st.caption(f"…and {len(rejected) - 100} more.")

undo = session().data.undo  # the last removal, until it is undone or another comes
if undo and undo[0] == proj.name:
    _, label, removed = undo
    u1, u2 = st.columns([4, 1], vertical_alignment="center")
    u1.info(f"Removed {len(removed)} image{'s' * (len(removed) != 1)} from '{label}'.", icon=":material/delete:")
    if u2.button("Undo", key="data_undo_go", icon=":material/undo:"):
        images.restore(removed)
        proj.save()
        session().data.undo = None
        st.rerun()

if not images.classes:
    st.info("No classes yet: load a sample above, upload a zip, or add a class.", icon=":material/info:")
    st.stop()

counts = images.counts()
for k, label in enumerate(images.classes):
    with st.container(border=True):
        head = st.columns([2, 1, 1], vertical_alignment="bottom")  # "Delete" whole at 1024 px
        head[0].markdown(f"### {label} · {counts[label]} image{'s' * (counts[label] != 1)}")
        with head[1].popover("Rename", icon=":material/edit:"):
            new = st.text_input("New name", value=label, key=f"data_rename_{k}")
            if st.button("Rename", key=f"data_rename_go_{k}"):
                try:
                    images.rename_class(label, new)
                    proj.save()
                    edited()
                    st.rerun()
                except tlcore.TLError as e:
                    st.error(str(e))
        with head[2].popover("Delete", icon=":material/delete:"):
            st.markdown(f"Delete class **{label}** and its {counts[label]} images? This cannot be undone.")
            if st.button("Yes, delete it", type="primary", key=f"data_delete_{k}"):
                images.remove_class(label)
                proj.save()
                edited()
                st.rerun()
        st.file_uploader(f"Add images to '{label}'", accept_multiple_files=True,
                         key=f"data_up_{k}_{upload_gen()}", on_change=add_files,
                         args=(label, f"data_up_{k}_{upload_gen()}"))
        items = [i for i in images.items if i.label == label]
        if items:
            shown = items[:48]
            if not st.toggle("Pick images to remove or move", key=f"data_picking_{k}"):
                st.image([thumbnail(i, 72) for i in shown], caption=[file_caption(i.name) for i in shown], width=72,
                         alt=[f"class {label}: {Path(i.name).name}" for i in shown])
            else:  # each thumbnail with its own tick box: pick what you see, not a file name
                grid = st.columns(8)
                for n, item in enumerate(shown):
                    grid[n % 8].image(thumbnail(item, 72), width=72, alt=f"class {label}: {Path(item.name).name}")
                    grid[n % 8].checkbox(file_caption(item.name), key=f"data_pick_{k}_{item.digest[:12]}")
                picked = [i.digest for i in shown if st.session_state.get(f"data_pick_{k}_{i.digest[:12]}")]
                m1, m2, m3 = st.columns([2, 1, 1], vertical_alignment="bottom")
                others = [c for c in images.classes if c != label]
                to = m1.selectbox("Move to class", others, key=f"data_move_to_{k}") if others else None
                if m2.button("Move", key=f"data_move_{k}", disabled=not picked or to is None):
                    images.move(picked, to)
                    proj.save()
                    edited()
                    st.rerun()
                if m3.button("Remove", key=f"data_remove_{k}", disabled=not picked):
                    session().data.undo = (proj.name, label, [i for i in items if i.digest in set(picked)])
                    images.discard(picked)
                    proj.save()
                    edited()
                    st.rerun()
            if len(items) > len(shown):
                st.caption(f"…and {len(items) - len(shown)} more.")
        else:
            st.caption("No images yet.")

if sum(n > 0 for n in counts.values()) >= 2:
    data_check.panel(proj)

st.subheader("Class balance")
fig = go.Figure(go.Bar(x=list(counts), y=list(counts.values()), text=list(counts.values())))
fig.update_layout(height=280, margin=dict(t=10, b=30, l=10, r=10), yaxis_title="images", xaxis_type="category")
st.plotly_chart(fig, key="data_balance")
try:
    for w in tlcore.check_trainable(images):
        st.warning(w, icon=":material/warning:")
    n_train, n_val = images.split_sizes(proj.settings.val_fraction, proj.settings.seed)
    st.markdown(f"**Split:** {n_train} images to train on, {n_val} held out for validation "
                f"({proj.settings.val_fraction:.0%} of each class, the same every run). The validation images "
                f"are never trained on: they show how well the model does on pictures it has not seen.")
    if min(n for n in counts.values() if n) < 5:
        st.info("Some classes have fewer than 5 images: accuracy figures will be rough. Add more if you can.")
except tlcore.TLError as e:
    st.info(str(e), icon=":material/info:")
