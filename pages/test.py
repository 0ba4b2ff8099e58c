"""Step 6: try the model on new images and see where it looked."""
import plotly.graph_objects as go
import streamlit as st

import tlcore
from pages.common import explain, project, require_run
from tlcore import IMAGE_SUFFIXES

proj = project()
st.title("6 · Test on new images")
explain("Give the model pictures it has never seen. The bars show how sure it is about each class. The heat map "
        "(Grad-CAM) shows which parts of the picture pushed it towards its answer: if it looks at the background "
        "instead of the object, it may have learned a shortcut.")
record = require_run(proj)
result = record.result
spec = tlcore.get_backbone_spec(record.config.backbone)

c1, c2 = st.columns(2)
uploads = c1.file_uploader("Images", type=sorted(s.strip(".") for s in IMAGE_SUFFIXES), accept_multiple_files=True,
                           key="test_upload")
photo = c2.camera_input("…or take a photo", key="test_camera")
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
    key = (name, hash(data))
    cache = record.cache.setdefault("test", {})  # no rerun recomputes a prediction or a heat map
    if key not in cache:
        cache[key] = (tlcore.predict(result.model, [image], result.classes, spec.preprocess)[0],
                      tlcore.overlay_cam(image, tlcore.grad_cam(result.model, image, spec.preprocess),
                                                  spec.preprocess))
    pred, overlay = cache[key]
    with st.container(border=True):
        a, b, c = st.columns([1, 1, 1.4])
        a.image(image, caption=name, width=240)
        if show_cam:
            b.image(overlay, caption="Grad-CAM: red = looked here", width=240)
        probs = pred.probabilities
        fig = go.Figure(go.Bar(x=list(probs.values())[::-1], y=list(probs)[::-1], orientation="h",
                               text=[f"{v:.0%}" for v in list(probs.values())[::-1]]))
        fig.update_layout(title=f"{pred.label} ({pred.confidence:.0%})", xaxis_range=[0, 1], xaxis_tickformat=".0%",
                          height=max(180, 40 * len(probs) + 80), margin=dict(t=40, b=20, l=10, r=10))
        c.plotly_chart(fig, key=f"test_bars_{name}_{hash(data)}")
if len(files) > 24:
    st.caption(f"Showing the first 24 of {len(files)} images.")
