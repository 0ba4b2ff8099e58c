"""Step 1: choose the pretrained backbone, and see what it already recognises."""
import dataclasses

import plotly.graph_objects as go
import streamlit as st

import tlcore
from pages import insight
from pages.common import ASSETS, explain, polled, project, session, speed_if_known, work_button

proj = project()
st.title("1 · Choose a backbone")
explain("A **backbone** is a network already trained on ImageNet: 1.2 million photos in 1,000 classes. "
        "Its early layers learned general features (edges, colours, textures), its later layers more specific "
        "shapes. We cut off its ImageNet classifier and reuse the rest for *your* classes.")

st.image(str(ASSETS / "backbone.png"), width=720,
         alt="Diagram: a backbone pretrained on ImageNet (stem, blocks 1 to 5, head) loses its classifier of 1,000 "
             "ImageNet classes and is reused with a new head for your classes; early blocks see general features "
             "(edges, colours, textures), later ones specific parts and objects.")

specs = tlcore.list_backbones(include_test=tlcore.settings().test_backbones)
AVAILABILITY = {"bundled": ":green-badge[:material/check: installed, works offline]",
                "cached": ":blue-badge[:material/download_done: downloaded]",
                "download": ":orange-badge[:material/cloud_download: downloads on first use]"}


def choose(name: str) -> None:
    spec = tlcore.get_backbone_spec(name)
    if spec.availability() == "download":
        bar = st.progress(0.0, text=f"Downloading {spec.title} ({spec.weights_mb:.0f} MB)…")

        def progress(done: int, total: int) -> None:
            total = total or int(spec.weights_mb * 2**20)
            bar.progress(min(1.0, done / total), text=f"Downloading {spec.title}: {done / 2**20:.1f} of "
                                                      f"{total / 2**20:.1f} MB")

        try:
            tlcore.ensure_weights(spec, progress)
        except tlcore.TLError as e:
            bar.empty()
            session().note("backbone", str(e))
            return
        bar.empty()
    proj.backbone = name
    proj.settings = dataclasses.replace(proj.settings, backbone=name, freeze_depth=None)  # stages differ
    proj.save()
    st.toast(f"Using {spec.title}.", icon=":material/check:")


measured = session().measured
measured.add(proj.backbone)
explain("Speed here: milliseconds per image, timed as one pass over a batch of 8 images divided by 8. The **torch** "
        "figure is measured the same way for every backbone: compare backbones by it. Where a backbone's weights are "
        "installed, the fast runtime that feature extraction uses (OpenVINO or ONNX Runtime) is timed on the same batch too.")
timing = [spec.name for spec in specs if spec.name in measured and speed_if_known(spec.name) is None]
st.button("Measuring…" if timing else "Measure speed on this machine", key="backbone_measure", disabled=bool(timing),
          icon=":material/speed:", on_click=measured.update, args=([spec.name for spec in specs],),
          help="Each backbone is timed once per server, one after another, in a training worker.")
if error := session().take_note("backbone"):
    st.error(error, icon=":material/cloud_off:")


def card_facts(spec: tlcore.BackboneSpec, timing: bool) -> None:
    """The card's figures; its speed once a worker has timed it (the fragment polls until then, then reruns the
    page so the button comes back)."""
    speed = speed_if_known(spec.name) if spec.name in measured else None
    if timing and speed is not None:
        st.rerun()
    ms = speed.text() if speed else "timing in a worker…" if spec.name in measured else "not measured"
    top1 = "n/a" if spec.imagenet_top1 is None else f"{spec.imagenet_top1:.1f}%"
    body_params = sum(tlcore.stage_param_counts(spec.name))
    st.markdown(f"{spec.num_params / 1e6:.1f} M parameters ({body_params / 1e6:.2f} M without the ImageNet "
                f"classifier, which your classes replace) · {spec.preprocess.input_size} px input · "
                f"ImageNet top-1 {top1} · {len(spec.stage_names)} stages · speed here: {ms}")


