"""Step 6: try the model on new images, or live from the webcam, and see where it looked."""
import time

import plotly.graph_objects as go
import streamlit as st

import tlcore
from pages import live_camera
from pages.common import explain, project, require_run, session
from tlcore import IMAGE_SUFFIXES

proj = project()
st.title("6 · Test on new images")
explain("Give the model pictures it has never seen. The bars show how sure it is about each class. The heat map "
        "(Grad-CAM) shows which parts of the picture pushed it towards its answer: if it looks at the background "
        "instead of the object, it may have learned a shortcut.")
record = require_run(proj)
result = record.result
spec = tlcore.get_backbone_spec(record.config.backbone)

def reference() -> tlcore.Familiarity | None:
    """What the training images look like to this model (computed once per run, when first needed)."""
    try:
        return tlcore.familiarity(proj, record)
    except tlcore.TLError:
        return None


@st.fragment
def live(result: tlcore.RunResult, spec: tlcore.BackboneSpec, cam_on: bool) -> None:
    """Webcam frames classified as they come (only this fragment reruns per frame), Grad-CAM once a second."""
    state = session().test.live
    msg = live_camera.take("test_live")
    if msg and msg.get("error"):
        state.error = msg
    elif msg and msg.get("jpeg"):
        try:
            image = tlcore.decode_image("camera frame", msg["jpeg"], max_side=512)
        except tlcore.BadImageError:
            image = None  # a torn frame: the next one follows
        if image is not None:
            pred = tlcore.predict(result.model, [image], result.classes, spec.preprocess, reference())[0]
            state.result = {"label": pred.label, "confidence": pred.confidence, "unsure": pred.unsure,
                            "unfamiliar": bool(pred.unfamiliar), "probs": list(pred.probabilities.items())}
            if cam_on and time.monotonic() - state.cam_at >= 1.0:
                cam = tlcore.grad_cam(result.model, image, spec.preprocess)
                state.cam = live_camera.data_url(tlcore.overlay_cam(image, cam, spec.preprocess))
                state.cam_at = time.monotonic()
    if (err := state.error) and err["error"] == "insecure":
        st.warning(live_camera.INSECURE.format(origin=err.get("origin", "?")), icon=":material/no_photography:")
    live_camera.show("test_live", "predict", result=state.result,
                     cam=state.cam if cam_on else None, interval_ms=120, size=320)


with st.expander("Live camera: predictions as you move", icon=":material/videocam:"):
    explain("Press **Start live prediction** and hold things up to the webcam: the bars follow what it sees. "
            "The browser asks for the camera only then; Stop, or leaving the page, turns it off.")
    cam_on = st.toggle("Show where it looked (Grad-CAM, once a second)", key="test_live_cam")
    live(result, spec, cam_on)

c1, c2 = st.columns(2)
uploads = c1.file_uploader("Images", type=sorted(s.strip(".") for s in IMAGE_SUFFIXES), accept_multiple_files=True,
                           key="test_upload")
with c2:  # the browser asks for the camera only once the user turns it on
    photo = st.camera_input("…or take a photo", key="test_camera") if st.toggle(
        "Turn the camera on", key="test_camera_on") else None
files = [(f.name, f.getvalue()) for f in uploads or []] + ([("camera photo", photo.getvalue())] if photo else [])
if not files:
    st.info("Upload one or more images, or take a photo.", icon=":material/add_photo_alternate:")
    st.stop()

show_cam = st.toggle("Show where the model looked (Grad-CAM)", value=True, key="test_cam")
for name, data in files[:24]:
    try:
        image = tlcore.decode_image(name, data, max_side=1024)
    except tlcore.BadImageError as e:
        st.error(str(e), icon=":material/broken_image:")
        continue
    key = (record.id, name, hash(data))
    cache = session().test.predictions  # no rerun recomputes a prediction or a heat map
    if key not in cache:
        while len(cache) >= 24:  # bounded: the oldest predictions and heat maps go first
            cache.pop(next(iter(cache)))
        cache[key] = (tlcore.predict(result.model, [image], result.classes, spec.preprocess, reference())[0],
                      tlcore.overlay_cam(image, tlcore.grad_cam(result.model, image, spec.preprocess),
                                                  spec.preprocess))
    pred, overlay = cache[key]
    with st.container(border=True):
        a, b, c = st.columns([1, 1, 1.4])
        a.image(image, caption=name, width=240, alt=f"Your photo {name}")
        if show_cam:
            b.image(overlay, caption="Grad-CAM: red = looked here; dimmed = cut off, never seen by the model", width=240,
                    alt=f"Where the model looked in {name}: a heat map over the photo, red where it looked most")
        probs = pred.probabilities
        fig = go.Figure(go.Bar(x=list(probs.values())[::-1], y=list(probs)[::-1], orientation="h",
                               text=[f"{v:.0%}" for v in list(probs.values())[::-1]]))
        fig.update_layout(title=f"{pred.label} ({pred.confidence:.0%})", xaxis_range=[0, 1], xaxis_tickformat=".0%",
                          yaxis_type="category", yaxis_dtick=1,  # every class labelled, numeric names too
                          height=max(180, 40 * len(probs) + 80), margin=dict(t=40, b=20, l=10, r=10))
        c.plotly_chart(fig, key=f"test_bars_{name}_{hash(data)}")
        if pred.unfamiliar:
            c.warning("**None of these? Not sure.** This picture is unlike every training image (far from all "
                      "of them in the model's feature space). The model can only choose among its classes, so it "
                      "picked one anyway: don't trust this answer.", icon=":material/help:")
        elif pred.unsure:
            c.warning(f"**Not sure.** No class is likely ({pred.confidence:.0%} at best): more training images "
                      "of each class, or a clearer photo, would help.", icon=":material/help:")
if len(files) > 24:
    st.caption(f"Showing the first 24 of {len(files)} images.")
