"""Step 7: take the model away (a web app, weights, TorchScript, ONNX), load one back, or open another project."""
import io
from pathlib import Path

import segno
import streamlit as st

import tlcore
from pages.common import explain, project, run_choice, session, share_links, switch_project, work_button
from tlcore import export_model, import_run, model_card, run_archive

proj = project()
st.title("7 · Export and projects")
explain("A trained model is just numbers. Download them with a description of how to feed images in, and use the "
        "model anywhere: as a web app in any browser (phones too), in Python, or through TorchScript and ONNX in "
        "apps that do not use Python.")
# Served at /app/static/ (server.enableStaticServing); TLS_STATIC_DIR moves it (tests)
STATIC = tlcore.settings().static_dir or Path(__file__).resolve().parent.parent / "static"


def web_app(proj, record, folder: Path) -> None:
    """Make, download and share the run's web app (a QR code for phones on this network)."""
    st.markdown("**A web app**: one folder with `index.html` that runs the model in any browser, offline, with no "
                "install: pick or drop images, or use the camera, and see the confidence for every class. Open it "
                "from disk, put it on any web server, or open it on a phone from this server.")
    quantize = st.toggle("Smaller model (int8 weights)", key="export_web_int8",
                         help="About a quarter of the size; the page says how often it agrees with the full model.")
    if work_button("Make the web app", "export_web", "Making the web app…", icon=":material/language:"):
        with st.spinner("Exporting to ONNX, checking it against the app's model and writing the web app…"):
            try:
                web = tlcore.export_web(proj, record, folder / "web", quantize=quantize)
                path = tlcore.publish_web(web, STATIC, folder)
                session().export.web_export = (record.id, web, path)
            except tlcore.TLError as e:
                session().note("export_web_error", str(e))
        st.rerun()  # the button again, beside what was made
    if error := session().take_note("export_web_error"):
        st.error(error, icon=":material/error:")
    made = session().export.web_export
    if not made or made[0] != record.id:
        return
    _, web, path = made
    note = (f"Checked: the model in the page gives the app's probabilities (largest difference {web.max_diff:.1e}) "
            f"on the check images. {web.bytes / 1e6:.1f} MB.")
    if web.agreement is not None:
        same = web.agreement.right
        note += f" int8: the same class as the full model on {same} of {web.agreement.n} images."
        if web.accuracy:
            note += f" Accuracy on them {web.accuracy[0].text()} (full) -> {web.accuracy[1].text()} (int8)."
    st.info(note, icon=":material/verified:")
    st.download_button("Download the web app (.zip)", web.zip_path.read_bytes(), f"{record.id}-web.zip",
                       "application/zip", icon=":material/download:", key="export_web_dl", type="primary")
    link = tlcore.lan_url(st.context.url or "", f"app/static/{path}")
    c1, c2 = st.columns([1, 3])
    qr = io.BytesIO()
    segno.make(link, error="m").save(qr, kind="png", scale=5, border=2)
    c1.image(qr.getvalue(), caption="Scan with a phone", width=180, alt=f"QR code of {link}")
    c2.markdown(f"On a phone or laptop on this network: [{link}]({link})\n\nOver plain `http://` phones allow "
                "photos but not the live camera; serve the app over HTTPS (`python -m tlcore cert`) for the camera.")


runs = proj.finished_runs()
if not runs:
    st.info("Train a model first (Train page); then download it here. You can also load a saved run below.",
            icon=":material/info:")
