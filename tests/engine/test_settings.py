"""One settings module reads the environment (``tlcore.core.settings``); nothing else in tlcore or the pages does."""
from __future__ import annotations

import ast
import dataclasses
import os
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tlcore import Limits, Settings, TLError, settings
from tlcore.core.settings import VARIABLES, environment


def test_every_setting_has_its_variable_and_the_readme_documents_it():
    fields = {f.name for f in dataclasses.fields(Settings)} - {"limits"}
    assert fields == set(VARIABLES)
    readme = (ROOT / "README.md").read_text()
    assert not [v for v in [*VARIABLES.values(), *Limits.ENV.values()] if f"`{v}`" not in readme]


def test_settings_parse_each_kind_and_name_a_bad_number():
    s = Settings.from_env({"TLS_HOME": "/srv/class", "TLCORE_WORKERS": "3", "TLS_TEST_BACKBONES": "1",
                           "TLS_RAY_GPUS_PER_RUN": "0.5", "TLS_STATIC_DIR": "/srv/static", "TLS_MAX_EPOCHS": "12",
                           "TLS_PUBLIC_URL": " ", "TLS_SESSION_GRACE_S": "60"})
    assert (s.home, s.workers, s.test_backbones, s.ray_gpus_per_run, s.static_dir, s.limits.epochs) == (
        Path("/srv/class"), 3, True, 0.5, Path("/srv/static"), 12)
    assert (s.public_url, s.session_grace_s, s.memory_budget_mb) == ("", 60.0, 2048.0)  # blank is unset
    assert Settings.from_env({}) == Settings()
    assert not Settings.from_env({"TLS_TEST_BACKBONES": "0"}).test_backbones
    with pytest.raises(TLError, match="TLCORE_WORKERS='many' is not a number"):
        Settings.from_env({"TLCORE_WORKERS": "many"})


def test_settings_are_read_once_and_a_block_can_change_them_for_itself_and_its_children():
    before = settings()
    assert settings() is before  # read once
    with environment(TLS_PUBLIC_URL="https://class.example.org", TLS_HOME=None) as inside:
        assert settings() is inside and inside.public_url == "https://class.example.org"
        assert os.environ["TLS_PUBLIC_URL"] == "https://class.example.org"  # what a worker process inherits
        assert "TLS_HOME" not in os.environ and inside.home == Settings().home
    assert settings() == before and "TLS_PUBLIC_URL" not in os.environ


def test_only_the_settings_read_the_environment():
    """Modules that start processes may copy the environment for them (``child_env``); nothing else touches it."""
    touching = set()
    for path in [*(ROOT / "tlcore").rglob("*.py"), *(ROOT / "pages").glob("*.py"), ROOT / "app.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv", "unsetenv"):
                touching.add(str(path.relative_to(ROOT)))
    assert touching <= {"tlcore/core/settings.py", "tlcore/core/storage.py"}, touching
