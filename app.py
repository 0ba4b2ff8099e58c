"""Transfer Learning Studio: `streamlit run app.py`."""
import streamlit as st

import tlcore
from pages.common import (
    PAGES,
    VIEW_PAGES,
    ask_name,
    has_project,
    keep_every_click,
    open_session,
    project,
    read_only,
    save_student,
    session,
    start_from_kit,
    step_bar,
    step_link,
    view_link,
)

keep_every_click()

# Every page on a projector (1024x768) and a phone (390x844), in one place (tests/browser/test_fit_and_access.py):
FIT_CSS = """
@media (max-width: 1280px) {  /* Streamlit's wide layout keeps 5rem a side: on a projector beside the sidebar that
  left the step bar 70 px a link ("Ba", "Da") */
  [data-testid="stMainBlockContainer"] {padding-left: 1rem; padding-right: 1rem}
}
.st-key-step_bar {column-gap: 0.1rem; row-gap: 0}  /* the steps: one row of whole words that wraps on a phone */
.st-key-step_bar [data-testid="stPageLink-NavLink"] {padding-left: 0.3rem; padding-right: 0.3rem}
@media (max-width: 640px) {
  .st-key-step_bar {row-gap: 0.2rem}  /* two rows of steps, each a thumb's height */
  .st-key-step_bar [data-testid="stPageLink-NavLink"] {margin: 0; padding-top: 0.3rem; padding-bottom: 0.3rem}
  .st-key-step_bar p {font-size: 0.85rem}
}
[data-testid="stPageLink-NavLink"]:focus-visible {outline: 2px solid #c53948; outline-offset: 1px}  /* the steps had no
  focus ring: a keyboard user could not see which step Tab had reached (WCAG 2.4.7) */
.modebar-container {display: none !important}  /* plotly's toolbar sat over chart titles (on a phone: every tap) */
[data-testid="stImageContainer"], [data-testid="stImageContainer"] img {max-width: 100%; height: auto}  /* a
  picture never wider than its column: the Test page's Grad-CAM ran under the bar chart, the QR code over its link */
[data-testid="stCaptionContainer"] {opacity: 1; color: #5c5a57}  /* captions: Streamlit's faded grey is 3.9:1 on
  white (2.7:1 under a picture); WCAG AA asks 4.5:1 */
[data-testid="stMetric"] [data-testid="stMarkdownContainer"] * {white-space: normal !important}  /* a metric's
  label, value and note wrap ("Validation accur…", "Feature extrac…" were cut) */
[data-testid="stFileUploaderDropzoneInstructions"] span, [data-testid="stSidebar"] [data-testid="stPageLink-NavLink"] *
  {white-space: normal}  /* "500MB per file • AVIF, BMP, …" and long sidebar links wrap, never end in "…" */
[data-testid="stMultiSelectTagsContainer"] {flex-wrap: wrap; overflow-x: hidden; height: auto}  /* in a column too */
[data-testid="stMultiSelect"] div:has(> [data-testid="stMultiSelectTagsContainer"]) {height: auto; max-height: none}
[data-testid="stMultiSelectTagsContainer"] > span > span {height: auto}  /* a long choice wraps, never "Zero-sh…" */
[data-testid="stMultiSelectTagsContainer"] > span > span > span {white-space: normal}
@media (max-width: 640px) {  /* a model picker's choice ("003 · 38 of 40 right · fine-tuning, 3/5 stages frozen")
  whole in a phone's box, which cannot wrap */
  [data-testid="stSelectbox"] input {font-size: 0.8125rem}
}
"""

st.set_page_config(page_title="Transfer Learning Studio", page_icon=":material/school:", layout="wide")
st.html("<style>" + FIT_CSS + "</style>")

open_session()
files = [f for f in PAGES if f in VIEW_PAGES] if read_only() else list(PAGES)  # read-only: look and test only
pages = [st.Page(f, title=PAGES[f][0], icon=PAGES[f][1], default=i == 0) for i, f in enumerate(files)]
if not read_only():
    pages.append(st.Page("pages/teacher.py", title="Teacher", icon=":material/school:"))
# No sidebar menu: the step bar is the menu. (.streamlit/config.toml hides it from the first visit on, when
# Streamlit would otherwise list the raw pages/ files for as long as the first run takes.)
page = st.navigation(pages, position="hidden")
session().page = page.url_path
if page.url_path == "teacher" and tlcore.SERVER.teacher.board_ok(st.query_params.get("board")):  # the projector
    page.run()
    st.stop()
if page.url_path == "teacher" and not has_project():  # the teacher's own tab holds no project of its own
    st.sidebar.page_link(next(iter(PAGES)), label="The students' steps (opens a project)", icon=":material/hub:")
    page.run()
    st.stop()
proj = project()
kit = None if read_only() else tlcore.current_kit()
with st.sidebar:
    if read_only():
        st.caption(f"Project **{proj.name}**, read-only: you can look at its models and test them, not change it.")
        for f in files:
            step_link(f, *PAGES[f])
    else:
        st.text_input("Your name", value=proj.student, max_chars=40, key=f"student_name_{proj.name}",
                      on_change=save_student, args=(f"student_name_{proj.name}",),
                      help="Your teacher sees your work under this name; the leaderboard shows it too.")
        st.caption(f"Project **{proj.name}**: saved on this server as you work. Bookmark this address to come "
                   f"back; only people you give it to can open it.")
        with st.popover("Share read-only", icon=":material/share:"):
            st.markdown("Anyone with this link can look at the models and test them, but not change anything:")
            st.code(view_link(proj), language=None)
        step_link("pages/export.py", "Open another project", ":material/folder_open:")
        if kit is not None:
            st.button("Start from the class kit", key="kit_start", on_click=start_from_kit, icon=":material/school:",
                      help=f"A new project of your own with the class's data ({kit.name}).")
        step_link("pages/teacher.py", "Teacher", ":material/school:")
if not read_only() and not proj.student and page.url_path != "teacher":
    ask_name(proj)
step_bar(next((f for f in PAGES if PAGES[f][0] == page.title), ""))
page.run()
