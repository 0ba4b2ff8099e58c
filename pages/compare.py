"""Compare strategies side by side on your data: the transfer-learning lesson, measured; and backbones."""
import dataclasses

import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

import tlcore
from pages.common import ASSETS, explain, format_seconds, polled, project, require_data, session, start_button, student
from tlcore import (
    COMPARE_EPOCHS,
    DEFAULT_SHOTS,
    STRATEGY_TITLES,
    available_shots,
    describe,
    embedding_map,
    shared_split,
)

proj = project()
st.title("Compare strategies")
explain("Same images, same split, same number of epochs: only the strategy changes. Feature extraction reuses "
        "what the backbone learned on ImageNet; fine-tuning adapts some of it; from scratch starts with nothing. "
        "Few-shot prototypes do no training at all: each class is the average of its images' features. "
        "Zero-shot uses no image at all: only your class names, matched to the 1,000 things the backbone "
        "learned to name on ImageNet.")
st.image(str(ASSETS / "strategies.png"), width=640,
         alt="Diagram of three strategies over the stages stem, 1 to 5 and head: feature extraction keeps every "
             "pretrained stage frozen and trains a new head; fine-tuning also trains stages 3 to 5; from scratch "
             "starts every stage from random weights.",
         caption="Blue: pretrained and frozen · orange: pretrained, learns · grey: random start · green: new head")
require_data(proj)

STRATEGIES = list(STRATEGY_TITLES)


@st.cache_data(show_spinner="Matching your class names to ImageNet's…", max_entries=256)
def suggested(classes: tuple[str, ...]) -> dict[str, dict[str, float]]:
    return tlcore.suggest_mapping(classes)


def edit_mapping(mapping: dict[str, dict[str, float]], c: str, key: str) -> None:
    """Save the mapping shown with class ``c``'s ImageNet classes as the user left them (only an edit saves: a
    suggestion is made again, the same, when a run needs it)."""
    chosen = {**mapping, c: tlcore.edit_mapping(mapping[c], st.session_state[key])}
    proj.settings = dataclasses.replace(proj.settings, zero_shot_map=chosen)
    proj.save()


def zero_shot_mapping() -> None:
    """The class -> weighted ImageNet classes mapping zero-shot will use: suggested, shown, editable, saved."""
    classes = tuple(proj.images.classes)
    saved = proj.settings.zero_shot_map or {}
    guess = suggested(tuple(c for c in classes if c not in saved))
    mapping = {c: tlcore.mapping_weights(saved.get(c, guess.get(c, {}))) for c in classes}
    with st.expander("Zero-shot: which ImageNet classes each of your classes means", icon=":material/translate:"):
        explain(f"Suggested by WordNet's groups and {tlcore.mapping_method()} between your class names and "
                "ImageNet's, each ImageNet class with a weight (1: it is what the name means; less: a looser "
                "match). A picture's chance of being a class is the weighted sum of the backbone's ImageNet "
                "probabilities. Remove a class that was misread; one you add weighs 1 (e.g. *kitty* → tabby).")
        names = tlcore.imagenet_categories()
        for k, c in enumerate(classes):
            weights = mapping[c]
            st.multiselect(c, names, default=[n for n in weights if n in names], key=f"compare_zs_{k}",
                           format_func=lambda n, w=weights: f"{n} · {w[n]:.2f}" if n in w else n,
                           on_change=edit_mapping, args=(mapping, c, f"compare_zs_{k}"))
    if missing := tlcore.unmapped(classes, mapping):
        st.warning(f"**ImageNet has no class for {', '.join(missing)}.** Zero-shot can only guess "
                   f"{'it' if len(missing) == 1 else 'them'}: it can name only what the backbone learned to name. "
                   "That is the lesson: to recognise something new, a model needs examples of it.",
                   icon=":material/help:")
chosen = st.multiselect("Strategies", STRATEGIES, default=STRATEGIES, key="compare_strategies",
                        format_func=STRATEGY_TITLES.get)
