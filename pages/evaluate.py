"""Step 5: how good is the model on images it never trained on, and what does it confuse?"""
import plotly.graph_objects as go
import streamlit as st

import tlcore
from pages.common import explain, file_caption, project, read_only, require_run, score_metric, session, work_button
from tlcore import thumbnail, validation_report

proj = project()
st.title("5 · Evaluate")
explain("Every photo here was classified by a model that had **not trained on it**: the same photos and the same "
        "figure as on the Train page. **Precision**: of the photos the model put in a class, how many belong there. "
        "**Recall**: of a class's photos, how many it found. The **confusion matrix** shows which classes it mixes up.")
record = require_run(proj)
if not read_only() and (challenge := tlcore.current_challenge()) is not None:
    with st.container(border=True):
        st.markdown(f":material/emoji_events: **Class challenge: {challenge.name}** · Enter this model: it is scored "
                    f"on the teacher's hidden images of {', '.join(challenge.classes)} (you never see them), and "
                    "your score goes on the class leaderboard.")
        a, b = st.columns([3, 1], vertical_alignment="bottom")
        student = a.text_input("Your name on the leaderboard", value=proj.student, key="evaluate_student",
                               max_chars=40)
        with b:  # the click taken in a callback: a rerun on a busy server does not lose it (see work_button)
            if work_button("Enter this model", "evaluate_enter", "Scoring…", icon=":material/flag:"):
                try:
                    with st.spinner("Scoring on the hidden images…"):
                        entry = challenge.enter(proj, record, student, tlcore.SERVER.hidden)
                    board = challenge.best_entries()  # one per student, ``enter`` merged others' meanwhile
                    best = next(e for e in board if e.project == entry.project)
                    recalls = ", ".join(f"{c}: {r:.0%}" for c, r in entry.recall.items())
                    session().note("evaluate_entered",
                                   f"Entered: on the teacher's hidden photos **{entry.right} of {entry.hidden}** "
                                   f"right ({recalls}). Rank {challenge.rank(best.accuracy)} of {len(board)} on the "
                                   "class board (your best entry counts).")
                except tlcore.TLError as e:
                    session().note("evaluate_enter_error", str(e))
                st.rerun()  # the button again, beneath it what happened
        if entered := session().take_note("evaluate_entered"):
            st.success(entered, icon=":material/emoji_events:")
        if error := session().take_note("evaluate_enter_error"):
            st.error(error, icon=":material/error:")
report = validation_report(proj, record)
if report is None:
    st.info("This run has no validation images (every class had one image, or the validation share was 0). "
            "Add images and train again to measure accuracy.")
    st.stop()
ev, val_items = report

score_metric(st, record.result.score)
if data_summary := tlcore.review_summary(proj.folder):
    st.caption(f":material/rule: {data_summary} (Data page, *Check your data*)")
rows = [{"class": n, "precision": p, "recall": r, "images": s} for n, p, r, s in ev.precision_recall()]
pct = st.column_config.ProgressColumn(format="percent", min_value=0, max_value=1, width="small")
st.dataframe(rows, hide_index=True, key="evaluate_table",  # narrow columns: a phone shows them all, no swipe
             column_config={"class": st.column_config.TextColumn(width="small"), "precision": pct, "recall": pct,
                            "images": st.column_config.NumberColumn(width="small")})

cm = ev.confusion_matrix
fig = go.Figure(go.Heatmap(z=cm, x=list(ev.classes), y=list(ev.classes), colorscale="Blues", text=cm,
                           texttemplate="%{text}", hovertemplate="true %{y} → predicted %{x}: %{z}<extra></extra>"))
fig.update_layout(title="Confusion matrix", xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed",
                  xaxis_type="category", yaxis_type="category",  # class names like 0, 3, 7 are names, not numbers
                  height=420, margin=dict(t=40, b=40, l=10, r=10))
st.plotly_chart(fig, key="evaluate_confusion")

wrong = ev.misclassified()
st.subheader(f"Mistakes ({len(wrong)})")
if not wrong:
    st.success("Every validation image is classified correctly.", icon=":material/celebration:")
cols = st.columns(6)
for k, i in enumerate(wrong[:36]):
    with cols[k % 6]:
        probs = ev.probabilities[i]
        st.image(thumbnail(val_items[i], 120), width=120,
                 alt=f"{ev.names[i]}: class {ev.classes[ev.labels[i]]}, predicted {ev.classes[ev.predictions[i]]}")
        st.caption(f"**{file_caption(ev.names[i])}**  \ntrue: {ev.classes[ev.labels[i]]}  \npredicted: "
                   f"{ev.classes[ev.predictions[i]]} ({probs[ev.predictions[i]]:.0%})")
