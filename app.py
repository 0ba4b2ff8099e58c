"""Transfer Learning Studio: `streamlit run app.py`."""
import streamlit as st

from pages.common import PAGES, VIEW_PAGES, project, read_only, step_bar, view_link

st.set_page_config(page_title="Transfer Learning Studio", page_icon=":material/school:", layout="wide")

proj = project()
files = [f for f in PAGES if f in VIEW_PAGES] if read_only() else list(PAGES)  # read-only: look and test only
pages = [st.Page(f, title=PAGES[f][0], icon=PAGES[f][1], default=i == 0) for i, f in enumerate(files)]
if not read_only():
    pages = {"Steps": pages, "Class": [st.Page("pages/teacher.py", title="Teacher", icon=":material/school:")]}
page = st.navigation(pages)
st.session_state["_page"] = page.url_path
with st.sidebar:
    if read_only():
        st.caption(f"Project **{proj.name}**, read-only: you can look at its models and test them, not change it.")
    else:
        st.caption(f"Project **{proj.name}**: saved on this server as you work. Bookmark this address to come "
                   f"back; only people you give it to can open it.")
        with st.popover("Share read-only", icon=":material/share:"):
            st.markdown("Anyone with this link can look at the models and test them, but not change anything:")
            st.code(view_link(proj), language=None)
        st.page_link("pages/export.py", label="Open another project", icon=":material/folder_open:")
step_bar(next((f for f in PAGES if PAGES[f][0] == page.title), ""))
page.run()