else:
    ids = [r.id for r in runs]
    if (loaded := session().take_note("export_pick")) in ids:  # a run just loaded below
        st.session_state["export_pick"] = loaded
    elif st.session_state.get("export_pick") not in ids:  # nothing picked here yet: the newest model
        st.session_state["export_pick"] = ids[-1]
    run_id = st.selectbox("Model", ids, format_func=lambda i: run_choice(proj.run(i), proj.backbone),
                          key="export_pick")
    record = proj.run(run_id)
    folder = proj.folder / "runs" / record.id
    with st.container(border=True):
        st.markdown(model_card(record))
    c1, c2, c3 = st.columns(3)
    if (archive := run_archive(proj, record)) is not None:
        c1.download_button("Download run (.zip)", archive, f"{record.id}.zip", "application/zip",
                           icon=":material/download:", key="export_zip", type="primary")
    for col, kind, title in ((c2, "torchscript", "TorchScript"), (c3, "onnx", "ONNX")):
        file = folder / ("model.torchscript.pt" if kind == "torchscript" else "model.onnx")
        if file.exists():
            col.download_button(f"Download {title}", file.read_bytes(), file.name, key=f"export_dl_{kind}",
                                icon=":material/download:")
        elif work_button(f"Build {title}", f"export_build_{kind}", "Building…", icon=":material/build:"):
            with st.spinner(f"Exporting to {title} and checking it against the app's model…"):
                try:
                    path, diff = export_model(proj, record, kind)
                    session().note("export", f"{title} export matches the app's model on the validation images "
                                             f"(largest difference {diff:.1e}).")
                except tlcore.TLError as e:
                    session().note("export", str(e))
            st.rerun()
    if msg := session().take_note("export"):
        st.info(msg, icon=":material/verified:")
    with st.container(border=True):
        web_app(proj, record, folder)
    spec = tlcore.get_backbone_spec(record.config.backbone)
    st.code(tlcore.USAGE.format(folder=record.id, size=spec.preprocess.input_size), language="python",
            wrap_lines=True)  # no sideways scroll on a projector or a phone
    with st.container(border=True):
        st.markdown("**A report to hand out**: one HTML file with the data, the strategy, the curves, the "
                    "per-class results, examples right and wrong, the comparisons and this model card. It opens "
                    "in any browser, offline.")
        if work_button("Make the report", "export_report", "Writing the report…", icon=":material/summarize:"):
            with st.spinner("Writing the report…"):
                session().export.report_html = (record.id, tlcore.report_html(proj, record))
            st.rerun()
        made = session().export.report_html
        if made and made[0] == record.id:
            st.download_button("Download the report (.html)", made[1].encode(), f"{record.id}-report.html",
                               "text/html", icon=":material/download:", key="export_report_dl", type="primary")

st.subheader("Load a saved run")
upload = st.file_uploader("A run .zip downloaded from this page", type=["zip"], key="export_load")
if work_button("Load run", "export_load_go", "Loading…", icon=":material/upload:", disabled=upload is None) and upload:
    try:
        record = import_run(proj, upload.getvalue())
        session().note("export_pick", record.id)  # this page's picker too, from the rerun on
        session().note("export_loaded", f"Loaded {record.label}. It is now selected on the Evaluate and Test pages.")
    except tlcore.TLError as e:
        session().note("export_load_error", str(e))
    st.rerun()  # the run in the pickers above, the button again
if loaded := session().take_note("export_loaded"):
    st.success(loaded, icon=":material/check:")
if error := session().take_note("export_load_error"):
    st.error(error, icon=":material/error:")

st.subheader("Projects")
explain(f"Your work is saved on this server as project **{proj.name}**. To come back later (or after the server "
        "restarts), keep this page's address: it is the project's private link. Someone who only knows the name "
        "cannot open it.")
share_links(proj)
c1, c2 = st.columns(2)
with c1.form("export_open_form"):
    name = st.text_input("Project link (or the key at its end)", key="export_open_name")
    if st.form_submit_button("Open project", icon=":material/folder_open:"):
        try:
            switch_project(name)
            st.rerun()
        except tlcore.TLError as e:
            st.error(str(e))
with c2.form("export_new_form"):
    new_name = st.text_input("New project name (optional)", key="export_new_name")
    if st.form_submit_button("Start a new project", icon=":material/create_new_folder:"):
        try:
            switch_project(new_name or None, create=True)
            st.rerun()
        except tlcore.TLError as e:
            st.error(str(e))
