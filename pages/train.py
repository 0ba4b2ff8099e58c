"""Step 4: train in the background with live curves; stop any time and keep the best epoch."""
import dataclasses

import plotly.graph_objects as go
import streamlit as st

import tlcore
from pages import insight
from pages.common import (
    describe_snapshot,
    explain,
    give_focus_back,
    polled,
    project,
    require_data,
    run_title,
    save_settings,
    score_metric,
    session,
    setting,
    start_button,
    student,
)
from tlcore import describe

proj = project()
st.title("4 · Train")
explain("Training shows the model your images again and again (each pass is an **epoch**) and nudges the "
        "weights that are allowed to learn so its guesses get better. The **validation** curve uses images it "
        "never trains on: when it stops improving while the training curve still does, the model is memorising.")
require_data(proj)

s = proj.settings
st.markdown(f"**Strategy:** {describe(s)} (change it on the Freeze page).")
with st.expander("Advanced settings", icon=":material/tune:"):
    c1, c2, c3 = st.columns(3)
    c1.number_input("Epochs", 1, 500, s.epochs, **setting("epochs", "train_epochs", int),
                    help="Passes over the training images. Early stopping may end sooner.")
    c2.number_input("Batch size", 1, 512, s.batch_size, **setting("batch_size", "train_batch", int),
                    help="Images per weight update. Larger is faster per image, needs more memory.")
    frozen = s.mode in tlcore.FROZEN_BODY_MODES
    default_lr = dataclasses.replace(s, lr=None).resolved_lr()
    c3.number_input("Learning rate", 1e-6, 1.0, s.resolved_lr(), format="%.5f", disabled=frozen,
                    **setting("lr", f"train_lr_{s.mode}", lambda v: None if abs(v - default_lr) < 1e-12 else float(v)),
                    help="Not used with a frozen backbone: its head is fitted to convergence (a regularised "
                         "logistic regression), so no step size is needed." if frozen else
                         "Step size of each update. Too high diverges; too low learns slowly.")
    c4, c5, c6 = st.columns(3)
    c4.toggle("Augmentation", s.augment, **setting("augment", "train_augment"),
              help="Random flips, crops and colour changes make the few images you have go further "
                   "(feature extraction: its head also learns from augmented views of each image).")
    c5.number_input("Early stopping patience (0 = off)", 0, 100, s.patience, **setting("patience", "train_patience", int),
                    help="Stop when validation accuracy has not improved for this many epochs.")
    c6.slider("Validation share", 0.0, 0.5, s.val_fraction, 0.05, **setting("val_fraction", "train_val", float))
    c4.number_input("Augmented views per image", 1, 32, s.augment_views, **setting("augment_views", "train_views", int),
                    disabled=not s.augment or s.mode not in ("fine-tune", "feature-extraction"),
                    help="The frozen part runs once on this many copies of each image (one unchanged, the others "
                         "augmented): fine-tuning shows one of them each epoch; feature extraction (up to "
                         f"{tlcore.VIEWS_MAX_IMAGES} images) fits its head on them all. More views, more variety, "
                         "more time once.")



def use_lr(value: float) -> None:
    """The range test's suggestion as the run's learning rate, through the setting's own path (a callback)."""
    st.session_state[f"train_lr_{proj.settings.mode}"] = value
    save_settings(lr=value)


def lr_find_view(proj: tlcore.Project, lr_config: tlcore.TrainConfig, lr_polling: bool) -> None:
    """The learning-rate range test of the current strategy, run by a training worker; reruns itself every
    second while it runs."""
    found = insight.result_or_start(proj, "lr-find", lr_config, lr_polling, "Finding the learning rate", dict(
        label="Find the learning rate", icon=":material/troubleshoot:", key="train_lr_find",
        help="Trains a throwaway copy of this strategy for a few dozen batches, the rate growing each batch; your "
             "settings and runs do not change."))
    if found is None:
        return
    fig = go.Figure()
    fig.add_scatter(x=list(found.lrs), y=list(found.losses), mode="markers", name="loss per batch",
                    marker=dict(size=4, color="rgba(99,110,250,0.4)"))
    fig.add_scatter(x=list(found.lrs), y=list(found.smoothed), mode="lines", name="smoothed")
    fig.add_vline(x=found.suggestion, line_dash="dash", line_color="#ff7f0e",
                  annotation_text=f"suggested {found.suggestion:.2g}")
    fig.update_layout(title="Loss against learning rate", xaxis_type="log", xaxis_title="learning rate (log scale)",
                      yaxis_title="training loss", height=320, margin=dict(t=40, b=30, l=10, r=10))
    st.plotly_chart(fig, key="train_lr_chart")
    st.markdown(f"**Suggested learning rate: {found.suggestion:.2g}**, where the loss falls fastest (the minimum's "
                f"rate ÷ 10 is {found.min_over_10:.2g}); measured in {found.seconds:.0f} s on {len(found.lrs)} batches"
                + (", until the loss blew up." if found.diverged else "."))
    explain("Too low a rate crawls: each step moves the weights so little that the loss barely changes (the flat "
            "left of the curve). Too high a rate diverges: each step overshoots the valley it aims for and lands "
            "higher up, so the loss climbs and explodes (the right). The best rates are on the steep slope between.")
    current = proj.settings.resolved_lr()
    st.button(f"Use {found.suggestion:.2g}", key="train_lr_use", on_click=use_lr, args=(float(found.suggestion),),
              icon=":material/check:", disabled=abs(current - found.suggestion) < 1e-12 * max(1.0, current))