cols = st.columns(3)
for k, spec in enumerate(specs):
    with cols[k % 3].container(border=True):
        selected = spec.name == proj.backbone
        st.markdown(f"#### {spec.title}" + (" :material/radio_button_checked:" if selected else ""))
        st.caption(spec.description)
        st.markdown(AVAILABILITY[spec.availability()] + ("" if spec.availability() == "bundled"
                                                          else f" {spec.weights_mb:.0f} MB"))
        polled(card_facts, spec.name in timing, spec, every=2.0)
        st.button("Selected" if selected else "Use this backbone", key=f"backbone_use_{spec.name}",
                  disabled=selected, type="primary" if not selected else "secondary",
                  on_click=choose, args=(spec.name,))


def fit_states() -> dict[str, tlcore.AnalysisState]:
    """The score of each backbone offline here on the project's images (on disk once computed)."""
    return {s.name: insight.state(proj, "transfer-score", tlcore.TrainConfig(backbone=s.name))
            for s in specs if s.availability() != "download"}


def score_all() -> None:
    """Queue a training worker's score of every offline backbone not scored on these images yet (a callback)."""
    for name, state in fit_states().items():
        if state.result is None and not state.running:
            insight.start(proj, "transfer-score", tlcore.TrainConfig(backbone=name))


def fits_view(fits_polling: bool) -> None:
    """The scores (LogME and ImageNet closeness) as they come in; reruns itself every second while one is
    being computed."""
    states = fit_states()
    running = [n for n, state in states.items() if state.running]
    if fits_polling != bool(running):
        st.rerun()  # started (a click in this fragment reruns only it) or every score is in: poll or stop
    for name in running:
        insight.show_progress(states[name], f"Scoring {tlcore.get_backbone_spec(name).title}")
    for name, state in states.items():
        if state.error:
            st.warning(f"{tlcore.get_backbone_spec(name).title}: {state.error}", icon=":material/warning:")
    if message := session().take_note("insight:transfer-score"):
        st.error(message, icon=":material/error:")  # e.g. this student's limit of queued work
    done = {n: state.result for n, state in states.items() if state.result is not None}
    if not running and len(done) < len(states):
        left = len(states) - len(done)
        st.button("Score every offline backbone on my images" if not done else
                  f"Score the other {left} backbone{'s' * (left > 1)} on my images", key="backbone_fit_start", icon=":material/query_stats:", on_click=score_all,
                  help="A few seconds per backbone, in a training worker: each image goes through it once.")
    if not done:
        return
    best = max(done, key=lambda n: done[n].logme)
    st.dataframe(
        [{"Backbone": tlcore.get_backbone_spec(n).title + (" ★" if n == best else ""),
          "LogME (higher fits better)": round(r.logme, 3),
          "ImageNet confidence": r.imagenet_confidence,
          "ImageNet top-1": tlcore.get_backbone_spec(n).imagenet_top1} for n, r in done.items()],
        key="backbone_fit_table", hide_index=True,
        column_config={"ImageNet confidence": st.column_config.ProgressColumn(format="percent", min_value=0,
                                                                              max_value=1),
                       "ImageNet top-1": st.column_config.NumberColumn(format="%.1f %%")})
    r = done[best]
    st.markdown(f"**{tlcore.get_backbone_spec(best).title} fits your {r.num_images} images best** "
                f"(LogME {r.logme:.3f}, computed in {r.seconds * 1000:.0f} ms from its features).")
    explain("**LogME** (You et al., 2021) measures how well the best linear head on a backbone's frozen features "
            "could explain your classes, penalising heads that need huge weights: a higher score predicts better "
            "accuracy after transfer, without training anything. Compare it between backbones on the same images.")
    explain("**ImageNet confidence** is how sure the backbone's own ImageNet classifier is about your images: high "
            "means they look like its pre-training photos, so even its late, specific stages fit as they are; low "
            "means your task differs from ImageNet, transfer rests on the early, general stages, and letting more "
            "stages learn (Freeze page) tends to help. Transfer depends on how similar the new task is.")


