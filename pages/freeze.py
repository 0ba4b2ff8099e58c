"""Step 3: how much of the backbone to keep frozen, from feature extraction to learning from scratch."""

import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

import tlcore
from pages import insight
from pages.common import explain, format_seconds, polled, project, save_settings, session, speed_if_known
from tlcore import estimate_epoch_seconds, stage_param_counts

proj = project()
spec = tlcore.get_backbone_spec(proj.backbone)
n = len(spec.stage_names)
st.title("3 · Freeze or fine-tune")
explain("**Feature extraction** freezes the whole backbone and trains only a new final layer on its features: "
        "fast, and good with few images. **Fine-tuning** also lets the last stages of the backbone adjust to "
        "your images; the first stages hold general features and can stay frozen. **From scratch** throws the "
        "pretraining away and learns everything from your images alone; that needs far more data.")

if spec.frozen_only:  # an ensemble: feature extraction only (training refuses anything else, in these words)
    st.info(f"{spec.title} is only used frozen (feature extraction, few-shot or zero-shot): training its "
            f"{n} networks together would take far too long here. To fine-tune or train from scratch, choose one "
            "of them on the Backbone page.", icon=":material/info:")
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



def freeze_from(stage: int) -> None:
    """The probe's suggestion, on the slider: stages up to ``stage`` frozen, the rest learn (a callback)."""
    st.session_state["freeze_scratch"] = False
    st.session_state["freeze_trained"] = n - stage - 1
    save_strategy()


def probe_view(proj: tlcore.Project, probe_config: tlcore.TrainConfig, n: int, scratch: bool, trained: int,
               probe_polling: bool) -> None:
    """The stage probe of the project's images: started on a click, computed by a training worker, shown as
    accuracy against depth; reruns itself every second while it runs."""
    probe = insight.result_or_start(proj, "stage-probe", probe_config, probe_polling, "Probing each stage", dict(
        label="Probe each stage with my images", icon=":material/query_stats:", key="freeze_probe_start",
        help="A few seconds to a minute, in a training worker: every image goes through the backbone once."))
    if probe is None:
        return
    accs = [sc.accuracy for sc in probe.scores]
    lows = [a - sc.interval[0] for a, sc in zip(accs, probe.scores)]
    highs = [sc.interval[1] - a for a, sc in zip(accs, probe.scores)]
    fig = go.Figure(go.Scatter(x=list(probe.stages), y=accs, mode="lines+markers", name="linear probe",
                               error_y=dict(type="data", array=highs, arrayminus=lows, visible=True),
                               hovertext=[sc.text() for sc in probe.scores]))
    fig.add_scatter(x=[probe.stages[probe.best]], y=[accs[probe.best]], mode="markers", name="best",
                    marker=dict(size=14, symbol="star", color="#ff7f0e"))
    fig.update_layout(title="How well your classes separate after each stage", yaxis_title="accuracy (95 % interval)",
                      yaxis_tickformat=".0%", yaxis_range=[0, 1.05], height=320, showlegend=False,
                      xaxis_title="depth: stem → last stage", margin=dict(t=40, b=30, l=10, r=10))
    st.plotly_chart(fig, key="freeze_probe_chart")
    k = probe.best
    st.markdown(f"**Your data is best served from stage {k + 1} of {n} ({probe.stages[k]})**: "
                f"{probe.scores[k].text()} with a linear head on its output ({probe.scores[k].method}).")
    explain("Each point is a logistic regression trained on the averaged output of one stage of the frozen "
            "backbone. Early stages hold general features (edges, colours, textures) that suit almost any images; "
            "later ones grow specific to ImageNet's 1,000 classes (Yosinski et al., 2014, *How transferable are "
            "features in deep neural networks?*). Where the curve peaks, the features fit your classes best: keep "
            "the stages up to there frozen and let the ones after it learn.")
    target = n - k - 1
    st.button(f"Freeze stages 1–{k + 1}, train the rest" if target else "Freeze everything (feature extraction)",
              key="freeze_probe_use", on_click=freeze_from, args=(k,), icon=":material/ac_unit:",
              disabled=not scratch and trained == target)


st.subheader("How general is each stage for your images?")
try:
    tlcore.check_trainable(proj.images)
except tlcore.TLError:
    st.caption("Add images to at least two classes on the Data page to see how well each stage separates them.")
    has_images = False
else:
    has_images = True
    probe_config = tlcore.TrainConfig(backbone=spec.name)
    probe_polling = insight.state(proj, "stage-probe", probe_config).running
    polled(probe_view, probe_polling, proj, probe_config, n, scratch, trained)