epochs = st.number_input("Epochs per run", 1, 200, COMPARE_EPOCHS, key="compare_epochs",
                         help=f"For the ladder and the study. {COMPARE_EPOCHS} keeps a class's ladder within about a "
                              f"minute; feature extraction stops once its head has converged.")
st.caption(f"At most {epochs} epochs each; fine-tuning at the Freeze page's depth: "
           f"{describe(dataclasses.replace(proj.settings, mode='fine-tune', backbone=proj.backbone))}. "
           "Every strategy is scored on every image, each predicted by a model that did not train on it: "
           "few-shot and feature extraction by cross-validation with as many folds as the largest class has images "
           "(up to 20: each fold holds out one image per class; 5 folds beyond 300 images; every fold's model in one "
           "batched fit on the cached features; the folds drawn again up to 5 times on small sets, once from 300 "
           "images), zero-shot on every image as it is; fine-tuning and from scratch by 3-fold cross-validation "
           "(three more trainings each, on two thirds of the images, keeping the last epoch).")
if "zero-shot" in chosen:
    zero_shot_mapping()
busy = bool(proj.active_runs())


def estimate(strategies: list[str], shots: list | None = None, backbones: list[str] | None = None) -> str:
    """About how long it would take, or that the backbone is being timed (a page never waits for a timing)."""
    try:
        return "about " + format_seconds(proj.comparison_seconds(strategies, shots, epochs, backbones, student(),
                                                                 wait=False))
    except tlcore.SpeedUnknown:
        return "time estimate in a moment (this server is timing the backbone)"


if chosen and not busy:  # while a run trains the button waits, and so does its estimate
    st.caption(f"{estimate(chosen).capitalize()} in all on this server, one "
               "run after another, taking turns with the other students' queued runs (each run's own time is what "
               "the comparison shows).")


def start_group(kind: str, strategies_key: str, shots_key: str | None = None, backbones_key: str | None = None):
    """A callback's start of a ladder, study or race, from the widgets' values at the click."""
    def start() -> None:
        v = st.session_state
        session().compare.groups[kind] = session().project.start_comparison(
            [v[strategies_key]] if kind == "race" else v[strategies_key], v[shots_key] if shots_key else None,
            v["compare_epochs"], owner=student(), backbones=v[backbones_key] if backbones_key else None)
    return start


def project_busy() -> bool:
    return bool(session().project.active_runs())


def busy_label(prefix: str, running: str) -> str:
    """What a button says while the project is busy: its own work running, or another run of the project."""
    return running if prefix in {r.group.split("-")[0] for r in proj.active_runs()} else "Another run is on…"


start_button("Run comparison", "compare_go", start_group("ladder", "compare_strategies"), project_busy,
             busy_label("compare", "Comparison running…"),
             type="primary", icon=":material/play_arrow:", disabled=not chosen,
             help="Runs in the background, one after another; one run of this project at a time.")

group = session().compare.groups.get("ladder") or proj.latest_group("ladder")
others = [r for r in proj.finished_runs() if r.group != group]
extra_ids = st.multiselect("Add earlier runs to the comparison", [r.id for r in others], key="compare_extra",
                           format_func=lambda i: f"{i.split('-')[1]} · {proj.run(i).label}")


def table_rows(records) -> list[dict]:
    rows = []
    for r in records:
        res = r.result
        score = None if res is None else res.score
        lo, hi = (None, None) if score is None else score.interval
        rows.append({"run": r.label + (" (no photos used)" if r.config.mode == "zero-shot" else ""), "status": r.status,
                     "right": None if score is None else f"{score.right} of {score.n}",
                     "accuracy": None if score is None else score.accuracy,
                     "likely (95 %)": None if score is None else f"{lo:.0%}–{hi:.0%}",
                     "measured on": None if score is None else score.method,
                     "seconds": None if res is None else round(res.train_seconds, 1),
                     "trainable parameters": None if res is None else res.trainable_params,
                     "epochs": None if res is None else len(res.history)})
    return rows


