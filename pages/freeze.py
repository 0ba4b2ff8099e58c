"""Step 3: how much of the backbone to keep frozen, from feature extraction to learning from scratch."""
import dataclasses

import plotly.graph_objects as go
import streamlit as st

import tlcore
from pages.common import explain, format_seconds, project, save_settings
from tlcore import stage_param_counts
from tlcore import estimate_epoch_seconds, measure_speed

proj = project()
spec = tlcore.get_backbone_spec(proj.backbone)
n = len(spec.stage_names)
st.title("3 · Freeze or fine-tune")
explain("**Feature extraction** freezes the whole backbone and trains only a new final layer on its features: "
        "fast, and good with few images. **Fine-tuning** also lets the last stages of the backbone adjust to "
        "your images; the first stages hold general features and can stay frozen. **From scratch** throws the "
        "pretraining away and learns everything from your images alone; that needs far more data.")

settings = proj.settings
current_trained = 0 if settings.mode in tlcore.FROZEN_BODY_MODES else (
    n if settings.mode == "scratch" else n - settings.resolved_freeze_depth())


def save_strategy() -> None:
    """Called when the person moves the toggle or the slider (never on a rerun: a stale tab writes nothing)."""
    scratch, trained = st.session_state["freeze_scratch"], st.session_state["freeze_trained"]
    mode = "scratch" if scratch else ("feature-extraction" if trained == 0 else "fine-tune")
    save_settings(backbone=proj.backbone, mode=mode, freeze_depth=n - trained if mode == "fine-tune" else None)


scratch = st.toggle("From scratch: ignore the pretrained weights", value=settings.mode == "scratch",
                    key="freeze_scratch", on_change=save_strategy)
options = list(range(n + 1))
labels = {0: "Feature extraction (all frozen)", n: "Full fine-tuning (nothing frozen)"}
trained = st.select_slider("Stages that learn (counted from the output end, the right of the diagram)", options=options,
                           value=n if scratch else current_trained, disabled=scratch, key="freeze_trained",
                           on_change=save_strategy, format_func=lambda k: labels.get(k, f"last {k} of {n} stages learn"))
scratch, trained = settings.mode == "scratch", current_trained  # as saved (callbacks ran before this script)
mode = "scratch" if scratch else ("feature-extraction" if trained == 0 else "fine-tune")
depth = n - trained

# The stages as a row of blocks: blue = frozen (pretrained, unchanged), orange = learns, grey = random start.
counts = list(stage_param_counts(spec.name))
num_classes = max(2, sum(1 for c in proj.images.counts().values() if c))
head_params = spec.feature_dim * num_classes + num_classes
colors = ["#9aa0a6" if scratch else ("#1f77b4" if k < depth else "#ff7f0e") for k in range(n)] + ["#2ca02c"]
names = list(spec.stage_names) + ["new head"]
fig = go.Figure(go.Bar(x=names, y=[1] * (n + 1), marker_color=colors, hovertext=[f"{c:,} parameters" for c in
                                                                                 counts + [head_params]],
                       text=["frozen" if (k < depth and not scratch) else "learns" for k in range(n)] + ["learns"],
                       textposition="inside"))
fig.update_layout(height=180, yaxis_visible=False, margin=dict(t=10, b=10, l=10, r=10), bargap=0.05,
                  xaxis_title="input image → … general features … specific features → your classes")
st.plotly_chart(fig, key="freeze_diagram")
st.caption(":blue[■ frozen: pretrained, unchanged] · :orange[■ learns from your images] · "
           ":gray[■ random start (from scratch)] · :green[■ the new head, always trained]")

trainable = sum(counts[depth:]) + head_params
total = sum(counts) + head_params
num_images = max(1, len(proj.images))
speed = measure_speed(spec.name)
views = settings.augment_views if settings.augment else 1
forwards = num_images * (1 + tlcore.fe_views(settings, num_images)) if mode == "feature-extraction" else num_images
once_s, epoch_s = estimate_epoch_seconds(speed, forwards, mode, depth, views)
c1, c2, c3 = st.columns(3)
c1.metric("Trainable parameters", f"{trainable:,}", f"{trainable / total:.1%} of {total:,}", delta_color="off", delta_arrow="off")
if mode == "feature-extraction":
    c2.metric("Estimated time", format_seconds(once_s), "once, for the features; each epoch then takes "
              f"milliseconds ({speed.runtime})", delta_color="off", delta_arrow="off")
else:
    c2.metric("Estimated time per epoch", format_seconds(epoch_s),
              f"{num_images} images on this machine" + (f", after {format_seconds(once_s)} once for the "
                                                        f"frozen stages ({speed.runtime})" if once_s else ""),
              delta_color="off", delta_arrow="off")
c3.metric("Mode", {"feature-extraction": "Feature extraction", "fine-tune": "Fine-tuning",
                   "scratch": "From scratch"}[mode])
if mode == "scratch":
    st.warning("From scratch, the network knows nothing about images: with a few dozen pictures expect poor "
               "accuracy. That is the point of the comparison on the Compare page.", icon=":material/school:")
