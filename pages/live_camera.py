"""The live camera (assets/live_camera/index.html): frames from the browser, one at a time.

A small component with no build step rather than streamlit-webrtc: the browser downscales each
frame and sends the next one only after the app has answered the last, so a busy server drops
frames instead of queueing them, nothing decodes video on the server, and no WebRTC (STUN, UDP
ports, mDNS on a school network) has to work. The README says more.
"""
from __future__ import annotations

import base64
import io

import streamlit as st
import streamlit.components.v1 as components
from PIL import Image

from pages.common import ASSETS, session

_component = components.declare_component("live_camera", path=str(ASSETS / "live_camera"))
INSECURE = ("**The camera needs a secure address.** Browsers allow cameras only on `https://` addresses or on "
            "`localhost`, and this page was opened as `{origin}`. Whoever runs the app can serve it over HTTPS: "
            "`python -m tlcore cert` makes a certificate for this machine, then `streamlit run app.py "
            "--server.sslCertFile tls-cert.pem --server.sslKeyFile tls-key.pem` (README: *Cameras in a "
            "classroom*). Uploading photos works on any address.")


def take(key: str) -> dict | None:
    """The component's newest message, once: ``{"jpeg": bytes}`` for a frame, ``{"stopped": True}`` when the
    camera stopped or recording ended, ``{"error": "insecure" | "denied", "origin": ...}``; else None."""
    value = st.session_state.get(key)
    if not isinstance(value, dict):
        return None
    mark = (value.get("sid"), value.get("seq"))
    seen = session().camera_seen
    if seen.get(key) == mark:
        return None
    seen[key] = mark
    if isinstance(value.get("jpeg"), str):
        value = {**value, "jpeg": base64.b64decode(value["jpeg"].split(",", 1)[-1])}
    return value


def show(key: str, mode: str, **args) -> None:
    """The component: ``mode`` "predict" (frames as fast as they are answered) or "record" (while held)."""
    sid, seq = session().camera_seen.get(key) or (None, 0)
    _component(key=key, mode=mode, ack=seq, ack_sid=sid, default=None, **args)


def data_url(image: Image.Image, quality: int = 80) -> str:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