if s.mode not in tlcore.FROZEN_BODY_MODES:
    with st.expander("Find the learning rate", icon=":material/troubleshoot:"):
        lr_config = dataclasses.replace(proj.settings, backbone=proj.backbone)
        lr_polling = insight.state(proj, "lr-find", lr_config).running
        polled(lr_find_view, lr_polling, proj, lr_config)



def start_training() -> None:
    """Start a run with the project's settings (a callback: see ``start_button``)."""
    proj = session().project
    proj.start_run(dataclasses.replace(proj.settings, backbone=proj.backbone), owner=student())
    st.session_state.pop("train_pick", None)  # the new run is the one shown


c1, c2 = st.columns([1, 1])
with c1:
    start_button("Start training", "train_start", start_training, lambda: bool(session().project.active_runs()),
                 "Training…", type="primary", icon=":material/play_arrow:",
                 help="One run at a time per project: Stop ends the current one, keeping its best epoch.")
    if session().take_note("train_ended"):
        give_focus_back("train_start")  # where the key that pressed it was, not the top of the page
if proj.active_runs():
    c2.button("Stop", icon=":material/stop:", key="train_stop",
              on_click=lambda: [r.job.stop() for r in session().project.active_runs()])


def figures(record: tlcore.RunRecord, version: int, build) -> tuple:
    """The run's loss and accuracy figures, built once per version of it (-1: finished) in this session."""
    kept = session().figures
    if (record.id, version) not in kept:
        kept.clear()  # one run's curves at a time
        kept[(record.id, version)] = build()
    return kept[(record.id, version)]


def live_view(proj: tlcore.Project, polling: bool) -> None:
    """The selected run's progress and curves; reruns itself every second while training."""
    if polling and not proj.active_runs():
        session().note("train_ended", "focus")  # the keyboard's focus goes back to Start (see below)
        st.rerun()  # every run has ended: one full rerun shows the results and stops the polling
    record = proj.run(proj.selected_run) or (proj.runs[-1] if proj.runs else None)
    if record is None:
        st.info("Press **Start training**. With feature extraction the first model is ready in seconds.")
        return
    st.markdown(f"#### {run_title(record)}")
    if record.live:
        snap = record.job.snapshot()
        if snap.finished is not None:
            session().note("train_ended", "focus")
            st.rerun()  # the job is done: one full rerun stops the polling and shows the result
        fraction, text = describe_snapshot(snap)
        st.progress(min(1.0, fraction), text=text)
        loss, acc = figures(record, snap.version, lambda: tlcore.training_figures(snap.epochs, snap.batch_losses,
                                                                                  val_images=len(record.val_digests)))
    else:
        if record.status == "failed":
            st.error(record.reason, icon=":material/error:")
        elif record.status in ("stopped", "interrupted"):
            st.warning(record.reason, icon=":material/pause_circle:")
        else:
            st.success(record.reason, icon=":material/check_circle:")
        if record.result is None:
            return
        loss, acc = figures(record, -1, lambda: tlcore.training_figures(
            record.result.history, val_images=len(record.val_digests)))  # final: built once
        r = record.result
        m = st.columns(4)
        score_metric(m[0], r.score)
        m[1].metric("Best epoch", f"{r.best_epoch} of {len(r.history)}")
        m[2].metric("Training time", f"{r.train_seconds:.1f} s")
        m[3].metric("Trainable parameters", f"{r.trainable_params:,}")
        memory = "" if r.peak_rss_mb is None else f" Peak memory of the training process: {r.peak_rss_mb:,.0f} MB."
        if r.how or memory:
            st.caption(f"How it ran: {r.how}.{memory}" if r.how else memory.strip())
    c1, c2 = st.columns(2)
    c1.plotly_chart(loss, key="train_loss_chart")
    c2.plotly_chart(acc, key="train_acc_chart")


# Polls once a second, and only while a run of this project is queued or training (never after).
polling = bool(proj.active_runs())
polled(live_view, polling, proj)

singles = [r for r in proj.runs if not r.group]  # comparison runs are on the Compare page
if len(singles) > 1:
    st.subheader("Runs in this project")
    ids = [r.id for r in singles]
    pick = st.radio("Show", ids, index=ids.index(proj.selected_run) if proj.selected_run in ids else len(ids) - 1,
                    format_func=lambda i: f"{i.split('-')[1]} · {proj.run(i).label}", key="train_pick")  # stable labels
    if pick != proj.selected_run:
        proj.selected_run = pick
        st.rerun()
shown = proj.run(proj.selected_run)
if shown is not None and shown.job is None:
    with st.popover("Delete this run", icon=":material/delete:"):
        st.markdown(f"Delete **{run_title(shown)}** and its saved model? This cannot be undone.")
        if st.button("Yes, delete it", type="primary", key="train_delete_go"):
            proj.delete_run(shown.id)
            st.session_state.pop("train_pick", None)
            st.rerun()
