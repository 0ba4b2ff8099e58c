"""Transfer Learning Studio: `streamlit run app.py`."""
import streamlit as st

from pages.common import PAGES, project, step_bar

st.set_page_config(page_title="Transfer Learning Studio", page_icon=":material/school:", layout="wide")

pages = [st.Page(file, title=title, icon=icon, default=i == 0) for i, (file, (title, icon)) in enumerate(PAGES.items())]
page = st.navigation(pages)
proj = project()
with st.sidebar:
    st.caption(f"Project **{proj.name}**: saved on this server as you work. Bookmark this address to come back.")
    st.page_link("pages/export.py", label="Open another project", icon=":material/folder_open:")
st.session_state["_page"] = page.url_path
step_bar(next((f for f in PAGES if PAGES[f][0] == page.title), ""))
page.run()