def comparison_view(proj: tlcore.Project, group: str | None, extra_ids: list[str], polling: bool) -> None:
    records = (proj.group_runs(group) if group else []) + [proj.run(i) for i in extra_ids if proj.run(i)]
    if not records:
        st.info("Press **Run comparison**. Each strategy trains in turn; the curves appear as they go.")
        return
    results = [r.result for r in records if r.result is not None and r.result.score is not None]
    if stale := tlcore.photos_changed(results, [i.digest for i in proj.images.items]):
        st.warning(stale, icon=":material/update:")
    if line := tlcore.headline(results):
        st.success(line, icon=":material/school:")
    if worth := tlcore.names_worth(results):
        st.info(worth, icon=":material/translate:")
    curves = go.Figure()
    for k, r in enumerate(records):
        epochs = r.job.snapshot().epochs if r.live else (r.result.history if r.result else ())
        if epochs:  # a strategy's colour is fixed by its place, not by how many curves have started yet
            curves.add_scatter(x=[e.epoch for e in epochs], y=[e.val_acc for e in epochs], mode="lines+markers",
                               name=r.label, line_color=px.colors.qualitative.Plotly[k % 10])
        if r.live:
            snap = r.job.snapshot()
            state = f"queued ({snap.queue_position} in line)" if snap.state == "queued" else snap.state
            st.caption(f"{r.label}: {state}")
    if group and any(r.live for r in records):
        st.caption(f"About {format_seconds(proj.group_seconds_left(group))} left, the other students' runs counted.")
    # the legend beneath the curves: beside them, a phone's 390 px left the curves 70 px
    curves.update_layout(title="Accuracy per epoch on the validation photos", xaxis_title="epoch", yaxis_tickformat=".0%",
                         yaxis_range=[0, 1.02], height=360, margin=dict(t=40, b=30, l=10, r=10),
                         legend=dict(orientation="h", yanchor="top", y=-0.25))
    if all(len(t.x) <= 20 for t in curves.data):
        curves.update_xaxes(tick0=1, dtick=1)  # epochs are whole: 1, 2, 3, never 1.5 (as on the Train page)
    st.plotly_chart(curves, key="compare_curves")
    rows = table_rows(records)
    # the columns a 1024 px projector shows whole (accuracy, time and parameters are charted below; how each was
    # measured follows the table)
    st.table([{k: row[k] for k in ("run", "status", "right", "likely (95 %)")} for row in rows],  # cells wrap: a
             hide_index=True)  # phone shows every column (a dataframe's canvas scrolled 112 px sideways at 390 px)
    if methods := list(dict.fromkeys(row["measured on"] for row in rows if row["measured on"])):
        st.caption("Measured by " + "; ".join(methods) + ".")
    scored = [r for r in records if r.result is not None and r.result.score is not None]
    done = [row for row in rows if row["accuracy"] is not None]
    if done:
        bar_charts(done, [r.result.score.interval for r in scored])
        for v in tlcore.ladder_verdicts(results):
            st.caption(v.text())
        challenge_yardstick(scored)
    if polling and not proj.active_runs():
        st.rerun()  # everything finished: one full rerun stops the polling


def bar_charts(done: list[dict], bounds: list[tuple[float, float]]) -> None:
    """Accuracy (with its interval), training time and trainable parameters of each finished run: one chart a
    column (a phone stacks them); three titles in one figure ran into each other at 1024 px."""
    names = [d["run"] for d in done]
    charts = (("accuracy", "Right on photos<br>not trained on", {"tickformat": ".0%", "range": [0, 1.02]}),
              ("seconds", "Training<br>seconds", {}), ("trainable parameters", "Trainable<br>parameters", {"type": "log"}))
    for col, (key, title, yaxis) in zip(st.columns(3), charts):
        error = {"type": "data", "symmetric": False, "array": [hi - d["accuracy"] for d, (_, hi) in zip(done, bounds)],
                 "arrayminus": [d["accuracy"] - lo for d, (lo, _) in zip(done, bounds)]}
        fig = go.Figure(go.Bar(x=names, y=[d[key] for d in done], marker_color=px.colors.qualitative.Plotly[:len(done)],
                               error_y=error if key == "accuracy" else None))
        fig.update_layout(title=title, height=380, margin={"t": 60, "b": 30, "l": 10, "r": 10})
        fig.update_yaxes(**yaxis)
        col.plotly_chart(fig, key=f"compare_bars_{key}")