trainable = sum(counts[depth:]) + head_params
total = sum(counts) + head_params
num_images = max(1, len(proj.images))
views = settings.augment_views if settings.augment else 1
classes = proj.images.filled_classes() or None
forwards = num_images * (1 + tlcore.fe_views(settings, num_images, classes)) if mode == "feature-extraction" else num_images


def time_estimate(timing: bool) -> None:
    """The estimate, once a worker has timed the backbone (the page never waits for it: this polls, then reruns)."""
    speed = speed_if_known(spec.name)
    if timing and speed is not None:
        st.rerun()
    if speed is None:
        st.metric("Estimated time", "in a moment", "this server is timing the backbone in a worker",
                  delta_color="off", delta_arrow="off")
        return
    once_s, epoch_s = estimate_epoch_seconds(speed, forwards, mode, depth, views)
    if mode == "feature-extraction":
        st.metric("Estimated time", format_seconds(once_s), "once, for the features; each epoch then takes "
                  f"milliseconds ({speed.runtime})", delta_color="off", delta_arrow="off")
    else:
        st.metric("Estimated time per epoch", format_seconds(epoch_s),
                  f"{num_images} images on this machine" + (f", after {format_seconds(once_s)} once for the "
                                                            f"frozen stages ({speed.runtime})" if once_s else ""),
                  delta_color="off", delta_arrow="off")


c1, c2, c3 = st.columns(3)
c1.metric("Trainable parameters", f"{trainable:,}", f"{trainable / total:.1%} of {total:,}", delta_color="off", delta_arrow="off")
with c2:
    polled(time_estimate, speed_if_known(spec.name) is None, every=2.0)
c3.metric("Mode", tlcore.MODE_TITLES[mode].capitalize())
if mode == "scratch":
    st.warning("From scratch, the network knows nothing about images: with a few dozen pictures expect poor "
               "accuracy. That is the point of the comparison on the Compare page.", icon=":material/school:")

st.subheader("What each stage sees")
if not has_images:
    st.caption("Add images on the Data page to see what each stage of the backbone picks up in one of them.")
elif spec.availability() == "download":
    st.caption(f"{spec.title}'s weights are not on this machine yet: choose it on the Backbone page to download them.")
else:
    explain("The four strongest activation maps of each stage for one of your images (bright: the channel responds "
            "there). The stem's channels fire on edges and colours anywhere; deeper stages respond to larger parts "
            "and patterns, on a coarser grid.")
    items = proj.images.items
    pick = st.selectbox("Image", range(len(items)), key="freeze_maps_image",
                        format_func=lambda i: f"{items[i].label} · {items[i].name}")
    cache_key = (spec.name, items[pick].digest)
    state = session()
    if state.freeze_maps is None or state.freeze_maps[0] != cache_key:
        try:
            with st.spinner("Running the image through each stage…"):
                state.freeze_maps = (cache_key, tlcore.stage_maps(spec.name, proj.images, pick))
        except tlcore.TLError as e:
            state.freeze_maps = (cache_key, str(e))
    maps = state.freeze_maps[1]
    if isinstance(maps, str):
        st.info(maps, icon=":material/info:")
    else:
        top = max(len(m) for _, m in maps)
        # "block<br>1": nine titles in one line ran into each other on a phone ("stemblock1block2…")
        fig = make_subplots(rows=top, cols=len(maps), column_titles=[name.replace(" ", "<br>") for name, _ in maps],
                            horizontal_spacing=0.01, vertical_spacing=0.01)
        for c, (name, stage) in enumerate(maps, start=1):
            for r, channel in enumerate(stage, start=1):
                # numpy, not lists: plotly sends typed arrays (a third of the bytes, a quarter of the time)
                fig.add_heatmap(z=channel[::-1], row=r, col=c, colorscale="Viridis", showscale=False,
                                zmin=0, zmax=1, hovertemplate=f"{name}, channel map {r}<extra></extra>")
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False, scaleanchor=None)
        fig.update_annotations(font_size=12)  # the column titles (plotly's 16 px: touching at a phone's 390 px)
        fig.update_layout(height=110 * top + 55, margin=dict(t=55, b=10, l=10, r=10),
                          font=dict(size=10))
        left, right = st.columns([1, 6])
        left.image(tlcore.thumbnail(items[pick], 160), caption=items[pick].label,
                   alt=f"class {items[pick].label}: {items[pick].name}")
        right.plotly_chart(fig, key="freeze_maps_chart")