st.subheader("Which backbone fits your images?")
try:
    tlcore.check_trainable(proj.images)
except tlcore.TLError:
    st.caption("Add images to at least two classes on the Data page: every backbone that works offline here is then "
               "scored on them, before any training.")
else:
    fits_polling = any(state.running for state in fit_states().values())
    polled(fits_view, fits_polling)


def import_weights_form() -> None:
    """Import a weights file into the server's shared cache (checked: digest, fit; written atomically)."""
    target = st.selectbox("Backbone", [s.name for s in specs if s.weights_url], key="backbone_import_target")
    file = st.file_uploader("Weights file (.pth)", type=["pth", "pt"], key="backbone_import_file")
    if work_button("Import", "backbone_import_go", "Importing…", disabled=file is None) and file is not None:
        import tempfile
        from pathlib import Path

        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / file.name
            path.write_bytes(file.getvalue())
            try:
                tlcore.import_weights(tlcore.get_backbone_spec(target), path)
                session().note("backbone_imported", f"Imported {file.name}: {target} now works offline.")
            except tlcore.TLError as e:
                session().note("backbone_import_error", str(e))
        st.rerun()  # the button again, beneath what happened
    if done := session().take_note("backbone_imported"):
        st.success(done, icon=":material/check:")
    if error := session().take_note("backbone_import_error"):
        st.error(error, icon=":material/error:")


with st.expander("I have a weights file (offline machines)", icon=":material/upload_file:"):
    explain("Torchvision backbones download their weights once. On a machine without internet, copy the "
            "weights file (for example resnet18-f37072fd.pth) from another computer and import it here. "
            "Every project on this server then uses it, so the file must be the original: its SHA-256 is checked.")
    if tlcore.settings().teacher_password and not session().teacher_key:
        st.info("On this shared server only the teacher imports weights: open the Teacher page with the teacher "
                "password first.", icon=":material/lock:")
    else:
        import_weights_form()


st.subheader("What does it already see?")
spec = tlcore.get_backbone_spec(proj.backbone)
explain(f"Before any training, {spec.title} can name 1,000 ImageNet classes. Drop in a photo to see its top five "
        "guesses: this knowledge is what transfer learning reuses.")
left, right = st.columns([1, 1])
with left:
    upload = st.file_uploader("A photo", type=sorted(s.strip(".") for s in tlcore.IMAGE_SUFFIXES),
                              key="backbone_preview_file")
    sample = st.segmented_control("…or a sample", ["coffee", "cat"], key="backbone_preview_sample")
if upload is not None or sample:
    name, data = ((upload.name, upload.getvalue()) if upload is not None else
                  (f"{sample}.jpg", (ASSETS / {"coffee": "coffee.jpg", "cat": "chelsea.jpg"}[sample]).read_bytes()))
    try:
        image = tlcore.decode_image(name, data, max_side=1024)
    except tlcore.BadImageError as e:
        st.error(str(e))
    else:
        if spec.availability() == "download":
            st.warning(f"{spec.title}'s weights are not on this machine yet: choose it above to download them.")
        else:
            with st.spinner("Asking the pretrained backbone…"):
                top = tlcore.imagenet_top(spec.name, image)
            left.image(image, width=280, alt=f"Your photo {name}")
            fig = go.Figure(go.Bar(x=[p for _, p in top][::-1], y=[n for n, _ in top][::-1], orientation="h",
                                   text=[f"{p:.0%}" for _, p in top][::-1]))
            fig.update_layout(title="ImageNet top-5", xaxis_tickformat=".0%", xaxis_range=[0, 1], height=300,
                              yaxis_type="category",
                              margin=dict(t=40, b=20, l=10, r=10))
            right.plotly_chart(fig, key="backbone_top5")