def challenge_yardstick(scored) -> None:
    """When the teacher has a challenge, score every finished run on its hidden images: the same images for all."""
    if not scored or (challenge := tlcore.current_challenge()) is None:
        return
    if not st.toggle(f"Also score on the class challenge's hidden images ({sum(challenge.counts.values())}, "
                     "the same for every run)", key="compare_challenge"):
        return
    rows, marks = [], session().compare.challenge_marks
    for r in scored:
        key = (challenge.id, proj.key, r.id)
        if key not in marks:
            try:
                with st.spinner(f"Scoring {r.label} on the challenge…"):
                    marks[key] = challenge.score(r.result, tlcore.SERVER.hidden)[0]
            except tlcore.TLError as e:
                marks[key] = str(e)
        mark = marks[key]
        rows.append({"run": r.label, "challenge accuracy": None if isinstance(mark, str) else mark.accuracy,
                     "on the teacher's hidden photos": mark if isinstance(mark, str) else mark.text(),
                     "on your photos": r.result.score.text()})
    st.dataframe(rows, hide_index=True, key="compare_challenge_table",
                 column_config={"challenge accuracy": st.column_config.ProgressColumn(format="percent", min_value=0,
                                                                                       max_value=1)})


polling = bool(proj.active_runs())
polled(comparison_view, polling, proj, group, extra_ids)

st.divider()
st.subheader("How many images do I need?")
split = shared_split(proj.images, proj.settings)
shots_ok = available_shots(proj.images, split, DEFAULT_SHOTS)
explain(f"Each strategy is trained again with only {', '.join('all' if s is None else str(s) for s in shots_ok)} "
        "photos per class, and scored on every photo it did not train on. Pretrained strategies stay useful with a "
        "handful of photos; from scratch needs many more, and catches up only when there are plenty.")
if note := tlcore.shots_note(proj.images, split):
    st.caption(note)
c1, c2 = st.columns(2)
shots = c1.multiselect("Images per class", shots_ok, default=shots_ok, key="compare_shots",
                       format_func=lambda s: "all" if s is None else str(s))
eff_strats = c2.multiselect("Strategies", STRATEGIES, default=["zero-shot", "few-shot", "feature-extraction", "scratch"],
                            key="compare_eff_strategies", format_func=STRATEGY_TITLES.get)
if shots and eff_strats and not busy:
    st.caption(f"{proj.comparison_runs(eff_strats, shots)} runs, {estimate(eff_strats, shots)} in all on this server.")
start_button("Run data-efficiency study", "compare_eff_go",
             start_group("study", "compare_eff_strategies", shots_key="compare_shots"), project_busy,
             busy_label("shots", "Study running…"),
             disabled=not shots or not eff_strats, icon=":material/stacked_line_chart:")
