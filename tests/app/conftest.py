"""AppTest set-up shared by the page tests."""
import contextlib

import pytest
from streamlit.runtime.pages_manager import PagesManager


@pytest.fixture(autouse=True)
def no_legacy_pages_mode(monkeypatch):
    """AppTest resets Streamlit's legacy pages/-folder mode before every run, so each run would first
    execute the page without app.py (and pages/common.py would rerun it, dropping a button click).
    A real server leaves that mode for good at the first st.navigation call; do the same here."""
    original = PagesManager.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        PagesManager.uses_pages_directory = False

    monkeypatch.setattr(PagesManager, "__init__", init)


@pytest.fixture(autouse=True)
def no_training_left_behind():
    """A test's background runs stop when it ends, so they never slow the tests after it."""
    yield
    from tests.conftest import eventually
    from tlcore import SERVER, get_runner

    for name in SERVER.projects.live():
        if (project := SERVER.projects.get(name)) is not None:
            SERVER.projects.stop(project)
    runner = get_runner()
    with contextlib.suppress(AssertionError):  # best effort: a data check still running ends by itself
        eventually(runner.idle, 30, "the stopped runs to end")