eff_group = session().compare.groups.get("study") or proj.latest_group("study")
def study_view(proj: tlcore.Project, eff_group: str | None, study_polling: bool) -> None:
    """The study's chart and table; while its runs train, live progress (polled once a second)."""
    records = proj.group_runs(eff_group)
    points = [{"strategy": r.config.mode, "images per class": r.shots if r.shots is not None else "all",
               "right": f"{r.result.score.right} of {r.result.score.n}", "accuracy": r.result.score.accuracy,
               "low": r.result.score.interval[0], "high": r.result.score.interval[1],
               "seconds": round(r.result.train_seconds, 1)}
              for r in records if r.result is not None and r.result.score is not None]
    pending = [r for r in records if r.live]
    if pending:
        done = len(records) - len(pending)
        left = proj.group_seconds_left(eff_group)
        st.progress(done / len(records), text=f"{done} of {len(records)} runs done · about {format_seconds(left)} "
                                              f"left (they train in the background: you can leave this page)")
    elif study_polling:
        st.rerun()  # the study has ended: stop polling
    if stale := tlcore.photos_changed([r.result for r in records if r.result is not None],
                                      [i.digest for i in proj.images.items]):
        st.warning(stale, icon=":material/update:")
    if points:
        order = [str(s) for s in sorted({p["images per class"] for p in points if p["images per class"] != "all"})]
        for p in points:
            p["images per class"] = str(p["images per class"])
        for p in points:
            p["+"], p["-"] = p["high"] - p["accuracy"], p["accuracy"] - p["low"]
        fig = px.line(points, x="images per class", y="accuracy", color="strategy", markers=True,
                      error_y="+", error_y_minus="-", category_orders={"images per class": order + ["all"]},
                      hover_data=["right", "seconds"],
                      title="Accuracy on every image not trained on, against images per class (95 % intervals)")
        fig.update_layout(yaxis_tickformat=".0%", yaxis_range=[0, 1.02], height=380, margin=dict(t=40, b=30, l=10, r=10),
                          xaxis_type="category")  # "1", "5", "all": labels, not numbers (else "all" vanishes)
        st.plotly_chart(fig, key="compare_efficiency")
        if finding := tlcore.study_finding([r.result for r in records if r.result is not None]):
            st.info(finding, icon=":material/school:")
        st.dataframe([{k: v for k, v in p.items() if k not in ("+", "-")} for p in points], hide_index=True,
                     key="compare_eff_table",
                     column_config={k: st.column_config.NumberColumn(format="percent") for k in ("accuracy", "low", "high")})



if eff_group:
    study_polling = any(r.live for r in proj.group_runs(eff_group))
    polled(study_view, study_polling, proj, eff_group)

st.divider()
st.subheader("Backbone race: which pretrained network suits your images?")
explain("The same images, split and strategy for each backbone: only the network changes. A bigger, better "
        "pre-trained backbone usually transfers better, and costs more time per image; the chart shows what each "
        "point of accuracy costs.")
offline = [b.name for b in tlcore.list_backbones(include_test=tlcore.settings().test_backbones)
           if b.availability() != "download"]
c1, c2 = st.columns([2, 1])
racers = c1.multiselect("Backbones (those on this machine; others download on the Backbone page)", offline,
                        default=offline, key="compare_race_backbones",
                        format_func=lambda n: tlcore.get_backbone_spec(n).title)
race_mode = c2.selectbox("Strategy", ["feature-extraction", "few-shot", "zero-shot", "fine-tune", "scratch"],
                         key="compare_race_mode", format_func=lambda m: STRATEGY_TITLES[m].split(" (")[0])
if racers and not busy:
    st.caption(f"{len(racers)} runs, {estimate([race_mode], backbones=racers)} in all on this server.")
start_button("Run the race", "compare_race_go",
             start_group("race", "compare_race_mode", backbones_key="compare_race_backbones"), project_busy,
             busy_label("race", "Race running…"),
             disabled=len(racers) < 2, icon=":material/sprint:",
             help="At least two backbones; they train one after another in the background.")
race_group = session().compare.groups.get("race") or proj.latest_group("race")


@st.cache_data(show_spinner="Timing the backbone on this server…", max_entries=64)
def facts(backbone: str) -> dict:
    return tlcore.race_facts(backbone)


def race_view(proj: tlcore.Project, race_group: str | None, race_polling: bool) -> None:
    """The race's table and its accuracy-against-cost chart; live progress while its runs train."""
    records = proj.group_runs(race_group)
    pending = [r for r in records if r.live]
    if pending:
        done = len(records) - len(pending)
        st.progress(done / len(records), text=f"{done} of {len(records)} backbones done · about "
                                              f"{format_seconds(proj.group_seconds_left(race_group))} left")
    elif race_polling:
        st.rerun()  # the race has ended: stop polling
    scored = [r for r in records if r.result is not None and r.result.score is not None]
    if not scored:
        return
    rows = []
    for r in scored:
        f, sc = facts(r.config.backbone), r.result.score
        rows.append({"backbone": f["title"], "right": f"{sc.right} of {sc.n}", "accuracy": sc.accuracy,
                     "likely (95 %)": f"{sc.interval[0]:.0%}–{sc.interval[1]:.0%}",
                     "training seconds": round(r.result.train_seconds, 1), "ms per image": f["ms_per_image"],
                     "parameters (M)": round(f["parameters"] / 1e6, 2), "ImageNet top-1 %": f["imagenet_top1"]})
    fig = go.Figure()
    for row, r in zip(rows, scored):
        lo, hi = r.result.score.interval
        fig.add_scatter(x=[row["ms per image"]], y=[row["accuracy"]], mode="markers+text", name=row["backbone"],
                        text=[row["backbone"]], textposition="bottom center", marker=dict(size=14),
                        error_y=dict(type="data", symmetric=False, array=[hi - row["accuracy"]],
                                     arrayminus=[row["accuracy"] - lo]))
    fig.update_layout(title="Accuracy on every image against the time each image costs (95 % intervals)",
                      xaxis_title="ms per image on this server", yaxis_title="accuracy", yaxis_tickformat=".0%",
                      yaxis_range=[0, 1.05], showlegend=False, height=380, margin=dict(t=40, b=30, l=10, r=10))
    st.plotly_chart(fig, key="compare_race_chart")
    st.dataframe(rows, hide_index=True, key="compare_race_table",
                 column_config={"accuracy": st.column_config.ProgressColumn(format="percent", min_value=0,
                                                                             max_value=1)})
    if finding := tlcore.top1_finding([(row["backbone"], row["ImageNet top-1 %"], row["accuracy"]) for row in rows]):
        st.caption(finding)  # the notes' claim, on the class's own photos
    ranked = sorted(scored, key=lambda r: -r.result.score.accuracy)
    if len(ranked) >= 2 and (v := tlcore.versus(facts(ranked[0].config.backbone)["title"], ranked[0].result,
                                                facts(ranked[1].config.backbone)["title"], ranked[1].result)):
        st.caption(v.text())


if race_group:
    race_polling = any(r.live for r in proj.group_runs(race_group))
    polled(race_view, race_polling, proj, race_group)

st.divider()
st.subheader("Embedding map")
explain("Each dot is a validation image, placed by its features squeezed into two dimensions. Images of one class "
        "that sit together are easy to separate. Left: the pretrained backbone as it came; right: a trained model.")
trained = [r for r in proj.finished_runs() if r.config.mode in ("fine-tune", "scratch")]
if not trained:
    st.info("Train a fine-tuned model (Freeze page: let some stages learn) to compare its map with the pretrained one.")
else:
    c1, c2 = st.columns(2)
    rid = c1.selectbox("Trained model", [r.id for r in trained], index=len(trained) - 1, key="compare_map_run",
                       format_func=lambda i: proj.run(i).label)
    method = c2.segmented_control("Projection", ["pca", "tsne"], default="pca", key="compare_map_method",
                                  format_func={"pca": "PCA", "tsne": "t-SNE"}.get) or "pca"
    try:
        with st.spinner("Computing features…"):
            emb = embedding_map(proj, proj.run(rid), method)
    except tlcore.TLError as e:
        st.info(str(e))
    else:
        left, right = st.columns(2)
        for col, which, title in ((left, "pretrained", "Pretrained backbone"), (right, "trained", "Trained model")):
            fig = px.scatter(x=[p[0] for p in emb[which]], y=[p[1] for p in emb[which]], color=emb["labels"],
                             hover_name=emb["names"], title=title)
            fig.update_layout(height=380, margin=dict(t=40, b=20, l=10, r=10), xaxis_title="", yaxis_title="")
            col.plotly_chart(fig, key=f"compare_map_{which}")
